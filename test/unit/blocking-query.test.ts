// The blocking-query engine and the connection budget with a fake fetch: index rules, backoff, cancellation, first-answer bound, admission.
import assert from 'node:assert/strict';
import { test, type TestContext } from 'node:test';
import { BlockingQuery, type BlockingFetch, type BlockingResult } from '../../src/consul/blocking-query.ts';
import { ConnectionBudget } from '../../src/consul/connection-budget.ts';
import { ConsulBudgetExhaustedError } from '../../src/consul/errors.ts';
import { eventually } from '../support/consul.ts';

interface Call {
  index: number;
  at: number;
  signal: AbortSignal;
  answer: (r: Partial<BlockingResult<string>> & { index: number }) => void;
  fail: (err: Error) => void;
}

/** A fetch whose every call waits for the test to answer it (or for its signal to abort it). */
function fakeFetch(): { fetch: BlockingFetch<string>; calls: Call[] } {
  const calls: Call[] = [];
  const fetch: BlockingFetch<string> = (q) =>
    new Promise((resolve, reject) => {
      q.signal.addEventListener('abort', () => reject(new Error('aborted')), { once: true });
      calls.push({
        index: q.index,
        at: Date.now(),
        signal: q.signal,
        answer: (r) => resolve({ knownLeader: true, lastContactMs: 0, value: 'v', ...r }),
        fail: reject,
      });
    });
  return { fetch, calls };
}

function query(fetch: BlockingFetch<string>, budget = new ConnectionBudget({ capacity: 4, reserved: 1 }), extra: Partial<ConstructorParameters<typeof BlockingQuery<string>>[0]> = {}): BlockingQuery<string> {
  return new BlockingQuery<string>({ name: 'test', fetch, waitMs: 1000, maxBackoffMs: 100, budget, kind: 'shared', ...extra });
}

const nth = (calls: Call[], n: number) => eventually(() => calls[n], `call #${n + 1}`, 3000);

test('the index follows the answers, is never below 1, and starts over at 0 when it goes backwards', async () => {
  const { fetch, calls } = fakeFetch();
  const q = query(fetch);
  const seen: string[] = [];
  const stop = q.subscribe((v) => seen.push(v));
  (await nth(calls, 0)).answer({ index: 0, value: 'a' });
  assert.equal((await nth(calls, 1)).index, 1, 'an answer with index 0 is blocked on as 1');
  calls[1]?.answer({ index: 50, value: 'b' });
  assert.equal((await nth(calls, 2)).index, 50);
  calls[2]?.answer({ index: 20, value: 'c' });
  assert.equal((await nth(calls, 3)).index, 0, 'backwards: the next read is an immediate one');
  calls[3]?.answer({ index: 21, value: 'd' });
  assert.equal((await nth(calls, 4)).index, 21);
  assert.deepEqual(seen, ['a', 'b', 'c', 'd']);
  calls[4]?.fail(new Error('agent restarted'));
  assert.equal((await nth(calls, 5)).index, 0, 'after an error: an immediate read (the agent may have come back with a lower index)');
  stop();
  q.close();
  assert.equal(calls[5]?.signal.aborted, false, 'neither leaving nor close() cuts the request in flight');
  calls[5]?.answer({ index: 30 });
  await new Promise((r) => setTimeout(r, 30));
  assert.equal(calls.length, 6, 'and nothing is asked after it');
});

test('errors back off with a growing, capped, jittered delay, and are reported once per run', async () => {
  const { fetch, calls } = fakeFetch();
  const failing: boolean[] = [];
  const q = query(fetch, undefined, { maxBackoffMs: 400, onFailing: (f) => failing.push(f) });
  const stop = q.subscribe(() => undefined);
  for (let i = 0; i < 4; i++) (await nth(calls, i)).fail(new Error('refused'));
  const last = await nth(calls, 4);
  const gaps = [1, 2, 3, 4].map((i) => (calls[i] as Call).at - (calls[i - 1] as Call).at);
  // Retry n waits in [cap/2, cap] with cap = min(200 × 2^(n-1), 400): ≥ 100, 200, 200, 200 ms.
  assert.ok((gaps[0] as number) >= 95, `first retry after ${gaps[0]} ms`);
  assert.ok((gaps[1] as number) >= 195, `second retry after ${gaps[1]} ms`);
  // Uncapped, the fourth retry would wait 800–1600 ms; the margin is for timers late on a busy machine.
  assert.ok(gaps.every((g) => g <= 700), `capped: ${gaps.join(', ')}`);
  assert.equal(q.state().consecutiveErrors, 4);
  last.answer({ index: 7 });
  await eventually(() => q.state().consecutiveErrors === 0, 'recovered');
  assert.deepEqual(failing, [true, false]);
  stop();
});

test('a subscriber leaving lets the read in flight end (no dropped connection for Consul to hold), then gives the lease back', async () => {
  const budget = new ConnectionBudget({ capacity: 2, reserved: 0 });
  const { fetch, calls } = fakeFetch();
  const q = query(fetch, budget);
  const stop = q.subscribe(() => undefined);
  (await nth(calls, 0)).answer({ index: 5 });
  const blocking = await nth(calls, 1);
  assert.equal(blocking.index, 5);
  assert.equal(budget.snapshot().inUse, 1);
  stop();
  assert.equal(blocking.signal.aborted, false, 'the blocking request is not cut');
  assert.equal(budget.snapshot().inUse, 1, 'its connection still counts until it ends');
  // Open-and-close churn reuses the running loop: no new lease, no new request.
  for (let i = 0; i < 50; i++) q.subscribe(() => undefined)();
  assert.equal(budget.snapshot().inUse, 1);
  assert.equal(calls.length, 2);
  blocking.answer({ index: 6 });
  await eventually(() => budget.snapshot().inUse === 0, 'the lease back once the request ended');
  await new Promise((r) => setTimeout(r, 50));
  assert.equal(calls.length, 2, 'no further read');
  // It can start again later, with a fresh loop.
  const again = q.subscribe(() => undefined);
  assert.equal((await nth(calls, 2)).index, 6);
  assert.equal(budget.snapshot().inUse, 1);
  again();
  q.close();
  (await nth(calls, 2)).answer({ index: 7 });
  await eventually(() => budget.snapshot().inUse === 0, 'the lease back once its last request ended');
});

test('first() is bounded: TANDEM_ERR_CATALOG_UNAVAILABLE after its timeout, the value once there is one', async () => {
  const { fetch, calls } = fakeFetch();
  const q = query(fetch);
  const stop = q.subscribe(() => undefined);
  const started = Date.now();
  await assert.rejects(q.first(80), { code: 'TANDEM_ERR_CATALOG_UNAVAILABLE' });
  assert.ok(Date.now() - started >= 75);
  const waiting = q.first(1000);
  (await nth(calls, 0)).answer({ index: 3, value: 'here' });
  assert.equal(await waiting, 'here');
  assert.equal(await q.first(1), 'here', 'at once when there is a value');
  stop();
});

test('requery() asks again with an immediate read after the delay', async () => {
  const { fetch, calls } = fakeFetch();
  const q = query(fetch);
  let asked = false;
  const stop = q.subscribe(() => {
    if (!asked) q.requery(60);
    asked = true;
  });
  (await nth(calls, 0)).answer({ index: 9 });
  const second = await nth(calls, 1);
  assert.equal(second.index, 0);
  assert.ok(second.at - (calls[0] as Call).at >= 55, 'after the delay');
  stop();
});

test('the budget refuses a query with ConsulBudgetExhaustedError (503, its own code) and counts the refusal', async () => {
  const budget = new ConnectionBudget({ capacity: 1, reserved: 0 });
  const { fetch, calls } = fakeFetch();
  const a = query(fetch, budget);
  const b = query(fetch, budget);
  const stop = a.subscribe(() => undefined);
  assert.throws(
    () => b.subscribe(() => undefined),
    (err: unknown) => err instanceof ConsulBudgetExhaustedError && err.code === 'TANDEM_ERR_CONSUL_BUDGET_EXHAUSTED' && err.statusCode === 503,
  );
  assert.equal(budget.snapshot().refused, 1);
  assert.equal(b.listenerCount, 0, 'a refused subscriber is not kept');
  stop();
  // Its request in flight still holds the room until it ends.
  assert.throws(() => b.subscribe(() => undefined), ConsulBudgetExhaustedError);
  (await nth(calls, 0)).answer({ index: 2 });
  await eventually(() => budget.snapshot().inUse === 0, 'the first one ended');
  const again = b.subscribe(() => undefined);
  again();
  b.close();
  a.close();
});

test('shared leases cannot take the reserved room; reserved ones may use all of it', () => {
  const budget = new ConnectionBudget({ capacity: 4, reserved: 2 });
  const shared = [budget.tryAcquire('shared', 's1'), budget.tryAcquire('shared', 's2')];
  assert.ok(shared.every((l) => l !== undefined));
  assert.equal(budget.tryAcquire('shared', 's3'), undefined, 'the last two are reserved');
  assert.equal(budget.sharedFree, 0);
  const reserved = [budget.tryAcquire('reserved', 'r1'), budget.tryAcquire('reserved', 'r2')];
  assert.ok(reserved.every((l) => l !== undefined));
  assert.equal(budget.tryAcquire('reserved', 'r3'), undefined, 'capacity is a hard bound for everyone');
  assert.deepEqual(budget.snapshot().byKind, { reserved: 2, shared: 2 });
  shared[0]?.release();
  shared[0]?.release();
  assert.equal(budget.snapshot().inUse, 3, 'release is idempotent');
  // Reserved leases beyond the reservation eat into shared room, never the other way round.
  assert.ok(budget.tryAcquire('reserved', 'r3'));
  assert.equal(budget.tryAcquire('shared', 's4'), undefined);
  assert.throws(() => new ConnectionBudget({ capacity: 2, reserved: 3 }), RangeError);
});

// Lifetimes: when the loop stops, restarts, backs off and gives up its lease. Timers are mocked where a test
// reads delays, so it checks them to the millisecond and does not depend on how busy the machine is.

/** Lets every queued microtask and I/O callback run (setImmediate is never mocked here). */
const flush = async (rounds = 3) => {
  for (let i = 0; i < rounds; i++) await new Promise((r) => setImmediate(r));
};

/** Mocked timers, Date, and performance.now (the backoff's monotonic clock) following the mocked Date. */
function mockClock(t: TestContext): void {
  t.mock.timers.enable({ apis: ['setTimeout', 'Date'], now: 0 });
  t.mock.method(performance, 'now', () => Date.now());
}

/** The budget, counting the leases it gave out. */
function countingBudget(capacity = 2): { budget: ConnectionBudget; acquired: () => number } {
  const budget = new ConnectionBudget({ capacity, reserved: 0 });
  let n = 0;
  const tryAcquire = budget.tryAcquire.bind(budget);
  budget.tryAcquire = (kind, owner) => {
    n++;
    return tryAcquire(kind, owner);
  };
  return { budget, acquired: () => n };
}

test('a subscriber arriving as the loop ends (after its last check, before the lease went back) starts it again', async () => {
  const { budget, acquired } = countingBudget(1);
  const { fetch, calls } = fakeFetch();
  const q = query(fetch, budget);
  q.subscribe(() => undefined)();
  const seen: string[] = [];
  // first() wakes inside the loop's last pass; its continuation runs after the loop returned, before its cleanup.
  const resubscribed = q.first(1000).then(() => q.subscribe((v) => seen.push(v)));
  (await nth(calls, 0)).answer({ index: 4, value: 'x' });
  const stop = await resubscribed;
  const next = await nth(calls, 1);
  assert.equal(next.index, 4, 'a fresh loop, blocking on the index it had');
  assert.equal(acquired(), 2, 'with a lease of its own: the old one went back');
  assert.equal(budget.snapshot().inUse, 1);
  assert.equal(q.state().running, true);
  await flush();
  assert.deepEqual(seen, ['x'], 'the new subscriber got the current value');
  next.answer({ index: 5, value: 'y' });
  await eventually(() => seen.length === 2, 'the next answer');
  stop();
  (await nth(calls, 2)).answer({ index: 6 });
  await eventually(() => budget.snapshot().inUse === 0, 'the lease back');
  assert.equal(q.state().running, false);
});

test('the last subscriber leaving during a backoff ends it at once: no further read, the lease back', async () => {
  const { budget } = countingBudget();
  const { fetch, calls } = fakeFetch();
  const q = query(fetch, budget, { maxBackoffMs: 60_000 });
  const stop = q.subscribe(() => undefined);
  (await nth(calls, 0)).fail(new Error('refused'));
  await flush();
  assert.equal(q.state().running, true, 'backing off');
  stop();
  await flush();
  assert.equal(budget.snapshot().inUse, 0, 'given back without waiting out the backoff');
  assert.equal(q.state().running, false);
  await new Promise((r) => setTimeout(r, 300));
  assert.equal(calls.length, 1, 'and nothing asked after it');
});

test('a read that fails after the last subscriber left ends the loop without a backoff', async () => {
  const { budget } = countingBudget();
  const { fetch, calls } = fakeFetch();
  const q = query(fetch, budget);
  const stop = q.subscribe(() => undefined);
  (await nth(calls, 0)).answer({ index: 3 });
  const blocking = await nth(calls, 1);
  stop();
  blocking.fail(new Error('socket hang up'));
  await flush();
  assert.equal(budget.snapshot().inUse, 0);
  assert.equal(calls.length, 2);
});

test('close() during a backoff ends the loop at once and refuses new subscribers', async () => {
  const { budget } = countingBudget();
  const { fetch, calls } = fakeFetch();
  const q = query(fetch, budget, { maxBackoffMs: 60_000 });
  q.subscribe(() => undefined);
  (await nth(calls, 0)).fail(new Error('refused'));
  await flush();
  q.close();
  await flush();
  assert.equal(budget.snapshot().inUse, 0);
  assert.equal(q.listenerCount, 0);
  assert.throws(() => q.subscribe(() => undefined), /is closed/);
});

test('after an error the next read is immediate, and the index it answers with is used even when lower (the agent came back)', async () => {
  const { fetch, calls } = fakeFetch();
  const q = query(fetch);
  const stop = q.subscribe(() => undefined);
  (await nth(calls, 0)).answer({ index: 50 });
  (await nth(calls, 1)).fail(new Error('agent restarting'));
  const immediate = await nth(calls, 2);
  assert.equal(immediate.index, 0);
  assert.equal(q.state().index, 0);
  immediate.fail(new Error('still restarting'));
  assert.equal((await nth(calls, 3)).index, 0, 'an error on an immediate read keeps it immediate');
  calls[3]?.answer({ index: 10 });
  assert.equal((await nth(calls, 4)).index, 10, 'blocks on the new agent’s index, not the old 50');
  calls[4]?.answer({ index: 0 });
  assert.equal((await nth(calls, 5)).index, 0, 'backwards (to 0): an immediate read');
  calls[5]?.answer({ index: 0 });
  assert.equal((await nth(calls, 6)).index, 1, 'from 0, never blocking on an index below 1');
  stop();
  calls[6]?.answer({ index: 11 });
});

test('backoff, to the millisecond with the jitter pinned: ×2 from 200 ms, capped, started over after an answer', async (t) => {
  mockClock(t);
  t.mock.method(Math, 'random', () => 0); // the lower bound: half the cap
  const { fetch, calls } = fakeFetch();
  const failing: boolean[] = [];
  const q = query(fetch, undefined, { maxBackoffMs: 1000, onFailing: (f) => failing.push(f) });
  const stop = q.subscribe(() => undefined);
  /** Fails read #n and checks the next one comes exactly `ms` later. */
  const failThenWait = async (n: number, ms: number) => {
    (calls[n] as Call).fail(new Error('refused'));
    await flush();
    t.mock.timers.tick(ms - 1);
    await flush();
    assert.equal(calls.length, n + 1, `read #${n + 2} not before ${ms} ms`);
    t.mock.timers.tick(1);
    await flush();
    assert.equal(calls.length, n + 2, `read #${n + 2} after ${ms} ms`);
  };
  await flush();
  // caps 200, 400, 800, then maxBackoffMs: waits of half of each.
  const waits = [100, 200, 400, 500, 500];
  for (const [i, ms] of waits.entries()) await failThenWait(i, ms);
  assert.equal(q.state().consecutiveErrors, 5);
  (calls[5] as Call).answer({ index: 8 });
  await flush();
  assert.equal(q.state().consecutiveErrors, 0);
  await failThenWait(6, 100);
  assert.deepEqual(failing, [true, false, true], 'each run of failures reported once, and its end');
  stop();
  (calls[7] as Call).answer({ index: 9 });
  await flush();
});

test('a subscriber leaving and another arriving during a backoff do not cut it short (churn during an outage is no retry storm)', async (t) => {
  mockClock(t);
  t.mock.method(Math, 'random', () => 0);
  const budget = new ConnectionBudget({ capacity: 2, reserved: 0 });
  const { fetch, calls } = fakeFetch();
  const q = query(fetch, budget, { maxBackoffMs: 10_000 });
  let stop = q.subscribe(() => undefined);
  await flush();
  for (let i = 0; i < 3; i++) {
    (calls[i] as Call).fail(new Error('refused'));
    await flush();
    if (i < 2) {
      t.mock.timers.tick([100, 200][i] as number);
      await flush();
    }
  }
  // Backing off 400 ms after the third failure. Churn: in the same tick, and with the loop ended in between.
  t.mock.timers.tick(100);
  stop();
  stop = q.subscribe(() => undefined);
  await flush();
  assert.equal(calls.length, 3, 'leave and join in one tick: still backing off');
  stop();
  await flush();
  assert.equal(budget.snapshot().inUse, 0, 'the loop ended');
  stop = q.subscribe(() => undefined);
  await flush();
  assert.equal(calls.length, 3, 'a new loop waits out what is left of the backoff too');
  t.mock.timers.tick(299);
  await flush();
  assert.equal(calls.length, 3);
  t.mock.timers.tick(1);
  await flush();
  assert.equal(calls.length, 4, 'the retry comes when the backoff ends');
  stop();
  (calls[3] as Call).answer({ index: 2 });
  await flush();
});

test('first(): rejected exactly at its timeout, at once when the last subscriber leaves, and resolved by a later answer otherwise', async (t) => {
  mockClock(t);
  const { fetch, calls } = fakeFetch();
  const q = query(fetch);
  const stop = q.subscribe(() => undefined);
  let outcome: unknown;
  q.first(500).then(
    () => (outcome = 'resolved'),
    (err: { code?: string }) => (outcome = err.code),
  );
  t.mock.timers.tick(499);
  await flush();
  assert.equal(outcome, undefined);
  t.mock.timers.tick(1);
  await flush();
  assert.equal(outcome, 'TANDEM_ERR_CATALOG_UNAVAILABLE');
  let early: unknown;
  q.first(60_000).catch((err: { code?: string }) => (early = err.code));
  stop();
  await flush();
  assert.equal(early, 'TANDEM_ERR_CATALOG_UNAVAILABLE', 'nobody listens any more: no answer is coming for it');
  const again = q.subscribe(() => undefined);
  const later = q.first(60_000);
  (calls[0] as Call).answer({ index: 2, value: 'late' });
  assert.equal(await later, 'late');
  again();
  (calls[1] as Call).answer({ index: 3 });
  await flush();
});
