// Control API routes for operators: `GET /metrics` (Prometheus text) and `GET /v1/status` (routing table and registrations).
import type { FastifyInstance } from 'fastify';
import type { HealthTracker } from '../proxy/balancing/health-tracker.ts';
import type { OutlierDetector } from '../proxy/balancing/outlier-detector.ts';
import type { RoutingTable } from '../proxy/routing-table.ts';
import type { Balancer } from '../proxy/balancing/balancer.ts';
import type { WatchStats } from '../discovery/catalog-watcher.ts';
import type { RoutePlugin } from './control-api.ts';
import type { Metrics } from './metrics.ts';
import type { Registrar } from '../registration/registrar.ts';

export interface StatusDeps {
  metrics: Metrics;
  table: RoutingTable;
  outliers: OutlierDetector;
  health: HealthTracker;
  registrar: Registrar;
  /** The balancer, for each instance's cost inputs (in flight, EWMA latency, maxInFlight). */
  balancer?: Balancer;
  watches: (service: string) => WatchStats | undefined;
  info: () => Record<string, unknown>;
}

export function statusRoutes(deps: StatusDeps): RoutePlugin {
  return (app: FastifyInstance) => {
    app.get('/metrics', { schema: {} }, async (_req, reply) => reply.header('content-type', deps.metrics.contentType).send(await deps.metrics.text()));

    app.get('/v1/status', { schema: {} }, async () => {
      // Each registration with its Consul health, read from the local agent (`unknown` when it cannot be read).
      const registrations = await deps.registrar.snapshotWithHealth();
      const now = Date.now();
      return {
        ...deps.info(),
        registrations,
        routing: deps.table.snapshot().map(({ service, set, pinned }) => {
          const w = deps.watches(service);
          return {
            service,
            watchedFromStart: pinned,
            viewAgeMs: w && w.lastOkAt > 0 ? now - w.lastOkAt : null,
            stale: w?.stale ?? true,
            consulErrors: w?.consecutiveErrors ?? 0,
            ranges: (set?.subsets() ?? []).map(([range, sub]) => ({ range: range || '*', instances: sub.members.length, healthy: sub.healthy.length, stickyRingSize: sub.ringSize })),
            instances: (set?.all ?? []).map((e) => {
              const ej = deps.outliers.view(e.id, now);
              return {
                id: e.id,
                version: e.version,
                address: `${e.address}:${e.port}`,
                node: e.node,
                healthy: e.healthy,
                ejected: ej.ejected,
                ...deps.health.view(e.id, now),
                ...(deps.balancer ? { balancer: deps.balancer.kindFor(e.service), load: deps.balancer.loadView(e) } : {}),
              };
            }),
          };
        }),
      };
    });
  };
}
