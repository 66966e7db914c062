// What leaves plain request/answer: CONNECT (tunnels to services, passthrough egress), upgrades spliced to an instance, and egress in absolute form.
import type { Balancer } from './balancing/balancer.ts';
import type { RangeCache } from './balancing/range-cache.ts';
import type { ControlPlaneGuard } from './control-plane.ts';
import type { EgressPolicy } from './egress.ts';
import type { Endpoint } from './endpoint-source.ts';
import type { EndpointSet, Subset } from './endpoint-set.ts';
import type { ClientRequest } from './engine/client-request.ts';
import { readBody } from './engine/read-body.ts';
import {
  BadTargetError, ControlPlaneError, EgressFailedError, EgressRefusedError, EgressTimeoutError, ForeignHostError, TlsToServiceError, UpstreamFailedError, UrlTooLongError, type TandemError,
} from './errors.ts';
import { pinnedInstance } from './failover.ts';
import { CONTROL_PLANE_CODE, type Forwarder } from './forwarder.ts';
import { egressRequestLines, TANDEM_RESPONSE_HEADERS, upstreamRequestLines } from './headers.ts';
import type { EgressRecord, ProxyObserver } from './proxy-observer.ts';
import { clientGone, extraLines, toTandemError } from './responses.ts';
import { writeRawError } from './raw-errors.ts';
import type { RoutingTable } from './routing-table.ts';
import { parseAuthority, parseTarget, parseTunnelTarget, serviceOfHost, foreignTarget, type ForeignTarget, type Target } from './target.ts';

export interface ProxyTunnelsContext {
  table: RoutingTable;
  balancer: Balancer;
  ranges: RangeCache;
  forwarder: Forwarder;
  guard: ControlPlaneGuard;
  observer: ProxyObserver;
  egress?: EgressPolicy | undefined;
  maxUrlBytes: number;
  upstreamTimeoutMs: number;
  requestTimeoutMs: number;
  isSelf(host: string, port: number): boolean;
  sendError(req: ClientRequest, e: TandemError): void;
  unknown(service: string): TandemError;
  noneToPick(target: Target, set: EndpointSet, subset: Subset, refused: ReadonlySet<string>): TandemError;
  report(e: Endpoint, outcome: 'success' | 'failure'): void;
  waitOpen(): Promise<void>;
}

const NONE: ReadonlySet<string> = new Set();

export class ProxyTunnels {
  #c: ProxyTunnelsContext;

  constructor(c: ProxyTunnelsContext) {
    this.#c = c;
  }

  /**
   * CONNECT. To `<service>.service[.consul]:<port>`: a tunnel Tandem terminates — the connection goes on
   * carrying HTTP requests, each routed to that service like an absolute-form request. To this proxy: its
   * requests are handled as on any connection. To any other host: the egress policy decides.
   */
  async connect(req: ClientRequest): Promise<void> {
    const c = this.#c;
    const authority = req.url;
    const a = parseAuthority(authority);
    if (!a) return this.#refuse(req, new BadTargetError(`CONNECT needs host:port (got '${authority.slice(0, 100)}')`));
    if (c.isSelf(a.host, a.port)) return req.openTunnel(undefined);
    const service = serviceOfHost(a.host);
    if (service !== undefined) {
      if (c.guard.refusesService(service)) return this.#refuse(req, new ControlPlaneError(`'${service}'`));
      // Clients open CONNECT :443 for https:// URLs: TLS that Tandem could not read (see TlsToServiceError).
      if (a.port === 443) return this.#refuse(req, new TlsToServiceError(authority.slice(0, 300)));
      return req.openTunnel(service);
    }
    const started = performance.now();
    const record = (outcome: EgressRecord['outcome'], status: number) =>
      c.observer.egress({ kind: 'connect', outcome, target: authority.slice(0, 300), method: 'CONNECT', status, durationMs: performance.now() - started });
    try {
      if (!c.egress) throw new ForeignHostError(authority.slice(0, 255));
      const to = await c.egress.judge(a.host, a.port);
      if (req.gone) throw new EgressFailedError(to.target, 'the client went away');
      const head = req.conn.detach();
      await c.egress.tunnel(req.conn.socket, head, to);
      record('forwarded', 200);
    } catch (err) {
      const e = toTandemError(err);
      record(e.statusCode === 403 ? 'refused' : 'failed', e.statusCode);
      this.#refuse(req, e);
    }
  }

  /** An answer that ends the connection (after a CONNECT or an upgrade nothing else can follow on it). */
  #refuse(req: ClientRequest, e: TandemError): void {
    req.conn.closing = true;
    if (req.finished || req.conn.current !== req) writeRawError(req.conn.socket, e);
    else this.#c.sendError(req, e);
  }

  /** An upgrade (WebSocket): a new connection to a picked instance; after its 101 the two sockets are spliced. */
  async upgrade(req: ClientRequest): Promise<void> {
    const c = this.#c;
    let release: (() => void) | undefined;
    try {
      await c.waitOpen();
      const url = req.url;
      if (url.length > c.maxUrlBytes) throw new UrlTooLongError(c.maxUrlBytes);
      const tunnel = req.conn.tunnel;
      const version = req.header('x-tandem-version');
      // Upgrades to other hosts (WebSocket through an HTTP proxy) come as CONNECT, never in absolute form.
      const self = tunnel === undefined ? foreignTarget(url) : undefined;
      const target = tunnel !== undefined ? parseTunnelTarget(url, tunnel, version) : parseTarget(self && c.isSelf(self.host, self.port) ? self.path : url, version);
      const pin = req.header('x-tandem-instance');
      c.guard.checkTarget(target.service, pin);
      const range = target.range === '' ? null : c.ranges.get(target.range);
      const set = c.table.current(target.service) ?? (await c.table.get(target.service));
      if (set.all.length === 0) throw c.unknown(target.service);
      // An upgraded connection counts as a request in flight until it closes.
      release = c.table.hold(target.service);
      const subset = set.subset(target.range, range);
      const refused = c.guard.refusedIn(subset);
      const picked = pin !== undefined ? pinnedInstance(subset, target.service, pin, NONE, refused) : c.balancer.pick(subset, { stickyId: req.header('x-stickyid'), exclude: refused });
      if (!picked) throw c.noneToPick(target, set, subset, refused);
      const protocol = req.head.upgrade ?? 'websocket';
      const lines = upstreamRequestLines(req.head.headers, req.head.connection, req.remoteAddress);
      let up;
      try {
        up = await c.forwarder.upgrade(picked.endpoint, target.path, lines, protocol);
      } catch (err) {
        const code = (err as { code?: string }).code;
        if (code === CONTROL_PLANE_CODE) {
          c.guard.learn(picked.endpoint);
          throw new ControlPlaneError(`instance '${picked.endpoint.id}' of '${target.service}'`);
        }
        // The app declining the upgrade (401, 404...) is its answer, not a failure of the instance.
        if (code !== 'UPGRADE_REFUSED') c.report(picked.endpoint, 'failure');
        throw new UpstreamFailedError(target.service, 1, code === 'UPGRADE_REFUSED' ? (err as Error).message : (code ?? (err as Error).message), { cause: err });
      }
      c.report(picked.endpoint, 'success');
      if (req.gone) {
        up.socket.destroy();
        release?.();
        release = undefined;
        return;
      }
      let head = `HTTP/1.1 101 Switching Protocols\r\nconnection: Upgrade\r\nupgrade: ${protocol}\r\n`;
      for (const line of up.lines.split('\r\n')) {
        const name = line.slice(0, line.indexOf(':'));
        if (line === '' || name === 'connection' || name === 'upgrade' || TANDEM_RESPONSE_HEADERS.has(name)) continue;
        head += `${line}\r\n`;
      }
      head += extraLines(picked.endpoint, picked);
      const client = req.conn.socket;
      const rest = req.conn.detach();
      const done = release;
      release = undefined;
      client.once('close', done);
      client.write(`${head}\r\n`, 'latin1');
      if (up.head.length > 0) client.write(up.head);
      if (rest.length > 0) up.socket.write(rest);
      up.socket.on('error', () => client.destroy());
      up.socket.on('close', () => client.destroy());
      client.on('close', () => up.socket.destroy());
      up.socket.pipe(client);
      client.pipe(up.socket);
    } catch (err) {
      release?.();
      this.#refuse(req, toTandemError(err));
    }
  }

  /**
   * A plain-HTTP request in absolute form to a host that is not a catalog service: the egress policy
   * decides; allowed ones are forwarded to the address the policy judged (one try, streamed both ways).
   */
  async egressHttp(req: ClientRequest, f: ForeignTarget, started: number): Promise<void> {
    const c = this.#c;
    let outcome: EgressRecord['outcome'] = 'forwarded';
    const target = `${f.host}:${f.port}`;
    try {
      if (!c.egress) throw new ForeignHostError(f.authority.slice(0, 255));
      const to = await c.egress.judge(f.host, f.port);
      const budget = Math.min(c.upstreamTimeoutMs, c.requestTimeoutMs);
      const body = await readBody(req, -1, budget);
      const result = await c.forwarder.attempt(req, {
        endpoint: undefined,
        origin: { address: to.address, port: to.port },
        method: req.method,
        path: f.path,
        lines: egressRequestLines(req.head.headers, req.head.connection, f.authority),
        hostLine: false,
        versionMinor: req.head.versionMinor,
        chunked: req.head.framing === 'chunked',
        body,
        timeoutMs: budget,
        retryStatuses: undefined,
        extraLines: '',
        replaySafe: false,
      });
      if (result.kind === 'aborted') outcome = 'aborted';
      else if (result.kind === 'failed') {
        if (result.controlPlane) throw new EgressRefusedError(to.target, c.egress.label, 'the address is a control plane (a Consul agent or a Tandem sidecar)');
        throw result.timeout ? new EgressTimeoutError(to.target, budget) : new EgressFailedError(to.target, result.reason);
      }
    } catch (err) {
      if (clientGone(req)) outcome = 'aborted';
      else {
        const e = toTandemError(err);
        outcome = e.statusCode >= 500 ? 'failed' : 'refused';
        c.sendError(req, e);
      }
    } finally {
      c.observer.egress({ kind: 'http', outcome, target, method: req.method, status: req.statusCode, durationMs: performance.now() - started });
    }
  }
}
