// The upstream side of the data path: a keep-alive pool of raw sockets per instance (and per egress address), one exchange per try.
import type { Socket } from 'node:net';
import type { ControlPlaneGuard } from './control-plane.ts';
import type { Endpoint } from './endpoint-source.ts';
import { collectInto, type Collected } from './engine/collect.ts';
import { exchange, type AttemptResult, type RequestBody, type ResponseTarget } from './engine/exchange.ts';
import { UpstreamPool, type ConnUser, type UpstreamConn } from './engine/upstream-pool.ts';
import type { HeadLimits } from './http1/head-types.ts';
import { parseResponseHead } from './http1/response-head.ts';
import { responseLines } from './headers.ts';

export { CONTROL_PLANE_CODE } from './engine/upstream-pool.ts';

export interface ForwarderOptions {
  /** Time to wait for the upstream's response headers; beyond it, 504 (or a retry). */
  upstreamTimeoutMs: number;
  /** Longest pause between two body chunks; 0 = none (long-lived streams). */
  bodyTimeoutMs: number;
  connectTimeoutMs: number;
  connectionsPerInstance: number;
  /** Refuses connections whose peer is a control plane, whatever name led there (see ControlPlaneGuard). */
  guard?: ControlPlaneGuard | undefined;
  /** Bounds on an upstream's response head. */
  limits: HeadLimits;
}

export interface AttemptOptions {
  /** The instance (its keep-alive pool); undefined for egress, which gives `origin` instead. */
  endpoint: Endpoint | undefined;
  /** A host that is not a catalog service (egress): the address the policy judged. */
  origin?: { address: string; port: number };
  method: string;
  path: string;
  /** Header lines (each ending in CRLF), `host` excluded unless `hostLine` is false. */
  lines: string;
  /** Add `host: <address>:<port>` of the instance (egress lines carry their own). */
  hostLine: boolean;
  /** 0: the client spoke HTTP/1.0, so the upstream is asked in 1.0 too (it then never answers chunked). */
  versionMinor: 0 | 1;
  /** The body is streamed with its chunked framing as it came. */
  chunked: boolean;
  body: RequestBody;
  /** Time to wait for the response headers of this try (the smaller of the upstream timeout and the deadline). */
  timeoutMs: number;
  /** Answer with these statuses as a failure instead of passing them on (the caller will retry). */
  retryStatuses: ReadonlySet<number> | undefined;
  /** Extra response header lines (x-tandem-instance, x-tandem-sticky). */
  extraLines: string;
  /** When the request's own deadline ends (ms since epoch): how long a draining pool lets this response finish. */
  deadline?: number;
  /** Safe to send again on a fresh connection when a reused one closed before any answer. */
  replaySafe: boolean;
}

interface PoolEntry {
  pool: UpstreamPool;
  /** The latest deadline of a request sent through this pool: a retired pool is destroyed then at the latest. */
  until: number;
}

/** Egress pools are dropped when they hold no connection. */
const IDLE_MS = 4000;

export class Forwarder {
  #o: ForwarderOptions;
  #pools = new Map<string, PoolEntry>();
  /** Pools of instances that left (or moved): taking no new requests, finishing the ones in flight. */
  #draining = new Set<UpstreamPool>();
  #egress = new Map<string, UpstreamPool>();
  #sweep: NodeJS.Timeout;

  constructor(opts: ForwarderOptions) {
    this.#o = opts;
    this.#sweep = setInterval(() => this.#sweepIdle(), 1000);
    this.#sweep.unref();
  }

  /** The keep-alive pool of one instance (replaced if its address changed). */
  pool(endpoint: Endpoint): UpstreamPool {
    return this.#entry(endpoint).pool;
  }

  #entry(endpoint: Endpoint): PoolEntry {
    const cur = this.#pools.get(endpoint.id);
    // Compared field by field: no key string built per request.
    if (cur && cur.pool.o.host === endpoint.address && cur.pool.o.port === endpoint.port) return cur;
    if (cur) this.#retire(cur);
    const entry = { pool: this.#newPool(endpoint.address, endpoint.port), until: 0 };
    this.#pools.set(endpoint.id, entry);
    return entry;
  }

  #newPool(host: string, port: number): UpstreamPool {
    return new UpstreamPool({ host, port, max: this.#o.connectionsPerInstance, connectTimeoutMs: this.#o.connectTimeoutMs, idleMs: IDLE_MS, guard: this.#o.guard });
  }

  #egressPool(address: string, port: number): UpstreamPool {
    const key = `${address}|${port}`;
    let p = this.#egress.get(key);
    if (!p) {
      p = this.#newPool(address, port);
      this.#egress.set(key, p);
    }
    return p;
  }

  #sweepIdle(): void {
    const now = performance.now();
    for (const e of this.#pools.values()) e.pool.sweep(now);
    for (const [k, p] of this.#egress) {
      p.sweep(now);
      if (p.open === 0) this.#egress.delete(k);
    }
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
    const timer = setTimeout(() => void pool.destroy(), Math.max(0, entry.until - Date.now()));
    timer.unref();
    void pool.drain().finally(() => {
      clearTimeout(timer);
      this.#draining.delete(pool);
    });
  }

  /** Pools still finishing responses for instances that left (for tests and the status view). */
  get draining(): number {
    return this.#draining.size;
  }

  async close(): Promise<void> {
    clearInterval(this.#sweep);
    const pools = [...[...this.#pools.values()].map((p) => p.pool), ...this.#draining, ...this.#egress.values()];
    this.#pools.clear();
    this.#draining.clear();
    this.#egress.clear();
    await Promise.all(pools.map((p) => p.destroy()));
  }

  /**
   * One try. Resolves `failed` only while nothing was sent to the client (so the caller may fail over);
   * once the response has started it is streamed to the end (or the client connection is cut).
   */
  attempt(target: ResponseTarget, o: AttemptOptions): Promise<AttemptResult> {
    let pool: UpstreamPool;
    let host = '';
    if (o.endpoint === undefined) {
      const origin = o.origin as { address: string; port: number };
      pool = this.#egressPool(origin.address, origin.port);
    } else {
      const entry = this.#entry(o.endpoint);
      entry.until = Math.max(entry.until, o.deadline ?? Date.now() + o.timeoutMs);
      pool = entry.pool;
    }
    if (o.hostLine) host = `host: ${hostPort(pool.o.host, pool.o.port)}\r\n`;
    const framing = o.chunked ? 'transfer-encoding: chunked\r\n' : '';
    const connection = o.versionMinor === 0 ? 'connection: close\r\n' : '';
    return exchange(pool, target, {
      method: o.method,
      head: `${o.method} ${o.path} HTTP/1.${o.versionMinor}\r\n${host}${o.lines}${framing}${connection}\r\n`,
      body: o.body,
      headersTimeoutMs: o.timeoutMs,
      bodyTimeoutMs: this.#o.bodyTimeoutMs,
      retryStatuses: o.retryStatuses,
      extraLines: o.extraLines,
      replaySafe: o.replaySafe,
      limits: this.#o.limits,
      closeAfter: o.versionMinor === 0,
    });
  }

  /** One whole exchange with one instance, buffered (for broadcast). */
  collect(endpoint: Endpoint, o: { method: string; path: string; lines: string; body: Buffer | null; timeoutMs: number; maxBodyBytes: number }): Promise<Collected> {
    return collectInto(o.maxBodyBytes, o.timeoutMs, (target) =>
      this.attempt(target, {
        endpoint,
        method: o.method,
        path: o.path,
        lines: o.lines,
        hostLine: true,
        versionMinor: 1,
        chunked: false,
        body: o.body === null ? { kind: 'none' } : { kind: 'buffer', data: o.body },
        timeoutMs: o.timeoutMs,
        retryStatuses: undefined,
        extraLines: '',
        replaySafe: false,
      }),
    );
  }

  /** Opens a WebSocket (or other upgrade) connection to one instance: its 101 head's lines, the socket, and bytes already past the head. */
  upgrade(endpoint: Endpoint, path: string, lines: string, protocol: string): Promise<{ lines: string; socket: Socket; head: Buffer }> {
    const pool = this.pool(endpoint);
    const limits = this.#o.limits;
    const timeoutMs = this.#o.upstreamTimeoutMs;
    return pool.dedicated().then(
      (conn) =>
        new Promise((resolve, reject) => {
          let buf: Buffer | undefined;
          const timer = setTimeout(() => fail(Object.assign(new Error(`no response within ${timeoutMs} ms`), { code: 'UPGRADE_TIMEOUT' })), timeoutMs);
          const fail = (e: Error) => {
            clearTimeout(timer);
            conn.user = undefined;
            conn.socket.destroy();
            reject(e);
          };
          const user: ConnUser = {
            onData: (chunk) => {
              buf = buf === undefined ? chunk : Buffer.concat([buf, chunk]);
              const r = parseResponseHead(buf, 0, limits, 'GET');
              if (r.kind === 'incomplete') return;
              if (r.kind === 'error' || r.status !== 101) return fail(Object.assign(new Error(r.kind === 'error' ? `invalid response (${r.code})` : `answered ${r.status}, not 101`), { code: 'UPGRADE_REFUSED' }));
              clearTimeout(timer);
              conn.user = undefined;
              detach(conn);
              resolve({ lines: responseLines(r.headers, r.connection), socket: conn.socket, head: buf.subarray(r.length) });
            },
            onClose: () => fail(Object.assign(new Error('closed before answering the upgrade'), { code: 'ECONNRESET' })),
            onDrain: () => undefined,
          };
          conn.user = user;
          conn.socket.write(`GET ${path} HTTP/1.1\r\nhost: ${hostPort(pool.o.host, pool.o.port)}\r\n${lines}connection: upgrade\r\nupgrade: ${protocol}\r\n\r\n`, 'latin1');
        }),
    );
  }
}

/** The socket leaves the pool's reading (it is spliced now); the pool still counts it until it closes. */
function detach(conn: UpstreamConn): void {
  conn.socket.removeAllListeners('data');
  conn.socket.removeAllListeners('drain');
}

function hostPort(host: string, port: number): string {
  return host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`;
}
