// The SDK in an app whose HTTP goes through Tandem's proxy (NODE_USE_ENV_PROXY=1, HTTP_PROXY, no NO_PROXY): its control-API calls and streams still go straight to the sidecar.
// Needs the built code (`npm run build`): the app is a child process on dist/sdk, run on Node >= 24.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { after, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { eventually, healthOf, useConsul } from '../support/consul.ts';
import { NO_NODE24, NODE24 } from '../support/node24.ts';
import { api, removeDir, startSidecar } from '../support/sidecar.ts';

const consul = useConsul();
const cleanups: (() => Promise<unknown>)[] = [];
after(async () => {
  for (const c of cleanups.reverse()) await c().catch(() => undefined);
});

const APP = fileURLToPath(new URL('../support/sdk-app.mjs', import.meta.url));
/** Short, so that a registration whose liveness stream never reached the sidecar would be gone quickly. */
const GRACE_MS = 1000;

interface EnvProxyResult {
  event: unknown;
  instances: string[];
  request: string;
  byName: { status: number; body: string };
  controlViaFetch: { status?: number; code?: string | null; error?: string };
}

/** Every refusal of the proxy's egress policy so far (the control API is one of what it refuses). */
async function egressRefusals(base: string): Promise<number> {
  const text = (await api('GET', `${base}/metrics`)).body as string;
  let sum = 0;
  for (const l of text.split('\n')) if (/^tandem_proxy_egress_total\{.*outcome="refused"/.test(l)) sum += Number(l.split(' ').pop());
  return sum;
}

test('an SDK app with NODE_USE_ENV_PROXY=1 and HTTP_PROXY=<the proxy> (no NO_PROXY) registers, heartbeats, holds its liveness, watches, subscribes and deregisters', { skip: NO_NODE24, timeout: 90_000 }, async () => {
  const { sidecar, api: base, stateDir } = await startSidecar(consul.address, { args: ['--set', `registration.livenessGraceMs=${GRACE_MS}`] });
  cleanups.push(() => removeDir(stateDir), () => sidecar.close());
  const proxy = sidecar.addresses.proxy;
  const refusedBefore = await egressRefusals(base);

  const name = 'env-proxied';
  // Only what an app would have: the proxy variable, Node's switch for it, and no NO_PROXY.
  const child = spawn(NODE24 as string, [APP, base, 'env-proxy', name], { stdio: ['ignore', 'pipe', 'pipe'], env: { PATH: process.env['PATH'] ?? '', HTTP_PROXY: proxy, NODE_USE_ENV_PROXY: '1' } });
  let out = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr.on('data', (d: Buffer) => (out += d.toString()));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
  cleanups.push(async () => child.exitCode === null && child.signalCode === null && child.kill('SIGKILL'));
  const line = (re: RegExp, what: string) => eventually(() => re.exec(out)?.[1], `${what}; output so far: ${out}`, 30_000);

  const id = await line(/^READY (\S+)$/m, 'registered');
  const registeredAt = Date.now();
  const result = JSON.parse(await line(/^RESULT (.*)$/m, 'watch, subscription and drain stream ready')) as EnvProxyResult;
  assert.deepEqual(result.event, { from: name }, 'its own event, through its subscription');
  assert.deepEqual(result.instances, [id]);
  assert.equal(result.request, name, 'tandem.request() through the proxy');
  // The environment really sends the app's HTTP to the proxy: by name it works, the control API is refused.
  assert.deepEqual(result.byName, { status: 200, body: name });
  // (Node 24's fetch tunnels it: the refused CONNECT is a fetch error; as a plain request it is a 403.)
  const refused = result.controlViaFetch;
  assert.ok(refused.error !== undefined || (refused.status === 403 && refused.code === 'TANDEM_ERR_EGRESS_REFUSED'), `the global fetch reached the control API: ${JSON.stringify(refused)}`);

  // Held past the grace, twice over: the liveness stream reached the sidecar (through the proxy it
  // would have been refused, and the registration would have expired a grace after it was made).
  await sleep(Math.max(0, registeredAt + 2 * GRACE_MS + 500 - Date.now())); // on purpose: an expiry would show here
  const regs = (await api('GET', `${base}/v1/services`)).body as { id: string }[];
  assert.ok(regs.some((r) => r.id === id), `${id} expired: its liveness stream never held it`);
  assert.equal((await healthOf(consul, name)).length, 1, 'passing in Consul (the heartbeats arrive)');
  // The one refusal is the app's own global fetch above: none of the SDK's calls met the proxy.
  assert.equal(await egressRefusals(base), refusedBefore + 1);

  // SIGTERM: the SDK deregisters (a DELETE to the control API), then the app dies by the signal.
  child.kill('SIGTERM');
  assert.deepEqual(await exited, { code: null, signal: 'SIGTERM' });
  assert.ok(!((await api('GET', `${base}/v1/services`)).body as { id: string }[]).some((r) => r.id === id), 'deregistered on SIGTERM');
  assert.deepEqual(await healthOf(consul, name, false), []);
});
