// The try loop of one request: which instance next, when to stop (deadline, retry budget, nothing left), what the client gets.
import type { Picked, PickOptions } from './balancing/balancer.ts';
import type { Endpoint } from './endpoint-source.ts';
import type { Subset } from './endpoint-set.ts';
import type { AttemptResult, HeldResponse } from './engine/exchange.ts';
import { ControlPlaneError, InstanceNotFoundError, UpstreamFailedError, UpstreamTimeoutError, type TandemError } from './errors.ts';

/** What the loop needs from the proxy; each a narrow function so tests can drive it with fakes. */
export interface FailoverDeps {
  retries: number;
  retryStatuses: ReadonlySet<number>;
  upstreamTimeoutMs: number;
  now: () => number;
  acquire(subset: Subset, opts: PickOptions, maxWaitMs: number): Picked | undefined | Promise<Picked | undefined>;
  /** Counts an instance in flight until the returned function is called (true: a latency sample). */
  begin(e: Endpoint): (sample?: boolean) => void;
  budget: { request(service: string): void; tryRetry(service: string): boolean; hasRoom(service: string): boolean };
  /** The one feedback path (outlier detection). */
  report(e: Endpoint, outcome: 'success' | 'failure'): void;
  /** A name that led to a control plane: refused from now on. */
  learn(e: Endpoint): void;
  retried(service: string): void;
  budgetExhausted(service: string): void;
}

export interface FailoverRequest {
  service: string;
  subset: Subset;
  pin: string | undefined;
  stickyId: string | undefined;
  deadline: number;
  budgetMs: number;
  /** The body can be sent again. */
  replayable: boolean;
  /** Sending it twice is harmless (idempotent method or an Idempotency-Key). */
  idempotent: boolean;
  /** Control-plane instances: never picked. */
  refused: ReadonlySet<string>;
  /** One try against one instance (`retryStatuses`: answers to hold back as failures). */
  attempt(e: Endpoint, picked: Picked, remainingMs: number, retryStatuses: ReadonlySet<number> | undefined): Promise<AttemptResult>;
  /** The error when nothing could be picked at all. */
  noneToPick(refused: ReadonlySet<string>): TandemError;
}

/** How it ended: answered (or the client left), or the last instance's own answer to pass on, or an error to answer. */
export type FailoverOutcome =
  | { kind: 'answered'; outcome: 'success' | 'retried' | 'failed' | 'aborted'; tries: number; instance: string | undefined }
  | { kind: 'held'; held: HeldResponse; endpoint: Endpoint; picked: Picked; tries: number }
  | { kind: 'error'; error: TandemError; tries: number; instance: string | undefined };

export async function runFailover(d: FailoverDeps, r: FailoverRequest): Promise<FailoverOutcome> {
  const { service, subset, pin } = r;
  const maxTries = 1 + d.retries;
  const tried = new Set<string>();
  // Control-plane instances are never picked: they start out excluded, like instances already tried.
  const exclude = r.refused.size === 0 ? tried : new Set(r.refused);
  const safeAfterReach = r.replayable && r.idempotent;
  d.budget.request(service);
  let last: Extract<AttemptResult, { kind: 'failed' }> | undefined;
  let stoppedBy: string | undefined;
  let instance: string | undefined;
  let tries = 0;
  /** The latest whole answer with a retryable status: passed on as is when no other try succeeds. */
  let held: { held: HeldResponse; endpoint: Endpoint; picked: Picked } | undefined;

  for (let attempt = 0; attempt < maxTries; attempt++) {
    const remaining = r.deadline - d.now();
    if (remaining <= 0) {
      stoppedBy = 'deadline';
      break; // a retry never starts after the deadline
    }
    if (attempt > 0 && !d.budget.tryRetry(service)) {
      stoppedBy = 'retry budget exhausted';
      d.budgetExhausted(service);
      break;
    }
    if (attempt > 0) d.retried(service);
    let picked = pin !== undefined ? pinnedInstance(subset, service, pin, tried, r.refused) : d.acquire(subset, { stickyId: r.stickyId, exclude }, remaining);
    if (picked instanceof Promise) picked = await picked;
    if (!picked) {
      if (attempt === 0) return { kind: 'error', error: r.noneToPick(r.refused), tries, instance };
      break;
    }
    const { endpoint } = picked;
    tried.add(endpoint.id);
    exclude.add(endpoint.id);
    tries = attempt + 1;
    instance = endpoint.id;
    // A retryable status is only held back when another instance could take the retry; a pinned
    // instance, or the only one left, passes its 502/503/504 on as it is.
    const mayRetryStatus = safeAfterReach && pin === undefined && attempt + 1 < maxTries && d.budget.hasRoom(service) && subset.healthy.some((e) => !exclude.has(e.id));
    // Counted in flight (maxInFlight, least-loaded cost) until the attempt ends; its time feeds the latency estimate.
    const release = picked.release ?? d.begin(endpoint);
    let result: AttemptResult;
    try {
      result = await r.attempt(endpoint, picked, remaining, mayRetryStatus ? d.retryStatuses : undefined);
    } catch (err) {
      release(false);
      throw err;
    }
    // Fast failures are not latency samples (a refusing instance must not look quick); timeouts are.
    release(result.kind === 'done' || (result.kind === 'failed' && result.timeout));
    if (result.kind === 'aborted') return { kind: 'answered', outcome: 'aborted', tries, instance };
    if (result.kind === 'done') {
      d.report(endpoint, d.retryStatuses.has(result.status) ? 'failure' : 'success');
      return { kind: 'answered', outcome: result.status >= 500 ? 'failed' : attempt > 0 ? 'retried' : 'success', tries, instance };
    }
    if (result.controlPlane) {
      d.learn(endpoint);
      last = result;
      if (pin !== undefined) break;
      continue;
    }
    // A try cut by the caller's own deadline says nothing about the instance.
    if (!(result.timeout && d.now() >= r.deadline)) d.report(endpoint, 'failure');
    last = result;
    if (result.held) held = { held: result.held, endpoint, picked };
    if (!((result.unsent && r.replayable) || safeAfterReach)) break;
  }
  if (held) return { kind: 'held', ...held, tries };
  if (last?.controlPlane) return { kind: 'error', error: new ControlPlaneError(`instance '${instance ?? ''}' of '${service}'`), tries, instance };
  if (stoppedBy === 'deadline' || (last?.timeout && !last.unsent)) return { kind: 'error', error: new UpstreamTimeoutError(service, Math.min(r.budgetMs, d.upstreamTimeoutMs)), tries, instance };
  const why = [last ? `last try ${last.reason}` : 'no instance left to try', stoppedBy].filter(Boolean).join('; ');
  return { kind: 'error', error: new UpstreamFailedError(service, tried.size, why), tries, instance };
}

/** A pinned instance (`X-Tandem-Instance`), or undefined once tried; throws when it is refused or not healthy in range. */
export function pinnedInstance(subset: Subset, service: string, id: string, tried: ReadonlySet<string>, refused: ReadonlySet<string>): Picked | undefined {
  if (tried.has(id)) return undefined;
  if (refused.has(id)) throw new ControlPlaneError(`instance '${id}' of '${service}'`);
  const e = subset.byId.get(id);
  if (!e || !e.healthy) throw new InstanceNotFoundError(service, id);
  return { endpoint: e, moved: false };
}
