// Picks one instance of a subset: pinned id, sticky (consistent hashing), or round-robin; skips unhealthy/ejected/tried ones.
import type { Endpoint } from './endpoint-source.ts';
import type { Subset } from './endpoint-set.ts';
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

  constructor(outliers: OutlierDetector) {
    this.#outliers = outliers;
  }

  pick(subset: Subset, opts: PickOptions = {}): Picked | undefined {
    if (subset.healthy.length === 0) return undefined;
    const now = Date.now();
    const honourEjection = this.#outliers.ejectionAllowed(subset.healthy, now);
    const usable = (e: Endpoint) => e.healthy && !opts.exclude?.has(e.id) && !(honourEjection && this.#outliers.isEjected(e.id, now));
    if (opts.stickyId !== undefined) return this.#sticky(subset, opts.stickyId, usable);
    const list = subset.healthy;
    const n = list.length;
    for (let i = 0; i < n; i++) {
      const e = list[subset.cursor++ % n] as Endpoint;
      if (usable(e)) return { endpoint: e, moved: false };
    }
    return undefined;
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
