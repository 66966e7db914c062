// Remote drain edge cases on a real Consul: draining again after a finished drain, and an undrain that cancels a pending deadline.
import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import { after, test } from 'node:test';
import type { Sidecar } from '../../src/sidecar.ts';
import { Tandem } from '../../src/sdk/index.ts';
import { agentServiceIds, eventually, useConsul } from '../support/consul.ts';
import { api, removeDir, startService, startSidecar } from '../support/sidecar.ts';

const consul = useConsul();
let side: { sidecar: Sidecar; api: string; stateDir: string } | undefined;
const closers: (() => Promise<void>)[] = [];

/** The sidecar, started by the first test (the agent's own `before` hook has run by then). */
async function sidecar(): Promise<{ sidecar: Sidecar; api: string; stateDir: string }> {
  side ??= await startSidecar(consul.address, { nodeName: 'drain-node' });
  return side;
}
after(async () => {
  for (const c of closers.reverse()) await c();
  await side?.sidecar.close();
  if (side) await removeDir(side.stateDir);
});

async function register(name: string): Promise<string> {
  const side = await sidecar();
  const up = await startService(name, '1.0.0');
  closers.push(up.close);
  const r = await api('POST', `${side.api}/v1/services`, { name, version: '1.0.0', port: up.port, check: { kind: 'tcp' } });
  assert.equal(r.status, 201, JSON.stringify(r.body));
  return (r.body as { id: string }).id;
}

test('a drain after a finished drain drains again (services registered since then go too)', { timeout: 60_000 }, async () => {
  const side = await sidecar();
  const first = await register('drain-first');
  assert.equal((await api('PUT', `${side.api}/v1/drain/drain-node`, { reason: 'first', deadlineMs: 1000 })).status, 200);
  await eventually(async () => !(await agentServiceIds(consul)).includes(first), 'the first service deregistered', 20_000);
  await eventually(async () => ((await api('GET', `${side.api}/v1/drain/drain-node`)).body as { state?: string }).state === 'drained', 'the drain marked done');

  const second = await register('drain-second');
  assert.ok((await agentServiceIds(consul)).includes(second));
  assert.equal((await api('PUT', `${side.api}/v1/drain/drain-node`, { reason: 'second', deadlineMs: 1000 })).status, 200);
  await eventually(async () => !(await agentServiceIds(consul)).includes(second), 'the second service deregistered by the second drain', 20_000);
  // Forget the finished drain: the host serves again and new registrations stay.
  assert.equal((await api('DELETE', `${side.api}/v1/drain/drain-node`)).status, 200);
  const third = await register('drain-third');
  await eventually(async () => ((await api('GET', `${side.api}/v1/drain/drain-node`)).body as { state?: string }).state === 'serving', 'serving again');
  assert.ok((await agentServiceIds(consul)).includes(third));
  assert.equal((await api('DELETE', `${side.api}/v1/services/${third}`)).status, 200);
});

test("an undrain cancels the pending deadline: a new drain right after is not cut short by the old one's", { timeout: 60_000 }, async () => {
  const side = await sidecar();
  // An app listening on the lifecycle stream that never says ready-to-stop: the drain waits for the deadline.
  const app = new Tandem({ url: side.api });
  const server = createServer((_req, res) => res.end('ok'));
  const svc = await app.register('drain-slow@1.0.0', server, { deregisterOnSignal: false });
  closers.push(async () => {
    await svc.close().catch(() => undefined);
    await app.close();
    server.close();
  });
  let drains = 0;
  app.on('drain', () => drains++);
  await eventually(async () => (await agentServiceIds(consul)).includes(svc.id), 'registered');
  // The lifecycle stream (opened by on('drain')) in place: the first drain reaches the app.
  await app.lifecycleReady();
  const t0 = Date.now();
  assert.equal((await api('PUT', `${side.api}/v1/drain/drain-node`, { reason: 'old', deadlineMs: 3000 })).status, 200);
  await eventually(() => drains === 1, 'the drain event');
  assert.equal((await api('DELETE', `${side.api}/v1/drain/drain-node`)).status, 200);
  await eventually(async () => ((await api('GET', `${side.api}/v1/drain/drain-node`)).body as { state?: string }).state === 'serving', 'undrained');
  assert.equal((await api('PUT', `${side.api}/v1/drain/drain-node`, { reason: 'new', deadlineMs: 30_000 })).status, 200);
  await eventually(() => drains === 2, 'the second drain event');
  // Past the old deadline (plus slack): the service must still be registered (in maintenance).
  await eventually(() => Date.now() > t0 + 3000 + 2500, 'the old deadline to pass', 10_000);
  assert.ok((await agentServiceIds(consul)).includes(svc.id), 'the old deadline deregistered the service');
  assert.equal((await api('DELETE', `${side.api}/v1/drain/drain-node`)).status, 200);
});

test('names of the documented maximum length (128) are served; 129 is a clear 400', { timeout: 30_000 }, async () => {
  const side = await sidecar();
  const long = `n${'a'.repeat(127)}`;
  const put = await api('PUT', `${side.api}/v1/drain/${long}`, { reason: 'length check', deadlineMs: 1000 });
  assert.equal(put.status, 200, JSON.stringify(put.body));
  assert.equal(((await api('GET', `${side.api}/v1/drain/${long}`)).body as { node?: string }).node, long);
  assert.equal((await api('DELETE', `${side.api}/v1/drain/${long}`)).status, 200);
  const tooLong = await api('PUT', `${side.api}/v1/drain/${long}b`, { reason: 'x' });
  assert.equal(tooLong.status, 400);
  assert.match((tooLong.body as { message: string }).message, /node/);
  const topic = await api('GET', `${side.api}/v1/leaders/${long}`);
  assert.equal(topic.status, 200, JSON.stringify(topic.body));
});
