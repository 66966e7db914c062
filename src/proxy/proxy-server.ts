// The proxy listener (plain node:http): addressing, picking, failover, and the one place errors become responses.
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { Duplex } from 'node:stream';
import type { Logger } from 'pino';
import type { Balancer, Picked } from './balancing/balancer.ts';
import type { Endpoint } from './endpoint-source.ts';
import type { EndpointSet, Subset } from './endpoint-set.ts';
import {
  InstanceNotFoundError, NoHealthyInstanceError, TandemError,
  TrailerNotSupportedError, UnknownServiceError, StartingError, CatalogForbiddenError, ExpectationFailedError, UpstreamFailedError, UpstreamTimeoutError, UrlTooLongError, BadTargetError,
  ControlPlaneError, EgressFailedError, EgressRefusedError, EgressTimeoutError, ForeignHostError, HeadersTooLargeError, RequestTimeoutError, TlsToServiceError,
  OverloadedError,
} from './errors.ts';
import { CONTROL_PLANE_CODE, type AttemptResult, type Forwarder, type HeldResponse } from './forwarder.ts';
import { ControlPlaneGuard } from './control-plane.ts';
import type { EndpointSource, Subscription } from './endpoint-source.ts';
import { isLoopbackHost, type EgressPolicy } from './egress.ts';
import { egressRequestHeaders, header, parseTimeout, readBody, TANDEM_RESPONSE_HEADERS, upstreamRequestHeaders } from './headers.ts';
import type { OutlierDetector } from './balancing/outlier-detector.ts';
import type { RangeCache } from './balancing/range-cache.ts';
import type { RetryBudget } from './balancing/retry-budget.ts';
import type { RoutingTable } from './routing-table.ts';
import { foreignTarget, parseAuthority, parseTarget, parseTunnelTarget, serviceOfHost, type ForeignTarget, type Target } from './target.ts';
import { broadcast } from './broadcast.ts';
import { answerClientError, writeRawError } from './raw-errors.ts';
import { randomUUID } from 'node:crypto';
import { NO_OBSERVER, type EgressRecord, type ProxyObserver, type RequestOutcome } from './proxy-observer.ts';

export interface ProxyServerOptions {
  host: string;
  port: number;
  table: RoutingTable;
  balancer: Balancer;
  outliers: OutlierDetector;
  ranges: RangeCache;
  forwarder: Forwarder;
  logger: Logger;
  /** Extra tries on other instances after a failed one. */
  retries: number;
  /** Upstream statuses treated as a failed try (default 502, 503, 504). */
  retryStatuses: readonly number[];
  /** Request bodies up to this size are buffered so a retry can resend them; larger ones stream, unretried. */
  retryBufferBytes: number;
  maxUrlBytes: number;
  maxHeaderBytes: number;
  /** A client must send its whole request head within this (slow or stalled senders are cut with a 408). */
  headersTimeoutMs?: number;
  upstreamTimeoutMs: number;
  /** The whole request's budget (retries included) when the caller sends no X-Tandem-Timeout-Ms. */
  requestTimeoutMs: number;
  retryBudget: RetryBudget;
  /** Per-instance timeout of a broadcast when the caller sends no X-Tandem-Timeout-Ms. */
  broadcastTimeoutMs: number;
  broadcastMaxBodyBytes: number;
  observer?: ProxyObserver;
  /** What the proxy never reaches (sidecars, Consul agents); names only when not given. */
  guard?: ControlPlaneGuard;
  /** The catalog the guard learns every sidecar from (its `tandem` service), followed from open(). */
  sidecars?: EndpointSource;
  /** Which hosts that are not catalog services are reached (plain HTTP, CONNECT passthrough); none when not given. */
  egress?: EgressPolicy;
}

/** What is going on on one client connection (plain, or a CONNECT tunnel to a service that Tandem terminates). */
interface ConnState {
  /** Requests whose answer has not finished: a CONNECT or an upgrade waits for them before writing a byte. */
  pending: number;
  /** An answer on this connection said `connection: close`: nothing more is written on it. */
  closing: boolean;
  idle: (() => void)[];
  /** Inside a CONNECT tunnel to this service: every request goes to it. */
  tunnel?: string;
}

/** What one request did, filled in as it goes and handed to the observer at the end. */
interface Trace {
  service: string;
  tries: number;
  instance: string | undefined;
  outcome: RequestOutcome;
  requestId: string;
  /** Went to a host that is not a catalog service: recorded as egress, not as a request to a service. */
  egress: boolean;
}

/** More header fields than this (Node's own default cap) is answered 431: none is ever silently dropped. */
export const MAX_HEADERS = 2000;

const IDEMPOTENT = new Set(['GET', 'HEAD', 'OPTIONS', 'PUT', 'DELETE', 'TRACE']);
const NONE: ReadonlySet<string> = new Set();

export class ProxyServer {
  #o: ProxyServerOptions;
  #server: Server;
  #retryStatuses: ReadonlySet<number>;
  #observer: ProxyObserver;
  #guard: ControlPlaneGuard;
  #sidecars: Subscription | undefined;
  #conns = new WeakMap<Duplex, ConnState>();
  /** The port this proxy listens on (known after start). */
  #port = -1;
  #open = false;
  #markOpen!: () => void;
  #opened = new Promise<void>((resolve) => (this.#markOpen = resolve));

  constructor(opts: ProxyServerOptions) {
    this.#o = opts;
    this.#retryStatuses = new Set(opts.retryStatuses);
    this.#observer = opts.observer ?? NO_OBSERVER;
    this.#guard = opts.guard ?? new ControlPlaneGuard();
    // headersTimeout: the whole head must arrive within it (slowloris); requestTimeout bounds head and
    // body together (slow senders). Node checks both every connectionsCheckingInterval (default 30 s,
    // far too coarse for a 10 s head timeout).
    const headersTimeout = opts.headersTimeoutMs ?? 10_000;
    this.#server = createServer(
      {
        maxHeaderSize: opts.maxHeaderBytes,
        keepAliveTimeout: 5000,
        requestTimeout: Math.max(300_000, headersTimeout),
        headersTimeout,
        connectionsCheckingInterval: Math.max(100, Math.min(1000, Math.floor(headersTimeout / 4))),
      },
      (req, res) => this.#request(req, res),
    );
    // No cap on the count (Node's default 2000 drops the rest silently, Content-Length included): the
    // head's size is capped by maxHeaderSize, and more than MAX_HEADERS fields is answered 431.
    this.#server.maxHeadersCount = 0;
    this.#server.on('clientError', (err: NodeJS.ErrnoException, socket: Duplex) => this.#clientError(err, socket));
    this.#server.on('connect', (req: IncomingMessage, socket: Duplex, head: Buffer) => {
      this.#track(socket);
      void this.#afterPending(socket, () => this.#connect(req, socket, head));
    });
    this.#server.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) => {
      this.#track(socket);
      void this.#afterPending(socket, () => this.#upgrade(req, socket, head));
    });
    // Any Expect but 100-continue: answered in our error shape, not Node's bare 417.
    this.#server.on('checkExpectation', (_req: IncomingMessage, res: ServerResponse) => this.#sendError(res, new ExpectationFailedError()));
  }

  /** Sockets taken out of Node's HTTP handling (upgrades, CONNECT): closed by us on shutdown. */
  #detached = new Set<Duplex>();

  #track(socket: Duplex): void {
    this.#detached.add(socket);
    socket.once('close', () => this.#detached.delete(socket));
  }

  #conn(socket: Duplex): ConnState {
    let st = this.#conns.get(socket);
    if (!st) {
      st = { pending: 0, closing: false, idle: [] };
      this.#conns.set(socket, st);
    }
    return st;
  }

  /** Every request: counted on its connection until its answer is done, then handled. */
  #request(req: IncomingMessage, res: ServerResponse): void {
    const st = this.#conn(req.socket);
    // An earlier answer on this connection said `connection: close`: Node never sends this one's answer,
    // so it is not handled either (no upstream sees a request whose answer nobody gets).
    if (st.closing) return;
    st.pending++;
    if (!res.shouldKeepAlive) st.closing = true;
    // 'close' comes once per response: after 'finish' (all of it handed to the socket), or when cut.
    res.once('close', () => {
      st.pending--;
      if (st.pending === 0) for (const wake of st.idle.splice(0)) wake();
    });
    void this.#handle(req, res, st);
  }

  /**
   * A CONNECT or an upgrade takes the connection over: it waits until the answers to the requests
   * pipelined before it are written (their bytes come first), and writes nothing at all when one of
   * them said `connection: close`.
   */
  async #afterPending(socket: Duplex, then: () => Promise<void>): Promise<void> {
    socket.on('error', () => socket.destroy());
    const st = this.#conns.get(socket);
    if (st && st.pending > 0) await new Promise<void>((resolve) => st.idle.push(resolve));
    // node:http's own answer, written without a 'request' event (400 to an HTTP/1.1 request without
    // Host), says `connection: close` too: nothing may follow it either.
    const current = (socket as { _httpMessage?: (ServerResponse & { _last?: boolean }) | null })._httpMessage;
    if (st?.closing || current?._last === true || socket.writableEnded) {
      // Node ends the connection after that answer; make sure it does, then nothing more.
      socket.end();
      setTimeout(() => socket.destroy(), 5000).unref();
      return;
    }
    await then();
  }

  /** A request node:http could not take: answered in the error shape (never over an answer in progress). */
  #clientError(err: NodeJS.ErrnoException & { rawPacket?: Buffer }, socket: Duplex): void {
    const st = this.#conns.get(socket);
    // Bytes after a request that said `connection: close`: ignored, the answer in progress ends the connection.
    if (err.code === 'HPE_CLOSED_CONNECTION' && st && st.pending > 0) return;
    if (st?.tunnel !== undefined && st.pending === 0 && err.rawPacket?.[0] === 0x16) {
      // A TLS ClientHello inside a tunnel to a service: no HTTP answer can reach a TLS client.
      this.#o.logger.debug({ service: st.tunnel }, 'TLS inside a CONNECT tunnel to a service: closed (not supported)');
      socket.destroy();
      return;
    }
    if (err.code === 'ERR_HTTP_REQUEST_TIMEOUT' && !(socket as { _httpMessage?: unknown })._httpMessage) {
      writeRawError(socket, new RequestTimeoutError(`the request did not arrive in time (its head within proxy.headersTimeoutMs, ${this.#o.headersTimeoutMs ?? 10_000} ms)`));
      return;
    }
    answerClientError(err, socket, () => new BadTargetError('malformed HTTP request'));
  }

  async start(): Promise<{ host: string; port: number }> {
    await new Promise<void>((resolve, reject) => {
      this.#server.once('error', reject);
      this.#server.listen(this.#o.port, this.#o.host, () => {
        this.#server.removeListener('error', reject);
        resolve();
      });
    });
    const addr = this.#server.address();
    this.#port = typeof addr === 'object' && addr ? addr.port : this.#o.port;
    return { host: this.#o.host, port: this.#port };
  }

  /**
   * `host:port` is this proxy (an app with HTTP_PROXY set that calls the proxy's own path form sends
   * `GET http://127.0.0.1:7700/<service>/...`, or tunnels to it): handled here, never as egress.
   */
  #isSelf(host: string, port: number): boolean {
    if (port !== this.#port) return false;
    const h = host.replace(/^\[|\]$/g, '').toLowerCase();
    return isLoopbackHost(h) || h === this.#o.host.toLowerCase();
  }

  /**
   * Lets requests through. Until then (the sidecar is still restoring its registrations) they wait
   * instead of seeing an empty catalog.
   */
  open(): void {
    if (this.#o.sidecars && !this.#sidecars) this.#sidecars = this.#guard.follow(this.#o.sidecars);
    this.#open = true;
    this.#markOpen();
  }

  /** Waits (bounded) for open(): a sidecar that cannot finish starting answers 503 instead of hanging. */
  async #waitOpen(): Promise<void> {
    let timer: NodeJS.Timeout | undefined;
    try {
      await Promise.race([
        this.#opened,
        new Promise<never>((_, reject) => {
          timer = setTimeout(() => reject(new StartingError()), this.#o.requestTimeoutMs);
        }),
      ]);
    } finally {
      clearTimeout(timer);
    }
  }

  /** Stops accepting; lets in-flight requests finish for up to `graceMs`, then cuts the rest. */
  async close(graceMs = 5000): Promise<void> {
    this.#sidecars?.close();
    const closed = new Promise<void>((resolve) => this.#server.close(() => resolve()));
    this.#server.closeIdleConnections();
    // closeAllConnections() does not reach upgraded sockets: they are ours to destroy.
    const timer = setTimeout(() => {
      this.#server.closeAllConnections();
      for (const s of this.#detached) s.destroy();
    }, graceMs);
    await closed;
    clearTimeout(timer);
  }

  async #handle(req: IncomingMessage, res: ServerResponse, st: ConnState): Promise<void> {
    const started = performance.now();
    // A request id for logs and upstream (`x-request-id`), created when the caller sent none.
    const trace: Trace = { service: '', tries: 0, instance: undefined, outcome: 'success', requestId: header(req, 'x-request-id') ?? randomUUID(), egress: false };
    let release: (() => void) | undefined;
    try {
      if (req.rawHeaders.length > MAX_HEADERS * 2) {
        // The body is left unread: the connection closes after this answer.
        res.shouldKeepAlive = false;
        st.closing = true;
        throw new HeadersTooLargeError(`the request has more than ${MAX_HEADERS} header fields`);
      }
      if (!this.#open) await this.#waitOpen();
      const url = req.url ?? '/';
      if (url.length > this.#o.maxUrlBytes) throw new UrlTooLongError(this.#o.maxUrlBytes);
      if (req.headers.trailer !== undefined) throw new TrailerNotSupportedError();
      let target: Target;
      if (st.tunnel !== undefined) target = parseTunnelTarget(url, st.tunnel, header(req, 'x-tandem-version'));
      else {
        const foreign = foreignTarget(url);
        if (foreign && !this.#isSelf(foreign.host, foreign.port)) {
          trace.egress = true;
          await this.#egressHttp(req, res, foreign, started);
          return;
        }
        target = parseTarget(foreign ? foreign.path : url, header(req, 'x-tandem-version'));
      }
      // Before any catalog lookup: a control plane's name costs no watch.
      this.#guard.checkTarget(target.service, header(req, 'x-tandem-instance'));
      const range = target.range === '' ? null : this.#o.ranges.get(target.range);
      const set = this.#o.table.current(target.service) ?? (await this.#o.table.get(target.service));
      if (set.all.length === 0) throw this.#unknown(target.service);
      // Only catalog services become metric labels: label values stay bounded.
      trace.service = target.service;
      // Until the answer is done, the service is not idle (its pools stay while a response streams).
      release = this.#o.table.hold(target.service);
      const subset = set.subset(target.range, range);
      if (header(req, 'x-tandem-broadcast') !== undefined) await this.#broadcast(req, res, target, set, subset);
      else await this.#forward(req, res, target, set, subset, trace);
    } catch (err) {
      if (clientGone(req, res)) {
        // The client left (mid-upload, say): nobody to answer, nothing to log as an error.
        trace.outcome = 'aborted';
        res.destroy();
        return;
      }
      const e = toTandemError(err);
      trace.outcome = e instanceof UpstreamTimeoutError ? 'timeout' : e.statusCode < 500 ? 'rejected' : 'failed';
      this.#sendError(res, e);
    } finally {
      release?.();
      if (!trace.egress) this.#observer.request({
        service: trace.service,
        method: req.method ?? '',
        path: req.url ?? '',
        status: res.statusCode,
        outcome: trace.outcome,
        tries: trace.tries,
        instance: trace.instance,
        durationMs: performance.now() - started,
        requestId: trace.requestId,
      });
    }
  }

  async #forward(req: IncomingMessage, res: ServerResponse, target: Target, set: EndpointSet, subset: Subset, trace: Trace): Promise<void> {
    const method = req.method ?? 'GET';
    const pin = header(req, 'x-tandem-instance');
    const stickyId = header(req, 'x-stickyid');
    // One deadline for the whole request, retries included; a caller's X-Tandem-Timeout-Ms is passed on
    // (as what is left of it) so a chain of sidecars shares one budget.
    const asked = header(req, 'x-tandem-timeout-ms');
    const budgetMs = asked === undefined ? this.#o.requestTimeoutMs : parseTimeout(asked);
    const deadline = Date.now() + budgetMs;
    const body = await readBody(req, this.#o.retryBufferBytes);
    const replayable = body.kind !== 'stream';
    const safeAfterReach = replayable && (IDEMPOTENT.has(method) || req.headers['idempotency-key'] !== undefined);
    const headers = upstreamRequestHeaders(req.rawHeaders, req.headers, req.socket.remoteAddress);
    if (req.headers['x-request-id'] === undefined) headers.push('x-request-id', trace.requestId);
    const maxTries = 1 + this.#o.retries;
    const tried = new Set<string>();
    const refused = this.#guard.refusedIn(subset);
    // Control-plane instances are never picked: they start out excluded, like instances already tried.
    const exclude = refused.size === 0 ? tried : new Set(refused);
    const service = target.service;
    this.#o.retryBudget.request(service);
    let last: Extract<AttemptResult, { kind: 'failed' }> | undefined;
    let stoppedBy: string | undefined;
    /** The latest whole answer with a retryable status: passed on as is when no other try succeeds. */
    let held: { response: HeldResponse; endpoint: Endpoint; picked: Picked } | undefined;

    for (let attempt = 0; attempt < maxTries; attempt++) {
      const remaining = deadline - Date.now();
      if (remaining <= 0) {
        stoppedBy = 'deadline';
        break; // a retry never starts after the deadline
      }
      if (attempt > 0 && !this.#o.retryBudget.tryRetry(service)) {
        stoppedBy = 'retry budget exhausted';
        this.#observer.retryBudgetExhausted(service);
        break;
      }
      if (attempt > 0) this.#observer.retry(service);
      const picked = pin !== undefined ? this.#pinned(set, subset, pin, tried, refused) : await this.#o.balancer.acquire(subset, { stickyId, exclude }, remaining);
      if (!picked) {
        if (attempt === 0) throw this.#noneToPick(target, set, subset, refused);
        break;
      }
      const { endpoint } = picked;
      tried.add(endpoint.id);
      exclude.add(endpoint.id);
      trace.tries = attempt + 1;
      trace.instance = endpoint.id;
      // A retryable status is only held back when another instance could take the retry; a pinned
      // instance, or the only one left, passes its 502/503/504 on as it is.
      const mayRetryStatus =
        safeAfterReach && pin === undefined && attempt + 1 < maxTries && this.#o.retryBudget.hasRoom(service) && subset.healthy.some((e) => !exclude.has(e.id));
      // Counted in flight (maxInFlight, least-loaded cost) until the attempt ends; its time feeds the latency estimate.
      const release = picked.release ?? this.#o.balancer.begin(endpoint);
      const result = await this.#o.forwarder.attempt(req, res, {
        endpoint,
        method,
        path: target.path,
        headers: asked === undefined ? headers : [...headers, 'x-tandem-timeout-ms', String(Math.max(1, Math.floor(remaining)))],
        body,
        timeoutMs: Math.min(this.#o.upstreamTimeoutMs, remaining),
        retryStatuses: mayRetryStatus ? this.#retryStatuses : undefined,
        extraHeaders: extraHeaders(endpoint, picked),
        deadline,
      }).then(
        // Fast failures are not latency samples (a refusing instance must not look quick); timeouts are.
        (r) => (release(r.kind === 'done' || (r.kind === 'failed' && r.timeout === true)), r),
        (err: unknown) => {
          release(false);
          throw err;
        },
      );
      if (result.kind === 'aborted') {
        trace.outcome = 'aborted'; // the client left: nobody to answer, nothing to blame
        return;
      }
      if (result.kind === 'done') {
        const failed = this.#retryStatuses.has(result.status);
        this.#report(endpoint, failed ? 'failure' : 'success');
        trace.outcome = result.status >= 500 ? 'failed' : attempt > 0 ? 'retried' : 'success';
        return;
      }
      if (res.destroyed) {
        trace.outcome = 'aborted'; // the client left meanwhile: nobody to answer
        return;
      }
      if (result.controlPlane) {
        // A name that led to a control plane: refused from now on, and no blame on the instance's health.
        this.#guard.learn(endpoint);
        last = result;
        if (pin !== undefined) break;
        continue;
      }
      // A try cut by the caller's own deadline says nothing about the instance.
      if (!(result.timeout && Date.now() >= deadline)) this.#report(endpoint, 'failure');
      last = result;
      if (result.held) held = { response: result.held, endpoint, picked };
      const retryable = (result.unsent && replayable) || safeAfterReach;
      if (!retryable) break;
      this.#o.logger.debug({ service, instance: endpoint.id, reason: result.reason }, 'failing over to another instance');
    }
    if (held) {
      // An instance's own answer beats a proxy error: status, body and headers (Retry-After) as it gave them.
      const h: Record<string, string | string[] | undefined> = { ...held.response.headers };
      for (const [k, v] of extraHeaders(held.endpoint, held.picked)) h[k] = v;
      h['content-length'] = String(held.response.body.length);
      delete h['transfer-encoding'];
      res.writeHead(held.response.status, h);
      if (req.headers.expect !== undefined) res.flushHeaders(); // see the forwarder: after a queued 100 Continue
      res.end(method === 'HEAD' ? undefined : held.response.body);
      trace.instance = held.endpoint.id;
      trace.outcome = 'failed';
      return;
    }
    if (last?.controlPlane) throw new ControlPlaneError(`instance '${trace.instance ?? ''}' of '${service}'`);
    if (stoppedBy === 'deadline' || (last?.timeout && !last.unsent)) throw new UpstreamTimeoutError(service, Math.min(budgetMs, this.#o.upstreamTimeoutMs));
    throw new UpstreamFailedError(service, tried.size, [last ? `last try ${last.reason}` : 'no instance left to try', stoppedBy].filter(Boolean).join('; '));
  }

  /** `X-Tandem-Broadcast: all`: every healthy instance in range but control planes (see broadcast.ts). */
  async #broadcast(req: IncomingMessage, res: ServerResponse, target: Target, set: EndpointSet, subset: Subset): Promise<void> {
    const refused = this.#guard.refusedIn(subset);
    const targets = refused.size === 0 ? subset.healthy : subset.healthy.filter((e) => !refused.has(e.id));
    if (targets.length === 0) throw this.#noneToPick(target, set, subset, refused);
    await broadcast(req, res, target.path, targets, {
      forwarder: this.#o.forwarder,
      bufferBytes: this.#o.retryBufferBytes,
      timeoutMs: this.#o.broadcastTimeoutMs,
      maxBodyBytes: this.#o.broadcastMaxBodyBytes,
      report: (e, outcome) => (outcome === 'control-plane' ? this.#guard.learn(e) : this.#report(e, outcome)),
    });
  }

  /** An empty answer is "no such service", unless the catalog says its answers are filtered (ACL). */
  #unknown(service: string): TandemError {
    const problem = this.#o.table.problem();
    return problem ? new CatalogForbiddenError(service, problem) : new UnknownServiceError(service);
  }

  /** The one feedback path: outcome → outlier detector (and the observer when it ejects). */
  #report(endpoint: Endpoint, outcome: 'success' | 'failure'): void {
    if (this.#o.outliers.report(endpoint, outcome)) this.#observer.ejection(endpoint.service, endpoint.id);
  }

  #pinned(set: EndpointSet, subset: Subset, id: string, tried: ReadonlySet<string>, refused: ReadonlySet<string>): Picked | undefined {
    if (tried.has(id)) return undefined;
    if (refused.has(id)) throw new ControlPlaneError(`instance '${id}' of '${set.service}'`);
    const e = subset.byId.get(id);
    if (!e || !e.healthy) throw new InstanceNotFoundError(set.service, id);
    return { endpoint: e, moved: false };
  }

  /** Nothing to pick: because every healthy candidate is a control plane, or because none is healthy. */
  #noneToPick(target: Target, set: EndpointSet, subset: Subset, refused: ReadonlySet<string>): TandemError {
    if (refused.size > 0 && subset.healthy.length > 0 && subset.healthy.every((e) => refused.has(e.id))) return new ControlPlaneError(`every healthy instance of '${target.service}'`);
    return new NoHealthyInstanceError(target.service, target.range || undefined, set.versions, set.healthyVersions);
  }

  async #upgrade(req: IncomingMessage, socket: Duplex, head: Buffer): Promise<void> {
    let release: (() => void) | undefined;
    try {
      if (req.rawHeaders.length > MAX_HEADERS * 2) throw new HeadersTooLargeError(`the request has more than ${MAX_HEADERS} header fields`);
      if (!this.#open) await this.#waitOpen();
      const url = req.url ?? '/';
      if (url.length > this.#o.maxUrlBytes) throw new UrlTooLongError(this.#o.maxUrlBytes);
      const tunnel = this.#conns.get(socket)?.tunnel;
      const version = header(req, 'x-tandem-version');
      // Upgrades to other hosts (WebSocket through an HTTP proxy) come as CONNECT, never in absolute form.
      const self = tunnel === undefined ? foreignTarget(url) : undefined;
      const target = tunnel !== undefined ? parseTunnelTarget(url, tunnel, version) : parseTarget(self && this.#isSelf(self.host, self.port) ? self.path : url, version);
      const pin = header(req, 'x-tandem-instance');
      this.#guard.checkTarget(target.service, pin);
      const range = target.range === '' ? null : this.#o.ranges.get(target.range);
      const set = this.#o.table.current(target.service) ?? (await this.#o.table.get(target.service));
      if (set.all.length === 0) throw this.#unknown(target.service);
      // An upgraded connection counts as a request in flight until it closes.
      release = this.#o.table.hold(target.service);
      socket.once('close', release);
      const subset = set.subset(target.range, range);
      const refused = this.#guard.refusedIn(subset);
      const picked = pin !== undefined ? this.#pinned(set, subset, pin, NONE, refused) : this.#o.balancer.pick(subset, { stickyId: header(req, 'x-stickyid'), exclude: refused });
      if (!picked) throw this.#noneToPick(target, set, subset, refused);
      const headers = upstreamRequestHeaders(req.rawHeaders, req.headers, req.socket.remoteAddress);
      let up;
      try {
        up = await this.#o.forwarder.upgrade(picked.endpoint, target.path, headers, header(req, 'upgrade') ?? 'websocket');
      } catch (err) {
        if ((err as { code?: string }).code === CONTROL_PLANE_CODE) {
          this.#guard.learn(picked.endpoint);
          throw new ControlPlaneError(`instance '${picked.endpoint.id}' of '${target.service}'`);
        }
        this.#report(picked.endpoint, 'failure');
        throw new UpstreamFailedError(target.service, 1, (err as { code?: string }).code ?? (err as Error).message, { cause: err });
      }
      this.#report(picked.endpoint, 'success');
      const lines = ['HTTP/1.1 101 Switching Protocols', 'connection: Upgrade', `upgrade: ${header(req, 'upgrade') ?? 'websocket'}`];
      for (const [k, v] of Object.entries(up.headers)) {
        if (k === 'connection' || k === 'upgrade' || TANDEM_RESPONSE_HEADERS.has(k) || v === undefined) continue;
        for (const one of Array.isArray(v) ? v : [v]) lines.push(`${k}: ${one}`);
      }
      for (const [k, v] of extraHeaders(picked.endpoint, picked)) lines.push(`${k}: ${v}`);
      socket.write(`${lines.join('\r\n')}\r\n\r\n`);
      if (head.length > 0) up.socket.write(head);
      up.socket.on('error', () => socket.destroy());
      up.socket.on('close', () => socket.destroy());
      socket.on('close', () => up.socket.destroy());
      up.socket.pipe(socket);
      socket.pipe(up.socket);
    } catch (err) {
      release?.();
      writeRawError(socket, toTandemError(err));
    }
  }

  /**
   * CONNECT. To `<service>.service[.consul]:<port>`: a tunnel Tandem terminates — the connection goes
   * back to this HTTP server, and every request inside it is routed to that service like an
   * absolute-form request. To any other host: the egress policy decides (passthrough, or 403).
   */
  async #connect(req: IncomingMessage, socket: Duplex, head: Buffer): Promise<void> {
    const authority = req.url ?? '';
    const a = parseAuthority(authority);
    if (!a || req.rawHeaders.length > MAX_HEADERS * 2) {
      writeRawError(socket, a ? new HeadersTooLargeError(`the request has more than ${MAX_HEADERS} header fields`) : new BadTargetError(`CONNECT needs host:port (got '${authority.slice(0, 100)}')`));
      return;
    }
    // A tunnel to this proxy itself: its requests are handled here like on any connection.
    if (this.#isSelf(a.host, a.port)) {
      this.#openTunnel(socket, head, undefined);
      return;
    }
    const service = serviceOfHost(a.host);
    if (service !== undefined) {
      if (this.#guard.refusesService(service)) writeRawError(socket, new ControlPlaneError(`'${service}'`));
      // Clients open CONNECT :443 for https:// URLs: TLS that Tandem could not read (see TlsToServiceError).
      else if (a.port === 443) writeRawError(socket, new TlsToServiceError(authority.slice(0, 300)));
      else this.#openTunnel(socket, head, service);
      return;
    }
    const started = performance.now();
    const record = (outcome: EgressRecord['outcome'], status: number) =>
      this.#observer.egress({ kind: 'connect', outcome, target: authority.slice(0, 300), method: 'CONNECT', status, durationMs: performance.now() - started });
    try {
      if (!this.#o.egress) throw new ForeignHostError(authority.slice(0, 255));
      const to = await this.#o.egress.judge(a.host, a.port);
      await this.#o.egress.tunnel(socket, head, to);
      record('forwarded', 200);
    } catch (err) {
      const e = toTandemError(err);
      record(e.statusCode === 403 ? 'refused' : 'failed', e.statusCode);
      writeRawError(socket, e);
    }
  }

  /** Answers the CONNECT and hands the connection back to the HTTP server, remembering the service (none: a tunnel to this proxy). */
  #openTunnel(socket: Duplex, head: Buffer, service: string | undefined): void {
    this.#conns.set(socket, service === undefined ? { pending: 0, closing: false, idle: [] } : { pending: 0, closing: false, idle: [], tunnel: service });
    socket.write('HTTP/1.1 200 Connection Established\r\n\r\n');
    if (head.length > 0) socket.unshift(head);
    // node:http parses the tunnel like a new connection: keep-alive, pipelining, head timeout, aborts,
    // and closeIdleConnections() at shutdown all apply inside it.
    this.#server.emit('connection', socket);
  }

  /**
   * A plain-HTTP request in absolute form to a host that is not a catalog service: the egress policy
   * decides; allowed ones are forwarded to the address the policy judged (one try, streamed both ways).
   */
  async #egressHttp(req: IncomingMessage, res: ServerResponse, f: ForeignTarget, started: number): Promise<void> {
    let outcome: EgressRecord['outcome'] = 'forwarded';
    const target = `${f.host}:${f.port}`;
    try {
      if (!this.#o.egress) throw new ForeignHostError(f.authority.slice(0, 255));
      const to = await this.#o.egress.judge(f.host, f.port);
      const body = await readBody(req, -1);
      const budget = Math.min(this.#o.upstreamTimeoutMs, this.#o.requestTimeoutMs);
      const result = await this.#o.forwarder.attempt(req, res, {
        endpoint: undefined,
        origin: `http://${to.address.includes(':') ? `[${to.address}]` : to.address}:${to.port}`,
        method: req.method ?? 'GET',
        path: f.path,
        headers: egressRequestHeaders(req.rawHeaders, req.headers, f.authority),
        body,
        timeoutMs: budget,
        retryStatuses: undefined,
        extraHeaders: [],
      });
      if (result.kind === 'aborted') outcome = 'aborted';
      else if (result.kind === 'failed') {
        if (result.controlPlane) throw new EgressRefusedError(to.target, this.#o.egress.label, 'the address is a control plane (a Consul agent or a Tandem sidecar)');
        throw result.timeout ? new EgressTimeoutError(to.target, budget) : new EgressFailedError(to.target, result.reason);
      }
    } catch (err) {
      if (clientGone(req, res)) outcome = 'aborted';
      else {
        const e = toTandemError(err);
        outcome = e.statusCode >= 500 ? 'failed' : 'refused';
        this.#sendError(res, e);
      }
    } finally {
      this.#observer.egress({ kind: 'http', outcome, target, method: req.method ?? '', status: res.statusCode, durationMs: performance.now() - started });
    }
  }

  /** The one place a proxy error becomes a response. */
  #sendError(res: ServerResponse, e: TandemError): void {
    if (e.code === 'TANDEM_ERR_INTERNAL') this.#o.logger.error({ err: { message: e.cause instanceof Error ? e.cause.message : String(e.cause) } }, 'proxy internal error');
    if (res.headersSent || res.destroyed) {
      res.destroy();
      return;
    }
    const body = JSON.stringify(e.toBody());
    res.writeHead(e.statusCode, {
      'content-type': 'application/json; charset=utf-8',
      'content-length': Buffer.byteLength(body),
      'x-tandem-error': e.code,
      ...(e instanceof OverloadedError ? { 'retry-after': String(e.retryAfterS) } : {}),
    });
    res.end(body);
  }
}

/**
 * The client left: its connection is gone, or its upload was cut. Not `req.destroyed` alone: a request
 * whose body was read whole is "destroyed" too, while its client waits for the answer.
 */
function clientGone(req: IncomingMessage, res: ServerResponse): boolean {
  return res.destroyed || (req.destroyed && !req.complete);
}

function toTandemError(err: unknown): TandemError {
  return err instanceof TandemError ? err : new TandemError('TANDEM_ERR_INTERNAL', 500, 'internal error', { cause: err });
}

function extraHeaders(endpoint: Endpoint, picked: Picked): [string, string][] {
  return picked.moved ? [['x-tandem-instance', endpoint.id], ['x-tandem-sticky', 'moved']] : [['x-tandem-instance', endpoint.id]];
}
