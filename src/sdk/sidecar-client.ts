// The SDK's transport to the sidecar's control API: JSON calls, server-sent event streams, credentials (internal to tandem/sdk).
import { readFileSync } from 'node:fs';
import { TandemError } from '../protocol/tandem-error.ts';
import type { ErrorBody } from '../protocol/wire.ts';
import { ControlHttp, readText } from './control-http.ts';

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
 * const ready = client.stream({ path: () => '/v1/lifecycle', ack: 'state', onEvent: (e, d) => console.log(e, d), signal: ctrl.signal });
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
  /**
   * The event the route sends once the stream is in place on the sidecar (its listeners attached, its
   * starting point taken): the first one resolves the promise `stream()` returns.
   */
  ack?: string | undefined;
  /** The stream never keeps the process running: neither its socket nor its reconnect timer. */
  unref?: boolean | undefined;
  /** The longest wait between reconnects (default 2 s). */
  maxDelayMs?: number | undefined;
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
  #http: ControlHttp;

  constructor(opts: { url?: string | undefined; token?: string | undefined; consulToken?: string | undefined }) {
    this.url = normalizeUrl(opts.url ?? process.env['TANDEM_API'] ?? DEFAULT_API);
    this.#token = opts.token ?? process.env['TANDEM_API_TOKEN'];
    this.#consulToken = (opts.consulToken ?? envConsulToken()) || undefined;
    this.#http = new ControlHttp(this.url);
  }

  /** The control API's headers (never sent to services: requests to them build their own). */
  headers(): Record<string, string> {
    const h: Record<string, string> = this.#token ? { authorization: `Bearer ${this.#token}` } : {};
    if (this.#consulToken) h['x-consul-token'] = this.#consulToken;
    return h;
  }

  /** One JSON call; `accept` lists non-2xx statuses whose body is still the answer (a degraded health). */
  async api<T>(method: string, path: string, body?: unknown, accept: readonly number[] = []): Promise<T> {
    const payload = body === undefined ? undefined : JSON.stringify(body);
    const headers = payload === undefined ? this.headers() : { ...this.headers(), 'content-type': 'application/json' };
    let status: number;
    let text: string;
    try {
      const res = await this.#http.open(path, { method, headers, body: payload });
      status = res.statusCode ?? 0;
      text = await readText(res);
    } catch (err) {
      throw this.unreachable(err);
    }
    if ((status < 200 || status > 299) && !accept.includes(status)) throw errorFrom(status, text);
    return JSON.parse(text) as T;
  }

  /**
   * Reads a server-sent event stream, reconnecting (with backoff) until `signal` aborts. The promise
   * resolves at the first `ack` event (never, without one), and rejects with the signal's reason when
   * the stream is stopped before it (it is always handled: awaiting it is optional).
   */
  stream(o: StreamOptions): Promise<void> {
    const { signal } = o;
    let acked: () => void = () => undefined;
    const ready = new Promise<void>((resolve, reject) => {
      acked = resolve;
      if (signal.aborted) reject(signal.reason);
      else signal.addEventListener('abort', () => reject(signal.reason), { once: true });
    });
    ready.catch(() => undefined);
    const onEvent = (event: string, data: string) => {
      if (event === o.ack) acked();
      o.onEvent(event, data);
    };
    void (async () => {
      let delay = 100;
      while (!signal.aborted) {
        try {
          const res = await this.#http.open(o.path(), { method: o.method ?? 'GET', headers: this.headers(), signal, stream: true, unref: o.unref });
          const status = res.statusCode ?? 0;
          if (status < 200 || status > 299) throw errorFrom(status, await readText(res));
          delay = 100;
          res.setEncoding('utf8');
          const feed = sseParser(onEvent);
          for await (const chunk of res) feed(chunk as string);
        } catch (err) {
          if (signal.aborted) return;
          o.onError?.(err instanceof TandemError ? err : this.unreachable(err));
        }
        if (signal.aborted) return;
        o.onDisconnect?.();
        await new Promise((r) => {
          const t = setTimeout(r, delay);
          if (o.unref) t.unref();
        });
        delay = Math.min(delay * 2, o.maxDelayMs ?? 2000);
      }
    })();
    return ready;
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
  let text = '';
  try {
    text = await res.text();
  } catch {
    // the body broke off: the status still says what happened
  }
  return errorFrom(res.status, text);
}

/**
 * A non-2xx answer's status and body as a {@link TandemError}.
 *
 * @example
 * ```ts
 * errorFrom(404, '{"code":"TANDEM_ERR_SERVICE_NOT_FOUND","statusCode":404,"message":"..."}');
 * ```
 */
export function errorFrom(status: number, text: string): TandemError {
  let body: Partial<ErrorBody> = {};
  try {
    const parsed: unknown = JSON.parse(text);
    if (parsed !== null && typeof parsed === 'object') body = parsed as Partial<ErrorBody>;
  } catch {
    // not JSON
  }
  return new TandemError(body.code ?? 'TANDEM_ERR_HTTP', body.statusCode ?? status, body.message ?? `the sidecar answered ${status}`);
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
