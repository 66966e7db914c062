// Sends one attempt of a request to one instance with undici (keep-alive pool per instance), streaming both ways.
import type { IncomingHttpHeaders, IncomingMessage, ServerResponse } from 'node:http';
import type { Duplex, Readable } from 'node:stream';
import { buildConnector, Pool, type Dispatcher } from 'undici';
import type { ControlPlaneGuard } from './control-plane.ts';
import type { Endpoint } from './endpoint-source.ts';
import { stripResponseHeaders } from './headers.ts';

export interface ForwarderOptions {
  /** Time to wait for the upstream's response headers; beyond it, 504 (or a retry). */
  upstreamTimeoutMs: number;
  /** Longest pause between two body chunks; 0 = none (long-lived streams). */
  bodyTimeoutMs: number;
  connectTimeoutMs: number;
  connectionsPerInstance: number;
  /** Refuses connections whose peer is a control plane, whatever name led there (see ControlPlaneGuard). */
  guard?: ControlPlaneGuard | undefined;
}

export type RequestBody = { kind: 'none' } | { kind: 'buffer'; data: Buffer } | { kind: 'stream'; stream: Readable };

export type AttemptResult =
  | { kind: 'done'; status: number }
  /** The client went away first: says nothing about the instance. */
  | { kind: 'aborted' }
  | {
      kind: 'failed';
      reason: string;
      timeout: boolean;
      /** The request never reached the app (refused, connect timeout). */
      unsent: boolean;
      status?: number;
      /** The connection reached a control plane and was cut before anything was sent. */
      controlPlane?: boolean;
    };

export interface AttemptOptions {
  endpoint: Endpoint;
  method: string;
  path: string;
  headers: string[];
  body: RequestBody;
  /** Time to wait for the response headers of this try (the smaller of the upstream timeout and the deadline). */
  timeoutMs: number;
  /** Answer with these statuses as a failure instead of passing them on (the caller will retry). */
  retryStatuses: ReadonlySet<number> | undefined;
  /** Extra response headers (x-tandem-instance, x-tandem-sticky). */
  extraHeaders: readonly [string, string][];
}

const UNSENT_CODES = new Set(['ECONNREFUSED', 'UND_ERR_CONNECT_TIMEOUT', 'EHOSTUNREACH', 'ENETUNREACH', 'EADDRNOTAVAIL', 'ENOTFOUND']);
/** The code of the error a guarded connection fails with when its peer is a control plane. */
export const CONTROL_PLANE_CODE = 'TANDEM_ERR_CONTROL_PLANE';

export class Forwarder {
  #o: ForwarderOptions;
  #pools = new Map<string, { key: string; pool: Pool }>();

  constructor(opts: ForwarderOptions) {
    this.#o = opts;
  }

  /** The keep-alive pool of one instance (replaced if its address changed). */
  pool(endpoint: Endpoint): Pool {
    const key = `${endpoint.address}:${endpoint.port}`;
    const cur = this.#pools.get(endpoint.id);
    if (cur && cur.key === key) return cur.pool;
    if (cur) void cur.pool.close().catch(() => undefined);
    const host = endpoint.address.includes(':') ? `[${endpoint.address}]` : endpoint.address;
    const pool = new Pool(`http://${host}:${endpoint.port}`, {
      connections: this.#o.connectionsPerInstance,
      keepAliveTimeout: 4000,
      connect: this.#o.guard ? guardedConnector(this.#o.guard, this.#o.connectTimeoutMs) : { timeout: this.#o.connectTimeoutMs },
    });
    this.#pools.set(endpoint.id, { key, pool });
    return pool;
  }

  /** Closes the pools of instances that left the catalog. */
  forget(ids: Iterable<string>): void {
    for (const id of ids) {
      const cur = this.#pools.get(id);
      if (cur) {
        this.#pools.delete(id);
        void cur.pool.destroy().catch(() => undefined);
      }
    }
  }

  async close(): Promise<void> {
    const pools = [...this.#pools.values()];
    this.#pools.clear();
    await Promise.all(pools.map((p) => p.pool.destroy().catch(() => undefined)));
  }

  /**
   * One try. Resolves `failed` only while nothing was sent to the client (so the caller may fail over);
   * once the response has started it is streamed to the end (or the client connection is cut).
   */
  attempt(req: IncomingMessage, res: ServerResponse, o: AttemptOptions): Promise<AttemptResult> {
    return new Promise((resolve) => {
      let controller: Dispatcher.DispatchController | undefined;
      let started = false;
      let retryStatus: number | undefined;
      let settled = false;
      let status = 0;
      let clientGone = false;
      const onClientClose = () => {
        // The client went away before the response finished: cancel the upstream request.
        if (!res.writableFinished) {
          clientGone = true;
          controller?.abort(new Error('client closed the connection'));
        }
      };
      const finish = (r: AttemptResult) => {
        if (settled) return;
        settled = true;
        res.removeListener('close', onClientClose);
        resolve(r);
      };
      res.once('close', onClientClose);
      const timeoutMs = o.timeoutMs;

      const handler: Dispatcher.DispatchHandler = {
        onRequestStart(c) {
          controller = c;
          if (res.destroyed) {
            clientGone = true;
            c.abort(new Error('client closed the connection'));
          }
        },
        onResponseStart(c, statusCode, headers) {
          if (statusCode < 200) return; // 1xx: informational, the final answer follows
          status = statusCode;
          if (o.retryStatuses?.has(statusCode)) {
            retryStatus = statusCode;
            c.abort(new Error(`upstream answered ${statusCode}`));
            return;
          }
          started = true;
          const h = stripResponseHeaders(headers as IncomingHttpHeaders) as Record<string, string | string[] | undefined>;
          for (const [k, v] of o.extraHeaders) h[k] = v;
          res.writeHead(statusCode, h);
          // Streams (SSE, chunked) must show their headers now, not with the first chunk.
          if (h['content-length'] === undefined) res.flushHeaders();
        },
        onResponseData(c, chunk) {
          if (!res.write(chunk)) {
            c.pause();
            res.once('drain', () => c.resume());
          }
        },
        onResponseEnd() {
          res.end();
          finish({ kind: 'done', status });
        },
        onResponseError(_c, err) {
          if (clientGone) {
            if (started) res.destroy();
            finish({ kind: 'aborted' });
            return;
          }
          if (started) {
            // Mid-stream failure: nothing can be retried; cut the client so it sees a broken response.
            res.destroy(err);
            finish({ kind: 'done', status });
            return;
          }
          if (retryStatus !== undefined) {
            finish({ kind: 'failed', reason: `answered ${retryStatus}`, timeout: false, unsent: false, status: retryStatus });
            return;
          }
          const code = (err as { code?: string }).code ?? '';
          if (code === CONTROL_PLANE_CODE) {
            finish({ kind: 'failed', reason: 'the instance is a control plane', timeout: false, unsent: true, controlPlane: true });
            return;
          }
          const timeout = code === 'UND_ERR_HEADERS_TIMEOUT' || code === 'UND_ERR_CONNECT_TIMEOUT';
          finish({
            kind: 'failed',
            reason: code === 'UND_ERR_HEADERS_TIMEOUT' ? `no response within ${timeoutMs} ms` : `${code || err.message}`,
            timeout,
            unsent: UNSENT_CODES.has(code),
          });
        },
      };

      const body = o.body.kind === 'none' ? null : o.body.kind === 'buffer' ? o.body.data : o.body.stream;
      this.pool(o.endpoint).dispatch(
        {
          path: o.path,
          method: o.method as Dispatcher.HttpMethod,
          headers: o.headers,
          body,
          headersTimeout: timeoutMs,
          bodyTimeout: this.#o.bodyTimeoutMs,
        },
        handler,
      );
    });
  }

  /**
   * One whole exchange with one instance, buffered (for broadcast): resolves with the response, or with
   * the error that ended it within `timeoutMs`.
   */
  async collect(
    endpoint: Endpoint,
    o: { method: string; path: string; headers: string[]; body: Buffer | null; timeoutMs: number; maxBodyBytes: number },
  ): Promise<{ status: number; headers: IncomingHttpHeaders; body: Buffer } | { error: { code: string; message: string } }> {
    const signal = AbortSignal.timeout(o.timeoutMs);
    try {
      const r = await this.pool(endpoint).request({
        method: o.method as Dispatcher.HttpMethod,
        path: o.path,
        headers: o.headers,
        body: o.body,
        headersTimeout: o.timeoutMs,
        bodyTimeout: o.timeoutMs,
        signal,
      });
      const chunks: Buffer[] = [];
      let size = 0;
      for await (const c of r.body as AsyncIterable<Buffer>) {
        size += c.length;
        if (size > o.maxBodyBytes) {
          r.body.destroy();
          return { error: { code: 'TANDEM_ERR_BROADCAST_BODY_TOO_LARGE', message: `the response is larger than ${o.maxBodyBytes} bytes` } };
        }
        chunks.push(c);
      }
      return { status: r.statusCode, headers: stripResponseHeaders(r.headers as IncomingHttpHeaders), body: Buffer.concat(chunks) };
    } catch (err) {
      const code = (err as { code?: string }).code;
      if (signal.aborted || code === 'UND_ERR_HEADERS_TIMEOUT' || code === 'UND_ERR_BODY_TIMEOUT') {
        return { error: { code: 'TANDEM_ERR_UPSTREAM_TIMEOUT', message: `no complete answer within ${o.timeoutMs} ms` } };
      }
      if (code === CONTROL_PLANE_CODE) return { error: { code, message: 'the instance is a control plane: not proxied to' } };
      return { error: { code: 'TANDEM_ERR_UPSTREAM_FAILED', message: code ?? (err as Error).message } };
    }
  }

  /** Opens a WebSocket (or other upgrade) connection to one instance. */
  async upgrade(endpoint: Endpoint, path: string, headers: string[], protocol: string): Promise<{ headers: IncomingHttpHeaders; socket: Duplex }> {
    const r = await this.pool(endpoint).upgrade({ path, method: 'GET', headers, protocol, headersTimeout: this.#o.upstreamTimeoutMs } as Dispatcher.UpgradeOptions);
    return { headers: r.headers as IncomingHttpHeaders, socket: r.socket };
  }
}

/**
 * undici's own connector, then a look at who answered: a peer that is a control plane (after DNS, or a
 * numeric spelling of a loopback address) is cut before a byte is sent.
 */
function guardedConnector(guard: ControlPlaneGuard, timeout: number): buildConnector.connector {
  const connect = buildConnector({ timeout });
  return (opts, callback) =>
    connect(opts, (err, socket) => {
      if (err || !socket) {
        callback(err ?? new Error('no socket'), null);
        return;
      }
      if (guard.refusesPeer(socket.remoteAddress, socket.remotePort)) {
        socket.destroy();
        callback(Object.assign(new Error('the instance is a control plane: not proxied to'), { code: CONTROL_PLANE_CODE }), null);
        return;
      }
      callback(null, socket);
    });
}
