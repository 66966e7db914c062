// One request on a client connection: its head, its body as it arrives, and the one answer written back for it.
import type { Framing, RequestHead } from '../http1/head-types.ts';
import type { ClientConnection } from './client-connection.ts';
import { writeHeadAndBody } from './write-head.ts';

/** Where the body's bytes go once someone reads it (an upstream connection, or a buffer). */
export interface BodySink {
  /** Raw body bytes as they came (chunked framing included); false asks to pause the client. */
  data(chunk: Buffer): boolean;
  end(): void;
  /** The client cut its upload or its framing was bad: the request cannot be completed. */
  fail(reason: string): void;
}

export type BodyProblem = 'framing' | 'trailers' | 'aborted';

/** Body bytes held before anyone reads the body; beyond this the client is paused (readBody resumes it). */
const EARLY_BYTES = 65_536;

/** Reused: most answers have no `connection` line to add. */
const CRLF = '\r\n';

export class ClientRequest {
  readonly conn: ClientConnection;
  readonly head: RequestHead;
  readonly method: string;
  readonly url: string;
  readonly remoteAddress: string | undefined;
  /** The status of the answer (0 until one is written). */
  statusCode = 0;
  /** The answer's head is written: an error can only cut the connection now. */
  headersSent = false;
  /** The answer is complete (or the connection is gone). */
  finished = false;
  /** The client left before the answer was complete. */
  gone = false;
  /** The body arrived whole (or there is none). */
  bodyComplete = false;
  bodyProblem: BodyProblem | undefined;
  bodyReason = '';
  #sink: BodySink | undefined;
  /** Body bytes that came before anyone read the body. */
  #early: Buffer[] | undefined;
  #keepAlive = false;
  #closeFraming = false;
  #onGone: (() => void) | undefined;
  #onDrain: (() => void) | undefined;
  #continued = false;
  #earlyBytes = 0;

  constructor(conn: ClientConnection, head: RequestHead) {
    this.conn = conn;
    this.head = head;
    this.method = head.method;
    this.url = head.target;
    this.remoteAddress = conn.socket.remoteAddress;
  }

  /** The first value of a header field (names are lower case). */
  header(name: string): string | undefined {
    const h = this.head.headers;
    for (let i = 0; i < h.length; i += 2) if (h[i] === name) return h[i + 1];
    return undefined;
  }

  // ---- the body, as the connection delivers it

  bodyData(chunk: Buffer): void {
    if (this.#sink) {
      if (!this.#sink.data(chunk)) this.conn.socket.pause();
      return;
    }
    // Nobody reads the body yet (the handler is still routing or queued): hold a little, then stop reading.
    (this.#early ??= []).push(chunk);
    this.#earlyBytes += chunk.length;
    if (this.#earlyBytes > EARLY_BYTES) this.conn.socket.pause();
  }

  bodyEnd(): void {
    this.bodyComplete = true;
    this.#sink?.end();
  }

  bodyFailed(problem: BodyProblem, reason: string): void {
    this.bodyProblem = problem;
    this.bodyReason = reason;
    this.#sink?.fail(reason);
  }

  /** Sends the body's bytes to `sink` from now on (those that came already first); a 100 Continue if the client waits for one. */
  readBody(sink: BodySink): void {
    this.#sink = sink;
    if (this.head.expectContinue && !this.#continued) {
      this.#continued = true;
      this.conn.socket.write('HTTP/1.1 100 Continue\r\n\r\n');
    }
    const early = this.#early;
    this.#early = undefined;
    this.#earlyBytes = 0;
    let paused = false;
    if (early) for (const c of early) if (!sink.data(c)) paused = true;
    if (paused) this.conn.socket.pause();
    else if (!this.bodyComplete) this.resumeBody();
    if (this.bodyProblem !== undefined) sink.fail(this.bodyReason);
    else if (this.bodyComplete) sink.end();
  }

  /** The sink drained: let the client send more. */
  resumeBody(): void {
    if (!this.finished && this.conn.socket.isPaused()) this.conn.socket.resume();
  }

  // ---- the answer

  /**
   * Writes the answer's head. `lines` are header lines, each ending in CRLF (framing fields included as
   * the body needs them: `content-length`, or `transfer-encoding: chunked` when `framing` is chunked).
   */
  writeHead(status: number, reason: string, lines: string, framing: Framing, body?: Buffer): boolean {
    const conn = this.conn;
    // Keep-alive needs a delimited body; HTTP/1.0 clients never get chunked (the upstream was asked in 1.0).
    this.#closeFraming = framing === 'close';
    this.#keepAlive = !conn.closing && !this.#closeFraming;
    if (!this.#keepAlive) conn.closing = true;
    const connection = this.#keepAlive ? (this.head.versionMinor === 0 ? 'connection: keep-alive\r\n' : '') : 'connection: close\r\n';
    this.statusCode = status;
    this.headersSent = true;
    const head = `HTTP/1.1 ${status} ${reason}${CRLF}${lines}${connection}${CRLF}`;
    if (conn.socket.destroyed) return false;
    if (body === undefined) return conn.socket.write(head, 'latin1');
    return writeHeadAndBody(conn.socket, head, body);
  }

  /** Body bytes of the answer (already framed as announced); false: wait for `onDrain`. */
  write(chunk: Buffer): boolean {
    return this.conn.socket.write(chunk);
  }

  onDrain(cb: () => void): void {
    this.#onDrain = cb;
    this.conn.socket.once('drain', () => {
      const f = this.#onDrain;
      this.#onDrain = undefined;
      f?.();
    });
  }

  /** A whole answer in one write (a string body is UTF-8: error messages may echo what the client sent). */
  respond(status: number, reason: string, lines: string, body: Buffer | string = ''): void {
    const bytes = typeof body === 'string' ? Buffer.from(body, 'utf8') : body;
    this.writeHead(status, reason, `${lines}content-length: ${bytes.length}${CRLF}`, 'length', this.method === 'HEAD' ? undefined : bytes);
    this.end();
  }

  /** The answer is complete. */
  end(): void {
    if (this.finished) return;
    this.finished = true;
    this.#onGone = undefined;
    this.conn.finished(this, this.#keepAlive && !this.#closeFraming && this.bodyProblem === undefined);
  }

  /** Cuts the client connection (a response that broke after it began). */
  destroy(): void {
    this.finished = true;
    this.conn.socket.destroy();
  }

  /** Called once if the client leaves before the answer is complete. */
  onGone(cb: () => void): void {
    this.#onGone = cb;
  }

  clientGone(): void {
    if (this.finished) return;
    this.gone = true;
    this.finished = true;
    if (!this.bodyComplete && this.bodyProblem === undefined) this.bodyFailed('aborted', 'the client went away');
    const f = this.#onGone;
    this.#onGone = undefined;
    f?.();
  }

  /** A CONNECT to a service (or to this proxy) is accepted: the connection carries that service's requests from now on. */
  openTunnel(service: string | undefined): void {
    this.statusCode = 200;
    this.headersSent = true;
    this.finished = true;
    this.conn.socket.write('HTTP/1.1 200 Connection Established\r\n\r\n');
    this.conn.enterTunnel(service);
    this.conn.finished(this, true);
  }
}
