// Wire types of the control API, shared by the SDK and the agent (the agent imports them from here).

/**
 * How Consul checks a service's health.
 *
 * - `http`: Consul sends `GET http://<address>:<port><path>` every `intervalMs`; 2xx passes.
 * - `tcp`: Consul opens a TCP connection to `<address>:<port>` every `intervalMs`.
 * - `ttl`: the app (or the SDK) must call the heartbeat route at least every `ttlMs`.
 *
 * @example
 * ```ts
 * const check: CheckSpec = { kind: 'http', path: '/healthz', intervalMs: 5000 };
 * ```
 */
export type CheckSpec =
  | { kind: 'http'; path: string; intervalMs?: number; timeoutMs?: number }
  | { kind: 'tcp'; intervalMs?: number; timeoutMs?: number }
  | { kind: 'ttl'; ttlMs?: number };

/**
 * A service instance to register in Consul through the sidecar.
 *
 * `name` is a DNS label, `version` strict semver, `port` 1-65535. Without `check`, Consul checks the
 * port over TCP. Without `id`, the id is `<name>-<node>-<port>`.
 *
 * @example
 * ```ts
 * const spec: ServiceSpec = { name: 'users', version: '1.2.3', port: 3000, check: { kind: 'http', path: '/health' } };
 * ```
 */
export interface ServiceSpec {
  name: string;
  version: string;
  port: number;
  address?: string;
  id?: string;
  tags?: string[];
  meta?: Record<string, string>;
  check?: CheckSpec;
  /**
   * Requests one calling sidecar may have in flight to this instance at once (a positive integer).
   * Stored as `Meta.tandem_max_inflight`; each calling sidecar counts only its own requests, so the
   * instance may see up to this many per sidecar that calls it.
   */
  maxInFlight?: number;
}

/**
 * Where a registration stands: in Consul, waiting for Consul to be reachable, or being drained.
 *
 * @example
 * ```ts
 * if (reg.state === 'pending') console.log('Consul is unreachable; the sidecar will register it later');
 * ```
 */
export type RegistrationState = 'registered' | 'pending' | 'draining';

/**
 * A registration as the control API reports it.
 *
 * @example
 * ```ts
 * const regs: Registration[] = await (await fetch('http://127.0.0.1:7701/v1/services')).json();
 * ```
 */
export interface Registration {
  id: string;
  name: string;
  version: string;
  address: string;
  port: number;
  tags: string[];
  meta: Record<string, string>;
  check: CheckSpec;
  /** `sidecar` is the sidecar's own `tandem` service. */
  source: 'config' | 'api' | 'sidecar';
  state: RegistrationState;
  /** Consul's aggregated check status, or `unknown` while Consul is unreachable. */
  health: 'passing' | 'warning' | 'critical' | 'maintenance' | 'unknown';
}

/**
 * The JSON body of every error the sidecar answers with (control API and proxy alike).
 *
 * @example
 * ```ts
 * const body = (await res.json()) as ErrorBody;
 * if (body.code === 'TANDEM_ERR_NO_HEALTHY_INSTANCE') retryLater();
 * ```
 */
export interface ErrorBody {
  statusCode: number;
  code: string;
  error: string;
  message: string;
}

/**
 * One instance as the sidecar routes to it (`GET /v1/instances/<service>`, watch events).
 *
 * @example
 * ```ts
 * const healthy = (await tandem.instances('users@^1')).filter((i) => i.healthy && !i.ejected);
 * ```
 */
export interface InstanceInfo {
  id: string;
  address: string;
  port: number;
  version: string;
  node: string;
  /** Passing every Consul check. */
  healthy: boolean;
  /** Held out by the sidecar after consecutive failures. */
  ejected: boolean;
  ejectedUntil?: string;
  /** Newly healthy: getting a ramping share of traffic. */
  slowStart: boolean;
  /** Flapping between passing and critical: held out until stable. */
  flapping: boolean;
  /** The balancer this sidecar uses for the service. */
  balancer?: 'round-robin' | 'least-loaded';
  /**
   * This sidecar's cost inputs for the instance: its requests in flight, the latency estimate (peak
   * EWMA, ms; absent before the first answer), cost = estimate × (inflight + 1), and the instance's limit.
   */
  load?: { inflight: number; ewmaMs?: number | undefined; cost: number; maxInFlight?: number | undefined };
}

/**
 * The instance `resolve()` picked, for protocols other than HTTP.
 *
 * @example
 * ```ts
 * const { address, port } = await tandem.resolve('redis-shard', { stickyId: userId });
 * ```
 */
export interface ResolvedInstance {
  id: string;
  address: string;
  port: number;
  version: string;
  node: string;
  /** Sticky only: the key's own instance could not serve; this is the next one on the ring. */
  moved: boolean;
}

/**
 * One instance's part of a broadcast answer: its response, or the error that ended it.
 *
 * @example
 * ```ts
 * const entries = await tandem.broadcast('cache', '/flush', { method: 'POST' });
 * const failed = entries.filter((e) => 'error' in e);
 * ```
 */
export type BroadcastEntry =
  | { instance: string; version: string; status: number; headers: Record<string, string | string[] | undefined>; body: unknown }
  | { instance: string; version: string; error: { code: string; message: string } };

/**
 * A pub/sub event as subscribers receive it. `id` is unique; `seq` orders one publisher's events.
 *
 * @example
 * ```ts
 * tandem.subscribe('jobs', (payload, e: TandemEvent) => console.log(e.publisher, e.seq, payload));
 * ```
 */
export interface TandemEvent {
  id: string;
  topic: string;
  publisher: string;
  seq: number;
  ts: number;
  payload: unknown;
}

/**
 * A group's leader. `token` (the lock's Consul ModifyIndex) strictly increases from one leader to the
 * next: pass it to storage as a fencing token.
 *
 * @example
 * ```ts
 * tandem.elect('jobs', { service: svc, onPromote: (l: LeaderInfo) => db.setFence(l.token), onDemote: stop });
 * ```
 */
export interface LeaderInfo {
  group: string;
  serviceId: string;
  node: string;
  sidecar: string;
  since: number;
  token: number;
}

/**
 * A campaign started by `elect()`.
 *
 * @example
 * ```ts
 * const e = tandem.elect('jobs', opts);
 * await e.ready; // the sidecar is campaigning (promotion, if it comes, is onPromote's)
 * if (e.leader) await e.resign();
 * ```
 */
export interface Election {
  readonly leader: boolean;
  /**
   * Resolves once the sidecar has started the campaign; pending while it cannot be reached, rejects
   * with an `AbortError` if the campaign ends first (awaiting it is optional).
   */
  readonly ready: Promise<void>;
  resign(): Promise<void>;
}

/**
 * One instance in the cluster directory (`GET /v1/members`).
 *
 * @example
 * ```ts
 * for (const m of await tandem.members({ service: 'users' })) console.log(m.node, m.version, m.health);
 * ```
 */
export interface Member {
  service: string;
  id: string;
  version: string;
  node: string;
  address: string;
  port: number;
  health: 'passing' | 'warning' | 'critical' | 'maintenance';
  /** The maintenance reason (a drain, say). */
  reason?: string;
  sidecar?: string;
}
