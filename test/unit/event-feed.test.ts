// Unit tests of the event bus's pure logic: key format, trust on read (forged keys, clock skew), hold-back after a failed read, and a refused CAS.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import pino from 'pino';
import { decodeEvent, encodeEvent, eventKey, isFromTheFuture, MAX_CLOCK_SKEW_MS, parseEventKey, TopicFeed, type Cursor, type EventKey } from '../../src/cluster/event-feed.ts';
import { EventBus } from '../../src/cluster/event-bus.ts';
import { ConnectionBudget } from '../../src/consul/connection-budget.ts';
import { isValidName } from '../../src/cluster/names.ts';
import type { ConsulClient } from '../../src/consul/consul-client.ts';
import type { TandemEvent } from '../../src/protocol/wire.ts';

const NOW_US = 1_700_000_000_000_000;
const key = (publisher: string, seq: number): EventKey => parseEventKey(eventKey('t', publisher, seq)) as EventKey;
const stored = (k: EventKey, payload: unknown = k.seq) => encodeEvent(k.publisher, k.seq, Math.floor(k.seq / 1000), payload);

function subscriber(feed: TopicFeed, cursor?: Cursor) {
  const got: TandemEvent[] = [];
  const starts: Cursor[] = [];
  const close = feed.add({ start: (c) => starts.push(c), event: (e) => got.push(e) }, cursor);
  return { got, starts, close, seqs: () => got.map((e) => `${e.publisher}:${e.seq - NOW_US}`) };
}

test('names: one segment of letters, digits, _ . -; never . or ..', () => {
  for (const ok of ['orders', 'orders.created', 'a-b_c', '...', '.hidden', 'x'.repeat(128)]) assert.equal(isValidName(ok), true, ok);
  for (const bad of ['', '.', '..', 'a/b', 'sp ace', 'x'.repeat(129), 'é']) assert.equal(isValidName(bad), false, bad);
});

test('keys round-trip; a value must name its key\'s publisher and seq', () => {
  const k = key('p1', NOW_US + 5);
  assert.equal(k.key, `tandem/events/t/p1/${String(NOW_US + 5).padStart(16, '0')}`);
  assert.deepEqual(decodeEvent(k, stored(k, { a: 1 }))?.payload, { a: 1 });
  assert.equal(decodeEvent(k, encodeEvent('p2', k.seq, 1, null)), undefined, 'other publisher');
  assert.equal(decodeEvent(k, encodeEvent('p1', k.seq + 1, 1, null)), undefined, 'other seq');
  assert.equal(decodeEvent(k, JSON.stringify({ ts: 1, payload: 1 })), undefined, 'no identity');
  assert.equal(decodeEvent(k, 'not json'), undefined);
  assert.equal(parseEventKey('tandem/events/t/p1/abc'), undefined);
  assert.equal(parseEventKey('tandem/events/t/p1'), undefined);
});

test('a seq further ahead than clock skew (5 s) is from the future; a little skew is not', () => {
  const nowMs = NOW_US / 1000;
  assert.equal(MAX_CLOCK_SKEW_MS, 5000);
  assert.equal(isFromTheFuture(key('p', NOW_US + 4_000_000), nowMs), false);
  assert.equal(isFromTheFuture(key('p', NOW_US + 6_000_000), nowMs), true);
  assert.equal(isFromTheFuture(key('p', NOW_US + 50_000_000), nowMs), true, 'the review\'s forged key, 50 s ahead');
  assert.equal(isFromTheFuture(key('p', 9_000_000_000_000_000), nowMs), true);
  assert.equal(isFromTheFuture(parseEventKey('tandem/events/t/p/9999999999999999') as EventKey, nowMs), true, 'beyond 2^53');
});

test('a failed read holds back that publisher\'s later events (not others\'), until a retry reads it', async () => {
  const feed = new TopicFeed('t');
  const sub = subscriber(feed, {});
  const values = new Map<string, string>();
  let failing = new Set<string>();
  const read = async (k: string) => {
    if (failing.has(k)) throw new Error('Consul did not answer');
    return values.get(k);
  };
  const keys = [key('a', NOW_US + 1), key('a', NOW_US + 2), key('a', NOW_US + 3), key('b', NOW_US + 1), key('b', NOW_US + 2)];
  for (const k of keys) values.set(k.key, stored(k));
  failing = new Set([keys[1]?.key as string]);
  await feed.sync(keys, read);
  await Promise.resolve();
  assert.deepEqual(sub.seqs(), ['a:1', 'b:1', 'b:2'], 'a:3 waits for a:2');
  assert.equal(feed.failedReads, 1);
  failing = new Set();
  await feed.sync(keys, read);
  assert.deepEqual(sub.seqs(), ['a:1', 'b:1', 'b:2', 'a:2', 'a:3']);
  assert.equal(feed.failedReads, 0);
  // Nothing twice, whatever is synced again.
  await feed.sync(keys, read);
  assert.equal(sub.got.length, 5);
});

test('forged or damaged values are never delivered and never read twice', async () => {
  const feed = new TopicFeed('t');
  const sub = subscriber(feed, {});
  const good = key('a', NOW_US + 1);
  const forged = key('a', NOW_US + 2);
  let reads = 0;
  const values = new Map([[good.key, stored(good)], [forged.key, encodeEvent('mallory', forged.seq, 1, 'x')]]);
  const read = async (k: string) => {
    reads++;
    return values.get(k);
  };
  assert.deepEqual((await feed.sync([good, forged], read)).rejected, [forged.key]);
  assert.deepEqual((await feed.sync([good, forged], read)).rejected, []);
  assert.equal(reads, 2);
  assert.deepEqual(sub.seqs(), ['a:1']);
});

test('a subscriber without cursor starts at the head: only later events reach it', async () => {
  const feed = new TopicFeed('t');
  const values = new Map<string, string>();
  const read = async (k: string) => values.get(k);
  const k1 = key('a', NOW_US + 1);
  values.set(k1.key, stored(k1));
  const early = subscriber(feed, {});
  await feed.sync([k1], read);
  const late = subscriber(feed);
  await Promise.resolve();
  assert.deepEqual(late.starts, [{ a: NOW_US + 1 }]);
  const k2 = key('a', NOW_US + 2);
  values.set(k2.key, stored(k2));
  await feed.sync([k1, k2], read);
  assert.deepEqual(early.seqs(), ['a:1', 'a:2']);
  assert.deepEqual(late.seqs(), ['a:2']);
  late.close();
  assert.equal(feed.size, 1);
});

/** A feed on a clock the test moves; values stored as the real publisher (or a forger) would. */
function clocked(startUs: number) {
  const clock = { nowUs: startUs };
  const feed = new TopicFeed('t', () => Math.floor(clock.nowUs / 1000));
  const values = new Map<string, string>();
  const keys: EventKey[] = [];
  const put = (publisher: string, seq: number, payload: unknown = seq - NOW_US) => {
    const k = key(publisher, seq);
    values.set(k.key, stored(k, payload));
    keys.push(k);
    return k;
  };
  const sync = () => feed.sync([...keys], async (k) => values.get(k));
  return { clock, feed, put, sync, keys };
}

test('a subscriber from now gets every event published after it subscribed, however late the topic loads', async () => {
  const f = clocked(NOW_US);
  f.put('a', NOW_US - 2000, 'before');
  // Subscribed at NOW_US; the topic loads only with Consul's first answer, 250 ms later, which
  // already lists an event published 100 ms after the subscription: that event is the subscriber's.
  const sub = subscriber(f.feed);
  f.clock.nowUs = NOW_US + 250_000;
  f.put('a', NOW_US + 100_000, 'after');
  await f.sync();
  assert.deepEqual(sub.starts, [{ a: NOW_US - 2000 }]);
  assert.deepEqual(sub.got.map((e) => e.payload), ['after']);
  // Once loaded, a subscriber from now starts at what is listed: nothing already listed reaches it.
  const late = subscriber(f.feed);
  await Promise.resolve();
  assert.deepEqual(late.starts, [{ a: NOW_US + 100_000 }]);
  f.clock.nowUs = NOW_US + 300_000;
  f.put('a', NOW_US + 300_000, 'later');
  await f.sync();
  assert.deepEqual(sub.got.map((e) => e.payload), ['after', 'later']);
  assert.deepEqual(late.got.map((e) => e.payload), ['later']);
});

test('a forged key a little ahead waits for its time: the real publisher\'s events before and after it are all delivered', async () => {
  const f = clocked(NOW_US);
  const sub = subscriber(f.feed, {});
  f.put('a', NOW_US - 1000, 'real-1');
  assert.deepEqual((await f.sync()).nextDueMs, undefined);
  // The forger: a's key 4 s ahead (within the skew allowance), with a value that matches it.
  f.put('a', NOW_US + 4_000_000, 'FORGED');
  assert.deepEqual(await f.sync(), { rejected: [], ahead: [], nextDueMs: (NOW_US + 4_000_000) / 1000 });
  // The real publisher goes on: its seqs are below the forged one until 4 s have passed.
  for (const dt of [1_000_000, 2_000_000, 3_999_000]) {
    f.clock.nowUs = NOW_US + dt;
    f.put('a', NOW_US + dt, `real+${dt / 1000}ms`);
    await f.sync();
  }
  assert.deepEqual(sub.got.map((e) => e.payload), ['real-1', 'real+1000ms', 'real+2000ms', 'real+3999ms'], 'the forged key has not moved the cursor');
  f.clock.nowUs = NOW_US + 4_000_000;
  await f.sync();
  f.clock.nowUs = NOW_US + 4_500_000;
  f.put('a', NOW_US + 4_500_000, 'real+4500ms');
  await f.sync();
  // Impersonation cannot be prevented without signatures; silencing can: nothing real is lost.
  assert.deepEqual(sub.got.map((e) => e.payload), ['real-1', 'real+1000ms', 'real+2000ms', 'real+3999ms', 'FORGED', 'real+4500ms']);
});

test('a key too far ahead when first seen is never delivered, not even once the clock reaches it; a subscriber from now starts below keys still ahead', async () => {
  const f = clocked(NOW_US);
  const sub = subscriber(f.feed, {});
  const forged = f.put('a', NOW_US + 50_000_000, 'FORGED');
  const r = await f.sync();
  assert.deepEqual(r.ahead.map((k) => k.key), [forged.key], 'reported once, for the bus to delete');
  f.clock.nowUs = NOW_US + 1_000_000;
  f.put('a', NOW_US + 1_000_000, 'real');
  assert.deepEqual((await f.sync()).ahead, []);
  f.clock.nowUs = NOW_US + 60_000_000;
  f.put('a', NOW_US + 60_000_000, 'real later');
  await f.sync();
  assert.deepEqual(sub.got.map((e) => e.payload), ['real', 'real later'], 'judged against when it was first seen, not against now');

  // A key 3 s ahead is not "now" yet: a subscriber from now starts below it, and gets it when due.
  const g = clocked(NOW_US);
  g.put('b', NOW_US - 1000, 'old');
  g.put('b', NOW_US + 3_000_000, 'soon');
  await g.sync();
  const late = subscriber(g.feed);
  await Promise.resolve();
  assert.deepEqual(late.starts, [{ b: NOW_US - 1000 }]);
  g.clock.nowUs = NOW_US + 3_000_000;
  await g.sync();
  assert.deepEqual(late.got.map((e) => e.payload), ['soon']);
});

test('publish fails with 409 TANDEM_ERR_EVENT_NOT_STORED when the CAS write stores nothing (stubbed Consul)', async () => {
  const puts: { key: string; cas: number | undefined; token: string | undefined }[] = [];
  let answer = false;
  const consul = {
    kvPut: async (k: string, _v: string, o: { cas?: number }, call?: { token?: string }) => {
      puts.push({ key: k, cas: o.cas, token: call?.token });
      return answer;
    },
  } as unknown as ConsulClient;
  const bus = new EventBus({ consul, logger: pino({ level: 'silent' }), retentionMs: 60_000, waitMs: 1000, maxBackoffMs: 1000 });
  bus.start('pub-1');
  await assert.rejects(bus.publish('orders', { n: 1 }, { token: 'caller' }), (err: { code: string; statusCode: number }) => err.code === 'TANDEM_ERR_EVENT_NOT_STORED' && err.statusCode === 409);
  assert.equal(puts[0]?.cas, 0);
  assert.equal(puts[0]?.token, 'caller', "the caller's credentials");
  answer = true;
  const e = await bus.publish('orders', { n: 2 });
  assert.ok(e.seq > (parseEventKey(puts[0]?.key ?? '')?.seq ?? Infinity), 'seqs keep increasing');
  assert.throws(() => bus.publish('..', {}), (err: { code: string }) => err.code === 'TANDEM_ERR_INVALID_TOPIC');
  bus.close();
});

/**
 * Consul for the event bus, in memory: the key listing blocks (index > 0) until a write; `hold('listing')`
 * keeps every listing from answering, `hold('reads')` every value read, until the function it returns is called.
 */
function memoryConsul() {
  const values = new Map<string, string>();
  let index = 1;
  const wake: (() => void)[] = [];
  const gates: { listing?: Promise<void>; reads?: Promise<void> } = {};
  const listed: string[][] = [];
  const changed = () => {
    index++;
    for (const w of wake.splice(0)) w();
  };
  return {
    budget: new ConnectionBudget({ capacity: 8, reserved: 4 }),
    listed,
    async kvKeys(prefix: string, q: { index: number }) {
      await gates.listing;
      if (q.index >= index) await new Promise<void>((r) => wake.push(r));
      const value = [...values.keys()].filter((k) => k.startsWith(prefix)).sort();
      listed.push(value);
      return { index, knownLeader: true, lastContactMs: 0, value };
    },
    async kvGet(key: string) {
      await gates.reads;
      const v = values.get(key);
      return { index, knownLeader: true, lastContactMs: 0, value: v === undefined ? undefined : { key, value: v } };
    },
    async kvPut(key: string, value: string) {
      if (values.has(key)) return false;
      values.set(key, value);
      changed();
      return true;
    },
    async kvDelete(key: string) {
      values.delete(key);
      changed();
    },
    hold(what: 'listing' | 'reads'): () => void {
      let open: () => void = () => undefined;
      gates[what] = new Promise<void>((r) => {
        open = r;
      });
      return () => {
        delete gates[what];
        open();
      };
    },
  };
}

async function until(what: string, cond: () => boolean, ms = 2000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`still waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 2));
  }
}

function busOn(consul: ReturnType<typeof memoryConsul>, id: string): EventBus {
  const bus = new EventBus({ consul: consul as unknown as ConsulClient, logger: pino({ level: 'silent' }), retentionMs: 60_000, waitMs: 60_000, maxBackoffMs: 1000 });
  bus.start(id);
  return bus;
}

function busSubscriber(bus: EventBus, topic: string) {
  const got: unknown[] = [];
  const starts: Cursor[] = [];
  const sub = bus.subscribe(topic, undefined, { start: (c) => starts.push(c), event: (e) => got.push(e.payload) });
  return { got, starts, sub };
}

test('an event published after subscribe reaches the subscriber when Consul answers the first listing late', async () => {
  const consul = memoryConsul();
  const bus = busOn(consul, 'pub-1');
  const release = consul.hold('listing');
  const s = busSubscriber(bus, 'orders');
  await bus.publish('orders', { n: 1 });
  release();
  await until('the subscriber started', () => s.starts.length === 1);
  await until('the event delivered', () => s.got.length === 1, 500).catch(() => undefined);
  assert.deepEqual(s.starts, [{}], 'nothing was listed before the subscription');
  assert.deepEqual(s.got, [{ n: 1 }]);
  bus.close();
});

test('a subscriber of a new topic gets what is published while the bus is still reading another topic', async () => {
  const consul = memoryConsul();
  const bus = busOn(consul, 'pub-1');
  for (let i = 0; i < 3; i++) await bus.publish('backlog', { i });
  const t = Date.now();
  await until('a later millisecond than the backlog', () => Date.now() > t);
  const busy = busSubscriber(bus, 'backlog');
  // The backlog's reads hang (a slow Consul): the bus's one sync is busy with them.
  const releaseReads = consul.hold('reads');
  await until('the first listing', () => consul.listed.length >= 1);
  const s = busSubscriber(bus, 'orders');
  await bus.publish('orders', { n: 1 });
  // The listing with that event arrives while the backlog sync still waits; then the reads answer.
  await until('the listing with the new event', () => consul.listed.some((l) => l.some((k) => k.includes('/orders/'))));
  releaseReads();
  await until('both subscribers started', () => busy.starts.length === 1 && s.starts.length === 1);
  await until('the event delivered', () => s.got.length === 1, 500).catch(() => undefined);
  assert.deepEqual(s.got, [{ n: 1 }]);
  assert.deepEqual(busy.got, [], 'the backlog was published before its subscriber came');
  bus.close();
});
