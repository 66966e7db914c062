// The catalog's list of service names behind one blocking query: "is there such a service" for any name, and wake-ups when one appears.
import type { Logger } from 'pino';
import { BlockingQuery } from '../consul/blocking-query.ts';
import type { ConsulClient } from '../consul/consul-client.ts';
import { errSummary } from '../common/errors.ts';

export interface ServiceNamesOptions {
  consul: ConsulClient;
  logger: Logger;
  waitMs: number;
  maxBackoffMs: number;
}

/**
 * One watch answers for every name, so a name nobody registered costs a Set lookup, never a watch
 * of its own (issue 11: made-up names used to fill `watch.maxServices`). The list lags Consul by one
 * blocking-query wake-up (milliseconds on a healthy agent).
 */
export class ServiceNames {
  #query: BlockingQuery<string[]>;
  #names = new Set<string>();
  #stop: (() => void) | undefined;
  #waiters = new Map<string, Set<() => void>>();
  #indexListeners = new Set<() => void>();
  #lastIndex: number | undefined;
  /** Woken by the first answer or the first failure: a caller then knows whether waiting helps. */
  #settled = new Set<() => void>();

  constructor(o: ServiceNamesOptions) {
    this.#query = new BlockingQuery<string[]>({
      name: 'catalog:services',
      fetch: (q) => o.consul.catalogServices(q),
      waitMs: o.waitMs,
      maxBackoffMs: o.maxBackoffMs,
      budget: o.consul.budget,
      // The sidecar's own: no caller can take its room.
      kind: 'reserved',
      onFailing: (failing, err) => {
        if (failing) {
          o.logger.warn({ err: errSummary(err) }, 'catalog names watch failed; answering from the last list');
          this.#wakeSettled();
        } else o.logger.info('catalog names watch recovered');
      },
    });
  }

  /** Starts the watch (its lease is reserved room). */
  start(): void {
    this.#stop ??= this.#query.subscribe((names) => this.#update(names));
  }

  close(): void {
    this.#stop = undefined;
    this.#query.close();
    this.#waiters.clear();
    this.#indexListeners.clear();
    this.#wakeSettled();
  }

  /** Whether the catalog has `name`; undefined before the first answer. */
  has(name: string): boolean | undefined {
    return this.#query.hasValue ? this.#names.has(name) : undefined;
  }

  /**
   * Resolves once the list has answered or failed (whichever comes first: the caller then knows
   * whether waiting longer helps), or after `timeoutMs`.
   */
  settled(timeoutMs: number): Promise<void> {
    if (this.#query.hasValue || this.#query.state().consecutiveErrors > 0 || !this.#stop) return Promise.resolve();
    return new Promise<void>((resolve) => {
      const done = () => {
        clearTimeout(timer);
        this.#settled.delete(done);
        resolve();
      };
      const timer = setTimeout(done, timeoutMs);
      this.#settled.add(done);
    });
  }

  /** Resolves once the list has answered, or after `timeoutMs` (never rejects). */
  async answered(timeoutMs: number): Promise<void> {
    await this.#query.first(Math.max(0, timeoutMs)).catch(() => undefined);
  }

  /** Calls `onExists` once, when `name` is in the catalog (soon after, if it already is). Returns the cancel function. */
  whenExists(name: string, onExists: () => void): () => void {
    let fired = false;
    const once = () => {
      if (fired) return;
      fired = true;
      cancel();
      onExists();
    };
    const set = this.#waiters.get(name) ?? new Set();
    set.add(once);
    this.#waiters.set(name, set);
    const cancel = () => {
      set.delete(once);
      if (set.size === 0 && this.#waiters.get(name) === set) this.#waiters.delete(name);
    };
    if (this.#names.has(name)) queueMicrotask(once);
    return () => {
      fired = true;
      cancel();
    };
  }

  /**
   * Calls `listener` whenever the catalog's service index moves (any registration, deregistration or
   * change of a service anywhere, with or without checks). Returns the remove function.
   */
  onIndexChange(listener: () => void): () => void {
    this.#indexListeners.add(listener);
    return () => this.#indexListeners.delete(listener);
  }

  #update(names: string[]): void {
    this.#names = new Set(names);
    this.#wakeSettled();
    for (const [name, set] of [...this.#waiters]) if (this.#names.has(name)) for (const w of [...set]) w();
    const index = this.#query.state().index;
    if (index !== this.#lastIndex) {
      const first = this.#lastIndex === undefined;
      this.#lastIndex = index;
      if (!first) for (const l of [...this.#indexListeners]) l();
    }
  }

  #wakeSettled(): void {
    for (const w of [...this.#settled]) w();
  }
}
