// Profiles Tandem's hot path: the sidecar under `node --cpu-prof`, loaded with wrk, then a summary of where the CPU
// went; the same for the bare node:http + undici proxy (bench/bare-proxy.ts), to show what Tandem adds to it.
//
//   node --import tsx bench/profile.ts       (builds dist/ first; PROFILE_SKIP_BUILD=1 skips it)
//   PROFILE_TARGET=tandem|bare|both PROFILE_SECONDS=10 PROFILE_CONNECTIONS=32 PROFILE_STICKY=0 PROFILE_INTERVAL_US=250
//   PROFILE_KEEP=/tmp/run   (also keeps /tmp/run.tandem.cpuprofile and /tmp/run.bare.cpuprofile for Chrome DevTools)
//
// Consul dev agent + two upstreams (nginx if it can be had, else node:http) + `node --cpu-prof --cpu-prof-dir=<tmp>
// bin/tandem.js start` on core 1 (taskset, when present), wrk (autocannon without it) on core 0 for PROFILE_SECONDS
// against `/bench/` (with `x-stickyid` when PROFILE_STICKY=1); then the bare proxy the same way. Each process writes
// its .cpuprofile when it exits (SIGTERM). Only the samples taken while the measured load ran are counted (V8's sample
// times and this process's hrtime are both CLOCK_MONOTONIC). Prints self time per function (name + file:line), per
// package, who called the costliest leaves, inclusive time of Tandem's own functions (dist/proxy, dist/agent), each
// also as µs per request, and the per-area difference Tandem − bare; writes bench/results/profile.json. Loopback only;
// everything it starts is stopped and the temp dir removed, also on SIGINT/SIGTERM.
import { chmod, copyFile, mkdir, readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { freePorts } from '../src/common/free-port.ts';
import { Tandem } from '../src/sdk/index.ts';
import { flagEnv, intEnv, choiceEnv } from '../test/support/env.ts';
import { startFixedUpstreams } from '../test/support/fixed-upstreams.ts';
import { ensureTool, setupPinning } from '../test/support/host-tools.ts';
import { allRoutable, waitInstances } from '../test/support/instances.ts';
import { autocannonGenerator, wrkGenerator, type LoadGenerator, type LoadResult, type LoadSpec } from '../test/support/load-generators.ts';
import { nginxInfo } from '../test/support/nginx.ts';
import { stopProc, type Proc } from '../test/support/processes.ts';
import { machineInfo, mdTable, writeResult } from '../test/support/report.ts';
import { build, checkInterrupted, installSignalHandlers, log, runMain, setLogPrefix, sleep } from '../test/support/run-control.ts';
import { benchArgs, startTandem } from '../test/support/tandem-process.ts';
import { withTeardown } from '../test/support/teardown.ts';
import { startBareProxy } from './proxies.ts';

setLogPrefix('profile');
const SERVICE = 'bench';

// ---------------------------------------------------------------------------------------------------
// .cpuprofile

interface CallFrame {
  functionName: string;
  url: string;
  lineNumber: number;
  columnNumber: number;
}

interface ProfileNode {
  id: number;
  callFrame: CallFrame;
  children?: number[];
}

interface CpuProfile {
  nodes: ProfileNode[];
  startTime: number;
  endTime: number;
  samples: number[];
  timeDeltas: number[];
}

const isRecord = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

function isCpuProfile(v: unknown): v is CpuProfile {
  return isRecord(v) && Array.isArray(v['nodes']) && Array.isArray(v['samples']) && Array.isArray(v['timeDeltas']) && typeof v['startTime'] === 'number';
}

/** Where a function comes from: Tandem's own code, a package, Node's internals, V8. */
function category(f: CallFrame): string {
  const url = f.url;
  if (url === '') {
    if (f.functionName.startsWith('(')) return f.functionName; // (garbage collector), (program), (idle), (root)
    return 'native / builtins';
  }
  const own = /\/dist\/(proxy|agent|sdk)\//.exec(url);
  if (own) return `tandem: ${own[1] ?? ''}`;
  const pkg = /\/node_modules\/((?:@[^/]+\/)?[^/]+)\//.exec(url);
  if (pkg) return pkg[1] ?? 'package';
  if (url.startsWith('node:')) {
    const name = url.slice(5);
    if (name.startsWith('_http') || name === 'http') return 'node: http';
    if (name === 'net' || name.startsWith('internal/stream_base') || name.startsWith('internal/net')) return 'node: net';
    if (name.startsWith('internal/streams') || name === 'stream') return 'node: streams';
    if (name.startsWith('internal/process') || name.startsWith('internal/timers') || name === 'timers' || name === 'events' || name.startsWith('internal/async_hooks')) return 'node: events, timers, ticks';
    return 'node: other';
  }
  return url.includes('/bench/') ? 'bench' : 'other';
}

function shortUrl(url: string): string {
  const i = url.indexOf('/dist/');
  if (i >= 0) return url.slice(i + 1);
  const n = url.lastIndexOf('/node_modules/');
  if (n >= 0) return url.slice(n + '/node_modules/'.length);
  return url.replace(/^file:\/\//, '');
}

function frameKey(f: CallFrame): string {
  const name = f.functionName === '' ? '(anonymous)' : f.functionName;
  return f.url === '' ? name : `${name} ${shortUrl(f.url)}:${f.lineNumber + 1}`;
}

interface Summary {
  samplesInWindow: number;
  windowMs: number;
  /** Sampled time that was not (idle): the process's CPU on the main thread, roughly. Shares are of this. */
  busyMs: number;
  selfByFunction: { fn: string; category: string; ms: number; share: number; usPerRequest: number }[];
  selfByCategory: { category: string; ms: number; share: number; usPerRequest: number }[];
  tandemInclusive: { fn: string; ms: number; share: number; usPerRequest: number }[];
  /** For the costliest leaf functions: who called them (the nearest Tandem frame, else the nearest undici or node:http frame). */
  callersOfTop: { fn: string; callers: { via: string; ms: number; usPerRequest: number }[] }[];
}

const TOP_LEAVES = 8;

/** The nearest frame that says why a leaf ran: Tandem's own code first, else undici, node:http, prom-client, node:net. */
function attribution(start: number | undefined, byId: ReadonlyMap<number, ProfileNode>, parent: ReadonlyMap<number, number>): string {
  const rank = ['undici', 'node: http', 'prom-client', 'node: net'];
  let best: { rank: number; key: string } | undefined;
  for (let id = start; id !== undefined; id = parent.get(id)) {
    const f = byId.get(id)?.callFrame;
    if (!f) continue;
    const c = category(f);
    if (c.startsWith('tandem')) return frameKey(f);
    const r = rank.indexOf(c);
    if (r >= 0 && (best === undefined || r < best.rank)) best = { rank: r, key: frameKey(f) };
  }
  return best?.key ?? '(no Tandem, undici or node:http frame)';
}

function summarize(p: CpuProfile, window: { fromUs: number; toUs: number } | undefined, requests: number): Summary {
  const byId = new Map<number, ProfileNode>();
  const parent = new Map<number, number>();
  for (const n of p.nodes) {
    byId.set(n.id, n);
    for (const c of n.children ?? []) parent.set(c, n.id);
  }
  const self = new Map<string, { ms: number; category: string }>();
  const cats = new Map<string, number>();
  const incl = new Map<string, number>();
  const sampled: { id: number; dtMs: number }[] = [];
  let t = p.startTime;
  let inWindow = 0;
  let windowMs = 0;
  let busyMs = 0;
  for (let i = 0; i < p.samples.length; i++) {
    t += p.timeDeltas[i] ?? 0;
    // A sample stands for the time until the next one.
    const dtMs = (p.timeDeltas[i + 1] ?? 0) / 1000;
    if (window && (t < window.fromUs || t > window.toUs)) continue;
    inWindow++;
    windowMs += dtMs;
    const node = byId.get(p.samples[i] ?? -1);
    if (!node) continue;
    sampled.push({ id: node.id, dtMs });
    const key = frameKey(node.callFrame);
    const cat = category(node.callFrame);
    if (node.callFrame.functionName !== '(idle)') busyMs += dtMs;
    const s = self.get(key) ?? { ms: 0, category: cat };
    s.ms += dtMs;
    self.set(key, s);
    cats.set(cat, (cats.get(cat) ?? 0) + dtMs);
    // Inclusive time of Tandem's functions: each function once per sample, however deep the recursion.
    const seen = new Set<string>();
    for (let id: number | undefined = node.id; id !== undefined; id = parent.get(id)) {
      const f = byId.get(id)?.callFrame;
      if (f && category(f).startsWith('tandem')) seen.add(frameKey(f));
    }
    for (const k of seen) incl.set(k, (incl.get(k) ?? 0) + dtMs);
  }
  const per = (ms: number) => (requests > 0 ? (ms * 1000) / requests : Number.NaN);
  const share = (ms: number) => (busyMs > 0 ? ms / busyMs : 0);
  const skip = new Set(['(idle)', '(program)', '(garbage collector)', '(root)']);
  const topLeaves = [...self.entries()].filter(([fn]) => !skip.has(fn)).sort((a, b) => b[1].ms - a[1].ms).slice(0, TOP_LEAVES).map(([fn]) => fn);
  const callers = new Map<string, Map<string, number>>(topLeaves.map((fn) => [fn, new Map<string, number>()]));
  for (const { id, dtMs } of sampled) {
    const node = byId.get(id);
    if (!node) continue;
    const m = callers.get(frameKey(node.callFrame));
    if (!m) continue;
    const via = attribution(id, byId, parent);
    m.set(via, (m.get(via) ?? 0) + dtMs);
  }
  return {
    samplesInWindow: inWindow,
    windowMs,
    busyMs,
    selfByFunction: [...self.entries()]
      .filter(([fn]) => fn !== '(idle)')
      .map(([fn, v]) => ({ fn, category: v.category, ms: v.ms, share: share(v.ms), usPerRequest: per(v.ms) }))
      .sort((a, b) => b.ms - a.ms)
      .slice(0, 60),
    selfByCategory: [...cats.entries()].filter(([c]) => c !== '(idle)').map(([category, ms]) => ({ category, ms, share: share(ms), usPerRequest: per(ms) })).sort((a, b) => b.ms - a.ms),
    tandemInclusive: [...incl.entries()]
      .map(([fn, ms]) => ({ fn, ms, share: share(ms), usPerRequest: per(ms) }))
      .sort((a, b) => b.ms - a.ms)
      .slice(0, 40),
    callersOfTop: topLeaves.map((fn) => ({
      fn,
      callers: [...(callers.get(fn) ?? new Map<string, number>()).entries()]
        .map(([via, ms]) => ({ via, ms, usPerRequest: per(ms) }))
        .sort((a, b) => b.ms - a.ms)
        .slice(0, 4),
    })),
  };
}

// ---------------------------------------------------------------------------------------------------
// Main

type Subject = 'tandem' | 'bare';

interface Profiled {
  subject: Subject;
  load: LoadResult;
  window: string;
  summary: Summary;
}

/** Warm-up, the measured load (its window on CLOCK_MONOTONIC), SIGTERM so node writes the profile, then the summary. */
async function profileRun(subject: Subject, proc: Proc, profDir: string, load: LoadGenerator, spec: LoadSpec, keep: string | undefined, beforeStop?: () => Promise<void>): Promise<Profiled> {
  log(`${subject}: warm-up 2 s, then ${spec.seconds} s of ${load.name} at ${spec.connections} connections → ${spec.url}`);
  await load.run({ ...spec, seconds: 2 });
  checkInterrupted();
  const fromUs = Number(process.hrtime.bigint() / 1000n);
  const r = await load.run(spec);
  const toUs = Number(process.hrtime.bigint() / 1000n);
  log(`${subject}: ${Math.round(r.rps)} req/s, p50 ${r.p50Ms.toFixed(3)} ms, p99 ${r.p99Ms.toFixed(3)} ms, ${r.requests} requests, errors ${r.errors}, non-2xx ${r.non2xx}`);
  await beforeStop?.();
  await stopProc(proc, 30_000);
  const file = (await readdir(profDir)).find((f) => f.endsWith('.cpuprofile'));
  if (file === undefined) throw new Error(`${subject}: no .cpuprofile written in ${profDir}: ${proc.output().slice(-2000)}`);
  if (keep) await copyFile(join(profDir, file), `${keep}.${subject}.cpuprofile`);
  const parsed: unknown = JSON.parse(await readFile(join(profDir, file), 'utf8'));
  if (!isCpuProfile(parsed)) throw new Error(`${file} is not a CPU profile`);
  let summary = summarize(parsed, { fromUs, toUs }, r.requests);
  let window = 'samples taken while the measured load ran';
  if (summary.samplesInWindow < 100) {
    window = `whole process life (only ${summary.samplesInWindow} samples matched the load window: clocks differ?)`;
    summary = summarize(parsed, undefined, r.requests);
  }
  return { subject, load: r, window, summary };
}

function report(p: Profiled, intervalUs: number): string[] {
  const s = p.summary;
  const r = p.load;
  const pct = (v: number) => `${(v * 100).toFixed(1)} %`;
  const us = (v: number) => (Number.isFinite(v) ? v.toFixed(2) : '—');
  const out = [
    `### ${p.subject === 'tandem' ? 'Tandem (tandem start)' : 'bare node:http + undici (bench/bare-proxy.ts)'}`,
    '',
    `${Math.round(r.rps)} req/s, ${r.requests} requests; sampling every ${intervalUs} µs, ${p.window}; main thread busy ${s.busyMs.toFixed(0)} ms of ${s.windowMs.toFixed(0)} ms = ${us((s.busyMs * 1000) / r.requests)} µs per request`,
    '',
    'Self time by package / area:',
    '',
    mdTable(['area', 'ms', 'share of busy', 'µs/request'], s.selfByCategory.map((c) => [c.category, c.ms.toFixed(0), pct(c.share), us(c.usPerRequest)])),
    '',
    'Top self time by function:',
    '',
    mdTable(['function', 'area', 'ms', 'share', 'µs/request'], s.selfByFunction.slice(0, 30).map((f) => [f.fn, f.category, f.ms.toFixed(0), pct(f.share), us(f.usPerRequest)])),
    '',
    'Who called the costliest leaf functions (nearest Tandem frame, else undici / node:http):',
    '',
    mdTable(
      ['leaf function', 'called via', 'ms', 'µs/request'],
      s.callersOfTop.flatMap((l) => l.callers.map((c, i) => [i === 0 ? l.fn : '', c.via, c.ms.toFixed(0), us(c.usPerRequest)])),
    ),
    '',
  ];
  if (s.tandemInclusive.length > 0) {
    out.push("Tandem's own functions, inclusive time (callees included):", '');
    out.push(mdTable(['function', 'ms', 'share', 'µs/request'], s.tandemInclusive.slice(0, 25).map((f) => [f.fn, f.ms.toFixed(0), pct(f.share), us(f.usPerRequest)])), '');
  }
  return out;
}

function comparison(a: Profiled, b: Profiled): string {
  const us = (v: number | undefined) => (v !== undefined && Number.isFinite(v) ? v.toFixed(2) : '—');
  const cats = [...new Set([...a.summary.selfByCategory.map((c) => c.category), ...b.summary.selfByCategory.map((c) => c.category)])];
  const get = (p: Profiled, c: string) => p.summary.selfByCategory.find((x) => x.category === c)?.usPerRequest ?? 0;
  const rows = cats.map((c) => ({ c, a: get(a, c), b: get(b, c) })).sort((x, y) => y.a - y.b - (x.a - x.b));
  const total = (p: Profiled) => (p.summary.busyMs * 1000) / p.load.requests;
  return mdTable(
    ['area', `${a.subject} µs/req`, `${b.subject} µs/req`, 'difference'],
    [...rows.map((r) => [r.c, us(r.a), us(r.b), us(r.a - r.b)]), ['total (main thread busy)', us(total(a)), us(total(b)), us(total(a) - total(b))]],
  );
}

async function main(): Promise<void> {
  const seconds = intEnv('PROFILE_SECONDS', 10, 1);
  const connections = intEnv('PROFILE_CONNECTIONS', 32, 1);
  const intervalUs = intEnv('PROFILE_INTERVAL_US', 250, 50);
  const sticky = flagEnv('PROFILE_STICKY', false);
  const keep = process.env['PROFILE_KEEP'];
  const target = choiceEnv('PROFILE_TARGET', 'both', ['both', 'tandem', 'bare']);
  installSignalHandlers();
  await build('PROFILE_SKIP_BUILD');
  const pinning = await setupPinning(flagEnv('PROFILE_PIN', true), 'PROFILE_PIN');
  log(pinning.describe);
  const install = flagEnv('BENCH_INSTALL', true);
  const wrk = await ensureTool('wrk', ['wrk'], install);
  const nginx = await ensureTool('nginx', ['nginx-light', 'nginx'], install);

  await withTeardown(async (t) => {
    const agent = await t.consulAgent();
    const dir = await t.tempDir('tandem-profile-');
    await chmod(dir, 0o755);
    const [upA, upB, apiPort, proxyPort, barePort] = (await freePorts(5)) as [number, number, number, number, number];
    t.proc('the upstreams', await startFixedUpstreams('path' in nginx ? await nginxInfo(nginx.path) : undefined, dir, [upA, upB]), 5_000);
    const load: LoadGenerator = 'path' in wrk ? await wrkGenerator(wrk.path, dir, pinning) : autocannonGenerator();
    const headers: Record<string, string> = sticky ? { 'x-stickyid': 'user-42' } : {};
    const profArgs = (d: string) => ['--cpu-prof', `--cpu-prof-dir=${d}`, `--cpu-prof-interval=${intervalUs}`];
    const results: Profiled[] = [];

    if (target !== 'bare') {
      const profDir = join(dir, 'prof-tandem');
      await mkdir(profDir);
      const args = benchArgs({ consul: agent.address, stateDir: join(dir, 'state'), nodeName: 'profile' });
      const sc = t.proc('tandem', await startTandem({ api: `127.0.0.1:${apiPort}`, proxy: `127.0.0.1:${proxyPort}`, args, nodeArgs: profArgs(profDir), pin: { pinning, core: 1 } }), 20_000);
      // The upstreams registered as an app would, through the SDK; closed before the sidecar stops (profileRun stops it).
      const owner = new Tandem({ url: sc.api });
      t.defer('close the SDK client', () => owner.close());
      for (const port of [upA, upB]) await owner.register({ name: SERVICE, version: '1.0.0', port }, undefined, { deregisterOnSignal: false });
      await waitInstances(owner, SERVICE, allRoutable(2));
      // Past the slow start of the new instances (5 s by default), so round-robin reaches both.
      await sleep(5000);
      results.push(await profileRun('tandem', sc, profDir, load, { url: `${sc.proxy}/${SERVICE}/`, connections, seconds, headers }, keep, () => owner.close()));
    }
    if (target !== 'tandem') {
      checkInterrupted();
      const profDir = join(dir, 'prof-bare');
      await mkdir(profDir);
      const bare = t.proc('the bare proxy', (await startBareProxy({ port: barePort, upstreams: [upA, upB], pinning, core: 1 }, profArgs(profDir))).proc, 5_000);
      results.push(await profileRun('bare', bare, profDir, load, { url: `http://127.0.0.1:${barePort}/${SERVICE}/`, connections, seconds, headers }, keep));
    }

    await writeResult('profile.json', {
      date: new Date().toISOString(),
      command: 'node --import tsx bench/profile.ts',
      settings: { seconds, connections, intervalUs, sticky, target, loadGenerator: load.name, upstreams: 'path' in nginx ? 'nginx' : 'node' },
      machine: machineInfo(),
      pinning: pinning.describe,
      profiles: results,
    });
    const out = [`${pinning.describe}; ${load.name}, ${connections} connections, ${seconds} s${sticky ? ', sticky' : ''}`, ''];
    for (const r of results) out.push(...report(r, intervalUs));
    const ours = results.find((r) => r.subject === 'tandem');
    const floor = results.find((r) => r.subject === 'bare');
    if (ours && floor) out.push('### What Tandem adds to the bare path, per request (self time by area)', '', comparison(ours, floor), '');
    out.push('Written to bench/results/profile.json');
    process.stdout.write(`\n${out.join('\n')}\n`);
  });
}

runMain(main);
