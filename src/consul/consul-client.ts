// The typed Consul client: the only module that talks to Consul, with a hard bound on its connections to each agent.
import { EventEmitter } from 'node:events';
import { Agent as HttpAgent } from 'node:http';
import { Agent as HttpsAgent } from 'node:https';
import Consul from 'consul';
import type { BlockingResult } from './blocking-query.ts';
import { ConnectionBudget } from './connection-budget.ts';
import { asStatus, consulDuration, mapError, toHealthEntry, type AgentSelf, type ConsulServiceDefinition, type HealthEntry, type KvEntry, type LocalCheck, type LocalService } from './consul-types.ts';
import { ConsulRejectedError, ConsulUnavailableError } from './errors.ts';

export type { AgentSelf, ConsulCheckDefinition, ConsulServiceDefinition, HealthEntry, KvEntry, LocalCheck, LocalService } from './consul-types.ts';
export type { BlockingResult } from './blocking-query.ts';
export { consulDuration } from './consul-types.ts';

export interface ConsulClientOptions {
  /** Base URL, e.g. `http://127.0.0.1:8500`. */
  address: string;
  token?: string | undefined;
  datacenter?: string | undefined;
  requestTimeoutMs: number;
  /** Other agents to read from when the local one does not answer (writes always go to `address`). */
  fallbackAddresses?: readonly string[] | undefined;
  /** Read with `?stale` (any server answers), re-reading consistently when the answer is older than `maxStaleMs`. */
  staleReads?: boolean | undefined;
  maxStaleMs?: number | undefined;
  /** Most connections open to any one agent (Consul allows 200 per client IP). Default 120. */
  maxConnections?: number | undefined;
  /** Blocking-query room kept for the sidecar's own watches (drain, names, events, elections, upstreams). Default min(16, a quarter of the watch room). */
  reservedWatches?: number | undefined;
}

/** Per-call credentials: a caller's own token replaces the sidecar's for that one write. */
export interface CallOptions {
  token?: string | undefined;
}

interface RawResponse {
  statusCode: number;
  headers: Record<string, string | undefined>;
}
type RawOpts = Record<string, unknown>;
type RawCall = (opts: RawOpts) => Promise<unknown>;
/** The part of node-consul's surface we use; its own typings leave most of it as `any`. */
interface RawConsul {
  agent: { self: RawCall; service: { register: RawCall; deregister: RawCall; maintenance: RawCall; list: RawCall }; check: { pass: RawCall; list: RawCall } };
  health: { service: RawCall; state: RawCall };
  catalog: { service: { list: RawCall } };
  kv: { get: RawCall; keys: RawCall; set: RawCall; del: RawCall };
  session: { create: RawCall; destroy: RawCall; renew: RawCall; info: RawCall };
  destroy(): void;
}

/** One agent: short calls and blocking queries on separate socket pools, each with a hard cap. */
interface AgentLink {
  address: string;
  calls: RawConsul;
  watches: RawConsul;
  agents: (HttpAgent | HttpsAgent)[];
}

/**
 * Every Consul call of the sidecar. Connections to one agent never exceed `maxConnections`: short
 * calls share a small pool (`callConnections`), blocking queries the rest, each an HTTP agent with a
 * hard socket limit. `budget` admits blocking queries into their pool, so a query is refused (and
 * its caller served another way) instead of queueing behind others for minutes.
 */
export class ConsulClient {
  readonly address: string;
  readonly budget: ConnectionBudget;
  readonly maxConnections: number;
  readonly callConnections: number;
  /** Told about every failed call (for metrics), with a short operation name. */
  onError: ((operation: string) => void) | undefined;
  #links: AgentLink[];
  #reader = 0;
  #requestTimeoutMs: number;
  #staleReads: boolean;
  #maxStaleMs: number;

  constructor(opts: ConsulClientOptions) {
    const url = new URL(opts.address);
    this.address = url.origin;
    this.#requestTimeoutMs = opts.requestTimeoutMs;
    this.#staleReads = opts.staleReads ?? false;
    this.#maxStaleMs = opts.maxStaleMs ?? 5000;
    this.maxConnections = opts.maxConnections ?? 120;
    // Short calls (registrations, heartbeats, KV writes) rarely overlap much: an eighth, at least 4.
    this.callConnections = Math.max(4, Math.floor(this.maxConnections / 8));
    const watchCapacity = Math.max(1, this.maxConnections - this.callConnections);
    // Reserved room: 16 watches, but never more than a quarter of a small budget (shared watches need room too).
    this.budget = new ConnectionBudget({ capacity: watchCapacity, reserved: Math.min(watchCapacity, opts.reservedWatches ?? Math.min(16, Math.floor(watchCapacity / 4))) });
    const defaults: Record<string, string> = {};
    // The token goes only into this header default; it is never logged or put in an error.
    if (opts.token) defaults['token'] = opts.token;
    if (opts.datacenter) defaults['dc'] = opts.datacenter;
    const link = (u: URL): AgentLink => {
      const secure = u.protocol === 'https:';
      const make = (maxSockets: number) => {
        const agent = secure ? new HttpsAgent({ keepAlive: true, maxSockets, maxTotalSockets: maxSockets, maxFreeSockets: Math.min(maxSockets, 8) }) : new HttpAgent({ keepAlive: true, maxSockets, maxTotalSockets: maxSockets, maxFreeSockets: Math.min(maxSockets, 8) });
        const raw = new Consul({ host: u.hostname.replace(/^\[|\]$/g, ''), port: Number(u.port || (secure ? 443 : 80)), secure, defaults, agent }) as unknown as RawConsul;
        return { agent, raw };
      };
      const c = make(this.callConnections);
      const w = make(watchCapacity);
      return { address: u.origin, calls: c.raw, watches: w.raw, agents: [c.agent, w.agent] };
    };
    this.#links = [link(url)];
    for (const a of opts.fallbackAddresses ?? []) {
      const u = new URL(a);
      if (u.origin !== this.address) this.#links.push(link(u));
    }
  }

  get #local(): AgentLink {
    return this.#links[0] as AgentLink;
  }

  /** The agent reads currently go to. */
  get readAddress(): string {
    return this.#links[this.#reader]?.address ?? this.address;
  }

  /** Sockets open to the local agent right now (busy and idle), for status and metrics. */
  connections(): { open: number; busy: number; max: number } {
    let open = 0;
    let busy = 0;
    for (const a of this.#local.agents) {
      for (const list of Object.values(a.sockets)) busy += list?.length ?? 0;
      for (const list of Object.values(a.freeSockets)) open += list?.length ?? 0;
    }
    return { open: open + busy, busy, max: this.maxConnections };
  }

  close(): void {
    for (const l of this.#links) {
      l.calls.destroy();
      l.watches.destroy();
    }
  }

  #timeout(index: number, waitMs: number): number {
    // Above Consul's wait plus its jitter (wait/16), plus the usual margin.
    return index > 0 ? Math.ceil((waitMs * 17) / 16) + this.#requestTimeoutMs : this.#requestTimeoutMs;
  }

  #opts(extra: RawOpts, call?: CallOptions): RawOpts {
    const o: RawOpts = { timeout: this.#requestTimeoutMs, ...extra };
    if (call?.token !== undefined) o['token'] = call.token;
    return o;
  }

  async agentSelf(): Promise<AgentSelf> {
    const body = (await this.#call('read the agent configuration', () => this.#local.calls.agent.self(this.#opts({})))) as {
      Config?: { NodeName?: string; AdvertiseAddr?: string; Datacenter?: string; Version?: string };
      DebugConfig?: { ACLsEnabled?: boolean };
      Member?: { Addr?: string };
    };
    return {
      nodeName: body.Config?.NodeName ?? '',
      advertiseAddress: body.Config?.AdvertiseAddr ?? body.Member?.Addr ?? '127.0.0.1',
      datacenter: body.Config?.Datacenter ?? '',
      version: body.Config?.Version ?? '',
      // Verified on Consul 1.8.7: DebugConfig.ACLsEnabled is true/false as configured. An agent that does not say is "unknown", never "off".
      aclsEnabled: typeof body.DebugConfig?.ACLsEnabled === 'boolean' ? body.DebugConfig.ACLsEnabled : undefined,
    };
  }

  async registerService(def: ConsulServiceDefinition, call?: CallOptions): Promise<void> {
    await this.#call(`register service '${def.ID}'`, () => this.#local.calls.agent.service.register(this.#opts({ ...def }, call)));
  }

  async deregisterService(id: string, call?: CallOptions): Promise<void> {
    await this.#call(`deregister service '${id}'`, () => this.#local.calls.agent.service.deregister(this.#opts({ id }, call)));
  }

  async setMaintenance(id: string, enable: boolean, reason?: string, call?: CallOptions): Promise<void> {
    const opts = this.#opts({ id, enable }, call);
    if (reason) opts['reason'] = reason;
    await this.#call(`${enable ? 'enable' : 'disable'} maintenance of '${id}'`, () => this.#local.calls.agent.service.maintenance(opts));
  }

  async passCheck(checkId: string, note?: string, call?: CallOptions): Promise<void> {
    const opts = this.#opts({ id: checkId }, call);
    if (note) opts['note'] = note;
    await this.#call(`pass check '${checkId}'`, () => this.#local.calls.agent.check.pass(opts));
  }

  async localServices(): Promise<Map<string, LocalService>> {
    const body = (await this.#call('list the agent services', () => this.#local.calls.agent.service.list(this.#opts({})))) as Record<
      string,
      { ID: string; Service: string; Port: number; Meta?: Record<string, string> | null; Tags?: string[] | null }
    >;
    const out = new Map<string, LocalService>();
    for (const s of Object.values(body ?? {})) out.set(s.ID, { id: s.ID, name: s.Service, port: s.Port, meta: s.Meta ?? {}, tags: s.Tags ?? [] });
    return out;
  }

  async localChecks(): Promise<LocalCheck[]> {
    const body = (await this.#call('list the agent checks', () => this.#local.calls.agent.check.list(this.#opts({})))) as Record<
      string,
      { CheckID: string; ServiceID: string; Name: string; Status: string; Output: string }
    >;
    return Object.values(body ?? {}).map((c) => ({ checkId: c.CheckID, serviceId: c.ServiceID, name: c.Name, status: asStatus(c.Status), output: c.Output }));
  }

  /**
   * One (blocking) read of `/v1/health/service/<name>`: with `index` > 0 it waits up to `waitMs` for
   * a change. Reads fail over across agents: the one that answered last first, then the others.
   */
  async healthService(name: string, opts: { index: number; waitMs: number; passing: boolean; signal?: AbortSignal }): Promise<BlockingResult<HealthEntry[]>> {
    let lastErr: unknown;
    for (let i = 0; i < this.#links.length; i++) {
      const at = (this.#reader + i) % this.#links.length;
      const link = this.#links[at] as AgentLink;
      try {
        let r = await this.#healthOnce(link, name, { ...opts, stale: this.#staleReads });
        // A stale read from a server out of touch with the leader for too long: ask consistently.
        if (this.#staleReads && r.lastContactMs > this.#maxStaleMs) r = await this.#healthOnce(link, name, { ...opts, index: 0, stale: false });
        this.#reader = at;
        return r;
      } catch (err) {
        if (!(err instanceof ConsulUnavailableError) || opts.signal?.aborted) throw err;
        lastErr = err;
      }
    }
    throw lastErr;
  }

  async #healthOnce(link: AgentLink, name: string, opts: { index: number; waitMs: number; passing: boolean; stale: boolean; signal?: AbortSignal }): Promise<BlockingResult<HealthEntry[]>> {
    const extra: RawOpts = { service: name, passing: opts.passing, timeout: this.#timeout(opts.index, opts.waitMs) };
    if (opts.stale) extra['stale'] = true;
    const [res, body] = await this.#blocking<unknown[]>(link, `read the health of '${name}'`, (raw, o) => raw.health.service(o), extra, opts);
    return { ...meta(res), value: (body ?? []).map(toHealthEntry) };
  }

  /** Every service name in the catalog (blocking with `index` > 0): one watch answers "does it exist" for all names. */
  async catalogServices(opts: { index: number; waitMs: number; signal?: AbortSignal } = { index: 0, waitMs: 0 }): Promise<BlockingResult<string[]>> {
    const [res, body] = await this.#blocking<Record<string, string[]>>(this.#local, 'list the catalog services', (raw, o) => raw.catalog.service.list(o), { timeout: this.#timeout(opts.index, opts.waitMs) }, opts);
    return { ...meta(res), value: Object.keys(body ?? {}).sort() };
  }

  /**
   * `/v1/health/state/any` (blocking): its index moves with every check change anywhere — the shared
   * change detector for services not watched one by one. Answers the number of checks only.
   */
  async healthStateAny(opts: { index: number; waitMs: number; signal?: AbortSignal }): Promise<BlockingResult<number>> {
    const [res, body] = await this.#blocking<unknown[]>(this.#local, 'read every check state', (raw, o) => raw.health.state(o), { state: 'any', timeout: this.#timeout(opts.index, opts.waitMs) }, opts);
    return { ...meta(res), value: (body ?? []).length };
  }

  /** The keys under `prefix` (blocking with `index` > 0); an absent prefix is an empty list. */
  async kvKeys(prefix: string, opts: { index: number; waitMs: number; signal?: AbortSignal }): Promise<BlockingResult<string[]>> {
    try {
      const [res, body] = await this.#blocking<string[]>(this.#local, `list the keys under '${prefix}'`, (raw, o) => raw.kv.keys(o), { key: prefix, timeout: this.#timeout(opts.index, opts.waitMs) }, opts, true);
      return { ...meta(res), value: body ?? [] };
    } catch (err) {
      // 404 = nothing under the prefix yet; its index still blocks the next query.
      const nf = notFound(err);
      if (nf) return { ...meta(nf), value: [] };
      throw mapError(`list the keys under '${prefix}'`, err);
    }
  }

  /** Every entry under `prefix` with its value (blocking with `index` > 0). */
  async kvList(prefix: string, opts: { index: number; waitMs: number; signal?: AbortSignal }): Promise<BlockingResult<KvEntry[]>> {
    const [res, body] = await this.#blocking<RawKv[] | undefined>(this.#local, `read the keys under '${prefix}'`, (raw, o) => raw.kv.get(o), { key: prefix, recurse: true, timeout: this.#timeout(opts.index, opts.waitMs) }, opts);
    return { ...meta(res), value: (Array.isArray(body) ? body : []).map(toKv) };
  }

  /** One key (blocking with `index` > 0), or undefined when it does not exist. */
  async kvGet(key: string, opts: { index?: number; waitMs?: number; signal?: AbortSignal } = {}): Promise<BlockingResult<KvEntry | undefined>> {
    const index = opts.index ?? 0;
    const waitMs = opts.waitMs ?? 0;
    const [res, body] = await this.#blocking<RawKv | undefined>(this.#local, `read the key '${key}'`, (raw, o) => raw.kv.get(o), { key, timeout: this.#timeout(index, waitMs) }, { index, waitMs, ...(opts.signal ? { signal: opts.signal } : {}) });
    return { ...meta(res), value: body ? toKv(body) : undefined };
  }

  /** Writes a key; false when a `cas` or lock (`acquire`/`release`) condition did not hold. */
  async kvPut(key: string, value: string, opts: { cas?: number; acquire?: string; release?: string } = {}, call?: CallOptions): Promise<boolean> {
    const raw = this.#opts({ key, value }, call);
    if (opts.cas !== undefined) raw['cas'] = opts.cas;
    if (opts.acquire !== undefined) raw['acquire'] = opts.acquire;
    if (opts.release !== undefined) raw['release'] = opts.release;
    // node-consul answers `undefined` (not false) when the condition fails.
    return (await this.#call(`write the key '${key}'`, () => this.#local.calls.kv.set(raw))) === true;
  }

  async kvDelete(key: string, opts: { recurse?: boolean } = {}, call?: CallOptions): Promise<void> {
    await this.#call(`delete the key '${key}'`, () => this.#local.calls.kv.del(this.#opts({ key, recurse: opts.recurse ?? false }, call)));
  }

  /** A session tied to the given checks, with a TTL the owner must renew. */
  async sessionCreate(opts: { name: string; checks: string[]; lockDelayMs: number; behavior: 'release' | 'delete'; ttlMs?: number }, call?: CallOptions): Promise<string> {
    const o = this.#opts({ name: opts.name, checks: opts.checks, lockdelay: consulDuration(opts.lockDelayMs), behavior: opts.behavior }, call);
    if (opts.ttlMs !== undefined) o['ttl'] = consulDuration(opts.ttlMs);
    const body = (await this.#call('create a session', () => this.#local.calls.session.create(o))) as { ID: string };
    return body.ID;
  }

  /** Renews a TTL session: false when Consul no longer has it (expired or invalidated). */
  async sessionRenew(id: string, call?: CallOptions): Promise<boolean> {
    try {
      const body = await this.#call('renew a session', () => this.#local.calls.session.renew(this.#opts({ id }, call)));
      return Array.isArray(body) ? body.length > 0 : body !== undefined && body !== null;
    } catch (err) {
      if (err instanceof ConsulRejectedError && err.consulStatus === 404) return false;
      throw err;
    }
  }

  /** Whether Consul still has the session (a failed call throws: "unknown" is not "gone"). */
  async sessionExists(id: string): Promise<boolean> {
    const body = await this.#call('read a session', () => this.#local.calls.session.info(this.#opts({ id })));
    return Array.isArray(body) ? body.length > 0 : body !== undefined && body !== null;
  }

  async sessionDestroy(id: string, call?: CallOptions): Promise<void> {
    await this.#call('destroy a session', () => this.#local.calls.session.destroy(this.#opts({ id }, call)));
  }

  /**
   * A read that may block: index > 0 goes to the blocking pool (its room taken from the budget by
   * the BlockingQuery that asks), index 0 to the short-call pool. Cancelled by `signal`.
   */
  async #blocking<B>(
    link: AgentLink,
    action: string,
    fn: (raw: RawConsul, o: RawOpts) => Promise<unknown>,
    extra: RawOpts,
    q: { index: number; waitMs: number; signal?: AbortSignal },
    rawErrors = false,
  ): Promise<[RawResponse, B]> {
    const ctx = Object.assign(new EventEmitter(), { includeResponse: true });
    const onAbort = () => ctx.emit('cancel');
    q.signal?.addEventListener('abort', onAbort, { once: true });
    const o: RawOpts = { ...extra, ctx };
    if (q.index > 0) {
      o['index'] = String(q.index);
      o['wait'] = consulDuration(q.waitMs);
    }
    const raw = q.index > 0 ? link.watches : link.calls;
    try {
      return (await (rawErrors ? fn(raw, o) : this.#call(action, () => fn(raw, o)))) as [RawResponse, B];
    } finally {
      q.signal?.removeEventListener('abort', onAbort);
    }
  }

  /** Runs one node-consul call and maps its failure onto our catalogue; never keeps the raw response. */
  async #call(action: string, fn: () => Promise<unknown>): Promise<unknown> {
    try {
      return await fn();
    } catch (err) {
      const mapped = mapError(action, err);
      if (!(err as { isAbort?: boolean }).isAbort) this.onError?.(action.split(' ')[0] ?? 'call');
      throw mapped;
    }
  }
}

interface RawKv {
  Key: string;
  Value: string | null;
  ModifyIndex: number;
  LockIndex: number;
  Session?: string;
}

function toKv(b: RawKv): KvEntry {
  return { key: b.Key, value: b.Value ?? '', modifyIndex: b.ModifyIndex, lockIndex: b.LockIndex, ...(b.Session ? { session: b.Session } : {}) };
}

function meta(res: RawResponse): { index: number; knownLeader: boolean; lastContactMs: number } {
  return {
    index: Number(res.headers['x-consul-index'] ?? 0),
    knownLeader: res.headers['x-consul-knownleader'] !== 'false',
    lastContactMs: Number(res.headers['x-consul-lastcontact'] ?? 0),
  };
}

function notFound(err: unknown): RawResponse | undefined {
  const e = err as { statusCode?: number; response?: RawResponse };
  return e.statusCode === 404 && e.response ? e.response : undefined;
}
