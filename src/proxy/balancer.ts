// Picks one instance of a subset: pinned id, sticky (consistent hashing), or round-robin; skips unhealthy/ejected/tried ones.
import type { Endpoint } from './endpoint-source.ts';
import type { Subset } from './endpoint-set.ts';
import type { HealthTracker } from './health-tracker.ts';
import type { OutlierDetector } from './outlier-detector.ts';

export interface PickOptions {
  stickyId?: string | undefined;
  /** Instances already tried for this request: failover goes to a different one. */
  exclude?: ReadonlySet<string> | undefined;
}

export interface Picked {
  endpoint: Endpoint;
  /** Sticky only: the instance the key hashes to could not serve, the next in ring order did. */
  moved: boolean;
}

export class Balancer {
  #outliers: OutlierDetector;
  #health: HealthTracker | undefined;
  #random: () => number;

  constructor(outliers: OutlierDetector, health?: HealthTracker, random: () => number = Math.random) {
    this.#outliers = outliers;
    this.#health = health;
    this.#random = random;
  }

  pick(subset: Subset, opts: PickOptions = {}): Picked | undefined {
    if (subset.healthy.length === 0) return undefined;
    const now = Date.now();
    const honourEjection = this.#outliers.ejectionAllowed(subset.healthy, now);
    const health = this.#health;
    const base = (e: Endpoint) => e.healthy && !opts.exclude?.has(e.id) && !(honourEjection && this.#outliers.isEjected(e.id, now));
    // Flapping instances are held out like ejected ones, unless that would leave nothing to pick.
    const usable = health ? (e: Endpoint) => base(e) && health.weight(e.id, now) > 0 : base;
    if (opts.stickyId !== undefined) return this.#sticky(subset, opts.stickyId, usable) ?? (health ? this.#sticky(subset, opts.stickyId, base) : undefined);
    const list = subset.healthy;
    const n = list.length;
    let fallback: Endpoint | undefined;
    for (let i = 0; i < n; i++) {
      const e = list[subset.cursor++ % n] as Endpoint;
      if (!usable(e)) {
        if (!fallback && base(e)) fallback = e;
        continue;
      }
      // Slow start: a newly healthy instance takes its turn only with probability = its ramp weight.
      const w = health ? health.weight(e.id, now) : 1;
      if (w < 1 && this.#random() >= w) {
        fallback ??= e;
        continue;
      }
      return { endpoint: e, moved: false };
    }
    return fallback ? { endpoint: fallback, moved: false } : undefined;
  }

  #sticky(subset: Subset, key: string, usable: (e: Endpoint) => boolean): Picked | undefined {
    const ring = subset.ring();
    const owner = subset.byId.get(ring.get(key));
    if (owner && usable(owner)) return { endpoint: owner, moved: false };
    for (const id of ring.range(key, subset.members.length)) {
      const e = subset.byId.get(id);
      if (e && usable(e)) return { endpoint: e, moved: true };
    }
    return undefined;
  }
}
