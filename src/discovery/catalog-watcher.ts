// Watches services in Consul and feeds the proxy reset/add/remove updates (an EndpointSource): one blocking query per service while the budget has room, the shared change detector beyond it.
import semver from 'semver';
import type { Logger } from 'pino';
import type { EndpointSource, SubscribeOptions, Subscription, Update } from '../proxy/endpoint-source.ts';
import type { ConsulClient } from '../consul/consul-client.ts';
import { BlockingQuery } from '../consul/blocking-query.ts';
import { ConsulBudgetExhaustedError } from '../consul/errors.ts';
import type { StateStore } from '../common/state-store.ts';
import { errSummary } from '../common/errors.ts';
import { ChangeDetector, type DetectorStats } from './change-detector.ts';
import { ServiceNames } from './service-names.ts';
import { ServiceView, type HealthAnswer, type ViewHooks } from './service-view.ts';

export interface CatalogWatcherOptions {
  consul: ConsulClient;
  logger: Logger;
  /** Keeps the last good view of every watched service, so a sidecar started during an outage routes. */
  store?: StateStore | undefined;
  /** Consul's blocking wait per query. */
  waitMs: number;
  /** Cap of the jittered exponential backoff after errors. */
  maxBackoffMs: number;
  /** Why answers may be filtered (ACL denial), from whoever knows (the registrar). */
  problem?: () => string | undefined;
  /**
   * An empty answer right after an outage or an index reset (an agent that came back empty) does not
   * replace a non-empty view for this long: the instances' sidecars are re-registering them.
   */
  emptyGraceMs?: number;
  /** Non-blocking reads in flight at once for the services the shared change detector serves. Default 8. */
  detectorConcurrency?: number;
}

export interface WatchStats {
  service: string;
  index: number;
  /** When Consul last confirmed this view (ms since epoch); for a view loaded from disk, when it was saved. */
  lastOkAt: number;
  consecutiveErrors: number;
  /** The view is not confirmed by Consul right now (outage, or loaded from disk). */
  stale: boolean;
  lastError?: string;
  /** A blocking query of its own, or the shared change detector (no room left in the connection budget). */
  via: 'watch' | 'detector';
}

interface PersistedView {
  savedAt: number;
  endpoints: { id: string; service: string; address: string; port: number; version: string; node: string; healthy: boolean }[];
}

const VIEW_FILE = 'catalog-view';
/** How soon an empty answer held back in the grace time is asked again. */
const RECHECK_MS = 250;

/** One watched service: its view and whatever feeds it now. */
interface Entry {
  view: ServiceView;
  /** Configured upstream: its own watch takes reserved room. */
  reserved: boolean;
  via: 'watch' | 'detector';
  leave: () => void;
}

export class CatalogWatcher implements EndpointSource {
  #o: CatalogWatcherOptions;
  #entries = new Map<string, Entry>();
  #saved = new Map<string, PersistedView>();
  #failing = new Set<ServiceView>();
  #saveTimer: NodeJS.Timeout | undefined;
  #hooks: ViewHooks;
  #names: ServiceNames;
  #detector: ChangeDetector;

  constructor(opts: CatalogWatcherOptions) {
    this.#o = opts;
    this.#names = new ServiceNames({ consul: opts.consul, logger: opts.logger, waitMs: opts.waitMs, maxBackoffMs: opts.maxBackoffMs });
    this.#detector = new ChangeDetector({
      consul: opts.consul,
      waitMs: opts.waitMs,
      maxBackoffMs: opts.maxBackoffMs,
      concurrency: opts.detectorConcurrency ?? 8,
      recheckMs: RECHECK_MS,
      extraTrigger: (wake) => this.#names.onIndexChange(wake),
      onWake: () => this.#promote(),
    });
    this.#hooks = {
      logger: opts.logger,
      emptyGraceMs: opts.emptyGraceMs ?? 10_000,
      failing: (v, failing) => {
        const before = this.#failing.size;
        if (failing) this.#failing.add(v);
        else this.#failing.delete(v);
        if (before === 0 && this.#failing.size > 0) this.#o.logger.warn({ consul: this.#o.consul.readAddress }, 'outage mode: Consul does not answer; routing from the last good view');
        if (before > 0 && this.#failing.size === 0) this.#o.logger.info({ consul: this.#o.consul.readAddress }, 'outage mode over: Consul answers again');
      },
      changed: (v) => this.#remember(v),
      persisted: (service) => {
        const v = this.#saved.get(service);
        return v ? { savedAt: v.savedAt, endpoints: v.endpoints.map((e) => ({ ...e, semver: e.version === '' ? null : semver.parse(e.version) })) } : undefined;
      },
    };
  }

  /** Loads the view persisted by an earlier run (used only for services Consul cannot answer for) and starts the names watch. */
  /** Room comes free when a watch's last request ends (not when it is left): try promoting then. */
  #stopPromoting: () => void = () => undefined;

  async start(): Promise<void> {
    this.#stopPromoting = this.#o.consul.budget.onRelease(() => this.#promote());
    const stored = await this.#o.store?.load(VIEW_FILE).catch((err: unknown) => {
      this.#o.logger.warn({ err: errSummary(err) }, 'ignoring an unreadable persisted catalog view');
      return undefined;
    });
    if (stored && typeof stored === 'object') for (const [k, v] of Object.entries(stored as Record<string, PersistedView>)) this.#saved.set(k, v);
    this.#names.start();
  }

  problem(): string | undefined {
    return this.#o.problem?.();
  }

  get outage(): boolean {
    return this.#failing.size > 0;
  }

  /**
   * From the names watch, without watching `service`. When Consul has not answered the list, a
   * service in the persisted view counts as existing (a sidecar started during an outage routes).
   */
  exists(service: string, timeoutMs: number): boolean | Promise<boolean | undefined> {
    return this.#names.has(service) ?? this.#existsLater(service, Date.now() + timeoutMs);
  }

  async #existsLater(service: string, deadline: number): Promise<boolean | undefined> {
    await this.#names.settled(deadline - Date.now());
    const known = this.#names.has(service);
    if (known !== undefined) return known;
    // Consul fails: a service in the persisted view is routed from it at once (marked stale).
    if (this.#saved.has(service)) return true;
    // Otherwise only an answer helps (an agent still electing a leader fails its first reads).
    await this.#names.answered(deadline - Date.now());
    return this.#names.has(service);
  }

  whenExists(service: string, onExists: () => void): () => void {
    return this.#names.whenExists(service, onExists);
  }

  subscribe(service: string, onUpdate: (u: Update) => void, opts?: SubscribeOptions): Subscription {
    let e = this.#entries.get(service);
    if (!e) {
      e = this.#open(service, opts?.pinned === true);
      this.#entries.set(service, e);
    }
    const entry = e;
    entry.view.listeners.add(onUpdate);
    entry.view.replay(onUpdate);
    return {
      close: () => {
        entry.view.listeners.delete(onUpdate);
        if (entry.view.listeners.size === 0 && this.#entries.get(service) === entry) {
          entry.leave();
          this.#failing.delete(entry.view);
          this.#entries.delete(service);
          if (entry.via === 'watch') this.#promote();
        }
      },
    };
  }

  stats(service?: string): WatchStats[] {
    const list = service === undefined ? [...this.#entries.values()] : [this.#entries.get(service)].filter((e): e is Entry => e !== undefined);
    return list.map(({ view: v, via }) => {
      const s: WatchStats = { service: v.service, index: v.index, lastOkAt: v.lastOkAt, consecutiveErrors: v.consecutiveErrors, stale: v.fromDisk || v.consecutiveErrors > 0, via };
      if (v.lastError !== undefined) s.lastError = v.lastError;
      return s;
    });
  }

  /** The shared change detector's work so far (for measurements and status). */
  detectorStats(): DetectorStats {
    return this.#detector.stats();
  }

  async close(): Promise<void> {
    this.#stopPromoting();
    for (const e of this.#entries.values()) if (e.view.consecutiveErrors === 0) this.#remember(e.view);
    for (const e of this.#entries.values()) e.leave();
    this.#entries.clear();
    this.#detector.close();
    this.#names.close();
    if (this.#saveTimer) {
      clearTimeout(this.#saveTimer);
      this.#saveTimer = undefined;
      await this.#save();
    }
  }

  #open(service: string, reserved: boolean): Entry {
    const view = new ServiceView(service, this.#hooks);
    const entry: Entry = { view, reserved, via: 'watch', leave: () => undefined };
    // The last free slot is the detector's: with it, every further service can still be served.
    const budget = this.#o.consul.budget;
    const detectorHasRoom = this.#detector.stats().running || budget.capacity - budget.inUse >= 2;
    if (detectorHasRoom && this.#watch(entry)) return entry;
    // No room in the budget for a blocking query of its own: the shared detector serves it instead
    // (throws ConsulBudgetExhaustedError only when the detector itself cannot start).
    entry.via = 'detector';
    entry.leave = this.#detector.add(service, view);
    return entry;
  }

  /** Gives `entry` a blocking query of its own; false when the budget has no room for it. */
  #watch(entry: Entry): boolean {
    const { view } = entry;
    const query = new BlockingQuery<HealthAnswer>({
      name: `health:${view.service}`,
      fetch: async (q) => {
        try {
          // All instances, not only ?passing: the proxy must tell "unknown service" from "none healthy"
          // and name the versions that exist; health is read from each instance's checks.
          const r = await this.#o.consul.healthService(view.service, { ...q, passing: false });
          return { ...r, value: { index: r.index, entries: r.value } };
        } catch (err) {
          if (!q.signal.aborted) view.failed(err);
          throw err;
        }
      },
      waitMs: this.#o.waitMs,
      maxBackoffMs: this.#o.maxBackoffMs,
      budget: this.#o.consul.budget,
      kind: entry.reserved ? 'reserved' : 'shared',
    });
    let unsubscribe: () => void;
    try {
      // Ask again shortly when an answer is held back (an index reset would otherwise not block).
      unsubscribe = query.subscribe((answer) => {
        if (!view.accept(answer)) query.requery(RECHECK_MS);
      });
    } catch (err) {
      if (err instanceof ConsulBudgetExhaustedError) return false;
      throw err;
    }
    entry.via = 'watch';
    entry.leave = () => {
      unsubscribe();
      query.close();
    };
    return true;
  }

  /** Room came free: a service the detector serves gets a watch of its own again (lower latency, fewer reads). */
  #promote(): void {
    for (const e of this.#entries.values()) {
      if (e.via !== 'detector') continue;
      if (this.#o.consul.budget.sharedFree === 0) return;
      const fromDetector = e.leave;
      // The new watch's first answer is compared with the current view: no spurious reset.
      if (this.#watch(e)) fromDetector();
    }
  }

  /** A good answer changed the view: keep it (written at most once a second). */
  #remember(v: ServiceView): void {
    if (!this.#o.store || !v.current || v.fromDisk) return;
    this.#saved.set(v.service, {
      savedAt: Date.now(),
      endpoints: [...v.current.values()].map((e) => ({ id: e.id, service: e.service, address: e.address, port: e.port, version: e.version, node: e.node, healthy: e.healthy })),
    });
    this.#saveTimer ??= setTimeout(() => {
      this.#saveTimer = undefined;
      void this.#save();
    }, 1000);
  }

  async #save(): Promise<void> {
    try {
      await this.#o.store?.save(VIEW_FILE, Object.fromEntries(this.#saved));
    } catch (err) {
      this.#o.logger.warn({ err: errSummary(err) }, 'could not persist the catalog view');
    }
  }
}
