// The SDK's HTTP to the sidecar's control API: node:http on agents the SDK owns, so no proxy variable ever applies (internal to tandem/sdk).
// Why not the global fetch or http.globalAgent: on Node 24+ with NODE_USE_ENV_PROXY=1 both send every
// call to HTTP_PROXY, which is how apps reach services by name through Tandem's proxy, and that proxy
// refuses the control plane (403). An agent created here has no proxy configured, whatever
// NODE_USE_ENV_PROXY, HTTP_PROXY or NO_PROXY say, on every Node the SDK supports.
import { Agent as HttpAgent, request as httpRequest, type ClientRequest, type IncomingMessage, type RequestOptions } from 'node:http';
import { Agent as HttpsAgent, request as httpsRequest } from 'node:https';

/**
 * Sockets kept for one client's calls: control-API calls are small and short, and more than this many
 * at once wait in the agent's queue instead of opening a connection each.
 */
const MAX_CALL_SOCKETS = 8;

/** A reused keep-alive socket the sidecar closed just as it was picked is retried once, for these only. */
const IDEMPOTENT = new Set(['GET', 'HEAD', 'PUT', 'DELETE']);

/**
 * One request to the control API.
 *
 * @example
 * ```ts
 * const res = await http.open('/v1/lifecycle', { method: 'GET', headers: {}, stream: true, signal });
 * ```
 */
export interface OpenOptions {
  method: string;
  headers: Record<string, string>;
  /** Already serialised; its length is sent (never a chunked body). */
  body?: string | undefined;
  signal?: AbortSignal | undefined;
  /**
   * A long-lived event stream: its own connection, never one of the calls' pooled sockets (a stream
   * holds its socket for as long as it is open, and would starve the calls of a bounded pool).
   */
  stream?: boolean | undefined;
  /** The socket never keeps the process running (the liveness stream). */
  unref?: boolean | undefined;
}

/**
 * The control API's connections for one SDK client: a keep-alive pool for calls, fresh connections
 * for streams, both on agents this class owns.
 *
 * @example
 * ```ts
 * const http = new ControlHttp('http://127.0.0.1:7701');
 * const res = await http.open('/v1/health', { method: 'GET', headers: {} });
 * console.log(res.statusCode, await readText(res));
 * ```
 */
export class ControlHttp {
  readonly #base: string;
  readonly #request: (url: URL, opts: RequestOptions, cb: (res: IncomingMessage) => void) => ClientRequest;
  readonly #calls: HttpAgent;
  readonly #streams: HttpAgent;

  /** `base`: the control API's URL without a trailing slash (http: or https:). */
  constructor(base: string) {
    this.#base = base;
    const https = new URL(base).protocol === 'https:';
    this.#request = https ? httpsRequest : httpRequest;
    // Idle pooled sockets are unref'd by Node's agent: a pool never keeps an app's process running.
    this.#calls = https ? new HttpsAgent({ keepAlive: true, maxSockets: MAX_CALL_SOCKETS }) : new HttpAgent({ keepAlive: true, maxSockets: MAX_CALL_SOCKETS });
    this.#streams = https ? new HttpsAgent({ keepAlive: false }) : new HttpAgent({ keepAlive: false });
  }

  /** Resolves with the response once its head has arrived; rejects with the request's error (an abort included). */
  open(path: string, o: OpenOptions, retried = false): Promise<IncomingMessage> {
    return new Promise<IncomingMessage>((resolve, reject) => {
      const headers: Record<string, string> = { ...o.headers };
      // A body-less POST without it would be sent chunked, as if it had a body.
      if (o.body !== undefined || (o.method !== 'GET' && o.method !== 'HEAD')) headers['content-length'] = String(Buffer.byteLength(o.body ?? ''));
      const opts: RequestOptions = { method: o.method, headers, agent: o.stream ? this.#streams : this.#calls };
      if (o.signal) opts.signal = o.signal;
      const req = this.#request(new URL(`${this.#base}${path}`), opts, resolve);
      if (o.unref) req.on('socket', (socket) => socket.unref());
      // `on`, not `once`: an error after the response (the socket dying mid-body) reaches the body's reader, and must not crash here.
      req.on('error', (err: NodeJS.ErrnoException) => {
        // The sidecar closed an idle keep-alive socket as this request went out on it: nothing was
        // processed, so a request that may be repeated goes again on a fresh socket.
        if (!retried && req.reusedSocket && err.code === 'ECONNRESET' && IDEMPOTENT.has(o.method)) resolve(this.open(path, o, true));
        else reject(err);
      });
      req.end(o.body);
    });
  }
}

/**
 * The whole body of a response as text (rejects when the connection breaks before its end).
 *
 * @example
 * ```ts
 * const body = JSON.parse(await readText(res));
 * ```
 */
export async function readText(res: IncomingMessage): Promise<string> {
  res.setEncoding('utf8');
  let text = '';
  for await (const chunk of res) text += chunk as string;
  return text;
}
