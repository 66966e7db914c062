// The routing table with a fake endpoint source: first-answer wait, sharing, idle expiry, pinned upstreams, limits.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Endpoint, EndpointSource, Subscription, Update } from '../../src/proxy/endpoint-source.ts';
import { RoutingTable } from '../../src/proxy/routing-table.ts';
import { eventually } from '../support/consul.ts';

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

test('a service with a request in flight is never idle: its instances are not dropped while a response streams', async () => {
  const source = new FakeSource();
  const removed: string[] = [];
  const table = new RoutingTable({ source, firstAnswerTimeoutMs: 1000, idleMs: 1000, maxServices: 10, upstreams: [], onRemoved: (ids) => removed.push(...ids) });
  table.start();
  const p = table.get('streaming');
  source.emit('streaming', { kind: 'reset', endpoints: [ep('a')] });
  await p;
  const release = table.hold('streaming');
  await sleep(2300); // two sweeps past idleMs
  assert.equal(source.active('streaming'), 1, 'still watched while a request runs');
  assert.deepEqual(removed, [], "its instances' pools stay");
  release();
  release(); // a second call changes nothing
  assert.equal(table.snapshot().length, 1);
  await sleep(2300);
  assert.equal(source.active('streaming'), 0, 'idle once the request ended');
  assert.deepEqual(removed, ['a']);
  assert.doesNotThrow(() => table.hold('not-watched')());
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

test('the number of watched services is bounded: the least recently used idle one makes room, ones in use never do', async () => {
  const source = new FakeSource();
  const table = new RoutingTable({ source, firstAnswerTimeoutMs: 200, idleMs: 60_000, maxServices: 2, upstreams: [] });
  const ready = (name: string) => {
    const p = table.get(name);
    source.emit(name, { kind: 'reset', endpoints: [ep(`${name}-1`)] });
    return p;
  };
  await ready('a');
  await sleep(5);
  await ready('b');
  // Both in use (a watch stream listens): nothing can make room.
  const la = await table.listen('a', () => undefined);
  const lb = await table.listen('b', () => undefined);
  await assert.rejects(table.get('c'), { code: 'TANDEM_ERR_TOO_MANY_SERVICES' });
  assert.equal(source.active('c'), 0, 'nothing watched for the refused name');
  la.stop();
  lb.stop();
  // Now idle: 'a' (used least recently) makes room for 'c'; the bound holds.
  await ready('c');
  assert.equal(source.active('a'), 0, 'the least recently used service was dropped');
  assert.equal(source.active('b'), 1);
  assert.equal(table.snapshot().length, 2);
  table.close();
});

/** A source that knows the catalog's names (like the names watch): unknown names cost nothing. */
class NamedSource extends FakeSource {
  names = new Set<string>();
  answered = true;
  problemText: string | undefined;
  #waiters = new Map<string, Set<() => void>>();
  problem(): string | undefined {
    return this.problemText;
  }
  exists(service: string): boolean | Promise<boolean | undefined> {
    return this.answered ? this.names.has(service) : new Promise((r) => setTimeout(() => r(undefined), 20));
  }
  whenExists(service: string, onExists: () => void): () => void {
    const set = this.#waiters.get(service) ?? new Set();
    set.add(onExists);
    this.#waiters.set(service, set);
    return () => set.delete(onExists);
  }
  waiting(service: string): number {
    return this.#waiters.get(service)?.size ?? 0;
  }
  appear(service: string): void {
    this.names.add(service);
    for (const w of this.#waiters.get(service) ?? []) w();
    this.#waiters.delete(service);
  }
}

test('names the catalog does not have are refused at once, never watched, and never fill maxServices', async () => {
  const source = new NamedSource();
  source.names.add('real');
  const table = new RoutingTable({ source, firstAnswerTimeoutMs: 5000, idleMs: 60_000, maxServices: 2, upstreams: [] });
  const started = Date.now();
  for (let i = 0; i < 50; i++) await assert.rejects(table.get(`made-up-${i}`), { code: 'TANDEM_ERR_UNKNOWN_SERVICE', statusCode: 503 });
  assert.ok(Date.now() - started < 1000, 'without waiting for any watch');
  assert.equal(source.listeners.size, 0, 'no watch started');
  assert.equal(table.snapshot().length, 0, 'no entry in the routing table');
  const p = table.get('real');
  source.emit('real', { kind: 'reset', endpoints: [ep('a')] });
  assert.deepEqual((await p).all.map((e) => e.id), ['a'], 'a real service still gets a slot');
  source.problemText = 'the ACL token lacks service:read';
  await assert.rejects(table.get('hidden'), { code: 'TANDEM_ERR_CONSUL_PERMISSION_DENIED' });
  table.close();
});

test('when the catalog cannot say whether a name exists, the request fails with CATALOG_UNAVAILABLE and nothing is watched', async () => {
  const source = new NamedSource();
  source.answered = false;
  const table = new RoutingTable({ source, firstAnswerTimeoutMs: 50, idleMs: 60_000, maxServices: 2, upstreams: [] });
  await assert.rejects(table.get('maybe'), { code: 'TANDEM_ERR_CATALOG_UNAVAILABLE' });
  assert.equal(source.listeners.size, 0);
  table.close();
});

test('listen() on a name not in the catalog yet waits without a watch, then follows the service once it appears', async () => {
  const source = new NamedSource();
  const table = new RoutingTable({ source, firstAnswerTimeoutMs: 1000, idleMs: 60_000, maxServices: 10, upstreams: [] });
  const sets: string[][] = [];
  const { set, stop } = await table.listen('late', (s) => sets.push(s.all.map((e) => e.id)));
  assert.equal(set.all.length, 0);
  assert.equal(source.active('late'), 0, 'no watch while it does not exist');
  assert.equal(source.waiting('late'), 1);
  source.appear('late');
  await eventually(() => source.active('late') === 1, 'watched once it appears', 1000);
  source.emit('late', { kind: 'reset', endpoints: [ep('a')] });
  await eventually(() => sets.some((s) => s.includes('a')), 'the listener sees its first set', 1000);
  source.emit('late', { kind: 'add', endpoints: [ep('b')] });
  assert.deepEqual(sets.at(-1), ['a', 'b']);
  stop();
  // A stream closed while still waiting leaves no waiter behind.
  const other = await table.listen('never', () => assert.fail('never appears'));
  other.stop();
  assert.equal(source.waiting('never'), 0);
  table.close();
});
