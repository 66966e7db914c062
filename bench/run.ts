// Proxy benchmark, one run on one machine: direct vs. nginx (the reference local proxy) vs. a bare node:http + undici
// proxy (the floor of a Node proxy) vs. Tandem, side by side.
//
//   npm run bench                          (builds dist/ first; ~7 min with the defaults)
//   BENCH_SECONDS=5 BENCH_WARMUP_SECONDS=1 npm run bench
//   BENCH_SKIP_BUILD=1 npm run bench       (use the existing dist/)
//   BENCH_ROUNDS=3 npm run bench           (three interleaved rounds, medians)
//
// Consul dev agent + two upstreams (nginx serving fixed bodies, or node:http with BENCH_UPSTREAM=node) + nginx as a
// proxy (one worker, upstream keep-alive, own prefix and config in a temp dir: never the system config) + the bare
// proxy (bench/bare-proxy.ts) + `tandem start` (the real CLI). wrk (one thread) is the load generator, autocannon if
// wrk cannot be had. With taskset, the load generator, the upstreams and Consul run on core 0 and each proxy under
// test alone on core 1 (the method of the team's reference figures). nginx and wrk are installed with apt-get when
// missing (root only; BENCH_INSTALL=0 never installs); without nginx its rows are skipped with a message.
//
// Measures, at concurrency 1 and BENCH_CONNECTIONS (32): req/s, p50, p99, proxy CPU per request (utime+stime of the
// proxy's processes from /proc, before/after each run) and proxy RSS, for 100 B, 1 KB and 64 KB bodies and Tandem
// sticky; then p99 at a fixed BENCH_RATE (1,000 req/s) with a paced open-loop client; then the RSS of a fresh sidecar
// watching BENCH_IDLE_SERVICES (100) services, idle. Every load run is bounded (killed 30 s past its duration).
// Prints Markdown tables on stdout (progress on stderr) and writes everything to bench/results/latest.json.
// Everything listens on 127.0.0.1; every process it starts is stopped and the temp dir removed, also on error and
// on SIGINT/SIGTERM.
import { chmod, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { cpus, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { ConsulDevAgent } from '../src/consul/consul-dev-agent.ts';
import { freePorts } from '../src/common/free-port.ts';
import {
  BODY_BYTES, BODY_PATHS, ROOT, alive, build, checkInterrupted, isInterrupted, cleanup, cpuSeconds, ensureTool, establishedTo, flagEnv, getJson, installSignalHandlers, intEnv,
  coreBusySeconds, isRecord, log, nginxInfo, processTree, putJson, rssMb, setupPinning, sleep, startBareProxy, startEngineFloor, startNginxProxy, startNginxUpstreams, startNodeUpstreams, startSidecar, stopProc,
  type BodySize, type NginxInfo, type Pinning, type Proc, type Sidecar,
} from './common.ts';
import { autocannonGenerator, paced, wrkGenerator, wrkPaced, type LoadGenerator, type LoadResult, type PacedResult } from './load.ts';

const RESULTS = join(ROOT, 'bench', 'results', 'latest.json');
const SERVICE = 'bench';
const STICKY_ID = 'user-42';
const PROXY_CORE = 1;

// ---------------------------------------------------------------------------------------------------
// Settings

interface Settings {
  seconds: number;
  connections: number;
  warmupSeconds: number;
  rounds: number;
  build: boolean;
  pin: boolean;
  install: boolean;
  tool: 'wrk' | 'autocannon';
  upstream: 'nginx' | 'node';
  nginx: boolean;
  bare: boolean;
  floor: boolean;
  rate: number;
  rateSeconds: number;
  rateClients: ('wrk' | 'node')[];
  idleServices: number;
  idleSeconds: number;
}

function readSettings(): Settings {
  const tool = (process.env['BENCH_TOOL'] ?? 'wrk').trim();
  if (tool !== 'wrk' && tool !== 'autocannon') throw new Error(`BENCH_TOOL must be wrk or autocannon (got '${tool}')`);
  const upstream = (process.env['BENCH_UPSTREAM'] ?? 'nginx').trim();
  if (upstream !== 'nginx' && upstream !== 'node') throw new Error(`BENCH_UPSTREAM must be nginx or node (got '${upstream}')`);
  return {
    seconds: intEnv('BENCH_SECONDS', 10, 1),
    connections: intEnv('BENCH_CONNECTIONS', 32, 2),
    warmupSeconds: intEnv('BENCH_WARMUP_SECONDS', 1, 0),
    rounds: intEnv('BENCH_ROUNDS', 1, 1),
    build: !flagEnv('BENCH_SKIP_BUILD', false),
    pin: flagEnv('BENCH_PIN', true),
    install: flagEnv('BENCH_INSTALL', true),
    tool,
    upstream,
    nginx: flagEnv('BENCH_NGINX', true),
    bare: flagEnv('BENCH_BARE', true),
    floor: flagEnv('BENCH_FLOOR', true),
    rate: intEnv('BENCH_RATE', 1000, 1),
    rateSeconds: intEnv('BENCH_RATE_SECONDS', 10, 1),
    rateClients: (process.env['BENCH_RATE_CLIENTS'] ?? 'wrk')
      .split(',')
      .map((c) => c.trim())
      .filter((c): c is 'wrk' | 'node' => {
        if (c !== 'wrk' && c !== 'node') throw new Error(`BENCH_RATE_CLIENTS: 'wrk' and/or 'node' (got '${c}')`);
        return true;
      }),
    idleServices: intEnv('BENCH_IDLE_SERVICES', 100, 0),
    idleSeconds: intEnv('BENCH_IDLE_SECONDS', 15, 0),
  };
}

// ---------------------------------------------------------------------------------------------------
// Tandem checks

async function register(api: string, port: number): Promise<void> {
  const res = await fetch(`${api}/v1/services`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ name: SERVICE, version: '1.0.0', port }),
  });
  const text = await res.text();
  if (res.status !== 201 && res.status !== 202) throw new Error(`POST /v1/services (port ${port}) answered ${res.status}: ${text}`);
}

function instancesOf(body: unknown): Record<string, unknown>[] {
  return isRecord(body) && Array.isArray(body['instances']) ? body['instances'].filter(isRecord) : [];
}

async function waitHealthy(api: string, service: string, count: number, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let last: string | undefined;
  for (;;) {
    checkInterrupted();
    try {
      const { status, body } = await getJson(`${api}/v1/instances/${service}`, 2000);
      last = JSON.stringify(body);
      const instances = instancesOf(body);
      if (status === 200 && instances.length === count && instances.every((i) => i['healthy'] === true)) return;
    } catch (err) {
      last = String(err);
    }
    if (Date.now() > deadline) throw new Error(`${service} did not get ${count} healthy instances within ${timeoutMs} ms; last answer: ${last ?? 'none'}`);
    await sleep(200);
  }
}

/**
 * Waits until no instance of the service is ejected and returns how long that took (0 if none was): a load run
 * that ends cuts its in-flight requests; the proxy must not count those as upstream failures, and if it ever
 * does, the next scenario must not start with instances ejected.
 */
async function waitNotEjected(api: string, timeoutMs: number): Promise<number> {
  const start = Date.now();
  let seen = false;
  for (;;) {
    checkInterrupted();
    const { status, body } = await getJson(`${api}/v1/instances/${SERVICE}`, 2000);
    const ejected = instancesOf(body).filter((i) => i['ejected'] === true).length;
    if (status === 200 && ejected === 0) return seen ? Date.now() - start : 0;
    seen = true;
    if (Date.now() - start > timeoutMs) throw new Error(`${ejected} instance(s) of ${SERVICE} still ejected after ${timeoutMs} ms: ${JSON.stringify(body)}`);
    await sleep(100);
  }
}

/** Round-robin must reach both instances, sticky must stay on one, and every body size must come back whole. */
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
  // A newly healthy instance is ramped up (slow start, 5 s by default): until then round-robin may skip it.
  let rr = await seen({});
  for (const deadline = Date.now() + 20_000; rr.size !== 2 && Date.now() < deadline; rr = await seen({})) await sleep(500);
  if (rr.size !== 2) throw new Error(`round-robin reached ${rr.size} instance(s) in 10 requests: ${[...rr].join(', ')}`);
  const sticky = await seen({ 'x-stickyid': STICKY_ID });
  if (sticky.size !== 1) throw new Error(`sticky requests reached ${sticky.size} instances: ${[...sticky].join(', ')}`);
  for (const [size, path] of Object.entries(BODY_PATHS) as [BodySize, string][]) {
    const res = await fetch(`${proxy}/${SERVICE}${path}`);
    const body = Buffer.from(await res.arrayBuffer());
    if (res.status !== 200 || body.length !== BODY_BYTES[size]) throw new Error(`GET ${proxy}/${SERVICE}${path} answered ${res.status} with ${body.length} bytes, expected ${BODY_BYTES[size]}`);
  }
}

// ---------------------------------------------------------------------------------------------------
// Scenarios

type Target = 'direct' | 'nginx' | 'bare' | 'floor' | 'tandem-rr' | 'tandem-sticky';

interface Scenario {
  key: string;
  label: string;
  target: Target;
  size: BodySize;
  connections: number;
  url: string;
  headers: Record<string, string>;
}

interface Measurement extends LoadResult {
  /** Proxy CPU (utime+stime of its processes, all threads) per request, in µs. */
  cpuUsPerRequest: number | null;
  /** Proxy VmRSS right after the run, in MB. */
  rssMb: number | null;
  /** Share of the proxy's core (when pinned) that other processes used during the run: noise from neighbours. */
  othersOnProxyCorePct: number | null;
  /** Through Tandem: time waited before this run for ejections left by the previous one to expire. */
  ejectionWaitMs: number;
}

interface Row {
  key: string;
  scenario: string;
  target: Target;
  size: BodySize;
  connections: number;
  rps: number;
  p50Ms: number;
  p99Ms: number;
  /** req/s ÷ nginx's req/s for the same body and concurrency. */
  xNginx: number | null;
  /** req/s ÷ the bare node:http + undici proxy's req/s for the same body and concurrency. */
  xBare: number | null;
  /** req/s ÷ direct req/s for the same body and concurrency. */
  xDirect: number;
  /** p50 − direct p50 (same body and concurrency). */
  addedP50Ms: number | null;
  cpuUsPerRequest: number | null;
  rssMb: number | null;
  othersOnProxyCorePct: number | null;
  requests: number;
  errors: number;
  non2xx: number;
  bytesPerResponse: number;
  rounds: Measurement[];
}

function median(values: readonly number[]): number {
  const s = [...values].sort((a, b) => a - b);
  if (s.length === 0) return Number.NaN;
  const mid = Math.floor(s.length / 2);
  return s.length % 2 === 1 ? (s[mid] ?? Number.NaN) : ((s[mid - 1] ?? 0) + (s[mid] ?? 0)) / 2;
}

function medianOrNull(values: readonly (number | null)[]): number | null {
  const v = values.filter((x): x is number => x !== null && Number.isFinite(x));
  return v.length === 0 ? null : median(v);
}

function summarize(scenarios: readonly Scenario[], runs: ReadonlyMap<string, Measurement[]>): Row[] {
  const keyOf = (t: Target, s: BodySize, c: number) => `${t}-${s}-c${c}`;
  const rpsOf = (key: string) => median((runs.get(key) ?? []).map((m) => m.rps));
  const p50Of = (key: string) => median((runs.get(key) ?? []).map((m) => m.p50Ms));
  return scenarios.map((s) => {
    const ms = runs.get(s.key) ?? [];
    const rps = median(ms.map((m) => m.rps));
    const p50 = median(ms.map((m) => m.p50Ms));
    const nginxKey = keyOf('nginx', s.size, s.connections);
    const directKey = keyOf('direct', s.size, s.connections);
    const bareKey = keyOf('bare', s.size, s.connections);
    return {
      key: s.key,
      scenario: s.label,
      target: s.target,
      size: s.size,
      connections: s.connections,
      rps,
      p50Ms: p50,
      p99Ms: median(ms.map((m) => m.p99Ms)),
      xNginx: runs.has(nginxKey) ? rps / rpsOf(nginxKey) : null,
      xBare: runs.has(bareKey) ? rps / rpsOf(bareKey) : null,
      xDirect: rps / rpsOf(directKey),
      addedP50Ms: s.target === 'direct' ? null : p50 - p50Of(directKey),
      cpuUsPerRequest: medianOrNull(ms.map((m) => m.cpuUsPerRequest)),
      rssMb: medianOrNull(ms.map((m) => m.rssMb)),
      othersOnProxyCorePct: medianOrNull(ms.map((m) => m.othersOnProxyCorePct)),
      requests: ms.reduce((n, m) => n + m.requests, 0),
      errors: ms.reduce((n, m) => n + m.errors, 0),
      non2xx: ms.reduce((n, m) => n + m.non2xx, 0),
      bytesPerResponse: median(ms.map((m) => m.bytesPerResponse)),
      rounds: ms,
    };
  });
}

function mdTable(head: readonly string[], body: readonly (readonly string[])[]): string {
  const widths = head.map((h, i) => Math.max(h.length, ...body.map((b) => (b[i] ?? '').length)));
  const line = (cells: readonly string[]) => `| ${cells.map((c, i) => (i === 0 ? c.padEnd(widths[i] ?? 0) : c.padStart(widths[i] ?? 0))).join(' | ')} |`;
  const rule = `|${widths.map((w, i) => (i === 0 ? ` ${'-'.repeat(w)} ` : ` ${'-'.repeat(Math.max(1, w - 1))}: `)).join('|')}|`;
  return [line(head), rule, ...body.map(line)].join('\n');
}

const fmt = (v: number | null, digits: number): string => (v === null || !Number.isFinite(v) ? '—' : v.toFixed(digits));
const int = (v: number): string => (Number.isFinite(v) ? Math.round(v).toLocaleString('en-US') : '—');

function loadTable(rows: readonly Row[]): string {
  return mdTable(
    ['scenario', 'body', 'conns', 'req/s', '× nginx', '× bare', '× direct', 'p50 ms', 'p99 ms', '+p50 ms', 'proxy CPU µs/req', 'proxy RSS MB', 'others on proxy core', 'errors', 'non-2xx'],
    rows.map((r) => [
      r.scenario,
      r.size,
      String(r.connections),
      int(r.rps),
      fmt(r.xNginx, 2),
      fmt(r.xBare, 2),
      fmt(r.xDirect, 2),
      fmt(r.p50Ms, 3),
      fmt(r.p99Ms, 3),
      fmt(r.addedP50Ms, 3),
      fmt(r.cpuUsPerRequest, 1),
      fmt(r.rssMb, 1),
      r.othersOnProxyCorePct === null ? '—' : `${r.othersOnProxyCorePct.toFixed(0)} %`,
      String(r.errors),
      String(r.non2xx),
    ]),
  );
}

// ---------------------------------------------------------------------------------------------------
// Idle sidecar with many watched services

interface IdleResult {
  services: number;
  /** VmRSS after the sidecar answered one request per service and then sat idle for `idleSeconds`. */
  rssMb: number;
  /** VmRSS right after start, before any service answered. */
  rssAtStartMb: number;
  /** VmHWM: the peak. */
  peakRssMb: number;
  idleSeconds: number;
  /** CPU used while idle, as a share of one core. */
  idleCpuPercent: number;
  /** ESTABLISHED connections from the sidecar to Consul's HTTP port while idle. */
  consulConnections: number;
  /** How long it took from start until every service had a healthy instance in the routing table. */
  watchReadyMs: number;
}

async function idleWithServices(o: {
  agent: ConsulDevAgent;
  count: number;
  idleSeconds: number;
  upstreamPort: number;
  dir: string;
  pinning: Pinning;
  onStart: (s: Sidecar) => void;
}): Promise<IdleResult> {
  const names = Array.from({ length: o.count }, (_, i) => `idle-${String(i).padStart(3, '0')}`);
  log(`registering ${o.count} services (one instance each, TTL check passed once) with the agent`);
  for (const name of names) {
    const id = `${name}-1`;
    const r = await putJson(`${o.agent.address}/v1/agent/service/register`, {
      ID: id,
      Name: name,
      Address: '127.0.0.1',
      Port: o.upstreamPort,
      Meta: { version: '1.0.0' },
      Check: { CheckID: `service:${id}`, Name: 'bench TTL', TTL: '30m' },
    });
    if (r.status !== 200) throw new Error(`register ${id}: ${r.status} ${r.text}`);
    const p = await fetch(`${o.agent.address}/v1/agent/check/pass/service:${id}`, { method: 'PUT', signal: AbortSignal.timeout(5000) });
    await p.arrayBuffer();
    if (p.status !== 200) throw new Error(`pass the check of ${id}: ${p.status}`);
  }
  checkInterrupted();
  const [apiPort, proxyPort] = (await freePorts(2)) as [number, number];
  const stateDir = join(o.dir, 'idle-state');
  await mkdir(stateDir, { recursive: true });
  const started = Date.now();
  const s = await startSidecar({
    consul: o.agent.address,
    apiPort,
    proxyPort,
    stateDir,
    nodeName: 'bench-idle',
    args: ['--set', `upstreams=${JSON.stringify(names)}`, '--set', `watch.maxServices=${Math.max(100, o.count + 10)}`],
    pinning: o.pinning,
    core: PROXY_CORE,
  });
  o.onStart(s);
  const rssAtStartMb = await rssMb([s.pid]);
  for (const name of names) await waitHealthy(s.api, name, 1, 30_000);
  const watchReadyMs = Date.now() - started;
  log(`all ${o.count} services routable after ${watchReadyMs} ms; one request to each through the proxy`);
  for (const name of names) {
    const res = await fetch(`${s.proxy}/${name}/`, { signal: AbortSignal.timeout(5000) });
    await res.arrayBuffer();
    if (res.status !== 200) throw new Error(`GET ${s.proxy}/${name}/ answered ${res.status}`);
  }
  log(`idle for ${o.idleSeconds} s`);
  const cpu0 = await cpuSeconds([s.pid]);
  const t0 = performance.now();
  for (let waited = 0; waited < o.idleSeconds * 1000; waited += 500) {
    checkInterrupted();
    await sleep(500);
  }
  const cpu1 = await cpuSeconds([s.pid]);
  const elapsed = (performance.now() - t0) / 1000;
  const result: IdleResult = {
    services: o.count,
    rssMb: await rssMb([s.pid]),
    rssAtStartMb,
    peakRssMb: await rssMb([s.pid], 'VmHWM'),
    idleSeconds: o.idleSeconds,
    idleCpuPercent: elapsed > 0 ? ((cpu1 - cpu0) / elapsed) * 100 : 0,
    consulConnections: await establishedTo(s.pid, o.agent.httpPort),
    watchReadyMs,
  };
  await stopProc(s, 20_000);
  return result;
}

// ---------------------------------------------------------------------------------------------------
// Main

interface Targets {
  rpsVsNginx: { target: number; measured: number | null; met: boolean | null };
  addedP50C1Ms: { target: number; measured: number; met: boolean };
  p99AtRateMs: { target: number; measured: number | null; met: boolean | null };
  idleRssMb: { target: number; measured: number | null; met: boolean | null };
}

async function main(): Promise<void> {
  const settings = readSettings();
  const loadavgBefore = loadavg();
  installSignalHandlers();
  if (settings.build) await build();
  checkInterrupted();

  const pinning = await setupPinning(settings.pin);
  log(pinning.describe);

  let wrkPath: string | undefined;
  let toolNote = '';
  if (settings.tool === 'wrk') {
    const w = await ensureTool('wrk', ['wrk'], settings.install);
    if ('path' in w) wrkPath = w.path;
    else toolNote = `wrk unavailable (${w.reason}): autocannon instead, which is single-threaded Node and may itself be the bottleneck`;
  } else toolNote = 'BENCH_TOOL=autocannon';
  let nginx: NginxInfo | undefined;
  let nginxNote = '';
  if (settings.nginx) {
    const n = await ensureTool('nginx', ['nginx-light', 'nginx'], settings.install);
    if ('path' in n) nginx = await nginxInfo(n.path);
    else nginxNote = `nginx rows skipped: ${n.reason}`;
  } else nginxNote = 'nginx rows skipped: BENCH_NGINX=0';
  if (nginxNote) log(nginxNote);
  if (toolNote) log(toolNote);
  const upstreamKind: 'nginx' | 'node' = settings.upstream === 'nginx' && nginx ? 'nginx' : 'node';
  checkInterrupted();

  const agent = new ConsulDevAgent();
  let dir: string | undefined;
  let upstreams: Proc | undefined;
  let nginxProxy: Proc | undefined;
  let bareProxy: Proc | undefined;
  let floorProxy: Proc | undefined;
  let sidecar: Sidecar | undefined;
  let idleSidecar: Sidecar | undefined;
  try {
    log('starting a Consul dev agent (deploy/consul/install.sh provides consul)');
    await agent.start();
    checkInterrupted();
    dir = await mkdtemp(join(tmpdir(), 'tandem-bench-'));
    // nginx's workers run as `nobody` when started by root: they must be able to traverse it.
    await chmod(dir, 0o755);
    const [upA, upB, apiPort, proxyPort, nginxPort, barePort, floorPort] = (await freePorts(7)) as [number, number, number, number, number, number, number];
    const load: LoadGenerator = wrkPath ? await wrkGenerator(wrkPath, dir, pinning) : autocannonGenerator();

    log(`upstreams (${upstreamKind}) on 127.0.0.1:${upA} and 127.0.0.1:${upB}`);
    upstreams = upstreamKind === 'nginx' && nginx ? await startNginxUpstreams(nginx, join(dir, 'upstreams'), [upA, upB]) : await startNodeUpstreams([upA, upB]);
    checkInterrupted();
    if (nginx) {
      log(`nginx ${nginx.version} as the reference proxy on 127.0.0.1:${nginxPort} (one worker, upstream keep-alive)`);
      nginxProxy = await startNginxProxy(nginx, join(dir, 'nginx-proxy'), nginxPort, [upA, upB], pinning, PROXY_CORE);
    }
    if (settings.bare) {
      log(`the bare node:http + undici dispatch proxy (bench/bare-proxy.ts) on 127.0.0.1:${barePort}`);
      bareProxy = await startBareProxy(barePort, [upA, upB], pinning, PROXY_CORE);
    }
    if (settings.floor) {
      log(`Tandem's engine alone (bench/engine-floor.mjs: parser, pools, passthrough, no features) on 127.0.0.1:${floorPort}`);
      floorProxy = await startEngineFloor(floorPort, [upA, upB], pinning, PROXY_CORE);
    }

    log(`tandem start: api 127.0.0.1:${apiPort}, proxy 127.0.0.1:${proxyPort}, consul ${agent.address}`);
    sidecar = await startSidecar({ consul: agent.address, apiPort, proxyPort, stateDir: join(dir, 'state'), nodeName: 'bench', pinning, core: PROXY_CORE });
    const sc = sidecar;
    await register(sc.api, upA);
    await register(sc.api, upB);
    log(`registered ${SERVICE} ×2; waiting for both to be healthy`);
    await waitHealthy(sc.api, SERVICE, 2, 30_000);
    await sanityCheck(sc.proxy);
    for (const [name, port] of [...(nginxProxy ? [['nginx', nginxPort] as const] : []), ...(bareProxy ? [['bare', barePort] as const] : []), ...(floorProxy ? [['floor', floorPort] as const] : [])]) {
      for (const [size, path] of Object.entries(BODY_PATHS) as [BodySize, string][]) {
        const res = await fetch(`http://127.0.0.1:${port}/${SERVICE}${path}`);
        const body = Buffer.from(await res.arrayBuffer());
        if (res.status !== 200 || body.length !== BODY_BYTES[size]) throw new Error(`${name} proxy: GET /${SERVICE}${path} answered ${res.status} with ${body.length} bytes`);
      }
    }
    await sleep(1000);
    const tandemIdleRssMb = await rssMb([sc.pid]);

    // Scenarios: per concurrency and body size, direct / nginx / Tandem round-robin side by side (sticky at 100 B).
    const scenarios: Scenario[] = [];
    for (const c of [1, settings.connections]) {
      for (const size of Object.keys(BODY_PATHS) as BodySize[]) {
        const path = BODY_PATHS[size];
        const add = (target: Target, label: string, url: string, headers: Record<string, string> = {}) =>
          scenarios.push({ key: `${target}-${size}-c${c}`, label, target, size, connections: c, url, headers });
        add('direct', 'direct (one upstream)', `http://127.0.0.1:${upA}${path}`);
        if (nginxProxy) add('nginx', 'nginx (1 worker, keep-alive)', `http://127.0.0.1:${nginxPort}/${SERVICE}${path}`);
        if (bareProxy) add('bare', 'bare node:http + undici (floor)', `http://127.0.0.1:${barePort}/${SERVICE}${path}`);
        if (floorProxy) add('floor', "Tandem's engine alone (floor)", `http://127.0.0.1:${floorPort}/${SERVICE}${path}`);
        add('tandem-rr', 'tandem round-robin', `${sc.proxy}/${SERVICE}${path}`);
        if (size === '100B') add('tandem-sticky', 'tandem sticky (x-stickyid)', `${sc.proxy}/${SERVICE}${path}`, { 'x-stickyid': STICKY_ID });
      }
    }
    const bp = bareProxy;
    const fp = floorProxy;
    const proxyPids = async (t: Target): Promise<number[] | undefined> =>
      t === 'direct' ? undefined : t === 'nginx' ? (nginxProxy ? processTree(nginxProxy.pid) : undefined) : t === 'bare' ? (bp ? [bp.pid] : undefined) : t === 'floor' ? (fp ? [fp.pid] : undefined) : [sc.pid];

    const runs = new Map<string, Measurement[]>();
    const total = scenarios.length * settings.rounds * (settings.seconds + settings.warmupSeconds);
    log(`${scenarios.length} load scenarios × ${settings.rounds} round(s) × (${settings.warmupSeconds} s warm-up + ${settings.seconds} s) ≈ ${total} s, ${load.name}`);
    for (let round = 1; round <= settings.rounds; round++) {
      for (const s of scenarios) {
        checkInterrupted();
        const proxied = s.target.startsWith('tandem');
        const settle = async (): Promise<number> => (proxied ? waitNotEjected(sc.api, 30_000) : 0);
        const spec = { url: s.url, connections: s.connections, seconds: settings.seconds, headers: s.headers };
        if (settings.warmupSeconds > 0) {
          await settle();
          await load.run({ ...spec, seconds: settings.warmupSeconds });
          checkInterrupted();
        }
        const waited = await settle();
        if (waited > 0) log(`waited ${waited} ms for ejections left by the previous run to expire`);
        const pids = await proxyPids(s.target);
        const cpu0 = pids ? await cpuSeconds(pids) : 0;
        const core0 = await coreBusySeconds(PROXY_CORE);
        const r = await load.run(spec);
        const cpu1 = pids ? await cpuSeconds(pids) : 0;
        const core1 = await coreBusySeconds(PROXY_CORE);
        checkInterrupted();
        const m: Measurement = {
          ...r,
          cpuUsPerRequest: pids && r.requests > 0 ? ((cpu1 - cpu0) / r.requests) * 1e6 : null,
          rssMb: pids ? await rssMb(pids) : null,
          othersOnProxyCorePct: pinning.enabled && r.seconds > 0 ? Math.max(0, ((core1 - core0 - (cpu1 - cpu0)) / r.seconds) * 100) : null,
          ejectionWaitMs: waited,
        };
        runs.set(s.key, [...(runs.get(s.key) ?? []), m]);
        log(
          `round ${round}/${settings.rounds} ${s.key}: ${Math.round(m.rps)} req/s, p50 ${m.p50Ms.toFixed(3)} ms, p99 ${m.p99Ms.toFixed(3)} ms, ` +
            `CPU ${fmt(m.cpuUsPerRequest, 1)} µs/req, RSS ${fmt(m.rssMb, 1)} MB, others on core ${PROXY_CORE} ${fmt(m.othersOnProxyCorePct, 0)} %, errors ${m.errors}, non-2xx ${m.non2xx}, ${m.bytesPerResponse} B/response`,
        );
      }
    }
    const rows = summarize(scenarios, runs);

    // Latency at a fixed rate (open loop, this process on core 0), interleaved like the load runs.
    const rateTargets: [Target, string, string][] = [
      ['direct', 'direct (one upstream)', `http://127.0.0.1:${upA}/`],
      ...(nginxProxy ? [['nginx', 'nginx (1 worker, keep-alive)', `http://127.0.0.1:${nginxPort}/${SERVICE}/`] as [Target, string, string]] : []),
      ...(bareProxy ? [['bare', 'bare node:http + undici (floor)', `http://127.0.0.1:${barePort}/${SERVICE}/`] as [Target, string, string]] : []),
      ...(floorProxy ? [['floor', "Tandem's engine alone (floor)", `http://127.0.0.1:${floorPort}/${SERVICE}/`] as [Target, string, string]] : []),
      ['tandem-rr', 'tandem round-robin', `${sc.proxy}/${SERVICE}/`],
    ];
    type RateClient = 'wrk' | 'node';
    // The Node open-loop client's own timer and wake-up jitter on a VM reaches milliseconds (its p99 straight to an
    // upstream was 1.5-4.4 ms, wrk's 0.18 ms): it runs only without wrk, or when BENCH_RATE_CLIENTS asks for it.
    const clients: RateClient[] = settings.rateClients.filter((c) => c === 'node' || wrkPath !== undefined);
    if (clients.length === 0) clients.push('node');
    const rateOnce = async (client: RateClient, url: string, seconds: number): Promise<PacedResult> =>
      client === 'wrk' && wrkPath && dir ? wrkPaced(wrkPath, dir, pinning, url, settings.rate, seconds) : paced(url, settings.rate, seconds, {});
    const rateRuns = new Map<string, PacedResult[]>();
    for (let round = 1; round <= settings.rounds; round++) {
      for (const client of clients) {
        for (const [target, label, url] of rateTargets) {
          checkInterrupted();
          if (target.startsWith('tandem')) await waitNotEjected(sc.api, 30_000);
          log(`round ${round}/${settings.rounds} fixed rate (${client}): ${settings.rate} req/s for ${settings.rateSeconds} s → ${label} (after 2 s at the same rate)`);
          await rateOnce(client, url, 2);
          const r = await rateOnce(client, url, settings.rateSeconds);
          rateRuns.set(`${client}:${target}`, [...(rateRuns.get(`${client}:${target}`) ?? []), r]);
          log(`  ${Math.round(r.rate)} req/s, p50 ${r.p50Ms.toFixed(3)} ms, p99 ${r.p99Ms.toFixed(3)} ms, p99.9 ${r.p999Ms.toFixed(3)} ms, max ${r.maxMs.toFixed(3)} ms, errors ${r.errors}`);
        }
      }
    }
    const rated: { client: RateClient; target: Target; label: string; result: PacedResult; addedP99Ms: number | null; rounds: PacedResult[] }[] = [];
    for (const client of clients) {
      for (const [target, label] of rateTargets) {
        const rs = rateRuns.get(`${client}:${target}`) ?? [];
        const med = (f: (r: PacedResult) => number) => median(rs.map(f));
        const result: PacedResult = {
          client: rs[0]?.client ?? client,
          rate: med((r) => r.rate),
          seconds: settings.rateSeconds,
          sent: rs.reduce((n, r) => n + r.sent, 0),
          ok: rs.reduce((n, r) => n + r.ok, 0),
          errors: rs.reduce((n, r) => n + r.errors, 0),
          p50Ms: med((r) => r.p50Ms),
          p99Ms: med((r) => r.p99Ms),
          p999Ms: med((r) => r.p999Ms),
          maxMs: Math.max(...rs.map((r) => r.maxMs)),
          scheduledP99Ms: med((r) => r.scheduledP99Ms),
          maxSendLagMs: Math.max(...rs.map((r) => r.maxSendLagMs)),
        };
        const direct = rated.find((x) => x.client === client && x.target === 'direct');
        rated.push({ client, target, label, result, addedP99Ms: direct && target !== 'direct' ? result.p99Ms - direct.result.p99Ms : null, rounds: rs });
      }
    }
    const tandemPeakRssMb = await rssMb([sc.pid], 'VmHWM');
    const tandemAfterLoadRssMb = await rssMb([sc.pid]);

    // A fresh sidecar watching many services, idle.
    let idle: IdleResult | undefined;
    if (settings.idleServices > 0) {
      checkInterrupted();
      idle = await idleWithServices({
        agent,
        count: settings.idleServices,
        idleSeconds: settings.idleSeconds,
        upstreamPort: upA,
        dir,
        pinning,
        onStart: (s) => (idleSidecar = s),
      });
      log(`idle with ${idle.services} watched services: RSS ${idle.rssMb.toFixed(1)} MB, ${idle.consulConnections} connections to Consul, CPU ${idle.idleCpuPercent.toFixed(2)} %`);
    }

    // Targets of issue 8.
    const row = (key: string) => rows.find((r) => r.key === key);
    const rr32 = row(`tandem-rr-100B-c${settings.connections}`);
    const rr1 = row('tandem-rr-100B-c1');
    const ratedTandem = rated.find((x) => x.target === 'tandem-rr');
    const targets: Targets = {
      rpsVsNginx: { target: 0.6, measured: rr32?.xNginx ?? null, met: rr32?.xNginx == null ? null : rr32.xNginx >= 0.6 },
      addedP50C1Ms: { target: 0.12, measured: rr1?.addedP50Ms ?? Number.NaN, met: (rr1?.addedP50Ms ?? Number.POSITIVE_INFINITY) <= 0.12 },
      p99AtRateMs: { target: 1, measured: ratedTandem?.result.p99Ms ?? null, met: ratedTandem ? ratedTandem.result.p99Ms <= 1 : null },
      idleRssMb: { target: 60, measured: idle?.rssMb ?? null, met: idle ? idle.rssMb <= 60 : null },
    };

    const cpu = cpus();
    const report = {
      date: new Date().toISOString(),
      command: 'npm run bench',
      settings: { ...settings, stickyId: STICKY_ID, loadGenerator: load.name, upstreams: upstreamKind, nginx: nginx?.version ?? null },
      machine: { cpus: cpu.length, model: cpu[0]?.model ?? 'unknown', loadavgBefore, loadavgAfter: loadavg(), node: process.version, platform: `${process.platform}-${process.arch}` },
      pinning: pinning.describe,
      notes: [
        nginxNote,
        toolNote,
        'p50/p99 are over every response of the measured run (wrk: its latency histogram, µs resolution), in ms; with rounds > 1, figures are medians of the rounds.',
        'others on proxy core = busy time of the proxy core (/proc/stat) minus the proxy\'s own CPU, as a share of the run: other processes on the shared machine.',
        'proxy CPU µs/req = (utime+stime of the proxy process tree, /proc/<pid>/stat) after − before the run, ÷ requests. proxy RSS = VmRSS after the run.',
        '× nginx, × bare and × direct compare req/s with the same body size and concurrency; +p50 = p50 − direct p50. bare = bench/bare-proxy.ts (node:http + undici Pool.dispatch writing straight to the response, round-robin, nothing else): the floor of a Node proxy.',
      ].filter(Boolean),
      tandem: { rssIdleBeforeLoadMb: tandemIdleRssMb, rssAfterLoadMb: tandemAfterLoadRssMb, peakRssMb: tandemPeakRssMb },
      scenarios: rows,
      fixedRate: rated,
      idleWithServices: idle ?? null,
      targets,
    };
    await mkdir(join(ROOT, 'bench', 'results'), { recursive: true });
    await writeFile(RESULTS, `${JSON.stringify(report, null, 2)}\n`);

    const out: string[] = [];
    out.push(`load average ${loadavgBefore.map((l) => l.toFixed(2)).join(' ')} before the run, ${loadavg().map((l) => l.toFixed(2)).join(' ')} after`);
    out.push(`${pinning.describe}; ${load.name}; upstreams: ${upstreamKind}; ${settings.seconds} s per run after ${settings.warmupSeconds} s warm-up, ${settings.rounds} round(s); ${cpu.length} CPUs, node ${process.version}`);
    if (nginxNote) out.push(nginxNote);
    if (toolNote) out.push(toolNote);
    out.push('', loadTable(rows), '');
    out.push(
      mdTable(
        ['fixed rate', 'client', 'req/s', 'p50 ms', 'p99 ms', 'p99.9 ms', 'max ms', '+p99 ms', 'p99 from schedule ms', 'max send lag ms', 'errors'],
        rated.map((x) => [
          x.label,
          x.result.client,
          int(x.result.rate),
          fmt(x.result.p50Ms, 3),
          fmt(x.result.p99Ms, 3),
          fmt(x.result.p999Ms, 3),
          fmt(x.result.maxMs, 3),
          fmt(x.addedP99Ms, 3),
          fmt(x.result.scheduledP99Ms, 3),
          fmt(x.result.maxSendLagMs, 2),
          String(x.result.errors),
        ]),
      ),
      '',
    );
    out.push(`Tandem RSS: ${tandemIdleRssMb.toFixed(1)} MB idle before the load (1 watched service), ${tandemAfterLoadRssMb.toFixed(1)} MB after it, peak ${tandemPeakRssMb.toFixed(1)} MB`);
    if (idle) {
      out.push(
        `Idle with ${idle.services} watched services (fresh sidecar, one request each, then ${idle.idleSeconds} s idle): RSS ${idle.rssMb.toFixed(1)} MB ` +
          `(${idle.rssAtStartMb.toFixed(1)} MB right after start, peak ${idle.peakRssMb.toFixed(1)} MB), ${idle.consulConnections} connections to Consul, ` +
          `idle CPU ${idle.idleCpuPercent.toFixed(2)} % of a core, all routable ${idle.watchReadyMs} ms after start`,
      );
    }
    out.push('', 'Targets (issue 8):');
    const verdict = (met: boolean | null) => (met === null ? 'not measured' : met ? 'met' : 'NOT met');
    out.push(`- req/s ≥ 0.6× nginx (100 B, c${settings.connections}): ${fmt(targets.rpsVsNginx.measured, 2)}× — ${verdict(targets.rpsVsNginx.met)}`);
    out.push(`- added p50 ≤ 0.12 ms at c1 (100 B): ${fmt(targets.addedP50C1Ms.measured, 3)} ms — ${verdict(targets.addedP50C1Ms.met)}`);
    const ratedDirect = rated.find((x) => x.client === ratedTandem?.client && x.target === 'direct');
    out.push(
      `- p99 ≤ 1 ms at ${settings.rate} req/s (${ratedTandem?.result.client ?? 'no client'}): ${fmt(targets.p99AtRateMs.measured, 3)} ms — ${verdict(targets.p99AtRateMs.met)}` +
        ` (direct, no proxy: ${fmt(ratedDirect?.result.p99Ms ?? null, 3)} ms; added by Tandem: ${fmt(ratedTandem?.addedP99Ms ?? null, 3)} ms)`,
    );
    out.push(`- RSS ≤ 60 MB idle with ${settings.idleServices} watched services: ${fmt(targets.idleRssMb.measured, 1)} MB — ${verdict(targets.idleRssMb.met)}`);
    out.push('', 'Written to bench/results/latest.json');
    process.stdout.write(`\n${out.join('\n')}\n`);
  } catch (err) {
    if (sidecar && sidecar.output().trim()) log(`tandem stderr:\n${sidecar.output().trim().slice(-5000)}`);
    if (idleSidecar && idleSidecar.output().trim()) log(`idle tandem stderr:\n${idleSidecar.output().trim().slice(-5000)}`);
    if (upstreams && upstreams.output().trim()) log(`upstreams output:\n${upstreams.output().trim().slice(-5000)}`);
    throw err;
  } finally {
    log('cleaning up');
    const s = sidecar;
    const i = idleSidecar;
    const n = nginxProxy;
    const b = bareProxy;
    const u = upstreams;
    const d = dir;
    // The sidecars first: they deregister their services while Consul is still there.
    await cleanup([
      ['stop the idle tandem', i && alive(i) ? () => stopProc(i, 20_000) : undefined],
      ['stop tandem', s ? () => stopProc(s, 20_000) : undefined],
      ['stop the nginx proxy', n ? () => stopProc(n, 5_000) : undefined],
      ['stop the bare proxy', b ? () => stopProc(b, 5_000) : undefined],
      ['stop the engine floor', floorProxy ? () => stopProc(floorProxy as Proc, 5_000) : undefined],
      ['stop the upstreams', u ? () => stopProc(u, 5_000) : undefined],
      ['stop consul', () => agent.stop()],
      ['remove the temp dir', d ? () => rm(d, { recursive: true, force: true }) : undefined],
    ]);
  }
}

main().then(
  () => {
    process.exitCode = 0;
  },
  (err: unknown) => {
    process.stderr.write(`[bench] failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    process.exitCode = isInterrupted() ? 130 : 1;
  },
);
