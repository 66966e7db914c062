// Control API routes for elections (campaign stream, current leader) and the cluster directory (members).
import type { FastifyInstance } from 'fastify';
import type { Member } from '../protocol/wire.ts';
import type { RoutePlugin } from './control-api.ts';
import type { DrainController, DrainRequest } from '../cluster/drain.ts';
import type { Elections } from '../cluster/election.ts';
import type { Directory } from '../cluster/members.ts';
import { nameSchema } from '../cluster/names.ts';
import { CallerTokenRefusedError, ServiceNotFoundError } from '../common/errors.ts';
import type { Registrar } from '../registration/registrar.ts';
import { SERVICE_NAME_PATTERN } from '../config/schemas.ts';
import { credentials } from './credentials.ts';
import { openSse, type SseStream } from './sse.ts';

/** Everything here goes through src/cluster: these routes never talk to Consul themselves. */
export interface LineageDeps {
  elections: Elections;
  drain: DrainController;
  directory: Directory;
  defaultDrainDeadlineMs: number;
  registrar: Registrar;
  /** Told about every promotion of a local contender (metrics). */
  onPromoted?: () => void;
}

const groupParams = {
  type: 'object',
  additionalProperties: false,
  required: ['group'],
  properties: { group: nameSchema('a group') },
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
        // The campaign's events are asynchronous: the stream is open before the first one.
        const out: { sse?: SseStream } = {};
        const call = credentials(req);
        const campaign = deps.elections.campaign(group, serviceId, call, {
          promoted: (info) => {
            deps.onPromoted?.();
            out.sse?.send('promoted', info);
          },
          demoted: (reason) => out.sse?.send('demoted', { group, reason }),
          error: (message) => out.sse?.send('error', { group, message }),
          // Consul refused the campaign's token: it has ended, so the stream says why (named as the
          // caller's refusal when it was the caller's token) and closes instead of retrying forever.
          refused: (err) => {
            const e = call.token !== undefined ? new CallerTokenRefusedError(err.action, err.detail) : err;
            out.sse?.send('error', { group, code: e.code, message: e.message });
            out.sse?.end();
          },
        });
        try {
          out.sse = openSse(req, reply);
        } catch (err) {
          void campaign.resign(); // 503: too many streams
          throw err;
        }
        out.sse.send('campaign', { group, serviceId });
        out.sse.onClose(() => void campaign.resign());
      },
    );

    const nodeParams = { type: 'object', additionalProperties: false, required: ['node'], properties: { node: nameSchema('a node') } } as const;

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
        await deps.drain.request(req.params.node, drain, credentials(req));
        return { node: req.params.node, ...drain };
      },
    );
    app.delete<{ Params: { node: string } }>('/v1/drain/:node', { schema: { params: nodeParams } }, async (req) => {
      await deps.drain.cancel(req.params.node, credentials(req));
      return { node: req.params.node, state: 'serving' };
    });
    app.get<{ Params: { node: string } }>('/v1/drain/:node', { schema: { params: nodeParams } }, async (req) => {
      return { node: req.params.node, ...((await deps.drain.read(req.params.node)) ?? { state: 'serving' }) };
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
        const { id } = req.params;
        if (!deps.registrar.has(id)) throw new ServiceNotFoundError(id);
        const drain = deps.drain.state;
        // Outside a drain (and for entries no drain waits for, like the sidecar's own) there is nothing
        // to end early: nothing is recorded, so there is nothing to authorise.
        if (drain.state !== 'draining' || !deps.registrar.appServices().some((a) => a.id === id)) return { id, readyToStop: false };
        // Ending a drain early is a write on this service, yet it makes no Consul write of its own: have
        // Consul check the caller's token (service:write on it) with a no-op maintenance write, so a
        // made-up token, or one for another service, cannot cut the drain short. The reason is the
        // drain's own, in case Consul does apply it. Without a token of its own the caller got past the
        // auth hook already (ACLs off, or it proved api.token): the sidecar's token would prove nothing.
        const call = credentials(req);
        if (call.token !== undefined) await deps.elections.proveServiceWrite(id, `tandem drain: ${drain.reason}`, call);
        if (deps.drain.state.state !== 'draining') return { id, readyToStop: false }; // undrained meanwhile
        deps.drain.readyToStop(id);
        return { id, readyToStop: true };
      },
    );

    // What Consul says now (a consistent read, the holder's session checked), not this sidecar's memory.
    app.get<{ Params: { group: string } }>('/v1/leaders/:group', { schema: { params: groupParams } }, async (req) => ({ group: req.params.group, leader: await deps.elections.leader(req.params.group) }));

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
      async (req): Promise<Member[]> => deps.directory.members(req.query),
    );
  };
}
