// One client connection of the proxy on node:net: request heads parsed, bodies framed, one request at a time, answers in order.
import type { Socket } from 'node:net';
import { createBodyScanner, type BodyScanner } from '../http1/body-scanner.ts';
import type { Framing, HeadError, HeadLimits, RequestHead } from '../http1/head-types.ts';
import { parseRequestHead } from '../http1/request-head.ts';
import { ClientRequest } from './client-request.ts';

/** What a connection needs from the server that accepted it. */
export interface ConnectionHost {
  readonly limits: HeadLimits;
  /** The whole request head must arrive within this (slowloris); a new connection gets it from its first moment. */
  readonly headersTimeoutMs: number;
  /** An idle keep-alive connection (no bytes of a next request) is closed after this. */
  readonly keepAliveMs: number;
  /** Every request; the handler answers it through `req` (or takes the socket over). */
  handle(req: ClientRequest): void;
  /** A request the parser refused, a framing error, or a head that did not arrive in time: answered and closed. */
  refuse(conn: ClientConnection, error: HeadError | 'timeout' | 'tls'): void;
  /** The connection is gone (closed, or taken over by a tunnel or an upgrade). */
  released(conn: ClientConnection): void;
}

/** Unparsed bytes held while a request is answered; beyond this the socket is paused (pipelining, or a hostile peer). */
const HOLD_BYTES = 65_536;

/**
 * Why one request at a time: answers must go out in order, and a request that is not yet handled costs
 * nothing (no upstream sees a pipelined request whose answer nobody would get if an earlier one closes).
 */
export class ClientConnection {
  readonly socket: Socket;
  readonly host: ConnectionHost;
  /** Inside a CONNECT tunnel to this service (terminated here): every request goes to it. */
  tunnel: string | undefined;
  /** Bytes after the current request, not parsed yet. */
  #buf: Buffer | undefined;
  /** The request being answered (its body may still be arriving). */
  current: ClientRequest | undefined;
  /** The current request's body, as it arrives. */
  #scanner: BodyScanner | undefined;
  /** No request after the current one (an answer said `connection: close`, or the server is closing). */
  closing = false;
  /** When the sweep cuts this connection (ms, performance.now()); 0 = never. */
  deadline: number;
  /** What the deadline is for: the head of a request, or idling between requests. */
  #waiting: 'head' | 'idle' | 'none' = 'head';
  #detached = false;
  /** A tunnel was just opened: its first bytes tell whether the client speaks TLS. */
  #tunnelFresh = false;
  #shuttingDown = false;

  constructor(socket: Socket, host: ConnectionHost) {
    this.socket = socket;
    this.host = host;
    this.deadline = performance.now() + host.headersTimeoutMs;
    socket.setNoDelay(true);
    socket.on('data', (chunk: Buffer) => this.#data(chunk));
    // A client's FIN ends the connection and whatever it asked (as node:http does without allowHalfOpen).
    socket.on('end', () => this.#gone());
    socket.on('error', () => socket.destroy());
    socket.on('close', () => this.#gone());
  }

  /** The sweep found the deadline passed. */
  expire(): void {
    if (this.#detached) return;
    if (this.#waiting === 'head' && this.current === undefined && !this.closing) this.host.refuse(this, 'timeout');
    else this.socket.destroy();
  }

  #data(chunk: Buffer): void {
    if (this.#detached) return;
    const req = this.current;
    if (req !== undefined && this.#scanner !== undefined) {
      const n = this.#scanner.feed(chunk);
      const scanner = this.#scanner;
      if (scanner.error) {
        this.#scanner = undefined;
        req.bodyFailed(scanner.error.code === 'trailers' ? 'trailers' : 'framing', scanner.error.reason);
        return;
      }
      if (n > 0) req.bodyData(n === chunk.length ? chunk : chunk.subarray(0, n));
      if (scanner.done) {
        this.#scanner = undefined;
        req.bodyEnd();
      }
      if (n < chunk.length) this.#hold(chunk.subarray(n));
      return;
    }
    // Ending (an answer said `connection: close`, or the server is closing): what the client sends now is not read.
    if (req === undefined && this.closing) return;
    this.#hold(chunk);
    if (req === undefined) this.#next();
  }

  #hold(chunk: Buffer): void {
    this.#buf = this.#buf === undefined ? chunk : Buffer.concat([this.#buf, chunk]);
    if (this.current !== undefined && this.#buf.length > HOLD_BYTES) this.socket.pause();
  }

  /** Parses the next request from what has arrived (if any), and hands it to the host. */
  #next(): void {
    if (this.#detached || this.closing || this.socket.destroyed) return;
    const buf = this.#buf;
    if (buf === undefined) {
      this.#wait('idle', this.host.keepAliveMs);
      return;
    }
    if (this.#tunnelFresh) {
      this.#tunnelFresh = false;
      // A TLS ClientHello inside a tunnel to a service: no HTTP answer can reach a TLS client.
      if (buf[0] === 0x16 && this.tunnel !== undefined) {
        this.host.refuse(this, 'tls');
        return;
      }
    }
    const r = parseRequestHead(buf, 0, this.host.limits);
    if (r.kind === 'incomplete') {
      this.#wait('head', this.host.headersTimeoutMs);
      return;
    }
    if (r.kind === 'error') {
      this.#buf = undefined;
      this.host.refuse(this, r);
      return;
    }
    this.#buf = r.length === buf.length ? undefined : buf.subarray(r.length);
    this.#start(r);
  }

  #wait(what: 'head' | 'idle', ms: number): void {
    // The head deadline runs from the first byte of a request (one byte at a time does not extend it).
    if (what === this.#waiting && this.deadline !== 0) return;
    this.#waiting = what;
    this.deadline = performance.now() + ms;
  }

  #start(head: RequestHead): void {
    this.#waiting = 'none';
    this.deadline = 0;
    if (!head.keepAlive) this.closing = true;
    const req = new ClientRequest(this, head);
    this.current = req;
    const framing: Framing = takesOver(head) ? 'none' : head.framing;
    if (framing !== 'none') {
      this.#scanner = createBodyScanner(head);
      const rest = this.#buf;
      if (rest !== undefined) {
        this.#buf = undefined;
        this.#data(rest);
      }
    } else req.bodyEnd();
    if (this.#detached || this.current !== req) return;
    this.host.handle(req);
  }

  /** The current request's answer is complete: the next request, or the end of the connection. */
  finished(req: ClientRequest, reusable: boolean): void {
    if (this.current !== req) return;
    this.current = undefined;
    // A body the handler did not read (an early answer) is still on the wire: this connection cannot go on.
    if (this.#scanner !== undefined || !reusable) this.closing = true;
    this.#scanner = undefined;
    if (this.closing) {
      this.#buf = undefined;
      this.#endSoon();
      return;
    }
    if (this.socket.isPaused()) this.socket.resume();
    this.#waiting = 'none';
    this.deadline = 0;
    this.#next();
  }

  /** Ends the connection once what was written is out; cut if the peer does not read it within a while. */
  #endSoon(): void {
    this.socket.end();
    this.#wait('idle', 5000);
  }

  /** Stops answering new requests: an idle connection ends now, a busy one after its answer. */
  shutdown(): void {
    this.#shuttingDown = true;
    this.closing = true;
    if (this.current === undefined && !this.#detached) this.#endSoon();
  }

  /** After `200 Connection Established`: the connection goes on carrying requests for `service` (undefined: for this proxy). */
  enterTunnel(service: string | undefined): void {
    this.tunnel = service;
    this.#tunnelFresh = service !== undefined;
    // A CONNECT's own `close` does not end the tunnel; a shutdown in progress does.
    this.closing = this.#shuttingDown;
  }

  /**
   * The socket leaves HTTP (an upgrade spliced to an upstream, a CONNECT passthrough): returns the bytes
   * that arrived after the head. The connection no longer reads or times it out.
   */
  detach(): Buffer {
    this.#detached = true;
    this.deadline = 0;
    this.current = undefined;
    this.#scanner = undefined;
    const rest = this.#buf ?? Buffer.alloc(0);
    this.#buf = undefined;
    this.socket.removeAllListeners('data');
    this.socket.removeAllListeners('end');
    // Paused until the new owner pipes it: bytes arriving meanwhile must wait, not fall on the floor.
    this.socket.pause();
    this.host.released(this);
    return rest;
  }

  #gone(): void {
    if (this.#detached) return;
    this.#detached = true;
    this.deadline = 0;
    const req = this.current;
    this.current = undefined;
    req?.clientGone();
    this.socket.destroy();
    this.host.released(this);
  }
}

/**
 * The socket leaves HTTP after this request: CONNECT, or a WebSocket upgrade. Other upgrades (h2c, say) are
 * plain requests to us: the instance may ignore them, and their Upgrade fields are hop-by-hop.
 */
export function takesOver(head: RequestHead): boolean {
  return head.isUpgrade && (head.method === 'CONNECT' || head.upgrade?.toLowerCase() === 'websocket');
}
