// Picks one instance of a subset: pinned id, sticky (bounded-load consistent hashing), round-robin or least-loaded (P2C over peak-EWMA cost); skips unhealthy/ejected/tried/full ones.
import type { Endpoint } from '../endpoint-source.ts';
import type { Subset } from '../endpoint-set.ts';
import type { HealthTracker } from './health-tracker.ts';
import type { OutlierDetector } from './outlier-detector.ts';
import { LoadTracker, type LoadView } from './load-tracker.ts';
import { AdmissionQueue } from './admission-queue.ts';
import { OverloadedError } from '../errors.ts';

export type BalancerKind = 'round-robin' | 'least-loaded';
/** Why a sticky key went past its ring owner: not pickable, over the load bound, or at its maxInFlight. */
export type MoveReason = 'unavailable' | 'load' | 'full';

export const DEFAULT_LOAD_FACTOR = 1.25;

export interface PickOptions {
  stickyId?: string | undefined;
  /** Instances already tried for this request: failover goes to a different one. */
  exclude?: ReadonlySet<string> | undefined;
}

export interface Picked {
  endpoint: Endpoint;
  /** Sticky only: the instance the key hashes to could not serve, the next in ring order did. */
  moved: boolean;
  moveReason?: MoveReason;
  /** From acquire(): ends this request's in-flight count and records its latency (once). */
  release?: (sample?: boolean) => void;
}

/** What the balancer tells metrics; every hook optional. */
export interface BalancerEvents {
  picked?(service: string, balancer: BalancerKind | 'sticky'): void;
  /** A request waited for a slot (admitted or not). */
  queued?(service: string, waitedMs: number): void;
  overloaded?(service: string): void;
  stickyMoved?(service: string, reason: MoveReason): void;
}

export interface BalancerOptions {
  balancer?: BalancerKind;
  /** Per-service overrides (`proxy.services.<name>.balancer`). */
  services?: Readonly<Record<string, { readonly balancer?: BalancerKind | undefined }>>;
  /** Bounded-load sticky hashing: an owner above loadFactor × the average in-flight passes keys on. */
  loadFactor?: number;
  queueTimeoutMs?: number;
  maxQueued?: number;
  loads?: LoadTracker;
  events?: BalancerEvents;
}

interface Filters {
  /** Healthy, not tried, not ejected (when ejection is honoured). */
  base: (e: Endpoint) => boolean;
  /** base, and not held out by flap damping. */
  usable: (e: Endpoint) => boolean;
  /** Below its maxInFlight from this sidecar. */
  room: (e: Endpoint) => boolean;
  weight: (e: Endpoint) => number;
}

export class Balancer {
  readonly loads: LoadTracker;
  #outliers: OutlierDetector;
  #health: HealthTracker | undefined;
  #random: () => number;
  #o: BalancerOptions;
  #loadFactor: number;
  #queue: AdmissionQueue;
  #events: BalancerEvents;

  constructor(outliers: OutlierDetector, health?: HealthTracker, random: () => number = Math.random, opts: BalancerOptions = {}) {
    this.#outliers = outliers;
    this.#health = health;
    this.#random = random;
    this.#o = opts;
    this.loads = opts.loads ?? new LoadTracker();
    this.#loadFactor = opts.loadFactor ?? DEFAULT_LOAD_FACTOR;
    this.#queue = new AdmissionQueue({ timeoutMs: opts.queueTimeoutMs ?? 1000, maxQueued: opts.maxQueued ?? 100 });
    this.#events = opts.events ?? {};
  }

  /** The balancer a service uses: its override, else `proxy.balancer`, else round-robin. */
  kindFor(service: string): BalancerKind {
    return this.#o.services?.[service]?.balancer ?? this.#o.balancer ?? 'round-robin';
  }

  /** Cost inputs of one instance, for /v1/instances. */
  loadView(e: Endpoint): LoadView & { maxInFlight: number | undefined } {
    return { ...this.loads.view(e.id), maxInFlight: e.maxInFlight };
  }

  /** Instances that left: their load state goes too. */
  forget(ids: readonly string[]): void {
    this.loads.forget(ids);
  }

  /** Counts a request to `e` picked elsewhere (a pinned instance) until the returned function is called. */
  begin(e: Endpoint): (sample?: boolean) => void {
    const end = this.loads.begin(e.id);
    return (sample) => {
      end(sample);
      this.#queue.wake(e.service);
    };
  }

  /**
   * Picks and counts the request as in flight on the instance (call `release` when the attempt ends).
   * When every candidate is at its maxInFlight, waits in the bounded queue (at most `maxWaitMs`) and
   * rejects with OverloadedError past it. Undefined when nothing is pickable at all.
   */
  acquire(subset: Subset, opts: PickOptions = {}, maxWaitMs = Infinity): Picked | undefined | Promise<Picked | undefined> {
    const now = this.#pick(subset, opts, false);
    const sticky = opts.stickyId !== undefined;
    // Picked at once (the common case): no promise, no microtask.
    if (now) return this.#track(now, sticky);
    // Full, or nothing to pick at all? Only the first waits.
    if (!this.#pick(subset, opts, true)) return undefined;
    return this.#wait(subset, opts, sticky, maxWaitMs);
  }

  async #wait(subset: Subset, opts: PickOptions, sticky: boolean, maxWaitMs: number): Promise<Picked | undefined> {
    const service = subset.members[0]?.service ?? '';
    const started = performance.now();
    try {
      const p = await this.#queue.wait(service, () => {
        const got = this.#pick(subset, opts, false);
        return got && this.#track(got, sticky);
      }, maxWaitMs);
      this.#events.queued?.(service, performance.now() - started);
      return p;
    } catch (err) {
      // Refused at once (queue full) is no wait: only timed-out waits count as queue time.
      if (!(err instanceof OverloadedError && err.immediate)) this.#events.queued?.(service, performance.now() - started);
      if (err instanceof OverloadedError) this.#events.overloaded?.(service);
      throw err;
    }
  }

  /** Picks without counting anything (resolve, upgrades, tests). Full instances are not picked. */
  pick(subset: Subset, opts: PickOptions = {}): Picked | undefined {
    const p = this.#pick(subset, opts, false);
    return p && { endpoint: p.endpoint, moved: p.moved };
  }

  #track(p: Picked, sticky: boolean): Picked {
    const service = p.endpoint.service;
    this.#events.picked?.(service, sticky ? 'sticky' : this.kindFor(service));
    if (p.moved && p.moveReason) this.#events.stickyMoved?.(service, p.moveReason);
    return { ...p, release: this.begin(p.endpoint) };
  }

  #pick(subset: Subset, opts: PickOptions, ignoreRoom: boolean): Picked | undefined {
    if (subset.healthy.length === 0) return undefined;
    const now = Date.now();
    const honourEjection = this.#outliers.ejectionAllowed(subset.healthy, now);
    const health = this.#health;
    const base = (e: Endpoint) => e.healthy && !opts.exclude?.has(e.id) && !(honourEjection && this.#outliers.isEjected(e.id, now));
    const f: Filters = {
      base,
      // Flapping instances are held out like ejected ones, unless that would leave nothing to pick.
      usable: health ? (e: Endpoint) => base(e) && health.weight(e.id, now) > 0 : base,
      room: ignoreRoom ? () => true : (e: Endpoint) => e.maxInFlight === undefined || this.loads.inflight(e.id) < e.maxInFlight,
      weight: health ? (e: Endpoint) => health.weight(e.id, now) : () => 1,
    };
    if (opts.stickyId !== undefined) {
      return this.#sticky(subset, opts.stickyId, f, f.usable) ?? (health ? this.#sticky(subset, opts.stickyId, f, base) : undefined);
    }
    const service = subset.members[0]?.service ?? '';
    return this.kindFor(service) === 'least-loaded' ? this.#leastLoaded(subset, f) : this.#roundRobin(subset, f);
  }

  #roundRobin(subset: Subset, f: Filters): Picked | undefined {
    const list = subset.healthy;
    const n = list.length;
    let fallback: Endpoint | undefined;
    for (let i = 0; i < n; i++) {
      const e = list[subset.cursor++ % n] as Endpoint;
      if (!f.room(e)) continue;
      if (!f.usable(e)) {
        if (!fallback && f.base(e)) fallback = e;
        continue;
      }
      // Slow start: a newly healthy instance takes its turn only with probability = its ramp weight.
      const w = f.weight(e);
      if (w < 1 && this.#random() >= w) {
        fallback ??= e;
        continue;
      }
      return { endpoint: e, moved: false };
    }
    return fallback ? { endpoint: fallback, moved: false } : undefined;
  }

  /**
   * Power of two choices: two distinct random candidates, the cheaper wins. Cost = peak-EWMA latency ×
   * (in flight + 1) (see load-tracker.ts), divided by the slow-start weight so a ramping instance looks
   * dearer until it is warm. Two random choices rather than the global minimum: every sidecar sees only
   * its own load, and herding all of them onto the one instance that looks idlest is what P2C avoids.
   */
  #leastLoaded(subset: Subset, f: Filters): Picked | undefined {
    let list = subset.healthy.filter((e) => f.usable(e) && f.room(e));
    if (list.length === 0) list = subset.healthy.filter((e) => f.base(e) && f.room(e));
    const n = list.length;
    if (n === 0) return undefined;
    if (n === 1) return { endpoint: list[0] as Endpoint, moved: false };
    const i = Math.min(n - 1, Math.floor(this.#random() * n));
    let j = Math.min(n - 2, Math.floor(this.#random() * (n - 1)));
    if (j >= i) j++;
    const a = list[i] as Endpoint;
    const b = list[j] as Endpoint;
    return { endpoint: this.#cost(a, f) <= this.#cost(b, f) ? a : b, moved: false };
  }

  #cost(e: Endpoint, f: Filters): number {
    const w = f.weight(e);
    return this.loads.cost(e.id) / (w > 0 ? w : 0.05);
  }

  /**
   * Consistent hashing with bounded loads (Mirrokni et al.): with m requests in flight to the subset
   * (this one included) over n members, no instance takes more than ceil(loadFactor × m / n). The key
   * goes to its ring owner when the owner is under that bound, else to the next in ring order that is.
   * With nothing in flight the bound is ≥ 1 everywhere, so keys land exactly where the plain ring puts them.
   */
  #sticky(subset: Subset, key: string, f: Filters, usable: (e: Endpoint) => boolean): Picked | undefined {
    const ring = subset.ring();
    const ids = ring.range(key, subset.members.length) as string[];
    let total = 1;
    for (const e of subset.members) total += this.loads.inflight(e.id);
    const bound = Math.ceil((this.#loadFactor * total) / Math.max(1, subset.members.length));
    let firstReason: MoveReason | undefined;
    let spare: Endpoint | undefined;
    for (const id of ids) {
      const e = subset.byId.get(id);
      if (!e || !usable(e)) {
        firstReason ??= 'unavailable';
        continue;
      }
      if (!f.room(e)) {
        firstReason ??= 'full';
        continue;
      }
      if (this.loads.inflight(e.id) + 1 > bound) {
        firstReason ??= 'load';
        spare ??= e;
        continue;
      }
      return firstReason === undefined ? { endpoint: e, moved: false } : { endpoint: e, moved: true, moveReason: firstReason };
    }
    // Everyone over the bound (only possible with others full or out): the first with room takes it.
    if (!spare) return undefined;
    return spare.id === ids[0] ? { endpoint: spare, moved: false } : { endpoint: spare, moved: true, moveReason: firstReason ?? 'load' };
  }
}
