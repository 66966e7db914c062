// The proxy's listener on node:net: accepts connections, times them out from one sweep, and closes them all on shutdown.
import { createServer, type Server, type Socket } from 'node:net';
import type { HeadError, HeadLimits } from '../http1/head-types.ts';
import { ClientConnection, type ConnectionHost } from './client-connection.ts';
import type { ClientRequest } from './client-request.ts';

export interface Http1ServerOptions {
  limits: HeadLimits;
  headersTimeoutMs: number;
  keepAliveMs: number;
  handle(req: ClientRequest): void;
  refuse(conn: ClientConnection, error: HeadError | 'timeout' | 'tls'): void;
}

/**
 * Why one sweep instead of a timer per connection: re-arming a timer on every request costs more than the
 * request's framing; a deadline field written per request and one check every ~100 ms does not.
 */
export class Http1Server implements ConnectionHost {
  readonly limits: HeadLimits;
  readonly headersTimeoutMs: number;
  readonly keepAliveMs: number;
  #o: Http1ServerOptions;
  #server: Server;
  #conns = new Set<ClientConnection>();
  /** Sockets taken out of HTTP (upgrades, passthrough tunnels): destroyed on shutdown. */
  #detached = new Set<Socket>();
  #sweep: NodeJS.Timeout | undefined;

  constructor(o: Http1ServerOptions) {
    this.#o = o;
    this.limits = o.limits;
    this.headersTimeoutMs = o.headersTimeoutMs;
    this.keepAliveMs = o.keepAliveMs;
    this.#server = createServer({ noDelay: true }, (socket) => this.accept(socket));
  }

  /** Also used for a tunnel's inner connection or a test's socket. */
  accept(socket: Socket): ClientConnection {
    const conn = new ClientConnection(socket, this);
    this.#conns.add(conn);
    return conn;
  }

  handle(req: ClientRequest): void {
    this.#o.handle(req);
  }

  refuse(conn: ClientConnection, error: HeadError | 'timeout' | 'tls'): void {
    this.#o.refuse(conn, error);
  }

  released(conn: ClientConnection): void {
    this.#conns.delete(conn);
    const s = conn.socket;
    if (!s.destroyed) {
      this.#detached.add(s);
      s.once('close', () => this.#detached.delete(s));
    }
  }

  async listen(port: number, host: string): Promise<number> {
    await new Promise<void>((resolve, reject) => {
      this.#server.once('error', reject);
      this.#server.listen(port, host, () => {
        this.#server.removeListener('error', reject);
        resolve();
      });
    });
    const every = Math.max(50, Math.min(250, Math.floor(this.headersTimeoutMs / 4)));
    this.#sweep = setInterval(() => this.#expire(), every);
    this.#sweep.unref();
    const addr = this.#server.address();
    return typeof addr === 'object' && addr ? addr.port : port;
  }

  #expire(): void {
    const now = performance.now();
    for (const c of this.#conns) if (c.deadline !== 0 && c.deadline <= now) c.expire();
  }

  /** Stops accepting; idle connections end now, busy ones after their answer; after `graceMs` everything is cut. */
  async close(graceMs: number): Promise<void> {
    const closed = new Promise<void>((resolve) => this.#server.close(() => resolve()));
    for (const c of this.#conns) c.shutdown();
    const timer = setTimeout(() => {
      for (const c of this.#conns) c.socket.destroy();
      for (const s of this.#detached) s.destroy();
    }, graceMs);
    await closed;
    clearTimeout(timer);
    clearInterval(this.#sweep);
    for (const s of this.#detached) s.destroy();
  }
}
