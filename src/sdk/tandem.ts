// The SDK client: register, call, resolve and watch services through the local Tandem sidecar (Node built-ins only).
import { EventEmitter } from 'node:events';
import { readFileSync } from 'node:fs';
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { TandemError } from '../protocol/tandem-error.ts';
import type { BroadcastEntry, Election, LeaderInfo, Member, TandemEvent, CheckSpec, ErrorBody, InstanceInfo, Registration, ResolvedInstance, ServiceSpec } from '../protocol/wire.ts';

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
 * What {@link Tandem.register} takes: a spec (port optional when a server is given), or `'name@version'`.
 *
 * @example
 * ```ts
 * await tandem.register('users@1.2.3', server);
 * await tandem.register({ name: 'users', version: '1.2.3', port: 3000, check: { kind: 'http', path: '/health' } });
 * ```
 */
export type RegisterSpec = string | (Omit<ServiceSpec, 'port'> & { port?: number });

/**
 * Options of {@link Tandem.register}.
 *
 * @example
 * ```ts
 * await tandem.register('worker@1.0.0', server, { deregisterOnSignal: false });
 * ```
 */
export interface RegisterOptions {
  /** Deregister (gracefully) when the process gets SIGTERM or SIGINT, then let the signal act. Default true. */
  deregisterOnSignal?: boolean;
}

/**
 * A registered service. `close()` removes it gracefully: maintenance on (callers stop picking it), the
 * sidecar's drain time, then deregistration.
 *
 * @example
 * ```ts
 * const svc = await tandem.register('users@1.2.3', server);
 * process.on('beforeExit', () => svc.close());
 * ```
 */
export interface ServiceHandle {
  readonly id: string;
  readonly port: number;
  readonly registration: Registration;
  close(): Promise<void>;
}

/**
 * Options of {@link Tandem.request}: a standard `RequestInit` plus routing options.
 *
 * @example
 * ```ts
 * await tandem.request('carts@^2', '/cart', { stickyId: userId, timeoutMs: 2000 });
 * ```
 */
export interface TandemRequestInit extends RequestInit {
  /** Sent as `X-StickyId`: the same key reaches the same instance. */
  stickyId?: string;
  /** Sent as `X-Tandem-Instance`: only this instance id. */
  instance?: string;
  /** Aborts the request after this many milliseconds. */
  timeoutMs?: number;
}

/**
 * A change seen by {@link Tandem.watch}: an instance became routable (healthy, in range) or stopped being.
 *
 * @example
 * ```ts
 * tandem.watch('users@^1', (e) => console.log(e.type, e.instance.id));
 * ```
 */
export interface WatchEvent {
  type: 'added' | 'removed';
  instance: InstanceInfo;
}

const DEFAULT_API = 'http://127.0.0.1:7701';

function normalizeUrl(v: string): string {
  return (/^[a-z]+:\/\//i.test(v) ? v : `http://${v}`).replace(/\/+$/, '');
}

/** `users@^2` → `{ service: 'users', range: '^2' }`. */
function splitTarget(target: string): { service: string; range: string } {
  const at = target.indexOf('@');
  return at === -1 ? { service: target, range: '' } : { service: target.slice(0, at), range: target.slice(at + 1) };
}

function pathTarget(target: string): string {
  const { service, range } = splitTarget(target);
  return range === '' ? encodeURIComponent(service) : `${encodeURIComponent(service)}@${encodeURIComponent(range)}`;
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
  #proxyUrl: string | undefined;
  #token: string | undefined;
  #consulToken: string | undefined;

  /** Ids of the services this client registered (for ready-to-stop). */
  #handles = new Set<string>();
  #lifecycle: AbortController | undefined;

  constructor(opts: TandemOptions = {}) {
    super();
    // The drain lifecycle stream opens when the app first listens for it.
    this.on('newListener', (name: string | symbol) => {
      if ((name === 'drain' || name === 'undrain' || name === 'drained') && !this.#lifecycle) this.#openLifecycle();
    });
    this.url = normalizeUrl(opts.url ?? process.env['TANDEM_API'] ?? DEFAULT_API);
    this.#proxyUrl = opts.proxyUrl === undefined ? undefined : normalizeUrl(opts.proxyUrl);
    this.#token = opts.token ?? process.env['TANDEM_API_TOKEN'];
    this.#consulToken = (opts.consulToken ?? envConsulToken()) || undefined;
  }

  /**
   * Registers a service with the sidecar (and so in Consul). Given an `http.Server` that is not
   * listening, it first listens on a free port on 127.0.0.1. Without a `check`, the SDK registers a
   * TTL check and keeps it passing from this process (so a hung or dead app goes critical).
   *
   * @example
   * ```ts
   * const server = http.createServer(handler);
   * const svc = await tandem.register('users@1.2.3', server); // listens, registers, heartbeats
   * await svc.close();                                          // maintenance, drain, deregister
   * ```
   */
  async register(spec: RegisterSpec, server?: Server, opts: RegisterOptions = {}): Promise<ServiceHandle> {
    const base: Omit<ServiceSpec, 'port'> & { port?: number } = typeof spec === 'string' ? parseShorthand(spec) : spec;
    let port = base.port;
    if (server) {
      if (!server.listening) await new Promise<void>((resolve, reject) => {
        server.once('error', reject);
        server.listen(port ?? 0, '127.0.0.1', () => {
          server.removeListener('error', reject);
          resolve();
        });
      });
      port = (server.address() as AddressInfo).port;
    }
    if (port === undefined) throw new TandemError('TANDEM_ERR_INVALID_SERVICE', 400, 'register() needs a port or an http.Server');
    const ttlMs = 10_000;
    const check: CheckSpec = base.check ?? { kind: 'ttl', ttlMs };
    const body: ServiceSpec = { ...base, port, check };
    const registration = await this.#api<Registration>('POST', '/v1/services', body);
    this.#handles.add(registration.id);
    // The lifecycle stream names the services this app answers for: reopen it to add this one.
    if (this.#lifecycle) {
      this.#lifecycle.abort();
      this.#openLifecycle();
    }
    let heartbeat: NodeJS.Timeout | undefined;
    if (!base.check) {
      const beat = () => void this.#api('PUT', `/v1/services/${encodeURIComponent(registration.id)}/heartbeat`, {}).catch(() => undefined);
      beat();
      heartbeat = setInterval(beat, Math.floor(ttlMs / 3));
      heartbeat.unref();
    }
    let closing: Promise<void> | undefined;
    const onSignal = (signal: NodeJS.Signals) => {
      void handle.close().finally(() => {
        // Let the signal do what it would have done had we not listened, unless the app handles it too.
        if (process.listenerCount(signal) === 0) process.kill(process.pid, signal);
      });
    };
    const handle: ServiceHandle = {
      id: registration.id,
      port,
      registration,
      close: () => {
        closing ??= (async () => {
          if (heartbeat) clearInterval(heartbeat);
          this.#handles.delete(registration.id);
          process.removeListener('SIGTERM', onSignal);
          process.removeListener('SIGINT', onSignal);
          try {
            await this.#api('DELETE', `/v1/services/${encodeURIComponent(registration.id)}`);
          } catch (err) {
            if (!(err instanceof TandemError && err.statusCode === 404)) throw err;
          }
        })();
        return closing;
      },
    };
    if (opts.deregisterOnSignal !== false) {
      process.once('SIGTERM', onSignal);
      process.once('SIGINT', onSignal);
    }
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
    return this.#send(`${proxy}/${pathTarget(target)}${path.startsWith('/') ? path : `/${path}`}`, init);
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
    if (!m || url.protocol !== 'http:') return this.#send(url.toString(), init);
    const proxy = await this.proxyUrl();
    return this.#send(`${proxy}/${m[1]}${url.pathname}${url.search}`, init);
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
    return this.#api<ResolvedInstance>('GET', `/v1/resolve/${encodeURIComponent(service)}${q.size ? `?${q}` : ''}`);
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
    return (await this.#api<{ instances: InstanceInfo[] }>('GET', `/v1/instances/${encodeURIComponent(service)}${q}`)).instances;
  }

  /**
   * Live `added`/`removed` events for the routable (healthy, in range) instances of a service. The
   * current ones arrive as `added` first. Reconnects if the sidecar restarts (and reports what changed
   * meanwhile). Returns the function that stops watching.
   *
   * @example
   * ```ts
   * const stop = tandem.watch('users@^1', (e) => console.log(e.type, e.instance.id));
   * stop();
   * ```
   */
  watch(target: string, listener: (event: WatchEvent) => void, opts: { onError?: (err: TandemError) => void } = {}): () => void {
    const { service, range } = splitTarget(target);
    const path = `/v1/watch/${encodeURIComponent(service)}${range ? `?range=${encodeURIComponent(range)}` : ''}`;
    const ctrl = new AbortController();
    const known = new Map<string, InstanceInfo>();
    const apply = (event: string, data: string) => {
      if (event === 'reset') {
        const now = new Map((JSON.parse(data) as { instances: InstanceInfo[] }).instances.map((i) => [i.id, i]));
        const removed = [...known.values()].filter((i) => !now.has(i.id));
        const added = [...now.values()].filter((i) => !known.has(i.id));
        for (const i of removed) {
          known.delete(i.id);
          listener({ type: 'removed', instance: i });
        }
        for (const i of added) {
          known.set(i.id, i);
          listener({ type: 'added', instance: i });
        }
      } else if (event === 'added' || event === 'removed') {
        const i = JSON.parse(data) as InstanceInfo;
        if (event === 'added') known.set(i.id, i);
        else known.delete(i.id);
        listener({ type: event, instance: i });
      }
    };
    this.#stream(() => path, apply, ctrl.signal, opts.onError);
    return () => ctrl.abort();
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
  async waitFor(targets: string | readonly string[], opts: { timeoutMs: number; intervalMs?: number }): Promise<void> {
    const list = typeof targets === 'string' ? [targets] : [...targets];
    const deadline = Date.now() + opts.timeoutMs;
    let missing = list;
    for (;;) {
      const ready = await Promise.all(
        missing.map(async (t) => {
          try {
            return (await this.instances(t)).some((i) => i.healthy && !i.ejected);
          } catch (err) {
            if (err instanceof TandemError && err.code === 'TANDEM_ERR_SIDECAR_UNREACHABLE') throw err;
            return false;
          }
        }),
      );
      missing = missing.filter((_, i) => !ready[i]);
      if (missing.length === 0) return;
      if (Date.now() >= deadline) throw new TandemError('TANDEM_ERR_WAIT_TIMEOUT', 504, `still no healthy instance after ${opts.timeoutMs} ms for: ${missing.join(', ')}`);
      await new Promise((r) => setTimeout(r, Math.min(opts.intervalMs ?? 200, Math.max(0, deadline - Date.now()))));
    }
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
    return this.#api('POST', `/v1/events/${encodeURIComponent(topic)}`, payload === undefined ? null : payload);
  }

  /**
   * Receives every event published to `topic` after this call, on any host, each publisher's in order,
   * exactly once (the SDK drops the duplicates that at-least-once delivery can bring). Survives a
   * sidecar restart: what was published meanwhile arrives after the reconnect (within the retention
   * window). Returns the function that stops it.
   *
   * @example
   * ```ts
   * const stop = tandem.subscribe('orders.created', (payload, event) => console.log(event.id, payload));
   * ```
   */
  subscribe(topic: string, handler: (payload: unknown, event: TandemEvent) => void, opts: { onError?: (err: TandemError) => void } = {}): () => void {
    const ctrl = new AbortController();
    let cursor: Record<string, number> | undefined;
    const path = () => `/v1/events/${encodeURIComponent(topic)}${cursor ? `?cursor=${encodeURIComponent(JSON.stringify(cursor))}` : ''}`;
    this.#stream(
      path,
      (event, data) => {
        if (event === 'cursor') {
          cursor ??= JSON.parse(data) as Record<string, number>;
          return;
        }
        if (event !== 'event') return;
        const e = JSON.parse(data) as TandemEvent;
        cursor ??= {};
        if (e.seq <= (cursor[e.publisher] ?? 0)) return; // a duplicate (at-least-once delivery)
        cursor[e.publisher] = e.seq;
        handler(e.payload, e);
      },
      ctrl.signal,
      opts.onError,
    );
    return () => ctrl.abort();
  }

  /** Reads a server-sent event stream, reconnecting (with backoff) until `signal` aborts. */
  #stream(path: () => string, onEvent: (event: string, data: string) => void, signal: AbortSignal, onError?: (err: TandemError) => void, method = 'GET', onDisconnect?: () => void): void {
    void (async () => {
      let delay = 100;
      while (!signal.aborted) {
        try {
          const res = await fetch(`${this.url}${path()}`, { method, headers: this.#headers(), signal });
          if (!res.ok || !res.body) throw await toError(res);
          delay = 100;
          const decoder = new TextDecoder();
          let buf = '';
          for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
            buf += decoder.decode(chunk, { stream: true });
            let end;
            while ((end = buf.indexOf('\n\n')) !== -1) {
              const block = buf.slice(0, end);
              buf = buf.slice(end + 2);
              let event = 'message';
              let data = '';
              for (const line of block.split('\n')) {
                if (line.startsWith('event: ')) event = line.slice(7);
                else if (line.startsWith('data: ')) data += line.slice(6);
              }
              if (data) onEvent(event, data);
            }
          }
        } catch (err) {
          if (signal.aborted) return;
          onError?.(err instanceof TandemError ? err : this.#unreachable(err));
        }
        if (signal.aborted) return;
        onDisconnect?.();
        await new Promise((r) => setTimeout(r, delay));
        delay = Math.min(delay * 2, 2000);
      }
    })();
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
   * await election.resign();
   * ```
   */
  elect(group: string, opts: { service: ServiceHandle | string; onPromote: (info: LeaderInfo) => void; onDemote: (reason: string) => void; onError?: (err: TandemError) => void }): Election {
    const id = typeof opts.service === 'string' ? opts.service : opts.service.id;
    const ctrl = new AbortController();
    let leader = false;
    const demote = (reason: string) => {
      if (!leader) return;
      leader = false;
      opts.onDemote(reason);
    };
    this.#stream(
      () => `/v1/leaders/${encodeURIComponent(group)}/campaign?serviceId=${encodeURIComponent(id)}`,
      (event, data) => {
        if (event === 'promoted' && !leader) {
          leader = true;
          opts.onPromote(JSON.parse(data) as LeaderInfo);
        } else if (event === 'demoted') demote((JSON.parse(data) as { reason: string }).reason);
        else if (event === 'error') opts.onError?.(new TandemError('TANDEM_ERR_ELECTION', 503, (JSON.parse(data) as { message: string }).message));
      },
      ctrl.signal,
      opts.onError,
      'POST',
      () => demote('lost the connection to the sidecar'),
    );
    return {
      get leader() {
        return leader;
      },
      resign: async () => {
        ctrl.abort();
        demote('resigned');
        // The sidecar resigns (releases the lock) when the stream closes; give it a moment to do so.
        await new Promise((r) => setTimeout(r, 50));
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
    return (await this.#api<{ leader: LeaderInfo | null }>('GET', `/v1/leaders/${encodeURIComponent(group)}`)).leader;
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
    return this.#api<Member[]>('GET', `/v1/members${q.size ? `?${q}` : ''}`);
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
    await Promise.all([...this.#handles].map((id) => this.#api('POST', `/v1/services/${encodeURIComponent(id)}/ready-to-stop`)));
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
    const counts = new Map<string, Set<string>>(targets.map((t) => [t, new Set<string>()]));
    let ready = false;
    const check = (changed: string) => {
      const all = [...counts.values()].every((s) => s.size > 0);
      if (all && !ready) {
        ready = true;
        this.emit('ready', [...targets]);
      } else if (!all && ready && (counts.get(changed)?.size ?? 0) === 0) {
        ready = false;
        this.emit('lost', changed);
      }
    };
    const stops = targets.map((t) =>
      this.watch(t, (e) => {
        const set = counts.get(t) as Set<string>;
        if (e.type === 'added') set.add(e.instance.id);
        else set.delete(e.instance.id);
        check(t);
      }),
    );
    return () => stops.forEach((s) => s());
  }

  #openLifecycle(): void {
    this.#lifecycle = new AbortController();
    this.#stream(
      () => `/v1/lifecycle?services=${encodeURIComponent([...this.#handles].join(','))}`,
      (event, data) => {
        if (event === 'drain' || event === 'undrain' || event === 'drained') this.emit(event, JSON.parse(data));
      },
      this.#lifecycle.signal,
    );
  }

  /** Stops the streams this client opened on its own (the drain lifecycle). */
  close(): void {
    this.#lifecycle?.abort();
  }

  /** The sidecar's proxy address (asked once from the sidecar unless given). */
  async proxyUrl(): Promise<string> {
    this.#proxyUrl ??= normalizeUrl((await this.#api<{ proxy: string }>('GET', '/v1/health')).proxy);
    return this.#proxyUrl;
  }

  async #send(url: string, init: TandemRequestInit): Promise<Response> {
    const { stickyId, instance, timeoutMs, ...rest } = init;
    const headers = new Headers(rest.headers);
    if (stickyId !== undefined) headers.set('x-stickyid', stickyId);
    if (instance !== undefined) headers.set('x-tandem-instance', instance);
    const signals = [rest.signal, timeoutMs !== undefined ? AbortSignal.timeout(timeoutMs) : undefined].filter((s): s is AbortSignal => s != null);
    const req: RequestInit = { ...rest, headers };
    if (signals.length > 0) req.signal = signals.length === 1 ? (signals[0] as AbortSignal) : AbortSignal.any(signals);
    try {
      return await fetch(url, req);
    } catch (err) {
      if ((err as Error).name === 'AbortError' || (err as Error).name === 'TimeoutError') throw err;
      throw this.#unreachable(err, url);
    }
  }

  /** The control API's headers (never sent to services: #send builds its own). */
  #headers(): Record<string, string> {
    const h: Record<string, string> = this.#token ? { authorization: `Bearer ${this.#token}` } : {};
    if (this.#consulToken) h['x-consul-token'] = this.#consulToken;
    return h;
  }

  async #api<T>(method: string, path: string, body?: unknown): Promise<T> {
    const init: RequestInit = { method, headers: this.#headers() };
    if (body !== undefined) {
      init.body = JSON.stringify(body);
      init.headers = { ...this.#headers(), 'content-type': 'application/json' };
    }
    let res: Response;
    try {
      res = await fetch(`${this.url}${path}`, init);
    } catch (err) {
      throw this.#unreachable(err);
    }
    if (!res.ok) throw await toError(res);
    return (await res.json()) as T;
  }

  #unreachable(err: unknown, url = this.url): TandemError {
    const code = (err as { cause?: { code?: string } }).cause?.code;
    return new TandemError('TANDEM_ERR_SIDECAR_UNREACHABLE', 503, `cannot reach ${url}${code ? ` (${code})` : ''}: is the tandem sidecar running at ${this.url}?`, { cause: err });
  }
}

/** `CONSUL_HTTP_TOKEN`, else the content of `CONSUL_HTTP_TOKEN_FILE` (as the consul CLI reads them). */
function envConsulToken(): string | undefined {
  const token = process.env['CONSUL_HTTP_TOKEN'];
  if (token) return token.trim();
  const file = process.env['CONSUL_HTTP_TOKEN_FILE'];
  if (!file) return undefined;
  try {
    return readFileSync(file, 'utf8').trim();
  } catch (err) {
    throw new TandemError('TANDEM_ERR_INVALID_CONFIG', 400, `cannot read CONSUL_HTTP_TOKEN_FILE (${(err as NodeJS.ErrnoException).code ?? 'error'})`, { cause: err });
  }
}

function parseShorthand(s: string): Omit<ServiceSpec, 'port'> {
  const at = s.lastIndexOf('@');
  if (at <= 0) throw new TandemError('TANDEM_ERR_INVALID_SERVICE', 400, `'${s}' is not 'name@version'`);
  return { name: s.slice(0, at), version: s.slice(at + 1) };
}

async function toError(res: Response): Promise<TandemError> {
  let body: Partial<ErrorBody> = {};
  try {
    body = (await res.json()) as Partial<ErrorBody>;
  } catch {
    // not JSON
  }
  return new TandemError(body.code ?? 'TANDEM_ERR_HTTP', body.statusCode ?? res.status, body.message ?? `the sidecar answered ${res.status}`);
}
