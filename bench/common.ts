// Shared plumbing of the benchmarks (bench/run.ts, bench/catalog-scale.ts, bench/profile.ts): child processes
// and their cleanup, core pinning, /proc readers, tool installation, the sidecar, the upstreams, and nginx.
import { execFile, spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { chmod, mkdir, readdir, readFile, readlink, writeFile } from 'node:fs/promises';
import { constants as fsConstants, accessSync } from 'node:fs';
import { delimiter, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { BODY_BYTES, BODY_PATHS, benchBody, type BodySize } from './bodies.ts';

export { BODY_BYTES, BODY_PATHS, benchBody, type BodySize };

export const ROOT = fileURLToPath(new URL('..', import.meta.url));
export const BIN = join(ROOT, 'bin', 'tandem.js');
export const UPSTREAM_SCRIPT = join(ROOT, 'bench', 'upstream.ts');
export const BARE_PROXY_SCRIPT = join(ROOT, 'bench', 'bare-proxy.ts');
/** Tandem's engine alone (plain JS over dist/: run `npm run build` first). */
export const ENGINE_FLOOR_SCRIPT = join(ROOT, 'bench', 'engine-floor.mjs');
const run = promisify(execFile);

// ---------------------------------------------------------------------------------------------------
// Logging, sleeping, interruption

let prefix = 'bench';
export function setLogPrefix(p: string): void {
  prefix = p;
}

export function log(msg: string): void {
  process.stderr.write(`[${prefix}] ${msg}\n`);
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

let interrupted = false;
const onInterrupt = new Set<() => void>();

export function isInterrupted(): boolean {
  return interrupted;
}

export function checkInterrupted(): void {
  if (interrupted) throw new Error('interrupted');
}

/** Called once on the first SIGINT/SIGTERM (e.g. to stop a load run early). */
export function whileRunning<T>(stop: () => void, work: Promise<T>): Promise<T> {
  onInterrupt.add(stop);
  return work.finally(() => onInterrupt.delete(stop));
}

/** SIGINT/SIGTERM: the first one stops the current run and lets the finally blocks clean up; a second exits at once (the exit hook still kills every child). */
export function installSignalHandlers(): void {
  const handler = (signal: NodeJS.Signals) => {
    if (interrupted) process.exit(130);
    interrupted = true;
    log(`${signal}: stopping and cleaning up (again to force)`);
    for (const stop of onInterrupt) stop();
  };
  process.on('SIGINT', handler);
  process.on('SIGTERM', handler);
}

export function intEnv(name: string, def: number, min: number): number {
  const raw = process.env[name];
  if (raw === undefined || raw.trim() === '') return def;
  const n = Number(raw);
  if (!Number.isInteger(n) || n < min) throw new Error(`${name} must be an integer >= ${min} (got '${raw}')`);
  return n;
}

export function flagEnv(name: string, def: boolean): boolean {
  const raw = (process.env[name] ?? '').trim().toLowerCase();
  if (raw === '') return def;
  return ['1', 'true', 'yes', 'on'].includes(raw);
}

export function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

// ---------------------------------------------------------------------------------------------------
// Child processes

export interface Proc {
  child: ChildProcess;
  pid: number;
  exited: Promise<void>;
  /** The last ~50 KB of its stderr (and stdout when captured). */
  output: () => string;
  /** Spawned in its own process group: stopping it signals the whole group (nginx's workers). */
  group: boolean;
}

const children = new Set<Proc>();

// Last resort if this process dies without running its finally blocks: nothing it started survives it.
process.on('exit', () => {
  for (const p of children) {
    if (p.child.exitCode !== null || p.child.signalCode !== null) continue;
    try {
      if (p.group) process.kill(-p.pid, 'SIGKILL');
      else p.child.kill('SIGKILL');
    } catch {
      // already gone
    }
  }
});

/** Spawns a tracked child; `group` puts it in its own process group (so its own children die with it). */
export function startProc(cmd: string, args: readonly string[], opts: { cwd?: string; env?: NodeJS.ProcessEnv; group?: boolean; stdout?: 'pipe' | 'ignore' } = {}): Proc {
  const spawnOpts: SpawnOptions = { cwd: opts.cwd ?? ROOT, stdio: ['pipe', opts.stdout ?? 'pipe', 'pipe'], detached: opts.group ?? false };
  if (opts.env) spawnOpts.env = opts.env;
  const child = spawn(cmd, [...args], spawnOpts);
  let out = '';
  const keep = (d: Buffer) => {
    out += d.toString();
    if (out.length > 100_000) out = out.slice(-50_000);
  };
  child.stderr?.on('data', keep);
  child.stdout?.on('data', keep);
  // A spawn error (ENOENT) must not crash the bench: it shows as an exit.
  child.on('error', (err) => keep(Buffer.from(`\nspawn error: ${err.message}\n`)));
  const proc: Proc = {
    child,
    pid: child.pid ?? -1,
    group: opts.group ?? false,
    output: () => out,
    exited: new Promise<void>((resolve) => {
      const done = () => {
        children.delete(proc);
        resolve();
      };
      child.once('exit', done);
      child.once('error', () => {
        if (child.pid === undefined) done();
      });
    }),
  };
  children.add(proc);
  return proc;
}

export function alive(p: Proc): boolean {
  return p.pid > 0 && p.child.exitCode === null && p.child.signalCode === null;
}

/** `signal`, then SIGKILL after `graceMs`; resolves once the process has exited. */
export async function stopProc(p: Proc, graceMs: number, signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
  if (!alive(p)) return;
  const send = (s: NodeJS.Signals) => {
    try {
      if (p.group) process.kill(-p.pid, s);
      else p.child.kill(s);
    } catch {
      // already gone
    }
  };
  send(signal);
  const timer = setTimeout(() => send('SIGKILL'), graceMs);
  await p.exited;
  clearTimeout(timer);
}

/** Runs cleanup steps in order; a failing step is logged and the others still run. */
export async function cleanup(steps: readonly [string, (() => Promise<void>) | undefined][]): Promise<void> {
  for (const [what, fn] of steps) {
    if (!fn) continue;
    try {
      await fn();
    } catch (err) {
      log(`cleanup: ${what} failed: ${err instanceof Error ? err.message : String(err)}`);
    }
  }
}

export async function build(skipVar = 'BENCH_SKIP_BUILD'): Promise<void> {
  log(`npm run build (${skipVar}=1 to skip)`);
  try {
    await run('npm', ['run', 'build'], { cwd: ROOT, timeout: 300_000 });
  } catch (err) {
    const e = err as { stdout?: string; stderr?: string; message: string };
    throw new Error(`npm run build failed:\n${e.stdout ?? ''}${e.stderr ?? ''}${e.message}`, { cause: err });
  }
}

// ---------------------------------------------------------------------------------------------------
// Tools: found on PATH (or /usr/sbin), else installed from Debian's registry with apt-get when allowed

export function which(name: string): string | undefined {
  const dirs = [...(process.env['PATH'] ?? '').split(delimiter), '/usr/sbin', '/usr/local/sbin', '/sbin'];
  for (const d of dirs) {
    if (!d) continue;
    const p = join(d, name);
    try {
      accessSync(p, fsConstants.X_OK);
      return p;
    } catch {
      // not here
    }
  }
  return undefined;
}

let aptUpdated = false;

/**
 * The path of `name`, installing the first Debian package of `packages` that installs when it is missing
 * and `install` is true (root and apt-get needed). `{ reason }` says why it is not available.
 */
export async function ensureTool(name: string, packages: readonly string[], install: boolean): Promise<{ path: string } | { reason: string }> {
  const found = which(name);
  if (found) return { path: found };
  if (!install) return { reason: `${name} is not installed and BENCH_INSTALL=0` };
  if (process.getuid?.() !== 0) return { reason: `${name} is not installed and this is not root (apt-get install -y ${packages.join(' or ')})` };
  const apt = which('apt-get');
  if (!apt) return { reason: `${name} is not installed and there is no apt-get here` };
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  const attempt = async (pkg: string): Promise<string | undefined> => {
    try {
      await run(apt, ['install', '-y', '--no-install-recommends', pkg], { env, timeout: 300_000, maxBuffer: 16 * 1024 * 1024 });
      return undefined;
    } catch (err) {
      const e = err as { stderr?: string; message: string };
      return (e.stderr ?? e.message).trim().split('\n').slice(-3).join(' / ');
    }
  };
  const errors: string[] = [];
  for (const pkg of packages) {
    log(`${name} not found: apt-get install -y ${pkg}`);
    let failed = await attempt(pkg);
    if (failed !== undefined && !aptUpdated) {
      log('apt-get update, then again');
      aptUpdated = true;
      try {
        await run(apt, ['update'], { env, timeout: 300_000, maxBuffer: 16 * 1024 * 1024 });
      } catch (err) {
        log(`apt-get update failed: ${(err as Error).message.split('\n')[0] ?? ''}`);
      }
      failed = await attempt(pkg);
    }
    const path = which(name);
    if (failed === undefined && path) return { path };
    errors.push(`${pkg}: ${failed ?? `installed, but no ${name} binary found`}`);
  }
  return { reason: `could not install ${name}: ${errors.join('; ')}` };
}

// ---------------------------------------------------------------------------------------------------
// Core pinning (the notes' method: load generator and upstreams on core 0, the proxy under test on core 1)

export interface Pinning {
  enabled: boolean;
  /** Why pinning is off, when it is. */
  reason: string;
  /** The command line, prefixed with `taskset -c <core>` when pinning. */
  wrap(core: number, cmd: string, args: readonly string[]): [string, string[]];
  describe: string;
}

export async function setupPinning(want: boolean): Promise<Pinning> {
  const taskset = which('taskset');
  const cpus = await onlineCpus();
  let reason = '';
  if (!want) reason = 'BENCH_PIN=0';
  else if (!taskset) reason = 'taskset is not installed';
  else if (!cpus.includes(0) || !cpus.includes(1)) reason = `cores 0 and 1 are not both available (allowed: ${cpus.join(',') || 'unknown'})`;
  if (reason !== '' || !taskset) {
    return { enabled: false, reason, wrap: (_c, cmd, args) => [cmd, [...args]], describe: `unpinned (${reason}): load generator, upstreams, Consul and the proxy share every core` };
  }
  // This process (every thread), and so everything it starts from now on, goes to core 0; the proxy under test is started with `taskset -c 1`.
  await run(taskset, ['-a', '-p', '-c', '0', String(process.pid)]);
  return {
    enabled: true,
    reason: '',
    wrap: (core, cmd, args) => [taskset, ['-c', String(core), cmd, ...args]],
    describe: 'pinned with taskset: load generator, upstreams and Consul on core 0, the proxy under test alone on core 1',
  };
}

async function onlineCpus(): Promise<number[]> {
  try {
    const status = await readFile('/proc/self/status', 'utf8');
    const m = /^Cpus_allowed_list:\s*(.+)$/m.exec(status);
    if (!m || m[1] === undefined) return [];
    const out: number[] = [];
    for (const part of m[1].trim().split(',')) {
      const [a, b] = part.split('-').map(Number);
      if (a === undefined || Number.isNaN(a)) continue;
      for (let i = a; i <= (b ?? a); i++) out.push(i);
    }
    return out;
  } catch {
    return [];
  }
}

// ---------------------------------------------------------------------------------------------------
// /proc readers

let clkTck: number | undefined;
export async function clockTicks(): Promise<number> {
  if (clkTck !== undefined) return clkTck;
  try {
    const { stdout } = await run('getconf', ['CLK_TCK']);
    const n = Number(stdout.trim());
    clkTck = Number.isInteger(n) && n > 0 ? n : 100;
  } catch {
    clkTck = 100;
  }
  return clkTck;
}

/** Fields of /proc/<pid>/stat after the `(comm)` field: index 0 is field 3 (state). */
async function statFields(pid: number): Promise<string[] | undefined> {
  try {
    const s = await readFile(`/proc/${pid}/stat`, 'utf8');
    return s.slice(s.lastIndexOf(')') + 2).split(' ');
  } catch {
    return undefined;
  }
}

/** Busy (non-idle, non-iowait) seconds of one core since boot, from /proc/stat. */
export async function coreBusySeconds(core: number): Promise<number> {
  const tck = await clockTicks();
  const text = await readFile('/proc/stat', 'utf8').catch(() => '');
  const line = text.split('\n').find((l) => l.startsWith(`cpu${core} `));
  if (!line) return Number.NaN;
  // user nice system idle iowait irq softirq steal ...
  const v = line.trim().split(/\s+/).slice(1).map(Number);
  const busy = (v[0] ?? 0) + (v[1] ?? 0) + (v[2] ?? 0) + (v[5] ?? 0) + (v[6] ?? 0) + (v[7] ?? 0);
  return busy / tck;
}

/** The pid and its descendants (nginx's master and workers). */
export async function processTree(pid: number): Promise<number[]> {
  const parents = new Map<number, number[]>();
  for (const name of await readdir('/proc').catch(() => [] as string[])) {
    if (!/^\d+$/.test(name)) continue;
    const f = await statFields(Number(name));
    const ppid = Number(f?.[1]);
    if (!f || Number.isNaN(ppid)) continue;
    const list = parents.get(ppid) ?? [];
    list.push(Number(name));
    parents.set(ppid, list);
  }
  const out: number[] = [];
  const todo = [pid];
  while (todo.length > 0) {
    const p = todo.pop() as number;
    out.push(p);
    todo.push(...(parents.get(p) ?? []));
  }
  return out;
}

/** utime + stime of these processes (all threads), in seconds. */
export async function cpuSeconds(pids: readonly number[]): Promise<number> {
  const tck = await clockTicks();
  let ticks = 0;
  for (const pid of pids) {
    const f = await statFields(pid);
    // utime and stime are fields 14 and 15 of the file: indexes 11 and 12 here.
    if (f) ticks += Number(f[11] ?? 0) + Number(f[12] ?? 0);
  }
  return ticks / tck;
}

/** VmRSS (or VmHWM, the peak) of these processes, in MB. */
export async function rssMb(pids: readonly number[], field: 'VmRSS' | 'VmHWM' = 'VmRSS'): Promise<number> {
  let kb = 0;
  for (const pid of pids) {
    try {
      const s = await readFile(`/proc/${pid}/status`, 'utf8');
      const m = new RegExp(`^${field}:\\s*(\\d+)\\s*kB`, 'm').exec(s);
      kb += Number(m?.[1] ?? 0);
    } catch {
      // gone
    }
  }
  return kb / 1024;
}

async function socketInodes(pid: number): Promise<Set<string>> {
  const out = new Set<string>();
  const dir = `/proc/${pid}/fd`;
  for (const fd of await readdir(dir).catch(() => [] as string[])) {
    const target = await readlink(join(dir, fd)).catch(() => '');
    const m = /^socket:\[(\d+)\]$/.exec(target);
    if (m?.[1] !== undefined) out.add(m[1]);
  }
  return out;
}

interface TcpEntry {
  localPort: number;
  remotePort: number;
  state: string;
  inode: string;
}

async function tcpTable(): Promise<TcpEntry[]> {
  const out: TcpEntry[] = [];
  for (const file of ['/proc/net/tcp', '/proc/net/tcp6']) {
    const text = await readFile(file, 'utf8').catch(() => '');
    for (const line of text.split('\n').slice(1)) {
      const cols = line.trim().split(/\s+/);
      const local = cols[1];
      const remote = cols[2];
      const state = cols[3];
      const inode = cols[9];
      if (local === undefined || remote === undefined || state === undefined || inode === undefined) continue;
      out.push({ localPort: parseInt(local.split(':')[1] ?? '0', 16), remotePort: parseInt(remote.split(':')[1] ?? '0', 16), state, inode });
    }
  }
  return out;
}

/** ESTABLISHED TCP connections of `pid` to `remotePort` (e.g. the sidecar's connections to Consul's HTTP port). */
export async function establishedTo(pid: number, remotePort: number): Promise<number> {
  const inodes = await socketInodes(pid);
  const table = await tcpTable();
  // State 01 = ESTABLISHED.
  return table.filter((e) => e.state === '01' && e.remotePort === remotePort && inodes.has(e.inode)).length;
}

/** The pid of the process listening on a TCP port (to find the Consul agent), if this user can see it. */
export async function pidListeningOn(port: number): Promise<number | undefined> {
  const table = await tcpTable();
  // State 0A = LISTEN.
  const inodes = new Set(table.filter((e) => e.state === '0A' && e.localPort === port).map((e) => e.inode));
  if (inodes.size === 0) return undefined;
  for (const name of await readdir('/proc').catch(() => [] as string[])) {
    if (!/^\d+$/.test(name)) continue;
    const mine = await socketInodes(Number(name));
    for (const i of inodes) if (mine.has(i)) return Number(name);
  }
  return undefined;
}

// ---------------------------------------------------------------------------------------------------
// HTTP helpers

export async function getJson(url: string, timeoutMs = 5000): Promise<{ status: number; body: unknown }> {
  const res = await fetch(url, { signal: AbortSignal.timeout(timeoutMs) });
  const text = await res.text();
  let body: unknown = text;
  try {
    body = JSON.parse(text);
  } catch {
    // not JSON
  }
  return { status: res.status, body };
}

export async function putJson(url: string, payload: unknown, timeoutMs = 30_000): Promise<{ status: number; text: string }> {
  const res = await fetch(url, { method: 'PUT', headers: { 'content-type': 'application/json' }, body: JSON.stringify(payload), signal: AbortSignal.timeout(timeoutMs) });
  return { status: res.status, text: await res.text() };
}

// ---------------------------------------------------------------------------------------------------
// The sidecar (the real CLI in a child process)

export interface Sidecar extends Proc {
  api: string;
  proxy: string;
}

export interface SidecarOptions {
  consul: string;
  apiPort: number;
  proxyPort: number;
  stateDir: string;
  nodeName: string;
  /** More `tandem start` flags (e.g. `--set upstreams=[...]`). */
  args?: readonly string[];
  /** node flags before bin/tandem.js (e.g. `--cpu-prof`). */
  nodeArgs?: readonly string[];
  pinning?: Pinning;
  /** The core to pin it to (when pinning). */
  core?: number;
  startTimeoutMs?: number;
}

export async function startSidecar(o: SidecarOptions): Promise<Sidecar> {
  const args = [
    ...(o.nodeArgs ?? []),
    BIN, 'start',
    '--consul', o.consul,
    '--api', `127.0.0.1:${o.apiPort}`,
    '--proxy', `127.0.0.1:${o.proxyPort}`,
    '--state-dir', o.stateDir,
    '--node-name', o.nodeName,
    '--log-level', 'warn',
    '--advertise', '127.0.0.1',
    '--set', 'registration.checkIntervalMs=1000',
    ...(o.args ?? []),
  ];
  const [cmd, argv] = o.pinning && o.core !== undefined ? o.pinning.wrap(o.core, process.execPath, args) : [process.execPath, args];
  // Only PATH: no CONSUL_HTTP_* or TANDEM_* from the caller's environment leaks into the run.
  const p = startProc(cmd, argv, { env: { PATH: process.env['PATH'] ?? '' }, stdout: 'ignore' });
  const api = `http://127.0.0.1:${o.apiPort}`;
  const deadline = Date.now() + (o.startTimeoutMs ?? 30_000);
  for (;;) {
    checkInterrupted();
    if (!alive(p)) throw new Error(`tandem exited during start (${String(p.child.exitCode ?? p.child.signalCode)}): ${p.output()}`);
    try {
      const res = await fetch(`${api}/v1/health`, { signal: AbortSignal.timeout(1000) });
      await res.arrayBuffer();
      if (res.ok) break;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) throw new Error(`tandem's control API did not answer in time: ${p.output()}`);
    await sleep(100);
  }
  return { ...p, api, proxy: `http://127.0.0.1:${o.proxyPort}` };
}

// ---------------------------------------------------------------------------------------------------
// Upstreams: nginx (the notes' reference setup) or node:http (bench/upstream.ts), both on core 0

export interface NginxInfo {
  path: string;
  version: string;
  /** `nginx -V` said --without-http_<name>_module: its *_temp_path directive does not exist. */
  without: Set<string>;
}

export async function nginxInfo(path: string): Promise<NginxInfo> {
  const { stderr } = await run(path, ['-V']);
  const version = /nginx version: (\S+)/.exec(stderr)?.[1] ?? 'nginx';
  const without = new Set([...stderr.matchAll(/--without-http_(\w+)_module/g)].map((m) => m[1] ?? ''));
  return { path, version, without };
}

function tempPaths(info: NginxInfo, dir: string): string {
  const lines = [`client_body_temp_path ${dir}/tmp/body;`, `proxy_temp_path ${dir}/tmp/proxy;`];
  for (const m of ['fastcgi', 'uwsgi', 'scgi']) if (!info.without.has(m)) lines.push(`${m}_temp_path ${dir}/tmp/${m};`);
  return lines.join('\n  ');
}

/** The parts of nginx.conf that keep it off the system: pid, logs and temp paths in `dir`, one worker. */
function nginxMain(info: NginxInfo, dir: string, http: string): string {
  return `# Written by the Tandem benchmark: a throwaway nginx under ${dir}, never the system config.
worker_processes 1;
pid ${dir}/nginx.pid;
error_log ${dir}/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  ${tempPaths(info, dir)}
  keepalive_timeout 65;
  keepalive_requests 1000000;
${http}
}
`;
}

/** Starts nginx with its own prefix and config in `dir` (`-p <dir> -c <conf> -e <log> -g 'daemon off;'`) and waits until `port` answers. */
export async function startNginx(info: NginxInfo, dir: string, http: string, port: number, pinning: Pinning | undefined, core: number | undefined): Promise<Proc> {
  await mkdir(join(dir, 'tmp'), { recursive: true });
  // Workers run as `nobody` when started by root: they must be able to read the tree.
  await chmod(dir, 0o755);
  const conf = join(dir, 'nginx.conf');
  await writeFile(conf, nginxMain(info, dir, http));
  const args = ['-p', dir, '-c', conf, '-e', join(dir, 'error.log'), '-g', 'daemon off;'];
  const [cmd, argv] = pinning && core !== undefined ? pinning.wrap(core, info.path, args) : [info.path, args];
  const p = startProc(cmd, argv, { group: true });
  const deadline = Date.now() + 10_000;
  for (;;) {
    if (!alive(p)) {
      const errLog = await readFile(join(dir, 'error.log'), 'utf8').catch(() => '');
      throw new Error(`nginx exited during start: ${p.output()} ${errLog}`);
    }
    try {
      const res = await fetch(`http://127.0.0.1:${port}/`, { signal: AbortSignal.timeout(1000) });
      await res.arrayBuffer();
      return p;
    } catch {
      // not yet
    }
    if (Date.now() > deadline) {
      await stopProc(p, 2000);
      throw new Error(`nginx did not answer on ${port} within 10 s: ${p.output()}`);
    }
    await sleep(50);
  }
}

/** Two upstream servers (one nginx worker, two ports) serving the bench bodies; static files for 1k/64k. */
export async function startNginxUpstreams(info: NginxInfo, dir: string, ports: readonly number[]): Promise<Proc> {
  const www = join(dir, 'www');
  await mkdir(www, { recursive: true });
  await chmod(www, 0o755);
  for (const [size, path] of Object.entries(BODY_PATHS) as [BodySize, string][]) {
    if (path === '/') continue;
    const file = join(www, path.slice(1));
    await writeFile(file, benchBody('static', BODY_BYTES[size]));
    await chmod(file, 0o644);
  }
  const servers = ports
    .map((port, i) => {
      const instance = String.fromCharCode(97 + i);
      // nginx's `return` text has no escapes: the 100-byte body ends without a newline.
      return `  server {
    listen 127.0.0.1:${port} reuseport;
    default_type application/json;
    location = /1k { root ${www}; }
    location = /64k { root ${www}; }
    location / { return 200 '${benchBody(instance, 100, false)}'; }
  }`;
    })
    .join('\n');
  return startNginx(info, dir, servers, ports[0] ?? 0, undefined, undefined);
}

/** nginx as the reference local proxy: one worker, upstream keep-alive, `/bench/<rest>` → `/<rest>` like Tandem. */
export async function startNginxProxy(info: NginxInfo, dir: string, port: number, upstreams: readonly number[], pinning: Pinning, core: number): Promise<Proc> {
  const http = `  upstream bench_up {
    ${upstreams.map((p) => `server 127.0.0.1:${p};`).join('\n    ')}
    keepalive 64;
    keepalive_requests 1000000;
  }
  server {
    listen 127.0.0.1:${port};
    location = / { return 200 'nginx proxy'; }
    location /bench/ {
      proxy_pass http://bench_up/;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffer_size 16k;
      proxy_buffers 16 16k;
      proxy_max_temp_file_size 0;
    }
  }`;
  return startNginx(info, dir, http, port, pinning, core);
}

/** Both node:http upstreams in one child process (bench/upstream.ts). */
export async function startNodeUpstreams(ports: readonly number[]): Promise<Proc> {
  return startReadyChild(process.execPath, ['--import', 'tsx', UPSTREAM_SCRIPT, ...ports.map(String)], 'upstreams');
}

/** The bare node:http + undici proxy (bench/bare-proxy.ts), the floor Tandem's data path is compared with. */
export async function startBareProxy(port: number, upstreams: readonly number[], pinning: Pinning, core: number, nodeArgs: readonly string[] = []): Promise<Proc> {
  const [cmd, argv] = pinning.wrap(core, process.execPath, [...nodeArgs, '--import', 'tsx', BARE_PROXY_SCRIPT, String(port), ...upstreams.map(String)]);
  return startReadyChild(cmd, argv, 'the bare proxy');
}

/** bench/engine-floor.mjs: Tandem's engine with nothing but framing, round-robin over `upstreams`. */
export async function startEngineFloor(port: number, upstreams: readonly number[], pinning: Pinning, core: number): Promise<Proc> {
  const [cmd, argv] = pinning.wrap(core, process.execPath, [ENGINE_FLOOR_SCRIPT, String(port), ...upstreams.map(String)]);
  return startReadyChild(cmd, argv, 'the engine floor');
}

/** A child that prints "ready" on stdout once it listens. */
async function startReadyChild(cmd: string, args: readonly string[], what: string): Promise<Proc> {
  const p = startProc(cmd, args);
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${what} not ready in 20 s: ${p.output()}`)), 20_000);
    const onData = (d: Buffer) => {
      if (d.toString().includes('ready')) {
        clearTimeout(timer);
        p.child.stdout?.removeListener('data', onData);
        resolve();
      }
    };
    p.child.stdout?.on('data', onData);
    void p.exited.then(() => {
      clearTimeout(timer);
      reject(new Error(`${what} exited during start (${String(p.child.exitCode ?? p.child.signalCode)}): ${p.output()}`));
    });
  });
  return p;
}
