// The proxy on its own HTTP/1.1 engine: addressing, picking, failover, CONNECT, upgrades, egress, and the one place errors become responses.
import { randomBytes } from 'node:crypto';
import { STATUS_CODES } from 'node:http';
import type { Logger } from 'pino';
import type { Balancer } from './balancing/balancer.ts';
import type { OutlierDetector } from './balancing/outlier-detector.ts';
import type { RangeCache } from './balancing/range-cache.ts';
import type { RetryBudget } from './balancing/retry-budget.ts';
import { broadcast } from './broadcast.ts';
import { ControlPlaneGuard } from './control-plane.ts';
import { isLoopbackHost, type EgressPolicy } from './egress.ts';
import type { Endpoint, EndpointSource, Subscription } from './endpoint-source.ts';
import type { EndpointSet, Subset } from './endpoint-set.ts';
import { takesOver, type ClientConnection } from './engine/client-connection.ts';
import type { ClientRequest } from './engine/client-request.ts';
import { Http1Server } from './engine/http1-server.ts';
import { readBody } from './engine/read-body.ts';
import {
  BadTargetError, CatalogForbiddenError, ControlPlaneError, ExpectationFailedError, HeadersTooLargeError, MalformedRequestError, NoHealthyInstanceError,
  RequestTimeoutError, StartingError, TandemError, TrailerNotSupportedError, UnknownServiceError, UrlTooLongError,
} from './errors.ts';
import { runFailover, type FailoverDeps } from './failover.ts';
import type { Forwarder } from './forwarder.ts';
import { parseTimeout, upstreamRequestLines } from './headers.ts';
import type { HeadError } from './http1/head-types.ts';
import { NO_OBSERVER, type ProxyObserver, type RequestOutcome } from './proxy-observer.ts';
import { ProxyTunnels } from './proxy-tunnels.ts';
import { errorLines, writeRawError } from './raw-errors.ts';
import { clientGone, extraLines, toTandemError } from './responses.ts';
import type { RoutingTable } from './routing-table.ts';
import { foreignTarget, parseTarget, parseTunnelTarget, type Target } from './target.ts';

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
  /** Header fields in a request head at most (more: 431). */
  maxHeaders: number;
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

/**
 * Request ids made here: a random prefix per process and a counter — unique like a UUID for logs and
 * upstreams, without a UUID's cost per request.
 */
const ID_PREFIX = randomBytes(6).toString('hex');
let idCount = 0;

const IDEMPOTENT = new Set(['GET', 'HEAD', 'OPTIONS', 'PUT', 'DELETE', 'TRACE']);

export class ProxyServer {
  #o: ProxyServerOptions;
  #server: Http1Server;
  #retryStatuses: ReadonlySet<number>;
  #observer: ProxyObserver;
  #guard: ControlPlaneGuard;
  #tunnels: ProxyTunnels;
  #failover: FailoverDeps;
  #sidecars: Subscription | undefined;
  #port = -1;
  #open = false;
  #markOpen!: () => void;
  #opened = new Promise<void>((resolve) => (this.#markOpen = resolve));

  constructor(opts: ProxyServerOptions) {
    this.#o = opts;
    this.#retryStatuses = new Set(opts.retryStatuses);
    this.#observer = opts.observer ?? NO_OBSERVER;
    this.#guard = opts.guard ?? new ControlPlaneGuard();
    this.#server = new Http1Server({
      limits: { maxHeaderBytes: opts.maxHeaderBytes, maxUrlBytes: opts.maxUrlBytes, maxHeaders: opts.maxHeaders },
      headersTimeoutMs: opts.headersTimeoutMs ?? 10_000,
      keepAliveMs: 5000,
      handle: (req) => void this.#handle(req),
      refuse: (conn, error) => this.#refuse(conn, error),
    });
    const o = opts;
    // Built once: per request, only the request's own fields and its attempt function are new.
    this.#failover = {
      retries: o.retries,
      retryStatuses: this.#retryStatuses,
      upstreamTimeoutMs: o.upstreamTimeoutMs,
      now: Date.now,
      acquire: (s, p, wait) => o.balancer.acquire(s, p, wait),
      begin: (e) => o.balancer.begin(e),
      budget: o.retryBudget,
      report: (e, outcome) => this.#report(e, outcome),
      learn: (e) => this.#guard.learn(e),
      retried: (s) => this.#observer.retry(s),
      budgetExhausted: (s) => this.#observer.retryBudgetExhausted(s),
    };
    this.#tunnels = new ProxyTunnels({
      ...opts,
      guard: this.#guard,
      observer: this.#observer,
      isSelf: (host, port) => this.#isSelf(host, port),
      sendError: (req, e) => this.#sendError(req, e),
      unknown: (service) => this.#unknown(service),
      noneToPick: (target, set, subset, refused) => this.#noneToPick(target, set, subset, refused),
      report: (e, outcome) => this.#report(e, outcome),
      waitOpen: () => (this.#open ? Promise.resolve() : this.#waitOpen()),
    });
  }

  async start(): Promise<{ host: string; port: number }> {
    this.#port = await this.#server.listen(this.#o.port, this.#o.host);
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

  /** Lets requests through. Until then (the sidecar is still restoring its registrations) they wait instead of seeing an empty catalog. */
  open(): void {
    if (this.#o.sidecars && !this.#sidecars) this.#sidecars = this.#guard.follow(this.#o.sidecars);
    this.#open = true;
    this.#markOpen();
  }

  /** Waits (bounded) for open(): a sidecar that cannot finish starting answers 503 instead of hanging. */
  async #waitOpen(): Promise<void> {
    let timer: NodeJS.Timeout | undefined;
    try {
      await Promise.race([this.#opened, new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new StartingError()), this.#o.requestTimeoutMs)))]);
    } finally {
      clearTimeout(timer);
    }
  }

  /** Stops accepting; lets in-flight requests finish for up to `graceMs`, then cuts the rest. */
  async close(graceMs = 5000): Promise<void> {
    this.#sidecars?.close();
    await this.#server.close(graceMs);
  }

  /** A request the parser refused, a head that did not come in time, TLS inside a tunnel to a service. */
  #refuse(conn: ClientConnection, error: HeadError | 'timeout' | 'tls'): void {
    if (error === 'tls') {
      // No HTTP answer can reach a TLS client.
      this.#o.logger.debug({ service: conn.tunnel }, 'TLS inside a CONNECT tunnel to a service: closed (not supported)');
      conn.socket.destroy();
      return;
    }
    const e =
      error === 'timeout'
        ? new RequestTimeoutError(`the request did not arrive in time (its head within proxy.headersTimeoutMs, ${this.#server.headersTimeoutMs} ms)`)
        : error.status === 414
          ? new UrlTooLongError(this.#o.maxUrlBytes)
          : error.status === 431
            ? new HeadersTooLargeError(error.reason)
            : new MalformedRequestError(error.status, error.reason);
    conn.closing = true;
    writeRawError(conn.socket, e);
  }

  async #handle(req: ClientRequest): Promise<void> {
    if (req.method === 'CONNECT') return this.#tunnels.connect(req);
    if (takesOver(req.head)) return this.#tunnels.upgrade(req);
    const started = performance.now();
    // A request id for logs and upstream (`x-request-id`), created when the caller sent none.
    const sent = req.header('x-request-id');
    const requestId = sent ?? `${ID_PREFIX}-${(++idCount).toString(36)}`;
    let service = '';
    let outcome: RequestOutcome = 'success';
    let tries = 0;
    let instance: string | undefined;
    let release: (() => void) | undefined;
    let egress = false;
    try {
      if (!this.#open) await this.#waitOpen();
      if (req.head.trailer) throw new TrailerNotSupportedError();
      if (req.head.expect !== undefined && !req.head.expectContinue) throw new ExpectationFailedError();
      const url = req.url;
      let target: Target;
      if (req.conn.tunnel !== undefined) target = parseTunnelTarget(url, req.conn.tunnel, req.header('x-tandem-version'));
      else {
        const foreign = foreignTarget(url);
        if (foreign && !this.#isSelf(foreign.host, foreign.port)) {
          egress = true;
          return await this.#tunnels.egressHttp(req, foreign, started);
        }
        target = parseTarget(foreign ? foreign.path : url, req.header('x-tandem-version'));
      }
      // Before any catalog lookup: a control plane's name costs no watch.
      const pin = req.header('x-tandem-instance');
      this.#guard.checkTarget(target.service, pin);
      const range = target.range === '' ? null : this.#o.ranges.get(target.range);
      const set = this.#o.table.current(target.service) ?? (await this.#o.table.get(target.service));
      if (set.all.length === 0) throw this.#unknown(target.service);
      // Only catalog services become metric labels: label values stay bounded.
      service = target.service;
      // Until the answer is done, the service is not idle (its pools stay while a response streams).
      release = this.#o.table.hold(service);
      const subset = set.subset(target.range, range);
      if (req.header('x-tandem-broadcast') !== undefined) {
        await this.#broadcast(req, target, set, subset);
        return;
      }
      const r = await this.#forward(req, target, set, subset, pin, sent === undefined ? requestId : undefined);
      tries = r.tries;
      instance = r.instance;
      outcome = r.outcome;
    } catch (err) {
      if (clientGone(req)) {
        // The client left (mid-upload, say): nobody to answer, nothing to log as an error.
        outcome = 'aborted';
        req.destroy();
        return;
      }
      const e = toTandemError(err);
      outcome = e.code === 'TANDEM_ERR_UPSTREAM_TIMEOUT' ? 'timeout' : e.statusCode < 500 ? 'rejected' : 'failed';
      this.#sendError(req, e);
    } finally {
      release?.();
      if (!egress) {
        this.#observer.request({ service, method: req.method, path: req.url, status: req.statusCode, outcome, tries, instance, durationMs: performance.now() - started, requestId });
      }
    }
  }

  async #forward(req: ClientRequest, target: Target, set: EndpointSet, subset: Subset, pin: string | undefined, newId: string | undefined): Promise<{ outcome: RequestOutcome; tries: number; instance: string | undefined }> {
    const method = req.method;
    // One deadline for the whole request, retries included; a caller's X-Tandem-Timeout-Ms is passed on
    // (as what is left of it) so a chain of sidecars shares one budget.
    const asked = req.header('x-tandem-timeout-ms');
    const budgetMs = asked === undefined ? this.#o.requestTimeoutMs : parseTimeout(asked);
    const deadline = Date.now() + budgetMs;
    const body = await readBody(req, this.#o.retryBufferBytes, budgetMs);
    const replayable = body.kind !== 'stream';
    const idempotent = IDEMPOTENT.has(method) || req.header('idempotency-key') !== undefined;
    const h = req.head;
    let lines = upstreamRequestLines(h.headers, h.connection, req.remoteAddress);
    if (newId !== undefined) lines += `x-request-id: ${newId}\r\n`;
    const o = this.#o;
    const r = await runFailover(this.#failover, {
      service: target.service,
      subset,
      pin,
      stickyId: req.header('x-stickyid'),
      deadline,
      budgetMs,
      replayable,
      idempotent,
      refused: this.#guard.refusedIn(subset),
      noneToPick: (refused) => this.#noneToPick(target, set, subset, refused),
      attempt: (endpoint, picked, remaining, retryStatuses) =>
        o.forwarder.attempt(req, {
          endpoint,
          method,
          path: target.path,
          lines: asked === undefined ? lines : `${lines}x-tandem-timeout-ms: ${Math.max(1, Math.floor(remaining))}\r\n`,
          hostLine: true,
          versionMinor: h.versionMinor,
          chunked: h.framing === 'chunked',
          body,
          timeoutMs: Math.min(o.upstreamTimeoutMs, remaining),
          retryStatuses,
          extraLines: extraLines(endpoint, picked),
          deadline,
          replaySafe: replayable && idempotent,
        }),
    });
    if (r.kind === 'answered') {
      if (r.outcome === 'aborted' && req.bodyProblem !== undefined && req.bodyProblem !== 'aborted' && !req.headersSent) throw bodyError(req);
      return r;
    }
    if (r.kind === 'error') throw r.error;
    // An instance's own answer beats a proxy error: status, body and headers (Retry-After) as it gave them.
    const { held } = r;
    req.writeHead(held.status, held.reason, held.lines + extraLines(r.endpoint, r.picked), held.framing, method === 'HEAD' ? undefined : held.body);
    req.end();
    return { outcome: 'failed', tries: r.tries, instance: r.endpoint.id };
  }

  /** `X-Tandem-Broadcast: all`: every healthy instance in range but control planes (see broadcast.ts). */
  async #broadcast(req: ClientRequest, target: Target, set: EndpointSet, subset: Subset): Promise<void> {
    const refused = this.#guard.refusedIn(subset);
    const targets = refused.size === 0 ? subset.healthy : subset.healthy.filter((e) => !refused.has(e.id));
    if (targets.length === 0) throw this.#noneToPick(target, set, subset, refused);
    await broadcast(req, target.path, targets, {
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

  /** Nothing to pick: because every healthy candidate is a control plane, or because none is healthy. */
  #noneToPick(target: Target, set: EndpointSet, subset: Subset, refused: ReadonlySet<string>): TandemError {
    if (refused.size > 0 && subset.healthy.length > 0 && subset.healthy.every((e) => refused.has(e.id))) return new ControlPlaneError(`every healthy instance of '${target.service}'`);
    return new NoHealthyInstanceError(target.service, target.range || undefined, set.versions, set.healthyVersions);
  }

  /** The one place a proxy error becomes a response. */
  #sendError(req: ClientRequest, e: TandemError): void {
    if (e.code === 'TANDEM_ERR_INTERNAL') this.#o.logger.error({ err: { message: e.cause instanceof Error ? e.cause.message : String(e.cause) } }, 'proxy internal error');
    if (req.headersSent || req.gone) {
      req.destroy();
      return;
    }
    // A body left unread (or cut) stays on the wire: the connection closes after this answer.
    if (!req.bodyComplete) req.conn.closing = true;
    req.respond(e.statusCode, STATUS_CODES[e.statusCode] ?? 'Error', errorLines(e), JSON.stringify(e.toBody()));
  }
}

function bodyError(req: ClientRequest): TandemError {
  return req.bodyProblem === 'trailers' ? new TrailerNotSupportedError() : new BadTargetError(`malformed request body: ${req.bodyReason}`);
}
