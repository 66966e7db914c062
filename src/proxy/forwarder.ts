// Sends one attempt of a request to one instance with undici (keep-alive pool per instance), streaming both ways.
import type { IncomingHttpHeaders, IncomingMessage, ServerResponse } from 'node:http';
import type { Duplex, Readable } from 'node:stream';
import { Agent, buildConnector, Pool, type Dispatcher } from 'undici';
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

/** A whole answer with a retryable status, kept while another instance is tried; passed on as is when none can be. */
export interface HeldResponse {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: Buffer;
}

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
      /** The upstream's own answer (a retryable status), read whole: what the client gets if no other try can be made. */
      held?: HeldResponse;
    };

export interface AttemptOptions {
  /** The instance (its keep-alive pool); undefined for egress, which gives `origin` instead. */
  endpoint: Endpoint | undefined;
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
  /** When the request's own deadline ends (ms since epoch): how long a draining pool lets this response finish. */
  deadline?: number;
  /** A host that is not a catalog service (egress, no endpoint): sent through the shared egress agent to this origin (`http://<address>:<port>`). */
  origin?: string;
}

/** A retryable answer larger than this is passed on as it streams (and not retried): holding it would cost memory. */
const HOLD_BYTES = 65_536;

const UNSENT_CODES = new Set(['ECONNREFUSED', 'UND_ERR_CONNECT_TIMEOUT', 'EHOSTUNREACH', 'ENETUNREACH', 'EADDRNOTAVAIL', 'ENOTFOUND']);
/** The code of the error a guarded connection fails with when its peer is a control plane. */
export const CONTROL_PLANE_CODE = 'TANDEM_ERR_CONTROL_PLANE';

interface PoolEntry {
  key: string;
  pool: Pool;
  /** The latest deadline of a request sent through this pool: a retired pool is destroyed then at the latest. */
  until: number;
}

export class Forwarder {
  #o: ForwarderOptions;
  #pools = new Map<string, PoolEntry>();
  /** Pools of instances that left (or moved): taking no new requests, finishing the ones in flight. */
  #draining = new Set<Pool>();
  #egress: Agent | undefined;

  constructor(opts: ForwarderOptions) {
    this.#o = opts;
  }

  /** The keep-alive pool of one instance (replaced if its address changed). */
  pool(endpoint: Endpoint): Pool {
    return this.#entry(endpoint).pool;
  }

  #entry(endpoint: Endpoint): PoolEntry {
    const key = `${endpoint.address}:${endpoint.port}`;
    const cur = this.#pools.get(endpoint.id);
    if (cur && cur.key === key) return cur;
    if (cur) this.#retire(cur);
    const host = endpoint.address.includes(':') ? `[${endpoint.address}]` : endpoint.address;
    const pool = new Pool(`http://${host}:${endpoint.port}`, {
      connections: this.#o.connectionsPerInstance,
      keepAliveTimeout: 4000,
      connect: this.#connector(),
    });
    const entry = { key, pool, until: 0 };
    this.#pools.set(endpoint.id, entry);
    return entry;
  }

  #connector(): buildConnector.connector | buildConnector.BuildOptions {
    return this.#o.guard ? guardedConnector(this.#o.guard, this.#o.connectTimeoutMs) : { timeout: this.#o.connectTimeoutMs };
  }

  /** The one agent for hosts that are not catalog services (a pool per origin, dropped when its connections close). */
  #egressAgent(): Agent {
    this.#egress ??= new Agent({ connections: this.#o.connectionsPerInstance, keepAliveTimeout: 4000, maxOrigins: 1024, connect: this.#connector() });
    return this.#egress;
  }

  /**
   * Instances that left the catalog: their pools take no new requests, and the responses in flight
   * finish, each within its request's own deadline (then the pool is destroyed).
   */
  forget(ids: Iterable<string>): void {
    for (const id of ids) {
      const cur = this.#pools.get(id);
      if (cur) {
        this.#pools.delete(id);
        this.#retire(cur);
      }
    }
  }

  #retire(entry: PoolEntry): void {
    const { pool } = entry;
    this.#draining.add(pool);
    const timer = setTimeout(() => void pool.destroy().catch(() => undefined), Math.max(0, entry.until - Date.now()));
    timer.unref();
    void pool
      .close()
      .catch(() => undefined)
      .finally(() => {
        clearTimeout(timer);
        this.#draining.delete(pool);
      });
  }

  /** Pools still finishing responses for instances that left (for tests and the status view). */
  get draining(): number {
    return this.#draining.size;
  }

  async close(): Promise<void> {
    const pools = [...[...this.#pools.values()].map((p) => p.pool), ...this.#draining];
    this.#pools.clear();
    this.#draining.clear();
    const egress = this.#egress;
    this.#egress = undefined;
    await Promise.all([...pools.map((p) => p.destroy().catch(() => undefined)), egress?.destroy().catch(() => undefined)]);
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
      /** A retryable answer being read whole (see HeldResponse). */
      let holding: { headers: Record<string, string | string[] | undefined>; chunks: Buffer[]; size: number } | undefined;
      let holdTimer: NodeJS.Timeout | undefined;
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
        clearTimeout(holdTimer);
        res.removeListener('close', onClientClose);
        resolve(r);
      };
      const startResponse = (statusCode: number, h: Record<string, string | string[] | undefined>) => {
        started = true;
        for (const [k, v] of o.extraHeaders) h[k] = v;
        res.writeHead(statusCode, h);
        // Streams (SSE, chunked) must show their headers now, not with the first chunk. And after an
        // automatic `100 Continue` on a pipelined response still queued behind another, node:http would
        // put the head of a Buffer body before that 100: written now, as a string, it stays in order.
        if (h['content-length'] === undefined || req.headers.expect !== undefined) res.flushHeaders();
      };
      const write = (c: Dispatcher.DispatchController, chunk: Buffer) => {
        if (!res.write(chunk)) {
          c.pause();
          res.once('drain', () => c.resume());
        }
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
          const h = stripResponseHeaders(headers as IncomingHttpHeaders) as Record<string, string | string[] | undefined>;
          if (o.retryStatuses?.has(statusCode)) {
            // Read whole (it is small, or it is passed on after all): if no other instance can be
            // tried, the client gets this answer as the upstream gave it, not a proxy error.
            retryStatus = statusCode;
            holding = { headers: h, chunks: [], size: 0 };
            holdTimer = setTimeout(() => c.abort(new Error(`upstream answered ${statusCode} and did not finish its body`)), timeoutMs);
            return;
          }
          startResponse(statusCode, h);
        },
        onResponseData(c, chunk) {
          if (holding) {
            holding.chunks.push(chunk);
            holding.size += chunk.length;
            if (holding.size <= HOLD_BYTES) return;
            // Too large to hold: passed on as it comes, and not retried.
            const { headers: h, chunks } = holding;
            holding = undefined;
            retryStatus = undefined;
            clearTimeout(holdTimer);
            startResponse(status, h);
            for (const part of chunks) write(c, part);
            return;
          }
          write(c, chunk);
        },
        onResponseEnd() {
          if (holding) {
            const held = { status, headers: holding.headers, body: Buffer.concat(holding.chunks) };
            holding = undefined;
            finish({ kind: 'failed', reason: `answered ${status}`, timeout: false, unsent: false, status, held });
            return;
          }
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
      const request = {
        path: o.path,
        method: o.method as Dispatcher.HttpMethod,
        headers: o.headers,
        body,
        headersTimeout: timeoutMs,
        bodyTimeout: this.#o.bodyTimeoutMs,
      };
      if (o.endpoint === undefined) {
        this.#egressAgent().dispatch({ ...request, origin: o.origin ?? '' }, handler);
        return;
      }
      const entry = this.#entry(o.endpoint);
      entry.until = Math.max(entry.until, o.deadline ?? Date.now() + timeoutMs);
      entry.pool.dispatch(request, handler);
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
