// The composition root: builds every part of the sidecar from the frozen config and owns their start/close order.
import { isIP } from 'node:net';
import type { Logger } from 'pino';
import type { ServiceSpec } from './protocol/wire.ts';
import { parseListen, type FrozenConfig } from './config/config.ts';
import { ConsulClient } from './consul/consul-client.ts';
import { ControlApi } from './api/control-api.ts';
import { ConsulPermissionError, ConsulUnavailableError } from './consul/errors.ts';
import { errSummary } from './common/errors.ts';
import { createLogger } from './common/logger.ts';
import { Registrar } from './registration/registrar.ts';
import { routingRoutes } from './api/routing-routes.ts';
import { CatalogWatcher } from './discovery/catalog-watcher.ts';
import { EventBus, type EventBusStats } from './cluster/event-bus.ts';
import { Elections } from './cluster/election.ts';
import { Directory } from './cluster/members.ts';
import { StreamLimit } from './api/sse.ts';
import { eventRoutes } from './api/event-routes.ts';
import { DrainController } from './cluster/drain.ts';
import { lineageRoutes } from './api/lineage-routes.ts';
import { Metrics } from './api/metrics.ts';
import { statusRoutes } from './api/status-routes.ts';
import { Balancer } from './proxy/balancing/balancer.ts';
import { LoadTracker } from './proxy/balancing/load-tracker.ts';
import { balancerMetrics } from './api/balancer-metrics.ts';
import { Forwarder } from './proxy/forwarder.ts';
import { OutlierDetector } from './proxy/balancing/outlier-detector.ts';
import { ProxyServer } from './proxy/proxy-server.ts';
import { ControlPlaneGuard } from './proxy/control-plane.ts';
import { EgressPolicy, isLoopbackHost } from './proxy/egress.ts';
import { RangeCache } from './proxy/balancing/range-cache.ts';
import { RoutingTable } from './proxy/routing-table.ts';
import { HealthTracker } from './proxy/balancing/health-tracker.ts';
import { RetryBudget } from './proxy/balancing/retry-budget.ts';
import { StateStore } from './common/state-store.ts';
import { TANDEM_VERSION } from './common/version.ts';

export interface SidecarOptions {
  config: FrozenConfig;
  /** Defaults to a pino logger at config.log.level on stderr. */
  logger?: Logger;
}

export interface SidecarAddresses {
  api: string;
  proxy: string;
}

export class Sidecar {
  readonly config: FrozenConfig;
  readonly logger: Logger;
  #consul: ConsulClient;
  #store: StateStore;
  #registrar: Registrar | undefined;
  #api: ControlApi | undefined;
  #watcher: CatalogWatcher | undefined;
  #table: RoutingTable | undefined;
  #forwarder: Forwarder | undefined;
  #proxy: ProxyServer | undefined;
  #bus: EventBus | undefined;
  #drain: DrainController | undefined;
  #elections: Elections | undefined;
  #streams: StreamLimit | undefined;
  #addresses: SidecarAddresses | undefined;
  #closing: Promise<void> | undefined;

  constructor(opts: SidecarOptions) {
    this.config = opts.config;
    this.logger = opts.logger ?? createLogger(opts.config.log.level);
    this.#consul = new ConsulClient({
      address: this.config.consul.address,
      token: this.config.consul.token,
      datacenter: this.config.consul.datacenter,
      requestTimeoutMs: this.config.consul.requestTimeoutMs,
      fallbackAddresses: this.config.consul.fallbackAddresses,
      staleReads: this.config.consul.staleReads,
      maxStaleMs: this.config.consul.maxStaleMs,
      maxConnections: this.config.consul.maxConnections,
    });
    this.#store = new StateStore(this.config.stateDir);
  }

  /** Consul as the sidecar sees it now: `down` = unreachable, `forbidden` = refusing the sidecar's ACL token. */
  get consulState(): 'up' | 'down' | 'unknown' | 'forbidden' {
    const r = this.#registrar;
    if (!r) return 'unknown';
    return r.permissionProblem ? 'forbidden' : r.consulReachable === undefined ? 'unknown' : r.consulReachable ? 'up' : 'down';
  }

  get addresses(): SidecarAddresses {
    if (!this.#addresses) throw new Error('sidecar not started');
    return this.#addresses;
  }

  /** Read-only: discovery's Consul footprint (the connection budget in use, each service watch, the shared change detector). */
  discoveryStats(): { budget: ReturnType<ConsulClient['budget']['snapshot']>; watches: ReturnType<CatalogWatcher['stats']>; detector: ReturnType<CatalogWatcher['detectorStats']> | undefined } {
    return { budget: this.#consul.budget.snapshot(), watches: this.#watcher?.stats() ?? [], detector: this.#watcher?.detectorStats() };
  }

  /** Read-only: the cluster features' footprint (event bus, open control-API streams, the connection budget). */
  clusterStats(): { events: EventBusStats | undefined; openStreams: number; budget: ReturnType<ConsulClient['budget']['snapshot']> } {
    return { events: this.#bus?.stats(), openStreams: this.#streams?.open ?? 0, budget: this.#consul.budget.snapshot() };
  }

  async start(): Promise<SidecarAddresses> {
    const c = this.config;
    // Asked once, while the rest starts; never rejects (see aclsEnabledAtStart for the rule when Consul does not answer).
    const aclsEnabled = aclsEnabledAtStart(this.#consul, c.consul.token !== undefined, this.logger);
    await this.#store.start();
    const apiListen = parseListen(c.api.listen);
    // The sidecar's own service needs the API's real port (it may be 0 = any): the API listens
    // first, and the registrar adds that service when it starts.
    const registrar = new Registrar({
      consul: this.#consul,
      store: this.#store,
      logger: this.logger,
      nodeName: c.node.name,
      advertiseAddress: c.node.advertiseAddress,
      syncIntervalMs: c.registration.syncIntervalMs,
      drainMs: c.registration.drainMs,
      checkIntervalMs: c.registration.checkIntervalMs,
      checkTimeoutMs: c.registration.checkTimeoutMs,
      ttlMs: c.registration.ttlMs,
      livenessGraceMs: c.registration.livenessGraceMs,
      configServices: c.services as ServiceSpec[],
    });
    this.#registrar = registrar;
    // Data path: Consul watch → updates → routing table → balancer → forwarder; failures feed the outlier detector.
    const watcher = new CatalogWatcher({
      consul: this.#consul,
      logger: this.logger,
      store: this.#store,
      waitMs: c.watch.waitMs,
      maxBackoffMs: c.watch.maxBackoffMs,
      problem: () => registrar.permissionProblem,
    });
    this.#watcher = watcher;
    await watcher.start();
    const outliers = new OutlierDetector({ ...c.proxy.ejection });
    // The data plane never reaches a control plane: Consul agents, this sidecar's listeners, every sidecar in the catalog.
    const guard = new ControlPlaneGuard({ consulAddresses: [this.#consul.address, ...c.consul.fallbackAddresses] });
    const forwarder = new Forwarder({
      guard,
      upstreamTimeoutMs: c.proxy.upstreamTimeoutMs,
      bodyTimeoutMs: c.proxy.bodyTimeoutMs,
      connectTimeoutMs: c.proxy.connectTimeoutMs,
      connectionsPerInstance: c.proxy.connectionsPerInstance,
      // An upstream's answer head: larger than a request's (cookies), still bounded.
      limits: { maxHeaderBytes: Math.max(65_536, c.proxy.maxHeaderBytes), maxUrlBytes: c.proxy.maxUrlBytes, maxHeaders: 1000 },
    });
    this.#forwarder = forwarder;
    const health = new HealthTracker({ slowStartMs: c.proxy.slowStartMs, flapThreshold: c.proxy.flap.threshold, flapWindowMs: c.proxy.flap.windowMs, flapHoldMs: c.proxy.flap.holdMs });
    // Per-instance load (in flight, latency), shared by the balancer and the instances view.
    const loads = new LoadTracker();
    const table = new RoutingTable({
      source: watcher,
      firstAnswerTimeoutMs: c.watch.firstAnswerTimeoutMs,
      idleMs: c.watch.idleMs,
      maxServices: c.watch.maxServices,
      upstreams: c.upstreams,
      onChange: (prev, next) => health.observe(prev, next),
      onRemoved: (ids) => {
        outliers.forget(ids);
        forwarder.forget(ids);
        loads.forget(ids);
      },
    });
    this.#table = table;
    const ranges = new RangeCache();
    const proxyListen = parseListen(c.proxy.listen);
    if (c.proxy.egress.mode === 'public' && !isLoopbackHost(proxyListen.host)) {
      this.logger.warn({ listen: c.proxy.listen }, 'proxy.egress.mode is public on a proxy that listens beyond loopback: any host that reaches the proxy can use it to reach public addresses');
    }
    const metrics = new Metrics(
      {
        watches: () => watcher.stats(),
        registrations: () => registrar.snapshot(),
        outage: () => watcher.outage,
        consul: () => ({ connections: this.#consul.connections(), budget: this.#consul.budget.snapshot() }),
      },
      c.log.access ? this.logger.child({ component: 'access' }) : undefined,
    );
    this.#consul.onError = (operation) => metrics.consulErrors.labels(operation).inc();
    const balancer = new Balancer(outliers, health, Math.random, {
      balancer: c.proxy.balancer,
      services: c.proxy.services,
      loadFactor: c.proxy.sticky.loadFactor,
      queueTimeoutMs: c.proxy.queueTimeoutMs,
      maxQueued: c.proxy.maxQueued,
      loads,
      events: balancerMetrics(metrics.registry),
    });
    const proxy = new ProxyServer({
      host: proxyListen.host,
      port: proxyListen.port,
      table,
      balancer,
      outliers,
      ranges,
      forwarder,
      logger: this.logger.child({ component: 'proxy' }),
      retries: c.proxy.retries,
      retryStatuses: c.proxy.retryStatuses,
      retryBufferBytes: c.proxy.retryBufferBytes,
      maxUrlBytes: c.proxy.maxUrlBytes,
      maxHeaderBytes: c.proxy.maxHeaderBytes,
      maxHeaders: c.proxy.maxHeaders,
      headersTimeoutMs: c.proxy.headersTimeoutMs,
      upstreamTimeoutMs: c.proxy.upstreamTimeoutMs,
      requestTimeoutMs: c.proxy.requestTimeoutMs,
      retryBudget: new RetryBudget({ ...c.proxy.retryBudget }),
      broadcastTimeoutMs: c.proxy.broadcastTimeoutMs,
      broadcastMaxBodyBytes: c.proxy.broadcastMaxBodyBytes,
      observer: metrics,
      guard,
      sidecars: watcher,
      // Hosts that are not catalog services (see docs/security.md): judged on the resolved address, control planes never.
      egress: new EgressPolicy({ ...c.proxy.egress, listenHost: proxyListen.host, guard, connectTimeoutMs: c.proxy.connectTimeoutMs }),
    });
    this.#proxy = proxy;

    const bus = new EventBus({ consul: this.#consul, logger: this.logger, retentionMs: c.events.retentionMs, waitMs: c.watch.waitMs, maxBackoffMs: c.watch.maxBackoffMs });
    this.#bus = bus;
    const drain = new DrainController({ consul: this.#consul, registrar, logger: this.logger, nodeName: c.node.name, waitMs: c.watch.waitMs, maxBackoffMs: c.watch.maxBackoffMs, graceMs: c.registration.drainMs });
    this.#drain = drain;
    let sidecarIdNow = '';
    const elections = new Elections({
      consul: this.#consul,
      store: this.#store,
      logger: this.logger,
      nodeName: c.node.name,
      sidecarId: () => sidecarIdNow,
      lockDelayMs: c.elections.lockDelayMs,
      sessionTtlMs: c.elections.sessionTtlMs,
      waitMs: c.watch.waitMs,
      maxBackoffMs: c.watch.maxBackoffMs,
    });
    this.#elections = elections;
    // Reads the sessions a killed predecessor left in the state dir and releases their locks (in the background).
    await elections.start();
    const streams = new StreamLimit(c.api.maxStreams);
    this.#streams = streams;

    const api = new ControlApi({
      host: apiListen.host,
      port: apiListen.port,
      logger: this.logger,
      version: TANDEM_VERSION,
      registrar,
      status: () => ({
        consul: this.consulState,
        outage: watcher.outage,
        watched: watcher.stats().length,
        proxy: this.#addresses?.proxy ?? '',
      }),
      token: c.api.token,
      aclsEnabled: await aclsEnabled,
      plugins: [
        streams.plugin(),
        routingRoutes({
          table,
          balancer,
          outliers,
          ranges,
          health,
          viewInfo: (service) => {
            const st = watcher.stats(service)[0];
            return st ? { lastOkAt: st.lastOkAt, stale: st.stale } : undefined;
          },
        }),
        eventRoutes(bus, c.events.maxPayloadBytes, { published: () => metrics.eventsPublished.inc(), delivered: () => metrics.eventsDelivered.inc() }),
        statusRoutes({
          metrics,
          balancer,
          table,
          outliers,
          health,
          registrar,
          watches: (service) => watcher.stats(service)[0],
          info: () => ({
            version: TANDEM_VERSION,
            node: c.node.name,
            consul: this.#consul.address,
            consulReachable: registrar.consulReachable ?? null,
            consulConnections: { ...this.#consul.connections(), watches: this.#consul.budget.snapshot() },
            outage: watcher.outage,
            addresses: this.#addresses ?? null,
          }),
        }),
        lineageRoutes({
          onPromoted: () => metrics.promotions.inc(),
          elections,
          drain,
          directory: new Directory(this.#consul),
          registrar,
          defaultDrainDeadlineMs: c.drain.deadlineMs,
        }),
      ],
    });
    const { port: proxyPort } = await proxy.start();
    table.start();
    const { port: apiPort } = await api.start();
    this.#api = api;
    const sidecarId = `tandem-${c.node.name}-${apiPort}`;
    guard.protect(proxyListen.host, proxyPort);
    guard.protect(apiListen.host, apiPort);
    guard.protectInstance(sidecarId);
    const wildcard = apiListen.host === '0.0.0.0' || apiListen.host === '::';
    const sidecarService: ServiceSpec = {
      name: 'tandem',
      id: sidecarId,
      version: TANDEM_VERSION,
      port: apiPort,
      tags: ['tandem-sidecar'],
      meta: { api: `${apiListen.host}:${apiPort}`, proxy: `${proxyListen.host}:${proxyPort}` },
      // Its own check asks for liveness only (see the control API's health route): a sidecar that
      // answers is never reaped, however degraded; one that does not is, after the backstop.
      check: { kind: 'http', path: '/v1/health?from=consul' },
      // A sidecar listening on one address is checked there; on a wildcard, at the advertised address.
      ...(wildcard || isIP(apiListen.host) === 0 ? {} : { address: apiListen.host }),
    };
    this.#addresses = { api: httpUrl(apiListen.host, apiPort), proxy: httpUrl(proxyListen.host, proxyPort) };
    bus.start(sidecarId);
    sidecarIdNow = sidecarId;
    await registrar.start(sidecarService);
    proxy.open();
    drain.start();
    this.logger.info({ api: this.#addresses.api, proxy: this.#addresses.proxy, consul: this.#consul.address, node: c.node.name, version: TANDEM_VERSION }, 'tandem sidecar started');
    return this.#addresses;
  }

  /** Runs one shutdown step, giving up (with a log line naming it) after `ms`. */
  async #step(name: string, fn: () => Promise<void> | undefined, ms: number): Promise<void> {
    let timer: NodeJS.Timeout | undefined;
    const gaveUp = new Promise<'timeout'>((resolve) => {
      timer = setTimeout(() => resolve('timeout'), ms);
    });
    try {
      const r = await Promise.race([Promise.resolve(fn()).catch((err: unknown) => this.logger.warn({ step: name, err: { message: (err as Error).message } }, 'shutdown step failed')), gaveUp]);
      if (r === 'timeout') this.logger.error({ step: name, ms }, 'shutdown step did not finish in time; going on');
    } finally {
      clearTimeout(timer);
    }
  }

  /** Ordered shutdown: stop taking API calls, deregister everything (with drain), release Consul. Idempotent. */
  close(): Promise<void> {
    this.#closing ??= (async () => {
      // Stop proxying first (in-flight requests finish; local apps are stopping too), then drain and
      // deregister this host's services, then the API and the watches. Every step is bounded, so a
      // stuck connection or Consul call can delay the exit but never keep the process alive.
      // Half of shutdownTimeoutMs for in-flight proxied requests, half (plus the drain) for Consul.
      const half = Math.floor(this.config.shutdownTimeoutMs / 2);
      await this.#step('proxy', () => this.#proxy?.close(half), half + 1000);
      // Before the services go: leaders release their locks at once (deregistration would invalidate their sessions, with lock-delay).
      await this.#step('elections', () => this.#elections?.close(), 3000);
      await this.#step('registrations', () => this.#registrar?.close(), half + this.config.registration.drainMs);
      this.#bus?.close();
      this.#drain?.close();
      await this.#step('control API', () => this.#api?.close(), 2000);
      this.#table?.close();
      await this.#step('watches', () => this.#watcher?.close(), 2000);
      await this.#step('upstream pools', () => this.#forwarder?.close(), 2000);
      this.#consul.close();
      this.logger.info('tandem sidecar stopped');
      this.logger.flush();
    })();
    return this.#closing;
  }
}

/**
 * Whether control-API writes need credentials, decided once at start. The agent answers: its
 * `DebugConfig.ACLsEnabled` (checked on Consul 1.8.7), or a 403 — only an agent enforcing ACLs refuses
 * to describe itself. When Consul cannot be reached, ACLs count as enabled exactly when the sidecar has
 * a token of its own: a sidecar without one lends nothing (its writes are anonymous, which any local
 * process can make directly), one with a token must not lend it while it cannot tell.
 */
async function aclsEnabledAtStart(consul: Pick<ConsulClient, 'agentSelf'>, sidecarHasToken: boolean, logger: Logger): Promise<boolean> {
  let why: string;
  try {
    const said = (await consul.agentSelf()).aclsEnabled;
    if (said !== undefined) return said;
    why = 'the Consul agent does not say whether it enforces ACLs';
  } catch (err) {
    if (err instanceof ConsulPermissionError) return true;
    why = err instanceof ConsulUnavailableError ? 'Consul is unreachable: cannot tell whether it enforces ACLs' : `cannot tell whether Consul enforces ACLs (${errSummary(err).message})`;
  }
  logger.warn({ aclsEnabled: sidecarHasToken }, `${why}; control-API writes need credentials exactly when the sidecar has a Consul token`);
  return sidecarHasToken;
}

function httpUrl(host: string, port: number): string {
  return `http://${host.includes(':') ? `[${host}]` : host}:${port}`;
}
