// The local multi-host harness: 3 Consul servers and 3 "hosts" on loopback IPs, each with a client agent, a Tandem sidecar and demo services.
//
//   node --import tsx test/support/multihost-harness.ts     (runs `npm run build` first; HARNESS_SKIP_BUILD=1 skips it)
//
// Servers on 127.0.0.11-13; host-a/b/c on 127.0.0.21-23, each with its own Consul client agent (:8500),
// `tandem start` (proxy :7700, control API :7701, own state dir) and deploy/consul/demo/service.mjs
// instances bound to the host's IP. Ctrl-C stops everything. test/e2e uses startHarness/stopHarness.
import { closeSync, openSync, readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { freePorts } from '../../src/common/free-port.ts';
import { ConsulCluster } from './consul-cluster.ts';
import { startProc, stopProc, waitForLine, type Proc } from './processes.ts';
import { ROOT, build, setLogPrefix, sleep } from './run-control.ts';
import { startTandem } from './tandem-process.ts';

const DEMO = join(ROOT, 'deploy', 'consul', 'demo', 'service.mjs');
const SERVERS = ['127.0.0.11', '127.0.0.12', '127.0.0.13'] as const;
const HOSTS = [
  { name: 'host-a', ip: '127.0.0.21' },
  { name: 'host-b', ip: '127.0.0.22' },
  { name: 'host-c', ip: '127.0.0.23' },
] as const;
export const UI_URL = `http://${SERVERS[0]}:8500/ui/dc1/services`;

export type HostName = (typeof HOSTS)[number]['name'];
export interface ServiceDef {
  name: string;
  version: string;
}

export interface HarnessService extends ServiceDef {
  host: HarnessHost;
  port: number;
  /** The registration id (`<name>-<host>-<port>`), known once the service has registered. */
  id: string | undefined;
  proc: Proc | undefined;
}

export interface HarnessHost {
  name: HostName;
  ip: string;
  /** The Consul node name of this host's client agent (client-1..3). */
  consulNode: string;
  consul: string;
  api: string;
  proxy: string;
  stateDir: string;
  sidecar: Proc | undefined;
  services: HarnessService[];
}

export interface HarnessOptions {
  /** Demo services per host; default greeter@2.0.0 on host-a, 1.0.0 on host-b, 1.1.0 on host-c. */
  services?: Partial<Record<HostName, readonly ServiceDef[]>>;
  /** Extra `tandem start` arguments for every sidecar (e.g. FAST from test/support/sidecar.ts). */
  sidecarArgs?: readonly string[];
  /** Check interval of the demo services' HTTP checks (default 2000 ms). */
  checkIntervalMs?: number;
  /** How long to wait for the harness's Consul/Tandem ports to be free (another cluster may be running). */
  portWaitMs?: number;
  log?: (line: string) => void;
}

export interface Harness {
  cluster: ConsulCluster;
  hosts: HarnessHost[];
  /** Temp dir holding the state dirs and one log file per process. */
  dir: string;
  host(name: HostName): HarnessHost;
  /** Starts (or restarts, on the same port) one demo service; resolves once its sidecar accepted it. */
  startService(s: HarnessService): Promise<void>;
  stopService(s: HarnessService, signal?: NodeJS.Signals): Promise<void>;
  /** Stops a host's Consul client agent (kill -9 by default) and waits for the process to be gone. */
  stopAgent(h: HarnessHost, signal?: NodeJS.Signals): Promise<void>;
  /** Starts a host's client agent again and waits until it is back in the cluster. */
  startAgent(h: HarnessHost, timeoutMs?: number): Promise<void>;
  /** Resolves when Consul lists `count` passing instances of `service` (asked from a live server). */
  waitPassing(service: string, count: number, timeoutMs?: number): Promise<void>;
  stop(): Promise<void>;
}

async function bindable(ip: string, port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const srv = createServer();
    srv.once('error', () => resolve(false));
    srv.listen({ host: ip, port, exclusive: true }, () => srv.close(() => resolve(true)));
  });
}

/** Waits until nothing listens on the ports the harness needs (e.g. test/faults' cluster uses the same ones). */
async function waitForPorts(waitMs: number, log: (l: string) => void): Promise<void> {
  const wanted = [...SERVERS.flatMap((ip) => [8300, 8301, 8302, 8500].map((p) => [ip, p] as const)), ...HOSTS.flatMap((h) => [8301, 8500, 7700, 7701].map((p) => [h.ip, p] as const))];
  const deadline = Date.now() + waitMs;
  for (let told = false; ; told = true) {
    const busy: string[] = [];
    for (const [ip, port] of wanted) if (!(await bindable(ip, port))) busy.push(`${ip}:${port}`);
    if (busy.length === 0) return;
    if (Date.now() >= deadline) throw new Error(`ports in use (another Consul cluster or harness running?): ${busy.join(', ')}`);
    if (!told) log(`waiting for ports to be free: ${busy.slice(0, 4).join(', ')}${busy.length > 4 ? ', ...' : ''}`);
    await sleep(2000);
  }
}

function tail(file: string): string {
  try {
    return readFileSync(file, 'utf8').split('\n').slice(-15).join('\n');
  } catch {
    return '';
  }
}

async function getJson<T>(url: string): Promise<T | undefined> {
  try {
    const res = await fetch(url, { signal: AbortSignal.timeout(2000) });
    return res.ok ? ((await res.json()) as T) : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Client agents started together with the servers may try to join before the servers listen, and
 * `retry_join` then waits 30 s before trying again: restart such a client once the servers answer.
 */
async function rejoinEarly(cluster: ConsulCluster, started: Promise<void>): Promise<void> {
  let done = false;
  void started.then(() => (done = true), () => (done = true));
  const deadline = Date.now() + 20_000;
  while (!done && Date.now() < deadline) {
    await sleep(500);
    const up = await Promise.all(cluster.servers.map((s) => getJson<string[]>(`${s.address}/v1/status/peers`)));
    if (!up.every((p) => p !== undefined)) continue;
    await sleep(1000);
    for (const c of cluster.clients) {
      const members = await getJson<unknown[]>(`${c.address}/v1/agent/members`);
      if (!done && members !== undefined && members.length < 2) await cluster.restart(c.name);
    }
    return;
  }
}

export async function startHarness(opts: HarnessOptions = {}): Promise<Harness> {
  const log = opts.log ?? (() => undefined);
  await waitForPorts(opts.portWaitMs ?? 0, log);
  const dir = await mkdtemp(join(tmpdir(), 'tandem-harness-'));
  const cluster = new ConsulCluster({ servers: SERVERS, clients: HOSTS.map((h) => h.ip) });
  const defaults: Record<HostName, readonly ServiceDef[]> = {
    'host-a': [{ name: 'greeter', version: '2.0.0' }],
    'host-b': [{ name: 'greeter', version: '1.0.0' }],
    'host-c': [{ name: 'greeter', version: '1.1.0' }],
  };
  const hosts: HarnessHost[] = HOSTS.map((h, i) => ({
    name: h.name,
    ip: h.ip,
    consulNode: cluster.clients[i]?.name ?? `client-${i + 1}`,
    consul: `http://${h.ip}:8500`,
    api: `http://${h.ip}:7701`,
    proxy: `http://${h.ip}:7700`,
    stateDir: join(dir, h.name),
    sidecar: undefined,
    services: [],
  }));
  const host = (name: HostName) => hosts.find((h) => h.name === name) as HarnessHost;

  const startSidecar = async (h: HarnessHost): Promise<void> => {
    const logFile = join(dir, `${h.name}-tandem.log`);
    const fd = openSync(logFile, 'a');
    const args = ['--consul', h.consul, '--advertise', h.ip, '--node-name', h.name, '--state-dir', h.stateDir, '--set', 'registration.drainMs=500', ...(opts.sidecarArgs ?? [])];
    try {
      // Its own process group, so a Ctrl-C in the terminal reaches only the harness, which stops everything in order.
      h.sidecar = await startTandem({ api: `${h.ip}:7701`, proxy: `${h.ip}:7700`, args, stdio: { stdout: fd, stderr: fd, group: true } });
    } catch (err) {
      throw new Error(`tandem on ${h.name}: ${(err as Error).message}\n${tail(logFile)}`, { cause: err });
    } finally {
      closeSync(fd);
    }
  };

  const startService = async (s: HarnessService): Promise<void> => {
    if (s.proc) await stopService(s);
    const h = s.host;
    const logFile = join(dir, `${h.name}-${s.name}-${s.port}.log`);
    const fd = openSync(logFile, 'a');
    s.proc = startProc(process.execPath, [DEMO, s.name, s.version, `${h.ip}:${s.port}`, h.api, String(opts.checkIntervalMs ?? 2000)], { stdin: 'ignore', stderr: fd, group: true });
    closeSync(fd);
    try {
      s.id = (await waitForLine(s.proc, /^registered (\S+)/, `${s.name}@${s.version} on ${h.name}`, 30_000))[1];
    } catch (err) {
      await stopProc(s.proc, 1000, 'SIGKILL');
      throw new Error(`${s.name}@${s.version} on ${h.name} did not register: ${(err as Error).message}\n${tail(logFile)}`, { cause: err });
    }
  };

  const stopService = async (s: HarnessService, signal: NodeJS.Signals = 'SIGTERM'): Promise<void> => {
    if (s.proc) await stopProc(s.proc, 15_000, signal);
    s.proc = undefined;
  };

  const waitPassing = async (service: string, count: number, timeoutMs = 30_000): Promise<void> => {
    for (const deadline = Date.now() + timeoutMs; ; await sleep(200)) {
      for (const s of cluster.servers.filter((x) => x.proc)) {
        const rows = await getJson<unknown[]>(`${s.address}/v1/health/service/${service}?passing&stale`);
        if (rows?.length === count) return;
        if (rows) break;
      }
      if (Date.now() > deadline) throw new Error(`Consul did not list ${count} passing ${service} instances within ${timeoutMs} ms`);
    }
  };

  const harness: Harness = {
    cluster,
    hosts,
    dir,
    host,
    startService,
    stopService,
    waitPassing,
    stopAgent: (h, signal = 'SIGKILL') => cluster.kill(h.consulNode, signal),
    startAgent: async (h, timeoutMs = 30_000) => {
      await cluster.restart(h.consulNode);
      for (const deadline = Date.now() + timeoutMs; ; await sleep(200)) {
        const leader = await getJson<string>(`${h.consul}/v1/status/leader`);
        const checks = await getJson<{ CheckID: string; Status: string }[]>(`${h.consul}/v1/health/node/${h.consulNode}`);
        if (leader && checks?.some((c) => c.CheckID === 'serfHealth' && c.Status === 'passing')) return;
        if (Date.now() > deadline) throw new Error(`the Consul agent of ${h.name} did not rejoin within ${timeoutMs} ms`);
      }
    },
    stop: async () => {
      await Promise.all(hosts.flatMap((h) => h.services.map((s) => stopService(s))));
      await Promise.all(hosts.map((h) => h.sidecar && stopProc(h.sidecar, 20_000)));
      await cluster.stop();
      await rm(dir, { recursive: true, force: true });
    },
  };

  try {
    log('starting 3 Consul servers and 3 client agents (installing Consul first if needed)...');
    const started = cluster.start();
    await Promise.all([started, rejoinEarly(cluster, started)]);
    log(`starting a Tandem sidecar on ${hosts.map((h) => h.ip).join(', ')}...`);
    await Promise.all(hosts.map((h) => startSidecar(h)));
    for (const h of hosts) {
      for (const def of opts.services?.[h.name] ?? defaults[h.name]) {
        const [port] = await freePorts(1, { host: h.ip });
        h.services.push({ ...def, host: h, port: port as number, id: undefined, proc: undefined });
      }
    }
    await Promise.all(hosts.flatMap((h) => h.services.map((s) => startService(s))));
    const counts = new Map<string, number>();
    for (const s of hosts.flatMap((h) => h.services)) counts.set(s.name, (counts.get(s.name) ?? 0) + 1);
    for (const [name, n] of counts) await waitPassing(name, n);
    await waitPassing('tandem', hosts.length);
  } catch (err) {
    await harness.stop().catch(() => undefined);
    throw err;
  }
  return harness;
}

export async function stopHarness(h: Harness): Promise<void> {
  await h.stop();
}

/** What to try, for people. */
export function describeHarness(h: Harness): string {
  const a = h.hosts[0] as HarnessHost;
  const lines = [
    `Tandem multi-host harness is up (logs and state in ${h.dir}).`,
    `  Consul UI: ${UI_URL}   (servers ${SERVERS.join(', ')})`,
    ...h.hosts.map((x) => `  ${x.name} ${x.ip}: Consul agent ${x.consul} (node ${x.consulNode}), tandem proxy ${x.proxy}, API ${x.api}; ${x.services.map((s) => `${s.name}@${s.version} on :${s.port}`).join(', ')}`),
    'Try, as a caller on host-a:',
    `  curl '${a.proxy}/greeter@^1/hello'                          # host-b and host-c in turn`,
    `  curl '${a.proxy}/greeter@2/hello'                           # host-a's own 2.0.0`,
    `  curl -H 'X-StickyId: user-42' '${a.proxy}/greeter@^1/hello'   # always the same instance`,
    `  curl '${a.api}/v1/instances/greeter'`,
    `  curl '${h.cluster.servers[0]?.address ?? ''}/v1/health/service/greeter?passing'`,
    'Ctrl-C stops everything.',
  ];
  return `${lines.join('\n')}\n`;
}

async function main(): Promise<void> {
  setLogPrefix('harness');
  await build('HARNESS_SKIP_BUILD');
  const h = await startHarness({ log: (l) => process.stderr.write(`${l}\n`), portWaitMs: 0 });
  process.stdout.write(describeHarness(h));
  await new Promise<void>((resolve) => {
    process.once('SIGINT', () => resolve());
    process.once('SIGTERM', () => resolve());
  });
  process.stderr.write('\nstopping (services deregister, sidecars drain, then Consul)...\n');
  await stopHarness(h);
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  main().catch((err: unknown) => {
    process.stderr.write(`harness: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exitCode = 1;
  });
}
