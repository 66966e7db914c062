// Soak test: Consul dev agent + 6 upstream processes + `tandem start`, mixed proxy traffic under instance churn (kill -9 / deregister) for SOAK_SECONDS, sidecar RSS sampled.
//
//   npm run soak                                   (builds dist/ first, then 600 s of traffic)
//   SOAK_SECONDS=120 npm run soak                  (a short run)
//   SOAK_SKIP_BUILD=1 npm run soak                 (use the existing dist/)
//   SOAK_CONCURRENCY=8 SOAK_CHURN_SECONDS=20 SOAK_WARMUP_SECONDS=10 npm run soak
//
// Everything listens on 127.0.0.1 and runs in this process tree: the Consul dev agent, the sidecar
// (`node bin/tandem.js start`) and one child process per upstream instance (test/support/upstream-child.mjs),
// registered through the control API with HTTP checks every second: `soak-a` at 1.0.0, 1.1.0 and 2.0.0,
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
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { cpus, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { Pool } from 'undici';
import { ConsulDevAgent } from '../src/consul/consul-dev-agent.ts';
import { freePorts } from '../src/common/free-port.ts';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const BIN = join(ROOT, 'bin', 'tandem.js');
const UPSTREAM = join(ROOT, 'test', 'support', 'upstream-child.mjs');
const RESULTS = join(ROOT, 'bench', 'results', 'soak.json');

const STICKY_KEYS = 1000;
const RSS_EVERY_MS = 30_000;
/** kill -9 → restart on the same port after this long. */
const KILL_DOWN_MS = 5_000;
/** DELETE → POST again this long after the DELETE was sent (the DELETE itself drains for ~2 s). */
const DEREG_DOWN_MS = 5_000;
/** How long a churned instance may take to be routable again (healthy, not ejected) in the sidecar's view. */
const RECOVER_TIMEOUT_MS = 30_000;
/** Client-side timeouts per request (the proxy's own upstream timeout is 30 s, its whole-request budget 60 s). */
const REQUEST_TIMEOUT_MS = 20_000;
/** Requests that end this long after a churn event's recovery still count as "in its window". */
const WINDOW_GRACE_MS = 2_000;
const MAX_FAILURE_DETAILS = 1000;
const LATENCY_RESERVOIR = 200_000;

// ---------------------------------------------------------------------------------------------------
// Settings

interface Settings {
  seconds: number;
  concurrency: number;
  churnSeconds: number;
  warmupSeconds: number;
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
  const seconds = intEnv('SOAK_SECONDS', 600, 20);
  const warmup = intEnv('SOAK_WARMUP_SECONDS', Math.min(10, Math.floor(seconds / 6)), 0);
  return {
    seconds,
    concurrency: intEnv('SOAK_CONCURRENCY', 8, 1),
    churnSeconds: intEnv('SOAK_CHURN_SECONDS', 20, 12),
    warmupSeconds: Math.min(warmup, Math.floor(seconds / 2)),
    build: !['1', 'true', 'yes'].includes((process.env['SOAK_SKIP_BUILD'] ?? '').toLowerCase()),
  };
}

// ---------------------------------------------------------------------------------------------------
// Interruption, processes and cleanup

let interrupted = false;
/** Aborted on SIGINT/SIGTERM or when the sidecar dies: every wait of the run gives up. */
const interruptCtl = new AbortController();
const children = new Set<ChildProcess>();

function checkInterrupted(): void {
  if (interruptCtl.signal.aborted) throw new Error(interrupted ? 'interrupted' : String(interruptCtl.signal.reason));
}

function onSignal(signal: NodeJS.Signals): void {
  if (interrupted) {
    // Second signal: give up on a graceful stop. The exit hooks kill the children and the agent.
    process.exit(130);
  }
  interrupted = true;
  log(`${signal}: stopping the soak run and cleaning up (again to force)`);
  interruptCtl.abort(new Error(`interrupted by ${signal}`));
}

// Last resort if this process dies without running its finally blocks.
process.on('exit', () => {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
});

function log(msg: string): void {
  process.stderr.write(`[soak] ${new Date().toISOString().slice(11, 19)} ${msg}\n`);
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** Waits `ms`; resolves false at once (and early) when `signal` aborts. */
function pause(ms: number, signal: AbortSignal): Promise<boolean> {
  if (signal.aborted) return Promise.resolve(false);
  return new Promise((resolve) => {
    const onAbort = () => {
      clearTimeout(timer);
      resolve(false);
    };
    const timer = setTimeout(() => {
      signal.removeEventListener('abort', onAbort);
      resolve(true);
    }, Math.max(0, ms));
    signal.addEventListener('abort', onAbort, { once: true });
  });
}

interface Proc {
  child: ChildProcess;
  exited: Promise<void>;
  output: () => string;
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

function alive(child: ChildProcess): boolean {
  return child.exitCode === null && child.signalCode === null;
}

/** SIGTERM, then SIGKILL after `graceMs`; resolves once the process has exited. */
async function stopChild(p: Proc, graceMs: number): Promise<void> {
  if (!alive(p.child)) return;
  p.child.kill('SIGTERM');
  const timer = setTimeout(() => p.child.kill('SIGKILL'), graceMs);
  await p.exited;
  clearTimeout(timer);
}

function errCode(err: unknown): string | undefined {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === 'string' ? code : undefined;
}

function errMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

async function build(): Promise<void> {
  log('npm run build (SOAK_SKIP_BUILD=1 to skip)');
  try {
    await promisify(execFile)('npm', ['run', 'build'], { cwd: ROOT, timeout: 300_000 });
  } catch (err) {
    const e = err as { stdout?: string; stderr?: string; message: string };
    throw new Error(`npm run build failed:\n${e.stdout ?? ''}${e.stderr ?? ''}${e.message}`, { cause: err });
  }
}

// ---------------------------------------------------------------------------------------------------
// Upstream instances (one child process each, so one can be killed with SIGKILL)

type ServiceName = 'soak-a' | 'soak-b';

interface Instance {
  service: ServiceName;
  version: string;
  port: number;
  /** What the app answers as its `name`: `<service>@<version>`. */
  label: string;
  /** The registration id (from POST /v1/services). */
  id: string;
  proc: Proc | undefined;
}

async function startUpstream(inst: Instance): Promise<Proc> {
  let last = '';
  // After a SIGKILL the port is normally free at once; retry a few times in case it is not yet.
  for (let attempt = 1; attempt <= 20; attempt++) {
    checkInterrupted();
    const child = spawn(process.execPath, [UPSTREAM, String(inst.port), inst.label], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
    const exited = track(child);
    let err = '';
    child.stderr?.on('data', (d: Buffer) => {
      err += d.toString();
      if (err.length > 20_000) err = err.slice(-10_000);
    });
    const ready = await new Promise<boolean>((resolve) => {
      const timer = setTimeout(() => resolve(false), 10_000);
      child.stdout?.on('data', (d: Buffer) => {
        if (d.toString().includes('ready')) {
          clearTimeout(timer);
          resolve(true);
        }
      });
      void exited.then(() => {
        clearTimeout(timer);
        resolve(false);
      });
    });
    if (ready) return { child, exited, output: () => err };
    last = `exit ${String(child.exitCode ?? child.signalCode)}: ${err.trim().split('\n').slice(-3).join(' | ')}`;
    child.kill('SIGKILL');
    await exited;
    await sleep(250);
  }
  throw new Error(`upstream ${inst.label} did not start on 127.0.0.1:${inst.port}: ${last}`);
}

// ---------------------------------------------------------------------------------------------------
// The sidecar and its control API

interface Sidecar extends Proc {
  api: string;
  proxy: string;
  pid: number;
  /** Lines the sidecar wrote on stderr (pino JSON at --log-level warn), the last ones kept. */
  lines: string[];
  warnLines: number;
  errorLines: number;
}

async function startSidecar(consul: string, apiPort: number, proxyPort: number, stateDir: string): Promise<Sidecar> {
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
  const pid = child.pid;
  if (pid === undefined) throw new Error('could not spawn tandem');
  let err = '';
  let partial = '';
  const sc: Sidecar = { child, exited, output: () => err, api: `http://127.0.0.1:${apiPort}`, proxy: `http://127.0.0.1:${proxyPort}`, pid, lines: [], warnLines: 0, errorLines: 0 };
  child.stderr?.on('data', (d: Buffer) => {
    const s = d.toString();
    err += s;
    if (err.length > 100_000) err = err.slice(-50_000);
    partial += s;
    const parts = partial.split('\n');
    partial = parts.pop() ?? '';
    for (const line of parts) {
      if (line.trim() === '') continue;
      const level = /"level":(\d+)/.exec(line)?.[1];
      if (level !== undefined && Number(level) >= 50) sc.errorLines++;
      else sc.warnLines++;
      sc.lines.push(line.length > 2000 ? `${line.slice(0, 2000)}…` : line);
      if (sc.lines.length > 200) sc.lines.shift();
    }
  });
  const deadline = Date.now() + 20_000;
  for (;;) {
    checkInterrupted();
    if (!alive(child)) throw new Error(`tandem exited during start (${String(child.exitCode ?? child.signalCode)}): ${err}`);
    try {
      const res = await fetch(`${sc.api}/v1/health`, { signal: AbortSignal.timeout(1000) });
      await res.arrayBuffer();
      if (res.ok) break;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) throw new Error(`tandem's control API did not answer within 20 s: ${err}`);
    await sleep(100);
  }
  return sc;
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

async function callApi(base: string, method: string, path: string, body?: unknown): Promise<{ status: number; json: unknown; text: string }> {
  const res = await fetch(`${base}${path}`, {
    method,
    signal: AbortSignal.timeout(10_000),
    ...(body === undefined ? {} : { body: JSON.stringify(body), headers: { 'content-type': 'application/json' } }),
  });
  const text = await res.text();
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    json = undefined;
  }
  return { status: res.status, json, text };
}

async function register(api: string, inst: Instance): Promise<string> {
  const spec = { name: inst.service, version: inst.version, port: inst.port, check: { kind: 'http', path: '/health', intervalMs: 1000 } };
  const r = await callApi(api, 'POST', '/v1/services', spec);
  if (r.status !== 201) throw new Error(`POST /v1/services ${inst.label} (port ${inst.port}) answered ${r.status}: ${r.text.slice(0, 300)}`);
  const id = isRecord(r.json) ? r.json['id'] : undefined;
  if (typeof id !== 'string') throw new Error(`POST /v1/services answered without an id: ${r.text.slice(0, 300)}`);
  return id;
}

interface InstanceView {
  id: string;
  port: number;
  version: string;
  healthy: boolean;
  ejected: boolean;
}

/** The sidecar's current routing view of a service (GET /v1/instances/:service). */
async function instances(api: string, service: ServiceName): Promise<InstanceView[]> {
  const r = await callApi(api, 'GET', `/v1/instances/${service}`);
  if (r.status !== 200 || !isRecord(r.json) || !Array.isArray(r.json['instances'])) throw new Error(`GET /v1/instances/${service} answered ${r.status}: ${r.text.slice(0, 300)}`);
  const out: InstanceView[] = [];
  for (const i of r.json['instances'] as unknown[]) {
    if (!isRecord(i)) continue;
    out.push({
      id: String(i['id']),
      port: Number(i['port']),
      version: String(i['version']),
      healthy: i['healthy'] === true,
      ejected: i['ejected'] === true,
    });
  }
  return out;
}

/** Polls `probe` every 100 ms until it returns true; false if `timeoutMs` passes (or the run is interrupted). */
async function waitUntil(probe: () => Promise<boolean>, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      if (await probe()) return true;
    } catch {
      // the control API may be busy; try again
    }
    if (Date.now() > deadline) return false;
    if (!(await pause(100, interruptCtl.signal))) return false;
  }
}

async function allRoutable(api: string, insts: readonly Instance[]): Promise<boolean> {
  for (const service of ['soak-a', 'soak-b'] as const) {
    const view = await instances(api, service);
    for (const inst of insts.filter((i) => i.service === service)) {
      const v = view.find((x) => x.id === inst.id);
      if (!v || !v.healthy || v.ejected) return false;
    }
  }
  return true;
}

// ---------------------------------------------------------------------------------------------------
// Traffic

type RequestKind = 'rr-get' | 'ranged-get' | 'sticky-get' | 'post-idempotent';
const REQUEST_KINDS: readonly RequestKind[] = ['rr-get', 'ranged-get', 'sticky-get', 'post-idempotent'];
/** Shares of the mix, out of 20. */
const MIX: readonly [RequestKind, number][] = [
  ['rr-get', 7],
  ['ranged-get', 4],
  ['sticky-get', 6],
  ['post-idempotent', 3],
];

function pickKind(): RequestKind {
  let r = Math.random() * 20;
  for (const [kind, weight] of MIX) {
    r -= weight;
    if (r < 0) return kind;
  }
  return 'rr-get';
}

type ChurnKind = 'kill' | 'deregister';

interface ChurnEvent {
  n: number;
  kind: ChurnKind;
  instance: string;
  port: number;
  /** Seconds since the traffic started. */
  at: number;
  start: number;
  /** When the instance was routable again (+ WINDOW_GRACE_MS ends its window); undefined while open. */
  end: number | undefined;
  /** kill: the sidecar's view showed it ejected / not healthy this long after the SIGKILL. */
  ejectedAfterMs?: number;
  unhealthyAfterMs?: number;
  restartedAfterMs?: number;
  /** deregister: DELETE answered (status, after ms), gone from the sidecar's view, registered again. */
  deleteStatus?: number;
  deleteMs?: number;
  goneAfterMs?: number;
  reregisteredAfterMs?: number;
  /** Healthy and not ejected in the sidecar's view again. */
  recoveredAfterMs?: number;
  /** Requests that overlapped the event's window, failures among them, and (kill) those in flight at the SIGKILL. */
  requests: number;
  failures: number;
  inFlightAtKill: number;
  inFlightAtKillFailures: number;
  error?: string;
}

interface FailureRecord {
  /** Seconds since the traffic started, when the request ended. */
  at: number;
  kind: RequestKind;
  method: string;
  path: string;
  status?: number;
  code?: string;
  tandemError?: string;
  instance?: string;
  latencyMs: number;
  message: string;
  /** The churn event whose window the request overlapped, if any. */
  churn?: number;
  inFlightAtKill: boolean;
}

interface Bucket {
  requests: number;
  failures: number;
}

interface IntervalCounters {
  requests: number;
  failures: number;
  latencies: number[];
}

class Stats {
  readonly t0: number;
  requests = 0;
  ok = 0;
  failures = 0;
  wrongAnswers = 0;
  byKind = new Map<RequestKind, Bucket>(REQUEST_KINDS.map((k) => [k, { requests: 0, failures: 0 }]));
  /** `<status> <x-tandem-error>` or the network error code → count. */
  byCause = new Map<string, number>();
  inChurnWindow: Bucket = { requests: 0, failures: 0 };
  inFlightAtKill: Bucket = { requests: 0, failures: 0 };
  outsideChurn: Bucket = { requests: 0, failures: 0 };
  details: FailureRecord[] = [];
  perInstance = new Map<string, number>();
  /** Sticky key → the instance that served it last and when (ms). */
  stickyOwner = new Map<string, { instance: string; at: number }>();
  stickyMoved = 0;
  stickyMovedOutsideChurn = 0;
  stickyReassigned = 0;
  /** Owner changes with no churn event between the key's previous request and this one. */
  stickyReassignedOutsideChurn = 0;
  maxLatencyMs = 0;
  reservoir: number[] = [];
  seen = 0;
  interval: IntervalCounters = { requests: 0, failures: 0, latencies: [] };
  events: ChurnEvent[] = [];

  constructor(t0: number) {
    this.t0 = t0;
  }

  /** The churn event whose window [start, end + grace] overlaps [start, end] (events never overlap each other). */
  attribute(start: number, end: number): ChurnEvent | undefined {
    for (let i = this.events.length - 1; i >= 0; i--) {
      const ev = this.events[i];
      if (!ev) continue;
      if (ev.end !== undefined && ev.end + WINDOW_GRACE_MS < start) return undefined;
      if (ev.start <= end) return ev;
    }
    return undefined;
  }

  latency(ms: number): void {
    this.interval.latencies.push(ms);
    if (ms > this.maxLatencyMs) this.maxLatencyMs = ms;
    this.seen++;
    if (this.reservoir.length < LATENCY_RESERVOIR) this.reservoir.push(ms);
    else {
      const j = Math.floor(Math.random() * this.seen);
      if (j < LATENCY_RESERVOIR) this.reservoir[j] = ms;
    }
  }
}

interface Expected {
  service: ServiceName;
  /** The upstream must be at this major version (ranged requests). */
  major?: number;
  /** What the upstream must see as its URL. */
  url: string;
}

/** Checks that a 2xx came from the right kind of instance for the right path; a problem description otherwise. */
function validate(text: string, instance: string | undefined, exp: Expected): string | undefined {
  let body: unknown;
  try {
    body = JSON.parse(text);
  } catch {
    return `2xx body is not JSON: ${text.slice(0, 120)}`;
  }
  if (!isRecord(body)) return `2xx body is not an object: ${text.slice(0, 120)}`;
  const name = body['name'];
  if (typeof name !== 'string' || !name.startsWith(`${exp.service}@`)) return `answered by ${String(name)}, expected ${exp.service}`;
  if (exp.major !== undefined) {
    const major = Number(name.slice(exp.service.length + 1).split('.')[0]);
    if (major !== exp.major) return `answered by ${name}, outside the requested range ^${exp.major}`;
  }
  if (body['url'] !== exp.url) return `upstream saw url ${String(body['url'])}, expected ${exp.url}`;
  if (instance === undefined) return 'no x-tandem-instance header';
  if (!instance.startsWith(`${exp.service}-`) || !instance.endsWith(`-${String(body['port'])}`)) return `x-tandem-instance ${instance} does not match the answering app (${name} on port ${String(body['port'])})`;
  return undefined;
}

function headerValue(v: string | string[] | undefined): string | undefined {
  return Array.isArray(v) ? v[0] : v;
}

interface Traffic {
  pool: Pool;
  stats: Stats;
  stop: boolean;
}

async function oneRequest(t: Traffic, loop: number, seq: number): Promise<void> {
  const kind = pickKind();
  const tag = `${loop}-${seq}`;
  let method: 'GET' | 'POST' = 'GET';
  let path: string;
  let exp: Expected;
  let body: string | undefined;
  let stickyKey: string | undefined;
  const headers: Record<string, string> = {};
  switch (kind) {
    case 'rr-get':
      path = `/soak-a/rr/${tag}?q=${seq}`;
      exp = { service: 'soak-a', url: `/rr/${tag}?q=${seq}` };
      break;
    case 'ranged-get':
      // Raw and URL-encoded ranges alternate.
      path = seq % 2 === 0 ? `/soak-a@^1/ranged/${tag}` : `/soak-a@%5E1/ranged/${tag}`;
      exp = { service: 'soak-a', major: 1, url: `/ranged/${tag}` };
      break;
    case 'sticky-get': {
      stickyKey = `key-${Math.floor(Math.random() * STICKY_KEYS)}`;
      headers['x-stickyid'] = stickyKey;
      path = `/soak-b/sticky/${stickyKey}`;
      exp = { service: 'soak-b', url: `/sticky/${stickyKey}` };
      break;
    }
    case 'post-idempotent': {
      const service: ServiceName = seq % 2 === 0 ? 'soak-a' : 'soak-b';
      method = 'POST';
      path = `/${service}/orders/${tag}`;
      exp = { service, url: `/orders/${tag}` };
      body = JSON.stringify({ order: tag, items: Math.floor(Math.random() * 10), note: 'x'.repeat(Math.floor(Math.random() * 512)) });
      headers['content-type'] = 'application/json';
      headers['idempotency-key'] = `soak-${tag}`;
      break;
    }
  }

  const start = Date.now();
  const p0 = performance.now();
  let status: number | undefined;
  let code: string | undefined;
  let tandemError: string | undefined;
  let instance: string | undefined;
  let sticky: string | undefined;
  let problem: string | undefined;
  let wrong = false;
  try {
    const res = await t.pool.request({
      path,
      method,
      headers,
      headersTimeout: REQUEST_TIMEOUT_MS,
      bodyTimeout: REQUEST_TIMEOUT_MS,
      ...(body === undefined ? {} : { body }),
    });
    const text = await res.body.text();
    status = res.statusCode;
    instance = headerValue(res.headers['x-tandem-instance']);
    tandemError = headerValue(res.headers['x-tandem-error']);
    sticky = headerValue(res.headers['x-tandem-sticky']);
    if (status < 200 || status >= 300) problem = text.slice(0, 300);
    else {
      problem = validate(text, instance, exp);
      wrong = problem !== undefined;
    }
  } catch (err) {
    code = errCode(err) ?? 'ERROR';
    // The run was interrupted and the client pool destroyed under this request: not the proxy's doing.
    if (t.stop && code === 'UND_ERR_DESTROYED') return;
    problem = errMessage(err);
  }
  const end = Date.now();
  const latencyMs = performance.now() - p0;

  const s = t.stats;
  const failed = problem !== undefined;
  s.requests++;
  s.interval.requests++;
  s.latency(latencyMs);
  const k = s.byKind.get(kind);
  if (k) {
    k.requests++;
    if (failed) k.failures++;
  }
  const ev = s.attribute(start, end);
  const atKill = ev !== undefined && ev.kind === 'kill' && start < ev.start && end >= ev.start;
  const bucket = ev ? s.inChurnWindow : s.outsideChurn;
  bucket.requests++;
  if (ev) ev.requests++;
  if (atKill && ev) {
    ev.inFlightAtKill++;
    s.inFlightAtKill.requests++;
  }
  if (instance !== undefined && !failed) s.perInstance.set(instance, (s.perInstance.get(instance) ?? 0) + 1);
  if (stickyKey !== undefined && instance !== undefined && !failed) {
    if (sticky === 'moved') {
      s.stickyMoved++;
      if (!ev) s.stickyMovedOutsideChurn++;
    }
    const before = s.stickyOwner.get(stickyKey);
    if (before !== undefined && before.instance !== instance) {
      s.stickyReassigned++;
      if (!s.attribute(before.at, end)) {
        s.stickyReassignedOutsideChurn++;
        log(`sticky ${stickyKey} moved from ${before.instance} to ${instance} with no churn since its previous request`);
      }
    }
    s.stickyOwner.set(stickyKey, { instance, at: end });
  }
  if (!failed) {
    s.ok++;
    return;
  }
  s.failures++;
  s.interval.failures++;
  if (wrong) s.wrongAnswers++;
  bucket.failures++;
  if (ev) ev.failures++;
  if (atKill && ev) {
    ev.inFlightAtKillFailures++;
    s.inFlightAtKill.failures++;
  }
  const cause = wrong ? 'wrong answer' : status !== undefined ? `${status}${tandemError ? ` ${tandemError}` : ''}` : (code ?? 'ERROR');
  s.byCause.set(cause, (s.byCause.get(cause) ?? 0) + 1);
  const rec: FailureRecord = {
    at: Math.round((end - s.t0) / 100) / 10,
    kind,
    method,
    path,
    latencyMs: Math.round(latencyMs * 10) / 10,
    message: problem ?? '',
    inFlightAtKill: atKill,
    ...(status !== undefined ? { status } : {}),
    ...(code !== undefined ? { code } : {}),
    ...(tandemError !== undefined ? { tandemError } : {}),
    ...(instance !== undefined ? { instance } : {}),
    ...(ev ? { churn: ev.n } : {}),
  };
  if (s.details.length < MAX_FAILURE_DETAILS) s.details.push(rec);
  if (s.failures <= 200) log(`FAILED ${method} ${path}: ${cause}${instance ? ` (instance ${instance})` : ''}${ev ? ` [churn #${ev.n} ${ev.kind}]` : ''}: ${rec.message.slice(0, 200)}`);
}

/**
 * Before the load: every soak-a instance answers round-robin, ranged requests stay on 1.x and a sticky key stays
 * on one soak-b instance. Fails fast (5 s per request) when the proxy does not answer at all.
 */
async function sanityCheck(proxy: string): Promise<void> {
  const get = async (path: string, headers: Record<string, string> = {}): Promise<{ name: string; instance: string }> => {
    let res: Response;
    try {
      res = await fetch(`${proxy}${path}`, { headers, signal: AbortSignal.timeout(5_000) });
    } catch (err) {
      throw new Error(`sanity check: GET ${proxy}${path} got no answer (${errCode(err) ?? errMessage(err)}); is dist/ a complete build?`, { cause: err });
    }
    const text = await res.text();
    if (res.status !== 200) throw new Error(`sanity check: GET ${path} answered ${res.status}: ${text.slice(0, 300)}`);
    const body: unknown = JSON.parse(text);
    return { name: isRecord(body) ? String(body['name']) : '?', instance: res.headers.get('x-tandem-instance') ?? '?' };
  };
  const rr = new Set<string>();
  for (let i = 0; i < 12; i++) rr.add((await get(`/soak-a/sanity/${i}`)).instance);
  if (rr.size !== 3) throw new Error(`sanity check: round-robin reached ${rr.size} soak-a instance(s) in 12 requests: ${[...rr].join(', ')}`);
  for (let i = 0; i < 6; i++) {
    const r = await get(`/soak-a@^1/sanity/${i}`);
    if (!r.name.startsWith('soak-a@1.')) throw new Error(`sanity check: /soak-a@^1 answered by ${r.name}`);
  }
  const sticky = new Set<string>();
  for (let i = 0; i < 6; i++) sticky.add((await get('/soak-b/sanity', { 'x-stickyid': 'sanity-key' })).instance);
  if (sticky.size !== 1) throw new Error(`sanity check: one sticky key reached ${sticky.size} soak-b instances: ${[...sticky].join(', ')}`);
}

async function trafficLoop(t: Traffic, loop: number): Promise<void> {
  let seq = 0;
  while (!t.stop) await oneRequest(t, loop, seq++);
}

// ---------------------------------------------------------------------------------------------------
// Churn

interface ChurnCtx {
  api: string;
  all: readonly Instance[];
  victims: readonly Instance[];
  stats: Stats;
  churnMs: number;
  /** No event starts later than this (so each one finishes before the traffic stops). */
  lastStart: number;
  /** Aborted at the end of the run: no new event starts. */
  end: AbortSignal;
  skipped: number;
}

async function viewOf(api: string, inst: Instance): Promise<InstanceView | undefined> {
  return (await instances(api, inst.service)).find((v) => v.id === inst.id);
}

async function killEvent(c: ChurnCtx, victim: Instance, ev: ChurnEvent): Promise<void> {
  const proc = victim.proc;
  if (!proc) throw new Error(`${victim.id} has no process`);
  proc.child.kill('SIGKILL');
  await proc.exited;
  victim.proc = undefined;
  // Until the restart: when does the sidecar stop routing to it (ejected after failures, or critical in Consul)?
  const restartAt = ev.start + KILL_DOWN_MS;
  while (Date.now() < restartAt && !interruptCtl.signal.aborted) {
    try {
      const v = await viewOf(c.api, victim);
      const now = Date.now();
      if (v?.ejected && ev.ejectedAfterMs === undefined) ev.ejectedAfterMs = now - ev.start;
      if ((!v || !v.healthy) && ev.unhealthyAfterMs === undefined) ev.unhealthyAfterMs = now - ev.start;
    } catch {
      // keep polling
    }
    await pause(Math.min(100, restartAt - Date.now()), interruptCtl.signal);
  }
  checkInterrupted();
  victim.proc = await startUpstream(victim);
  ev.restartedAfterMs = Date.now() - ev.start;
}

async function deregisterEvent(c: ChurnCtx, victim: Instance, ev: ChurnEvent): Promise<void> {
  const r = await callApi(c.api, 'DELETE', `/v1/services/${encodeURIComponent(victim.id)}`);
  ev.deleteStatus = r.status;
  ev.deleteMs = Date.now() - ev.start;
  if (r.status !== 200) throw new Error(`DELETE /v1/services/${victim.id} answered ${r.status}: ${r.text.slice(0, 300)}`);
  if (await waitUntil(async () => (await viewOf(c.api, victim)) === undefined, 10_000)) ev.goneAfterMs = Date.now() - ev.start;
  await pause(ev.start + DEREG_DOWN_MS - Date.now(), interruptCtl.signal);
  checkInterrupted();
  const id = await register(c.api, victim);
  if (id !== victim.id) throw new Error(`registered again as ${id}, was ${victim.id}`);
  ev.reregisteredAfterMs = Date.now() - ev.start;
}

async function churnLoop(c: ChurnCtx): Promise<void> {
  let n = 0;
  let next = Date.now() + 5_000;
  for (;;) {
    if (!(await pause(next - Date.now(), c.end))) return;
    if (Date.now() > c.lastStart) return;
    // One instance down at a time: start only when every instance is routable (so ≥ 2 of each stay up).
    if (!(await waitUntil(() => allRoutable(c.api, c.all), 30_000))) {
      if (interruptCtl.signal.aborted) return;
      c.skipped++;
      log('churn: skipped an event, not every instance was routable within 30 s');
      next = Date.now() + c.churnMs;
      continue;
    }
    const victim = c.victims[n % c.victims.length];
    if (!victim) return;
    const kind: ChurnKind = n % 2 === 0 ? 'kill' : 'deregister';
    const start = Date.now();
    const ev: ChurnEvent = {
      n: n + 1,
      kind,
      instance: victim.id,
      port: victim.port,
      at: Math.round((start - c.stats.t0) / 100) / 10,
      start,
      end: undefined,
      requests: 0,
      failures: 0,
      inFlightAtKill: 0,
      inFlightAtKillFailures: 0,
    };
    c.stats.events.push(ev);
    log(`churn #${ev.n}: ${kind === 'kill' ? 'kill -9' : 'DELETE'} ${victim.id} at ${ev.at} s`);
    try {
      await (kind === 'kill' ? killEvent(c, victim, ev) : deregisterEvent(c, victim, ev));
      if (await waitUntil(async () => {
        const v = await viewOf(c.api, victim);
        return v !== undefined && v.healthy && !v.ejected;
      }, RECOVER_TIMEOUT_MS)) ev.recoveredAfterMs = Date.now() - ev.start;
      else if (!interruptCtl.signal.aborted) ev.error = `not routable again within ${RECOVER_TIMEOUT_MS} ms`;
    } catch (err) {
      ev.error = errMessage(err);
    }
    ev.end = Date.now();
    log(`churn #${ev.n}: done${ev.recoveredAfterMs !== undefined ? `, routable again after ${ev.recoveredAfterMs} ms` : ''}${ev.error ? ` — ${ev.error}` : ''}`);
    if (interruptCtl.signal.aborted) return;
    n++;
    next = Math.max(start + c.churnMs, Date.now() + 1_000);
  }
}

// ---------------------------------------------------------------------------------------------------
// Sampling the sidecar process

interface ProcSample {
  /** Seconds since the traffic started. */
  t: number;
  rssKb: number;
  hwmKb: number;
  fds: number;
}

interface SeriesPoint extends ProcSample {
  /** Over the interval since the previous point. */
  requests: number;
  failures: number;
  rps: number;
  p50Ms: number;
  p99Ms: number;
}

async function sampleProc(pid: number, t0: number): Promise<ProcSample> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8');
  const kb = (field: string): number => Number(new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(status)?.[1] ?? Number.NaN);
  let fds = Number.NaN;
  try {
    fds = (await readdir(`/proc/${pid}/fd`)).length;
  } catch {
    // not readable
  }
  return { t: Math.round((Date.now() - t0) / 100) / 10, rssKb: kb('VmRSS'), hwmKb: kb('VmHWM'), fds };
}

function percentile(sorted: Float64Array, p: number): number {
  if (sorted.length === 0) return Number.NaN;
  const idx = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[idx] ?? Number.NaN;
}

function round(n: number, digits = 2): number {
  const f = 10 ** digits;
  return Math.round(n * f) / f;
}

/** Least-squares slope of RSS over time, in kB per minute. */
function slopeKbPerMin(points: readonly ProcSample[]): number {
  const pts = points.filter((p) => Number.isFinite(p.rssKb));
  if (pts.length < 2) return Number.NaN;
  const mx = pts.reduce((a, p) => a + p.t, 0) / pts.length;
  const my = pts.reduce((a, p) => a + p.rssKb, 0) / pts.length;
  let num = 0;
  let den = 0;
  for (const p of pts) {
    num += (p.t - mx) * (p.rssKb - my);
    den += (p.t - mx) ** 2;
  }
  return den === 0 ? Number.NaN : (num / den) * 60;
}

// ---------------------------------------------------------------------------------------------------
// Summary

interface Summary {
  date: string;
  command: string;
  settings: Settings & { stickyKeys: number; killDownMs: number; deregDownMs: number; checkIntervalMs: number };
  machine: { cpus: number; model: string; loadavg: number[]; node: string; platform: string };
  passed: boolean;
  error?: string;
  durationSeconds: number;
  requests: number;
  rps: number;
  ok: number;
  latencyMs: { p50: number; p99: number; max: number };
  failures: {
    total: number;
    /** Every request of the mix is retry-safe (GET, or POST with Idempotency-Key). */
    idempotent: number;
    wrongAnswers: number;
    byRequestKind: Record<RequestKind, Bucket>;
    byCause: Record<string, number>;
    inFlightAtKill: Bucket;
    inChurnWindows: Bucket;
    outsideChurn: Bucket;
    details: FailureRecord[];
    detailsTruncated: boolean;
  };
  sticky: { keys: number; movedResponses: number; movedOutsideChurn: number; reassigned: number; reassignedOutsideChurn: number };
  perInstance: Record<string, number>;
  rss: {
    startKb: number;
    middleKb: number;
    endKb: number;
    hwmKb: number;
    startFds: number;
    endFds: number;
    slopeKbPerMinAfterWarmup: number;
    series: SeriesPoint[];
  };
  churn: { kills: number; deregistrations: number; skipped: number; withErrors: number; events: Omit<ChurnEvent, 'start' | 'end'>[] };
  sidecarLog: { warnLines: number; errorLines: number; tail: string[] };
}

function fmtKb(kb: number): string {
  return Number.isFinite(kb) ? `${(kb / 1024).toFixed(1)} MiB` : 'n/a';
}

function printSummary(s: Summary): void {
  const f = s.failures;
  const out: string[] = [];
  out.push('');
  out.push(`Tandem soak: ${s.durationSeconds} s, ${s.requests} requests, ${s.rps} req/s (${s.settings.concurrency} loops), latency p50 ${s.latencyMs.p50} ms, p99 ${s.latencyMs.p99} ms, max ${s.latencyMs.max} ms`);
  out.push(`failures: ${f.total} (of retry-safe requests — GET, or POST with Idempotency-Key, i.e. all of them: ${f.idempotent}; 2xx from the wrong service/version/path: ${f.wrongAnswers})`);
  for (const k of REQUEST_KINDS) out.push(`  ${k.padEnd(16)} ${String(f.byRequestKind[k].requests).padStart(9)} requests, ${f.byRequestKind[k].failures} failed`);
  out.push(`  in flight at a kill -9: ${f.inFlightAtKill.requests} requests, ${f.inFlightAtKill.failures} failed`);
  out.push(`  in churn windows:       ${f.inChurnWindows.requests} requests, ${f.inChurnWindows.failures} failed`);
  out.push(`  outside churn:          ${f.outsideChurn.requests} requests, ${f.outsideChurn.failures} failed`);
  for (const [cause, n] of Object.entries(f.byCause)) out.push(`  cause ${cause}: ${n}`);
  for (const d of f.details.slice(0, 50)) {
    out.push(`  - at ${d.at} s ${d.method} ${d.path}: ${d.status ?? d.code ?? ''}${d.tandemError ? ` ${d.tandemError}` : ''}${d.churn !== undefined ? ` [churn #${d.churn}]` : ''}${d.inFlightAtKill ? ' [in flight at kill]' : ''} ${d.message.slice(0, 160)}`);
  }
  if (f.details.length > 50) out.push(`  … ${f.details.length - 50} more in bench/results/soak.json`);
  out.push(`sticky: ${s.sticky.keys} keys, ${s.sticky.movedResponses} 'moved' responses (${s.sticky.movedOutsideChurn} outside churn windows), ${s.sticky.reassigned} owner changes (${s.sticky.reassignedOutsideChurn} with no churn since the key's previous request)`);
  out.push(`served per instance: ${Object.entries(s.perInstance).map(([id, n]) => `${id} ${n}`).join(', ')}`);
  out.push(`sidecar RSS: start ${fmtKb(s.rss.startKb)}, middle ${fmtKb(s.rss.middleKb)}, end ${fmtKb(s.rss.endKb)} (peak ${fmtKb(s.rss.hwmKb)}; trend ${round(s.rss.slopeKbPerMinAfterWarmup, 1)} kB/min after warm-up); fds ${s.rss.startFds} → ${s.rss.endFds}`);
  out.push(`  series (t s: RSS, fds, req/s, p99 ms): ${s.rss.series.map((p) => `${p.t}: ${fmtKb(p.rssKb)}, ${p.fds}, ${p.rps}, ${p.p99Ms}`).join(' | ')}`);
  out.push(`churn: ${s.churn.kills} kill -9 + restart, ${s.churn.deregistrations} DELETE + register again, ${s.churn.skipped} skipped, ${s.churn.withErrors} with errors`);
  for (const e of s.churn.events) {
    const steps =
      e.kind === 'kill'
        ? `ejected +${e.ejectedAfterMs ?? '-'} ms, unhealthy +${e.unhealthyAfterMs ?? '-'} ms, restarted +${e.restartedAfterMs ?? '-'} ms`
        : `DELETE ${e.deleteStatus ?? '-'} in ${e.deleteMs ?? '-'} ms, gone +${e.goneAfterMs ?? '-'} ms, registered again +${e.reregisteredAfterMs ?? '-'} ms`;
    out.push(`  #${e.n} ${String(e.at).padStart(6)} s ${e.kind.padEnd(10)} ${e.instance}: ${steps}, routable +${e.recoveredAfterMs ?? '-'} ms; ${e.requests} requests in window, ${e.failures} failed${e.kind === 'kill' ? `, ${e.inFlightAtKill} in flight at the kill (${e.inFlightAtKillFailures} failed)` : ''}${e.error ? ` ERROR ${e.error}` : ''}`);
  }
  out.push(`sidecar log (warn+): ${s.sidecarLog.warnLines} warn, ${s.sidecarLog.errorLines} error lines`);
  out.push(`${s.passed ? 'PASSED' : 'FAILED'}${s.error ? `: ${s.error}` : ''}; written to bench/results/soak.json`);
  process.stdout.write(`${out.join('\n')}\n`);
}

// ---------------------------------------------------------------------------------------------------
// Main

async function main(): Promise<number> {
  const settings = readSettings();
  process.on('SIGINT', () => onSignal('SIGINT'));
  process.on('SIGTERM', () => onSignal('SIGTERM'));

  if (settings.build) await build();
  checkInterrupted();

  const agent = new ConsulDevAgent();
  let stateDir: string | undefined;
  let sidecar: Sidecar | undefined;
  let pool: Pool | undefined;
  const insts: Instance[] = [];
  try {
    log('starting a Consul dev agent (deploy/consul/install.sh provides consul)');
    await agent.start();
    checkInterrupted();
    stateDir = await mkdtemp(join(tmpdir(), 'tandem-soak-'));
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
      insts.push({ service, version, port: ports[i] as number, label: `${service}@${version}`, id: '', proc: undefined });
    });
    for (const inst of insts) inst.proc = await startUpstream(inst);
    log(`upstreams: ${insts.map((i) => `${i.label} on ${i.port}`).join(', ')}`);

    log(`tandem start: api 127.0.0.1:${apiPort}, proxy 127.0.0.1:${proxyPort}, consul ${agent.address}`);
    sidecar = await startSidecar(agent.address, apiPort, proxyPort, stateDir);
    const sc = sidecar;
    void sc.exited.then(() => {
      if (!interruptCtl.signal.aborted) interruptCtl.abort(new Error(`the sidecar exited during the run (${String(sc.child.exitCode ?? sc.child.signalCode)}): ${sc.output().slice(-2000)}`));
    });
    for (const inst of insts) inst.id = await register(sc.api, inst);
    log(`registered ${insts.map((i) => i.id).join(', ')}; waiting for all to be healthy`);
    if (!(await waitUntil(() => allRoutable(sc.api, insts), 30_000))) {
      checkInterrupted();
      throw new Error(`not every instance was healthy within 30 s: ${JSON.stringify([...(await instances(sc.api, 'soak-a')), ...(await instances(sc.api, 'soak-b'))])}`);
    }

    await sanityCheck(sc.proxy);

    pool = new Pool(sc.proxy, { connections: settings.concurrency, keepAliveTimeout: 4_000 });
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
      const iv = stats.interval;
      stats.interval = { requests: 0, failures: 0, latencies: [] };
      const sorted = Float64Array.from(iv.latencies).sort();
      const secs = Math.max(0.001, (now - lastPointAt) / 1000);
      lastPointAt = now;
      try {
        const p = await sampleProc(sc.pid, t0);
        series.push({ ...p, requests: iv.requests, failures: iv.failures, rps: Math.round(iv.requests / secs), p50Ms: round(percentile(sorted, 50)), p99Ms: round(percentile(sorted, 99)) });
        log(`t=${p.t} s: ${stats.requests} requests, ${stats.failures} failed, ${Math.round(iv.requests / secs)} req/s, sidecar RSS ${fmtKb(p.rssKb)}, ${p.fds} fds`);
      } catch (err) {
        log(`could not sample the sidecar: ${errMessage(err)}`);
      }
    };
    const seriesTimer = setInterval(() => void point(), RSS_EVERY_MS);

    const churnEnd = new AbortController();
    const churnCtx: ChurnCtx = {
      api: sc.api,
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
      await pause(warmupEnd - Date.now(), interruptCtl.signal);
      checkInterrupted();
      rssStart = await sampleProc(sc.pid, t0);
      await point();
      log(`warm-up done: ${stats.requests} requests; sidecar RSS ${fmtKb(rssStart.rssKb)}`);
      churn = churnLoop(churnCtx);
      await pause(warmupEnd + (endAt - warmupEnd) / 2 - Date.now(), interruptCtl.signal);
      checkInterrupted();
      rssMiddle = await sampleProc(sc.pid, t0);
      await pause(endAt - Date.now(), interruptCtl.signal);
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
      if (interruptCtl.signal.aborted) await pool.destroy().catch(() => undefined);
      await Promise.all(loops);
      churnEnd.abort();
      await churn;
    }
    const elapsed = (Date.now() - t0) / 1000;

    const reservoir = Float64Array.from(stats.reservoir).sort();
    const events = stats.events.map(({ start: _s, end: _e, ...rest }) => rest);
    const afterWarmup = series.filter((p) => p.t >= settings.warmupSeconds);
    const summary: Summary = {
      date: new Date().toISOString(),
      command: 'npm run soak',
      settings: { ...settings, stickyKeys: STICKY_KEYS, killDownMs: KILL_DOWN_MS, deregDownMs: DEREG_DOWN_MS, checkIntervalMs: 1000 },
      machine: { cpus: cpus().length, model: cpus()[0]?.model ?? 'unknown', loadavg: loadavg().map((l) => round(l)), node: process.version, platform: `${process.platform}-${process.arch}` },
      passed: false,
      durationSeconds: round(elapsed, 1),
      requests: stats.requests,
      rps: Math.round(stats.requests / Math.max(elapsed, 0.001)),
      ok: stats.ok,
      latencyMs: { p50: round(percentile(reservoir, 50)), p99: round(percentile(reservoir, 99)), max: round(stats.maxLatencyMs) },
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
      sidecarLog: { warnLines: sc.warnLines, errorLines: sc.errorLines, tail: sc.lines.slice(-50) },
    };
    if (runError !== undefined) summary.error = errMessage(runError);
    summary.passed = runError === undefined && stats.failures === 0 && stats.requests > 0;
    await mkdir(join(ROOT, 'bench', 'results'), { recursive: true });
    await writeFile(RESULTS, `${JSON.stringify(summary, null, 2)}\n`);
    printSummary(summary);
    if (runError !== undefined) throw runError;
    return summary.passed ? 0 : 1;
  } catch (err) {
    if (sidecar && sidecar.output().trim()) log(`tandem stderr (last lines):\n${sidecar.output().trim().split('\n').slice(-30).join('\n')}`);
    for (const i of insts) if (i.proc && i.proc.output().trim()) log(`upstream ${i.label} stderr:\n${i.proc.output().trim()}`);
    throw err;
  } finally {
    log('cleaning up');
    const step = async (what: string, fn: () => Promise<void>) => {
      try {
        await fn();
      } catch (err) {
        log(`cleanup: ${what} failed: ${errMessage(err)}`);
      }
    };
    if (pool) {
      const p = pool;
      await step('close the client pool', () => p.destroy());
    }
    // The sidecar first: it deregisters its services while Consul is still there.
    if (sidecar) {
      const s = sidecar;
      await step('stop tandem', () => stopChild(s, 20_000));
    }
    for (const inst of insts) {
      const p = inst.proc;
      if (p) await step(`stop upstream ${inst.label}`, () => stopChild(p, 3_000));
    }
    await step('stop consul', () => agent.stop());
    if (stateDir) {
      const d = stateDir;
      await step('remove temp dir', () => rm(d, { recursive: true, force: true }));
    }
  }
}

main().then(
  (code) => {
    process.exitCode = interrupted ? 130 : code;
  },
  (err: unknown) => {
    process.stderr.write(`[soak] failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    process.exitCode = interrupted ? 130 : 1;
  },
);
