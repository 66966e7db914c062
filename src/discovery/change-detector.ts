// The shared change detector (Fabio's approach): one blocking query on every check's state, then non-blocking reads of the services it serves.
import { backoffDelay } from '../consul/backoff.ts';
import { BlockingQuery } from '../consul/blocking-query.ts';
import type { ConsulClient } from '../consul/consul-client.ts';
import type { ViewSink } from './service-view.ts';

export interface ChangeDetectorOptions {
  consul: ConsulClient;
  waitMs: number;
  maxBackoffMs: number;
  /** Reads in flight at once. */
  concurrency: number;
  /**
   * More wake-ups: the check index does not move when a service without checks is registered or
   * changed, the catalog's service index does (the names watch already follows it, at no extra cost).
   */
  extraTrigger?: (wake: () => void) => () => void;
  /** How soon an answer held back (empty-answer grace) is read again. */
  recheckMs: number;
  /** Told after each wake-up (the watcher then moves services to watches of their own if room came free). */
  onWake?: () => void;
}

export interface DetectorStats {
  /** Services it serves now. */
  serving: number;
  /** Its blocking query holds a connection. */
  running: boolean;
  /** Times it woke up and re-read what it serves. */
  wakeUps: number;
  /** Non-blocking reads started (each one `/v1/health/service/<name>`), and how many failed. */
  reads: number;
  failedReads: number;
}

/**
 * Serves the services the connection budget has no room to watch one by one. One blocking query on
 * `/v1/health/state/any` (its index moves with every check change anywhere) wakes it; it then reads
 * each service it serves with a non-blocking query, at most `concurrency` at a time, and hands the
 * answers to the same views a per-service watch feeds. It holds one (reserved) connection while it
 * serves anything and none otherwise. Every wake-up re-reads everything it serves, so its cost grows
 * with (check changes anywhere) × (services served): measured in docs/performance.md.
 */
export class ChangeDetector {
  #o: ChangeDetectorOptions;
  #query: BlockingQuery<number>;
  #served = new Map<string, ViewSink>();
  #pending = new Set<string>();
  #reading = new Set<string>();
  #timers = new Map<string, NodeJS.Timeout>();
  #errors = new Map<string, number>();
  #stop: (() => void) | undefined;
  #abort = new AbortController();
  #stats = { wakeUps: 0, reads: 0, failedReads: 0 };

  constructor(o: ChangeDetectorOptions) {
    this.#o = o;
    this.#query = new BlockingQuery<number>({
      name: 'health:state-any',
      fetch: (q) => o.consul.healthStateAny(q),
      waitMs: o.waitMs,
      maxBackoffMs: o.maxBackoffMs,
      budget: o.consul.budget,
      kind: 'reserved',
    });
  }

  /**
   * Serves `service` through `sink` (read at once, then on every wake-up) until the returned function
   * is called. Throws ConsulBudgetExhaustedError when the detector is not running and has no room.
   */
  add(service: string, sink: ViewSink): () => void {
    if (this.#served.has(service)) throw new Error(`the change detector already serves '${service}'`);
    if (!this.#stop) {
      // Every answer wakes it, a wait that timed out too: a cheap periodic re-read as a safety net.
      const unsubscribe = this.#query.subscribe(() => this.#wake());
      const untrigger = this.#o.extraTrigger?.(() => this.#wake());
      this.#abort = new AbortController();
      this.#stop = () => {
        unsubscribe();
        untrigger?.();
        this.#abort.abort();
      };
    }
    this.#served.set(service, sink);
    this.#schedule(service);
    let served = true;
    return () => {
      if (!served) return;
      served = false;
      this.#remove(service, sink);
    };
  }

  stats(): DetectorStats {
    return { serving: this.#served.size, running: this.#query.state().running, ...this.#stats };
  }

  close(): void {
    this.#query.close();
    this.#abort.abort();
    for (const t of this.#timers.values()) clearTimeout(t);
    this.#timers.clear();
    this.#served.clear();
    this.#pending.clear();
    this.#stop = undefined;
  }

  #remove(service: string, sink: ViewSink): void {
    if (this.#served.get(service) !== sink) return;
    this.#served.delete(service);
    this.#pending.delete(service);
    this.#errors.delete(service);
    clearTimeout(this.#timers.get(service));
    this.#timers.delete(service);
    if (this.#served.size === 0) {
      // Nothing left to serve: give the connection back.
      this.#stop?.();
      this.#stop = undefined;
    }
  }

  #wake(): void {
    this.#stats.wakeUps++;
    for (const s of this.#served.keys()) this.#schedule(s);
    if (this.#o.onWake) queueMicrotask(this.#o.onWake);
  }

  #schedule(service: string): void {
    clearTimeout(this.#timers.get(service));
    this.#timers.delete(service);
    this.#pending.add(service);
    this.#pump();
  }

  #later(service: string, ms: number): void {
    clearTimeout(this.#timers.get(service));
    const t = setTimeout(() => {
      this.#timers.delete(service);
      if (this.#served.has(service)) this.#schedule(service);
    }, ms);
    t.unref();
    this.#timers.set(service, t);
  }

  /** Starts reads up to the concurrency bound; a service is never read twice at once (answers stay in order). */
  #pump(): void {
    for (const service of this.#pending) {
      if (this.#reading.size >= this.#o.concurrency) return;
      if (this.#reading.has(service)) continue;
      this.#pending.delete(service);
      const sink = this.#served.get(service);
      if (!sink) continue;
      this.#reading.add(service);
      void this.#read(service, sink).finally(() => {
        this.#reading.delete(service);
        this.#pump();
      });
    }
  }

  async #read(service: string, sink: ViewSink): Promise<void> {
    const signal = this.#abort.signal;
    this.#stats.reads++;
    try {
      const r = await this.#o.consul.healthService(service, { index: 0, waitMs: 0, passing: false, signal });
      if (signal.aborted || this.#served.get(service) !== sink) return;
      this.#errors.delete(service);
      if (!sink.accept({ index: r.index, entries: r.value })) this.#later(service, this.#o.recheckMs);
    } catch (err) {
      if (signal.aborted || this.#served.get(service) !== sink) return;
      this.#stats.failedReads++;
      const n = (this.#errors.get(service) ?? 0) + 1;
      this.#errors.set(service, n);
      sink.failed(err);
      this.#later(service, backoffDelay(n, { baseMs: 200, maxMs: this.#o.maxBackoffMs }));
    }
  }
}
