// One service's routing view: Consul's answers turned into reset/add/remove diffs, the empty-answer grace, the persisted fallback and its stats.
import semver from 'semver';
import type { Logger } from 'pino';
import type { Endpoint, Update } from '../proxy/endpoint-source.ts';
import type { HealthEntry } from '../consul/consul-client.ts';
import { errSummary } from '../common/errors.ts';
import { isSidecarMarked } from '../common/sidecar-marker.ts';

/** One answer of `/v1/health/service/<name>` (all instances, any health), from a watch or the shared detector. */
export interface HealthAnswer {
  index: number;
  entries: HealthEntry[];
}

/**
 * What feeds a view. Both a per-service watch and the shared change detector drive views through
 * this, so callers cannot tell which one serves them.
 */
export interface ViewSink {
  /** A read failed (not an abort). */
  failed(err: unknown): void;
  /** A good answer; false when it was held back (an empty answer in the grace time): read again shortly. */
  accept(answer: HealthAnswer): boolean;
}

export interface ViewHooks {
  logger: Logger;
  /** How long an empty answer right after an outage or an index reset may not replace a non-empty view. */
  emptyGraceMs: number;
  failing(v: ServiceView, failing: boolean): void;
  changed(v: ServiceView): void;
  persisted(service: string): { savedAt: number; endpoints: Endpoint[] } | undefined;
}

export function toEndpoint(e: HealthEntry): Endpoint {
  const version = e.meta['version'] ?? '';
  const parsed = version === '' ? null : semver.parse(version);
  const limit = maxInFlightOf(e.meta['tandem_max_inflight']);
  const base = { id: e.id, service: e.name, address: e.address, port: e.port, version, semver: parsed, node: e.node, healthy: e.status === 'passing', ...(limit !== undefined ? { maxInFlight: limit } : {}) };
  // A sidecar's mark: the proxy's control-plane guard refuses the instance whatever its service name.
  return isSidecarMarked(e.tags, e.meta) ? { ...base, controlPlane: true } : base;
}

/** A limit someone wrote into Consul by hand may be anything: only a positive integer counts. */
function maxInFlightOf(raw: string | undefined): number | undefined {
  if (raw === undefined || !/^[1-9][0-9]{0,8}$/.test(raw)) return undefined;
  return Number(raw);
}

function same(a: Endpoint, b: Endpoint): boolean {
  return a.address === b.address && a.port === b.port && a.version === b.version && a.healthy === b.healthy && a.node === b.node && a.controlPlane === b.controlPlane && a.maxInFlight === b.maxInFlight;
}

export class ServiceView implements ViewSink {
  readonly service: string;
  readonly listeners = new Set<(u: Update) => void>();
  current: Map<string, Endpoint> | undefined;
  index = 0;
  lastOkAt = 0;
  consecutiveErrors = 0;
  lastError: string | undefined;
  fromDisk = false;
  #emptyHoldUntil = 0;
  #hooks: ViewHooks;

  constructor(service: string, hooks: ViewHooks) {
    this.service = service;
    this.#hooks = hooks;
  }

  failed(err: unknown): void {
    this.consecutiveErrors++;
    this.lastError = errSummary(err).message;
    if (this.consecutiveErrors !== 1) return;
    this.#hooks.logger.warn({ service: this.service, err: errSummary(err) }, 'catalog watch failed; routing from the last good view');
    this.#hooks.failing(this, true);
    // Never seen Consul's answer for it: the view persisted by an earlier run is better than nothing.
    const saved = this.current ? undefined : this.#hooks.persisted(this.service);
    if (saved) {
      this.fromDisk = true;
      this.lastOkAt = saved.savedAt;
      this.#publish(saved.endpoints);
    }
  }

  accept(a: HealthAnswer): boolean {
    const recovering = this.consecutiveErrors > 0 || a.index < this.index;
    if (this.consecutiveErrors > 0) {
      this.#hooks.logger.info({ service: this.service }, 'catalog watch recovered');
      this.#hooks.failing(this, false);
    }
    this.consecutiveErrors = 0;
    this.lastError = undefined;
    this.fromDisk = false;
    this.lastOkAt = Date.now();
    this.index = a.index;
    if (a.entries.length === 0 && this.current && this.current.size > 0) {
      // An agent that came back empty: the instances' sidecars are re-registering them meanwhile.
      if (recovering && this.#emptyHoldUntil === 0) this.#emptyHoldUntil = Date.now() + this.#hooks.emptyGraceMs;
      if (Date.now() < this.#emptyHoldUntil) return false;
    }
    this.#emptyHoldUntil = 0;
    if (this.#publish(a.entries.map(toEndpoint))) this.#hooks.changed(this);
    return true;
  }

  /** Sends a late subscriber the current view (asynchronously, if it is still subscribed then). */
  replay(listener: (u: Update) => void): void {
    if (!this.current) return;
    const snapshot = [...this.current.values()];
    queueMicrotask(() => this.listeners.has(listener) && listener({ kind: 'reset', endpoints: snapshot }));
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
