// Control API routes over the proxy's routing view: instances of a service (with ejection state) and resolve-one.
import type { FastifyInstance } from 'fastify';
import type { Balancer } from '../proxy/balancing/balancer.ts';
import type { Endpoint } from '../proxy/endpoint-source.ts';
import type { EndpointSet } from '../proxy/endpoint-set.ts';
import { NoHealthyInstanceError, TandemError, UnknownServiceError } from '../proxy/errors.ts';
import type { HealthTracker } from '../proxy/balancing/health-tracker.ts';
import type { OutlierDetector } from '../proxy/balancing/outlier-detector.ts';
import type { RangeCache } from '../proxy/balancing/range-cache.ts';
import type { RoutingTable } from '../proxy/routing-table.ts';
import type { RoutePlugin } from './control-api.ts';
import { openSse, type SseStream } from './sse.ts';
import { SERVICE_NAME_PATTERN } from '../config/schemas.ts';

export interface RoutingRoutesDeps {
  table: RoutingTable;
  balancer: Balancer;
  outliers: OutlierDetector;
  ranges: RangeCache;
  health: HealthTracker;
  /** When Consul last confirmed a service's view, and whether it is stale (outage, or from disk). */
  viewInfo: (service: string) => { lastOkAt: number; stale: boolean } | undefined;
}

const params = {
  type: 'object',
  additionalProperties: false,
  required: ['service'],
  properties: { service: { type: 'string', pattern: SERVICE_NAME_PATTERN, description: 'a service name (DNS label)' } },
} as const;

export function routingRoutes(deps: RoutingRoutesDeps): RoutePlugin {
  const describe = (e: Endpoint, now: number) => {
    const ej = deps.outliers.view(e.id, now);
    return {
      id: e.id,
      address: e.address,
      port: e.port,
      version: e.version,
      node: e.node,
      healthy: e.healthy,
      ejected: ej.ejected,
      ...(ej.ejectedUntil !== undefined ? { ejectedUntil: new Date(ej.ejectedUntil).toISOString() } : {}),
      ...deps.health.view(e.id, now),
      // This sidecar's cost inputs: requests in flight, latency estimate, their product, and the limit.
      load: deps.balancer.loadView(e),
      balancer: deps.balancer.kindFor(e.service),
    };
  };

  return (app: FastifyInstance) => {
    app.get<{ Params: { service: string }; Querystring: { range?: string } }>(
      '/v1/instances/:service',
      { schema: { params, querystring: { type: 'object', additionalProperties: false, properties: { range: { type: 'string', maxLength: 256 } } } } },
      async (req) => {
        const range = req.query.range?.trim() ?? '';
        const parsed = range === '' ? null : deps.ranges.get(range);
        const set = await deps.table.get(req.params.service);
        const now = Date.now();
        const subset = set.subset(range, parsed);
        const info = deps.viewInfo(req.params.service);
        return {
          service: req.params.service,
          range: range || null,
          // Time since Consul last confirmed this view (grows during an outage); stale when unconfirmed now.
          viewAgeMs: now - (info?.lastOkAt || set.updatedAt),
          stale: info?.stale ?? false,
          versions: set.versions,
          instances: subset.members.map((e) => describe(e, now)),
        };
      },
    );

    // Live added/removed instances (healthy and in range) as server-sent events: one `reset` with the
    // current list first, then `added` / `removed` per instance; a comment line every 15 s keeps it open.
    app.get<{ Params: { service: string }; Querystring: { range?: string } }>(
      '/v1/watch/:service',
      { schema: { params, querystring: { type: 'object', additionalProperties: false, properties: { range: { type: 'string', maxLength: 256 } } } } },
      async (req, reply) => {
        const range = req.query.range?.trim() ?? '';
        const parsed = range === '' ? null : deps.ranges.get(range);
        const routable = (set: EndpointSet) => new Map(set.subset(range, parsed).healthy.map((e) => [e.id, e]));
        let known = new Map<string, Endpoint>();
        // Updates may come before the stream is open: they are sent once it is.
        const out: { sse?: SseStream } = {};
        // A service not in the catalog yet costs no Consul watch: the table wakes this stream when its
        // name appears. If it cannot be watched then, the stream ends with the reason (the SDK reconnects).
        const { set, stop } = await deps.table.listen(
          req.params.service,
          (next) => {
            const now = Date.now();
            const cur = routable(next);
            for (const [id, e] of known) if (!cur.has(id)) out.sse?.send('removed', describe(e, now));
            for (const [id, e] of cur) if (!known.has(id)) out.sse?.send('added', describe(e, now));
            known = cur;
          },
          (err) => {
            if (err instanceof TandemError) out.sse?.send('error', err.toBody());
            out.sse?.end();
          },
        );
        let sse: SseStream;
        try {
          sse = openSse(req, reply);
        } catch (err) {
          stop(); // refused (too many streams): the watch must not outlive the request
          throw err;
        }
        out.sse = sse;
        sse.onClose(stop);
        known = routable(set);
        const now = Date.now();
        sse.send('reset', { service: req.params.service, range: range || null, instances: [...known.values()].map((e) => describe(e, now)) });
      },
    );

    app.get<{ Params: { service: string }; Querystring: { range?: string; stickyId?: string } }>(
      '/v1/resolve/:service',
      {
        schema: {
          params,
          querystring: { type: 'object', additionalProperties: false, properties: { range: { type: 'string', maxLength: 256 }, stickyId: { type: 'string', maxLength: 1024 } } },
        },
      },
      async (req) => {
        const range = req.query.range?.trim() ?? '';
        const parsed = range === '' ? null : deps.ranges.get(range);
        const set = await deps.table.get(req.params.service);
        if (set.all.length === 0) throw new UnknownServiceError(req.params.service);
        const picked = deps.balancer.pick(set.subset(range, parsed), { stickyId: req.query.stickyId });
        if (!picked) throw new NoHealthyInstanceError(req.params.service, range || undefined, set.versions, set.healthyVersions);
        const e = picked.endpoint;
        return { id: e.id, address: e.address, port: e.port, version: e.version, node: e.node, moved: picked.moved };
      },
    );
  };
}
