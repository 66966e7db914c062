// Proxy benchmark: Consul dev agent + 2 upstreams + `tandem start`, autocannon direct vs. through Tandem, in one run.
//
//   npm run bench                          (builds dist/ first, then 10 s per scenario)
//   BENCH_SECONDS=5 BENCH_CONNECTIONS=32 BENCH_WARMUP_SECONDS=1 BENCH_ROUNDS=1 npm run bench
//   BENCH_SKIP_BUILD=1 npm run bench       (use the existing dist/)
//
// Everything listens on 127.0.0.1. Prints a Markdown table on stdout (progress on stderr) and writes the
// same figures to bench/results/latest.json. Every process it starts is stopped, even on error.
import autocannon from 'autocannon';
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { cpus, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { ConsulDevAgent } from '../src/agent/consul-dev-agent.ts';
import { freePorts } from '../src/agent/free-port.ts';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const BIN = join(ROOT, 'bin', 'tandem.js');
const UPSTREAM = join(ROOT, 'bench', 'upstream.ts');
const RESULTS = join(ROOT, 'bench', 'results', 'latest.json');
const SERVICE = 'bench';
const STICKY_ID = 'user-42';

// ---------------------------------------------------------------------------------------------------
// Settings

interface Settings {
  seconds: number;
  connections: number;
  warmupSeconds: number;
  rounds: number;
  build: boolean;
}

function intEnv(name: string, def: number, min: number): number {
  const raw = process.env[name];
  if (raw === undefined || raw.trim() === '') return def;
  const n = Number(raw);
  if (!Number.isInteger(n) || n < min) throw new Error(`${name} must be an integer >= ${min} (got '${raw}')`);
  return n;
}

function readSettings(): Settings {
  return {
    seconds: intEnv('BENCH_SECONDS', 10, 1),
    connections: intEnv('BENCH_CONNECTIONS', 32, 1),
    warmupSeconds: intEnv('BENCH_WARMUP_SECONDS', 1, 0),
    rounds: intEnv('BENCH_ROUNDS', 1, 1),
    build: !['1', 'true', 'yes'].includes((process.env['BENCH_SKIP_BUILD'] ?? '').toLowerCase()),
  };
}

// ---------------------------------------------------------------------------------------------------
// Interruption and cleanup

let interrupted = false;
let currentRun: autocannon.Instance | undefined;
const children = new Set<ChildProcess>();

function checkInterrupted(): void {
  if (interrupted) throw new Error('interrupted');
}

function onSignal(signal: NodeJS.Signals): void {
  if (interrupted) {
    // Second signal: give up on a graceful stop. The exit hooks kill the children and the agent.
    process.exit(130);
  }
  interrupted = true;
  log(`${signal}: stopping the benchmark and cleaning up (again to force)`);
  currentRun?.stop();
}

// Last resort if this process dies without running its finally blocks.
process.on('exit', () => {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
});

function log(msg: string): void {
  process.stderr.write(`[bench] ${msg}\n`);
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

function track(child: ChildProcess): Promise<void> {
  children.add(child);
  return new Promise((resolve) => {
    child.once('exit', () => {
      children.delete(child);
      resolve();
    });
  });
}

/** SIGTERM, then SIGKILL after `graceMs`; resolves once the process has exited. */
async function stopChild(child: ChildProcess, exited: Promise<void>, graceMs: number): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
  await exited;
  clearTimeout(timer);
}

// ---------------------------------------------------------------------------------------------------
// Processes

async function build(): Promise<void> {
  log('npm run build (BENCH_SKIP_BUILD=1 to skip)');
  try {
    await promisify(execFile)('npm', ['run', 'build'], { cwd: ROOT, timeout: 300_000 });
  } catch (err) {
    const e = err as { stdout?: string; stderr?: string; message: string };
    throw new Error(`npm run build failed:\n${e.stdout ?? ''}${e.stderr ?? ''}${e.message}`, { cause: err });
  }
}

interface Proc {
  child: ChildProcess;
  exited: Promise<void>;
  output: () => string;
}

/** Both upstreams in one child process, so they do not share the event loop with the proxy or autocannon. */
async function startUpstreams(ports: readonly number[]): Promise<Proc> {
  const child = spawn(process.execPath, ['--import', 'tsx', UPSTREAM, ...ports.map(String)], { cwd: ROOT, stdio: ['pipe', 'pipe', 'pipe'] });
  const exited = track(child);
  let out = '';
  child.stderr?.on('data', (d: Buffer) => (out += d.toString()));
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`upstreams not ready in 20 s: ${out}`)), 20_000);
    child.stdout?.on('data', (d: Buffer) => {
      if (d.toString().includes('ready')) {
        clearTimeout(timer);
        resolve();
      }
    });
    void exited.then(() => {
      clearTimeout(timer);
      reject(new Error(`upstreams exited during start (${String(child.exitCode ?? child.signalCode)}): ${out}`));
    });
  });
  return { child, exited, output: () => out };
}

async function startSidecar(consul: string, apiPort: number, proxyPort: number, stateDir: string): Promise<Proc & { api: string; proxy: string }> {
  const args = [
    BIN, 'start',
    '--consul', consul,
    '--api', `127.0.0.1:${apiPort}`,
    '--proxy', `127.0.0.1:${proxyPort}`,
    '--state-dir', stateDir,
    '--log-level', 'warn',
    '--advertise', '127.0.0.1',
    '--set', 'registration.checkIntervalMs=1000',
  ];
  // Only PATH: no CONSUL_HTTP_* or TANDEM_* from the caller's environment leaks into the run.
  const child = spawn(process.execPath, args, { cwd: ROOT, stdio: ['ignore', 'ignore', 'pipe'], env: { PATH: process.env['PATH'] ?? '' } });
  const exited = track(child);
  let err = '';
  child.stderr?.on('data', (d: Buffer) => {
    err += d.toString();
    if (err.length > 100_000) err = err.slice(-50_000);
  });
  const api = `http://127.0.0.1:${apiPort}`;
  const deadline = Date.now() + 20_000;
  for (;;) {
    checkInterrupted();
    if (child.exitCode !== null || child.signalCode !== null) throw new Error(`tandem exited during start (${String(child.exitCode ?? child.signalCode)}): ${err}`);
    try {
      const res = await fetch(`${api}/v1/health`, { signal: AbortSignal.timeout(1000) });
      await res.arrayBuffer();
      if (res.ok) break;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) throw new Error(`tandem's control API did not answer within 20 s: ${err}`);
    await sleep(100);
  }
  return { child, exited, output: () => err, api, proxy: `http://127.0.0.1:${proxyPort}` };
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

async function register(api: string, port: number): Promise<void> {
  const res = await fetch(`${api}/v1/services`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ name: SERVICE, version: '1.0.0', port }),
  });
  const text = await res.text();
  if (res.status !== 201 && res.status !== 202) throw new Error(`POST /v1/services (port ${port}) answered ${res.status}: ${text}`);
}

async function waitHealthy(api: string, count: number, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let last: string | undefined;
  for (;;) {
    checkInterrupted();
    try {
      const res = await fetch(`${api}/v1/instances/${SERVICE}`, { signal: AbortSignal.timeout(2000) });
      const body: unknown = await res.json();
      last = JSON.stringify(body);
      const instances = isRecord(body) && Array.isArray(body['instances']) ? body['instances'] : [];
      const healthy = instances.filter((i) => isRecord(i) && i['healthy'] === true).length;
      if (res.ok && instances.length === count && healthy === count) return;
    } catch (err) {
      last = String(err);
    }
    if (Date.now() > deadline) throw new Error(`${SERVICE} did not get ${count} healthy instances within ${timeoutMs} ms; last answer: ${last ?? 'none'}`);
    await sleep(200);
  }
}

/**
 * Waits until no instance of the service is ejected and returns how long that took (0 if none was). A load run that ends
 * cuts its in-flight requests, and the proxy counts those client aborts as upstream failures, so without
 * this the next scenario would start with healthy instances ejected (sticky traffic then takes the "moved" path).
 */
async function waitNotEjected(api: string, timeoutMs: number): Promise<number> {
  const start = Date.now();
  let seen = false;
  for (;;) {
    checkInterrupted();
    const res = await fetch(`${api}/v1/instances/${SERVICE}`, { signal: AbortSignal.timeout(2000) });
    const body: unknown = await res.json();
    const instances = isRecord(body) && Array.isArray(body['instances']) ? body['instances'] : [];
    const ejected = instances.filter((i) => isRecord(i) && i['ejected'] === true).length;
    if (res.ok && ejected === 0) return seen ? Date.now() - start : 0;
    seen = true;
    if (Date.now() - start > timeoutMs) throw new Error(`${ejected} instance(s) of ${SERVICE} still ejected after ${timeoutMs} ms: ${JSON.stringify(body)}`);
    await sleep(100);
  }
}

/** Round-robin must reach both instances and sticky must stay on one, or the figures mean nothing. */
async function sanityCheck(proxy: string): Promise<void> {
  const seen = async (headers: Record<string, string>): Promise<Set<string>> => {
    const ids = new Set<string>();
    for (let i = 0; i < 10; i++) {
      const res = await fetch(`${proxy}/${SERVICE}/`, { headers });
      const text = await res.text();
      if (res.status !== 200 || !text.includes('"service":"bench"')) throw new Error(`GET ${proxy}/${SERVICE}/ answered ${res.status}: ${text.slice(0, 200)}`);
      ids.add(res.headers.get('x-tandem-instance') ?? `(no x-tandem-instance, body ${text.slice(0, 60)})`);
    }
    return ids;
  };
  const rr = await seen({});
  if (rr.size !== 2) throw new Error(`round-robin reached ${rr.size} instance(s) in 10 requests: ${[...rr].join(', ')}`);
  const sticky = await seen({ 'x-stickyid': STICKY_ID });
  if (sticky.size !== 1) throw new Error(`sticky requests reached ${sticky.size} instances: ${[...sticky].join(', ')}`);
}

// ---------------------------------------------------------------------------------------------------
// Measuring

interface Scenario {
  key: string;
  label: string;
  urls: string[];
  connections: number;
  headers: Record<string, string>;
  /** The direct scenario at the same concurrency (for the req/s ratio and the added latency). */
  baseline: string;
}

interface Measurement {
  seconds: number;
  requests: number;
  rps: number;
  p50Ms: number;
  p99Ms: number;
  errors: number;
  timeouts: number;
  non2xx: number;
  /** Average bytes read per response (headers + body): shows that full responses came back. */
  bytesPerResponse: number;
  /** Through Tandem: time spent before this run waiting for ejections left by the previous run to expire. */
  ejectionWaitMs: number;
}

function percentile(sorted: Float64Array, p: number): number {
  if (sorted.length === 0) return Number.NaN;
  const idx = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[idx] ?? Number.NaN;
}

/**
 * One autocannon run. Latencies are collected from the per-response events (sub-millisecond
 * resolution; autocannon's own histogram rounds to whole milliseconds), over every response.
 */
function measure(urls: string[], connections: number, seconds: number, headers: Record<string, string>): Promise<Measurement> {
  const latencies: number[] = [];
  return new Promise<Measurement>((resolve, reject) => {
    const first = urls[0];
    if (first === undefined) return reject(new Error('no URL'));
    const inst = autocannon({ url: urls.length === 1 ? first : urls, connections, duration: seconds, timeout: 10, headers }, (err, result) => {
      currentRun = undefined;
      if (err) return reject(err);
      const sorted = Float64Array.from(latencies).sort();
      const requests = result.requests.total ?? latencies.length;
      const elapsed = result.duration > 0 ? result.duration : seconds;
      resolve({
        seconds: elapsed,
        requests,
        rps: requests / elapsed,
        p50Ms: percentile(sorted, 50),
        p99Ms: percentile(sorted, 99),
        errors: result.errors,
        timeouts: result.timeouts,
        non2xx: result.non2xx,
        bytesPerResponse: requests > 0 ? Math.round((result.throughput.total ?? 0) / requests) : 0,
        ejectionWaitMs: 0,
      });
    });
    currentRun = inst;
    inst.on('response', (_client: unknown, _status: number, _bytes: number, ms: number) => {
      latencies.push(ms);
    });
  });
}

function median(values: readonly number[]): number {
  const s = [...values].sort((a, b) => a - b);
  if (s.length === 0) return Number.NaN;
  const mid = Math.floor(s.length / 2);
  return s.length % 2 === 1 ? (s[mid] ?? Number.NaN) : ((s[mid - 1] ?? 0) + (s[mid] ?? 0)) / 2;
}

interface Row {
  scenario: string;
  key: string;
  url: string;
  connections: number;
  rps: number;
  p50Ms: number;
  p99Ms: number;
  /** req/s ÷ the direct scenario's req/s at the same concurrency (1 for the direct ones). */
  ratioVsDirect: number;
  /** p50 − the direct scenario's p50 at the same concurrency. */
  addedP50Ms: number;
  requests: number;
  errors: number;
  timeouts: number;
  non2xx: number;
  rounds: Measurement[];
}

function summarize(scenarios: readonly Scenario[], runs: ReadonlyMap<string, Measurement[]>): Row[] {
  const base = new Map<string, Measurement[]>();
  for (const s of scenarios) base.set(s.key, runs.get(s.key) ?? []);
  return scenarios.map((s) => {
    const ms = runs.get(s.key) ?? [];
    const baseline = base.get(s.baseline) ?? [];
    const rps = median(ms.map((m) => m.rps));
    const p50 = median(ms.map((m) => m.p50Ms));
    return {
      scenario: s.label,
      key: s.key,
      url: s.urls.join(' + '),
      connections: s.connections,
      rps,
      p50Ms: p50,
      p99Ms: median(ms.map((m) => m.p99Ms)),
      ratioVsDirect: rps / median(baseline.map((m) => m.rps)),
      addedP50Ms: p50 - median(baseline.map((m) => m.p50Ms)),
      requests: ms.reduce((n, m) => n + m.requests, 0),
      errors: ms.reduce((n, m) => n + m.errors, 0),
      timeouts: ms.reduce((n, m) => n + m.timeouts, 0),
      non2xx: ms.reduce((n, m) => n + m.non2xx, 0),
      rounds: ms,
    };
  });
}

function table(rows: readonly Row[]): string {
  const head = ['scenario', 'conns', 'req/s', 'p50 ms', 'p99 ms', '× direct', '+p50 ms', 'errors', 'non-2xx'];
  const body = rows.map((r) => [
    r.scenario,
    String(r.connections),
    Math.round(r.rps).toLocaleString('en-US'),
    r.p50Ms.toFixed(3),
    r.p99Ms.toFixed(3),
    r.ratioVsDirect.toFixed(2),
    r.key.startsWith('direct') ? '—' : r.addedP50Ms.toFixed(3),
    String(r.errors),
    String(r.non2xx),
  ]);
  const widths = head.map((h, i) => Math.max(h.length, ...body.map((b) => (b[i] ?? '').length)));
  const line = (cells: readonly string[]) => `| ${cells.map((c, i) => (i === 0 ? c.padEnd(widths[i] ?? 0) : c.padStart(widths[i] ?? 0))).join(' | ')} |`;
  const rule = `|${widths.map((w, i) => (i === 0 ? ` ${'-'.repeat(w)} ` : ` ${'-'.repeat(w - 1)}: `)).join('|')}|`;
  return [line(head), rule, ...body.map(line)].join('\n');
}

// ---------------------------------------------------------------------------------------------------
// Main

async function main(): Promise<void> {
  const settings = readSettings();
  process.on('SIGINT', () => onSignal('SIGINT'));
  process.on('SIGTERM', () => onSignal('SIGTERM'));

  if (settings.build) await build();
  checkInterrupted();

  const agent = new ConsulDevAgent();
  let stateDir: string | undefined;
  let upstreams: Proc | undefined;
  let sidecar: (Proc & { api: string; proxy: string }) | undefined;
  try {
    log('starting a Consul dev agent (deploy/consul/install.sh provides consul)');
    await agent.start();
    checkInterrupted();
    stateDir = await mkdtemp(join(tmpdir(), 'tandem-bench-'));
    const [upA, upB, apiPort, proxyPort] = (await freePorts(4)) as [number, number, number, number];

    log(`upstreams on 127.0.0.1:${upA} and 127.0.0.1:${upB}`);
    upstreams = await startUpstreams([upA, upB]);
    checkInterrupted();

    log(`tandem start: api 127.0.0.1:${apiPort}, proxy 127.0.0.1:${proxyPort}, consul ${agent.address}`);
    sidecar = await startSidecar(agent.address, apiPort, proxyPort, stateDir);
    await register(sidecar.api, upA);
    await register(sidecar.api, upB);
    log(`registered ${SERVICE} ×2; waiting for both to be healthy`);
    await waitHealthy(sidecar.api, 2, 30_000);
    await sanityCheck(sidecar.proxy);

    const c = settings.connections;
    const direct = [`http://127.0.0.1:${upA}/`, `http://127.0.0.1:${upB}/`];
    const viaTandem = `${sidecar.proxy}/${SERVICE}/`;
    const scenarios: Scenario[] = [
      { key: `direct-c${c}`, label: `direct (2 upstreams)`, urls: direct, connections: c, headers: {}, baseline: `direct-c${c}` },
      { key: `tandem-rr-c${c}`, label: `tandem round-robin`, urls: [viaTandem], connections: c, headers: {}, baseline: `direct-c${c}` },
      { key: `tandem-sticky-c${c}`, label: `tandem sticky (x-stickyid)`, urls: [viaTandem], connections: c, headers: { 'x-stickyid': STICKY_ID }, baseline: `direct-c${c}` },
      { key: 'direct-c1', label: 'direct (1 upstream)', urls: [direct[0] ?? ''], connections: 1, headers: {}, baseline: 'direct-c1' },
      { key: 'tandem-rr-c1', label: 'tandem round-robin', urls: [viaTandem], connections: 1, headers: {}, baseline: 'direct-c1' },
    ];
    // With BENCH_CONNECTIONS=1 the two groups would collide; keep the first of each key.
    const unique = scenarios.filter((s, i) => scenarios.findIndex((t) => t.key === s.key) === i);

    const runs = new Map<string, Measurement[]>();
    const total = unique.length * settings.rounds * (settings.seconds + settings.warmupSeconds);
    log(`${unique.length} scenarios × ${settings.rounds} round(s) × (${settings.warmupSeconds} s warm-up + ${settings.seconds} s) ≈ ${total} s`);
    for (let round = 1; round <= settings.rounds; round++) {
      for (const s of unique) {
        checkInterrupted();
        const proxied = s.key.startsWith('tandem');
        const api = sidecar.api;
        const settle = async (): Promise<number> => (proxied ? waitNotEjected(api, 30_000) : 0);
        if (settings.warmupSeconds > 0) {
          await settle();
          await measure(s.urls, s.connections, settings.warmupSeconds, s.headers);
          checkInterrupted();
        }
        const waited = await settle();
        if (waited > 0) log(`waited ${waited} ms for ejections left by the previous run to expire`);
        const m = { ...(await measure(s.urls, s.connections, settings.seconds, s.headers)), ejectionWaitMs: waited };
        checkInterrupted();
        runs.set(s.key, [...(runs.get(s.key) ?? []), m]);
        log(`round ${round}/${settings.rounds} ${s.key}: ${Math.round(m.rps)} req/s, p50 ${m.p50Ms.toFixed(3)} ms, p99 ${m.p99Ms.toFixed(3)} ms, errors ${m.errors}, non-2xx ${m.non2xx}, ${m.bytesPerResponse} B/response`);
      }
    }

    const rows = summarize(unique, runs);
    const cpu = cpus();
    const report = {
      date: new Date().toISOString(),
      command: 'npm run bench',
      settings: { ...settings, stickyId: STICKY_ID, tool: 'autocannon 8 (programmatic, one process)' },
      machine: { cpus: cpu.length, model: cpu[0]?.model ?? 'unknown', loadavg: loadavg(), node: process.version, platform: `${process.platform}-${process.arch}` },
      notes: 'Not pinned to cores: autocannon, the upstreams and the proxy share the machine. Only same-run ratios are meaningful. p50/p99 are over every response of the measured run(s), in ms; with rounds > 1, figures are medians of the rounds. Before each run through Tandem the bench waits until no instance is ejected (ejectionWaitMs): the end of the previous load run cuts in-flight requests and the proxy counts those client aborts as upstream failures.',
      scenarios: rows,
    };
    await mkdir(join(ROOT, 'bench', 'results'), { recursive: true });
    await writeFile(RESULTS, `${JSON.stringify(report, null, 2)}\n`);

    process.stdout.write(`\n${table(rows)}\n\n`);
    process.stdout.write(`${settings.seconds} s per scenario (after ${settings.warmupSeconds} s warm-up), ${settings.rounds} round(s), ${cpu.length} CPUs, node ${process.version}; written to bench/results/latest.json\n`);
  } catch (err) {
    if (sidecar && sidecar.output().trim()) log(`tandem stderr:\n${sidecar.output().trim()}`);
    if (upstreams && upstreams.output().trim()) log(`upstreams stderr:\n${upstreams.output().trim()}`);
    throw err;
  } finally {
    log('cleaning up');
    const step = async (what: string, fn: () => Promise<void>) => {
      try {
        await fn();
      } catch (err) {
        log(`cleanup: ${what} failed: ${err instanceof Error ? err.message : String(err)}`);
      }
    };
    // The sidecar first: it deregisters its services while Consul is still there.
    if (sidecar) {
      const s = sidecar;
      await step('stop tandem', () => stopChild(s.child, s.exited, 20_000));
    }
    if (upstreams) {
      const u = upstreams;
      await step('stop upstreams', () => stopChild(u.child, u.exited, 3_000));
    }
    await step('stop consul', () => agent.stop());
    if (stateDir) {
      const d = stateDir;
      await step('remove temp dir', () => rm(d, { recursive: true, force: true }));
    }
  }
}

main().then(
  () => {
    process.exitCode = 0;
  },
  (err: unknown) => {
    process.stderr.write(`[bench] failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    process.exitCode = interrupted ? 130 : 1;
  },
);
