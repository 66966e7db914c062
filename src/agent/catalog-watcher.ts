// Watches services in Consul with blocking queries and feeds the proxy reset/add/remove updates (an EndpointSource).
import semver from 'semver';
import type { Logger } from 'pino';
import type { Endpoint, EndpointSource, Subscription, Update } from '../proxy/endpoint-source.ts';
import type { ConsulClient, HealthEntry } from './consul-client.ts';
import { errSummary } from './errors.ts';

export interface CatalogWatcherOptions {
  consul: ConsulClient;
  logger: Logger;
  /** Consul's blocking wait per query. */
  waitMs: number;
  /** Cap of the jittered exponential backoff after errors. */
  maxBackoffMs: number;
}

export interface WatchStats {
  service: string;
  index: number;
  /** When the last successful answer arrived (ms since epoch), 0 if never. */
  lastOkAt: number;
  consecutiveErrors: number;
  lastError?: string;
}

type Listener = (u: Update) => void;

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
  #o: CatalogWatcherOptions;
  #abort = new AbortController();

  constructor(service: string, o: CatalogWatcherOptions) {
    this.service = service;
    this.#o = o;
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
        if (this.consecutiveErrors === 1) this.#o.logger.warn({ service: this.service, err: errSummary(err) }, 'catalog watch failed; routing from the last good view');
        // Jittered, capped exponential backoff: watchers of many services must not retry in lockstep.
        const base = Math.min(100 * 2 ** Math.min(this.consecutiveErrors, 20), this.#o.maxBackoffMs);
        await sleep(base / 2 + Math.random() * (base / 2), signal);
        continue;
      }
      if (this.consecutiveErrors > 0) this.#o.logger.info({ service: this.service }, 'catalog watch recovered');
      this.consecutiveErrors = 0;
      this.lastError = undefined;
      this.lastOkAt = Date.now();
      // Index rules: reset when it goes backwards (snapshot restore, agent loss); never below 1.
      this.index = result.index < this.index ? 0 : Math.max(result.index, 1);
      this.#publish(result.value.map(toEndpoint));
    }
  }

  /** Compares with the last view and sends only what changed (a wake-up does not mean a change). */
  #publish(endpoints: Endpoint[]): void {
    const next = new Map(endpoints.map((e) => [e.id, e]));
    const prev = this.current;
    this.current = next;
    if (!prev) {
      this.#emit({ kind: 'reset', endpoints: [...next.values()] });
      return;
    }
    const added: Endpoint[] = [];
    for (const [id, e] of next) {
      const old = prev.get(id);
      if (!old || !same(old, e)) added.push(e);
    }
    const removed = [...prev.keys()].filter((id) => !next.has(id));
    if (removed.length > 0) this.#emit({ kind: 'remove', ids: removed });
    if (added.length > 0) this.#emit({ kind: 'add', endpoints: added });
  }

  #emit(u: Update): void {
    for (const l of this.listeners) l(u);
  }
}

export class CatalogWatcher implements EndpointSource {
  #o: CatalogWatcherOptions;
  #watches = new Map<string, ServiceWatch>();

  constructor(opts: CatalogWatcherOptions) {
    this.#o = opts;
  }

  subscribe(service: string, onUpdate: Listener): Subscription {
    let w = this.#watches.get(service);
    if (!w) {
      w = new ServiceWatch(service, this.#o);
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
          this.#watches.delete(service);
        }
      },
    };
  }

  stats(): WatchStats[] {
    return [...this.#watches.values()].map((w) => {
      const s: WatchStats = { service: w.service, index: w.index, lastOkAt: w.lastOkAt, consecutiveErrors: w.consecutiveErrors };
      if (w.lastError !== undefined) s.lastError = w.lastError;
      return s;
    });
  }

  close(): void {
    for (const w of this.#watches.values()) w.stop();
    this.#watches.clear();
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
