// The SDK client: register, call, resolve and watch services through the local Tandem sidecar (Node built-ins only).
import { EventEmitter } from 'node:events';
import type { Server } from 'node:http';
import { TandemError } from '../protocol/tandem-error.ts';
import type { BroadcastEntry, Election, LeaderInfo, Member, TandemEvent, InstanceInfo, ResolvedInstance } from '../protocol/wire.ts';
import { normalizeUrl, SidecarClient, toError } from './sidecar-client.ts';
import { registerService, type RegisterOptions, type RegisterSpec, type ServiceHandle } from './registration.ts';
import { campaign, needTargets, splitTarget, subscribeStream, waitForTargets, watchStream, type ElectOptions, type StreamHandle, type WatchEvent } from './streams.ts';
import { pathTarget, send, type TandemRequestInit } from './requests.ts';
import { LIFECYCLE_EVENTS, LifecycleStream } from './lifecycle.ts';

export type { RegisterOptions, RegisterSpec, ServiceHandle } from './registration.ts';
export type { ElectOptions, StreamHandle, WatchEvent } from './streams.ts';
export type { TandemRequestInit } from './requests.ts';

/**
 * Options of a {@link Tandem} client.
 *
 * @example
 * ```ts
 * const tandem = new Tandem({ url: 'http://127.0.0.1:7701' });
 * ```
 */
export interface TandemOptions {
  /** The sidecar's control API. Default: `TANDEM_API` (host:port or URL), else `http://127.0.0.1:7701`. */
  url?: string;
  /** The sidecar's proxy. Default: asked from the sidecar once (`GET /v1/health`). */
  proxyUrl?: string;
  /** Sent as `Authorization: Bearer <token>` to the control API. Default: `TANDEM_API_TOKEN`. */
  token?: string;
  /**
   * This app's own Consul ACL token, sent as `X-Consul-Token` on every control-API call (never on
   * requests to services): the sidecar makes this app's writes (register, heartbeat, publish, ...) with
   * it, so Consul's ACLs decide. Default: `CONSUL_HTTP_TOKEN`, else the file `CONSUL_HTTP_TOKEN_FILE`
   * names; `''` sends none.
   */
  consulToken?: string;
}

/**
 * The client of the local Tandem sidecar: join the cluster, call and discover services.
 *
 * @example
 * ```ts
 * import { Tandem } from 'tandem/sdk';
 * const tandem = new Tandem();
 * await tandem.register('users@1.2.3', server);                 // registered in Consul, checked, deregistered on SIGTERM
 * const res = await tandem.request('users@^1', '/api/users/42'); // through the proxy, round-robin
 * ```
 */
export class Tandem extends EventEmitter {
  readonly url: string;
  #client: SidecarClient;
  #proxyUrl: string | undefined;
  /** The services this client registered and has not closed (ready-to-stop, the lifecycle stream, close()). */
  #handles = new Map<string, ServiceHandle>();
  /** Every stream this client opened and has not stopped (watches, subscriptions, campaigns, the lifecycle). */
  #streams = new Set<AbortController>();
  #lifecycle: LifecycleStream;

  constructor(opts: TandemOptions = {}) {
    super();
    this.#client = new SidecarClient(opts);
    this.#lifecycle = new LifecycleStream(this.#client, () => [...this.#handles.keys()], (event, data) => this.emit(event, data), () => this.#track(), (ctrl) => this.#untrack(ctrl));
    // The drain lifecycle stream opens when the app first listens for it.
    this.on('newListener', (name: string | symbol) => {
      if (typeof name === 'string' && LIFECYCLE_EVENTS.includes(name) && !this.#lifecycle.isOpen) this.#lifecycle.open();
    });
    this.url = this.#client.url;
    this.#proxyUrl = opts.proxyUrl === undefined ? undefined : normalizeUrl(opts.proxyUrl);
  }

  /**
   * Registers a service with the sidecar (and so in Consul). Given an `http.Server` that is not
   * listening, it first listens on a free port on 127.0.0.1 (and `close()` closes it again). Without a
   * `check`, the SDK registers a TTL check and keeps it passing from this process (so a hung or dead
   * app goes critical). The registration lives as long as this process: the SDK holds a liveness
   * stream to the sidecar for it, and a process that dies without deregistering (SIGKILL, a crash) is
   * deregistered by the sidecar once that stream has been gone for `registration.livenessGraceMs`
   * (5 s by default). SIGTERM and SIGINT deregister it first (see {@link RegisterOptions}).
   *
   * @example
   * ```ts
   * const server = http.createServer((req, res) => res.end('hi'));
   * const svc = await tandem.register('users@1.2.3', server); // listens, registers, heartbeats
   * await svc.close();                                          // maintenance, drain, deregister, server closed
   * ```
   */
  async register(spec: RegisterSpec, server?: Server, opts: RegisterOptions = {}): Promise<ServiceHandle> {
    const handle = await registerService(this.#client, spec, server, opts, (id) => this.#handles.delete(id));
    this.#handles.set(handle.id, handle);
    // The lifecycle stream names the services this app answers for: reopen it to add this one.
    this.#lifecycle.reopen();
    return handle;
  }

  /**
   * Calls a service through the sidecar's proxy: `target` is `'users'` or `'users@^2'`, `path` starts
   * with `/`. Resolves with the standard `Response` (check `res.ok`); sidecar errors carry an
   * `x-tandem-error` header and a JSON body.
   *
   * @example
   * ```ts
   * const res = await tandem.request('users@^1', '/api/users/42', { stickyId: 'user-42' });
   * const user = await res.json();
   * ```
   */
  async request(target: string, path: string, init: TandemRequestInit = {}): Promise<Response> {
    const proxy = await this.proxyUrl();
    return send(this.#client, `${proxy}/${pathTarget(target)}${path.startsWith('/') ? path : `/${path}`}`, init);
  }

  /**
   * `fetch`-compatible: `http://<service>.service.consul/<path>` URLs go through the sidecar's proxy
   * (range from an `X-Tandem-Version` header); other URLs are fetched as usual.
   *
   * @example
   * ```ts
   * const res = await tandem.fetch('http://users.service.consul/api/users/42', { headers: { 'x-tandem-version': '^1' } });
   * ```
   */
  async fetch(input: string | URL, init: TandemRequestInit = {}): Promise<Response> {
    const url = new URL(String(input));
    const m = /^([a-z0-9-]+)\.service(?:\.consul)?$/.exec(url.hostname);
    if (!m || url.protocol !== 'http:') return send(this.#client, url.toString(), init);
    const proxy = await this.proxyUrl();
    return send(this.#client, `${proxy}/${m[1]}${url.pathname}${url.search}`, init);
  }

  /**
   * Sends the request to every healthy instance in range at once and gathers every answer (meshage's
   * broadcast): one entry per instance, a failed instance being an entry with its error. `timeoutMs`
   * bounds each instance's answer.
   *
   * @example
   * ```ts
   * const entries = await tandem.broadcast('cache@^2', '/flush', { method: 'POST', timeoutMs: 1000 });
   * ```
   */
  async broadcast(target: string, path: string, init: TandemRequestInit = {}): Promise<BroadcastEntry[]> {
    const { timeoutMs, ...rest } = init;
    const headers = new Headers(rest.headers);
    headers.set('x-tandem-broadcast', 'all');
    if (timeoutMs !== undefined) headers.set('x-tandem-timeout-ms', String(timeoutMs));
    const res = await this.request(target, path, { ...rest, headers });
    if (!res.ok) throw await toError(res);
    return (await res.json()) as BroadcastEntry[];
  }

  /**
   * One instance of a service, picked like the proxy would (honours `stickyId`), for non-HTTP clients.
   *
   * @example
   * ```ts
   * const { address, port } = await tandem.resolve('cache@^7', { stickyId: key });
   * ```
   */
  async resolve(target: string, opts: { stickyId?: string } = {}): Promise<ResolvedInstance> {
    const { service, range } = splitTarget(target);
    const q = new URLSearchParams();
    if (range) q.set('range', range);
    if (opts.stickyId !== undefined) q.set('stickyId', opts.stickyId);
    return this.#client.api<ResolvedInstance>('GET', `/v1/resolve/${encodeURIComponent(service)}${q.size ? `?${q}` : ''}`);
  }

  /**
   * The sidecar's current view of a service's instances in range, with health and ejection state.
   *
   * @example
   * ```ts
   * const list = await tandem.instances('users@^1');
   * ```
   */
  async instances(target: string): Promise<InstanceInfo[]> {
    const { service, range } = splitTarget(target);
    const q = range ? `?range=${encodeURIComponent(range)}` : '';
    return (await this.#client.api<{ instances: InstanceInfo[] }>('GET', `/v1/instances/${encodeURIComponent(service)}${q}`)).instances;
  }

  /**
   * Live `added`/`removed` events for the routable (healthy, in range) instances of a service. The
   * current ones arrive as `added` first. Reconnects if the sidecar restarts (and reports what changed
   * meanwhile). Returns the function that stops watching; its `ready` resolves once the sidecar has
   * sent the current instances (they have reached `listener` by then), see {@link StreamHandle}.
   *
   * @example
   * ```ts
   * const stop = tandem.watch('users@^1', (e) => console.log(e.type, e.instance.id));
   * await stop.ready; // every routable instance has been reported as `added`
   * stop();
   * ```
   */
  watch(target: string, listener: (event: WatchEvent) => void, opts: { onError?: (err: TandemError) => void } = {}): StreamHandle {
    const ctrl = this.#track();
    return this.#handle(ctrl, watchStream(this.#client, target, listener, ctrl.signal, opts.onError));
  }

  /**
   * Resolves once every target has at least one healthy, non-ejected instance in range; rejects with
   * `TANDEM_ERR_WAIT_TIMEOUT` naming the targets still missing after `timeoutMs`.
   *
   * @example
   * ```ts
   * await tandem.waitFor(['users@^1', 'billing'], { timeoutMs: 30_000 });
   * ```
   */
  waitFor(targets: string | readonly string[], opts: { timeoutMs: number; intervalMs?: number }): Promise<void> {
    return waitForTargets(typeof targets === 'string' ? [targets] : [...targets], opts, (t) => this.instances(t));
  }

  /**
   * Publishes an event to every subscriber of `topic` on every host (payload: any JSON value up to
   * 64 KB). Resolves with the event's id once it is stored in Consul.
   *
   * @example
   * ```ts
   * await tandem.publish('orders.created', { orderId: 42 });
   * ```
   */
  async publish(topic: string, payload: unknown): Promise<{ id: string; seq: number; ts: number }> {
    return this.#client.api('POST', `/v1/events/${encodeURIComponent(topic)}`, payload === undefined ? null : payload);
  }

  /**
   * Receives every event published to `topic` after this call, on any host, each publisher's in order,
   * exactly once (the SDK drops the duplicates that at-least-once delivery can bring). Survives a
   * sidecar restart: what was published meanwhile arrives after the reconnect (within the retention
   * window). Returns the function that stops it; its `ready` resolves once the subscription is in
   * place on the sidecar: every event published from then on reaches `handler` (see {@link StreamHandle}).
   *
   * @example
   * ```ts
   * const stop = tandem.subscribe('orders.created', (payload, event) => console.log(event.id, payload));
   * await stop.ready;
   * await tandem.publish('orders.created', { orderId: 42 }); // handled above, even from this process
   * ```
   */
  subscribe(topic: string, handler: (payload: unknown, event: TandemEvent) => void, opts: { onError?: (err: TandemError) => void } = {}): StreamHandle {
    const ctrl = this.#track();
    return this.#handle(ctrl, subscribeStream(this.#client, topic, handler, ctrl.signal, opts.onError));
  }

  /**
   * Runs for leadership of `group` (node-discovery's master election), on behalf of one of this app's
   * registered services: its health check is tied to the lock, so a crashed or hung app loses it.
   * `onPromote` gets a fencing token that strictly increases from one leader to the next; `onDemote`
   * comes before another contender can be promoted whenever this app is still reachable (and also when
   * the sidecar connection is lost, since leadership can no longer be known).
   *
   * @example
   * ```ts
   * const svc = await tandem.register('scheduler@1.0.0', server);
   * const election = tandem.elect('scheduler', { service: svc, onPromote: ({ token }) => start(token), onDemote: () => stop() });
   * await election.ready; // campaigning on the sidecar
   * await election.resign();
   * ```
   */
  elect(group: string, opts: ElectOptions): Election {
    const ctrl = this.#track();
    const election = campaign(this.#client, group, opts, ctrl);
    return {
      get leader() {
        return election.leader;
      },
      ready: election.ready,
      resign: async () => {
        this.#streams.delete(ctrl);
        await election.resign();
      },
    };
  }

  /**
   * The current leader of a group, or null.
   *
   * @example
   * ```ts
   * const who = await tandem.leader('scheduler');
   * ```
   */
  async leader(group: string): Promise<LeaderInfo | null> {
    return (await this.#client.api<{ leader: LeaderInfo | null }>('GET', `/v1/leaders/${encodeURIComponent(group)}`)).leader;
  }

  /**
   * Every instance in the cluster with version, node, health and drain state (comrade's getMembers).
   *
   * @example
   * ```ts
   * const critical = await tandem.members({ service: 'users', health: 'critical' });
   * ```
   */
  async members(filter: { service?: string; node?: string; health?: Member['health'] } = {}): Promise<Member[]> {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(filter)) if (v !== undefined) q.set(k, v);
    return this.#client.api<Member[]>('GET', `/v1/members${q.size ? `?${q}` : ''}`);
  }

  /**
   * Tells the sidecar this app has finished its in-flight work after a `drain` event: its services are
   * then deregistered without waiting for the drain deadline.
   *
   * @example
   * ```ts
   * tandem.on('drain', async ({ deadline }) => { await finishInFlight(deadline); await tandem.readyToStop(); });
   * ```
   */
  async readyToStop(): Promise<void> {
    await Promise.all([...this.#handles.keys()].map((id) => this.#client.api('POST', `/v1/services/${encodeURIComponent(id)}/ready-to-stop`)));
  }

  /**
   * node-discovery's need/ready: emits `ready` once every target has a healthy instance in range, and
   * `lost` (with the target) when one of them loses its last one. Returns the function that stops it.
   *
   * @example
   * ```ts
   * tandem.on('ready', () => startServing());
   * tandem.on('lost', (target) => console.warn('lost', target));
   * const stop = tandem.need(['users@^1', 'billing']);
   * ```
   */
  need(targets: readonly string[]): () => void {
    return needTargets(targets, (t, l) => this.watch(t, l), (event, arg) => this.emit(event, arg));
  }

  /**
   * Resolves once the drain lifecycle stream is in place on the sidecar for this client's current
   * registrations: a drain requested from then on reaches the `drain` listeners (and waits for this
   * app's ready-to-stop). The first `drain`, `undrain` or `drained` listener opens that stream, and
   * each `register()` reopens it to name the new service; this follows it to the stream open now.
   * Pending while the sidecar cannot be reached; rejects with `TANDEM_ERR_NO_LIFECYCLE_STREAM` when no
   * listener has opened it (or `close()` closed it).
   *
   * @example
   * ```ts
   * tandem.on('drain', ({ deadline }) => void finishInFlight(deadline).then(() => tandem.readyToStop()));
   * await tandem.lifecycleReady(); // a drain of this node now reaches the listener above
   * ```
   */
  lifecycleReady(): Promise<void> {
    return this.#lifecycle.ready();
  }

  /**
   * Closes everything this client opened: every registration it made and has not closed (each
   * deregistered gracefully, its server, timers and liveness stream closed, as {@link ServiceHandle.close}
   * does), and every watch, subscription, campaign and the drain lifecycle stream. Rejects with the
   * first failure once everything has been tried.
   *
   * @example
   * ```ts
   * process.once('SIGTERM', () => void tandem.close().then(() => process.exit(0)));
   * ```
   */
  async close(): Promise<void> {
    for (const ctrl of this.#streams) ctrl.abort();
    this.#streams.clear();
    this.#lifecycle.forget();
    const results = await Promise.allSettled([...this.#handles.values()].map((h) => h.close()));
    const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed) throw failed.reason;
  }

  /**
   * The sidecar's proxy address (asked once from the sidecar unless given).
   *
   * @example
   * ```ts
   * const proxy = await tandem.proxyUrl(); // 'http://127.0.0.1:7700'
   * ```
   */
  async proxyUrl(): Promise<string> {
    // A degraded sidecar (503: Consul unreachable) still routes, and still says where its proxy is.
    this.#proxyUrl ??= normalizeUrl((await this.#client.api<{ proxy: string }>('GET', '/v1/health', undefined, [503])).proxy);
    return this.#proxyUrl;
  }

  /** A stream's controller, kept until it stops so that close() can stop it. */
  #track(): AbortController {
    const ctrl = new AbortController();
    this.#streams.add(ctrl);
    return ctrl;
  }

  #untrack(ctrl: AbortController): void {
    ctrl.abort();
    this.#streams.delete(ctrl);
  }

  /** The stop function of a tracked stream, with the promise of its acknowledgement. */
  #handle(ctrl: AbortController, ready: Promise<void>): StreamHandle {
    return Object.assign(() => this.#untrack(ctrl), { ready });
  }
}
