// The proxy listener (plain node:http): addressing, picking, failover, and the one place errors become responses.
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { Duplex } from 'node:stream';
import type { Logger } from 'pino';
import type { Balancer, Picked } from './balancer.ts';
import type { Endpoint } from './endpoint-source.ts';
import type { EndpointSet, Subset } from './endpoint-set.ts';
import {
  InstanceNotFoundError, MethodNotAllowedError, NoHealthyInstanceError, TandemError,
  TrailerNotSupportedError, UnknownServiceError, StartingError, CatalogForbiddenError, ExpectationFailedError, UpstreamFailedError, UpstreamTimeoutError, UrlTooLongError, BadTargetError,
  ControlPlaneError,
} from './errors.ts';
import { CONTROL_PLANE_CODE, type AttemptResult, type Forwarder } from './forwarder.ts';
import { ControlPlaneGuard } from './control-plane.ts';
import type { EndpointSource, Subscription } from './endpoint-source.ts';
import { header, parseTimeout, readBody, upstreamRequestHeaders } from './headers.ts';
import type { OutlierDetector } from './outlier-detector.ts';
import type { RangeCache } from './range-cache.ts';
import type { RetryBudget } from './retry-budget.ts';
import type { RoutingTable } from './routing-table.ts';
import { parseTarget, type Target } from './target.ts';
import { broadcast } from './broadcast.ts';
import { answerClientError, writeRawError } from './raw-errors.ts';
import { randomUUID } from 'node:crypto';
import { NO_OBSERVER, type ProxyObserver, type RequestOutcome } from './proxy-observer.ts';

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
}

/** What one request did, filled in as it goes and handed to the observer at the end. */
interface Trace {
  service: string;
  tries: number;
  instance: string | undefined;
  outcome: RequestOutcome;
  requestId: string;
}

const IDEMPOTENT = new Set(['GET', 'HEAD', 'OPTIONS', 'PUT', 'DELETE', 'TRACE']);
const NONE: ReadonlySet<string> = new Set();

export class ProxyServer {
  #o: ProxyServerOptions;
  #server: Server;
  #retryStatuses: ReadonlySet<number>;
  #observer: ProxyObserver;
  #guard: ControlPlaneGuard;
  #sidecars: Subscription | undefined;
  #open = false;
  #markOpen!: () => void;
  #opened = new Promise<void>((resolve) => (this.#markOpen = resolve));

  constructor(opts: ProxyServerOptions) {
    this.#o = opts;
    this.#retryStatuses = new Set(opts.retryStatuses);
    this.#observer = opts.observer ?? NO_OBSERVER;
    this.#guard = opts.guard ?? new ControlPlaneGuard();
    // requestTimeout bounds how long a request's head and body may take to arrive (slow senders).
    this.#server = createServer({ maxHeaderSize: opts.maxHeaderBytes, keepAliveTimeout: 5000, requestTimeout: 300_000 }, (req, res) => void this.#handle(req, res));
    this.#server.on('clientError', (err: NodeJS.ErrnoException, socket: Duplex) => answerClientError(err, socket, () => new BadTargetError('malformed HTTP request')));
    // CONNECT would make us a tunnel to anywhere: refused.
    this.#server.on('connect', (req: IncomingMessage, socket: Duplex) => {
      this.#track(socket);
      writeRawError(socket, new MethodNotAllowedError(req.method ?? 'CONNECT'));
    });
    this.#server.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) => {
      this.#track(socket);
      void this.#upgrade(req, socket, head);
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

  async start(): Promise<{ host: string; port: number }> {
    await new Promise<void>((resolve, reject) => {
      this.#server.once('error', reject);
      this.#server.listen(this.#o.port, this.#o.host, () => {
        this.#server.removeListener('error', reject);
        resolve();
      });
    });
    const addr = this.#server.address();
    return { host: this.#o.host, port: typeof addr === 'object' && addr ? addr.port : this.#o.port };
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

  async #handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const started = performance.now();
    // A request id for logs and upstream (`x-request-id`), created when the caller sent none.
    const trace: Trace = { service: '', tries: 0, instance: undefined, outcome: 'success', requestId: header(req, 'x-request-id') ?? randomUUID() };
    try {
      if (!this.#open) await this.#waitOpen();
      const url = req.url ?? '/';
      if (url.length > this.#o.maxUrlBytes) throw new UrlTooLongError(this.#o.maxUrlBytes);
      if (req.headers.trailer !== undefined) throw new TrailerNotSupportedError();
      const target = parseTarget(url, header(req, 'x-tandem-version'));
      // Before any catalog lookup: a control plane's name costs no watch.
      this.#guard.checkTarget(target.service, header(req, 'x-tandem-instance'));
      const range = target.range === '' ? null : this.#o.ranges.get(target.range);
      const set = this.#o.table.current(target.service) ?? (await this.#o.table.get(target.service));
      if (set.all.length === 0) throw this.#unknown(target.service);
      // Only catalog services become metric labels: label values stay bounded.
      trace.service = target.service;
      const subset = set.subset(target.range, range);
      if (header(req, 'x-tandem-broadcast') !== undefined) await this.#broadcast(req, res, target, set, subset);
      else await this.#forward(req, res, target, set, subset, trace);
    } catch (err) {
      if (req.destroyed || res.destroyed) {
        // The client left (mid-upload, say): nobody to answer, nothing to log as an error.
        trace.outcome = 'aborted';
        res.destroy();
        return;
      }
      const e = toTandemError(err);
      trace.outcome = e instanceof UpstreamTimeoutError ? 'timeout' : e.statusCode < 500 ? 'rejected' : 'failed';
      this.#sendError(res, e);
    } finally {
      this.#observer.request({
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
      const picked = pin !== undefined ? this.#pinned(set, subset, pin, tried, refused) : this.#o.balancer.pick(subset, { stickyId, exclude });
      if (!picked) {
        if (attempt === 0) throw this.#noneToPick(target, set, subset, refused);
        break;
      }
      const { endpoint } = picked;
      tried.add(endpoint.id);
      exclude.add(endpoint.id);
      trace.tries = attempt + 1;
      trace.instance = endpoint.id;
      const mayRetryStatus = safeAfterReach && attempt + 1 < maxTries && this.#o.retryBudget.hasRoom(service);
      const result = await this.#o.forwarder.attempt(req, res, {
        endpoint,
        method,
        path: target.path,
        headers: asked === undefined ? headers : [...headers, 'x-tandem-timeout-ms', String(Math.max(1, Math.floor(remaining)))],
        body,
        timeoutMs: Math.min(this.#o.upstreamTimeoutMs, remaining),
        retryStatuses: mayRetryStatus ? this.#retryStatuses : undefined,
        extraHeaders: extraHeaders(endpoint, picked),
      });
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
      const retryable = (result.unsent && replayable) || safeAfterReach;
      if (!retryable) break;
      this.#o.logger.debug({ service, instance: endpoint.id, reason: result.reason }, 'failing over to another instance');
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
    socket.on('error', () => socket.destroy());
    try {
      if (!this.#open) await this.#waitOpen();
      const url = req.url ?? '/';
      if (url.length > this.#o.maxUrlBytes) throw new UrlTooLongError(this.#o.maxUrlBytes);
      const target = parseTarget(url, header(req, 'x-tandem-version'));
      const pin = header(req, 'x-tandem-instance');
      this.#guard.checkTarget(target.service, pin);
      const range = target.range === '' ? null : this.#o.ranges.get(target.range);
      const set = this.#o.table.current(target.service) ?? (await this.#o.table.get(target.service));
      if (set.all.length === 0) throw this.#unknown(target.service);
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
        if (k === 'connection' || k === 'upgrade' || v === undefined) continue;
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
      writeRawError(socket, toTandemError(err));
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
    res.writeHead(e.statusCode, { 'content-type': 'application/json; charset=utf-8', 'content-length': Buffer.byteLength(body), 'x-tandem-error': e.code });
    res.end(body);
  }
}

function toTandemError(err: unknown): TandemError {
  return err instanceof TandemError ? err : new TandemError('TANDEM_ERR_INTERNAL', 500, 'internal error', { cause: err });
}

function extraHeaders(endpoint: Endpoint, picked: Picked): [string, string][] {
  return picked.moved ? [['x-tandem-instance', endpoint.id], ['x-tandem-sticky', 'moved']] : [['x-tandem-instance', endpoint.id]];
}
