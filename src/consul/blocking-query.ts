// The one blocking-query loop of the sidecar: index rules, jittered backoff, a bounded first answer, and no work once nobody listens.
import { backoffDelay, sleepUnlessAborted } from './backoff.ts';
import type { ConnectionBudget, Lease, LeaseKind } from './connection-budget.ts';
import { ConsulBudgetExhaustedError, FirstAnswerTimeoutError } from './errors.ts';

/** One answer of a (blocking) read. */
export interface BlockingResult<T> {
  index: number;
  knownLeader: boolean;
  lastContactMs: number;
  value: T;
}

/** What the loop asks the client for: index 0 = answer at once; otherwise wait up to `waitMs` for a change. */
export type BlockingFetch<T> = (q: { index: number; waitMs: number; signal: AbortSignal }) => Promise<BlockingResult<T>>;

export interface BlockingQueryOptions<T> {
  /** Names the query in logs, errors and the budget (`health:users`, `kv:tandem/events/`). */
  name: string;
  fetch: BlockingFetch<T>;
  waitMs: number;
  maxBackoffMs: number;
  budget: ConnectionBudget;
  /** `reserved` for the sidecar's own watches, `shared` for ones callers can multiply. */
  kind: LeaseKind;
  /** When set, answers equal to the previous one are not passed on (a wake-up is not a change). */
  equals?: (a: T, b: T) => boolean;
  /** Called on the first failure of a run of failures, and when answers come back. */
  onFailing?: (failing: boolean, err?: unknown) => void;
}

export type Listener<T> = (value: T) => void;

export interface QueryState {
  name: string;
  index: number;
  /** When Consul last answered (ms since epoch), 0 before the first answer. */
  lastOkAt: number;
  consecutiveErrors: number;
  lastError: unknown;
  running: boolean;
}

/**
 * A shared blocking query. The loop starts with the first subscriber (taking a lease from the
 * connection budget, or throwing ConsulBudgetExhaustedError when there is no room) and stops the
 * moment the last one leaves — also when it leaves before the first answer: the HTTP request in
 * flight is aborted and the lease given back. `close()` ends it for good.
 *
 * Index rules (Consul's documentation and our own measurements): an index that goes backwards is
 * reset to 0 (snapshot restore, agent loss); a used index is never below 1; errors back off with
 * jitter, capped at `maxBackoffMs`.
 *
 * @example
 *   const q = new BlockingQuery({ name: 'kv:tandem/drain/n1', fetch, waitMs: 55_000, maxBackoffMs: 10_000, budget, kind: 'reserved' });
 *   const stop = q.subscribe((value) => console.log(value));
 *   await q.first(2000);
 *   stop();
 */
export class BlockingQuery<T> {
  readonly name: string;
  #o: BlockingQueryOptions<T>;
  #listeners = new Set<Listener<T>>();
  /** Aborts the request in flight: only close() uses it (see #stop for why). */
  #hard: AbortController | undefined;
  /** Ends a backoff sleep early when the last subscriber leaves. */
  #nap = new AbortController();
  /** Someone listens: the loop goes on after the request in flight. */
  #wanted = false;
  #lease: Lease | undefined;
  #value: T | undefined;
  #has = false;
  #index = 0;
  #lastOkAt = 0;
  #errors = 0;
  #lastError: unknown;
  #closed = false;
  #firstWaiters = new Set<() => void>();
  /** Set by requery(): the next read is an immediate one after this many ms. */
  #requeryInMs: number | undefined;
  /** After an error: no read before this time (performance.now(): a wall clock set back must not stretch a backoff), whoever subscribes meanwhile. */
  #retryAt = 0;

  constructor(o: BlockingQueryOptions<T>) {
    this.name = o.name;
    this.#o = o;
  }

  get current(): T | undefined {
    return this.#value;
  }

  get hasValue(): boolean {
    return this.#has;
  }

  get listenerCount(): number {
    return this.#listeners.size;
  }

  state(): QueryState {
    return { name: this.name, index: this.#index, lastOkAt: this.#lastOkAt, consecutiveErrors: this.#errors, lastError: this.#lastError, running: this.#hard !== undefined };
  }

  /**
   * Adds a listener (called with every new value; with the current one at once, asynchronously, when
   * there is one). Returns the function that removes it. Throws ConsulBudgetExhaustedError when the
   * loop is not running and the budget has no room for it.
   */
  subscribe(listener: Listener<T>): () => void {
    if (this.#closed) throw new Error(`blocking query ${this.name} is closed`);
    if (!this.#hard) this.#start();
    else if (!this.#wanted) {
      // The loop is still finishing its last request: it goes on, with the lease it holds.
      this.#wanted = true;
      this.#nap = new AbortController();
    }
    this.#listeners.add(listener);
    if (this.#has) {
      const v = this.#value as T;
      queueMicrotask(() => {
        if (this.#listeners.has(listener)) listener(v);
      });
    }
    let subscribed = true;
    return () => {
      if (!subscribed) return;
      subscribed = false;
      this.#listeners.delete(listener);
      if (this.#listeners.size === 0) this.#stop();
    };
  }

  /**
   * Resolves with the value once there is one; rejects with FirstAnswerTimeoutError after
   * `timeoutMs`, or at once when the loop is stopped meanwhile. Does not subscribe.
   */
  first(timeoutMs: number): Promise<T> {
    if (this.#has) return Promise.resolve(this.#value as T);
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => settle(new FirstAnswerTimeoutError(this.name, timeoutMs)), timeoutMs);
      const settle = (err?: Error) => {
        clearTimeout(timer);
        this.#firstWaiters.delete(wake);
        if (this.#has) resolve(this.#value as T);
        else reject(err ?? new FirstAnswerTimeoutError(this.name, 0));
      };
      const wake = () => settle();
      this.#firstWaiters.add(wake);
    });
  }

  /** Asks for an immediate (non-blocking) read after `delayMs`, e.g. to re-check an answer held back. */
  requery(delayMs: number): void {
    this.#requeryInMs = delayMs;
  }

  /**
   * Stops for good and refuses new subscribers. Like the last subscriber leaving, it lets the request in flight end (see #stop);
   * at shutdown the client's close() destroys the sockets, which ends it at once.
   */
  close(): void {
    this.#closed = true;
    this.#listeners.clear();
    this.#stop();
  }

  #start(): void {
    const lease = this.#o.budget.tryAcquire(this.#o.kind, this.name);
    if (!lease) throw new ConsulBudgetExhaustedError(this.name, this.#o.budget.snapshot());
    this.#lease = lease;
    const hard = new AbortController();
    this.#hard = hard;
    this.#wanted = true;
    this.#nap = new AbortController();
    void this.#loop(hard.signal).finally(() => {
      lease.release();
      if (this.#lease === lease) this.#lease = undefined;
      if (this.#hard !== hard) return;
      this.#hard = undefined;
      // Someone subscribed between the loop's last check and this cleanup: start over for them.
      if (this.#wanted && !this.#closed && this.#listeners.size > 0) {
        try {
          this.#start();
        } catch (err) {
          this.#o.onFailing?.(true, err);
        }
      }
    });
  }

  /**
   * The last subscriber left. The request in flight is NOT aborted: Consul notices a client that
   * closed a blocking query only when its wait ends, so the dropped connection would keep counting
   * against its 200 per client IP for up to a minute — a caller opening and closing streams in a
   * loop would lock every client on the host out of Consul. The loop ends when that request
   * returns (at most the wait plus its jitter), its socket goes back to the pool, and only then is
   * the lease given back; a subscriber arriving meanwhile reuses the running loop.
   */
  #stop(): void {
    this.#wanted = false;
    this.#nap.abort();
    for (const wake of [...this.#firstWaiters]) wake();
  }

  async #loop(signal: AbortSignal): Promise<void> {
    while (!signal.aborted && this.#wanted) {
      // The backoff of the last error. The last subscriber leaving ends it (and the loop) at once; one
      // arriving meanwhile, or a new loop, waits out the rest: subscribers churning during an outage
      // must not turn the backoff into a read per churn.
      for (let left = this.#retryAt - performance.now(); left > 0 && this.#wanted && !signal.aborted; left = this.#retryAt - performance.now()) await sleepUnlessAborted(left, this.#nap.signal);
      if (signal.aborted || !this.#wanted) return;
      if (this.#requeryInMs !== undefined) {
        const delay = this.#requeryInMs;
        this.#requeryInMs = undefined;
        this.#index = 0;
        await sleepUnlessAborted(delay, this.#nap.signal);
        if (signal.aborted || !this.#wanted) return;
      }
      let r: BlockingResult<T>;
      try {
        r = await this.#o.fetch({ index: this.#index, waitMs: this.#o.waitMs, signal });
      } catch (err) {
        if (signal.aborted) return;
        this.#errors++;
        this.#lastError = err;
        // The agent may have restarted with a lower index: blocking on the old one would hide every
        // change for a whole wait. Ask at once next time; the answer's index starts over.
        this.#index = 0;
        if (this.#errors === 1) this.#o.onFailing?.(true, err);
        this.#retryAt = performance.now() + backoffDelay(this.#errors, { baseMs: 200, maxMs: this.#o.maxBackoffMs });
        continue;
      }
      if (signal.aborted) return;
      if (this.#errors > 0) {
        this.#errors = 0;
        this.#lastError = undefined;
        this.#o.onFailing?.(false);
      }
      this.#lastOkAt = Date.now();
      // Index rules: backwards → start over at 0; never block on an index below 1.
      this.#index = r.index < this.#index ? 0 : Math.max(r.index, 1);
      const changed = !this.#has || !this.#o.equals || !this.#o.equals(this.#value as T, r.value);
      this.#value = r.value;
      this.#has = true;
      for (const wake of [...this.#firstWaiters]) wake();
      if (changed) for (const l of [...this.#listeners]) l(r.value);
    }
  }
}
