// Server-sent events on a fastify reply: one writer for the control API's streams (watch, events, elections), and the bound on how many are open.
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { TandemError } from '../common/errors.ts';
import type { RoutePlugin } from './control-api.ts';

/** A comment line this often keeps proxies and idle timeouts from cutting a quiet stream. */
const KEEP_ALIVE_MS = 15_000;

export interface SseStream {
  send(event: string, data: unknown, id?: string): void;
  /** Runs once when the client goes away (or the server closes the stream); at once if it already has. */
  onClose(fn: () => void): void;
  end(): void;
  readonly closed: boolean;
}

export class TooManyStreamsError extends TandemError {
  constructor(max: number) {
    super('TANDEM_ERR_TOO_MANY_STREAMS', 503, `this sidecar already has ${max} event streams open (api.maxStreams); close some or try again later`);
  }
}

/** How many streams one control API may hold open at once, whatever route opens them. */
export class StreamLimit {
  readonly max: number;
  #open = 0;

  constructor(max: number) {
    this.max = max;
  }

  get open(): number {
    return this.#open;
  }

  /** Attaches the limit to a control API: every `openSse` on that server counts against it. */
  plugin(): RoutePlugin {
    return (app: FastifyInstance) => void limits.set(app.server, this);
  }

  /** Takes a slot or throws TooManyStreamsError; the returned function gives it back (idempotent). */
  take(): () => void {
    if (this.#open >= this.max) throw new TooManyStreamsError(this.max);
    this.#open++;
    let held = true;
    return () => {
      if (!held) return;
      held = false;
      this.#open--;
    };
  }
}

/** Keyed by the HTTP server, shared by every fastify context of one control API. */
const limits = new WeakMap<object, StreamLimit>();

/**
 * Takes over the reply for an event stream. Throws TooManyStreamsError (before anything is written,
 * so the route answers 503) when the API's stream bound is reached. Call it before anything that
 * needs cleaning up, and register that clean-up with `onClose` right away: it then runs whenever the
 * client leaves — also when it left before the stream was opened.
 */
export function openSse(req: FastifyRequest, reply: FastifyReply): SseStream {
  const release = limits.get(req.server.server)?.take() ?? (() => undefined);
  reply.hijack();
  const raw = reply.raw;
  let closed = false;
  const closers: (() => void)[] = [];
  let keepAlive: NodeJS.Timeout | undefined;
  const close = () => {
    if (closed) return;
    closed = true;
    clearInterval(keepAlive);
    release();
    for (const fn of closers.splice(0)) fn();
  };
  // The client may have gone while hooks ran: its 'close' events are already past.
  if (req.raw.destroyed || raw.destroyed || raw.writableEnded || req.raw.socket?.destroyed === true) close();
  else {
    raw.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache', connection: 'keep-alive', 'x-accel-buffering': 'no' });
    // Sent now, not with the first event: the first event may wait for Consul.
    raw.flushHeaders();
    keepAlive = setInterval(() => raw.write(': keep-alive\n\n'), KEEP_ALIVE_MS);
    // Never what keeps the process alive: shutdown must not wait for streams.
    keepAlive.unref();
    req.raw.on('close', close);
    raw.on('close', close);
  }
  return {
    send(event, data, id) {
      if (closed) return;
      raw.write(`${id !== undefined ? `id: ${id}\n` : ''}event: ${event}\ndata: ${JSON.stringify(data)}\n\n`);
    },
    onClose(fn) {
      if (closed) fn();
      else closers.push(fn);
    },
    end() {
      raw.end();
      close();
    },
    get closed() {
      return closed;
    },
  };
}
