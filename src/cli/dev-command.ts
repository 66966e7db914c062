// `tandem dev`: a Consul dev agent, a sidecar and demo services on this machine, stopped together on Ctrl-C.
import { spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { waitForSignal } from './cli.ts';
import { loadConfig } from '../config/config.ts';
import { ConsulDevAgent } from '../consul/consul-dev-agent.ts';
import { Sidecar } from '../sidecar.ts';

async function isConsulUp(address: string): Promise<boolean> {
  try {
    const res = await fetch(`${address}/v1/status/leader`, { signal: AbortSignal.timeout(1000) });
    return res.ok && Boolean(await res.json());
  } catch {
    return false;
  }
}

const ROOT = fileURLToPath(new URL('../../', import.meta.url));

/** Starts one example greeter (examples/greeter.ts, an SDK app) against the sidecar's control API. */
function exampleGreeter(version: string, api: string): ChildProcess {
  return spawn(process.execPath, ['--import', 'tsx', join(ROOT, 'examples', 'greeter.ts'), version, api], {
    cwd: ROOT,
    stdio: ['ignore', 'inherit', 'inherit'],
  });
}

export async function runDev(args: readonly string[]): Promise<number> {
  const consulAddress = 'http://127.0.0.1:8500';
  let agent: ConsulDevAgent | undefined;
  if (await isConsulUp(consulAddress)) {
    process.stdout.write(`Using the Consul agent already running at ${consulAddress}\n`);
  } else {
    agent = new ConsulDevAgent({ httpPort: 8500, nodeName: 'tandem-dev' });
    process.stdout.write('Starting a Consul dev agent (installing Consul first if needed)...\n');
    await agent.start();
  }
  const stateDir = await mkdtemp(join(tmpdir(), 'tandem-dev-'));
  const config = loadConfig({
    argv: [
      '--consul', consulAddress, '--state-dir', stateDir, '--advertise', '127.0.0.1',
      '--set', 'registration.checkIntervalMs=2000', '--set', 'registration.drainMs=500',
      ...args,
    ],
  });
  const sidecar = new Sidecar({ config });
  const { api, proxy } = await sidecar.start();
  const demos = ['1.0.0', '2.0.0'].map((v) => exampleGreeter(v, api));
  process.stdout.write(`
Tandem is running.
  Consul UI:    ${consulAddress}/ui/dc1/services
  control API:  ${api}
  proxy:        ${proxy}
Try:
  curl ${proxy}/greeter@^1/hello
  curl ${proxy}/greeter@2/hello
  curl -H 'X-StickyId: user-42' ${proxy}/greeter/hello
  curl ${api}/v1/instances/greeter
  curl ${api}/v1/services
  TANDEM_API=${api} node --import tsx examples/caller.ts
Ctrl-C stops the sidecar, the demo services${agent ? ' and the Consul dev agent' : ''}.
`);
  return waitForSignal(async () => {
    // The greeters get the same Ctrl-C and deregister themselves; on SIGTERM we pass it on.
    for (const d of demos) if (d.exitCode === null) d.kill('SIGTERM');
    await Promise.all(demos.map((d) => (d.exitCode === null ? new Promise((r) => d.once('exit', r)) : undefined)));
    await sidecar.close();
    await agent?.stop();
  });
}
