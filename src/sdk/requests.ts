// The SDK's calls to services through the sidecar's proxy: routing headers, deadlines, and what a failure means.
import type { SidecarClient } from './sidecar-client.ts';
import { splitTarget } from './streams.ts';

/**
 * Options of {@link Tandem.request}: a standard `RequestInit` plus routing options.
 *
 * @example
 * ```ts
 * await tandem.request('carts@^2', '/cart', { stickyId: userId, timeoutMs: 2000 });
 * ```
 */
export interface TandemRequestInit extends RequestInit {
  /** Sent as `X-StickyId`: the same key reaches the same instance. */
  stickyId?: string;
  /** Sent as `X-Tandem-Instance`: only this instance id. */
  instance?: string;
  /** Aborts the request after this many milliseconds. */
  timeoutMs?: number;
}

/**
 * `users@^2` as a proxy path segment (each part URL-encoded).
 *
 * @example
 * ```ts
 * pathTarget('users@^2'); // 'users@%5E2'
 * ```
 */
export function pathTarget(target: string): string {
  const { service, range } = splitTarget(target);
  return range === '' ? encodeURIComponent(service) : `${encodeURIComponent(service)}@${encodeURIComponent(range)}`;
}

/**
 * Sends one request with the routing options as headers; a sidecar that does not answer is
 * `TANDEM_ERR_SIDECAR_UNREACHABLE`, an abort or a timeout stays what it is.
 *
 * @example
 * ```ts
 * const res = await send(client, 'http://127.0.0.1:7700/users@%5E1/x', { stickyId: 'user-42' });
 * ```
 */
export async function send(client: SidecarClient, url: string, init: TandemRequestInit): Promise<Response> {
  const { stickyId, instance, timeoutMs, ...rest } = init;
  const headers = new Headers(rest.headers);
  if (stickyId !== undefined) headers.set('x-stickyid', stickyId);
  if (instance !== undefined) headers.set('x-tandem-instance', instance);
  const signals = [rest.signal, timeoutMs !== undefined ? AbortSignal.timeout(timeoutMs) : undefined].filter((s): s is AbortSignal => s != null);
  const req: RequestInit = { ...rest, headers };
  if (signals.length > 0) req.signal = signals.length === 1 ? (signals[0] as AbortSignal) : AbortSignal.any(signals);
  try {
    return await fetch(url, req);
  } catch (err) {
    if ((err as Error).name === 'AbortError' || (err as Error).name === 'TimeoutError') throw err;
    throw client.unreachable(err, url);
  }
}
