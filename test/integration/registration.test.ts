// Registration against a real Consul dev agent: config and API services, checks, restarts, outages, bad input.
import assert from 'node:assert/strict';
import { after, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Sidecar } from '../../src/sidecar.ts';
import { agentServiceIds, eventually, healthOf, useConsul } from '../support/consul.ts';
import { api, removeDir, startService, startSidecar, tempDir } from '../support/sidecar.ts';

const consul = useConsul();
const cleanups: (() => Promise<unknown>)[] = [];
after(async () => {
  for (const c of cleanups.reverse()) await c().catch(() => undefined);
});

/** A sidecar on the file's Consul for one test, closed (and its state dir removed) after the file's tests. */
async function testSidecar(opts: Parameters<typeof startSidecar>[1] = {}): Promise<{ sidecar: Sidecar; api: string }> {
  const { sidecar, api: base, stateDir } = await startSidecar(consul.address, opts);
  cleanups.push(() => sidecar.close(), () => removeDir(stateDir));
  return { sidecar, api: base };
}

describe('registration', () => {
  test('a config service and an API service appear passing with version meta and tags', async () => {
    const a = await startService('users', '1.2.3');
    const b = await startService('orders', '2.0.1');
    cleanups.push(a.close, b.close);
    const configServices = JSON.stringify([{ name: 'users', version: '1.2.3', port: a.port, tags: ['blue'], check: { kind: 'http', path: '/health' } }]);
    const { sidecar, api: base } = await testSidecar({ args: ['--set', `services=${configServices}`] });

    const posted = await api('POST', `${base}/v1/services`, { name: 'orders', version: '2.0.1', port: b.port, meta: { team: 'shop' } });
    assert.equal(posted.status, 201);
    assert.equal((posted.body as { id: string }).id, `orders-test-node-${b.port}`);

    const users = await eventually(async () => (await healthOf(consul, 'users'))[0], 'users passing');
    assert.equal(users.Service.ID, `users-test-node-${a.port}`);
    assert.equal(users.Service.Meta['version'], '1.2.3');
    assert.equal(users.Service.Meta['tandem_node'], 'test-node');
    assert.deepEqual(users.Service.Tags, ['v1', 'v1-2-3', 'blue']);
    const check = users.Checks.find((c) => c.ServiceID === users.Service.ID);
    assert.ok(check);
    assert.equal(check.Status, 'passing');
    assert.match(check.Name, /users 1\.2\.3: HTTP GET \/health/);

    const orders = await eventually(async () => (await healthOf(consul, 'orders'))[0], 'orders passing');
    assert.equal(orders.Service.Meta['version'], '2.0.1');
    assert.equal(orders.Service.Meta['team'], 'shop');
    assert.deepEqual(orders.Service.Tags, ['v2', 'v2-0-1']);
    assert.match(orders.Checks.find((c) => c.ServiceID === orders.Service.ID)?.Name ?? '', /TCP connect to port/);

    // The sidecar itself is a `tandem` instance with an HTTP check on its health route.
    const self = await eventually(async () => (await healthOf(consul, 'tandem'))[0], 'tandem passing');
    assert.match(self.Service.ID, /^tandem-test-node-\d+$/);

    const listed = await api('GET', `${base}/v1/services`);
    const rows = listed.body as { id: string; source: string; health: string }[];
    assert.deepEqual(rows.map((r) => r.source).sort(), ['api', 'config', 'sidecar']);
    assert.ok(rows.every((r) => r.health === 'passing'), JSON.stringify(rows));

    // Graceful removal: maintenance (leaves ?passing), then gone.
    const del = await api('DELETE', `${base}/v1/services/orders-test-node-${b.port}`);
    assert.equal(del.status, 200);
    assert.deepEqual(await healthOf(consul, 'orders', false), []);
    await sidecar.close();
    assert.deepEqual(await agentServiceIds(consul), []);
  });

  test('a TTL check goes critical without heartbeats and passes with them', async () => {
    const svc = await startService('jobs', '0.3.0');
    cleanups.push(svc.close);
    const { sidecar, api: base } = await testSidecar();
    const res = await api('POST', `${base}/v1/services`, { name: 'jobs', version: '0.3.0', port: svc.port, check: { kind: 'ttl', ttlMs: 1000 } });
    assert.equal(res.status, 201);
    const id = (res.body as { id: string }).id;
    const status = async () => (await healthOf(consul, 'jobs', false))[0]?.Checks.find((c) => c.ServiceID === id)?.Status;
    assert.equal(await status(), 'critical'); // TTL checks start critical
    const hb = await api('PUT', `${base}/v1/services/${id}/heartbeat`, { note: 'working' });
    assert.equal(hb.status, 200);
    assert.equal(await status(), 'passing');
    await eventually(async () => (await status()) === 'critical', 'TTL expiry', 5000);
    // Heartbeats keep it passing past several TTLs.
    for (let i = 0; i < 6; i++) {
      assert.equal((await api('PUT', `${base}/v1/services/${id}/heartbeat`)).status, 200);
      await sleep(400); // on purpose: the app's heartbeat period, under the 1 s TTL (2.4 s in all)
      assert.equal(await status(), 'passing');
    }
    const notTtl = await api('POST', `${base}/v1/services`, { name: 'web', version: '1.0.0', port: svc.port });
    const wrong = await api('PUT', `${base}/v1/services/${(notTtl.body as { id: string }).id}/heartbeat`);
    assert.equal(wrong.status, 409);
    assert.equal((wrong.body as { code: string }).code, 'TANDEM_ERR_NOT_TTL_CHECK');
    await sidecar.close();
  });

  test('bad input gets 400/404 with a stable code and leaves the catalog unchanged', async () => {
    const svc = await startService('keep', '1.0.0');
    cleanups.push(svc.close);
    const { sidecar, api: base } = await testSidecar();
    assert.equal((await api('POST', `${base}/v1/services`, { name: 'keep', version: '1.0.0', port: svc.port })).status, 201);
    const before = await agentServiceIds(consul);

    const cases: [string, unknown, string | undefined, string, RegExp][] = [
      ['bad name', { name: 'Bad_Name', version: '1.0.0', port: 80 }, undefined, 'TANDEM_ERR_INVALID_SERVICE', /body\/name: must be a DNS label/],
      ['bad version', { name: 'ok', version: 'v1.0', port: 80 }, undefined, 'TANDEM_ERR_INVALID_SERVICE', /body\/version: must be a strict semver/],
      ['bad port', { name: 'ok', version: '1.0.0', port: 70000 }, undefined, 'TANDEM_ERR_INVALID_SERVICE', /body\/port: must be <= 65535/],
      ['unknown check kind', { name: 'ok', version: '1.0.0', port: 80, check: { kind: 'grpc' } }, undefined, 'TANDEM_ERR_INVALID_SERVICE', /body\/check\/kind: must be one of/],
      ['unknown key', { name: 'ok', version: '1.0.0', port: 80, colour: 'red' }, undefined, 'TANDEM_ERR_INVALID_SERVICE', /body\/colour: unknown key/],
      ['malformed JSON', undefined, '{"name": "ok",', 'TANDEM_ERR_MALFORMED_JSON', /not valid JSON/],
      // The sidecar's marks: only sidecars carry them, so the proxy can trust them.
      ['the sidecar name', { name: 'tandem', version: '1.0.0', port: 80 }, undefined, 'TANDEM_ERR_RESERVED_SERVICE', /'tandem' is reserved/],
      ['the sidecar tag', { name: 'ok', version: '1.0.0', port: 80, tags: ['tandem-sidecar'] }, undefined, 'TANDEM_ERR_RESERVED_SERVICE', /'tandem-sidecar' is reserved/],
    ];
    for (const [what, body, raw, code, message] of cases) {
      const res = await api('POST', `${base}/v1/services`, body, raw);
      assert.equal(res.status, 400, what);
      const b = res.body as { statusCode: number; code: string; error: string; message: string };
      assert.equal(b.code, code, what);
      assert.equal(b.statusCode, 400);
      assert.equal(b.error, 'Bad Request');
      assert.match(b.message, message, what);
      assert.equal(res.headers.get('x-tandem-error'), code);
      assert.ok(!JSON.stringify(b).includes('    at '), 'no stack trace in responses');
    }
    // An app cannot take over the sidecar's own registration by reusing its id.
    const self = ((await api('GET', `${base}/v1/services`)).body as { id: string; source: string }[]).find((r) => r.source === 'sidecar');
    const takeover = await api('POST', `${base}/v1/services`, { name: 'ok', version: '1.0.0', port: 80, id: self?.id });
    assert.equal(takeover.status, 409);
    assert.equal((takeover.body as { code: string }).code, 'TANDEM_ERR_PROTECTED_SERVICE');
    const missing = await api('DELETE', `${base}/v1/services/nope-1`);
    assert.equal(missing.status, 404);
    assert.equal((missing.body as { code: string }).code, 'TANDEM_ERR_SERVICE_NOT_FOUND');
    assert.equal((await api('PUT', `${base}/v1/services/nope-1/heartbeat`)).status, 404);
    assert.deepEqual(await agentServiceIds(consul), before);
    await sidecar.close();
  });

  test('a Consul dev-agent restart ends with every registration back', async () => {
    const svc = await startService('cart', '3.1.0');
    cleanups.push(svc.close);
    const stateDir = await tempDir();
    const configServices = JSON.stringify([{ name: 'cart', version: '3.1.0', port: svc.port }]);
    const { sidecar, api: base } = await startSidecar(consul.address, { stateDir, args: ['--set', `services=${configServices}`] });
    cleanups.push(() => sidecar.close(), () => removeDir(stateDir));
    assert.equal((await api('POST', `${base}/v1/services`, { name: 'cart-api', version: '3.1.0', port: svc.port })).status, 201);
    const expected = await agentServiceIds(consul);
    assert.equal(expected.length, 3); // tandem, cart, cart-api
    await consul.restart(); // a dev agent keeps nothing: the sidecar must notice and register again
    await eventually(async () => JSON.stringify(await agentServiceIds(consul)) === JSON.stringify(expected), 'registrations back after agent restart', 10_000);
    await sidecar.close();
  });

  test('a registration posted while Consul is down is accepted (202) and appears once Consul is up', async () => {
    const svc = await startService('late', '1.0.0');
    cleanups.push(svc.close);
    const { sidecar, api: base } = await testSidecar();
    await consul.stop();
    try {
      const res = await api('POST', `${base}/v1/services`, { name: 'late', version: '1.0.0', port: svc.port });
      assert.equal(res.status, 202);
      assert.equal((res.body as { state: string; pending: boolean }).state, 'pending');
      const listed = (await api('GET', `${base}/v1/services`)).body as { id: string; state: string; health: string }[];
      assert.equal(listed.find((r) => r.id === `late-test-node-${svc.port}`)?.health, 'unknown');
    } finally {
      await consul.start();
    }
    await eventually(async () => (await healthOf(consul, 'late')).length === 1, 'pending registration to appear', 10_000);
    await sidecar.close();
  });

  test('a restarted sidecar registers what it had again (state directory)', async () => {
    const svc = await startService('again', '1.0.0');
    cleanups.push(svc.close);
    const stateDir = await tempDir();
    cleanups.push(() => removeDir(stateDir));
    const first = await startSidecar(consul.address, { stateDir });
    assert.equal((await api('POST', `${first.api}/v1/services`, { name: 'again', version: '1.0.0', port: svc.port })).status, 201);
    await first.sidecar.close();
    assert.deepEqual(await healthOf(consul, 'again', false), [], 'graceful stop deregisters');
    const second = await startSidecar(consul.address, { stateDir });
    cleanups.push(() => second.sidecar.close());
    const rows = await healthOf(consul, 'again', false);
    assert.equal(rows.length, 1);
    assert.equal(rows[0]?.Service.Meta['version'], '1.0.0');
    await second.sidecar.close();
  });

  test('with an API token, every route but health needs it', async () => {
    const token = 'tok-0123456789abcdef';
    const { sidecar, api: base } = await testSidecar({ args: ['--set', `api.token=${token}`] });
    assert.equal((await fetch(`${base}/v1/health`)).status, 200);
    const denied = await fetch(`${base}/v1/services`);
    assert.equal(denied.status, 401);
    assert.equal(((await denied.json()) as { code: string }).code, 'TANDEM_ERR_UNAUTHORIZED');
    assert.equal((await fetch(`${base}/v1/services`, { headers: { authorization: 'Bearer wrong-token-000000' } })).status, 401);
    assert.equal((await fetch(`${base}/v1/services`, { headers: { authorization: `Bearer ${token}` } })).status, 200);
    const post = await fetch(`${base}/v1/services`, { method: 'POST', body: '{}', headers: { 'content-type': 'application/json' } });
    assert.equal(post.status, 401, 'refused before the body is even validated');
    await sidecar.close();
  });
});
