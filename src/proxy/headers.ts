// Hop-by-hop header handling for both directions, on the parser's flat [name, value, ...] lists; what a request asks for (deadline).
import { BadTimeoutError } from './errors.ts';

/** Never forwarded: meaningful for one connection only (RFC 9110 §7.6.1), plus ones we set ourselves. */
const HOP_BY_HOP = new Set(['connection', 'keep-alive', 'proxy-connection', 'te', 'trailer', 'transfer-encoding', 'upgrade', 'proxy-authorization', 'proxy-authenticate', 'host', 'expect', 'http2-settings']);

/**
 * Response headers Tandem sets itself: an upstream's own are dropped, so a client can trust them (an
 * upstream cannot make its answer look like a proxy error, or claim another instance).
 */
export const TANDEM_RESPONSE_HEADERS: ReadonlySet<string> = new Set(['x-tandem-error', 'x-tandem-instance', 'x-tandem-sticky', 'x-tandem-broadcast']);

/** Set per request by us: x-forwarded-proto/host, and x-tandem-timeout-ms per try (what is left of the deadline). */
const REPLACED = new Set(['x-forwarded-proto', 'x-forwarded-host', 'x-tandem-timeout-ms']);

/** Named in a Connection field (lower case), other than the tokens that are not field names. */
function listed(connection: readonly string[], name: string): boolean {
  return connection.length > 0 && name !== 'close' && name !== 'keep-alive' && connection.includes(name);
}

/**
 * Request header lines for an instance (`name: value\r\n` each, names lower case as parsed): hop-by-hop
 * ones dropped, `x-forwarded-*` added. `content-length` stays (the body is passed on as it came).
 */
export function upstreamRequestLines(headers: readonly string[], connection: readonly string[], remoteAddress: string | undefined, drop?: string): string {
  let out = '';
  let forwardedFor: string | undefined;
  let host: string | undefined;
  for (let i = 0; i < headers.length; i += 2) {
    const name = headers[i] as string;
    const value = headers[i + 1] as string;
    if (name === 'host') host ??= value;
    if (HOP_BY_HOP.has(name) || REPLACED.has(name) || name === drop || listed(connection, name)) continue;
    if (name === 'x-forwarded-for') {
      forwardedFor = forwardedFor === undefined ? value : `${forwardedFor}, ${value}`;
      continue;
    }
    out += `${name}: ${value}\r\n`;
  }
  const remote = remoteAddress ?? 'unknown';
  out += `x-forwarded-for: ${forwardedFor === undefined ? remote : `${forwardedFor}, ${remote}`}\r\nx-forwarded-proto: http\r\n`;
  if (host !== undefined) out += `x-forwarded-host: ${host}\r\n`;
  return out;
}

/**
 * Request header lines for a host that is not a catalog service (egress): hop-by-hop ones and Tandem's own
 * `x-tandem-*` dropped, `host` set to the target's authority, nothing added (no `x-forwarded-*`: the
 * proxy does not tell the outside world about the host's processes).
 */
export function egressRequestLines(headers: readonly string[], connection: readonly string[], host: string): string {
  let out = `host: ${host}\r\n`;
  for (let i = 0; i < headers.length; i += 2) {
    const name = headers[i] as string;
    if (HOP_BY_HOP.has(name) || listed(connection, name) || name.startsWith('x-tandem-')) continue;
    out += `${name}: ${headers[i + 1] as string}\r\n`;
  }
  return out;
}

/** Response header lines for the client: hop-by-hop ones (framing fields but content-length) and Tandem's own dropped. */
export function responseLines(headers: readonly string[], connection: readonly string[]): string {
  let out = '';
  for (let i = 0; i < headers.length; i += 2) {
    const name = headers[i] as string;
    if ((HOP_BY_HOP.has(name) && name !== 'host') || TANDEM_RESPONSE_HEADERS.has(name) || listed(connection, name)) continue;
    out += `${name}: ${headers[i + 1] as string}\r\n`;
  }
  return out;
}

/** X-Tandem-Timeout-Ms: a positive whole number of milliseconds, at most a day. */
export function parseTimeout(v: string): number {
  const n = Number(v);
  if (!/^\d{1,9}$/.test(v.trim()) || n < 1 || n > 86_400_000) throw new BadTimeoutError(v.slice(0, 50));
  return n;
}
