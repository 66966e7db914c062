// Watches services in Consul with blocking queries and feeds the proxy reset/add/remove updates (an EndpointSource).
import semver from 'semver';
import type { Logger } from 'pino';
import type { Endpoint, EndpointSource, Subscription, Update } from '../proxy/endpoint-source.ts';
import type { ConsulClient, HealthEntry } from '../consul/consul-client.ts';
import type { StateStore } from '../common/state-store.ts';
import { errSummary } from '../common/errors.ts';

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
}

interface PersistedView {
  savedAt: number;
  endpoints: { id: string; service: string; address: string; port: number; version: string; node: string; healthy: boolean }[];
}

const VIEW_FILE = 'catalog-view';

type Listener = (u: Update) => void;

interface WatchHooks {
  failing(w: ServiceWatch, failing: boolean): void;
  changed(w: ServiceWatch): void;
  persisted(service: string): { savedAt: number; endpoints: Endpoint[] } | undefined;
}

function toEndpoint(e: HealthEntry): Endpoint {
  const version = e.meta['version'] ?? '';
  const parsed = version === '' ? null : semver.parse(version);
  return { id: e.id, service: e.name, address: e.address, port: e.port, version, semver: parsed, node: e.node, healthy: e.status === 'passing' };
}

function same(a: Endpoint, b: Endpoint): boolean {
  return a.address === b.address && a.port === b.port && a.version === b.version && a.healthy === b.healthy && a.node === b.node;
}

/** One service's blocking-query loop, shared by every subscriber of that service. */
class ServiceWatch {
  readonly service: string;
  readonly listeners = new Set<Listener>();
  current: Map<string, Endpoint> | undefined;
  index = 0;
  lastOkAt = 0;
  consecutiveErrors = 0;
  lastError: string | undefined;
  fromDisk = false;
  #emptyHoldUntil = 0;
  #o: CatalogWatcherOptions;
  #abort = new AbortController();
  #hooks: WatchHooks;

  constructor(service: string, o: CatalogWatcherOptions, hooks: WatchHooks) {
    this.service = service;
    this.#o = o;
    this.#hooks = hooks;
  }

  start(): void {
    void this.#loop();
  }

  stop(): void {
    this.#abort.abort();
  }

  async #loop(): Promise<void> {
    const signal = this.#abort.signal;
    while (!signal.aborted) {
      let result;
      try {
        // All instances, not only ?passing: the proxy must tell "unknown service" from "none healthy"
        // and name the versions that exist; health is read from each instance's checks.
        result = await this.#o.consul.healthService(this.service, { index: this.index, waitMs: this.#o.waitMs, passing: false, signal });
      } catch (err) {
        if (signal.aborted) return;
        this.consecutiveErrors++;
        this.lastError = errSummary(err).message;
        if (this.consecutiveErrors === 1) {
          this.#o.logger.warn({ service: this.service, err: errSummary(err) }, 'catalog watch failed; routing from the last good view');
          this.#hooks.failing(this, true);
          // Never seen Consul's answer for it: the view persisted by an earlier run is better than nothing.
          const saved = this.current ? undefined : this.#hooks.persisted(this.service);
          if (saved) {
            this.fromDisk = true;
            this.lastOkAt = saved.savedAt;
            this.#publish(saved.endpoints);
          }
        }
        // Jittered, capped exponential backoff: watchers of many services must not retry in lockstep.
        const base = Math.min(100 * 2 ** Math.min(this.consecutiveErrors, 20), this.#o.maxBackoffMs);
        await sleep(base / 2 + Math.random() * (base / 2), signal);
        continue;
      }
      const recovering = this.consecutiveErrors > 0 || result.index < this.index;
      if (this.consecutiveErrors > 0) {
        this.#o.logger.info({ service: this.service }, 'catalog watch recovered');
        this.#hooks.failing(this, false);
      }
      this.consecutiveErrors = 0;
      this.lastError = undefined;
      this.fromDisk = false;
      this.lastOkAt = Date.now();
      // Index rules: reset when it goes backwards (snapshot restore, agent loss); never below 1.
      this.index = result.index < this.index ? 0 : Math.max(result.index, 1);
      if (result.value.length === 0 && this.current && this.current.size > 0) {
        if (recovering && this.#emptyHoldUntil === 0) this.#emptyHoldUntil = Date.now() + (this.#o.emptyGraceMs ?? 10_000);
        if (Date.now() < this.#emptyHoldUntil) {
          // Keep the last good view; ask again shortly (an index reset would otherwise not block).
          await sleep(250, signal);
          continue;
        }
      }
      this.#emptyHoldUntil = 0;
      if (this.#publish(result.value.map(toEndpoint))) this.#hooks.changed(this);
    }
  }

  /** Compares with the last view and sends only what changed (a wake-up does not mean a change). */
  #publish(endpoints: Endpoint[]): boolean {
    const next = new Map(endpoints.map((e) => [e.id, e]));
    const prev = this.current;
    this.current = next;
    if (!prev) {
      this.#emit({ kind: 'reset', endpoints: [...next.values()] });
      return true;
    }
    const added: Endpoint[] = [];
    for (const [id, e] of next) {
      const old = prev.get(id);
      if (!old || !same(old, e)) added.push(e);
    }
    const removed = [...prev.keys()].filter((id) => !next.has(id));
    if (removed.length > 0) this.#emit({ kind: 'remove', ids: removed });
    if (added.length > 0) this.#emit({ kind: 'add', endpoints: added });
    return removed.length > 0 || added.length > 0;
  }

  #emit(u: Update): void {
    for (const l of this.listeners) l(u);
  }
}

export class CatalogWatcher implements EndpointSource {
  #o: CatalogWatcherOptions;
  #watches = new Map<string, ServiceWatch>();
  #saved = new Map<string, PersistedView>();
  #failing = new Set<ServiceWatch>();
  #saveTimer: NodeJS.Timeout | undefined;
  #hooks: WatchHooks;

  constructor(opts: CatalogWatcherOptions) {
    this.#o = opts;
    this.#hooks = {
      failing: (w, failing) => {
        const before = this.#failing.size;
        if (failing) this.#failing.add(w);
        else this.#failing.delete(w);
        if (before === 0 && this.#failing.size > 0) this.#o.logger.warn({ consul: this.#o.consul.readAddress }, 'outage mode: Consul does not answer; routing from the last good view');
        if (before > 0 && this.#failing.size === 0) this.#o.logger.info({ consul: this.#o.consul.readAddress }, 'outage mode over: Consul answers again');
      },
      changed: (w) => this.#remember(w),
      persisted: (service) => {
        const v = this.#saved.get(service);
        return v ? { savedAt: v.savedAt, endpoints: v.endpoints.map((e) => ({ ...e, semver: e.version === '' ? null : semver.parse(e.version) })) } : undefined;
      },
    };
  }

  /** Loads the view persisted by an earlier run (used only for services Consul cannot answer for). */
  async start(): Promise<void> {
    const stored = await this.#o.store?.load(VIEW_FILE).catch((err: unknown) => {
      this.#o.logger.warn({ err: errSummary(err) }, 'ignoring an unreadable persisted catalog view');
      return undefined;
    });
    if (stored && typeof stored === 'object') for (const [k, v] of Object.entries(stored as Record<string, PersistedView>)) this.#saved.set(k, v);
  }

  problem(): string | undefined {
    return this.#o.problem?.();
  }

  get outage(): boolean {
    return this.#failing.size > 0;
  }

  subscribe(service: string, onUpdate: Listener): Subscription {
    let w = this.#watches.get(service);
    if (!w) {
      w = new ServiceWatch(service, this.#o, this.#hooks);
      this.#watches.set(service, w);
      w.start();
    }
    const watch = w;
    watch.listeners.add(onUpdate);
    if (watch.current) {
      const snapshot = [...watch.current.values()];
      queueMicrotask(() => watch.listeners.has(onUpdate) && onUpdate({ kind: 'reset', endpoints: snapshot }));
    }
    return {
      close: () => {
        watch.listeners.delete(onUpdate);
        if (watch.listeners.size === 0 && this.#watches.get(service) === watch) {
          watch.stop();
          this.#failing.delete(watch);
          this.#watches.delete(service);
        }
      },
    };
  }

  stats(service?: string): WatchStats[] {
    const list = service === undefined ? [...this.#watches.values()] : [this.#watches.get(service)].filter((w): w is ServiceWatch => w !== undefined);
    return list.map((w) => {
      const s: WatchStats = { service: w.service, index: w.index, lastOkAt: w.lastOkAt, consecutiveErrors: w.consecutiveErrors, stale: w.fromDisk || w.consecutiveErrors > 0 };
      if (w.lastError !== undefined) s.lastError = w.lastError;
      return s;
    });
  }

  async close(): Promise<void> {
    for (const w of this.#watches.values()) if (w.consecutiveErrors === 0) this.#remember(w);
    for (const w of this.#watches.values()) w.stop();
    this.#watches.clear();
    if (this.#saveTimer) {
      clearTimeout(this.#saveTimer);
      this.#saveTimer = undefined;
      await this.#save();
    }
  }

  /** A good answer changed the view: keep it (written at most once a second). */
  #remember(w: ServiceWatch): void {
    if (!this.#o.store || !w.current || w.fromDisk) return;
    this.#saved.set(w.service, {
      savedAt: Date.now(),
      endpoints: [...w.current.values()].map((e) => ({ id: e.id, service: e.service, address: e.address, port: e.port, version: e.version, node: e.node, healthy: e.healthy })),
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

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const t = setTimeout(done, ms);
    function done() {
      clearTimeout(t);
      signal.removeEventListener('abort', done);
      resolve();
    }
    signal.addEventListener('abort', done, { once: true });
  });
}
