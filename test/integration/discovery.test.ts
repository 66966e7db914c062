// Discovery on a real Consul: unknown names cost no watch, waiters wake when a name appears, and services beyond the connection budget go through the shared change detector.
import assert from 'node:assert/strict';
import { request as httpRequest } from 'node:http';
import { after, describe, test } from 'node:test';
import type { Sidecar } from '../../src/sidecar.ts';
import { eventually, useConsul } from '../support/consul.ts';
import { api, removeDir, startSidecar } from '../support/sidecar.ts';
import { startUpstream, type Upstream } from '../support/upstream.ts';

const consul = useConsul();
const cleanups: (() => Promise<unknown>)[] = [];
after(async () => {
  for (const c of cleanups.reverse()) await c().catch(() => undefined);
});

async function sidecarWith(args: string[] = []): Promise<{ sidecar: Sidecar; base: string; proxy: string }> {
  const { sidecar, api: base, stateDir } = await startSidecar(consul.address, { args });
  cleanups.push(() => removeDir(stateDir));
  cleanups.push(() => sidecar.close());
  return { sidecar, base, proxy: sidecar.addresses.proxy };
}

async function upstream(name: string): Promise<Upstream> {
  const up = await startUpstream(name, '1.0.0');
  cleanups.push(() => up.close());
  return up;
}

async function register(base: string, name: string, port: number): Promise<string> {
  const res = await api('POST', `${base}/v1/services`, { name, version: '1.0.0', port, check: { kind: 'http', path: '/health' } });
  assert.equal(res.status, 201, JSON.stringify(res.body));
  return (res.body as { id: string }).id;
}

async function healthyIds(base: string, service: string): Promise<string[]> {
  const res = await api('GET', `${base}/v1/instances/${service}`);
  if (res.status !== 200) return [];
  return (res.body as { instances: { id: string; healthy: boolean }[] }).instances.filter((i) => i.healthy).map((i) => i.id).sort();
}

/** A request in absolute form (`GET http://<name>.service.consul/ HTTP/1.1`), as an app with HTTP_PROXY sends it. */
function absolute(proxy: string, name: string): Promise<{ status: number; code: string | undefined }> {
  const { hostname, port } = new URL(proxy);
  return new Promise((resolve, reject) => {
    const req = httpRequest({ host: hostname, port: Number(port), path: `http://${name}.service.consul/x`, headers: { host: `${name}.service.consul` }, agent: false }, (res) => {
      res.resume();
      res.on('end', () => resolve({ status: res.statusCode ?? 0, code: res.headers['x-tandem-error'] as string | undefined }));
    });
    req.on('error', reject);
    req.end();
  });
}

describe('discovery: unknown names', () => {
  test('200 made-up names in three forms at once: 503 UNKNOWN_SERVICE quickly, no watch per name, real services still route', async () => {
    const { sidecar, base, proxy } = await sidecarWith();
    const up = await upstream('real');
    const id = await register(base, 'real', up.port);
    await eventually(async () => (await healthyIds(base, 'real')).includes(id), 'real healthy');
    const before = sidecar.discoveryStats();

    const names = Array.from({ length: 200 }, (_, i) => `made-up-${i}`);
    const timed = async (fn: () => Promise<{ status: number; code: string | undefined }>) => {
      const started = performance.now();
      const r = await fn();
      return { ...r, ms: performance.now() - started };
    };
    const results = await Promise.all(
      names.flatMap((n) => [
        timed(async () => {
          const res = await fetch(`${proxy}/${n}/x`);
          await res.arrayBuffer();
          return { status: res.status, code: res.headers.get('x-tandem-error') ?? undefined };
        }),
        timed(() => absolute(proxy, n)),
        timed(async () => {
          const res = await api('GET', `${base}/v1/instances/${n}`);
          return { status: res.status, code: (res.body as { code?: string }).code };
        }),
      ]),
    );
    const wrong = results.filter((r) => r.status !== 503 || r.code !== 'TANDEM_ERR_UNKNOWN_SERVICE');
    assert.deepEqual(wrong, [], `${wrong.length} of ${results.length} answered otherwise`);
    // 600 requests at once on loopback (~0.7 s for the slowest on a busy 2-core machine); none waits for Consul.
    const slowest = Math.max(...results.map((r) => r.ms));
    assert.ok(slowest < 3000, `slowest answer after ${slowest.toFixed(0)} ms`);

    const afterFlood = sidecar.discoveryStats();
    assert.ok(afterFlood.budget.inUse <= before.budget.inUse, `Consul watches in use: ${before.budget.inUse} before, ${afterFlood.budget.inUse} after`);
    assert.deepEqual(afterFlood.watches.map((w) => w.service).filter((s) => s.startsWith('made-up')), [], 'no watch for any made-up name');
    const status = (await api('GET', `${base}/v1/status`)).body as { routing: { service: string }[] };
    assert.equal(status.routing.filter((r) => r.service.startsWith('made-up')).length, 0, 'no routing-table entry either');

    const res = await fetch(`${proxy}/real/x`);
    assert.equal(res.status, 200);
    assert.equal(res.headers.get('x-tandem-instance'), id);
  });

  test('a /v1/watch stream opened before its service exists sees it once it is registered', async () => {
    const { sidecar, base } = await sidecarWith();
    const ctrl = new AbortController();
    cleanups.push(async () => ctrl.abort());
    const res = await fetch(`${base}/v1/watch/appears-later`, { signal: ctrl.signal });
    assert.equal(res.status, 200);
    let text = '';
    const reading = (async () => {
      const decoder = new TextDecoder();
      for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) text += decoder.decode(chunk, { stream: true });
    })().catch(() => undefined);
    await eventually(() => text.includes('event: reset'), 'the first (empty) reset');
    assert.match(text, /"instances":\[\]/);
    assert.equal(sidecar.discoveryStats().watches.some((w) => w.service === 'appears-later'), false, 'no Consul watch while it does not exist');

    const up = await upstream('appears-later');
    const id = await register(base, 'appears-later', up.port);
    await eventually(() => text.includes('event: added') && text.includes(id), 'the added event for the new instance', 10_000);
    ctrl.abort();
    await reading;
  });
});

describe('discovery: beyond the connection budget', () => {
  test('with consul.maxConnections=16, services overflow to the shared change detector and still route and see changes', async () => {
    const { sidecar, base, proxy } = await sidecarWith(['--set', 'consul.maxConnections=16']);
    const budget = sidecar.discoveryStats().budget;
    assert.ok(budget.capacity < 16 && budget.reserved < budget.capacity, `room for shared watches: ${JSON.stringify(budget)}`);
    const services = Array.from({ length: 14 }, (_, i) => `over-${i}`);
    const up = await upstream('over');
    const ids = new Map<string, string>();
    for (const s of services) ids.set(s, await register(base, s, up.port));
    for (const s of services) await eventually(async () => (await healthyIds(base, s)).length === 1, `${s} healthy`);
    for (const s of services) {
      const res = await fetch(`${proxy}/${s}/x`);
      await res.arrayBuffer();
      assert.equal(res.status, 200, s);
    }
    const stats = sidecar.discoveryStats();
    const detected = stats.watches.filter((w) => w.via === 'detector').map((w) => w.service);
    assert.ok(detected.length >= 2, `some services go through the detector: ${JSON.stringify(stats.watches.map((w) => [w.service, w.via]))}`);
    assert.ok(stats.budget.inUse <= stats.budget.capacity);
    assert.equal(stats.detector?.running, true);

    // A new instance of a detector-served service shows up, and goes when it is deregistered.
    const target = detected[0] as string;
    const second = await upstream(target);
    const newId = await register(base, target, second.port);
    await eventually(async () => (await healthyIds(base, target)).includes(newId), 'the new instance is routable', 10_000);
    const pinned = await fetch(`${proxy}/${target}/x`, { headers: { 'x-tandem-instance': newId } });
    await pinned.arrayBuffer();
    assert.equal(pinned.status, 200);
    assert.equal(pinned.headers.get('x-tandem-instance'), newId);
    assert.equal((await api('DELETE', `${base}/v1/services/${newId}`)).status < 300, true);
    await eventually(async () => !(await healthyIds(base, target)).includes(newId), 'the removed instance goes', 10_000);
    const gone = await fetch(`${proxy}/${target}/x`, { headers: { 'x-tandem-instance': newId } });
    await gone.arrayBuffer();
    assert.equal(gone.headers.get('x-tandem-error'), 'TANDEM_ERR_INSTANCE_NOT_FOUND');
    assert.equal(sidecar.discoveryStats().watches.find((w) => w.service === target)?.via, 'detector', 'served by the detector throughout');
    assert.ok((sidecar.discoveryStats().detector?.reads ?? 0) > 0);
  });
});
