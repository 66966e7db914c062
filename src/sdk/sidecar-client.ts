// The SDK's transport to the sidecar's control API: JSON calls, server-sent event streams, credentials (internal to tandem/sdk).
import { readFileSync } from 'node:fs';
import { TandemError } from '../protocol/tandem-error.ts';
import type { ErrorBody } from '../protocol/wire.ts';

const DEFAULT_API = 'http://127.0.0.1:7701';

/**
 * `host:port` or a URL, without a trailing slash.
 *
 * @example
 * ```ts
 * normalizeUrl('127.0.0.1:7701'); // 'http://127.0.0.1:7701'
 * ```
 */
export function normalizeUrl(v: string): string {
  return (/^[a-z]+:\/\//i.test(v) ? v : `http://${v}`).replace(/\/+$/, '');
}

/**
 * What one event stream does: where it connects, what it does with each event, when it gives up.
 *
 * @example
 * ```ts
 * client.stream({ path: () => '/v1/lifecycle', onEvent: (e, d) => console.log(e, d), signal: ctrl.signal });
 * ```
 */
export interface StreamOptions {
  /** Asked again on every (re)connect: a resumable stream puts its cursor there. */
  path: () => string;
  onEvent: (event: string, data: string) => void;
  /** Aborting it ends the stream for good. */
  signal: AbortSignal;
  /** Every failed attempt (the stream keeps reconnecting). */
  onError?: ((err: TandemError) => void) | undefined;
  method?: string;
  /** After the connection is lost, before the reconnect. */
  onDisconnect?: (() => void) | undefined;
}

/**
 * Splits a server-sent event stream into events, chunk by chunk (`data` lines joined, comments skipped).
 *
 * @example
 * ```ts
 * const feed = sseParser((event, data) => console.log(event, JSON.parse(data)));
 * feed('event: alive\ndata: {"id":"a"}\n\n');
 * ```
 */
export function sseParser(onEvent: (event: string, data: string) => void): (chunk: string) => void {
  let buf = '';
  return (chunk) => {
    buf += chunk;
    let end;
    while ((end = buf.indexOf('\n\n')) !== -1) {
      const block = buf.slice(0, end);
      buf = buf.slice(end + 2);
      let event = 'message';
      let data = '';
      for (const line of block.split('\n')) {
        if (line.startsWith('event: ')) event = line.slice(7);
        else if (line.startsWith('data: ')) data += line.slice(6);
      }
      if (data) onEvent(event, data);
    }
  };
}

/**
 * The control API as the SDK calls it: the URL, the credentials sent with every call, errors as
 * {@link TandemError}.
 *
 * @example
 * ```ts
 * const client = new SidecarClient({ url: '127.0.0.1:7701' });
 * const regs = await client.api<Registration[]>('GET', '/v1/services');
 * ```
 */
export class SidecarClient {
  readonly url: string;
  #token: string | undefined;
  #consulToken: string | undefined;

  constructor(opts: { url?: string | undefined; token?: string | undefined; consulToken?: string | undefined }) {
    this.url = normalizeUrl(opts.url ?? process.env['TANDEM_API'] ?? DEFAULT_API);
    this.#token = opts.token ?? process.env['TANDEM_API_TOKEN'];
    this.#consulToken = (opts.consulToken ?? envConsulToken()) || undefined;
  }

  /** The control API's headers (never sent to services: requests to them build their own). */
  headers(): Record<string, string> {
    const h: Record<string, string> = this.#token ? { authorization: `Bearer ${this.#token}` } : {};
    if (this.#consulToken) h['x-consul-token'] = this.#consulToken;
    return h;
  }

  /** One JSON call; `accept` lists non-2xx statuses whose body is still the answer (a degraded health). */
  async api<T>(method: string, path: string, body?: unknown, accept: readonly number[] = []): Promise<T> {
    const init: RequestInit = { method, headers: this.headers() };
    if (body !== undefined) {
      init.body = JSON.stringify(body);
      init.headers = { ...this.headers(), 'content-type': 'application/json' };
    }
    let res: Response;
    try {
      res = await fetch(`${this.url}${path}`, init);
    } catch (err) {
      throw this.unreachable(err);
    }
    if (!res.ok && !accept.includes(res.status)) throw await toError(res);
    return (await res.json()) as T;
  }

  /** Reads a server-sent event stream, reconnecting (with backoff) until `signal` aborts. */
  stream(o: StreamOptions): void {
    const { signal } = o;
    void (async () => {
      let delay = 100;
      while (!signal.aborted) {
        try {
          const res = await fetch(`${this.url}${o.path()}`, { method: o.method ?? 'GET', headers: this.headers(), signal });
          if (!res.ok || !res.body) throw await toError(res);
          delay = 100;
          const decoder = new TextDecoder();
          const feed = sseParser(o.onEvent);
          for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) feed(decoder.decode(chunk, { stream: true }));
        } catch (err) {
          if (signal.aborted) return;
          o.onError?.(err instanceof TandemError ? err : this.unreachable(err));
        }
        if (signal.aborted) return;
        o.onDisconnect?.();
        await new Promise((r) => setTimeout(r, delay));
        delay = Math.min(delay * 2, 2000);
      }
    })();
  }

  /** The error for a sidecar that does not answer at all. */
  unreachable(err: unknown, url = this.url): TandemError {
    const code = (err as { cause?: { code?: string } }).cause?.code ?? (err as { code?: string }).code;
    return new TandemError('TANDEM_ERR_SIDECAR_UNREACHABLE', 503, `cannot reach ${url}${code ? ` (${code})` : ''}: is the tandem sidecar running at ${this.url}?`, { cause: err });
  }
}

/**
 * The sidecar's error body as a {@link TandemError} (or a generic one when the body is not ours).
 *
 * @example
 * ```ts
 * if (!res.ok) throw await toError(res);
 * ```
 */
export async function toError(res: Response): Promise<TandemError> {
  let body: Partial<ErrorBody> = {};
  try {
    body = (await res.json()) as Partial<ErrorBody>;
  } catch {
    // not JSON
  }
  return new TandemError(body.code ?? 'TANDEM_ERR_HTTP', body.statusCode ?? res.status, body.message ?? `the sidecar answered ${res.status}`);
}

/** `CONSUL_HTTP_TOKEN`, else the content of `CONSUL_HTTP_TOKEN_FILE` (as the consul CLI reads them). */
function envConsulToken(): string | undefined {
  const token = process.env['CONSUL_HTTP_TOKEN'];
  if (token) return token.trim();
  const file = process.env['CONSUL_HTTP_TOKEN_FILE'];
  if (!file) return undefined;
  try {
    return readFileSync(file, 'utf8').trim();
  } catch (err) {
    throw new TandemError('TANDEM_ERR_INVALID_CONFIG', 400, `cannot read CONSUL_HTTP_TOKEN_FILE (${(err as NodeJS.ErrnoException).code ?? 'error'})`, { cause: err });
  }
}
