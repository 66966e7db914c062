// The live routing table: one endpoint set per service, fed by an EndpointSource, watched on first use, dropped when idle.
import { CatalogForbiddenError, CatalogUnavailableError, TooManyServicesError, UnknownServiceError } from './errors.ts';
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
  /** Proxied requests (and upgraded connections) still running: a service with any is never idle. */
  inflight: number;
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

  /**
   * Marks a request to `service` as running until the returned function is called (once; later calls do
   * nothing): the idle sweep never drops a service (and its instances' pools) while a response is still
   * streaming. A service that is not watched gives a no-op.
   */
  hold(service: string): () => void {
    const w = this.#services.get(service);
    if (!w) return () => undefined;
    w.inflight++;
    let released = false;
    return () => {
      if (released) return;
      released = true;
      w.inflight--;
      w.lastUsed = Date.now();
    };
  }

  /**
   * The set for `service`, starting its watch and waiting (bounded) for the first answer if needed. A
   * name the catalog does not have is refused at once (UnknownServiceError, or CatalogForbiddenError
   * when answers may be filtered) and never watched: made-up names cannot fill `maxServices`.
   */
  async get(service: string): Promise<EndpointSet> {
    const started = Date.now();
    let w = this.#services.get(service);
    if (!w) {
      // Usually known at once (no extra tick: the watch starts before this call returns).
      const known = this.#o.source.exists?.(service, this.#o.firstAnswerTimeoutMs) ?? true;
      this.#admit(service, typeof known === 'boolean' ? known : await known);
      w = this.#services.get(service) ?? this.#watch(service, false);
    }
    w.lastUsed = Date.now();
    if (w.set) return w.set;
    const waitMs = Math.max(0, this.#o.firstAnswerTimeoutMs - (Date.now() - started));
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new CatalogUnavailableError(service, this.#o.firstAnswerTimeoutMs)), waitMs);
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
   * returned). The service stays watched until the returned function is called. A service not in the
   * catalog yet gives an empty set and no watch: the source wakes the table when the name appears, and
   * the listener then gets its first real set (`onError` is told if it cannot be watched then).
   */
  async listen(service: string, listener: (set: EndpointSet) => void, onError?: (err: unknown) => void): Promise<{ set: EndpointSet; stop: () => void }> {
    let set: EndpointSet;
    try {
      set = await this.get(service);
    } catch (err) {
      if (!(err instanceof UnknownServiceError || err instanceof CatalogForbiddenError) || !this.#o.source.whenExists) throw err;
      return this.#listenWhenExists(service, listener, onError);
    }
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

  #listenWhenExists(service: string, listener: (set: EndpointSet) => void, onError?: (err: unknown) => void): { set: EndpointSet; stop: () => void } {
    let stopped = false;
    let stopInner: (() => void) | undefined;
    const cancel = this.#o.source.whenExists?.(service, () => {
      this.listen(service, listener, onError).then(
        (r) => {
          if (stopped) return r.stop();
          stopInner = r.stop;
          listener(r.set);
        },
        (err: unknown) => stopped || onError?.(err),
      );
    });
    return {
      set: new EndpointSet(service, []),
      stop: () => {
        stopped = true;
        cancel?.();
        stopInner?.();
      },
    };
  }

  /** Refuses names the source says are not in the catalog (or cannot tell), before anything is watched. */
  #admit(service: string, known: boolean | undefined): void {
    if (known === true) return;
    if (known === undefined) throw new CatalogUnavailableError(service, this.#o.firstAnswerTimeoutMs);
    const problem = this.problem();
    throw problem ? new CatalogForbiddenError(service, problem) : new UnknownServiceError(service);
  }

  #watch(service: string, pinned: boolean): Watched {
    if (this.#services.size >= this.#o.maxServices && !this.#evictOne()) throw new TooManyServicesError(this.#o.maxServices);
    let markReady!: () => void;
    const ready = new Promise<void>((r) => (markReady = r));
    const w: Watched = { set: undefined, ready, markReady, sub: undefined, lastUsed: Date.now(), pinned, listeners: new Set(), inflight: 0 };
    this.#services.set(service, w);
    try {
      w.sub = this.#o.source.subscribe(service, (u) => this.#apply(service, w, u), { pinned });
    } catch (err) {
      // No watch could start (no room left in Consul's connection budget): nothing to keep.
      this.#services.delete(service);
      throw err;
    }
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

  /**
   * At `maxServices`, the least recently used service nobody is using right now (not from config, no
   * listener, no request in flight) makes room: a caller cycling through many real names must not lock
   * out the services apps actually call (they are watched again on their next request). False when
   * every watched service is in use.
   */
  #evictOne(): boolean {
    let victim: [string, Watched] | undefined;
    for (const entry of this.#services) {
      const w = entry[1];
      if (w.pinned || w.listeners.size > 0 || w.inflight > 0) continue;
      if (!victim || w.lastUsed < victim[1].lastUsed) victim = entry;
    }
    if (!victim) return false;
    const [service, w] = victim;
    w.sub?.close();
    this.#services.delete(service);
    if (w.set && this.#o.onRemoved) this.#o.onRemoved(w.set.all.map((e) => e.id));
    return true;
  }

  #sweep(): void {
    const cutoff = Date.now() - this.#o.idleMs;
    for (const [service, w] of this.#services) {
      if (!w.pinned && w.listeners.size === 0 && w.inflight === 0 && w.lastUsed < cutoff) {
        w.sub?.close();
        this.#services.delete(service);
        if (w.set && this.#o.onRemoved) this.#o.onRemoved(w.set.all.map((e) => e.id));
      }
    }
  }
}
