// Immutable per-service endpoint sets; each caches, per requested range, its subset and that subset's hash ring.
import HashRing from 'hashring';
import type semver from 'semver';
import type { Endpoint, Update } from './endpoint-source.ts';

const MAX_CACHED_SUBSETS = 256;

/** The instances of one set whose version is in one range. Built once per set and range. */
export class Subset {
  /** In range, any health; sticky rings are built over these so an unhealthy owner shows as "moved". */
  readonly members: readonly Endpoint[];
  /** In range and passing in Consul. */
  readonly healthy: readonly Endpoint[];
  readonly byId: ReadonlyMap<string, Endpoint>;
  /** Round-robin position; the only mutable field, owned by the balancer. */
  cursor = 0;
  #ring: HashRing | undefined;

  constructor(members: readonly Endpoint[]) {
    this.members = members;
    this.healthy = members.filter((e) => e.healthy);
    this.byId = new Map(members.map((e) => [e.id, e]));
  }

  /** Instances on the sticky ring (0 until a sticky request built it). */
  get ringSize(): number {
    return this.#ring ? this.members.length : 0;
  }

  /** The consistent-hash ring over `members`, built on first sticky use and then reused. */
  ring(): HashRing {
    // An explicit 40 vnodes per server: hashring's default rounds to 39 for some set sizes (7, 14, 28),
    // which would move keys between instances that stayed when one leaves.
    this.#ring ??= new HashRing(Object.fromEntries(this.members.map((e) => [e.id, { vnodes: 40 }])), 'md5', { 'vnode count': 1 });
    return this.#ring;
  }
}

export class EndpointSet {
  readonly service: string;
  /** Sorted by id: Consul's `?passing` filtering reorders, and hashing must not depend on order. */
  readonly all: readonly Endpoint[];
  readonly byId: ReadonlyMap<string, Endpoint>;
  /** Distinct versions in the catalog, sorted; for error messages. */
  readonly versions: readonly string[];
  readonly healthyVersions: readonly string[];
  /** When this view was built (ms since epoch). */
  readonly updatedAt: number;
  #subsets = new Map<string, Subset>();

  constructor(service: string, endpoints: readonly Endpoint[], updatedAt = Date.now()) {
    this.service = service;
    this.all = [...endpoints].sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
    this.byId = new Map(this.all.map((e) => [e.id, e]));
    this.versions = distinct(this.all.map((e) => e.version));
    this.healthyVersions = distinct(this.all.filter((e) => e.healthy).map((e) => e.version));
    this.updatedAt = updatedAt;
  }

  /** A new set with the update applied; this one is left as it is. */
  apply(update: Update): EndpointSet {
    switch (update.kind) {
      case 'reset':
        return new EndpointSet(this.service, update.endpoints);
      case 'add': {
        const next = new Map(this.byId);
        for (const e of update.endpoints) next.set(e.id, e);
        return new EndpointSet(this.service, [...next.values()]);
      }
      case 'remove': {
        const gone = new Set(update.ids);
        return new EndpointSet(this.service, this.all.filter((e) => !gone.has(e.id)));
      }
    }
  }

  /** The ranges requested since this set was built, with their subsets (for the status view). */
  subsets(): [string, Subset][] {
    return [...this.#subsets.entries()];
  }

  /** The subset for a range (`key` is the range as requested; '' = no range). Cached for this set's life. */
  subset(key: string, range: semver.Range | null): Subset {
    let s = this.#subsets.get(key);
    if (!s) {
      s = new Subset(range ? this.all.filter((e) => e.semver !== null && range.test(e.semver)) : this.all);
      // Bounded: a client inventing endless distinct ranges gets uncached subsets, not unbounded memory.
      if (this.#subsets.size < MAX_CACHED_SUBSETS) this.#subsets.set(key, s);
    }
    return s;
  }
}

function distinct(values: string[]): string[] {
  return [...new Set(values.filter((v) => v !== ''))].sort();
}
