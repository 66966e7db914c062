// Fuzzer for the sidecar: random and mutated raw HTTP over TCP against a real `tandem start` (proxy and control API), checking every answer, liveness, stderr and RSS.
//
//   npm run fuzz                                                      (builds dist/ first; 60 s or 200000 requests)
//   FUZZ_SECONDS=30 FUZZ_SEED=12345 npm run fuzz                      (the seed is printed; same seed, same cases)
//   FUZZ_SKIP_BUILD=1 FUZZ_SEED=12345 FUZZ_REPLAY=f:812 npm run fuzz  (one case again, printing the bytes both ways)
//
// Env: FUZZ_SECONDS (60), FUZZ_MAX_REQUESTS (200000), FUZZ_SEED (random, printed), FUZZ_CONCURRENCY (48),
// FUZZ_SKIP_BUILD=1, FUZZ_REPLAY=<case id as printed in the examples>.
//
// One process tree: a Consul dev agent, one upstream (bench/fuzz/echo-upstream.ts: it answers every request with
// what it received, as JSON) and `node bin/tandem.js start --log-level warn`. Everything listens on and connects to
// 127.0.0.1 only: the sidecar runs with proxy.egress.mode=allow-list and an empty list, so no mutated host or address
// (a public IP, a name that would need DNS) is ever contacted, and every loopback target (Consul, the upstream's own
// port, the control API) must be refused by the policy; a CONNECT to the catalog service opens a tunnel. Cases: raw
// requests from a grammar (odd methods, targets, headers, bodies), byte-level mutations of those, pipelines, garbage,
// JSON specs for POST /v1/services; plus slowloris connections and bursts of 500 concurrent connections. Every response is parsed and checked; the sidecar's pid, /v1/health and stderr are watched throughout.
// Afterwards: valid traffic, RSS and open fds against the baseline, then a SIGTERM that must stop the sidecar (and
// deregister its services) within 30 s. Summary on stdout, progress on stderr. Exit status 0 clean, 1 violation or
// crash, 130 interrupted. Violations fail the run; findings (contract deviations outside the checks above) are listed.
import { randomInt } from 'node:crypto';
import { freePorts } from '../src/common/free-port.ts';
import { Tandem } from '../src/sdk/index.ts';
import { startNodeChild } from '../test/support/child-server.ts';
import { flagEnv, intEnv } from '../test/support/env.ts';
import { allRoutable, waitInstances } from '../test/support/instances.ts';
import { fdCount, statusKb } from '../test/support/proc-stats.ts';
import { build, checkInterrupted, installSignalHandlers, interruption, isInterrupted, log, runMain, setLogPrefix, sleep } from '../test/support/run-control.ts';
import { benchArgs, startTandem, type TandemProc } from '../test/support/tandem-process.ts';
import { withTeardown } from '../test/support/teardown.ts';
import { IDLE_MS, burstCase, caseById, fuzzCase, slowCase, type Ctx, type FuzzCase } from './fuzz/cases.ts';
import { Stats, checkCase, type Tally } from './fuzz/checks.ts';
import { runConnection, stopConnections, type ConnResult } from './fuzz/connection.ts';
import { HOST, SERVICE } from './fuzz/grammar.ts';
import { esc } from './fuzz/response-stream.ts';
import { gracefulStop, monitor, stderrChecker, validTraffic } from './fuzz/sidecar-watch.ts';

setLogPrefix('fuzz');
const BURSTS = 3;
const BURST_SIZE = 500;
const SLOWLORIS = 50;

function readSettings() {
  const replay = process.env['FUZZ_REPLAY']?.trim();
  return {
    seconds: intEnv('FUZZ_SECONDS', 60, 1),
    maxRequests: intEnv('FUZZ_MAX_REQUESTS', 200_000, 1),
    seed: intEnv('FUZZ_SEED', randomInt(0, 0xffffffff), 0, 0xffffffff),
    concurrency: intEnv('FUZZ_CONCURRENCY', 48, 1, 1000),
    build: !flagEnv('FUZZ_SKIP_BUILD', false),
    replay: replay === undefined || replay === '' ? undefined : replay,
  };
}
type Settings = ReturnType<typeof readSettings>;

interface Run {
  ctx: Ctx;
  settings: Settings;
  stats: Stats;
  sidecar: TandemProc;
}

async function runOne(run: Run, c: FuzzCase): Promise<ConnResult> {
  const port = c.listener === 'proxy' ? run.ctx.proxyPort : run.ctx.apiPort;
  run.stats.connections++;
  run.stats.bump(run.stats.cases, c.gen);
  const result = await runConnection(port, c);
  if (result.written) run.stats.requestsSent += c.methods.length;
  checkCase(c, result, run.stats);
  return result;
}

async function fuzz(run: Run): Promise<string> {
  const { settings, stats, ctx } = run;
  const start = Date.now();
  const deadline = start + settings.seconds * 1000;
  const budgetLeft = () => settings.maxRequests - stats.requestsSent;
  // A bug in this file must not leave connections running behind the cleanup: stop everything, then rethrow.
  let failure: unknown;
  const guard = async (fn: () => Promise<void>): Promise<void> => {
    try {
      await fn();
    } catch (err) {
      failure ??= err;
      stopConnections(false);
    }
  };
  const running = () => failure === undefined && !isInterrupted() && !stats.crash && Date.now() < deadline && budgetLeft() > 0;
  /** Sleeps `ms`, or less once the run is over. */
  const pause = async (ms: number): Promise<void> => {
    const until = Date.now() + ms;
    while (running() && Date.now() < until) await sleep(Math.min(100, until - Date.now()));
  };
  let next = 0;
  const inflight: Promise<void>[] = [];

  // Slowloris connections, opened once 10 % of the run has gone by; they stop writing when the run ends.
  inflight.push(
    guard(async () => {
      await pause(Math.min(settings.seconds * 100, 5000));
      if (!running()) return;
      const n = Math.min(SLOWLORIS, budgetLeft());
      log(`opening ${n} slowloris connections`);
      stats.slow.opened = n;
      await Promise.all(
        Array.from({ length: n }, async (_, i) => {
          const c = slowCase(settings.seed, i, ctx, deadline - Date.now() + 15_000);
          const r = await runOne(run, c);
          const first = r.stream.finals[0];
          if (first) {
            stats.slow.answered++;
            stats.bump(stats.slow.statuses, first.status);
          } else if (r.serverClosed) stats.slow.closedUnanswered++;
          else {
            stats.slow.waiting++;
            stats.slow.longestHeldMs = Math.max(stats.slow.longestHeldMs, r.ms);
          }
        }),
      );
    }),
  );

  // Bursts of BURST_SIZE connections at once.
  for (let k = 0; k < BURSTS; k++) {
    inflight.push(
      guard(async () => {
        await pause(((k + 1) / (BURSTS + 1)) * settings.seconds * 1000);
        if (!running()) return;
        const n = Math.min(BURST_SIZE, budgetLeft());
        log(`burst ${k + 1}/${BURSTS}: ${n} connections at once`);
        stats.bursts.run++;
        const cases = Array.from({ length: n }, (_, i) => burstCase(settings.seed, k, i, ctx));
        await Promise.all(cases.map((c) => runOne(run, c)));
      }),
    );
  }

  // Progress line every 10 s.
  const progress = setInterval(() => {
    const p = stats.classes.proxy;
    log(`${Math.round((Date.now() - start) / 1000)} s: ${stats.requestsSent} requests, proxy 2xx ${p.get('2xx') ?? 0} 4xx ${p.get('4xx') ?? 0} 5xx ${p.get('5xx') ?? 0}, violations ${[...stats.violations.values()].reduce((n, t) => n + t.count, 0)}, rss ${(stats.rss.peak / 1024).toFixed(1)} MiB peak`);
  }, 10_000);

  const workers = Array.from({ length: settings.concurrency }, () =>
    guard(async () => {
      while (running()) await runOne(run, fuzzCase(settings.seed, next++, ctx));
    }),
  );
  await Promise.all(workers);
  stopConnections(false);
  clearInterval(progress);
  const stoppedBy = isInterrupted() ? 'interrupted' : stats.crash ? 'sidecar crash' : budgetLeft() <= 0 ? 'FUZZ_MAX_REQUESTS' : 'FUZZ_SECONDS';
  log(`stopped (${stoppedBy}) after ${((Date.now() - start) / 1000).toFixed(1)} s; waiting for open connections`);
  await Promise.all(inflight);
  if (failure !== undefined) throw failure;
  return stoppedBy;
}

async function replay(run: Run, id: string): Promise<void> {
  const c = caseById(run.settings.seed, id, run.ctx);
  const all = Buffer.concat(c.parts.map((p) => p.data));
  process.stdout.write(`case ${c.id} (${c.gen}) to the ${c.listener} listener, ${all.length} bytes in ${c.parts.length} part(s):\n${esc(all.toString('latin1'), 4000)}\n\n`);
  const r = await runOne(run, c);
  process.stdout.write(`answer (${r.bytesIn} bytes, ${r.serverClosed ? 'closed by the server' : 'we stopped waiting'}${r.socketError ? `, ${r.socketError}` : ''}):\n${esc(r.rawIn.toString('latin1'), 8000)}\n\n`);
  process.stdout.write(`parsed: ${r.stream.finals.map((f) => f.status).join(', ') || 'no response'}${r.stream.error ? `; parse error: ${r.stream.error}` : ''}\n`);
}

function fmt(n: number): string {
  return n.toLocaleString('en-US');
}

function classLine(m: Map<string, number>): string {
  return ['1xx', '2xx', '3xx', '4xx', '5xx', 'none', 'cut'].map((k) => `${k} ${fmt(m.get(k) ?? 0)}`).join(' | ');
}

function topStatuses(m: Map<number, number>): string {
  return [...m.entries()].sort((a, b) => b[1] - a[1]).slice(0, 12).map(([k, v]) => `${k}×${fmt(v)}`).join(', ') || '—';
}

function tallies(m: Map<string, Tally>): string {
  if (m.size === 0) return '  none\n';
  return [...m.entries()].map(([kind, t]) => `  - ${kind}: ${fmt(t.count)}\n${t.examples.map((e) => `      ${e}`).join('\n')}\n`).join('');
}

function summary(run: Run, stoppedBy: string, seconds: number): string {
  const { stats: s, settings } = run;
  const mib = (k: number) => `${(k / 1024).toFixed(1)} MiB`;
  const ratio = s.rss.baseline > 0 ? s.rss.after / s.rss.baseline : Number.NaN;
  const lines = [
    '',
    '== tandem fuzz summary ==',
    `seed ${settings.seed} (FUZZ_SEED=${settings.seed} repeats the cases), ran ${seconds.toFixed(1)} s, stopped by ${stoppedBy}`,
    `requests sent: ${fmt(s.requestsSent)} on ${fmt(s.connections)} connections (${fmt(s.connectFailures)} could not connect)`,
    `cases: ${[...s.cases.entries()].sort((a, b) => b[1] - a[1]).map(([k, v]) => `${k} ${fmt(v)}`).join(', ')}`,
    `proxy responses: ${classLine(s.classes.proxy)}`,
    `  statuses: ${topStatuses(s.statuses.proxy)}`,
    `api responses:   ${classLine(s.classes.api)}`,
    `  statuses: ${topStatuses(s.statuses.api)}`,
    `  (none = no answer before the connection ended or went idle ${IDLE_MS} ms; cut = we stopped waiting mid-response, e.g. SSE)`,
    `parser-level answers (not the sidecar's shape, accepted for garbage): ${[...s.parserAnswers.entries()].map(([k, v]) => `${k} ×${fmt(v)}`).join('; ') || 'none'}`,
    `error answers to HEAD requests that carried a body anyway (written before the method was known; accepted): ${fmt(s.headBodies)}`,
    `client-side socket errors: ${[...s.socketErrors.entries()].map(([k, v]) => `${k} ×${fmt(v)}`).join(', ') || 'none'}`,
    `slowloris: ${s.slow.opened} opened; answered ${s.slow.answered} (${topStatuses(s.slow.statuses)}), closed unanswered by the server ${s.slow.closedUnanswered}, still unanswered when we gave up ${s.slow.waiting}${s.slow.waiting ? ` (the server held one with an unfinished request head for ${(s.slow.longestHeldMs / 1000).toFixed(1)} s)` : ''}`,
    `bursts: ${s.bursts.run} × up to ${BURST_SIZE} connections; valid GETs answered 2xx: ${s.bursts.validOk}/${s.bursts.valid}`,
    `sidecar: ${s.crash ? `CRASHED: ${s.crash}` : `alive the whole run (pid ${run.sidecar.pid})`}; /v1/health ok ${s.health.ok}, failed ${s.health.failed} (longest failing streak ${s.health.longestStreak}${s.health.lastError ? `, last: ${s.health.lastError}` : ''})`,
    `sidecar stderr: ${s.stderr.lines} lines (warn ${s.stderr.warn}, error+ ${s.stderr.error}, other ${s.stderr.other})${s.stderr.warnMessages.size ? `; warn messages: ${[...s.stderr.warnMessages.entries()].slice(0, 8).map(([k, v]) => `${esc(k, 80)} ×${v}`).join(', ')}` : ''}`,
    `post-run valid traffic: ${fmt(s.post.ok)}/${fmt(s.post.sent)} answered 200${s.post.failures.size ? ` (failures: ${[...s.post.failures.entries()].map(([k, v]) => `${k} ×${v}`).join(', ')})` : ''}`,
    `open fds of the sidecar: baseline ${s.fds.baseline.all} (${s.fds.baseline.sockets} sockets), after ${s.fds.after.all} (${s.fds.after.sockets} sockets) — with all of our fuzz connections closed (watches of up to watch.maxServices services and the upstream pool are legitimate)`,
    `graceful stop (SIGTERM): ${s.shutdown ? (s.shutdown.killed ? `HUNG, killed after ${(s.shutdown.ms / 1000).toFixed(1)} s` : `exited ${s.shutdown.status} after ${(s.shutdown.ms / 1000).toFixed(1)} s`) : 'not tried (crash or interrupted run)'}`,
    `RSS of the sidecar: ${s.rss.after === 0 ? '(no after-reading: the run was cut short) ' : ''}baseline ${mib(s.rss.baseline)} (after warm-up), peak ${mib(s.rss.peak)}, after ${mib(s.rss.after)} (5 s after the post-run traffic) — after/baseline ×${ratio.toFixed(2)}${ratio > 2 ? ' (more than doubled: look for a leak)' : ''}`,
    '',
    `VIOLATIONS (${[...s.violations.values()].reduce((n, t) => n + t.count, 0)}):`,
    tallies(s.violations),
    `FINDINGS, not failing the run (${[...s.findings.values()].reduce((n, t) => n + t.count, 0)}):`,
    tallies(s.findings),
    `result: ${s.violations.size > 0 || s.crash ? 'FAIL' : 'PASS'}`,
    '',
  ];
  return lines.join('\n');
}

async function main(): Promise<number> {
  const settings = readSettings();
  installSignalHandlers();
  // An interrupted run closes every fuzz connection at once.
  interruption.addEventListener('abort', () => stopConnections(true));
  log(`seed ${settings.seed} (FUZZ_SEED=${settings.seed} to repeat)`);
  await build('FUZZ_SKIP_BUILD');
  checkInterrupted();

  const stats = new Stats();
  let monitorDone = false;
  return withTeardown(async (t) => {
    const agent = await t.consulAgent();
    const stateDir = await t.tempDir('tandem-fuzz-');
    const [upstreamPort, apiPort, proxyPort] = (await freePorts(3)) as [number, number, number];
    const ctx: Ctx = { proxyPort, apiPort, consulPort: agent.httpPort, upstreamPort };
    log(`upstream on ${HOST}:${upstreamPort}`);
    t.proc('the echo upstream', await startNodeChild(new URL('./fuzz/echo-upstream.ts', import.meta.url).pathname, [upstreamPort], 'the echo upstream'), 3_000);
    checkInterrupted();
    log(`tandem start: api ${HOST}:${apiPort}, proxy ${HOST}:${proxyPort}, consul ${agent.address}`);
    // Egress to nothing: foreign targets are refused without a connection or a DNS lookup (see the header).
    const args = benchArgs({ consul: agent.address, stateDir, set: ['registration.drainMs=200', 'proxy.egress.mode=allow-list'] });
    const sidecar = t.proc('tandem', await startTandem({ api: `${HOST}:${apiPort}`, proxy: `${HOST}:${proxyPort}`, args, stdio: { onStderrLine: stderrChecker(stats) } }), 20_000);
    // Registered over the control API itself (the SDK would tie it to this process): the stop at the end checks the sidecar deregisters it.
    const res = await fetch(`${sidecar.api}/v1/services`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ name: SERVICE, version: '1.0.0', port: upstreamPort, address: HOST }) });
    if (res.status !== 201 && res.status !== 202) throw new Error(`POST /v1/services answered ${res.status}: ${await res.text()}`);
    await waitInstances(new Tandem({ url: sidecar.api }), SERVICE, allRoutable(1));
    const run: Run = { ctx, settings, stats, sidecar };
    const proxy = `http://${HOST}:${proxyPort}`;
    const monitoring = monitor(sidecar, stats, () => monitorDone || isInterrupted());
    // Runs first at the end: every fuzz connection closed, the monitor stopped.
    t.defer('stop the monitor', () => {
      monitorDone = true;
      stopConnections(true);
      return monitoring;
    });

    if (settings.replay !== undefined) {
      await replay(run, settings.replay);
      process.stdout.write(`violations: ${tallies(stats.violations)}findings: ${tallies(stats.findings)}`);
      return stats.violations.size > 0 || stats.crash ? 1 : 0;
    }

    log('warm-up: 2 s of valid requests');
    const warm = await validTraffic(proxy, sidecar.api, 2000, undefined);
    if (warm.ok === 0) throw new Error(`warm-up: none of ${warm.sent} valid requests was answered 200`);
    await sleep(1000);
    stats.rss.baseline = await statusKb([sidecar.pid]);
    stats.rss.peak = stats.rss.baseline;
    stats.fds.baseline = await fdCount(sidecar.pid);
    log(`baseline RSS ${(stats.rss.baseline / 1024).toFixed(1)} MiB after ${warm.ok}/${warm.sent} valid warm-up requests`);
    checkInterrupted();

    log(`fuzzing for up to ${settings.seconds} s / ${settings.maxRequests} requests, ${settings.concurrency} connections at a time`);
    const t0 = Date.now();
    const stoppedBy = await fuzz(run);
    const seconds = (Date.now() - t0) / 1000;

    // Interrupted: no post-run phase, but the summary of what ran.
    if (!stats.crash && !isInterrupted()) {
      await sleep(1000);
      log('post-run: 3 s of valid requests');
      const post = await validTraffic(proxy, sidecar.api, 3000, stats);
      stats.post.sent = post.sent;
      stats.post.ok = post.ok;
      if (post.ok < post.sent) stats.violation('valid requests failed after the fuzz run', `${post.sent - post.ok} of ${post.sent} failed: ${[...stats.post.failures.entries()].map(([k, v]) => `${k} ×${v}`).join(', ')}`);
      log('waiting 5 s before reading RSS again');
      await sleep(5000);
      stats.rss.after = await statusKb([sidecar.pid]);
      stats.fds.after = await fdCount(sidecar.pid);
    }
    monitorDone = true;
    await monitoring;
    if (stats.crash) stats.violation('sidecar crashed', stats.crash);
    else if (!isInterrupted()) await gracefulStop(sidecar, agent.address, stats);
    process.stdout.write(summary(run, stoppedBy, seconds));
    return stats.violations.size > 0 || stats.crash ? 1 : 0;
  });
}

runMain(main);
