// Control API routes for cluster pub/sub: publish an event, and stream a topic's events as server-sent events.
import type { FastifyInstance } from 'fastify';
import type { RoutePlugin } from './control-api.ts';
import { InvalidRequestError } from '../common/errors.ts';
import { TOPIC_PATTERN, type Cursor, type EventBus, type TandemEvent } from '../cluster/event-bus.ts';
import { openSse, type SseStream } from './sse.ts';

const params = {
  type: 'object',
  additionalProperties: false,
  required: ['topic'],
  properties: { topic: { type: 'string', pattern: TOPIC_PATTERN, description: "a topic: letters, digits, '_', '.', '-', at most 128" } },
} as const;

export function eventRoutes(bus: EventBus, maxPayloadBytes: number): RoutePlugin {
  return (app: FastifyInstance) => {
    // The body is the payload: any JSON value up to maxPayloadBytes (413 TANDEM_ERR_BODY_TOO_LARGE beyond).
    app.post<{ Params: { topic: string }; Body: unknown }>('/v1/events/:topic', { schema: { params }, bodyLimit: maxPayloadBytes }, async (req, reply) => {
      const e = await bus.publish(req.params.topic, req.body ?? null);
      return reply.code(201).send({ id: e.id, topic: e.topic, publisher: e.publisher, seq: e.seq, ts: e.ts });
    });

    // ?cursor=<JSON {publisher: lastSeq}> resumes after a reconnect; without it, only events from now on.
    app.get<{ Params: { topic: string }; Querystring: { cursor?: string } }>(
      '/v1/events/:topic',
      { schema: { params, querystring: { type: 'object', additionalProperties: false, properties: { cursor: { type: 'string', maxLength: 65_536 } } } } },
      async (req, reply) => {
        let cursor: Cursor | undefined;
        if (req.query.cursor !== undefined) {
          try {
            const parsed = JSON.parse(req.query.cursor) as unknown;
            if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed) || !Object.values(parsed).every((v) => Number.isSafeInteger(v))) throw new Error('shape');
            cursor = parsed as Cursor;
          } catch {
            throw new InvalidRequestError('cursor must be a JSON object of publisher → last seq seen', 'TANDEM_ERR_INVALID_CURSOR');
          }
        }
        // The backlog arrives before the stream is open: it is queued and sent right after the cursor.
        const pending: TandemEvent[] = [];
        const out: { sse?: SseStream } = {};
        const sub = await bus.subscribe(req.params.topic, cursor, (e) => (out.sse ? out.sse.send('event', e, e.id) : pending.push(e)));
        const sse = openSse(req, reply);
        sse.onClose(sub.close);
        sse.send('cursor', sub.cursor);
        for (const e of pending) sse.send('event', e, e.id);
        out.sse = sse;
      },
    );
  };
}
