// The try loop of one request with fakes: which instance each try goes to, when it stops, and what the client gets.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { Picked, PickOptions } from '../../src/proxy/balancing/balancer.ts';
import type { Endpoint } from '../../src/proxy/endpoint-source.ts';
import { Subset } from '../../src/proxy/endpoint-set.ts';
import type { AttemptResult } from '../../src/proxy/engine/exchange.ts';
import { NoHealthyInstanceError } from '../../src/proxy/errors.ts';
import { runFailover, type FailoverDeps, type FailoverRequest } from '../../src/proxy/failover.ts';

function endpoint(id: string, healthy = true): Endpoint {
  return { id, service: 'svc', address: '127.0.0.1', port: 1, version: '1.0.0', semver: null, node: 'n', healthy };
}

const REFUSED: AttemptResult = { kind: 'failed', reason: 'ECONNREFUSED', timeout: false, unsent: true };
const RESET: AttemptResult = { kind: 'failed', reason: 'ECONNRESET', timeout: false, unsent: false };
const TIMEOUT: AttemptResult = { kind: 'failed', reason: 'no response', timeout: true, unsent: false };
const held503: AttemptResult = { kind: 'failed', reason: 'answered 503', timeout: false, unsent: false, status: 503, held: { status: 503, reason: 'Service Unavailable', lines: 'retry-after: 7\r\n', framing: 'length', body: Buffer.from('busy') } };
const OK: AttemptResult = { kind: 'done', status: 200 };

/** A fake world: instances answer from a script (per id, one result per try); the clock moves only when told. */
function world(members: Endpoint[], script: Record<string, AttemptResult[]>) {
  const tries: string[] = [];
  const reports: string[] = [];
  const retriesLeft = 10;
  let now = 1000;
  const deps: FailoverDeps = {
    retries: 2,
    retryStatuses: new Set([502, 503, 504]),
    upstreamTimeoutMs: 500,
    now: () => now,
    // First healthy instance not excluded, in order (a deterministic round-robin stand-in).
    acquire: async (subset: Subset, opts: PickOptions): Promise<Picked | undefined> => {
      const e = subset.healthy.find((x) => !opts.exclude?.has(x.id));
      return e ? { endpoint: e, moved: false } : undefined;
    },
    begin: () => () => undefined,
    budget: { request: () => undefined, tryRetry: () => true, hasRoom: () => retriesLeft > 0 },
    report: (e, outcome) => reports.push(`${e.id}:${outcome}`),
    learn: () => undefined,
    retried: () => undefined,
    budgetExhausted: () => undefined,
  };
  let attempt: FailoverRequest['attempt'] = async (e, _picked, _remaining, retryStatuses) => {
    tries.push(retryStatuses ? `${e.id}+hold` : e.id);
    const r = script[e.id]?.shift() ?? OK;
    // A held answer only comes back as a failure when the loop asked to hold it back.
    if (r.kind === 'failed' && r.held && !retryStatuses) return { kind: 'done', status: r.held.status };
    return r;
  };
  const request = (r: Partial<FailoverRequest> = {}): FailoverRequest => ({
    service: 'svc',
    subset: new Subset(members),
    pin: undefined,
    stickyId: undefined,
    deadline: now + 1000,
    budgetMs: 1000,
    replayable: true,
    idempotent: true,
    refused: new Set(),
    noneToPick: () => new NoHealthyInstanceError('svc', undefined, [], []),
    attempt: (e, picked, remaining, statuses) => attempt(e, picked, remaining, statuses),
    ...r,
  });
  return {
    deps,
    request,
    tries,
    reports,
    advance: (ms: number) => (now += ms),
    setAttempt: (f: FailoverRequest['attempt']) => (attempt = f),
  };
}

test('a refused connection fails over to the next instance; the failure is reported, the success too', async () => {
  const w = world([endpoint('a'), endpoint('b')], { a: [REFUSED] });
  const r = await runFailover(w.deps, w.request());
  assert.deepEqual(r, { kind: 'answered', outcome: 'retried', tries: 2, instance: 'b' });
  assert.deepEqual(w.tries, ['a+hold', 'b']);
  assert.deepEqual(w.reports, ['a:failure', 'b:success']);
});

test('a non-idempotent request is retried only when it never reached the app', async () => {
  const refused = world([endpoint('a'), endpoint('b')], { a: [REFUSED] });
  assert.equal((await runFailover(refused.deps, refused.request({ idempotent: false }))).kind, 'answered');
  assert.deepEqual(refused.tries, ['a', 'b']);
  const reset = world([endpoint('a'), endpoint('b')], { a: [RESET] });
  const r = await runFailover(reset.deps, reset.request({ idempotent: false }));
  assert.equal(r.kind, 'error');
  assert.equal(r.kind === 'error' && r.error.code, 'TANDEM_ERR_UPSTREAM_FAILED');
  assert.deepEqual(reset.tries, ['a'], 'a POST that may have reached the app is not sent twice');
});

test('a streamed body (not replayable) is never sent twice, even when unsent is unknown', async () => {
  const w = world([endpoint('a'), endpoint('b')], { a: [RESET] });
  const r = await runFailover(w.deps, w.request({ replayable: false }));
  assert.equal(r.kind, 'error');
  assert.deepEqual(w.tries, ['a']);
});

test('every instance failing: 1 + retries tries on distinct instances, then the last reason', async () => {
  const w = world([endpoint('a'), endpoint('b'), endpoint('c'), endpoint('d')], { a: [RESET], b: [RESET], c: [RESET] });
  const r = await runFailover(w.deps, w.request());
  assert.deepEqual(w.tries, ['a+hold', 'b+hold', 'c']);
  assert.equal(r.kind === 'error' && r.error.message, "'svc' failed after 3 tries: last try ECONNRESET");
});

test('a retryable status is held back while another instance can take the retry, and passed on from the last one', async () => {
  const w = world([endpoint('a'), endpoint('b')], { a: [held503], b: [held503] });
  const r = await runFailover(w.deps, w.request());
  // b is the last candidate: not asked to hold, so its 503 goes to the client as it is.
  assert.deepEqual(w.tries, ['a+hold', 'b']);
  assert.deepEqual(r, { kind: 'answered', outcome: 'failed', tries: 2, instance: 'b' });
  assert.deepEqual(w.reports, ['a:failure', 'b:failure']);
});

test('when the retry budget runs out after a held answer, that answer is what the client gets', async () => {
  const w = world([endpoint('a'), endpoint('b')], { a: [held503] });
  // The budget had room when a was tried (so its 503 was held back), then refuses the retry itself.
  w.deps.budget.tryRetry = () => false;
  const r = await runFailover(w.deps, w.request());
  assert.equal(r.kind, 'held');
  assert.equal(r.kind === 'held' && r.endpoint.id, 'a');
  assert.equal(r.kind === 'held' && r.held.status, 503);
});

test('a pinned instance is tried alone; its failure is the answer', async () => {
  const w = world([endpoint('a'), endpoint('b')], { b: [RESET] });
  const r = await runFailover(w.deps, w.request({ pin: 'b' }));
  assert.deepEqual(w.tries, ['b']);
  assert.equal(r.kind, 'error');
  const missing = world([endpoint('a')], {});
  await assert.rejects(runFailover(missing.deps, missing.request({ pin: 'zz' })), { code: 'TANDEM_ERR_INSTANCE_NOT_FOUND' });
});

test('no retry starts after the deadline; a timeout at the deadline is not blamed on the instance', async () => {
  const w = world([endpoint('a'), endpoint('b')], {});
  w.setAttempt(async (e) => {
    w.tries.push(e.id);
    w.advance(1500);
    return TIMEOUT;
  });
  const r = await runFailover(w.deps, w.request());
  assert.deepEqual(w.tries, ['a']);
  assert.equal(r.kind === 'error' && r.error.code, 'TANDEM_ERR_UPSTREAM_TIMEOUT');
  assert.deepEqual(w.reports, [], 'cut by the caller’s own deadline: says nothing about the instance');
});

test('control-plane instances are never picked; nothing healthy is the noneToPick error', async () => {
  const w = world([endpoint('a'), endpoint('b')], {});
  const r = await runFailover(w.deps, w.request({ refused: new Set(['a']) }));
  assert.deepEqual(w.tries, ['b'], 'b is the only candidate: nothing to hold its answer back for');
  assert.equal(r.kind, 'answered');
  const none = world([endpoint('a', false)], {});
  const e = await runFailover(none.deps, none.request());
  assert.equal(e.kind === 'error' && e.error.code, 'TANDEM_ERR_NO_HEALTHY_INSTANCE');
});

test('a client that left ends the loop at once (aborted, nothing reported)', async () => {
  const w = world([endpoint('a'), endpoint('b')], { a: [{ kind: 'aborted' }] });
  const r = await runFailover(w.deps, w.request());
  assert.deepEqual(r, { kind: 'answered', outcome: 'aborted', tries: 1, instance: 'a' });
  assert.deepEqual(w.reports, []);
});
