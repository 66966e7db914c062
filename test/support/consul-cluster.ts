// A real Consul cluster on loopback addresses (servers on 127.0.0.11-13, client agents on 127.0.0.21+) for tests and demos.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { installConsul } from '../../src/consul/consul-dev-agent.ts';
import { startProc, stopProc, type Proc } from './processes.ts';

export interface ClusterNode {
  name: string;
  ip: string;
  server: boolean;
  /** HTTP API, e.g. http://127.0.0.11:8500. */
  address: string;
  /** The running agent, if it runs. */
  proc: Proc | undefined;
}

export interface ClusterOptions {
  servers?: readonly string[];
  clients?: readonly string[];
  /** HTTP port on every node's own address (default 8500). */
  httpPort?: number;
}

/**
 * Three servers and N client agents, each on its own 127.0.0.x address with Consul's standard ports
 * (every 127.0.0.0/8 address works on Linux loopback without set-up). Data lives in a temp dir.
 */
export class ConsulCluster {
  readonly nodes: ClusterNode[];
  #opts: ClusterOptions;
  #binary: string | undefined;
  #dir: string | undefined;

  constructor(opts: ClusterOptions = {}) {
    this.#opts = opts;
    const port = opts.httpPort ?? 8500;
    const servers = opts.servers ?? ['127.0.0.11', '127.0.0.12', '127.0.0.13'];
    const clients = opts.clients ?? ['127.0.0.21'];
    this.nodes = [
      ...servers.map((ip, i) => ({ name: `server-${i + 1}`, ip, server: true, address: `http://${ip}:${port}`, proc: undefined })),
      ...clients.map((ip, i) => ({ name: `client-${i + 1}`, ip, server: false, address: `http://${ip}:${port}`, proc: undefined })),
    ];
  }

  node(name: string): ClusterNode {
    const n = this.nodes.find((x) => x.name === name);
    if (!n) throw new Error(`no cluster node ${name}`);
    return n;
  }

  get servers(): ClusterNode[] {
    return this.nodes.filter((n) => n.server);
  }

  get clients(): ClusterNode[] {
    return this.nodes.filter((n) => !n.server);
  }

  /** Starts every node; resolves when there is a leader and every client agent sees it. */
  async start(timeoutMs = 60_000): Promise<void> {
    this.#binary ??= await installConsul();
    this.#dir ??= await mkdtemp(join(tmpdir(), 'tandem-cluster-'));
    for (const n of this.nodes) this.#spawn(n);
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      if (await this.#ready()) return;
      await new Promise((r) => setTimeout(r, 200));
    }
    await this.stop();
    throw new Error(`the Consul cluster did not come up within ${timeoutMs} ms`);
  }

  /** The current leader's node, asked from any live server. */
  async leader(): Promise<ClusterNode | undefined> {
    for (const s of this.servers.filter((x) => x.proc)) {
      try {
        const res = await fetch(`${s.address}/v1/status/leader`, { signal: AbortSignal.timeout(1000) });
        const addr = (await res.json()) as string;
        const ip = addr.split(':')[0];
        const n = this.servers.find((x) => x.ip === ip);
        if (n) return n;
      } catch {
        // try the next one
      }
    }
    return undefined;
  }

  /** kill -9 one node (or `signal`, then SIGKILL after 30 s) and wait until the process is gone. */
  async kill(name: string, signal: NodeJS.Signals = 'SIGKILL'): Promise<void> {
    const n = this.node(name);
    if (!n.proc) return;
    await stopProc(n.proc, 30_000, signal);
    n.proc = undefined;
  }

  /** Starts a stopped node again (same data dir: it rejoins with its state). */
  async restart(name: string): Promise<void> {
    const n = this.node(name);
    if (n.proc) await this.kill(name);
    this.#spawn(n);
  }

  async stop(): Promise<void> {
    await Promise.all(this.nodes.map((n) => this.kill(n.name)));
    if (this.#dir) await rm(this.#dir, { recursive: true, force: true });
    this.#dir = undefined;
  }

  #spawn(n: ClusterNode): void {
    const port = this.#opts.httpPort ?? 8500;
    const join = this.servers.flatMap((s) => ['-retry-join', s.ip]);
    const args = [
      'agent', '-node', n.name, '-bind', n.ip, '-advertise', n.ip, '-client', n.ip,
      '-data-dir', `${this.#dir}/${n.name}`, '-http-port', String(port), '-dns-port', '-1', '-grpc-port', '-1',
      '-log-level', 'warn', '-hcl', 'performance { raft_multiplier = 1 }', '-hcl', 'disable_update_check = true', '-retry-interval', '1s',
      ...join,
      ...(n.server ? ['-server', '-bootstrap-expect', String(this.servers.length), '-ui'] : []),
    ];
    // Its own process group: a Ctrl-C meant for the test runner does not take the cluster down under it.
    n.proc = startProc(this.#binary as string, args, { stdin: 'ignore', stdout: 'ignore', stderr: 'ignore', group: true });
  }

  async #ready(): Promise<boolean> {
    try {
      for (const c of this.clients) {
        const res = await fetch(`${c.address}/v1/status/leader`, { signal: AbortSignal.timeout(1000) });
        if (!res.ok || !((await res.json()) as string)) return false;
        const nodes = await fetch(`${c.address}/v1/catalog/nodes`, { signal: AbortSignal.timeout(1000) });
        if (!nodes.ok || ((await nodes.json()) as unknown[]).length < this.nodes.length) return false;
      }
      return (await this.leader()) !== undefined;
    } catch {
      return false;
    }
  }
}
