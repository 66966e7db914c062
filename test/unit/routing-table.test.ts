// The routing table with a fake endpoint source: first-answer wait, sharing, idle expiry, pinned upstreams, limits.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Endpoint, EndpointSource, Subscription, Update } from '../../src/proxy/endpoint-source.ts';
import { RoutingTable } from '../../src/proxy/routing-table.ts';

class FakeSource implements EndpointSource {
  readonly listeners = new Map<string, Set<(u: Update) => void>>();
  subscribe(service: string, onUpdate: (u: Update) => void): Subscription {
    const set = this.listeners.get(service) ?? new Set();
    set.add(onUpdate);
    this.listeners.set(service, set);
    return { close: () => set.delete(onUpdate) };
  }
  emit(service: string, u: Update): void {
    for (const l of this.listeners.get(service) ?? []) l(u);
  }
  active(service: string): number {
    return this.listeners.get(service)?.size ?? 0;
  }
}

const ep = (id: string): Endpoint => ({ id, service: 's', address: '127.0.0.1', port: 1, version: '1.0.0', semver: null, node: 'n', healthy: true });

test('a first request waits for the first answer, then routes', async () => {
  const source = new FakeSource();
  const table = new RoutingTable({ source, firstAnswerTimeoutMs: 1000, idleMs: 60_000, maxServices: 10, upstreams: [] });
  table.start();
  const pending = table.get('s');
  setTimeout(() => source.emit('s', { kind: 'reset', endpoints: [ep('a')] }), 20);
  assert.deepEqual((await pending).all.map((e) => e.id), ['a']);
  assert.equal(source.active('s'), 1);
  await table.get('s');
  assert.equal(source.active('s'), 1, 'one shared watch per service');
  table.close();
});

test('no first answer within the bound gives TANDEM_ERR_CATALOG_UNAVAILABLE', async () => {
  const table = new RoutingTable({ source: new FakeSource(), firstAnswerTimeoutMs: 30, idleMs: 60_000, maxServices: 10, upstreams: [] });
  await assert.rejects(table.get('s'), { code: 'TANDEM_ERR_CATALOG_UNAVAILABLE' });
  table.close();
});

test('idle services stop being watched; configured upstreams never do', async () => {
  const source = new FakeSource();
  const table = new RoutingTable({ source, firstAnswerTimeoutMs: 1000, idleMs: 1000, maxServices: 10, upstreams: ['pinned'] });
  table.start();
  assert.equal(source.active('pinned'), 1, 'upstreams are watched from start');
  const p = table.get('lazy');
  source.emit('lazy', { kind: 'reset', endpoints: [ep('a')] });
  await p;
  assert.equal(source.active('lazy'), 1);
  await sleep(2300);
  assert.equal(source.active('lazy'), 0, 'idle watch closed');
  assert.equal(source.active('pinned'), 1);
  table.close();
});

test('updates replace the set and report removed instances', async () => {
  const source = new FakeSource();
  const removed: string[] = [];
  const table = new RoutingTable({ source, firstAnswerTimeoutMs: 1000, idleMs: 60_000, maxServices: 10, upstreams: [], onRemoved: (ids) => removed.push(...ids) });
  const p = table.get('s');
  source.emit('s', { kind: 'reset', endpoints: [ep('a'), ep('b')] });
  const first = await p;
  source.emit('s', { kind: 'remove', ids: ['a'] });
  const second = table.current('s');
  assert.notEqual(first, second, 'sets are immutable: a change makes a new one');
  assert.deepEqual(first.all.map((e) => e.id), ['a', 'b']);
  assert.deepEqual(second?.all.map((e) => e.id), ['b']);
  assert.deepEqual(removed, ['a']);
  table.close();
});

test('the number of watched services is bounded', async () => {
  const table = new RoutingTable({ source: new FakeSource(), firstAnswerTimeoutMs: 10, idleMs: 60_000, maxServices: 2, upstreams: [] });
  await assert.rejects(table.get('a'));
  await assert.rejects(table.get('b'));
  await assert.rejects(table.get('c'), { code: 'TANDEM_ERR_TOO_MANY_SERVICES' });
  table.close();
});
