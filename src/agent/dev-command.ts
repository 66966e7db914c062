// `tandem dev`: a Consul dev agent, a sidecar and demo services on this machine, stopped together on Ctrl-C.
import { createServer, type Server } from 'node:http';
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { waitForSignal } from './cli.ts';
import { loadConfig } from './config.ts';
import { ConsulDevAgent } from './consul-dev-agent.ts';
import { Sidecar } from './sidecar.ts';

async function isConsulUp(address: string): Promise<boolean> {
  try {
    const res = await fetch(`${address}/v1/status/leader`, { signal: AbortSignal.timeout(1000) });
    return res.ok && Boolean(await res.json());
  } catch {
    return false;
  }
}

/** A demo greeter: answers with its version so routing is visible with curl. */
function greeter(version: string): Promise<{ server: Server; port: number }> {
  const server = createServer((req, res) => {
    if (req.url === '/health') return void res.end('ok');
    res.setHeader('content-type', 'application/json');
    res.end(`${JSON.stringify({ service: 'greeter', version, path: req.url, message: `hello from greeter ${version}` })}\n`);
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve({ server, port: (server.address() as { port: number }).port })));
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
  const demos = await Promise.all([greeter('1.0.0'), greeter('2.0.0')]);
  const stateDir = await mkdtemp(join(tmpdir(), 'tandem-dev-'));
  const config = loadConfig({
    argv: [
      '--consul', consulAddress, '--state-dir', stateDir, '--advertise', '127.0.0.1',
      '--set', 'registration.checkIntervalMs=2000', '--set', 'registration.drainMs=500',
      '--set', `services=${JSON.stringify(demos.map((d, i) => ({ name: 'greeter', version: i === 0 ? '1.0.0' : '2.0.0', port: d.port, check: { kind: 'http', path: '/health' } })))}`,
      ...args,
    ],
  });
  const sidecar = new Sidecar({ config });
  const { api, proxy } = await sidecar.start();
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
Ctrl-C stops the sidecar, the demo services${agent ? ' and the Consul dev agent' : ''}.
`);
  return waitForSignal(async () => {
    await sidecar.close();
    for (const d of demos) d.server.close();
    await agent?.stop();
  });
}
