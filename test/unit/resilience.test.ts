// Slow start, flap damping and the retry budget, with explicit clocks.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import semver from 'semver';
import { Balancer } from '../../src/proxy/balancing/balancer.ts';
import type { Endpoint } from '../../src/proxy/endpoint-source.ts';
import { EndpointSet } from '../../src/proxy/endpoint-set.ts';
import { HealthTracker } from '../../src/proxy/balancing/health-tracker.ts';
import { OutlierDetector } from '../../src/proxy/balancing/outlier-detector.ts';
import { RetryBudget } from '../../src/proxy/balancing/retry-budget.ts';

const ep = (id: string, healthy = true): Endpoint => ({ id, service: 's', address: '127.0.0.1', port: 1, version: '1.0.0', semver: semver.parse('1.0.0'), node: 'n', healthy });
const tracker = () => new HealthTracker({ slowStartMs: 10_000, flapThreshold: 3, flapWindowMs: 60_000, flapHoldMs: 30_000 });

test('instances in the first view are not slow-started', () => {
  const h = tracker();
  h.observe(undefined, new EndpointSet('s', [ep('a'), ep('b')]), 0);
  assert.equal(h.weight('a', 1), 1);
});

test('a new or recovered instance ramps up over the slow-start window', () => {
  const h = tracker();
  const s0 = new EndpointSet('s', [ep('a'), ep('b', false)]);
  h.observe(undefined, s0, 0);
  const s1 = s0.apply({ kind: 'add', endpoints: [ep('b'), ep('c')] });
  h.observe(s0, s1, 1000);
  assert.equal(h.weight('b', 1000), 0.05, 'never exactly 0');
  assert.equal(h.weight('c', 6000), 0.5);
  assert.equal(h.weight('c', 11_000), 1);
  assert.equal(h.weight('a', 6000), 1);
});

test('the balancer gives a slow-starting instance a share that grows with its weight', () => {
  const h = tracker();
  const s0 = new EndpointSet('s', [ep('a'), ep('b')]);
  h.observe(undefined, s0, Date.now() - 100_000);
  const s1 = s0.apply({ kind: 'add', endpoints: [ep('c')] });
  h.observe(s0, s1, Date.now() - 2500); // 25 % into a 10 s window
  let seed = 1;
  const random = () => ((seed = (seed * 16807) % 2147483647) / 2147483647);
  const b = new Balancer(new OutlierDetector({ consecutiveFailures: 3, baseEjectionMs: 1000, maxEjectionMs: 10_000, maxEjectionShare: 0.5 }), h, random);
  const sub = s1.subset('', null);
  const counts = new Map<string, number>();
  for (let i = 0; i < 3000; i++) {
    const id = b.pick(sub)?.endpoint.id ?? '';
    counts.set(id, (counts.get(id) ?? 0) + 1);
  }
  const c = counts.get('c') ?? 0;
  assert.ok(c > 100 && c < 500, `c got ${c} of 3000 (a full share would be 1000)`);
});

test('a flapping instance is held out until stable for the hold time; the balancer skips it unless nothing else is left', () => {
  const h = new HealthTracker({ slowStartMs: 0, flapThreshold: 3, flapWindowMs: 60_000, flapHoldMs: 30_000 });
  // The balancer reads the wall clock: the flaps are placed in the last few seconds of it, so that the
  // balancer's "now" falls inside the hold, the same as the tracker's.
  const start = Date.now() - 5000;
  let set = new EndpointSet('s', [ep('a'), ep('f')]);
  h.observe(undefined, set, start);
  let t = start + 1000;
  for (let i = 0; i < 3; i++) {
    const down = set.apply({ kind: 'add', endpoints: [ep('f', false)] });
    h.observe(set, down, t);
    const up = down.apply({ kind: 'add', endpoints: [ep('f')] });
    h.observe(down, up, t + 500);
    set = up;
    t += 1000;
  }
  const now = Date.now();
  assert.equal(h.weight('f', now), 0, 'held out');
  assert.equal(h.view('f', now).flapping, true);
  const b = new Balancer(new OutlierDetector({ consecutiveFailures: 3, baseEjectionMs: 1000, maxEjectionMs: 10_000, maxEjectionShare: 0.5 }), h);
  const sub = set.subset('', null);
  // Round-robin over two would alternate: every pick being 'a' is the hold at work.
  for (let i = 0; i < 10; i++) assert.equal(b.pick(sub)?.endpoint.id, 'a', `pick ${i}`);
  assert.equal(b.pick(sub, { exclude: new Set(['a']) })?.endpoint.id, 'f', 'a held-out instance still serves when it is the only one');
  // Last: a weight read past the hold forgets the flaps.
  assert.equal(h.weight('f', t + 31_000), 1, 'back after being stable for the hold time');
});

test('the retry budget allows a share of requests plus a floor, over a sliding window', () => {
  const budget = new RetryBudget({ ratio: 0.2, minPerSecond: 1, windowMs: 10_000 });
  const t = 1_000_000;
  for (let i = 0; i < 100; i++) budget.request('s', t);
  let allowed = 0;
  for (let i = 0; i < 100; i++) if (budget.tryRetry('s', t)) allowed++;
  assert.equal(allowed, 30, '20 % of 100 requests + 1/s over 10 s');
  assert.equal(budget.tryRetry('other', t), true, 'budgets are per service');
  assert.equal(budget.hasRoom('s', t + 11_000), true, 'the window slides');
  for (let i = 0; i < 10; i++) budget.tryRetry('s', t + 11_000);
  assert.equal(budget.hasRoom('s', t + 11_000), false, 'only the floor without recent requests');
});
