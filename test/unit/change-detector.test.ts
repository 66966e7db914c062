// The catalog watcher with a fake Consul: per-service watches within the budget, the shared change detector beyond it, the names watch.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import pino from 'pino';
import type { BlockingResult, ConsulClient, HealthEntry } from '../../src/consul/consul-client.ts';
import { ConnectionBudget } from '../../src/consul/connection-budget.ts';
import { ConsulUnavailableError } from '../../src/consul/errors.ts';
import { StateStore } from '../../src/common/state-store.ts';
import { CatalogWatcher } from '../../src/discovery/catalog-watcher.ts';
import type { Update } from '../../src/proxy/endpoint-source.ts';
import { eventually } from '../support/consul.ts';

type Q = { index: number; waitMs: number; signal?: AbortSignal };

/** Just enough of ConsulClient: one global index that moves with every change, blocking reads that wake on it. */
class FakeConsul {
  readonly budget: ConnectionBudget;
  readonly readAddress = 'http://fake-consul';
  services = new Map<string, HealthEntry[]>();
  index = 10;
  /** The detector's health reads, and the most in flight at once. */
  reads = 0;
  inFlight = 0;
  maxInFlight = 0;
  #wakers = new Set<() => void>();
  /** Every read fails (Consul down). */
  down = false;

  constructor(capacity: number, reserved: number) {
    this.budget = new ConnectionBudget({ capacity, reserved });
  }

  change(service: string, entries: HealthEntry[] | undefined): void {
    if (entries) this.services.set(service, entries);
    else this.services.delete(service);
    this.index++;
    for (const w of [...this.#wakers]) w();
  }

  async catalogServices(q: Q): Promise<BlockingResult<string[]>> {
    if (this.down) throw new ConsulUnavailableError('connection refused');
    await this.#block(q);
    return this.#result([...this.services.keys()].sort());
  }

  async healthStateAny(q: Q): Promise<BlockingResult<number>> {
    await this.#block(q);
    return this.#result(this.services.size);
  }

  async healthService(name: string, q: Q & { passing: boolean }): Promise<BlockingResult<HealthEntry[]>> {
    if (this.down) throw new ConsulUnavailableError('connection refused');
    if (q.index > 0) await this.#block(q);
    else if (q.waitMs === 0) {
      // The detector's reads (a watch's first read is index 0 too, but with a wait).
      this.reads++;
      this.inFlight++;
      this.maxInFlight = Math.max(this.maxInFlight, this.inFlight);
      await sleep(5);
      this.inFlight--;
    }
    return this.#result(this.services.get(name) ?? []);
  }

  #result<T>(value: T): BlockingResult<T> {
    return { index: this.index, knownLeader: true, lastContactMs: 0, value };
  }

  #block(q: Q): Promise<void> {
    if (q.index === 0 || q.index < this.index) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const done = () => {
        this.#wakers.delete(done);
        resolve();
      };
      this.#wakers.add(done);
      q.signal?.addEventListener('abort', () => {
        this.#wakers.delete(done);
        reject(new Error('aborted'));
      });
    });
  }
}

const entry = (service: string, port: number, status: HealthEntry['status'] = 'passing'): HealthEntry => ({
  node: 'n1', nodeAddress: '127.0.0.1', id: `${service}-${port}`, name: service, address: '127.0.0.1', port, tags: [], meta: { version: '1.0.0' }, status, checks: [],
});

function watcherOn(consul: FakeConsul, store?: StateStore): CatalogWatcher {
  return new CatalogWatcher({ consul: consul as unknown as ConsulClient, logger: pino({ level: 'silent' }), store, waitMs: 10_000, maxBackoffMs: 200, detectorConcurrency: 3 });
}

/** Collects a subscriber's updates and keeps the instance ids it would route to. */
function follow(w: CatalogWatcher, service: string, opts?: { pinned: boolean }): { ids: () => string[]; updates: Update[]; close: () => void } {
  const ids = new Set<string>();
  const updates: Update[] = [];
  const sub = w.subscribe(
    service,
    (u) => {
      updates.push(u);
      if (u.kind === 'reset') ids.clear();
      if (u.kind === 'remove') for (const id of u.ids) ids.delete(id);
      else for (const e of u.endpoints) ids.add(e.id);
    },
    opts,
  );
  return { ids: () => [...ids].sort(), updates, close: () => sub.close() };
}

test('beyond the shared room, services are served by one change detector: same updates, bounded reads', async () => {
  // 6 watch slots, 2 reserved: 4 shared. The names watch and the detector take reserved room.
  const consul = new FakeConsul(6, 2);
  for (let i = 0; i < 10; i++) consul.change(`s${i}`, [entry(`s${i}`, 1000 + i)]);
  const w = watcherOn(consul);
  await w.start();
  const subs = Array.from({ length: 10 }, (_, i) => follow(w, `s${i}`));
  await eventually(() => subs.every((s) => s.ids().length === 1), 'every service has its first answer', 3000);
  const via = w.stats().map((s) => s.via);
  assert.equal(via.filter((v) => v === 'watch').length, 4, 'one watch per service while shared room lasts');
  assert.equal(via.filter((v) => v === 'detector').length, 6);
  assert.deepEqual(consul.budget.snapshot().byKind, { reserved: 2, shared: 4 }, 'names watch + detector: 2 reserved connections for 6 services');

  // A change to a detector-served service reaches its subscribers as a diff, like a watch's.
  const served = subs[9] as (typeof subs)[number];
  const before = consul.reads;
  consul.change('s9', [entry('s9', 1009), entry('s9', 2009)]);
  await eventually(() => served.ids().length === 2, 'the new instance', 2000);
  const last = served.updates.at(-1);
  assert.deepEqual(last?.kind === 'add' ? last.endpoints.map((e) => e.id) : last, ['s9-2009'], 'only the new instance is sent');
  consul.change('s9', [entry('s9', 2009)]);
  await eventually(() => served.ids().join() === 's9-2009', 'the removed instance goes', 2000);
  assert.equal(served.updates.filter((u) => u.kind === 'reset').length, 1, 'only the first update is a reset');
  await eventually(() => consul.inFlight === 0, 'reads done', 2000);
  assert.ok(consul.maxInFlight <= 3, `at most 3 reads at once (saw ${consul.maxInFlight})`);
  assert.ok(consul.reads - before >= 6 && consul.reads - before <= 6 * 4, `reads per change bounded by the services served (${consul.reads - before} for 2 changes)`);

  // When every detector-served service is gone, the detector holds no connection.
  for (const s of subs.slice(4)) s.close();
  // A query whose last subscriber left ends with its request in flight (Consul would otherwise hold
  // the dropped connection until its wait ends): a change ends every blocking read here.
  consul.change('unrelated', [entry('unrelated', 1)]);
  await eventually(() => consul.budget.snapshot().byKind.reserved === 1, 'only the names watch left', 2000);
  assert.equal(w.detectorStats().serving, 0);
  for (const s of subs.slice(0, 4)) s.close();
  await w.close();
  consul.change('unrelated', [entry('unrelated', 2)]);
  await eventually(() => consul.budget.snapshot().inUse === 0, 'every connection given back once its request ended', 2000);
});

test('when room comes free, a detector-served service gets a watch of its own without a second reset', async () => {
  const consul = new FakeConsul(4, 2); // 2 shared
  for (const s of ['a', 'b', 'c']) consul.change(s, [entry(s, 1)]);
  const w = watcherOn(consul);
  await w.start();
  const [a, b, c] = ['a', 'b', 'c'].map((s) => follow(w, s));
  await eventually(() => c?.ids().length === 1, 'c answered', 2000);
  assert.equal(w.stats('c')[0]?.via, 'detector');
  a?.close();
  // a's room is free once its request in flight has ended.
  consul.change('unrelated', [entry('unrelated', 1)]);
  await eventually(() => w.stats('c')[0]?.via === 'watch', 'c promoted', 2000);
  consul.change('c', [entry('c', 1), entry('c', 2)]);
  await eventually(() => c?.ids().length === 2, 'c still sees changes', 2000);
  assert.equal(c?.updates.filter((u) => u.kind === 'reset').length, 1);
  assert.equal(w.detectorStats().running, false, 'the detector stopped with nothing to serve');
  b?.close();
  c?.close();
  await w.close();
});

test('configured upstreams take reserved room; the names watch answers existence without a watch per name', async () => {
  const consul = new FakeConsul(4, 2); // 2 shared
  consul.change('real', [entry('real', 1)]);
  const w = watcherOn(consul);
  await w.start();
  assert.equal(await w.exists('real', 1000), true);
  assert.equal(w.exists('made-up', 1000), false, 'answered at once once the list is known');
  const pinned = follow(w, 'real', { pinned: true });
  await eventually(() => pinned.ids().length === 1, 'pinned answered', 2000);
  assert.deepEqual(consul.budget.snapshot().byKind, { reserved: 2, shared: 0 });
  // Upstreams filling the budget leave the last slot to the detector, which then serves the rest.
  for (const s of ['p2', 'p3', 'p4']) consul.change(s, [entry(s, 1)]);
  const more = ['p2', 'p3', 'p4'].map((s) => follow(w, s, { pinned: true }));
  await eventually(() => more.every((m) => m.ids().length === 1), 'every upstream answered', 2000);
  assert.deepEqual(w.stats().map((st) => st.via), ['watch', 'watch', 'detector', 'detector']);
  assert.equal(consul.budget.snapshot().inUse, 4);
  for (const m of more) m.close();
  let woke = false;
  const cancel = w.whenExists('later', () => (woke = true));
  await sleep(30);
  assert.equal(woke, false);
  consul.change('later', [entry('later', 5)]);
  await eventually(() => woke, 'woken when the name appears', 2000);
  cancel();
  pinned.close();
  await w.close();
});

test('Consul down at start: a service in the persisted view exists at once (routed stale from disk), others cannot be told', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'tandem-unit-'));
  try {
    const store = new StateStore(dir);
    await store.start();
    await store.save('catalog-view', { cold: { savedAt: Date.now() - 5000, endpoints: [{ id: 'cold-1', service: 'cold', address: '127.0.0.1', port: 1, version: '1.0.0', node: 'n1', healthy: true }] } });
    const consul = new FakeConsul(4, 2);
    consul.down = true;
    const w = watcherOn(consul, store);
    await w.start();
    const started = Date.now();
    assert.equal(await w.exists('cold', 2000), true);
    assert.ok(Date.now() - started < 1000, `answered after ${Date.now() - started} ms, not at the timeout`);
    assert.equal(await w.exists('unsaved', 300), undefined, 'unknown, after the bound');
    const cold = follow(w, 'cold');
    await eventually(() => cold.ids().join() === 'cold-1', 'the persisted view', 2000);
    assert.equal(w.stats('cold')[0]?.stale, true);
    assert.equal(w.outage, true);
    consul.down = false;
    consul.change('cold', [entry('cold', 2)]);
    await eventually(() => cold.ids().join() === 'cold-2', 'the view from Consul once it answers', 3000);
    assert.equal(w.outage, false);
    cold.close();
    await w.close();
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
