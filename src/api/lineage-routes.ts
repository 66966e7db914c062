// Control API routes for elections (campaign stream, current leader) and the cluster directory (members).
import type { FastifyInstance } from 'fastify';
import type { Logger } from 'pino';
import type { Member } from '../protocol/wire.ts';
import type { ConsulClient } from '../consul/consul-client.ts';
import type { RoutePlugin } from './control-api.ts';
import { DRAIN_PREFIX, type DrainController, type DrainRequest } from '../cluster/drain.ts';
import { Campaign, currentLeader, GROUP_PATTERN } from '../cluster/election.ts';
import { ServiceNotFoundError } from '../common/errors.ts';
import type { Registrar } from '../registration/registrar.ts';
import { SERVICE_NAME_PATTERN } from '../config/schemas.ts';
import { openSse } from './sse.ts';

export interface LineageDeps {
  consul: ConsulClient;
  drain: DrainController;
  defaultDrainDeadlineMs: number;
  registrar: Registrar;
  logger: Logger;
  nodeName: string;
  sidecarId: () => string;
  lockDelayMs: number;
  waitMs: number;
}

const groupParams = {
  type: 'object',
  additionalProperties: false,
  required: ['group'],
  properties: { group: { type: 'string', pattern: GROUP_PATTERN, description: "a group: letters, digits, '_', '.', '-', at most 128" } },
} as const;

export function lineageRoutes(deps: LineageDeps): RoutePlugin {
  return (app: FastifyInstance) => {
    // One contender per stream: `promoted` (with the fencing token) and `demoted` events; closing the
    // stream (the app stops or crashes) resigns at once.
    app.post<{ Params: { group: string }; Querystring: { serviceId: string } }>(
      '/v1/leaders/:group/campaign',
      {
        schema: {
          params: groupParams,
          querystring: { type: 'object', additionalProperties: false, required: ['serviceId'], properties: { serviceId: { type: 'string', minLength: 1, maxLength: 128 } } },
        },
      },
      async (req, reply) => {
        const { group } = req.params;
        const { serviceId } = req.query;
        if (!deps.registrar.has(serviceId)) throw new ServiceNotFoundError(serviceId);
        const sse = openSse(req, reply);
        const campaign = new Campaign(group, serviceId, { consul: deps.consul, logger: deps.logger, nodeName: deps.nodeName, sidecarId: deps.sidecarId, lockDelayMs: deps.lockDelayMs, waitMs: deps.waitMs }, {
          promoted: (info) => sse.send('promoted', info),
          demoted: (reason) => sse.send('demoted', { group, reason }),
          error: (message) => sse.send('error', { group, message }),
        });
        sse.send('campaign', { group, serviceId });
        sse.onClose(() => void campaign.resign());
      },
    );

    const nodeParams = { type: 'object', additionalProperties: false, required: ['node'], properties: { node: { type: 'string', pattern: '^[A-Za-z0-9_.-]{1,128}$' } } } as const;

    // Remote drain: the request is a KV key, so any sidecar (or an operator with consul kv put) can write it.
    app.put<{ Params: { node: string }; Body: { reason?: string; deadlineMs?: number } | null }>(
      '/v1/drain/:node',
      {
        schema: {
          params: nodeParams,
          body: { type: ['object', 'null'], additionalProperties: false, properties: { reason: { type: 'string', maxLength: 500 }, deadlineMs: { type: 'integer', minimum: 0, maximum: 86_400_000 } } },
        },
      },
      async (req) => {
        const drain: DrainRequest = { reason: req.body?.reason ?? '', deadlineMs: req.body?.deadlineMs ?? deps.defaultDrainDeadlineMs, requestedAt: Date.now(), state: 'draining' };
        await deps.consul.kvPut(`${DRAIN_PREFIX}${req.params.node}`, JSON.stringify(drain));
        return { node: req.params.node, ...drain };
      },
    );
    app.delete<{ Params: { node: string } }>('/v1/drain/:node', { schema: { params: nodeParams } }, async (req) => {
      await deps.consul.kvDelete(`${DRAIN_PREFIX}${req.params.node}`);
      return { node: req.params.node, state: 'serving' };
    });
    app.get<{ Params: { node: string } }>('/v1/drain/:node', { schema: { params: nodeParams } }, async (req) => {
      const r = await deps.consul.kvGet(`${DRAIN_PREFIX}${req.params.node}`);
      return { node: req.params.node, ...(r.value?.value ? (JSON.parse(r.value.value) as DrainRequest) : { state: 'serving' }) };
    });

    // The apps' lifecycle stream: `drain` (with reason and deadline), `undrain`, `drained`.
    app.get<{ Querystring: { services?: string } }>(
      '/v1/lifecycle',
      { schema: { querystring: { type: 'object', additionalProperties: false, properties: { services: { type: 'string', maxLength: 8192 } } } } },
      async (req, reply) => {
        const sse = openSse(req, reply);
        // The services this app answers for: a drain waits for their ready-to-stop.
        sse.onClose(deps.drain.listen((req.query.services ?? '').split(',').filter(Boolean)));
        const on = (name: string) => (data: unknown) => sse.send(name, data);
        const handlers = (['drain', 'undrain', 'drained'] as const).map((n) => [n, on(n)] as const);
        for (const [n, h] of handlers) deps.drain.on(n, h);
        sse.onClose(() => {
          for (const [n, h] of handlers) deps.drain.off(n, h);
        });
        sse.send('state', deps.drain.state);
      },
    );

    app.post<{ Params: { id: string } }>(
      '/v1/services/:id/ready-to-stop',
      { schema: { params: { type: 'object', additionalProperties: false, required: ['id'], properties: { id: { type: 'string', minLength: 1, maxLength: 128 } } } } },
      async (req) => {
        if (!deps.registrar.has(req.params.id)) throw new ServiceNotFoundError(req.params.id);
        deps.drain.readyToStop(req.params.id);
        return { id: req.params.id, readyToStop: true };
      },
    );

    app.get<{ Params: { group: string } }>('/v1/leaders/:group', { schema: { params: groupParams } }, async (req) => ({ group: req.params.group, leader: await currentLeader(deps.consul, req.params.group) }));

    // comrade's getMembers: every instance in the cluster, with version, node, health and drain state.
    app.get<{ Querystring: { service?: string; node?: string; health?: 'passing' | 'critical' | 'warning' | 'maintenance' } }>(
      '/v1/members',
      {
        schema: {
          querystring: {
            type: 'object',
            additionalProperties: false,
            properties: {
              service: { type: 'string', pattern: SERVICE_NAME_PATTERN },
              node: { type: 'string', maxLength: 128 },
              health: { enum: ['passing', 'warning', 'critical', 'maintenance'] },
            },
          },
        },
      },
      async (req) => {
        const names = req.query.service ? [req.query.service] : (await deps.consul.catalogServices()).value.filter((s) => s !== 'consul');
        const members: Member[] = [];
        for (const name of names) {
          const { value } = await deps.consul.healthService(name, { index: 0, waitMs: 0, passing: false });
          for (const e of value) {
            const maintenance = e.checks.find((c) => c.checkId.startsWith('_service_maintenance') || c.checkId === '_node_maintenance');
            const m: Member = {
              service: e.name,
              id: e.id,
              version: e.meta['version'] ?? '',
              node: e.node,
              address: e.address,
              port: e.port,
              health: maintenance ? 'maintenance' : e.status,
            };
            if (maintenance?.notes) m.reason = maintenance.notes;
            if (e.meta['tandem_sidecar']) m.sidecar = e.meta['tandem_sidecar'];
            members.push(m);
          }
        }
        return members
          .filter((m) => (!req.query.node || m.node === req.query.node) && (!req.query.health || m.health === req.query.health))
          .sort((x, y) => (x.service + x.id < y.service + y.id ? -1 : 1));
      },
    );
  };
}
