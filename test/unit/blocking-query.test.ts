// The blocking-query engine and the connection budget with a fake fetch: index rules, backoff, cancellation, first-answer bound, admission.
import assert from 'node:assert/strict';
import { test } from 'node:test';
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
