// Load-aware picking: peak-EWMA cost, least-loaded P2C, maxInFlight with the admission queue, bounded-load sticky hashing.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import semver from 'semver';
import { Balancer, type BalancerEvents, type MoveReason } from '../../src/proxy/balancing/balancer.ts';
import type { Endpoint } from '../../src/proxy/endpoint-source.ts';
import { EndpointSet } from '../../src/proxy/endpoint-set.ts';
import { HealthTracker } from '../../src/proxy/balancing/health-tracker.ts';
import { DEFAULT_DECAY_MS, DEFAULT_RTT_MS, LoadTracker } from '../../src/proxy/balancing/load-tracker.ts';
import { OverloadedError } from '../../src/proxy/errors.ts';
import { OutlierDetector } from '../../src/proxy/balancing/outlier-detector.ts';

const outliers = () => new OutlierDetector({ consecutiveFailures: 3, baseEjectionMs: 1000, maxEjectionMs: 5000, maxEjectionShare: 0.5 });

function ep(id: string, extra: Partial<Endpoint> = {}): Endpoint {
  return { id, service: 'users', address: '10.0.0.1', port: 3000, version: '1.0.0', semver: semver.parse('1.0.0'), node: 'n', healthy: true, ...extra };
}

/** A deterministic random source (mulberry32): the tests must not depend on luck. */
function seeded(seed: number): () => number {
  let a = seed;
  return () => {
    a = (a + 0x6d2b79f5) | 0;
    let t = Math.imul(a ^ (a >>> 15), 1 | a);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

test('load tracker: peak EWMA jumps up at once, decays with time, cost = ewma × (inflight + 1)', () => {
  let now = 0;
  const t = new LoadTracker(10_000, () => now);
  assert.equal(t.ewma('a'), DEFAULT_RTT_MS);
  t.observe('a', 10);
  assert.equal(t.ewma('a'), 10);
  t.observe('a', 100); // a peak replaces the estimate
  assert.equal(t.ewma('a'), 100);
  now = 10_000; // one decay period without samples: towards zero by 1/e
  assert.ok(Math.abs(t.ewma('a') - 100 / Math.E) < 1e-9, String(t.ewma('a')));
  t.observe('a', 10); // blended with weight 1 − e^(−1)
  assert.ok(Math.abs(t.ewma('a') - (100 / Math.E + 10 * (1 - 1 / Math.E))) < 1e-9, String(t.ewma('a')));
  const end = t.begin('a');
  const end2 = t.begin('a');
  assert.equal(t.inflight('a'), 2);
  assert.ok(Math.abs(t.cost('a') - t.ewma('a') * 3) < 1e-9);
  end(false);
  end(false); // twice is once
  assert.equal(t.inflight('a'), 1);
  end2(false);
  assert.equal(t.inflight('a'), 0);
});

test('least-loaded: a slow instance is rarely picked, an idle one beats a busy one', () => {
  // A frozen clock: every request here takes no time, as the loop means. On the real clock, the loop
  // preempted on a busy machine would time a fast instance's request as slow (a peak), and shift shares.
  const loads = new LoadTracker(DEFAULT_DECAY_MS, () => 0);
  const balancer = new Balancer(outliers(), undefined, seeded(1), { balancer: 'least-loaded', loads });
  const subset = new EndpointSet('users', [ep('fast1'), ep('fast2'), ep('slow')]).subset('', null);
  loads.observe('fast1', 2);
  loads.observe('fast2', 2);
  loads.observe('slow', 80);
  const counts = new Map<string, number>();
  const open: (() => void)[] = [];
  // 8 requests in flight at any time, like a client at concurrency 8.
  for (let i = 0; i < 400; i++) {
    if (open.length === 8) (open.shift() as () => void)();
    const id = balancer.pick(subset)?.endpoint.id as string;
    counts.set(id, (counts.get(id) ?? 0) + 1);
    open.push(loads.begin(id));
  }
  const slowShare = (counts.get('slow') ?? 0) / 400;
  assert.ok(slowShare <= 0.1, `slow share ${slowShare}`);
  assert.ok((counts.get('fast1') ?? 0) > 100 && (counts.get('fast2') ?? 0) > 100, JSON.stringify([...counts]));
});

test('least-loaded: with equal latency, in-flight decides; round-robin stays the default', () => {
  const loads = new LoadTracker();
  const ll = new Balancer(outliers(), undefined, seeded(2), { balancer: 'round-robin', services: { users: { balancer: 'least-loaded' } }, loads });
  assert.equal(ll.kindFor('users'), 'least-loaded');
  assert.equal(ll.kindFor('other'), 'round-robin');
  assert.equal(new Balancer(outliers()).kindFor('users'), 'round-robin');
  const subset = new EndpointSet('users', [ep('a'), ep('b')]).subset('', null);
  loads.begin('a');
  loads.begin('a');
  for (let i = 0; i < 20; i++) assert.equal(ll.pick(subset)?.endpoint.id, 'b');
});

test('least-loaded: slow start makes a ramping instance dearer, flapping ones are held out, tried ones skipped', () => {
  const now = Date.now();
  const health = new HealthTracker({ slowStartMs: 10_000, flapThreshold: 1, flapWindowMs: 60_000, flapHoldMs: 30_000 });
  const b = new Balancer(outliers(), health, seeded(3), { balancer: 'least-loaded' });
  const before = new EndpointSet('users', [ep('a'), ep('b', { healthy: false })]);
  const after = new EndpointSet('users', [ep('a'), ep('b')]);
  health.observe(before, after, now - 500); // b came back 0.5 s ago: weight 0.05
  const subset = after.subset('', null);
  let b1 = 0;
  for (let i = 0; i < 200; i++) if (b.pick(subset)?.endpoint.id === 'b') b1++;
  assert.equal(b1, 0, 'equal raw cost, but the ramping instance costs 20×');
  assert.equal(b.pick(subset, { exclude: new Set(['a']) })?.endpoint.id, 'b');
});

test('maxInFlight: a full instance is skipped, then requests queue, then 503 OVERLOADED', async () => {
  const events: string[] = [];
  const ev: BalancerEvents = { overloaded: (s) => events.push(`overloaded ${s}`), queued: (s) => events.push(`queued ${s}`) };
  const b = new Balancer(outliers(), undefined, Math.random, { queueTimeoutMs: 200, maxQueued: 1, events: ev });
  const subset = new EndpointSet('users', [ep('a', { maxInFlight: 1 }), ep('b', { maxInFlight: 1 })]).subset('', null);
  const p1 = await b.acquire(subset);
  const p2 = await b.acquire(subset);
  assert.deepEqual([p1?.endpoint.id, p2?.endpoint.id].sort(), ['a', 'b']);
  assert.equal(b.pick(subset), undefined, 'both full');
  const queued = b.acquire(subset);
  await assert.rejects(async () => b.acquire(subset), (err: unknown) => err instanceof OverloadedError && err.statusCode === 503 && err.code === 'TANDEM_ERR_OVERLOADED' && err.retryAfterS === 1);
  p1?.release?.();
  const p3 = await queued;
  assert.equal(p3?.endpoint.id, p1?.endpoint.id, 'the freed slot goes to the waiter');
  const started = Date.now();
  await assert.rejects(async () => b.acquire(subset), OverloadedError);
  assert.ok(Date.now() - started >= 190, 'waited for the queue timeout');
  assert.deepEqual(events, ['overloaded users', 'queued users', 'queued users', 'overloaded users']);
  // Nothing healthy at all is not "overloaded": undefined, as before.
  assert.equal(await b.acquire(new EndpointSet('users', [ep('x', { healthy: false })]).subset('', null)), undefined);
});

test('bounded-load sticky: no load maps exactly like the plain ring; a hot key spills in ring order, marked moved', async () => {
  const moves: MoveReason[] = [];
  const b = new Balancer(outliers(), undefined, Math.random, { loadFactor: 1.25, events: { stickyMoved: (_s, r) => moves.push(r) } });
  const plain = new Balancer(outliers());
  const set = new EndpointSet('users', [ep('a'), ep('b'), ep('c')]);
  const subset = set.subset('', null);
  for (let k = 0; k < 100; k++) {
    const p = await b.acquire(subset, { stickyId: `key-${k}` });
    assert.equal(p?.endpoint.id, plain.pick(subset, { stickyId: `key-${k}` })?.endpoint.id);
    assert.equal(p?.moved, false);
    p?.release?.(false);
  }
  const ring = subset.ring().range('hot', 3) as string[];
  const open: { id: string; moved: boolean }[] = [];
  for (let i = 0; i < 12; i++) {
    const p = await b.acquire(subset, { stickyId: 'hot' });
    assert.ok(p);
    open.push({ id: p.endpoint.id, moved: p.moved });
    const owner = b.loads.inflight(ring[0] as string);
    const total = open.length;
    assert.ok(owner <= Math.ceil((1.25 * total) / 3), `owner carries ${owner} of ${total}`);
  }
  const ownerCount = open.filter((o) => o.id === ring[0]).length;
  assert.equal(ownerCount, 5, 'ceil(1.25 × 12 / 3)');
  assert.ok(open.filter((o) => o.id !== ring[0]).every((o) => o.moved));
  assert.equal(open.find((o) => o.id !== ring[0])?.id, ring[1], 'the first overflow goes to the next in ring order');
  assert.ok(moves.length > 0 && moves.every((r) => r === 'load'));
});

test('sticky: an owner at its maxInFlight passes the key on (reason full)', async () => {
  const moves: MoveReason[] = [];
  const b = new Balancer(outliers(), undefined, Math.random, { loadFactor: 100, events: { stickyMoved: (_s, r) => moves.push(r) } });
  const subset = new EndpointSet('users', [ep('a', { maxInFlight: 1 }), ep('b', { maxInFlight: 1 }), ep('c', { maxInFlight: 1 })]).subset('', null);
  const first = await b.acquire(subset, { stickyId: 'k' });
  const second = await b.acquire(subset, { stickyId: 'k' });
  assert.equal(first?.moved, false);
  assert.equal(second?.moved, true);
  assert.notEqual(second?.endpoint.id, first?.endpoint.id);
  assert.deepEqual(moves, ['full']);
});
