// Starts and stops a throwaway Consul dev agent on free loopback ports (used by `tandem dev` and the tests).
import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { freePorts } from '../common/free-port.ts';

const run = promisify(execFile);
const INSTALL_SCRIPT = fileURLToPath(new URL('../../deploy/consul/install.sh', import.meta.url));
const DEV_CONFIG = fileURLToPath(new URL('../../deploy/consul/dev.hcl', import.meta.url));

/** Runs deploy/consul/install.sh and returns the path of a consul binary. */
export async function installConsul(): Promise<string> {
  try {
    const { stdout } = await run('sh', [INSTALL_SCRIPT], { timeout: 300_000 });
    const path = stdout.trim().split('\n').pop();
    if (!path) throw new Error('install.sh printed no path');
    return path;
  } catch (err) {
    const stderr = (err as { stderr?: string }).stderr?.trim();
    throw new Error(`could not make a consul binary available: ${stderr || (err as Error).message}`, { cause: err });
  }
}

export interface DevAgentOptions {
  binary?: string;
  /** Fixed HTTP port; a free one otherwise. */
  httpPort?: number;
  nodeName?: string;
  bind?: string;
  /** Where the agent's log goes; discarded by default. */
  log?: 'inherit' | 'ignore';
  /** Extra `consul agent` arguments, e.g. `['-hcl', 'acl { enabled = true }']`. */
  extraArgs?: readonly string[];
  /** Token for the readiness probe when ACLs deny anonymous reads. */
  probeToken?: string;
  /** Serve Consul DNS on this port (0 = a free one); off when absent. */
  dnsPort?: number;
}

export class ConsulDevAgent {
  #opts: DevAgentOptions;
  #child: ChildProcess | undefined;
  #exited: Promise<void> | undefined;
  #ports: number[] | undefined;
  #binary: string | undefined;
  /** stop() was called while start() was still installing: start() must not spawn. */
  #cancelled = false;

  constructor(opts: DevAgentOptions = {}) {
    this.#opts = opts;
  }

  get httpPort(): number {
    const p = this.#ports?.[0];
    if (p === undefined) throw new Error('dev agent not started');
    return p;
  }

  get address(): string {
    return `http://${this.#opts.bind ?? '127.0.0.1'}:${this.httpPort}`;
  }

  /** The DNS port, when DNS is on. */
  get dnsPort(): number | undefined {
    return this.#opts.dnsPort === undefined ? undefined : this.#ports?.[4];
  }

  get running(): boolean {
    return this.#child !== undefined;
  }

  /** Starts the agent (same ports on a restart) and resolves once it has a leader. */
  async start(timeoutMs = 30_000): Promise<void> {
    if (this.#child) return;
    this.#cancelled = false;
    this.#binary ??= this.#opts.binary ?? (await installConsul());
    if (this.#cancelled) throw new Error('consul dev agent start cancelled');
    const bind = this.#opts.bind ?? '127.0.0.1';
    if (!this.#ports) {
      // http, serf lan, serf wan, server rpc, dns
      const free = await freePorts(5, { host: bind, udp: true });
      const dns = this.#opts.dnsPort ? this.#opts.dnsPort : (free[4] as number);
      this.#ports = [this.#opts.httpPort ?? (free[0] as number), free[1] as number, free[2] as number, free[3] as number, dns];
    }
    const [http, serfLan, serfWan, server, dns] = this.#ports as [number, number, number, number, number];
    const args = [
      'agent', '-dev', '-config-file', DEV_CONFIG, '-client', bind, '-bind', bind,
      '-http-port', String(http), '-dns-port', this.#opts.dnsPort === undefined ? '-1' : String(dns), '-grpc-port', '-1',
      '-serf-lan-port', String(serfLan), '-serf-wan-port', String(serfWan), '-server-port', String(server),
      '-node', this.#opts.nodeName ?? `tandem-dev-${http}`,
      ...(this.#opts.extraArgs ?? []),
    ];
    // Own process group: a Ctrl-C on the terminal reaches us, and we stop the agent after the sidecar
    // has deregistered its services. If this process dies first, the exit hook still kills the agent.
    const child = spawn(this.#binary, args, { stdio: ['ignore', this.#opts.log ?? 'ignore', this.#opts.log ?? 'ignore'], detached: true });
    const killOnExit = () => child.kill('SIGKILL');
    process.once('exit', killOnExit);
    child.once('exit', () => process.removeListener('exit', killOnExit));
    this.#child = child;
    this.#exited = new Promise((resolve) => child.once('exit', () => resolve()));
    void this.#exited.then(() => {
      if (this.#child === child) this.#child = undefined;
    });
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      if (!this.#child) throw new Error(`consul dev agent exited during start (${this.#binary} ${args.join(' ')})`);
      try {
        const headers: Record<string, string> = this.#opts.probeToken ? { 'x-consul-token': this.#opts.probeToken } : {};
        const res = await fetch(`${this.address}/v1/status/leader`, { headers, signal: AbortSignal.timeout(1000) });
        const leader = (await res.json()) as string;
        if (res.ok && leader) return;
      } catch {
        // not up yet
      }
      await new Promise((r) => setTimeout(r, 50));
    }
    await this.stop();
    throw new Error(`consul dev agent did not elect a leader within ${timeoutMs} ms`);
  }

  /** Stops the agent and waits for the process to exit (its ports are free again afterwards); also during start(). */
  async stop(signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
    const child = this.#child;
    if (!child) {
      this.#cancelled = true;
      return;
    }
    child.kill(signal);
    const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
    await this.#exited;
    clearTimeout(timer);
    this.#child = undefined;
  }

  async restart(): Promise<void> {
    await this.stop();
    await this.start();
  }
}
