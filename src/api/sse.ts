// Server-sent events on a fastify reply: one writer for the control API's streams (watch, events, elections).
import type { FastifyReply, FastifyRequest } from 'fastify';

export interface SseStream {
  send(event: string, data: unknown, id?: string): void;
  /** Runs once when the client goes away (or the server closes the stream). */
  onClose(fn: () => void): void;
  end(): void;
  readonly closed: boolean;
}

/** Takes over the reply for an event stream; a comment line every 15 s keeps proxies from cutting it. */
export function openSse(req: FastifyRequest, reply: FastifyReply): SseStream {
  reply.hijack();
  const raw = reply.raw;
  raw.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache', connection: 'keep-alive', 'x-accel-buffering': 'no' });
  let closed = false;
  const closers: (() => void)[] = [];
  const keepAlive = setInterval(() => raw.write(': keep-alive\n\n'), 15_000);
  const close = () => {
    if (closed) return;
    closed = true;
    clearInterval(keepAlive);
    for (const fn of closers) fn();
  };
  req.raw.on('close', close);
  raw.on('close', close);
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
