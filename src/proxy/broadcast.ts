// `X-Tandem-Broadcast: all`: one request sent to every healthy instance in range at once, answered as one JSON array.
import type { Endpoint } from './endpoint-source.ts';
import type { ClientRequest } from './engine/client-request.ts';
import { readBody } from './engine/read-body.ts';
import { BadTargetError, PayloadTooLargeError } from './errors.ts';
import { CONTROL_PLANE_CODE, type Forwarder } from './forwarder.ts';
import { parseTimeout, upstreamRequestLines } from './headers.ts';

export interface BroadcastContext {
  forwarder: Forwarder;
  /** The body must fit this (it is sent to every instance). */
  bufferBytes: number;
  /** Per-instance timeout when the caller sends no X-Tandem-Timeout-Ms. */
  timeoutMs: number;
  maxBodyBytes: number;
  /** Each instance's outcome; `control-plane` when its connection reached one (never blamed on its health). */
  report: (e: Endpoint, outcome: 'success' | 'failure' | 'control-plane') => void;
}

/** Sends to every one of `targets` (already filtered: healthy, in range, no control plane); a failed instance is an entry with its error. */
export async function broadcast(req: ClientRequest, path: string, targets: readonly Endpoint[], ctx: BroadcastContext): Promise<void> {
  if (req.header('x-tandem-broadcast') !== 'all') throw new BadTargetError("X-Tandem-Broadcast must be 'all'");
  const asked = req.header('x-tandem-timeout-ms');
  const timeoutMs = asked === undefined ? ctx.timeoutMs : parseTimeout(asked);
  const body = await readBody(req, ctx.bufferBytes, timeoutMs);
  if (body.kind === 'stream') throw new PayloadTooLargeError(ctx.bufferBytes);
  const lines = upstreamRequestLines(req.head.headers, req.head.connection, req.remoteAddress, 'x-tandem-broadcast');
  const entries = await Promise.all(
    targets.map(async (e) => {
      const r = await ctx.forwarder.collect(e, {
        method: req.method,
        path,
        lines,
        body: body.kind === 'buffer' ? body.data : null,
        timeoutMs,
        maxBodyBytes: ctx.maxBodyBytes,
      });
      if ('error' in r) {
        ctx.report(e, r.error.code === CONTROL_PLANE_CODE ? 'control-plane' : 'failure');
        return { instance: e.id, version: e.version, error: r.error };
      }
      ctx.report(e, 'success');
      const type = String(r.headers['content-type'] ?? '');
      let parsed: unknown = r.body.toString('utf8');
      if (/[/+]json\b/.test(type)) {
        try {
          parsed = JSON.parse(parsed as string);
        } catch {
          // not JSON after all: keep the text
        }
      }
      return { instance: e.id, version: e.version, status: r.status, headers: r.headers, body: parsed };
    }),
  );
  const out = JSON.stringify(entries);
  req.respond(200, 'OK', `content-type: application/json; charset=utf-8\r\nx-tandem-broadcast: ${entries.length}\r\n`, out);
}
