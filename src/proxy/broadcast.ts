// `X-Tandem-Broadcast: all`: one request sent to every healthy instance in range at once, answered as one JSON array.
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Endpoint } from './endpoint-source.ts';
import { BadTargetError, PayloadTooLargeError } from './errors.ts';
import { CONTROL_PLANE_CODE, type Forwarder } from './forwarder.ts';
import { header, parseTimeout, readBody, upstreamRequestHeaders } from './headers.ts';

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
export async function broadcast(req: IncomingMessage, res: ServerResponse, path: string, targets: readonly Endpoint[], ctx: BroadcastContext): Promise<void> {
  if (header(req, 'x-tandem-broadcast') !== 'all') throw new BadTargetError("X-Tandem-Broadcast must be 'all'");
  const asked = header(req, 'x-tandem-timeout-ms');
  const timeoutMs = asked === undefined ? ctx.timeoutMs : parseTimeout(asked);
  const body = await readBody(req, ctx.bufferBytes);
  if (body.kind === 'stream') throw new PayloadTooLargeError(ctx.bufferBytes);
  const all = upstreamRequestHeaders(req.rawHeaders, req.headers, req.socket.remoteAddress);
  const headers: string[] = [];
  for (let i = 0; i < all.length; i += 2) if ((all[i] as string).toLowerCase() !== 'x-tandem-broadcast') headers.push(all[i] as string, all[i + 1] as string);
  const entries = await Promise.all(
    targets.map(async (e) => {
      const r = await ctx.forwarder.collect(e, {
        method: req.method ?? 'GET',
        path,
        headers,
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
  res.writeHead(200, { 'content-type': 'application/json; charset=utf-8', 'content-length': Buffer.byteLength(out), 'x-tandem-broadcast': String(entries.length) });
  res.end(out);
}
