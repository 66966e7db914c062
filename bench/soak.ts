// Soak test: Consul dev agent + 6 upstream processes + `tandem start`, mixed proxy traffic under instance churn (kill -9 / deregister) for SOAK_SECONDS, sidecar RSS sampled.
//
//   npm run soak                                   (builds dist/ first, then 600 s of traffic)
//   SOAK_SECONDS=120 npm run soak                  (a short run)
//   SOAK_SKIP_BUILD=1 npm run soak                 (use the existing dist/)
//   SOAK_CONCURRENCY=8 SOAK_CHURN_SECONDS=20 SOAK_WARMUP_SECONDS=10 npm run soak
//
// Everything listens on 127.0.0.1 and runs in this process tree: the Consul dev agent, the sidecar
// (`node bin/tandem.js start`) and one child process per upstream instance (test/support/upstream-child.mjs),
// registered through the control API (as an orchestrator would; the sidecar's view is read through the SDK) with HTTP checks every second: `soak-a` at 1.0.0, 1.1.0 and 2.0.0,
// `soak-b` ×3. SOAK_CONCURRENCY loops send, back to back, round-robin GETs to /soak-a/…, ranged GETs to
// /soak-a@^1/…, sticky GETs (x-stickyid, 1000 keys) to /soak-b/… and POSTs with an Idempotency-Key. Every
// SOAK_CHURN_SECONDS one soak-b instance is either killed with SIGKILL and restarted on its port 5 s later,
// or removed with DELETE /v1/services/:id and registered again 5 s later (one at a time: each service
// always keeps at least 2 instances). Every request here is retry-safe (GET, or POST with Idempotency-Key),
// so the proxy must fail over and none may fail. The sidecar's RSS (VmRSS) is sampled after the warm-up,
// in the middle, at the end, and every 30 s.
//
// Prints a summary on stdout (progress on stderr), writes it to bench/results/soak.json, and exits 1 if any
// request failed (non-2xx, network error, or a 2xx from the wrong service/version). Every process it
// starts is stopped and the temp state dir removed, also on error and on SIGINT/SIGTERM.
import { Pool } from 'undici';
import { freePorts } from '../src/common/free-port.ts';
import { Tandem } from '../src/sdk/index.ts';
import { intEnv } from '../test/support/env.ts';
import { stopProc } from '../test/support/processes.ts';
import { machineInfo, writeResult } from '../test/support/report.ts';
import { abortRun, build, checkInterrupted, errMessage, installSignalHandlers, interruption, log, pause, runMain, setLogPrefix, waitUntil } from '../test/support/run-control.ts';
import { benchArgs, startTandem } from '../test/support/tandem-process.ts';
import { withTeardown } from '../test/support/teardown.ts';
import { DEREG_DOWN_MS, KILL_DOWN_MS, churnLoop, type ChurnCtx } from './soak/churn.ts';
import { allRoutable, register, startInstance, type Instance, type ServiceName } from './soak/instances.ts';
import { fmtKb, printSummary, round, sampleProc, slopeKbPerMin, type ProcSample, type SeriesPoint, type Settings, type Summary } from './soak/summary.ts';
import { REQUEST_KINDS, STICKY_KEYS, Stats, sanityCheck, trafficLoop, type Bucket, type RequestKind, type Traffic } from './soak/traffic.ts';

setLogPrefix('soak', { timestamps: true });
const RSS_EVERY_MS = 30_000;

function readSettings(): Settings {
  const seconds = intEnv('SOAK_SECONDS', 600, 20);
  const warmup = intEnv('SOAK_WARMUP_SECONDS', Math.min(10, Math.floor(seconds / 6)), 0);
  return {
    seconds,
    concurrency: intEnv('SOAK_CONCURRENCY', 8, 1),
    churnSeconds: intEnv('SOAK_CHURN_SECONDS', 20, 12),
    warmupSeconds: Math.min(warmup, Math.floor(seconds / 2)),
  };
}

/** The sidecar's stderr (pino JSON at --log-level warn): warn and error lines counted, the last ones kept. */
interface SidecarLog {
  lines: string[];
  warnLines: number;
  errorLines: number;
}

function countLine(l: SidecarLog, line: string): void {
  if (line.trim() === '') return;
  const level = /"level":(\d+)/.exec(line)?.[1];
  if (level !== undefined && Number(level) >= 50) l.errorLines++;
  else l.warnLines++;
  l.lines.push(line.length > 2000 ? `${line.slice(0, 2000)}…` : line);
  if (l.lines.length > 200) l.lines.shift();
}

// ---------------------------------------------------------------------------------------------------
// Main

async function main(): Promise<number> {
  const settings = readSettings();
  installSignalHandlers();
  await build('SOAK_SKIP_BUILD');
  checkInterrupted();

  const sidecarLines: SidecarLog = { lines: [], warnLines: 0, errorLines: 0 };
  const insts: Instance[] = [];
  return withTeardown(async (t) => {
    const agent = await t.consulAgent();
    const stateDir = await t.tempDir('tandem-soak-');
    const ports = await freePorts(8);
    const [apiPort, proxyPort] = ports.slice(6) as [number, number];
    const layout: [ServiceName, string][] = [
      ['soak-a', '1.0.0'],
      ['soak-a', '1.1.0'],
      ['soak-a', '2.0.0'],
      ['soak-b', '1.0.0'],
      ['soak-b', '1.0.1'],
      ['soak-b', '1.0.2'],
    ];
    layout.forEach(([service, version], i) => {
      const inst: Instance = { service, version, port: ports[i] as number, label: `${service}@${version}`, id: '', proc: undefined };
      insts.push(inst);
      // Churn replaces an instance's process: whichever runs at the end is stopped.
      t.defer(`stop upstream ${inst.label}`, async () => inst.proc && stopProc(inst.proc, 3_000));
    });
    for (const inst of insts) inst.proc = await startInstance(inst);
    log(`upstreams: ${insts.map((i) => `${i.label} on ${i.port}`).join(', ')}`);

    log(`tandem start: api 127.0.0.1:${apiPort}, proxy 127.0.0.1:${proxyPort}, consul ${agent.address}`);
    const sc = t.proc('tandem', await startTandem({ api: `127.0.0.1:${apiPort}`, proxy: `127.0.0.1:${proxyPort}`, args: benchArgs({ consul: agent.address, stateDir }), stdio: { onStderrLine: (l) => countLine(sidecarLines, l) } }), 20_000);
    void sc.exited.then(() => {
      abortRun(new Error(`the sidecar exited during the run (${String(sc.child.exitCode ?? sc.child.signalCode)}): ${sc.output().slice(-2000)}`));
    });
    const v = new Tandem({ url: sc.api });
    t.defer('close the SDK client', () => v.close());
    for (const inst of insts) inst.id = await register(sc.api, inst);
    log(`registered ${insts.map((i) => i.id).join(', ')}; waiting for all to be healthy`);
    if (!(await waitUntil(() => allRoutable(v, insts), 30_000))) {
      checkInterrupted();
      throw new Error(`not every instance was healthy within 30 s: ${JSON.stringify([...(await v.instances('soak-a')), ...(await v.instances('soak-b'))])}`);
    }

    await sanityCheck(sc.proxy);

    const pool = new Pool(sc.proxy, { connections: settings.concurrency, keepAliveTimeout: 4_000 });
    t.defer('close the client pool', () => pool.destroy());
    const t0 = Date.now();
    const stats = new Stats(t0);
    const traffic: Traffic = { pool, stats, stop: false };
    const endAt = t0 + settings.seconds * 1000;
    const warmupEnd = t0 + settings.warmupSeconds * 1000;
    log(`traffic: ${settings.concurrency} loops for ${settings.seconds} s (warm-up ${settings.warmupSeconds} s), churn of soak-b every ${settings.churnSeconds} s`);
    const loops = Array.from({ length: settings.concurrency }, (_, i) => trafficLoop(traffic, i));

    const series: SeriesPoint[] = [];
    let lastPointAt = t0;
    const point = async (): Promise<void> => {
      const now = Date.now();
      const iv = stats.takeInterval();
      const secs = Math.max(0.001, (now - lastPointAt) / 1000);
      lastPointAt = now;
      try {
        const p = await sampleProc(sc.pid, t0);
        series.push({ ...p, requests: iv.requests, failures: iv.failures, rps: Math.round(iv.requests / secs), p50Ms: round(iv.latencies.percentile(50)), p99Ms: round(iv.latencies.percentile(99)) });
        log(`t=${p.t} s: ${stats.requests} requests, ${stats.failures} failed, ${Math.round(iv.requests / secs)} req/s, sidecar RSS ${fmtKb(p.rssKb)}, ${p.fds} fds`);
      } catch (err) {
        log(`could not sample the sidecar: ${errMessage(err)}`);
      }
    };
    const seriesTimer = setInterval(() => void point(), RSS_EVERY_MS);

    const churnEnd = new AbortController();
    const churnCtx: ChurnCtx = {
      api: sc.api,
      view: v,
      all: insts,
      victims: insts.filter((i) => i.service === 'soak-b'),
      stats,
      churnMs: settings.churnSeconds * 1000,
      lastStart: endAt - 15_000,
      end: churnEnd.signal,
      skipped: 0,
    };
    let churn: Promise<void> = Promise.resolve();
    let runError: unknown;
    let rssStart: ProcSample | undefined;
    let rssMiddle: ProcSample | undefined;
    let rssEnd: ProcSample | undefined;
    try {
      await pause(warmupEnd - Date.now());
      checkInterrupted();
      rssStart = await sampleProc(sc.pid, t0);
      await point();
      log(`warm-up done: ${stats.requests} requests; sidecar RSS ${fmtKb(rssStart.rssKb)}`);
      churn = churnLoop(churnCtx);
      await pause(warmupEnd + (endAt - warmupEnd) / 2 - Date.now());
      checkInterrupted();
      rssMiddle = await sampleProc(sc.pid, t0);
      await pause(endAt - Date.now());
      checkInterrupted();
      rssEnd = await sampleProc(sc.pid, t0);
      clearInterval(seriesTimer);
      if (Date.now() - lastPointAt >= 1_000) await point();
    } catch (err) {
      runError = err;
    } finally {
      clearInterval(seriesTimer);
      traffic.stop = true;
      // Interrupted: do not wait for requests the proxy may never answer.
      if (interruption.aborted) await pool.destroy().catch(() => undefined);
      await Promise.all(loops);
      churnEnd.abort();
      await churn;
    }
    const elapsed = (Date.now() - t0) / 1000;

    const events = stats.events.map(({ start: _s, end: _e, ...rest }) => rest);
    const afterWarmup = series.filter((p) => p.t >= settings.warmupSeconds);
    const summary: Summary = {
      date: new Date().toISOString(),
      command: 'npm run soak',
      settings: { ...settings, stickyKeys: STICKY_KEYS, killDownMs: KILL_DOWN_MS, deregDownMs: DEREG_DOWN_MS, checkIntervalMs: 1000 },
      machine: machineInfo(),
      passed: false,
      durationSeconds: round(elapsed, 1),
      requests: stats.requests,
      rps: Math.round(stats.requests / Math.max(elapsed, 0.001)),
      ok: stats.ok,
      latencyMs: { p50: round(stats.latencies.percentile(50)), p99: round(stats.latencies.percentile(99)), max: round(stats.latencies.max) },
      failures: {
        total: stats.failures,
        idempotent: stats.failures,
        wrongAnswers: stats.wrongAnswers,
        byRequestKind: Object.fromEntries(REQUEST_KINDS.map((k) => [k, stats.byKind.get(k) ?? { requests: 0, failures: 0 }])) as Record<RequestKind, Bucket>,
        byCause: Object.fromEntries(stats.byCause),
        inFlightAtKill: stats.inFlightAtKill,
        inChurnWindows: stats.inChurnWindow,
        outsideChurn: stats.outsideChurn,
        details: stats.details,
        detailsTruncated: stats.failures > stats.details.length,
      },
      sticky: { keys: stats.stickyOwner.size, movedResponses: stats.stickyMoved, movedOutsideChurn: stats.stickyMovedOutsideChurn, reassigned: stats.stickyReassigned, reassignedOutsideChurn: stats.stickyReassignedOutsideChurn },
      perInstance: Object.fromEntries([...stats.perInstance.entries()].sort(([a], [b]) => (a < b ? -1 : 1))),
      rss: {
        startKb: rssStart?.rssKb ?? Number.NaN,
        middleKb: rssMiddle?.rssKb ?? Number.NaN,
        endKb: rssEnd?.rssKb ?? Number.NaN,
        hwmKb: rssEnd?.hwmKb ?? series.at(-1)?.hwmKb ?? Number.NaN,
        startFds: rssStart?.fds ?? Number.NaN,
        endFds: rssEnd?.fds ?? Number.NaN,
        slopeKbPerMinAfterWarmup: round(slopeKbPerMin(afterWarmup), 1),
        series,
      },
      churn: {
        kills: events.filter((e) => e.kind === 'kill').length,
        deregistrations: events.filter((e) => e.kind === 'deregister').length,
        skipped: churnCtx.skipped,
        withErrors: events.filter((e) => e.error !== undefined).length,
        events,
      },
      sidecarLog: { warnLines: sidecarLines.warnLines, errorLines: sidecarLines.errorLines, tail: sidecarLines.lines.slice(-50) },
    };
    if (runError !== undefined) summary.error = errMessage(runError);
    summary.passed = runError === undefined && stats.failures === 0 && stats.requests > 0;
    await writeResult('soak.json', summary);
    printSummary(summary);
    if (runError !== undefined) throw runError;
    return summary.passed ? 0 : 1;
  });
}

runMain(main);
