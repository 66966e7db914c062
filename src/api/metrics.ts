// Prometheus metrics (prom-client, one registry owned here) and the proxy's access log, behind ProxyObserver.
import { Counter, Gauge, Registry } from 'prom-client';
import type { Logger } from 'pino';
import { HotCounter, HotHistogram, type HotBuckets, type HotCount } from './hot-metrics.ts';
import type { EgressRecord, ProxyObserver, RequestRecord } from '../proxy/proxy-observer.ts';

export interface MetricsSources {
  /** Age of each watched service's view and whether it is stale. */
  watches: () => { service: string; lastOkAt: number; stale: boolean }[];
  registrations: () => { state: string }[];
  outage: () => boolean;
  /** Connections to the local Consul agent and the blocking-query budget (consul.maxConnections). */
  consul: () => ConsulUsage;
}

export interface ConsulUsage {
  connections: { open: number; busy: number; max: number };
  budget: { capacity: number; reserved: number; inUse: number; byKind: { reserved: number; shared: number }; refused: number };
}

/**
 * Every metric Tandem exports. Labels are bounded: `service` only takes names of catalog services the
 * sidecar watches (at most `watch.maxServices`), never request ids or instance ids.
 */
export class Metrics implements ProxyObserver {
  readonly registry = new Registry();
  #requests: HotCounter;
  #duration: HotHistogram;
  #retries: Counter<'service'>;
  #budget: Counter<'service'>;
  #ejections: Counter<'service'>;
  #egress: Counter<'kind' | 'outcome'>;
  readonly consulErrors: Counter<'operation'>;
  readonly eventsPublished: Counter;
  readonly eventsDelivered: Counter;
  readonly promotions: Counter;
  #access: Logger | undefined;
  /** Per service: its duration buckets and its counts by status and outcome (plain numbers; read at scrape time). */
  #perService = new Map<string, { duration: HotBuckets; counts: Map<string, HotCount> }>();

  constructor(sources: MetricsSources, accessLog: Logger | undefined) {
    const registers = [this.registry];
    this.#access = accessLog;
    this.#requests = new HotCounter({ name: 'tandem_proxy_requests_total', help: 'Proxied requests by service, status class and outcome', labelNames: ['service', 'status_class', 'outcome'], registers });
    this.#duration = new HotHistogram({
      name: 'tandem_proxy_request_duration_seconds',
      help: 'Time from request to the end of the proxied response, retries included',
      labelName: 'service',
      buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
      registers,
    });
    this.#retries = new Counter({ name: 'tandem_proxy_retries_total', help: 'Tries on another instance after a failed one', labelNames: ['service'], registers });
    this.#budget = new Counter({ name: 'tandem_proxy_retry_budget_exhausted_total', help: 'Retries refused by the retry budget', labelNames: ['service'], registers });
    this.#ejections = new Counter({ name: 'tandem_proxy_ejections_total', help: 'Instances ejected after consecutive failures', labelNames: ['service'], registers });
    this.#egress = new Counter({ name: 'tandem_proxy_egress_total', help: 'Requests (http) and tunnels (connect) to hosts that are not catalog services, by outcome (forwarded, refused by proxy.egress, failed, aborted)', labelNames: ['kind', 'outcome'], registers });
    this.consulErrors = new Counter({ name: 'tandem_consul_errors_total', help: 'Failed Consul calls by operation', labelNames: ['operation'], registers });
    this.eventsPublished = new Counter({ name: 'tandem_events_published_total', help: 'Pub/sub events published through this sidecar', registers });
    this.eventsDelivered = new Counter({ name: 'tandem_events_delivered_total', help: 'Pub/sub events delivered to local subscribers', registers });
    this.promotions = new Counter({ name: 'tandem_election_promotions_total', help: 'Leader promotions of local contenders', registers });
    new Gauge({
      name: 'tandem_watch_age_seconds',
      help: 'Time since Consul last confirmed each watched service',
      labelNames: ['service'],
      registers,
      collect() {
        this.reset();
        const now = Date.now();
        for (const w of sources.watches()) if (w.lastOkAt > 0) this.set({ service: w.service }, (now - w.lastOkAt) / 1000);
      },
    });
    new Gauge({
      name: 'tandem_watch_stale',
      help: '1 when a watched service is routed from a view Consul does not confirm right now',
      labelNames: ['service'],
      registers,
      collect() {
        this.reset();
        for (const w of sources.watches()) this.set({ service: w.service }, w.stale ? 1 : 0);
      },
    });
    new Gauge({
      name: 'tandem_outage',
      help: '1 while Consul does not answer the catalog watches',
      registers,
      collect() {
        this.set(sources.outage() ? 1 : 0);
      },
    });
    new Gauge({
      name: 'tandem_consul_connections',
      help: 'Connections to the local Consul agent: open (busy and idle), busy, and the configured maximum (consul.maxConnections)',
      labelNames: ['state'],
      registers,
      collect() {
        const c = sources.consul().connections;
        this.set({ state: 'open' }, c.open);
        this.set({ state: 'busy' }, c.busy);
        this.set({ state: 'max' }, c.max);
      },
    });
    new Gauge({
      name: 'tandem_consul_watches',
      help: "Blocking queries held open to Consul by kind (reserved: the sidecar's own; shared: services apps call), and the budget's capacity",
      labelNames: ['kind'],
      registers,
      collect() {
        const b = sources.consul().budget;
        this.set({ kind: 'reserved' }, b.byKind.reserved);
        this.set({ kind: 'shared' }, b.byKind.shared);
        this.set({ kind: 'capacity' }, b.capacity);
      },
    });
    new Gauge({
      name: 'tandem_consul_watches_refused',
      help: 'Blocking queries the budget refused since start (served by the shared change detector or answered 503)',
      registers,
      collect() {
        this.set(sources.consul().budget.refused);
      },
    });
    new Gauge({
      name: 'tandem_registrations',
      help: "This host's registrations by state",
      labelNames: ['state'],
      registers,
      collect() {
        this.reset();
        const counts = new Map<string, number>();
        for (const r of sources.registrations()) counts.set(r.state, (counts.get(r.state) ?? 0) + 1);
        for (const state of ['registered', 'pending', 'draining']) this.set({ state }, counts.get(state) ?? 0);
      },
    });
  }

  request(r: RequestRecord): void {
    const service = r.service || '_none';
    let s = this.#perService.get(service);
    if (!s) {
      s = { duration: this.#duration.child(service), counts: new Map() };
      this.#perService.set(service, s);
    }
    // No answer at all (the client left first): `none`, not a status class it never got.
    const statusClass = r.status === 0 ? 'none' : r.status < 300 && r.status >= 200 ? '2xx' : `${Math.floor(r.status / 100)}xx`;
    const key = statusClass + r.outcome;
    let c = s.counts.get(key);
    if (!c) {
      c = this.#requests.child(service, statusClass, r.outcome);
      s.counts.set(key, c);
    }
    c.n++;
    s.duration.observe(r.durationMs / 1000);
    this.#access?.info({ reqId: r.requestId, service: r.service, method: r.method, path: r.path, status: r.status, outcome: r.outcome, tries: r.tries, instance: r.instance, ms: Math.round(r.durationMs * 1000) / 1000 }, 'access');
  }

  egress(r: EgressRecord): void {
    this.#egress.labels(r.kind, r.outcome).inc();
    this.#access?.info({ egress: r.target, kind: r.kind, method: r.method, status: r.status, outcome: r.outcome, ms: Math.round(r.durationMs * 1000) / 1000 }, 'access');
  }

  retry(service: string): void {
    this.#retries.labels(service).inc();
  }

  retryBudgetExhausted(service: string): void {
    this.#budget.labels(service).inc();
  }

  ejection(service: string): void {
    this.#ejections.labels(service).inc();
  }

  async text(): Promise<string> {
    return this.registry.metrics();
  }

  get contentType(): string {
    return this.registry.contentType;
  }
}
