// `tandem dev`: a Consul dev agent (with DNS), a sidecar and two demo greeters on this machine, all stopped together.
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadConfig, type FrozenConfig } from '../config/config.ts';
import { ConsulDevAgent } from '../consul/consul-dev-agent.ts';
import { Sidecar } from '../sidecar.ts';

export const DEV_USAGE = `Usage: tandem dev [--consul-port PORT] [--dns-port PORT] [start flags]

Runs a whole local setup: a Consul dev agent (in memory, UI and DNS on; installed first if needed),
a sidecar and two demo greeters (greeter@1.0.0 and greeter@2.0.0, SDK apps). Ctrl-C or SIGTERM
stops all of them, and the temporary state directory is removed. When a Consul agent already answers
on the Consul port, it is used instead of starting one.

Flags:
  --consul-port PORT   Consul HTTP port (default 8500)
  --dns-port PORT      Consul DNS port of the dev agent (default 8600)
  --help               show this help
  any 'tandem start' flag (see tandem start --help), e.g. --proxy 127.0.0.1:7700 --api 127.0.0.1:7701
`;

async function isConsulUp(address: string): Promise<boolean> {
  try {
    const res = await fetch(`${address}/v1/status/leader`, { signal: AbortSignal.timeout(1000) });
    return res.ok && Boolean(await res.json());
  } catch {
    return false;
  }
}

/** Starts one demo greeter (an SDK app, shipped with the package) against the sidecar's control API. */
function demoGreeter(version: string, api: string): ChildProcess {
  const script = fileURLToPath(new URL(`./dev-greeter${import.meta.url.endsWith('.ts') ? '.ts' : '.js'}`, import.meta.url));
  // From source (tests, a checkout run with tsx) the greeter is TypeScript too.
  const args = script.endsWith('.ts') ? ['--import', 'tsx', script, version, api] : [script, version, api];
  return spawn(process.execPath, args, { stdio: ['ignore', 'inherit', 'inherit'] });
}

function takeFlag(args: string[], name: string): number | undefined {
  const i = args.indexOf(name);
  if (i < 0) return undefined;
  const value = Number(args[i + 1]);
  if (!Number.isInteger(value) || value < 1 || value > 65_535) throw new Error(`${name} needs a port number (1-65535), got '${args[i + 1] ?? ''}'`);
  args.splice(i, 2);
  return value;
}

/** Everything `tandem dev` started, stopped in reverse order on every exit path. */
class DevRun {
  agent: ConsulDevAgent | undefined;
  sidecar: Sidecar | undefined;
  demos: ChildProcess[] = [];
  stateDir: string | undefined;
  #stopping: Promise<void> | undefined;

  stop(): Promise<void> {
    this.#stopping ??= (async () => {
      // The greeters deregister themselves on SIGTERM; then the sidecar, then the agent.
      for (const d of this.demos) if (d.exitCode === null && d.signalCode === null) d.kill('SIGTERM');
      await Promise.all(this.demos.map((d) => (d.exitCode === null && d.signalCode === null ? new Promise((r) => d.once('exit', r)) : undefined)));
      await this.sidecar?.close().catch(() => undefined);
      await this.agent?.stop().catch(() => undefined);
      if (this.stateDir) await rm(this.stateDir, { recursive: true, force: true }).catch(() => undefined);
    })();
    return this.#stopping;
  }
}

export async function runDev(argv: readonly string[]): Promise<number> {
  // Flags first: nothing starts for --help or a bad flag.
  if (argv.includes('--help') || argv.includes('-h')) {
    process.stdout.write(DEV_USAGE);
    return 0;
  }
  const args = [...argv];
  let consulPort: number;
  let dnsPort: number;
  let config: FrozenConfig;
  const run = new DevRun();
  try {
    consulPort = takeFlag(args, '--consul-port') ?? 8500;
    dnsPort = takeFlag(args, '--dns-port') ?? 8600;
    run.stateDir = await mkdtemp(join(tmpdir(), 'tandem-dev-'));
    config = loadConfig({
      argv: [
        '--consul', `http://127.0.0.1:${consulPort}`, '--state-dir', run.stateDir, '--advertise', '127.0.0.1',
        '--set', 'registration.checkIntervalMs=2000', '--set', 'registration.drainMs=500',
        ...args,
      ],
    });
  } catch (err) {
    await run.stop();
    process.stderr.write(`tandem dev: ${err instanceof Error ? err.message : String(err)}\n`);
    return 2;
  }

  // Signals from here on stop whatever has started so far (a Consul agent included).
  let interrupted = false;
  const done = new Promise<number>((resolve) => {
    const onSignal = (signal: NodeJS.Signals) => {
      if (interrupted) {
        process.stderr.write(`tandem dev: ${signal} again, exiting now\n`);
        process.exit(1);
      }
      interrupted = true;
      void run.stop().then(() => resolve(0));
    };
    process.on('SIGTERM', onSignal);
    process.on('SIGINT', onSignal);
  });

  const consulAddress = config.consul.address;
  try {
    if (await isConsulUp(consulAddress)) {
      process.stdout.write(`Using the Consul agent already running at ${consulAddress}\n`);
    } else {
      run.agent = new ConsulDevAgent({ httpPort: consulPort, dnsPort, nodeName: 'tandem-dev' });
      process.stdout.write('Starting a Consul dev agent (installing Consul first if needed)...\n');
      await run.agent.start();
    }
    if (interrupted) return done;
    run.sidecar = new Sidecar({ config });
    const { api, proxy } = await run.sidecar.start();
    if (interrupted) return done;
    run.demos = ['1.0.0', '2.0.0'].map((v) => demoGreeter(v, api));
    const dns = run.agent?.dnsPort;
    process.stdout.write(`
Tandem is running.
  Consul UI:    ${consulAddress}/ui/dc1/services
  control API:  ${api}
  proxy:        ${proxy}
Try:
  curl ${proxy}/greeter@^1/hello
  curl ${proxy}/greeter@2/hello
  curl -H 'X-StickyId: user-42' ${proxy}/greeter/hello
  curl -x ${proxy} http://greeter.service.consul/hello
  curl ${api}/v1/instances/greeter
  curl ${api}/v1/services
${dns ? `  dig @127.0.0.1 -p ${dns} v1.greeter.service.consul SRV\n` : ''}Ctrl-C stops the sidecar, the demo services${run.agent ? ' and the Consul dev agent' : ''}.
`);
  } catch (err) {
    process.stderr.write(`tandem dev: could not start: ${err instanceof Error ? err.message.split('\n')[0] : String(err)}\n`);
    await run.stop();
    return interrupted ? done : 1;
  }
  return done;
}
