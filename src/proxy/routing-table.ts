// The live routing table: one endpoint set per service, fed by an EndpointSource, watched on first use, dropped when idle.
import { CatalogUnavailableError, TooManyServicesError } from './errors.ts';
import { EndpointSet } from './endpoint-set.ts';
import type { EndpointSource, Subscription, Update } from './endpoint-source.ts';

export interface RoutingTableOptions {
  source: EndpointSource;
  /** How long a first request for a service not yet watched waits for the catalog's first answer. */
  firstAnswerTimeoutMs: number;
  /** A service not requested for this long stops being watched (upstreams from config never do). */
  idleMs: number;
  /** Upper bound on watched services: each holds a long-poll to the Consul agent (200 per IP at most). */
  maxServices: number;
  /** Watched from start and never expired. */
  upstreams: readonly string[];
  /** Told about instances that left, so per-instance state (ejection, pools) can go too. */
  onRemoved?: (ids: readonly string[]) => void;
  /** Told about every set change (previous set undefined on the first), e.g. for slow start. */
  onChange?: (prev: EndpointSet | undefined, next: EndpointSet) => void;
}

interface Watched {
  set: EndpointSet | undefined;
  ready: Promise<void>;
  markReady: () => void;
  sub: Subscription | undefined;
  lastUsed: number;
  pinned: boolean;
  /** Control-API watchers of this service; a watched service is never idle. */
  listeners: Set<(set: EndpointSet) => void>;
}

export class RoutingTable {
  #o: RoutingTableOptions;
  #services = new Map<string, Watched>();
  #sweeper: NodeJS.Timeout | undefined;

  constructor(opts: RoutingTableOptions) {
    this.#o = opts;
  }

  start(): void {
    for (const s of this.#o.upstreams) this.#watch(s, true);
    this.#sweeper = setInterval(() => this.#sweep(), Math.max(1000, Math.floor(this.#o.idleMs / 4)));
    this.#sweeper.unref();
  }

  close(): void {
    if (this.#sweeper) clearInterval(this.#sweeper);
    for (const w of this.#services.values()) w.sub?.close();
    this.#services.clear();
  }

  /** Why the source's answers may be incomplete (ACL denial), if it knows. */
  problem(): string | undefined {
    return this.#o.source.problem?.();
  }

  /** The current set, without waiting; undefined until the first answer. */
  current(service: string): EndpointSet | undefined {
    const w = this.#services.get(service);
    if (!w) return undefined;
    w.lastUsed = Date.now();
    return w.set;
  }

  /** The set for `service`, starting its watch and waiting (bounded) for the first answer if needed. */
  async get(service: string): Promise<EndpointSet> {
    const w = this.#services.get(service) ?? this.#watch(service, false);
    w.lastUsed = Date.now();
    if (w.set) return w.set;
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new CatalogUnavailableError(service, this.#o.firstAnswerTimeoutMs)), this.#o.firstAnswerTimeoutMs);
    });
    try {
      await Promise.race([w.ready, timeout]);
    } finally {
      clearTimeout(timer);
    }
    return w.set as unknown as EndpointSet;
  }

  /**
   * Calls `listener` with every new set of `service` (after waiting for the first one, which is
   * returned). The service stays watched until the returned function is called.
   */
  async listen(service: string, listener: (set: EndpointSet) => void): Promise<{ set: EndpointSet; stop: () => void }> {
    const set = await this.get(service);
    const w = this.#services.get(service);
    if (!w) return { set, stop: () => undefined };
    w.listeners.add(listener);
    return {
      set,
      stop: () => {
        w.listeners.delete(listener);
        w.lastUsed = Date.now();
      },
    };
  }

  /** Every watched service and its current set, for the control API. */
  snapshot(): { service: string; set: EndpointSet | undefined; pinned: boolean; lastUsed: number }[] {
    return [...this.#services.entries()].map(([service, w]) => ({ service, set: w.set, pinned: w.pinned, lastUsed: w.lastUsed }));
  }

  #watch(service: string, pinned: boolean): Watched {
    if (this.#services.size >= this.#o.maxServices) throw new TooManyServicesError(this.#o.maxServices);
    let markReady!: () => void;
    const ready = new Promise<void>((r) => (markReady = r));
    const w: Watched = { set: undefined, ready, markReady, sub: undefined, lastUsed: Date.now(), pinned, listeners: new Set() };
    this.#services.set(service, w);
    w.sub = this.#o.source.subscribe(service, (u) => this.#apply(service, w, u));
    return w;
  }

  #apply(service: string, w: Watched, update: Update): void {
    const prev = w.set ?? new EndpointSet(service, []);
    const next = prev.apply(update);
    this.#o.onChange?.(w.set, next);
    w.set = next;
    w.markReady();
    for (const l of w.listeners) l(next);
    if (this.#o.onRemoved) {
      const gone = prev.all.filter((e) => !next.byId.has(e.id)).map((e) => e.id);
      if (gone.length > 0) this.#o.onRemoved(gone);
    }
  }

  #sweep(): void {
    const cutoff = Date.now() - this.#o.idleMs;
    for (const [service, w] of this.#services) {
      if (!w.pinned && w.listeners.size === 0 && w.lastUsed < cutoff) {
        w.sub?.close();
        this.#services.delete(service);
        if (w.set && this.#o.onRemoved) this.#o.onRemoved(w.set.all.map((e) => e.id));
      }
    }
  }
}
