// A typed wrapper around node-consul: the only module that talks to Consul, and where its errors get our codes.
import { EventEmitter } from 'node:events';
import Consul from 'consul';
import { ConsulPermissionError, ConsulRejectedError, ConsulUnavailableError, TandemError } from './errors.ts';

/** What Consul's `/v1/agent/service/register` takes (the subset Tandem sends). */
export interface ConsulServiceDefinition {
  ID: string;
  Name: string;
  Tags: string[];
  Address: string;
  Port: number;
  Meta: Record<string, string>;
  Check: ConsulCheckDefinition;
}

export interface ConsulCheckDefinition {
  Name: string;
  Notes?: string;
  HTTP?: string;
  TCP?: string;
  TTL?: string;
  Interval?: string;
  Timeout?: string;
  Status?: 'passing' | 'warning' | 'critical';
}

export interface AgentSelf {
  nodeName: string;
  advertiseAddress: string;
  datacenter: string;
  version: string;
}

export interface LocalService {
  id: string;
  name: string;
  port: number;
  meta: Record<string, string>;
  tags: string[];
}

export interface LocalCheck {
  checkId: string;
  serviceId: string;
  name: string;
  status: 'passing' | 'warning' | 'critical';
  output: string;
}

export interface KvEntry {
  key: string;
  value: string;
  modifyIndex: number;
  lockIndex: number;
  session?: string;
}

/** One instance from `/v1/health/service/<name>`. */
export interface HealthEntry {
  node: string;
  nodeAddress: string;
  id: string;
  name: string;
  address: string;
  port: number;
  tags: string[];
  meta: Record<string, string>;
  /** Worst status among the instance's checks (node checks included). */
  status: 'passing' | 'warning' | 'critical';
  checks: { checkId: string; name: string; status: 'passing' | 'warning' | 'critical'; notes: string; output: string }[];
}

export interface BlockingResult<T> {
  index: number;
  knownLeader: boolean;
  lastContactMs: number;
  value: T;
}

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
  health: { service: RawCall };
  catalog: { service: { list: RawCall } };
  kv: { get: RawCall; keys: RawCall; set: RawCall; del: RawCall };
  session: { create: RawCall; destroy: RawCall };
  destroy(): void;
}

const STATUS_RANK = { passing: 0, warning: 1, critical: 2 } as const;
type CheckStatus = keyof typeof STATUS_RANK;

function asStatus(v: unknown): CheckStatus {
  return v === 'passing' || v === 'warning' ? v : 'critical';
}

/** Consul's duration syntax. */
export function consulDuration(ms: number): string {
  return ms % 1000 === 0 ? `${ms / 1000}s` : `${ms}ms`;
}

export class ConsulClient {
  readonly address: string;
  /** Told about every failed call (for metrics), with a short operation name. */
  onError: ((operation: string) => void) | undefined;
  #raw: RawConsul;
  /** Local agent first, then the fallbacks; reads stay on the last one that answered. */
  #readers: { address: string; raw: RawConsul }[];
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
    const defaults: Record<string, string> = {};
    // The token goes only into this header default; it is never logged or put in an error.
    if (opts.token) defaults['token'] = opts.token;
    if (opts.datacenter) defaults['dc'] = opts.datacenter;
    const make = (u: URL) =>
      new Consul({
        host: u.hostname.replace(/^\[|\]$/g, ''),
        port: Number(u.port || (u.protocol === 'https:' ? 443 : 80)),
        secure: u.protocol === 'https:',
        defaults,
      }) as unknown as RawConsul;
    this.#raw = make(url);
    this.#readers = [{ address: this.address, raw: this.#raw }];
    for (const a of opts.fallbackAddresses ?? []) {
      const u = new URL(a);
      if (u.origin !== this.address) this.#readers.push({ address: u.origin, raw: make(u) });
    }
  }

  /** The agent reads currently go to. */
  get readAddress(): string {
    return this.#readers[this.#reader]?.address ?? this.address;
  }

  close(): void {
    for (const r of this.#readers) r.raw.destroy();
  }

  async agentSelf(): Promise<AgentSelf> {
    const body = (await this.#call('read the agent configuration', () => this.#raw.agent.self({ timeout: this.#requestTimeoutMs }))) as {
      Config?: { NodeName?: string; AdvertiseAddr?: string; Datacenter?: string; Version?: string };
      Member?: { Addr?: string };
    };
    return {
      nodeName: body.Config?.NodeName ?? '',
      advertiseAddress: body.Config?.AdvertiseAddr ?? body.Member?.Addr ?? '127.0.0.1',
      datacenter: body.Config?.Datacenter ?? '',
      version: body.Config?.Version ?? '',
    };
  }

  async registerService(def: ConsulServiceDefinition): Promise<void> {
    await this.#call(`register service '${def.ID}'`, () => this.#raw.agent.service.register({ ...def, timeout: this.#requestTimeoutMs }));
  }

  async deregisterService(id: string): Promise<void> {
    await this.#call(`deregister service '${id}'`, () => this.#raw.agent.service.deregister({ id, timeout: this.#requestTimeoutMs }));
  }

  async setMaintenance(id: string, enable: boolean, reason?: string): Promise<void> {
    const opts: RawOpts = { id, enable, timeout: this.#requestTimeoutMs };
    if (reason) opts['reason'] = reason;
    await this.#call(`${enable ? 'enable' : 'disable'} maintenance of '${id}'`, () => this.#raw.agent.service.maintenance(opts));
  }

  async passCheck(checkId: string, note?: string): Promise<void> {
    const opts: RawOpts = { id: checkId, timeout: this.#requestTimeoutMs };
    if (note) opts['note'] = note;
    await this.#call(`pass check '${checkId}'`, () => this.#raw.agent.check.pass(opts));
  }

  async localServices(): Promise<Map<string, LocalService>> {
    const body = (await this.#call('list the agent services', () => this.#raw.agent.service.list({ timeout: this.#requestTimeoutMs }))) as Record<
      string,
      { ID: string; Service: string; Port: number; Meta?: Record<string, string> | null; Tags?: string[] | null }
    >;
    const out = new Map<string, LocalService>();
    for (const s of Object.values(body ?? {})) out.set(s.ID, { id: s.ID, name: s.Service, port: s.Port, meta: s.Meta ?? {}, tags: s.Tags ?? [] });
    return out;
  }

  async localChecks(): Promise<LocalCheck[]> {
    const body = (await this.#call('list the agent checks', () => this.#raw.agent.check.list({ timeout: this.#requestTimeoutMs }))) as Record<
      string,
      { CheckID: string; ServiceID: string; Name: string; Status: string; Output: string }
    >;
    return Object.values(body ?? {}).map((c) => ({ checkId: c.CheckID, serviceId: c.ServiceID, name: c.Name, status: asStatus(c.Status), output: c.Output }));
  }

  /**
   * One (blocking) read of `/v1/health/service/<name>`. With `index` > 0 it waits up to `waitMs` for a
   * change. The HTTP timeout sits above Consul's wait plus its jitter (wait/16).
   */
  async healthService(name: string, opts: { index: number; waitMs: number; passing: boolean; signal?: AbortSignal }): Promise<BlockingResult<HealthEntry[]>> {
    // Fail over across agents: the one that answered last first, then the others in order.
    let lastErr: unknown;
    for (let i = 0; i < this.#readers.length; i++) {
      const at = (this.#reader + i) % this.#readers.length;
      const reader = this.#readers[at] as { address: string; raw: RawConsul };
      try {
        let r = await this.#healthOnce(reader.raw, name, { ...opts, stale: this.#staleReads });
        // A stale read from a server out of touch with the leader for too long: ask consistently.
        if (this.#staleReads && r.lastContactMs > this.#maxStaleMs) r = await this.#healthOnce(reader.raw, name, { ...opts, index: 0, stale: false });
        this.#reader = at;
        return r;
      } catch (err) {
        if (!(err instanceof ConsulUnavailableError) || opts.signal?.aborted) throw err;
        lastErr = err;
      }
    }
    throw lastErr;
  }

  async #healthOnce(raw: RawConsul, name: string, opts: { index: number; waitMs: number; passing: boolean; stale: boolean; signal?: AbortSignal }): Promise<BlockingResult<HealthEntry[]>> {
    const ctx = Object.assign(new EventEmitter(), { includeResponse: true });
    const onAbort = () => ctx.emit('cancel');
    opts.signal?.addEventListener('abort', onAbort, { once: true });
    const opts2: RawOpts = {
      service: name,
      passing: opts.passing,
      ctx,
      timeout: opts.index > 0 ? Math.ceil((opts.waitMs * 17) / 16) + this.#requestTimeoutMs : this.#requestTimeoutMs,
    };
    if (opts.index > 0) {
      opts2['index'] = String(opts.index);
      opts2['wait'] = consulDuration(opts.waitMs);
    }
    if (opts.stale) opts2['stale'] = true;
    try {
      const [res, body] = (await this.#call(`read the health of '${name}'`, () => raw.health.service(opts2))) as [RawResponse, unknown[]];
      return {
        index: Number(res.headers['x-consul-index'] ?? 0),
        knownLeader: res.headers['x-consul-knownleader'] !== 'false',
        lastContactMs: Number(res.headers['x-consul-lastcontact'] ?? 0),
        value: (body ?? []).map(toHealthEntry),
      };
    } finally {
      opts.signal?.removeEventListener('abort', onAbort);
    }
  }

  /** Every service name in the catalog (`/v1/catalog/services`). */
  async catalogServices(): Promise<string[]> {
    const body = (await this.#call('list the catalog services', () => this.#raw.catalog.service.list({ timeout: this.#requestTimeoutMs }))) as Record<string, string[]>;
    return Object.keys(body ?? {}).sort();
  }

  /** The keys under `prefix` (blocking with `index` > 0); an absent prefix is an empty list. */
  async kvKeys(prefix: string, opts: { index: number; waitMs: number; signal?: AbortSignal }): Promise<BlockingResult<string[]>> {
    const ctx = Object.assign(new EventEmitter(), { includeResponse: true });
    const onAbort = () => ctx.emit('cancel');
    opts.signal?.addEventListener('abort', onAbort, { once: true });
    const raw: RawOpts = { key: prefix, ctx, timeout: opts.index > 0 ? Math.ceil((opts.waitMs * 17) / 16) + this.#requestTimeoutMs : this.#requestTimeoutMs };
    if (opts.index > 0) {
      raw['index'] = String(opts.index);
      raw['wait'] = consulDuration(opts.waitMs);
    }
    try {
      const [res, body] = (await this.#raw.kv.keys(raw)) as [RawResponse, string[] | undefined];
      return { index: Number(res.headers['x-consul-index'] ?? 0), knownLeader: true, lastContactMs: 0, value: body ?? [] };
    } catch (err) {
      const e = err as { statusCode?: number; response?: RawResponse };
      // 404 = nothing under the prefix yet; its index still blocks the next query.
      if (e.statusCode === 404 && e.response) return { index: Number(e.response.headers['x-consul-index'] ?? 0), knownLeader: true, lastContactMs: 0, value: [] };
      throw mapError(`list the keys under '${prefix}'`, err);
    } finally {
      opts.signal?.removeEventListener('abort', onAbort);
    }
  }

  /** One key (blocking with `index` > 0), or undefined when it does not exist. */
  async kvGet(key: string, opts: { index?: number; waitMs?: number; signal?: AbortSignal } = {}): Promise<BlockingResult<KvEntry | undefined>> {
    const ctx = Object.assign(new EventEmitter(), { includeResponse: true });
    const onAbort = () => ctx.emit('cancel');
    opts.signal?.addEventListener('abort', onAbort, { once: true });
    const index = opts.index ?? 0;
    const waitMs = opts.waitMs ?? 0;
    const raw: RawOpts = { key, ctx, timeout: index > 0 ? Math.ceil((waitMs * 17) / 16) + this.#requestTimeoutMs : this.#requestTimeoutMs };
    if (index > 0) {
      raw['index'] = String(index);
      raw['wait'] = consulDuration(waitMs);
    }
    try {
      const [res, body] = (await this.#call(`read the key '${key}'`, () => this.#raw.kv.get(raw))) as [RawResponse, { Key: string; Value: string | null; ModifyIndex: number; LockIndex: number; Session?: string } | undefined];
      return {
        index: Number(res.headers['x-consul-index'] ?? 0),
        knownLeader: true,
        lastContactMs: 0,
        value: body ? { key: body.Key, value: body.Value ?? '', modifyIndex: body.ModifyIndex, lockIndex: body.LockIndex, ...(body.Session ? { session: body.Session } : {}) } : undefined,
      };
    } finally {
      opts.signal?.removeEventListener('abort', onAbort);
    }
  }

  /** Writes a key; false when a `cas` or lock (`acquire`/`release`) condition did not hold. */
  async kvPut(key: string, value: string, opts: { cas?: number; acquire?: string; release?: string } = {}): Promise<boolean> {
    const raw: RawOpts = { key, value, timeout: this.#requestTimeoutMs };
    if (opts.cas !== undefined) raw['cas'] = opts.cas;
    if (opts.acquire !== undefined) raw['acquire'] = opts.acquire;
    if (opts.release !== undefined) raw['release'] = opts.release;
    // node-consul answers `undefined` (not false) when the condition fails.
    return (await this.#call(`write the key '${key}'`, () => this.#raw.kv.set(raw))) === true;
  }

  async kvDelete(key: string, opts: { recurse?: boolean } = {}): Promise<void> {
    await this.#call(`delete the key '${key}'`, () => this.#raw.kv.del({ key, recurse: opts.recurse ?? false, timeout: this.#requestTimeoutMs }));
  }

  /** A session tied to the given checks (serfHealth is always included by Consul when `checks` lists it). */
  async sessionCreate(opts: { name: string; checks: string[]; lockDelayMs: number; behavior: 'release' | 'delete' }): Promise<string> {
    const body = (await this.#call('create a session', () =>
      this.#raw.session.create({ name: opts.name, checks: opts.checks, lockdelay: consulDuration(opts.lockDelayMs), behavior: opts.behavior, timeout: this.#requestTimeoutMs }),
    )) as { ID: string };
    return body.ID;
  }

  async sessionDestroy(id: string): Promise<void> {
    await this.#call('destroy a session', () => this.#raw.session.destroy({ id, timeout: this.#requestTimeoutMs }));
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

function toHealthEntry(raw: unknown): HealthEntry {
  const e = raw as {
    Node: { Node: string; Address: string };
    Service: { ID: string; Service: string; Address: string; Port: number; Tags: string[] | null; Meta: Record<string, string> | null };
    Checks: { CheckID: string; Name: string; Status: string; Notes?: string; Output?: string }[] | null;
  };
  let worst: CheckStatus = 'passing';
  for (const c of e.Checks ?? []) {
    const s = asStatus(c.Status);
    if (STATUS_RANK[s] > STATUS_RANK[worst]) worst = s;
  }
  return {
    node: e.Node.Node,
    nodeAddress: e.Node.Address,
    id: e.Service.ID,
    name: e.Service.Service,
    // An empty service address means "the node's address" in Consul.
    address: e.Service.Address || e.Node.Address,
    port: e.Service.Port,
    tags: e.Service.Tags ?? [],
    meta: e.Service.Meta ?? {},
    status: worst,
    checks: (e.Checks ?? []).map((c) => ({ checkId: c.CheckID, name: c.Name, status: asStatus(c.Status), notes: c.Notes ?? '', output: c.Output ?? '' })),
  };
}

function mapError(action: string, err: unknown): TandemError {
  if (err instanceof TandemError) return err;
  const e = err as { statusCode?: number; message?: string; code?: string; isPapi?: boolean; isResponse?: boolean };
  const status = typeof e.statusCode === 'number' ? e.statusCode : undefined;
  // node-consul errors keep the whole response; we keep only the status and a short message.
  const detail = String(e.message ?? 'unknown error').replace(/^consul: [\w.]+: /, '').slice(0, 300);
  if (status === 403) return new ConsulPermissionError(action, detail, { cause: new Error(detail) });
  if (status !== undefined && status >= 400 && status < 500) return new ConsulRejectedError(action, status, detail, { cause: new Error(detail) });
  return new ConsulUnavailableError(`Consul is unavailable: could not ${action} (${status ?? e.code ?? detail})`, { cause: new Error(detail) });
}
