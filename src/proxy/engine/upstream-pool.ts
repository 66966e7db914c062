// Keep-alive pool of raw sockets to one upstream address: bounded, guarded against control planes, idle ones closed.
import { connect, type Socket } from 'node:net';
import type { ControlPlaneGuard } from '../control-plane.ts';

/** The code of the error a guarded connection fails with when its peer is a control plane. */
export const CONTROL_PLANE_CODE = 'TANDEM_ERR_CONTROL_PLANE';
export const CONNECT_TIMEOUT_CODE = 'TANDEM_CONNECT_TIMEOUT';
export const POOL_CLOSED_CODE = 'TANDEM_POOL_CLOSED';

/** What is using a connection right now (one exchange at a time). */
export interface ConnUser {
  onData(chunk: Buffer): void;
  onClose(): void;
  onDrain(): void;
}

export interface UpstreamPoolOptions {
  host: string;
  port: number;
  /** Open connections at most (in use + idle + connecting). */
  max: number;
  connectTimeoutMs: number;
  /** An idle connection is closed after this: below node:http's 5 s keep-alive, so the upstream rarely closes one under us. */
  idleMs: number;
  guard?: ControlPlaneGuard | undefined;
}

export class UpstreamConn {
  readonly socket: Socket;
  readonly pool: UpstreamPool;
  user: ConnUser | undefined;
  /** Served a request already: a close before any answer may be the upstream's keep-alive timeout racing us. */
  reused = false;
  idleSince = 0;
  closed = false;

  constructor(socket: Socket, pool: UpstreamPool) {
    this.socket = socket;
    this.pool = pool;
    socket.on('data', (chunk: Buffer) => {
      if (this.user) this.user.onData(chunk);
      else socket.destroy(); // bytes nobody asked for: the connection's framing is lost
    });
    socket.on('drain', () => this.user?.onDrain());
    socket.on('error', () => socket.destroy());
    socket.on('close', () => {
      this.closed = true;
      const u = this.user;
      this.user = undefined;
      pool.gone(this);
      u?.onClose();
    });
  }
}

interface Waiter {
  resolve: (c: UpstreamConn) => void;
  reject: (e: Error) => void;
  timer: NodeJS.Timeout;
}

export class UpstreamPool {
  readonly o: UpstreamPoolOptions;
  #idle: UpstreamConn[] = [];
  /** Open or opening connections. */
  #count = 0;
  #waiters: Waiter[] = [];
  #closing = false;
  #onEmpty: (() => void) | undefined;

  constructor(o: UpstreamPoolOptions) {
    this.o = o;
  }

  get open(): number {
    return this.#count;
  }

  get busy(): number {
    return this.#count - this.#idle.length;
  }

  /** An idle connection now, or undefined (the fast path: no promise). */
  take(): UpstreamConn | undefined {
    const c = this.#idle.pop();
    if (c) c.reused = true;
    return c;
  }

  /** A connection: idle, new, or the next one released (waiting at most `waitMs`). */
  acquire(waitMs: number): Promise<UpstreamConn> {
    if (this.#closing) return Promise.reject(codeError(POOL_CLOSED_CODE, 'the instance left'));
    const c = this.take();
    if (c) return Promise.resolve(c);
    if (this.#count < this.o.max) return this.#connect();
    return new Promise((resolve, reject) => {
      const w: Waiter = {
        resolve,
        reject,
        timer: setTimeout(() => {
          this.#waiters.splice(this.#waiters.indexOf(w), 1);
          reject(codeError(CONNECT_TIMEOUT_CODE, `all ${this.o.max} connections to the instance stayed busy for ${waitMs} ms`));
        }, waitMs),
      };
      this.#waiters.push(w);
    });
  }

  /** A new connection outside the keep-alive set (an upgrade): counted until it closes. */
  dedicated(): Promise<UpstreamConn> {
    return this.#connect();
  }

  /** The exchange on `c` is over: kept for the next request when `reusable`, else closed. */
  release(c: UpstreamConn, reusable: boolean): void {
    c.user = undefined;
    if (!reusable || c.closed || this.#closing) {
      c.socket.destroy();
      return;
    }
    const w = this.#waiters.shift();
    if (w) {
      clearTimeout(w.timer);
      c.reused = true;
      w.resolve(c);
      return;
    }
    c.idleSince = performance.now();
    this.#idle.push(c);
  }

  /** Called by a connection when its socket closed. */
  gone(c: UpstreamConn): void {
    const i = this.#idle.indexOf(c);
    if (i !== -1) this.#idle.splice(i, 1);
    this.#lost();
  }

  /** One connection fewer: a waiter gets a new one. */
  #lost(): void {
    this.#count--;
    const w = this.#waiters.shift();
    if (w) {
      clearTimeout(w.timer);
      this.#connect().then(w.resolve, w.reject);
    }
    if (this.#count === 0) this.#onEmpty?.();
  }

  /** Closes connections idle for longer than idleMs. */
  sweep(now: number): void {
    for (const c of this.#idle) if (now - c.idleSince > this.o.idleMs) c.socket.destroy();
  }

  /** Takes no new requests; resolves when the connections in use have finished (idle ones close now). */
  drain(): Promise<void> {
    this.#closing = true;
    for (const w of this.#waiters.splice(0)) {
      clearTimeout(w.timer);
      w.reject(codeError(POOL_CLOSED_CODE, 'the instance left'));
    }
    for (const c of [...this.#idle]) c.socket.destroy();
    if (this.#count === 0) return Promise.resolve();
    return new Promise((resolve) => (this.#onEmpty = resolve));
  }

  /** Cuts every connection now. */
  destroy(): Promise<void> {
    const done = this.drain();
    for (const s of this.#sockets) s.destroy();
    return done;
  }

  #sockets = new Set<Socket>();

  #connect(): Promise<UpstreamConn> {
    this.#count++;
    return new Promise((resolve, reject) => {
      const socket = connect({ host: this.o.host, port: this.o.port, noDelay: true });
      this.#sockets.add(socket);
      let settled = false;
      const fail = (e: Error) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        socket.destroy();
        reject(e);
      };
      const timer = setTimeout(() => fail(codeError(CONNECT_TIMEOUT_CODE, `no connection within ${this.o.connectTimeoutMs} ms`)), this.o.connectTimeoutMs);
      socket.once('error', (err) => fail(err));
      socket.once('close', () => {
        this.#sockets.delete(socket);
        if (!settled) {
          fail(codeError('ECONNRESET', 'closed while connecting'));
        }
        if (!conn) this.#lost();
      });
      let conn: UpstreamConn | undefined;
      socket.once('connect', () => {
        if (settled) return;
        clearTimeout(timer);
        // The connected peer is the last word: whatever name or address led here, a control plane is cut before a byte is sent.
        if (this.o.guard?.refusesPeer(socket.remoteAddress, socket.remotePort)) {
          fail(codeError(CONTROL_PLANE_CODE, 'the instance is a control plane: not proxied to'));
          return;
        }
        if (this.#closing) {
          fail(codeError(POOL_CLOSED_CODE, 'the instance left'));
          return;
        }
        settled = true;
        conn = new UpstreamConn(socket, this);
        resolve(conn);
      });
    });
  }
}

export function codeError(code: string, message: string): Error & { code: string } {
  return Object.assign(new Error(message), { code });
}
