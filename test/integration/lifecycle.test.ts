// First run and lifecycle against a real Consul: routable within a second, never assumed; no zombies; clean exits; honest health.
// Needs the built code (`npm run build`): the apps here are child processes on dist/sdk, the CLI runs bin/tandem.js.
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { createServer as createHttpServer } from 'node:http';
import { createServer as createTcpServer, type Socket } from 'node:net';
import { fileURLToPath } from 'node:url';
import { after, describe, test } from 'node:test';
import { freePorts } from '../../src/common/free-port.ts';
import { agentServiceIds, consulGet, eventually, healthOf, useConsul } from '../support/consul.ts';
import { api, BIN, FAST, removeDir, spawnSidecar, startService, startSidecar, tempDir } from '../support/sidecar.ts';

const consul = useConsul();
const cleanups: (() => Promise<unknown>)[] = [];
after(async () => {
  for (const c of cleanups.reverse()) await c().catch(() => undefined);
});

const APP = fileURLToPath(new URL('../support/sdk-app.mjs', import.meta.url));
const GRACE_MS = 5000; // registration.livenessGraceMs's default, which these sidecars keep

interface App {
  child: ChildProcess;
  out: () => string;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** The ids it printed as READY <id>, in order. */
  ready: (n?: number) => Promise<string[]>;
}

function runApp(apiUrl: string, mode: string, name: string): App {
  const child = spawn(process.execPath, [APP, apiUrl, mode, name], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout?.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr?.on('data', (d: Buffer) => (out += d.toString()));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
  cleanups.push(async () => child.exitCode === null && child.signalCode === null && child.kill('SIGKILL'));
  const ready = (n = 1) => eventually(() => {
    const ids = [...out.matchAll(/^READY (\S+)$/gm)].map((m) => m[1] as string);
    return ids.length >= n && ids;
  }, `${name} (${mode}) ready; output so far: ${out}`, 20_000);
  return { child, out: () => out, exited, ready };
}

/** Resolves with how long `p` took, or rejects after `ms`. */
async function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([p, new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`${what}: not within ${ms} ms`)), ms)))]);
  } finally {
    clearTimeout(timer);
  }
}

function median(xs: readonly number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)] as number;
}

async function routed(proxy: string, name: string): Promise<{ status: number; error: string | null }> {
  const res = await fetch(`${proxy}/${name}/x`);
  await res.arrayBuffer();
  return { status: res.status, error: res.headers.get('x-tandem-error') };
}

describe('lifecycle', () => {
  test('posted services with the default TCP check are routable within a second; a closed port is registered critical and never routed to', async () => {
    // The default 10 s check interval: Consul would run a new check's first probe anywhere inside it.
    const { sidecar, api: base, stateDir } = await startSidecar(consul.address, { args: ['--set', 'registration.checkIntervalMs=10000'] });
    cleanups.push(() => sidecar.close(), () => removeDir(stateDir));
    const proxy = sidecar.addresses.proxy;
    const samples: number[] = [];
    for (let i = 0; i < 5; i++) {
      const name = `quick${i}`;
      const svc = await startService(name, '1.0.0');
      cleanups.push(svc.close);
      const t0 = performance.now();
      assert.equal((await api('POST', `${base}/v1/services`, { name, version: '1.0.0', port: svc.port })).status, 201);
      await eventually(async () => (await routed(proxy, name)).status === 200, `${name} routable`, 15_000);
      samples.push(Math.round(performance.now() - t0));
    }
    console.log(`registration → routable through the proxy (ms): ${samples.join(', ')}; median ${median(samples)}`);
    for (const ms of samples) assert.ok(ms < 5000, `a sample took ${ms} ms`);
    assert.ok(median(samples) < 1000, `median ${median(samples)} ms`);

    const [closed] = await freePorts(1);
    const res = await api('POST', `${base}/v1/services`, { name: 'closedport', version: '1.0.0', port: closed });
    assert.equal(res.status, 201);
    const id = (res.body as { id: string }).id;
    const row = (await healthOf(consul, 'closedport', false))[0];
    assert.equal(row?.Checks.find((c) => c.ServiceID === id)?.Status, 'critical', 'registered critical, not passing on faith');
    // Never routed to: watch it for well over a second; every answer is 503 no healthy instance.
    const until = Date.now() + 1500;
    while (Date.now() < until) {
      const r = await routed(proxy, 'closedport');
      assert.equal(r.status, 503);
      assert.equal(r.error, 'TANDEM_ERR_NO_HEALTHY_INSTANCE');
    }
  });

  test('HTTP checks start from a probe: 200 passing, 429 warning, 500 critical; a hanging port cannot stall registration', async () => {
    const { sidecar, api: base, stateDir } = await startSidecar(consul.address, { args: ['--set', 'registration.checkIntervalMs=10000'] });
    cleanups.push(() => sidecar.close(), () => removeDir(stateDir));
    // Answers the status its path names: /200, /429, /500.
    const codes = createHttpServer((req, res) => void res.writeHead(Number((req.url ?? '/500').slice(1)) || 500).end('x'));
    await new Promise<void>((r) => codes.listen(0, '127.0.0.1', r));
    // A port that accepts connections and never answers.
    const sockets = new Set<Socket>();
    const hang = createTcpServer((s) => void sockets.add(s));
    await new Promise<void>((r) => hang.listen(0, '127.0.0.1', r));
    cleanups.push(async () => {
      codes.close();
      for (const s of sockets) s.destroy();
      hang.close();
    });
    const codesPort = (codes.address() as { port: number }).port;
    const hangPort = (hang.address() as { port: number }).port;
    const cases: [string, number, string, string][] = [
      ['probed-ok', codesPort, '/200', 'passing'],
      ['probed-busy', codesPort, '/429', 'warning'],
      ['probed-broken', codesPort, '/500', 'critical'],
      ['probed-hang', hangPort, '/health', 'critical'],
    ];
    for (const [name, port, path, want] of cases) {
      const t0 = Date.now();
      const res = await api('POST', `${base}/v1/services`, { name, version: '1.0.0', port, check: { kind: 'http', path, timeoutMs: 500 } });
      const took = Date.now() - t0;
      assert.equal(res.status, 201, name);
      const id = (res.body as { id: string }).id;
      assert.equal((await healthOf(consul, name, false))[0]?.Checks.find((c) => c.ServiceID === id)?.Status, want, name);
      assert.ok(took < 4000, `${name}: registration took ${took} ms`);
    }
  });

  test('an SDK app killed with SIGKILL leaves routing within its liveness grace and the catalog within 30 s', async () => {
    const { sidecar, api: base, stateDir } = await startSidecar(consul.address);
    cleanups.push(() => sidecar.close(), () => removeDir(stateDir));
    const proxy = sidecar.addresses.proxy;
    const app = runApp(base, 'hold', 'doomed');
    const [id] = (await app.ready()) as [string];
    await eventually(async () => (await routed(proxy, 'doomed')).status === 200, 'doomed routable', 10_000);
    const t0 = Date.now();
    app.child.kill('SIGKILL');
    await app.exited;
    let outOfRouting = 0;
    let outOfCatalog = 0;
    await eventually(async () => {
      const now = Date.now() - t0;
      if (!outOfRouting) {
        const r = await routed(proxy, 'doomed');
        if (r.status === 503 && (r.error === 'TANDEM_ERR_NO_HEALTHY_INSTANCE' || r.error === 'TANDEM_ERR_UNKNOWN_SERVICE')) outOfRouting = now;
      }
      if (!outOfCatalog) {
        const rows = await consulGet<{ ServiceID: string }[]>(consul, '/v1/catalog/service/doomed');
        if (!rows.some((r) => r.ServiceID === id)) outOfCatalog = now;
      }
      return outOfRouting > 0 && outOfCatalog > 0;
    }, 'the killed app out of routing and out of the catalog', 30_000);
    console.log(`SIGKILL → out of routing ${outOfRouting} ms, → out of the catalog ${outOfCatalog} ms (liveness grace ${GRACE_MS} ms)`);
    assert.ok(outOfRouting <= GRACE_MS + 5000, `out of routing after ${outOfRouting} ms`);
    assert.ok(outOfCatalog < 30_000);
    assert.ok(!((await api('GET', `${base}/v1/services`)).body as { id: string }[]).some((r) => r.id === id), 'the sidecar forgot it too');
  });

  test('a restarted sidecar keeps the SDK apps that reconnect and removes the one that died meanwhile', async () => {
    const stateDir = await tempDir();
    cleanups.push(() => removeDir(stateDir));
    const [apiPort, proxyPort] = (await freePorts(2)) as [number, number];
    const args = ['--consul', consul.address, '--state-dir', stateDir, '--node-name', 'restart-node', '--advertise', '127.0.0.1', ...FAST];
    const first = await spawnSidecar(args, {}, { api: apiPort, proxy: proxyPort });
    cleanups.push(async () => first.child.kill('SIGKILL'));
    const survivor = runApp(first.api, 'hold', 'survivor');
    const dead = runApp(first.api, 'hold', 'lost');
    const [survivorId] = (await survivor.ready()) as [string];
    const [deadId] = (await dead.ready()) as [string];
    await eventually(async () => (await healthOf(consul, 'survivor')).length === 1 && (await healthOf(consul, 'lost')).length === 1, 'both passing');
    first.child.kill('SIGKILL'); // no deregistration: the state dir and the agent still have both
    await first.exited;
    dead.child.kill('SIGKILL');
    await dead.exited;
    const second = await spawnSidecar(args, {}, { api: apiPort, proxy: proxyPort });
    cleanups.push(async () => second.child.kill('SIGKILL'));
    const t0 = Date.now();
    await eventually(async () => !(await agentServiceIds(consul)).includes(deadId), 'the dead app removed', GRACE_MS + 10_000);
    console.log(`restored registration of a dead app removed ${Date.now() - t0} ms after the sidecar restarted`);
    // The survivor reconnected its liveness stream: still registered, and passing (it heartbeats on reconnect), past the grace.
    await eventually(async () => Date.now() - t0 > GRACE_MS + 1000, 'past the grace', GRACE_MS + 5000);
    assert.ok((await agentServiceIds(consul)).includes(survivorId));
    await eventually(async () => (await healthOf(consul, 'survivor')).length === 1, 'survivor passing after the restart', 10_000);
    second.child.kill('SIGTERM');
    assert.equal(await second.exited, 0);
  });

  test('an app that registers and closes exits by itself; so does one that closes its Tandem client; an app-owned server stays open', async () => {
    const { sidecar, api: base, stateDir } = await startSidecar(consul.address);
    cleanups.push(() => sidecar.close(), () => removeDir(stateDir));
    const one = runApp(base, 'close', 'brief');
    const [id] = await one.ready();
    assert.deepEqual(await within(one.exited, 20_000, 'the app that closed its registration exits'), { code: 0, signal: null }, one.out());
    assert.match(one.out(), /CLOSED/);
    assert.ok(!(await agentServiceIds(consul)).includes(id as string), 'and it is deregistered');
    const all = runApp(base, 'close-all', 'briefer');
    const ids = await all.ready(2);
    assert.deepEqual(await within(all.exited, 20_000, 'the app that closed its client exits'), { code: 0, signal: null }, all.out());
    const left = await agentServiceIds(consul);
    for (const i of ids) assert.ok(!left.includes(i), `${i} deregistered`);
    // A server the app started itself is the app's: close() leaves it listening.
    const own = runApp(base, 'app-server', 'owned');
    await own.ready();
    assert.deepEqual(await within(own.exited, 20_000, 'the app that closed its own server exits'), { code: 0, signal: null }, own.out());
    assert.match(own.out(), /STILL-LISTENING/);
  });

  test('SIGTERM: without its own handler the app deregisters and dies by the signal; with one, its handler decides', async () => {
    const { sidecar, api: base, stateDir } = await startSidecar(consul.address);
    cleanups.push(() => sidecar.close(), () => removeDir(stateDir));
    const plain = runApp(base, 'hold', 'plain');
    const [plainId] = (await plain.ready()) as [string];
    plain.child.kill('SIGTERM');
    assert.deepEqual(await within(plain.exited, 20_000, 'the app ends'), { code: null, signal: 'SIGTERM' }, 'ended by SIGTERM, as without the SDK');
    assert.ok(!(await agentServiceIds(consul)).includes(plainId), 'deregistered before it ended');

    const own = runApp(base, 'own-handler', 'handled');
    const [ownId] = (await own.ready()) as [string];
    own.child.kill('SIGTERM');
    await eventually(async () => own.out().includes('APP-SIGTERM') && !(await agentServiceIds(consul)).includes(ownId), 'the app heard it and the SDK deregistered', 10_000);
    // Still running after the SDK is done: its handler chose to keep serving.
    assert.ok(!((await api('GET', `${base}/v1/services`)).body as { id: string }[]).some((r) => r.id === ownId), 'the sidecar forgot it');
    assert.equal(own.child.exitCode, null);
    assert.equal(own.child.signalCode, null);
  });

  test('tandem start with Consul unreachable: one plain line on stderr, /v1/health 503 degraded', async () => {
    const dir = await tempDir();
    cleanups.push(() => removeDir(dir));
    const [closed] = await freePorts(1);
    const consulAddr = `http://127.0.0.1:${closed}`;
    const side = await spawnSidecar(['--consul', consulAddr, '--state-dir', dir, '--node-name', 'lonely', ...FAST.filter((a) => a !== 'silent' && a !== '--log-level'), '--log-level', 'warn']);
    cleanups.push(async () => side.child.kill('SIGKILL'));
    // Tandem's own plain lines: not its JSON logs, nor Node's process warnings (`(node:123) …` and their hint).
    const plainLines = () => side.stderr().split('\n').filter((l) => l.trim() !== '' && !l.startsWith('{') && !/^\(node:\d+\) |^\(Use `node --trace-/.test(l));
    await eventually(() => plainLines().length > 0, 'the plain line', 10_000);
    const lines = plainLines();
    assert.equal(lines.length, 1, side.stderr());
    assert.match(lines[0] as string, new RegExp(`^tandem: Consul at ${consulAddr.replace(/[.]/g, '\\.')} is unreachable; Tandem keeps retrying and routes from its persisted view`));
    const health = await fetch(`${side.api}/v1/health`);
    assert.equal(health.status, 503);
    const body = (await health.json()) as { status: string; consul: string };
    assert.equal(body.status, 'degraded');
    assert.equal(body.consul, 'down');
    assert.ok(JSON.stringify(body).length < 300, 'tiny: it is the sidecar check output in the Consul UI');
    // The sidecar's own Consul check asks whether it is alive: it is.
    assert.equal((await fetch(`${side.api}/v1/health?from=consul`)).status, 200);
    side.child.kill('SIGTERM');
    assert.equal(await within(side.exited, 20_000, 'exits on SIGTERM'), 0);
    assert.equal(plainLines().length, 1, 'still one plain line');
  });

  test('tandem status shows each registration with its Consul health; /v1/health is 200 ok', async () => {
    const { sidecar, api: base, stateDir } = await startSidecar(consul.address);
    cleanups.push(() => sidecar.close(), () => removeDir(stateDir));
    const svc = await startService('fine', '1.0.0');
    cleanups.push(svc.close);
    const [closed] = await freePorts(1);
    assert.equal((await api('POST', `${base}/v1/services`, { name: 'fine', version: '1.0.0', port: svc.port })).status, 201);
    assert.equal((await api('POST', `${base}/v1/services`, { name: 'down', version: '1.0.0', port: closed })).status, 201);
    const health = await fetch(`${base}/v1/health`);
    assert.equal(health.status, 200);
    assert.equal(((await health.json()) as { status: string }).status, 'ok');
    const json = JSON.parse(await cli(['status', '--json', '--api', base])) as { registrations: { name: string; health: string }[] };
    const by = new Map(json.registrations.map((r) => [r.name, r.health]));
    assert.equal(by.get('fine'), 'passing');
    assert.equal(by.get('down'), 'critical');
    assert.equal(by.get('tandem'), 'passing');
    const text = await cli(['status', '--api', base]);
    assert.match(text, /ID\s+SERVICE\s+VERSION\s+SOURCE\s+STATE\s+HEALTH/);
    assert.match(text, /down-test-node-\d+\s+down\s+1\.0\.0\s+api\s+registered\s+critical/);
    assert.match(text, /fine-test-node-\d+\s+fine\s+1\.0\.0\s+api\s+registered\s+passing/);
  });
});

/** Runs the CLI without blocking this process (the sidecar it asks runs in this process). */
async function cli(args: string[]): Promise<string> {
  const child = spawn(process.execPath, [BIN, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout?.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr?.on('data', (d: Buffer) => (err += d.toString()));
  const code = await new Promise<number | null>((resolve) => child.once('exit', resolve));
  assert.equal(code, 0, err);
  return out;
}
