// Endpoint sets, range subsets and the balancer: round-robin, sticky hashing, failover, exclusion and outlier ejection.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import semver from 'semver';
import { Balancer } from '../../src/proxy/balancing/balancer.ts';
import type { Endpoint } from '../../src/proxy/endpoint-source.ts';
import { EndpointSet, type Subset } from '../../src/proxy/endpoint-set.ts';
import { OutlierDetector, type OutlierOptions } from '../../src/proxy/balancing/outlier-detector.ts';
import { RangeCache } from '../../src/proxy/balancing/range-cache.ts';

const OPTIONS: OutlierOptions = { consecutiveFailures: 3, baseEjectionMs: 1000, maxEjectionMs: 5000, maxEjectionShare: 0.5 };
const ranges = new RangeCache();

function ep(id: string, version = '1.0.0', healthy = true): Endpoint {
  return { id, service: 'users', address: '10.0.0.1', port: 3000, version, semver: semver.parse(version), node: 'node-1', healthy };
}

function subsetOf(set: EndpointSet, range = ''): Subset {
  return set.subset(range, range === '' ? null : ranges.get(range));
}

function setup(options: Partial<OutlierOptions> = {}): { detector: OutlierDetector; balancer: Balancer } {
  const detector = new OutlierDetector({ ...OPTIONS, ...options });
  return { detector, balancer: new Balancer(detector) };
}

function pickId(balancer: Balancer, subset: Subset, stickyId?: string, exclude?: ReadonlySet<string>): string | undefined {
  return balancer.pick(subset, { stickyId, exclude })?.endpoint.id;
}

function counts(balancer: Balancer, subset: Subset, n: number, exclude?: ReadonlySet<string>): Map<string, number> {
  const out = new Map<string, number>();
  for (let i = 0; i < n; i++) {
    const id = pickId(balancer, subset, undefined, exclude);
    assert.ok(id !== undefined, 'pick returned nothing');
    out.set(id, (out.get(id) ?? 0) + 1);
  }
  return out;
}

function sorted(m: Map<string, number>): [string, number][] {
  return [...m.entries()].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
}

const five = () => new EndpointSet('users', ['i1', 'i2', 'i3', 'i4', 'i5'].map((id) => ep(id)));
const keys = Array.from({ length: 2000 }, (_, i) => `session-${i}`);

test('round-robin is exactly even over the healthy instances in range', () => {
  const set = new EndpointSet('users', [ep('c', '1.2.0'), ep('a', '1.0.0'), ep('b', '1.1.0'), ep('d', '1.3.0', false), ep('e', '2.0.0')]);
  const { balancer } = setup();
  assert.deepEqual(sorted(counts(balancer, subsetOf(set, '^1'), 300)), [
    ['a', 100],
    ['b', 100],
    ['c', 100],
  ]);
  const all = subsetOf(set);
  assert.deepEqual(sorted(counts(balancer, all, 400)), [
    ['a', 100],
    ['b', 100],
    ['c', 100],
    ['e', 100],
  ]);
  const seq = Array.from({ length: 6 }, () => pickId(balancer, subsetOf(set, '^1')));
  assert.deepEqual(seq.slice(0, 3).sort(), ['a', 'b', 'c']);
  assert.deepEqual(seq.slice(3), seq.slice(0, 3), 'the rotation repeats in the same order');
});

test('a range selects the right subset', () => {
  const set = new EndpointSet('users', [ep('a', '1.0.0'), ep('b', '1.5.0'), ep('c', '2.0.0'), ep('d', '2.1.0-beta.1'), ep('e', ''), ep('f', 'banana'), ep('g', '1.9.0', false)]);
  assert.deepEqual(subsetOf(set, '^1').members.map((e) => e.id), ['a', 'b', 'g']);
  assert.deepEqual(subsetOf(set, '^1').healthy.map((e) => e.id), ['a', 'b']);
  assert.deepEqual(subsetOf(set, '2').members.map((e) => e.id), ['c'], 'prereleases are not in a range');
  assert.deepEqual(subsetOf(set, '>=1').members.map((e) => e.id), ['a', 'b', 'c', 'g']);
  assert.deepEqual(subsetOf(set, '^3').members, []);
  assert.deepEqual(subsetOf(set).members.map((e) => e.id), ['a', 'b', 'c', 'd', 'e', 'f', 'g']);
  assert.deepEqual(set.versions, ['1.0.0', '1.5.0', '1.9.0', '2.0.0', '2.1.0-beta.1', 'banana']);
  assert.deepEqual(set.healthyVersions, ['1.0.0', '1.5.0', '2.0.0', '2.1.0-beta.1', 'banana']);

  const { balancer } = setup();
  assert.deepEqual(sorted(counts(balancer, subsetOf(set), 60)), [
    ['a', 10],
    ['b', 10],
    ['c', 10],
    ['d', 10],
    ['e', 10],
    ['f', 10],
  ]);
  assert.equal(balancer.pick(subsetOf(set, '^3')), undefined);
  assert.equal(balancer.pick(subsetOf(set, '2.1.0-beta.1'))?.endpoint.id, 'd', 'an exact prerelease range reaches it');
});

test('subsets are cached per set and key', () => {
  const set = five();
  const r = ranges.get('^1');
  const s = set.subset('^1', r);
  assert.equal(set.subset('^1', r), s);
  assert.notEqual(set.subset('1', ranges.get('1')), s);
  assert.notEqual(set.subset('', null), s);
  assert.equal(s.ring(), s.ring(), 'the ring is built once');
  const next = set.apply({ kind: 'add', endpoints: [ep('i6')] });
  assert.notEqual(next.subset('^1', r), s);
  assert.equal(set.all.length, 5, 'apply leaves the old set as it is');
  assert.equal(next.all.length, 6);
  assert.equal(set.subset('^1', r), s);
});

test('apply: reset, add (replace) and remove', () => {
  const set = five();
  const reset = set.apply({ kind: 'reset', endpoints: [ep('x')] });
  assert.deepEqual(reset.all.map((e) => e.id), ['x']);
  assert.equal(reset.service, 'users');
  const replaced = set.apply({ kind: 'add', endpoints: [ep('i2', '2.0.0', false)] });
  assert.equal(replaced.all.length, 5);
  assert.equal(replaced.byId.get('i2')?.healthy, false);
  assert.equal(replaced.byId.get('i2')?.version, '2.0.0');
  const removed = set.apply({ kind: 'remove', ids: ['i1', 'i4', 'nope'] });
  assert.deepEqual(removed.all.map((e) => e.id), ['i2', 'i3', 'i5']);
});

test('instances are sorted by id, so order from Consul does not matter', () => {
  const a = new EndpointSet('users', ['i3', 'i1', 'i5', 'i2', 'i4'].map((id) => ep(id)));
  const b = five();
  assert.deepEqual(a.all.map((e) => e.id), ['i1', 'i2', 'i3', 'i4', 'i5']);
  const { balancer } = setup();
  for (const key of keys.slice(0, 200)) assert.equal(pickId(balancer, subsetOf(a), key), pickId(balancer, subsetOf(b), key));
});

test('sticky: the same key always gets the same instance', () => {
  const { balancer } = setup();
  const s = subsetOf(five());
  const first = balancer.pick(s, { stickyId: 'alice' });
  assert.ok(first);
  assert.equal(first.moved, false);
  for (let i = 0; i < 100; i++) assert.deepEqual(balancer.pick(s, { stickyId: 'alice' }), first);
  assert.equal(s.cursor, 0, 'sticky picks do not move the round-robin cursor');
  const owners = new Set(keys.map((k) => pickId(balancer, s, k)));
  assert.equal(owners.size, 5, 'keys spread over every instance');
});

test('sticky: removing one instance moves only its keys, and they come back', () => {
  const { balancer } = setup();
  const set = five();
  const before = new Map(keys.map((k) => [k, pickId(balancer, subsetOf(set), k)]));
  const removed = set.apply({ kind: 'remove', ids: ['i3'] });
  let moved = 0;
  for (const k of keys) {
    const now = pickId(balancer, subsetOf(removed), k);
    assert.notEqual(now, 'i3');
    if (before.get(k) === 'i3') moved++;
    else assert.equal(now, before.get(k), `${k} moved from ${before.get(k)} to ${now}`);
  }
  assert.ok(moved > 100, `only ${moved} keys were on i3`);
  const back = removed.apply({ kind: 'add', endpoints: [ep('i3')] });
  for (const k of keys) assert.equal(pickId(balancer, subsetOf(back), k), before.get(k));
});

test(
  'sticky: removing one of eight instances moves only its keys',
  () => {
    const { balancer } = setup();
    const set = new EndpointSet('users', ['i1', 'i2', 'i3', 'i4', 'i5', 'i6', 'i7', 'i8'].map((id) => ep(id)));
    const removed = set.apply({ kind: 'remove', ids: ['i3'] });
    const wrong = keys.filter((k) => {
      const was = pickId(balancer, subsetOf(set), k);
      return was !== 'i3' && pickId(balancer, subsetOf(removed), k) !== was;
    });
    assert.equal(wrong.length, 0, `${wrong.length} keys moved between instances that stayed`);
  },
);

test('sticky: an unhealthy owner hands over to the next in ring order', () => {
  const { balancer } = setup();
  const set = five();
  const owner = pickId(balancer, subsetOf(set), 'alice');
  assert.ok(owner !== undefined);
  const sick = set.apply({ kind: 'add', endpoints: [ep(owner, '1.0.0', false)] });
  const s = subsetOf(sick);
  const order = s.ring().range('alice', 5);
  assert.equal(order[0], owner);
  assert.deepEqual(balancer.pick(s, { stickyId: 'alice' }), { endpoint: sick.byId.get(order[1] ?? ''), moved: true });
  for (const k of keys) {
    const was = pickId(balancer, subsetOf(set), k);
    const p = balancer.pick(s, { stickyId: k });
    assert.ok(p);
    assert.equal(p.moved, was === owner, k);
    if (was !== owner) assert.equal(p.endpoint.id, was);
    else assert.equal(p.endpoint.id, s.ring().range(k, 5)[1]);
  }
});

test('the exclude set is honoured by round-robin and sticky picks', () => {
  const { balancer } = setup();
  const set = new EndpointSet('users', [ep('a'), ep('b'), ep('c')]);
  const s = subsetOf(set);
  assert.deepEqual(sorted(counts(balancer, s, 10, new Set(['a']))).map(([id]) => id), ['b', 'c']);
  assert.equal(pickId(balancer, s, undefined, new Set(['a', 'b'])), 'c');
  assert.equal(balancer.pick(s, { exclude: new Set(['a', 'b', 'c']) }), undefined);

  const owner = pickId(balancer, s, 'alice');
  assert.ok(owner !== undefined);
  const order = s.ring().range('alice', 3);
  assert.deepEqual(balancer.pick(s, { stickyId: 'alice', exclude: new Set([owner]) }), { endpoint: set.byId.get(order[1] ?? ''), moved: true });
  assert.deepEqual(balancer.pick(s, { stickyId: 'alice', exclude: new Set([owner, order[1] ?? '']) }), { endpoint: set.byId.get(order[2] ?? ''), moved: true });
  assert.equal(balancer.pick(s, { stickyId: 'alice', exclude: new Set(['a', 'b', 'c']) }), undefined);
});

test('no healthy instance: nothing is picked', () => {
  const { balancer } = setup();
  const s = subsetOf(new EndpointSet('users', [ep('a', '1.0.0', false), ep('b', '1.0.0', false)]));
  assert.equal(balancer.pick(s), undefined);
  assert.equal(balancer.pick(s, { stickyId: 'alice' }), undefined);
  assert.equal(balancer.pick(subsetOf(new EndpointSet('users', []))), undefined);
});

test('ejection: consecutive failures take an instance out until the ejection time has passed', (t) => {
  t.mock.timers.enable({ apis: ['Date'], now: 1_000_000 });
  const { detector, balancer } = setup();
  const set = five();
  const s = subsetOf(set);
  const i2 = set.byId.get('i2');
  assert.ok(i2);
  detector.report(i2, 'failure');
  detector.report(i2, 'failure');
  assert.equal(detector.isEjected('i2'), false, 'two failures are not enough');
  assert.equal(counts(balancer, s, 50).get('i2'), 10);
  detector.report(i2, 'failure');
  assert.equal(detector.isEjected('i2'), true);
  assert.deepEqual(detector.view('i2'), { ejected: true, ejectedUntil: 1_001_000, consecutiveFailures: 0 });
  assert.equal(counts(balancer, s, 100).get('i2'), undefined);
  t.mock.timers.tick(999);
  assert.equal(counts(balancer, s, 100).get('i2'), undefined);
  t.mock.timers.tick(1);
  assert.equal(detector.isEjected('i2'), false);
  assert.equal(counts(balancer, s, 100).get('i2'), 20);
});

test('ejection: a sticky key whose owner is ejected moves', (t) => {
  t.mock.timers.enable({ apis: ['Date'], now: 1_000_000 });
  const { detector, balancer } = setup();
  const set = five();
  const s = subsetOf(set);
  const owner = set.byId.get(pickId(balancer, s, 'alice') ?? '');
  assert.ok(owner);
  for (let i = 0; i < 3; i++) detector.report(owner, 'failure');
  assert.deepEqual(balancer.pick(s, { stickyId: 'alice' }), { endpoint: set.byId.get(s.ring().range('alice', 5)[1] ?? ''), moved: true });
  t.mock.timers.tick(1000);
  assert.deepEqual(balancer.pick(s, { stickyId: 'alice' }), { endpoint: owner, moved: false });
});

test('ejection times grow and are capped at maxEjectionMs', () => {
  const detector = new OutlierDetector(OPTIONS);
  const e = ep('a');
  let now = 0;
  const durations: number[] = [];
  for (let round = 0; round < 6; round++) {
    for (let i = 0; i < 3; i++) detector.report(e, 'failure', now);
    const v = detector.view('a', now);
    assert.equal(v.ejected, true);
    durations.push((v.ejectedUntil ?? now) - now);
    now = v.ejectedUntil ?? now;
    assert.equal(detector.isEjected('a', now), false);
  }
  assert.deepEqual(durations, [1000, 2000, 4000, 5000, 5000, 5000]);
});

test('failures during an ejection do not extend it', () => {
  const detector = new OutlierDetector(OPTIONS);
  const e = ep('a');
  for (let i = 0; i < 3; i++) detector.report(e, 'failure', 0);
  for (let i = 0; i < 3; i++) detector.report(e, 'failure', 500);
  assert.equal(detector.view('a', 500).ejectedUntil, 1000);
  assert.equal(detector.isEjected('a', 1000), false);
});

test('panic mode: ejection is ignored when too many would be ejected', (t) => {
  t.mock.timers.enable({ apis: ['Date'], now: 1_000_000 });
  const { detector, balancer } = setup();
  const set = new EndpointSet('users', [ep('a'), ep('b'), ep('c')]);
  const s = subsetOf(set);
  const eject = (id: string) => {
    const e = set.byId.get(id);
    assert.ok(e);
    for (let i = 0; i < 3; i++) detector.report(e, 'failure');
  };
  eject('a');
  assert.equal(detector.ejectionAllowed(s.healthy), true, '1 of 3 is within floor(3 * 0.5)');
  assert.deepEqual(sorted(counts(balancer, s, 100)), [
    ['b', 50],
    ['c', 50],
  ]);
  eject('b');
  assert.equal(detector.ejectionAllowed(s.healthy), false, '2 of 3 is beyond floor(3 * 0.5)');
  assert.deepEqual(sorted(counts(balancer, s, 300)), [
    ['a', 100],
    ['b', 100],
    ['c', 100],
  ]);
  assert.equal(balancer.pick(s, { stickyId: 'alice' })?.moved, false, 'sticky ignores ejection too in panic mode');
  t.mock.timers.tick(1000);
  assert.equal(detector.ejectionAllowed(s.healthy), true);
});

test('panic mode counts the subset, not the whole service', () => {
  const detector = new OutlierDetector({ ...OPTIONS, maxEjectionShare: 0.5 });
  const members = [ep('a'), ep('b'), ep('c'), ep('d')];
  for (let i = 0; i < 3; i++) detector.report(ep('a'), 'failure', 0);
  assert.equal(detector.ejectionAllowed(members, 0), true);
  assert.equal(detector.ejectionAllowed([ep('a')], 0), false);
  assert.equal(detector.ejectionAllowed([ep('a'), ep('b')], 0), true);
  assert.equal(new OutlierDetector({ ...OPTIONS, maxEjectionShare: 0 }).ejectionAllowed(members, 0), true, 'nothing ejected');
});

test('a success resets the failure count', () => {
  const detector = new OutlierDetector(OPTIONS);
  const e = ep('a');
  detector.report(e, 'failure', 0);
  detector.report(e, 'failure', 0);
  assert.equal(detector.view('a', 0).consecutiveFailures, 2);
  detector.report(e, 'success', 0);
  assert.deepEqual(detector.view('a', 0), { ejected: false, consecutiveFailures: 0 });
  detector.report(e, 'failure', 0);
  detector.report(e, 'failure', 0);
  assert.equal(detector.isEjected('a', 0), false);
  detector.report(e, 'failure', 0);
  assert.equal(detector.isEjected('a', 0), true);
});

test('a success during an ejection does not end it; one after it restarts the back-off', () => {
  const detector = new OutlierDetector(OPTIONS);
  const e = ep('a');
  for (let i = 0; i < 3; i++) detector.report(e, 'failure', 0);
  detector.report(e, 'success', 10);
  assert.equal(detector.isEjected('a', 10), true);
  for (let i = 0; i < 3; i++) detector.report(e, 'failure', 1000);
  assert.equal(detector.view('a', 1000).ejectedUntil, 3000, 'second ejection doubles');
  detector.report(e, 'success', 3000);
  for (let i = 0; i < 3; i++) detector.report(e, 'failure', 3000);
  assert.equal(detector.view('a', 3000).ejectedUntil, 4000, 'back to the base time after a recovery');
});

test('forget drops the state of instances', () => {
  const detector = new OutlierDetector(OPTIONS);
  const a = ep('a');
  const b = ep('b');
  for (let i = 0; i < 3; i++) detector.report(a, 'failure', 0);
  for (let i = 0; i < 3; i++) detector.report(a, 'failure', 1000);
  detector.report(b, 'failure', 0);
  detector.forget(['a', 'b', 'unknown']);
  assert.equal(detector.isEjected('a', 1000), false);
  assert.deepEqual(detector.view('a', 1000), { ejected: false, consecutiveFailures: 0 });
  assert.deepEqual(detector.view('b', 0), { ejected: false, consecutiveFailures: 0 });
  for (let i = 0; i < 3; i++) detector.report(a, 'failure', 2000);
  assert.equal(detector.view('a', 2000).ejectedUntil, 3000, 'the back-off starts over');
});

test('subsets cached per set are bounded (endless distinct ranges do not grow memory)', async () => {
  const { RangeCache } = await import('../../src/proxy/balancing/range-cache.ts');
  const ranges = new RangeCache();
  const set = new EndpointSet('users', ['a', 'b'].map((id) => ep(id)));
  for (let i = 1; i < 2000; i++) set.subset(`>=1.0.0 <${i}.0.0`, ranges.get(`>=1.0.0 <${i}.0.0`));
  assert.ok(set.subsets().length <= 256);
  assert.equal(set.subset('>=1.0.0 <1999.0.0', ranges.get('>=1.0.0 <1999.0.0')).members.length, 2, 'uncached subsets are still right');
});
