// Hop-by-hop header handling for both directions, on Node's flat rawHeaders arrays and undici's header objects; what a request asks for (deadline, body).
import type { IncomingHttpHeaders, IncomingMessage } from 'node:http';
import { BadTimeoutError } from './errors.ts';
import type { RequestBody } from './forwarder.ts';

/** Never forwarded: meaningful for one connection only (RFC 9110 §7.6.1), plus ones we set ourselves. */
const HOP_BY_HOP = new Set(['connection', 'keep-alive', 'proxy-connection', 'te', 'trailer', 'transfer-encoding', 'upgrade', 'proxy-authorization', 'proxy-authenticate', 'host', 'expect', 'http2-settings']);

function connectionListed(value: string | string[] | undefined): Set<string> | undefined {
  if (value === undefined) return undefined;
  const v = Array.isArray(value) ? value.join(',') : value;
  if (v === '' || v === 'keep-alive' || v === 'close') return undefined;
  return new Set(v.toLowerCase().split(',').map((s) => s.trim()).filter(Boolean));
}

/**
 * Request headers for the upstream, as a flat [name, value, ...] array: hop-by-hop ones dropped,
 * `x-forwarded-*` added. Upgrades keep the websocket handshake headers (undici adds connection/upgrade).
 */
export function upstreamRequestHeaders(rawHeaders: readonly string[], headers: IncomingHttpHeaders, remoteAddress: string | undefined): string[] {
  const listed = connectionListed(headers.connection);
  const out: string[] = [];
  let forwardedFor: string | undefined;
  for (let i = 0; i < rawHeaders.length; i += 2) {
    const name = rawHeaders[i] as string;
    const lower = name.toLowerCase();
    if (HOP_BY_HOP.has(lower) || listed?.has(lower)) continue;
    if (lower === 'x-forwarded-for') {
      forwardedFor = forwardedFor ? `${forwardedFor}, ${rawHeaders[i + 1]}` : (rawHeaders[i + 1] as string);
      continue;
    }
    // Set by us: x-forwarded-proto/host below, x-tandem-timeout-ms per try (what is left of the deadline).
    if (lower === 'x-forwarded-proto' || lower === 'x-forwarded-host' || lower === 'x-tandem-timeout-ms') continue;
    out.push(name, rawHeaders[i + 1] as string);
  }
  const remote = remoteAddress ?? 'unknown';
  out.push('x-forwarded-for', forwardedFor ? `${forwardedFor}, ${remote}` : remote, 'x-forwarded-proto', 'http');
  if (headers.host !== undefined) out.push('x-forwarded-host', headers.host);
  return out;
}

/**
 * Response headers Tandem sets itself: an upstream's own are dropped, so a client can trust them (an
 * upstream cannot make its answer look like a proxy error, or claim another instance).
 */
export const TANDEM_RESPONSE_HEADERS: ReadonlySet<string> = new Set(['x-tandem-error', 'x-tandem-instance', 'x-tandem-sticky', 'x-tandem-broadcast']);

/** Response headers for the client: hop-by-hop ones and Tandem's own removed in place. */
export function stripResponseHeaders(headers: IncomingHttpHeaders): IncomingHttpHeaders {
  const listed = connectionListed(headers.connection);
  for (const name of Object.keys(headers)) {
    if ((HOP_BY_HOP.has(name) && name !== 'host') || listed?.has(name) || TANDEM_RESPONSE_HEADERS.has(name)) delete headers[name];
  }
  return headers;
}

/**
 * Request headers for a host that is not a catalog service (egress): hop-by-hop ones and Tandem's own
 * `x-tandem-*` dropped, `host` set to the target's authority, nothing added (no `x-forwarded-*`: the
 * proxy does not tell the outside world about the host's processes).
 */
export function egressRequestHeaders(rawHeaders: readonly string[], headers: IncomingHttpHeaders, host: string): string[] {
  const listed = connectionListed(headers.connection);
  const out: string[] = ['host', host];
  for (let i = 0; i < rawHeaders.length; i += 2) {
    const lower = (rawHeaders[i] as string).toLowerCase();
    if (HOP_BY_HOP.has(lower) || listed?.has(lower) || lower.startsWith('x-tandem-')) continue;
    out.push(rawHeaders[i] as string, rawHeaders[i + 1] as string);
  }
  return out;
}

/** X-Tandem-Timeout-Ms: a positive whole number of milliseconds, at most a day. */
export function parseTimeout(v: string): number {
  const n = Number(v);
  if (!/^\d{1,9}$/.test(v.trim()) || n < 1 || n > 86_400_000) throw new BadTimeoutError(v.slice(0, 50));
  return n;
}

export function header(req: IncomingMessage, name: string): string | undefined {
  const v = req.headers[name];
  return Array.isArray(v) ? v[0] : v;
}

/** Small bodies (by Content-Length) are read into memory so a retry can resend them; others stream. */
export async function readBody(req: IncomingMessage, limit: number): Promise<RequestBody> {
  const cl = req.headers['content-length'];
  const chunked = req.headers['transfer-encoding'] !== undefined;
  if (!chunked && (cl === undefined || cl === '0')) return { kind: 'none' };
  if (chunked || Number(cl) > limit) return { kind: 'stream', stream: req };
  const chunks: Buffer[] = [];
  for await (const c of req) chunks.push(c as Buffer);
  return { kind: 'buffer', data: Buffer.concat(chunks) };
}
