// The SDK against a real sidecar and a real Consul: register, request, resolve, instances, watch, waitFor, sidecar loss.
import assert from 'node:assert/strict';
import { createServer, type Server } from 'node:http';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { ConsulDevAgent } from '../../src/consul/consul-dev-agent.ts';
import { freePorts } from '../../src/common/free-port.ts';
import { Tandem, TandemError, type WatchEvent } from '../../src/sdk/index.ts';
import { eventually, healthOf } from '../support/consul.ts';
import { ConsulGate } from '../support/consul-gate.ts';
import { FAST, removeDir, spawnSidecar, tempDir, type ChildSidecar } from '../support/sidecar.ts';

const consul = new ConsulDevAgent();
let side: ChildSidecar;
let ports: { api: number; proxy: number };
let stateDir: string;
let tandem: Tandem;
const servers: Server[] = [];
const cleanups: (() => Promise<unknown>)[] = [];

function app(name: string, version: string): Server {
  const s = createServer((req, res) => {
    res.setHeader('content-type', 'application/json');
    res.end(JSON.stringify({ name, version, port: (s.address() as { port: number }).port, url: req.url }));
  });
  servers.push(s);
  return s;
}

async function startSide(): Promise<void> {
  side = await spawnSidecar(['--consul', consul.address, '--state-dir', stateDir, '--node-name', 'sdk-node', '--advertise', '127.0.0.1', ...FAST], {}, ports);
}

before(async () => {
  await consul.start();
  stateDir = await tempDir();
  const [api, proxy] = await freePorts(2);
  ports = { api: api as number, proxy: proxy as number };
  await startSide();
  tandem = new Tandem({ url: `127.0.0.1:${ports.api}` });
});
after(async () => {
  for (const c of cleanups.reverse()) await c().catch(() => undefined);
  for (const s of servers) s.close();
  side?.child.kill('SIGKILL');
  await side?.exited;
  await consul.stop();
  await removeDir(stateDir);
});

describe('SDK', () => {
  test('register() listens on a free port, shows up passing with its version, heartbeats its TTL check; close() removes it', async () => {
    // The SDK talks to the sidecar through a forwarding gate that logs every path: its heartbeats show there.
    const gate = new ConsulGate(`http://127.0.0.1:${ports.api}`);
    cleanups.push(() => gate.close());
    const counted = new Tandem({ url: await gate.start() });
    const beats = () => gate.passed.filter((p) => p.endsWith('/heartbeat')).length;
    const server = app('greeter', '1.2.3');
    const svc = await counted.register('greeter@1.2.3', server, { deregisterOnSignal: false });
    assert.ok(server.listening);
    assert.ok(svc.port > 0);
    const row = await eventually(async () => (await healthOf(consul, 'greeter'))[0], 'greeter passing (TTL kept by the SDK)', 5000);
    assert.equal(row.Service.Port, svc.port);
    assert.equal(row.Service.Meta['version'], '1.2.3');
    assert.deepEqual(row.Service.Tags, ['v1', 'v1-2-3']);
    // The SDK beats at once, then every third of its 10 s TTL (3.3 s): two periodic beats, with slack.
    await eventually(() => beats() >= 3 || undefined, 'three heartbeats', 12_000);
    assert.equal((await healthOf(consul, 'greeter')).length, 1, 'still passing');
    await svc.close();
    assert.deepEqual(await healthOf(consul, 'greeter', false), []);
  });

  test('request() round-robins over a range; stickyId sticks; resolve() and instances() agree with Consul', async () => {
    const handles: Awaited<ReturnType<Tandem['register']>>[] = [];
    for (const v of ['1.0.0', '1.1.0', '2.0.0']) handles.push(await tandem.register(`echo@${v}`, app('echo', v), { deregisterOnSignal: false }));
    cleanups.push(async () => Promise.all(handles.map((h) => h.close())));
    await tandem.waitFor(['echo@^1', 'echo@2'], { timeoutMs: 10_000 });
    await eventually(async () => (await tandem.instances('echo')).filter((i) => i.healthy).length === 3, '3 healthy echo');

    const counts = new Map<string, number>();
    for (let i = 0; i < 40; i++) {
      const res = await tandem.request('echo@^1', `/hello?i=${i}`);
      assert.equal(res.status, 200);
      const body = (await res.json()) as { version: string; url: string };
      assert.match(body.version, /^1\./);
      assert.equal(body.url, `/hello?i=${i}`);
      counts.set(body.version, (counts.get(body.version) ?? 0) + 1);
    }
    assert.deepEqual([...counts.values()], [20, 20]);

    const first = (await (await tandem.request('echo', '/s', { stickyId: 'user-7' })).json()) as { port: number };
    for (let i = 0; i < 20; i++) assert.equal(((await (await tandem.request('echo', '/s', { stickyId: 'user-7' })).json()) as { port: number }).port, first.port);

    const viaFetch = await tandem.fetch('http://echo.service.consul/f?x=1', { headers: { 'x-tandem-version': '2' } });
    assert.equal(((await viaFetch.json()) as { version: string }).version, '2.0.0');

    const resolved = await tandem.resolve('echo@2');
    assert.equal(resolved.version, '2.0.0');
    const consulRows = await healthOf(consul, 'echo');
    assert.ok(consulRows.some((r) => r.Service.ID === resolved.id && r.Service.Port === resolved.port));
    const sticky = await tandem.resolve('echo', { stickyId: 'user-7' });
    assert.equal(sticky.port, first.port);
    const list = await tandem.instances('echo@^1');
    assert.deepEqual(
      list.map((i) => i.id).sort(),
      consulRows.filter((r) => r.Service.Meta['version']?.startsWith('1.')).map((r) => r.Service.ID).sort(),
    );

    const none = await tandem.request('echo@^9', '/x');
    assert.equal(none.status, 503);
    assert.equal(none.headers.get('x-tandem-error'), 'TANDEM_ERR_NO_HEALTHY_INSTANCE');
    await assert.rejects(tandem.resolve('echo@^9'), (err: unknown) => err instanceof TandemError && err.code === 'TANDEM_ERR_NO_HEALTHY_INSTANCE' && err.statusCode === 503);
  });

  test('watch() sees an instance added and removed within a second', async () => {
    const events: (WatchEvent & { at: number })[] = [];
    const stop = tandem.watch('watched@^1', (e) => events.push({ ...e, at: Date.now() }));
    cleanups.push(async () => stop());
    // In place on the sidecar: what becomes routable from now on is reported.
    await stop.ready;
    const svc = await tandem.register({ name: 'watched', version: '1.0.0', check: { kind: 'ttl', ttlMs: 30_000 } }, app('watched', '1.0.0'), { deregisterOnSignal: false });
    await fetch(`http://127.0.0.1:${ports.api}/v1/services/${svc.id}/heartbeat`, { method: 'PUT' });
    const passingAt = Date.now();
    const added = await eventually(() => events.find((e) => e.type === 'added' && e.instance.id === svc.id), 'added event', 3000);
    assert.ok(added.at - passingAt <= 1000, `added after ${added.at - passingAt} ms`);
    const closedAt = Date.now();
    await svc.close();
    const removed = await eventually(() => events.find((e) => e.type === 'removed' && e.instance.id === svc.id), 'removed event', 3000);
    assert.ok(removed.at - closedAt <= 1000, `removed after ${removed.at - closedAt} ms`);
    stop();
  });

  test('ready signals: lifecycleReady() needs a drain listener and follows the stream register() reopens; a stream stopped first rejects its ready', async () => {
    const client = new Tandem({ url: `127.0.0.1:${ports.api}` });
    cleanups.push(() => client.close());
    await assert.rejects(client.lifecycleReady(), { code: 'TANDEM_ERR_NO_LIFECYCLE_STREAM' });
    client.on('drain', () => undefined);
    const early = client.lifecycleReady(); // for the stream that the register() below replaces
    const svc = await client.register('readied@1.0.0', app('readied', '1.0.0'), { deregisterOnSignal: false });
    await early;
    await client.lifecycleReady();
    const stop = client.watch('readied', () => undefined);
    stop();
    await assert.rejects(stop.ready, { name: 'AbortError' });
    await svc.close();
  });

  test('waitFor() resolves when a service appears and rejects after its timeout naming what is missing', async () => {
    const waiting = tandem.waitFor(['late@^1'], { timeoutMs: 10_000 });
    let settled = false;
    void waiting.then(() => (settled = true), () => (settled = true));
    await sleep(300); // on purpose: a waitFor() that settles while nothing is registered would show here
    assert.equal(settled, false, 'waitFor() settled before the service existed');
    const svc = await tandem.register('late@1.0.0', app('late', '1.0.0'), { deregisterOnSignal: false });
    cleanups.push(() => svc.close());
    await waiting;
    await assert.rejects(tandem.waitFor(['late@^1', 'never-there', 'late@^5'], { timeoutMs: 500 }), (err: unknown) => {
      assert.ok(err instanceof TandemError);
      assert.equal(err.code, 'TANDEM_ERR_WAIT_TIMEOUT');
      assert.match(err.message, /never-there, late@\^5$/);
      return true;
    });
  });

  test('a killed sidecar gives a clear error; watch() resumes after it restarts', async () => {
    const svc = await tandem.register('phoenix@1.0.0', app('phoenix', '1.0.0'), { deregisterOnSignal: false });
    await tandem.waitFor('phoenix', { timeoutMs: 10_000 });
    const events: WatchEvent[] = [];
    const stop = tandem.watch('phoenix', (e) => events.push(e));
    cleanups.push(async () => stop());
    await eventually(() => events.some((e) => e.type === 'added'), 'initial added');

    side.child.kill('SIGKILL');
    await side.exited;
    await assert.rejects(tandem.instances('phoenix'), (err: unknown) => {
      assert.ok(err instanceof TandemError);
      assert.equal(err.code, 'TANDEM_ERR_SIDECAR_UNREACHABLE');
      assert.match(err.message, new RegExp(`is the tandem sidecar running at http://127\\.0\\.0\\.1:${ports.api}\\?`));
      return true;
    });
    await assert.rejects(tandem.request('phoenix', '/x'), { code: 'TANDEM_ERR_SIDECAR_UNREACHABLE' });

    await startSide(); // same ports, same state dir: registrations come back
    const other = await tandem.register('phoenix@1.0.1', app('phoenix', '1.0.1'), { deregisterOnSignal: false });
    await fetch(`http://127.0.0.1:${ports.api}/v1/services/${other.id}/heartbeat`, { method: 'PUT' });
    await eventually(() => events.some((e) => e.type === 'added' && e.instance.id === other.id), 'watch resumed and saw the new instance', 10_000);
    stop();
    await other.close();
    await svc.close();
  });
});
