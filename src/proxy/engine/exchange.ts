// One request/answer with one upstream over a pooled raw socket: the head written, bodies passed through as framed, failures classified.
import { createBodyScanner, type BodyScanner } from '../http1/body-scanner.ts';
import type { Framing, HeadLimits, ResponseHead } from '../http1/head-types.ts';
import { parseResponseHead } from '../http1/response-head.ts';
import type { BodySink, ClientRequest } from './client-request.ts';
import { responseLines } from '../headers.ts';
import { writeHeadAndBody } from './write-head.ts';
import { CONNECT_TIMEOUT_CODE, CONTROL_PLANE_CODE, type ConnUser, type UpstreamConn, type UpstreamPool } from './upstream-pool.ts';

export type RequestBody = { kind: 'none' } | { kind: 'buffer'; data: Buffer } | { kind: 'stream'; from: ClientRequest };

/** Where an answer goes: the client's connection, or a buffer (broadcast). */
export interface ResponseTarget {
  readonly gone: boolean;
  writeHead(status: number, reason: string, lines: string, framing: Framing, body?: Buffer): boolean;
  write(chunk: Buffer): boolean;
  onDrain(cb: () => void): void;
  end(): void;
  destroy(): void;
  onGone(cb: () => void): void;
}

/** A whole answer with a retryable status, kept while another instance is tried; passed on as is when none can be. */
export interface HeldResponse {
  status: number;
  reason: string;
  /** Header lines as they go to the client (hop-by-hop and Tandem's own dropped). */
  lines: string;
  framing: Framing;
  /** The body's bytes as framed (chunked stays chunked). */
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
      held?: HeldResponse;
    };

export interface ExchangeOptions {
  method: string;
  /** The request head as it goes upstream, framing fields and the blank line included (latin1). */
  head: string;
  body: RequestBody;
  /** Wait for the response head at most this long (connecting included). */
  headersTimeoutMs: number;
  /** Longest pause between two body chunks of the answer; 0 = none. */
  bodyTimeoutMs: number;
  /** Answers with these statuses are read whole and returned as a failure (the caller may retry). */
  retryStatuses: ReadonlySet<number> | undefined;
  /** Added to the answer's head (x-tandem-instance...), each ending in CRLF. */
  extraLines: string;
  /** A close before any answer on a reused connection may be retried once on a new one (idempotent, replayable). */
  replaySafe: boolean;
  limits: HeadLimits;
  /** The request asked the upstream to close (HTTP/1.0): its connection is not kept, whatever the answer says. */
  closeAfter?: boolean;
}

/** A retryable answer larger than this is passed on as it streams (and not retried): holding it would cost memory. */
const HOLD_BYTES = 65_536;
const UNSENT_CODES = new Set(['ECONNREFUSED', CONNECT_TIMEOUT_CODE, 'EHOSTUNREACH', 'ENETUNREACH', 'EADDRNOTAVAIL', 'ENOTFOUND', 'TANDEM_POOL_CLOSED']);

/** Timeouts of every exchange in flight, checked by one interval (a timer per request would cost more than its framing). */
const inFlight = new Set<Exchange>();
let ticker: NodeJS.Timeout | undefined;
function track(x: Exchange): void {
  inFlight.add(x);
  if (!ticker) {
    ticker = setInterval(() => {
      const now = performance.now();
      for (const e of inFlight) if (e.deadline <= now) e.expire();
    }, 50);
    ticker.unref();
  }
}

/** Sends one request to `pool`'s upstream and passes its answer to `target`. Never rejects. */
export function exchange(pool: UpstreamPool, target: ResponseTarget, o: ExchangeOptions): Promise<AttemptResult> {
  return new Promise((resolve) => new Exchange(pool, target, o, resolve).start());
}

class Exchange implements ConnUser, BodySink {
  deadline: number;
  #pool: UpstreamPool;
  #t: ResponseTarget;
  #o: ExchangeOptions;
  #resolve: (r: AttemptResult) => void;
  #conn: UpstreamConn | undefined;
  #buf: Buffer | undefined;
  #head: ResponseHead | undefined;
  #scanner: BodyScanner | undefined;
  /** The request went out whole (its body included). */
  #sent = false;
  #gotBytes = false;
  #started = false;
  #settled = false;
  #retriedStale = false;
  /** The connection had served a request before this one. */
  #reused = false;
  #hold: Buffer[] | undefined;
  #holdSize = 0;

  constructor(pool: UpstreamPool, target: ResponseTarget, o: ExchangeOptions, resolve: (r: AttemptResult) => void) {
    this.#pool = pool;
    this.#t = target;
    this.#o = o;
    this.#resolve = resolve;
    this.deadline = performance.now() + o.headersTimeoutMs;
  }

  start(): void {
    // The client left before this try began (while queued for a slot, say): nothing is sent anywhere.
    if (this.#t.gone) return this.#settle({ kind: 'aborted' });
    track(this);
    this.#t.onGone(() => this.#abort());
    const conn = this.#pool.take();
    if (conn) this.#send(conn);
    else this.#pool.acquire(this.#o.headersTimeoutMs).then((c) => this.#send(c), (err: Error & { code?: string }) => this.#connectFailed(err));
  }

  #connectFailed(err: Error & { code?: string }): void {
    const code = err.code ?? '';
    if (code === CONTROL_PLANE_CODE) return this.#fail({ kind: 'failed', reason: 'the instance is a control plane', timeout: false, unsent: true, controlPlane: true });
    this.#fail({ kind: 'failed', reason: code || err.message, timeout: code === CONNECT_TIMEOUT_CODE, unsent: UNSENT_CODES.has(code) });
  }

  #send(conn: UpstreamConn): void {
    if (this.#settled) {
      this.#pool.release(conn, true);
      return;
    }
    this.#conn = conn;
    this.#reused = conn.reused;
    conn.user = this;
    const s = conn.socket;
    const body = this.#o.body;
    if (body.kind === 'buffer') {
      writeHeadAndBody(s, this.#o.head, body.data);
      this.#sent = true;
    } else {
      s.write(this.#o.head, 'latin1');
      if (body.kind === 'none') this.#sent = true;
      else body.from.readBody(this);
    }
  }

  // ---- BodySink: the client's body streamed upstream

  data(chunk: Buffer): boolean {
    const c = this.#conn;
    if (!c || this.#settled) return true;
    return c.socket.write(chunk);
  }

  end(): void {
    this.#sent = true;
  }

  fail(): void {
    // The client cut its upload (or its framing was bad): nothing can complete this request.
    this.#abort();
  }

  onDrain(): void {
    const b = this.#o.body;
    if (b.kind === 'stream') b.from.resumeBody();
  }

  // ---- ConnUser: the upstream's bytes

  onData(chunk: Buffer): void {
    this.#gotBytes = true;
    if (this.#scanner) {
      this.#body(chunk);
      return;
    }
    let buf = this.#buf === undefined ? chunk : Buffer.concat([this.#buf, chunk]);
    for (;;) {
      const r = parseResponseHead(buf, 0, this.#o.limits, this.#o.method);
      if (r.kind === 'incomplete') {
        this.#buf = buf;
        return;
      }
      if (r.kind === 'error') return this.#fail({ kind: 'failed', reason: `invalid response (${r.code})`, timeout: false, unsent: false });
      // 1xx but 101: informational, the final answer follows.
      if (r.status < 200 && r.status !== 101) {
        if (r.length === buf.length) {
          this.#buf = undefined;
          return;
        }
        buf = buf.subarray(r.length);
        continue;
      }
      this.#buf = undefined;
      this.#head = r;
      this.#scanner = createBodyScanner(r);
      this.deadline = this.#o.bodyTimeoutMs > 0 ? performance.now() + this.#o.bodyTimeoutMs : Infinity;
      if (this.#o.retryStatuses?.has(r.status)) {
        // Read whole (it is small, or passed on after all): if no other instance can be tried, the client
        // gets this answer as the upstream gave it, not a proxy error.
        this.#hold = [];
        this.deadline = performance.now() + this.#o.headersTimeoutMs;
      }
      this.#body(r.length === buf.length ? undefined : buf.subarray(r.length));
      return;
    }
  }

  /** Body bytes of the answer (undefined: none came with the head). */
  #body(chunk: Buffer | undefined): void {
    const scanner = this.#scanner as BodyScanner;
    const head = this.#head as ResponseHead;
    let part: Buffer | undefined;
    let extra = false;
    if (chunk !== undefined) {
      const n = scanner.feed(chunk);
      if (scanner.error) return this.#broken(`invalid response body (${scanner.error.code})`);
      part = n === 0 ? undefined : n === chunk.length ? chunk : chunk.subarray(0, n);
      extra = n < chunk.length;
    }
    if (this.#o.bodyTimeoutMs > 0 && !this.#hold) this.deadline = performance.now() + this.#o.bodyTimeoutMs;
    if (this.#hold) {
      if (part) {
        this.#hold.push(part);
        this.#holdSize += part.length;
      }
      if (this.#holdSize > HOLD_BYTES) {
        // Too large to hold: passed on as it comes, and not retried.
        const held = Buffer.concat(this.#hold);
        this.#hold = undefined;
        this.deadline = this.#o.bodyTimeoutMs > 0 ? performance.now() + this.#o.bodyTimeoutMs : Infinity;
        this.#startResponse(head, held);
      } else if (scanner.done || head.framing === 'none') {
        const body = Buffer.concat(this.#hold);
        this.#hold = undefined;
        this.#release(head.keepAlive && !extra);
        const held: HeldResponse = { status: head.status, reason: head.reason, lines: framedLines(head), framing: head.framing, body };
        return this.#fail({ kind: 'failed', reason: `answered ${head.status}`, timeout: false, unsent: false, status: head.status, held });
      }
      return;
    }
    if (!this.#started) this.#startResponse(head, part);
    else if (part && !this.#t.write(part)) this.#pause();
    if (scanner.done || head.framing === 'none') this.#complete(head.keepAlive && !extra && this.#sent && head.status !== 101);
  }

  #startResponse(head: ResponseHead, first: Buffer | undefined): void {
    this.#started = true;
    const ok = this.#t.writeHead(head.status, head.reason, framedLines(head) + this.#o.extraLines, head.framing, first);
    if (!ok) this.#pause();
  }

  /** The client cannot take more now: stop reading the upstream until it can. */
  #pause(): void {
    const c = this.#conn;
    if (!c) return;
    c.socket.pause();
    // Only while this exchange still owns the connection: once pooled, another exchange decides.
    this.#t.onDrain(() => {
      if (this.#conn === c) c.socket.resume();
    });
  }

  onClose(): void {
    this.#conn = undefined;
    if (this.#settled) return;
    const head = this.#head;
    if (head && this.#started) {
      // A close-delimited body ends here; any other framing was cut short.
      if (head.framing === 'close') this.#complete(false);
      else this.#broken('the upstream closed the connection mid-answer');
      return;
    }
    if (head && this.#hold && head.framing === 'close') {
      const held: HeldResponse = { status: head.status, reason: head.reason, lines: framedLines(head), framing: 'close', body: Buffer.concat(this.#hold) };
      return this.#fail({ kind: 'failed', reason: `answered ${head.status}`, timeout: false, unsent: false, status: head.status, held });
    }
    if (this.#reused && !this.#gotBytes && !this.#retriedStale && this.#o.replaySafe && this.#o.body.kind !== 'stream') {
      // A reused connection the upstream closed as we wrote to it (its keep-alive timeout): once more on a new one.
      this.#retriedStale = true;
      // On a new connection: the other idle ones may be just as stale (the upstream restarted).
      this.#pool.dedicated().then((c) => this.#send(c), (err: Error & { code?: string }) => this.#connectFailed(err));
      return;
    }
    this.#fail({ kind: 'failed', reason: 'ECONNRESET (closed before an answer)', timeout: false, unsent: false });
  }

  expire(): void {
    if (this.#settled) return;
    if (this.#started) return this.#broken('the answer paused longer than proxy.bodyTimeoutMs');
    if (this.#hold) return this.#fail({ kind: 'failed', reason: `answered ${this.#head?.status ?? 0} and did not finish its body`, timeout: false, unsent: false });
    this.#fail({ kind: 'failed', reason: `no response within ${this.#o.headersTimeoutMs} ms`, timeout: true, unsent: false });
  }

  #complete(reusable: boolean): void {
    this.#release(reusable && this.#o.closeAfter !== true);
    this.#settle({ kind: 'done', status: (this.#head as ResponseHead).status });
    this.#t.end();
  }

  /** An answer that began and then broke: the client is cut so it sees a broken response. */
  #broken(_why: string): void {
    this.#release(false);
    if (this.#started) {
      this.#t.destroy();
      this.#settle({ kind: 'done', status: (this.#head as ResponseHead).status });
    } else this.#fail({ kind: 'failed', reason: _why, timeout: false, unsent: false });
  }

  #abort(): void {
    if (this.#settled) return;
    this.#release(false);
    if (this.#started) this.#t.destroy();
    this.#settle({ kind: 'aborted' });
  }

  #fail(r: AttemptResult): void {
    if (this.#settled) return;
    this.#release(false);
    this.#settle(this.#t.gone ? { kind: 'aborted' } : r);
  }

  #release(reusable: boolean): void {
    const c = this.#conn;
    if (!c) return;
    this.#conn = undefined;
    if (c.socket.isPaused()) c.socket.resume();
    this.#pool.release(c, reusable);
  }

  #settle(r: AttemptResult): void {
    if (this.#settled) return;
    this.#settled = true;
    inFlight.delete(this);
    this.#resolve(r);
  }
}

/** The answer's header lines for the client, with the framing field the body needs. */
function framedLines(head: ResponseHead): string {
  const lines = responseLines(head.headers, head.connection);
  return head.framing === 'chunked' ? `${lines}transfer-encoding: chunked\r\n` : lines;
}
