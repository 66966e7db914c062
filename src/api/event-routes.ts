// Control API routes for cluster pub/sub: publish an event, and stream a topic's events as server-sent events.
import type { FastifyInstance } from 'fastify';
import type { RoutePlugin } from './control-api.ts';
import { InvalidRequestError } from '../common/errors.ts';
import type { Cursor, EventBus } from '../cluster/event-bus.ts';
import { nameSchema } from '../cluster/names.ts';
import { credentials } from './credentials.ts';
import { openSse, type SseStream } from './sse.ts';

const params = {
  type: 'object',
  additionalProperties: false,
  required: ['topic'],
  properties: { topic: nameSchema('a topic') },
} as const;

function parseCursor(text: string | undefined): Cursor | undefined {
  if (text === undefined) return undefined;
  try {
    const parsed = JSON.parse(text) as unknown;
    if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed) || !Object.values(parsed).every((v) => Number.isSafeInteger(v))) throw new Error('shape');
    return parsed as Cursor;
  } catch {
    throw new InvalidRequestError('cursor must be a JSON object of publisher → last seq seen', 'TANDEM_ERR_INVALID_CURSOR');
  }
}

/** Counters the routes move (metrics); optional so tests can build the routes alone. */
export interface EventCounters {
  published(): void;
  delivered(): void;
}

export function eventRoutes(bus: EventBus, maxPayloadBytes: number, counters?: EventCounters): RoutePlugin {
  return (app: FastifyInstance) => {
    // The body is the payload: any JSON value up to maxPayloadBytes (413 TANDEM_ERR_BODY_TOO_LARGE beyond);
    // 409 TANDEM_ERR_EVENT_NOT_STORED when Consul did not store it.
    app.post<{ Params: { topic: string }; Body: unknown }>('/v1/events/:topic', { schema: { params }, bodyLimit: maxPayloadBytes }, async (req, reply) => {
      const e = await bus.publish(req.params.topic, req.body ?? null, credentials(req));
      counters?.published();
      return reply.code(201).send({ id: e.id, topic: e.topic, publisher: e.publisher, seq: e.seq, ts: e.ts });
    });

    // ?cursor=<JSON {publisher: lastSeq}> resumes after a reconnect; without it, only events from now on.
    // The stream opens at once; `cursor` comes once the topic's retained events are read, then `event`s.
    // 503 TANDEM_ERR_TOO_MANY_STREAMS beyond api.maxStreams.
    app.get<{ Params: { topic: string }; Querystring: { cursor?: string } }>(
      '/v1/events/:topic',
      { schema: { params, querystring: { type: 'object', additionalProperties: false, properties: { cursor: { type: 'string', maxLength: 65_536 } } } } },
      async (req, reply) => {
        const cursor = parseCursor(req.query.cursor);
        // No handler runs before subscribe returns, so the stream below is open before the first one.
        const out: { sse?: SseStream } = {};
        const sub = bus.subscribe(req.params.topic, cursor, {
          start: (c) => out.sse?.send('cursor', c),
          event: (e) => {
            counters?.delivered();
            out.sse?.send('event', e, e.id);
          },
        });
        try {
          out.sse = openSse(req, reply);
        } catch (err) {
          sub.close(); // 503: too many streams
          throw err;
        }
        // Closes the subscription whenever the client leaves, also before the topic's first answer.
        out.sse.onClose(sub.close);
      },
    );
  };
}
