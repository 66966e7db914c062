// Keeps this host's services registered in Consul: persists them, re-registers what the agent lost, drains on removal.
// Whose token: a control-API call passes the caller's CallOptions for its one Consul write (Consul's
// ACLs decide). Upkeep of what Consul already accepted (re-registration, restore at start, drain and
// shutdown deregistration) uses the sidecar's token: a caller's token is never kept, and a restarted
// sidecar must restore and remove what it registered without its apps (docs/security.md).
import { setTimeout as sleep } from 'node:timers/promises';
import type { Logger } from 'pino';
import type { Registration, ServiceSpec } from '../protocol/wire.ts';
import type { CallOptions, ConsulClient, LocalCheck } from '../consul/consul-client.ts';
import { errSummary, NotTtlCheckError, ProtectedServiceError, ReservedServiceError, ServiceNotFoundError, ShuttingDownError, TandemError } from '../common/errors.ts';
import { sidecarMarkProblem } from '../common/sidecar-marker.ts';
import { ConsulPermissionError, ConsulUnavailableError } from '../consul/errors.ts';
import { effectiveCheck, serviceId, toConsulDefinition } from './service-definition.ts';
import type { StateStore } from '../common/state-store.ts';

type Source = Registration['source'];

interface Entry {
  id: string;
  spec: ServiceSpec;
  source: Source;
  state: 'registered' | 'pending' | 'draining';
  /**
   * The sidecar is restoring it (config or state at start, or the agent lost it): HTTP/TCP checks are
   * registered passing so routing does not stop for a check interval; the first check run corrects it.
   */
  restore: boolean;
}

export interface RegistrarOptions {
  consul: ConsulClient;
  store: StateStore;
  logger: Logger;
  nodeName: string;
  /** Overrides the address learnt from the local Consul agent. */
  advertiseAddress?: string | undefined;
  syncIntervalMs: number;
  drainMs: number;
  checkIntervalMs: number;
  checkTimeoutMs: number;
  ttlMs: number;
  /** Services from the config file: registered at start, not persisted (the file is their home). */
  configServices: readonly ServiceSpec[];
}

export interface RegisterResult {
  registration: Registration;
  /** True when Consul was unreachable: kept, and registered once Consul answers. */
  pending: boolean;
}

const STATE_FILE = 'registrations';

export class Registrar {
  #o: RegistrarOptions;
  #entries = new Map<string, Entry>();
  /** Ids removed while Consul was unreachable: deregistered as soon as it answers again. */
  #orphans = new Set<string>();
  #queues = new Map<string, Promise<unknown>>();
  #timer: NodeJS.Timeout | undefined;
  #syncing: Promise<void> | undefined;
  #consulUp: boolean | undefined;
  #agentAddress: string | undefined;
  #closing = false;
  #sidecarId = '';
  #permission: string | undefined;

  constructor(opts: RegistrarOptions) {
    this.#o = opts;
  }

  get consulReachable(): boolean | undefined {
    return this.#consulUp;
  }

  /** Set while Consul refuses the sidecar's ACL token (its own registration gets 403). */
  get permissionProblem(): string | undefined {
    return this.#permission;
  }

  /** Loads config and persisted registrations, adds the sidecar's own `tandem` service, and syncs. */
  async start(sidecarService: ServiceSpec): Promise<void> {
    const stored = await this.#o.store.load(STATE_FILE);
    const fromState = Array.isArray(stored) ? (stored as { spec: ServiceSpec }[]) : [];
    this.#sidecarId = serviceId(sidecarService, this.#o.nodeName);
    this.#add(sidecarService, 'sidecar');
    for (const spec of this.#o.configServices) {
      // The sidecar's marks are unforgeable only if nothing else registered through Tandem carries them.
      const problem = sidecarMarkProblem(spec);
      if (problem) throw new ReservedServiceError(`config service '${spec.name}': ${problem}`);
      this.#add(spec, 'config');
    }
    for (const { spec } of fromState) {
      const problem = sidecarMarkProblem(spec);
      if (problem) this.#o.logger.warn({ service: spec.name, problem }, 'not restoring a stored registration that carries a sidecar mark');
      else this.#add(spec, 'api');
    }
    await this.sync();
    this.#timer = setInterval(() => void this.sync(), this.#o.syncIntervalMs);
    this.#timer.unref();
  }

  /**
   * Registers (or replaces) a service, in Consul with `call`'s token. Consul unreachable → kept as
   * pending (unless `defer` is false); Consul refusing → nothing changes. `defer: false` is for a
   * caller's own token under ACLs: a pending registration is made later with the sidecar's token, which
   * would lend it to a token Consul never checked.
   */
  async register(spec: ServiceSpec, call: CallOptions = {}, defer = true): Promise<RegisterResult> {
    if (this.#closing) throw new ShuttingDownError();
    const problem = sidecarMarkProblem(spec);
    if (problem) throw new ReservedServiceError(problem);
    const id = serviceId(spec, this.#o.nodeName);
    if (id === this.#sidecarId) throw new ProtectedServiceError(id);
    return this.#serial(id, async () => {
      const entry: Entry = { id, spec, source: 'api', state: 'pending', restore: false };
      let pending = false;
      try {
        await this.#registerInConsul(entry, call);
        entry.state = 'registered';
        entry.restore = true;
      } catch (err) {
        if (!(err instanceof ConsulUnavailableError)) throw err; // 403/400: the old registration stays as it was
        this.#markDown(err);
        if (!defer) throw notDeferred(err);
        pending = true;
      }
      this.#orphans.delete(id);
      this.#entries.set(id, entry);
      await this.#persist();
      this.#o.logger.info({ service: id, pending }, pending ? 'registration kept pending: Consul is unreachable' : 'service registered');
      return { registration: this.#view(entry, undefined), pending };
    });
  }

  /**
   * Graceful removal with `call`'s token: maintenance on (callers stop picking it), wait drainMs,
   * deregister. Consul unreachable → deregistered later (unless `defer` is false, as for register).
   */
  async deregister(id: string, call: CallOptions = {}, defer = true): Promise<{ pending: boolean }> {
    const entry = this.#entries.get(id);
    if (!entry || entry.state === 'draining') throw new ServiceNotFoundError(id);
    if (entry.source === 'sidecar') throw new ProtectedServiceError(id);
    entry.state = 'draining';
    return this.#serial(id, async () => {
      try {
        await this.#drain([entry], call);
        return { pending: false };
      } catch (err) {
        if (err instanceof ConsulUnavailableError) this.#markDown(err);
        if (!(err instanceof ConsulUnavailableError) || !defer) {
          entry.state = 'registered';
          throw err instanceof ConsulUnavailableError ? notDeferred(err) : err;
        }
        this.#orphans.add(id);
        return { pending: true };
      } finally {
        if (entry.state === 'draining') {
          this.#entries.delete(id);
          await this.#persist();
        }
      }
    });
  }

  /** Passes a TTL check, with `call`'s token. */
  async heartbeat(id: string, note?: string, call: CallOptions = {}): Promise<void> {
    const entry = this.#entries.get(id);
    if (!entry || entry.state === 'draining') throw new ServiceNotFoundError(id);
    const check = effectiveCheck(entry.spec);
    if (check.kind !== 'ttl') throw new NotTtlCheckError(id, check.kind);
    await this.#o.consul.passCheck(`service:${id}`, note, call);
  }

  /** This host's registrations with their Consul health (`unknown` when Consul is unreachable). */
  async list(): Promise<Registration[]> {
    let checks: LocalCheck[] | undefined;
    try {
      checks = await this.#o.consul.localChecks();
    } catch (err) {
      if (!(err instanceof ConsulUnavailableError)) throw err;
    }
    return [...this.#entries.values()].map((e) => this.#view(e, checks));
  }

  /** Every registration as it stands, without asking Consul (for status and metrics). */
  snapshot(): { id: string; name: string; version: string; source: Registration['source']; state: Entry['state'] }[] {
    return [...this.#entries.values()].map((e) => ({ id: e.id, name: e.spec.name, version: e.spec.version, source: e.source, state: e.state }));
  }

  has(id: string): boolean {
    return this.#entries.has(id);
  }

  /** Ids of this host's app services (everything but the sidecar's own), with where they came from. */
  appServices(): { id: string; source: Registration['source'] }[] {
    return [...this.#entries.values()].filter((e) => e.source !== 'sidecar' && e.state !== 'draining').map((e) => ({ id: e.id, source: e.source }));
  }

  /** Maintenance on or off for these services, with a reason shown in the Consul UI. */
  async setMaintenance(ids: readonly string[], enable: boolean, reason?: string): Promise<void> {
    await Promise.all(ids.filter((id) => this.#entries.get(id)?.state === 'registered').map((id) => this.#o.consul.setMaintenance(id, enable, reason)));
  }

  /** Deregisters at once (the caller drained them already) and forgets them. */
  async removeNow(ids: readonly string[]): Promise<void> {
    for (const id of ids) {
      const entry = this.#entries.get(id);
      if (!entry || entry.source === 'sidecar') continue;
      entry.state = 'draining';
      await this.#serial(id, async () => {
        try {
          await this.#o.consul.deregisterService(id);
        } catch (err) {
          if (!(err instanceof ConsulUnavailableError)) throw err;
          this.#orphans.add(id);
        }
        this.#entries.delete(id);
        this.#o.logger.info({ service: id }, 'service deregistered (drained)');
      });
    }
    await this.#persist();
  }

  /** One anti-entropy pass: registers what is pending or what the agent lost; deregisters orphans. */
  sync(): Promise<void> {
    this.#syncing ??= this.#syncOnce().finally(() => {
      this.#syncing = undefined;
    });
    return this.#syncing;
  }

  /** Stops syncing and removes every registration from Consul (maintenance, drain, deregister); state stays on disk. */
  async close(): Promise<void> {
    this.#closing = true;
    if (this.#timer) clearInterval(this.#timer);
    await this.#syncing;
    const entries = [...this.#entries.values()].filter((e) => e.state !== 'draining');
    for (const e of entries) e.state = 'draining';
    try {
      await this.#drain(entries);
    } catch (err) {
      this.#o.logger.warn({ err: errSummary(err) }, 'could not deregister every service on shutdown');
    }
    await this.#o.store.close();
  }

  async #syncOnce(): Promise<void> {
    if (this.#closing) return;
    let present: Set<string>;
    try {
      present = new Set((await this.#o.consul.localServices()).keys());
    } catch (err) {
      this.#markDown(err);
      return;
    }
    this.#markUp();
    for (const id of [...this.#orphans]) {
      await this.#serial(id, async () => {
        if (this.#entries.has(id)) return;
        try {
          await this.#o.consul.deregisterService(id);
          this.#orphans.delete(id);
        } catch (err) {
          this.#o.logger.warn({ service: id, err: errSummary(err) }, 'deregistration deferred');
        }
      });
    }
    for (const entry of [...this.#entries.values()]) {
      if (entry.state === 'draining' || (entry.state === 'registered' && present.has(entry.id))) continue;
      await this.#serial(entry.id, async () => {
        if (this.#entries.get(entry.id) !== entry || entry.state === 'draining' || this.#closing) return;
        const wasPending = entry.state === 'pending';
        try {
          await this.#registerInConsul(entry);
          entry.state = 'registered';
          entry.restore = true;
          if (entry.source === 'sidecar' && this.#permission) {
            this.#permission = undefined;
            this.#o.logger.info('Consul accepts the ACL token again');
          }
          this.#o.logger.info({ service: entry.id }, wasPending ? 'pending registration registered' : 're-registered a service the Consul agent had lost');
        } catch (err) {
          entry.state = 'pending';
          if (err instanceof ConsulPermissionError && entry.source === 'sidecar') {
            if (!this.#permission) this.#o.logger.error({ err: errSummary(err) }, 'Consul refuses the sidecar ACL token: registrations fail and reads may come back filtered (empty)');
            this.#permission = 'Consul refuses the sidecar ACL token (403): set CONSUL_HTTP_TOKEN or CONSUL_HTTP_TOKEN_FILE to a token with the Tandem policy';
          }
          if (err instanceof ConsulUnavailableError) this.#markDown(err);
          else this.#o.logger.error({ service: entry.id, err: errSummary(err) }, 'Consul refuses this registration; retrying');
        }
      });
    }
  }

  async #registerInConsul(entry: Entry, call: CallOptions = {}): Promise<void> {
    this.#agentAddress ??= this.#o.advertiseAddress ?? (await this.#agentSelf(call)).advertiseAddress;
    await this.#o.consul.registerService(
      toConsulDefinition(entry.spec, {
        nodeName: this.#o.nodeName,
        defaultAddress: this.#agentAddress,
        sidecarId: this.#sidecarId,
        checkIntervalMs: this.#o.checkIntervalMs,
        checkTimeoutMs: this.#o.checkTimeoutMs,
        ttlMs: this.#o.ttlMs,
        initialPassing: entry.restore,
      }),
      call,
    );
  }

  /** Read with the sidecar's token: on a caller's write, its refusal must not pass for the caller's token being refused. */
  async #agentSelf(call: CallOptions): Promise<{ advertiseAddress: string }> {
    try {
      return await this.#o.consul.agentSelf();
    } catch (err) {
      if (call.token === undefined || !(err instanceof ConsulPermissionError)) throw err;
      throw new TandemError(err.code, err.statusCode, err.message);
    }
  }

  async #drain(entries: readonly Entry[], call: CallOptions = {}): Promise<void> {
    const live = entries.filter((e) => e.state !== 'pending');
    if (live.length === 0) return;
    // Maintenance first: the instances leave `?passing` at once, so watchers stop sending before they go.
    await Promise.all(live.map((e) => this.#o.consul.setMaintenance(e.id, true, 'tandem: draining before deregistration', call)));
    if (this.#o.drainMs > 0) await sleep(this.#o.drainMs);
    await Promise.all(live.map((e) => this.#o.consul.deregisterService(e.id, call)));
    for (const e of live) this.#o.logger.info({ service: e.id }, 'service deregistered');
  }

  #add(spec: ServiceSpec, source: Source): void {
    const id = serviceId(spec, this.#o.nodeName);
    // An app may have registered through the API before start() ran: its newer spec wins (never over the sidecar's own).
    if (source === 'sidecar' || !this.#entries.has(id)) this.#entries.set(id, { id, spec, source, state: 'pending', restore: true });
  }

  async #persist(): Promise<void> {
    const api = [...this.#entries.values()].filter((e) => e.source === 'api' && e.state !== 'draining').map((e) => ({ spec: e.spec }));
    await this.#o.store.save(STATE_FILE, api);
  }

  /** Runs Consul-changing work for one id one at a time, so a sync never races a removal. */
  #serial<T>(id: string, fn: () => Promise<T>): Promise<T> {
    const prev = this.#queues.get(id) ?? Promise.resolve();
    const next = prev.then(fn, fn);
    const tail = next.catch(() => undefined);
    this.#queues.set(id, tail);
    void tail.then(() => {
      if (this.#queues.get(id) === tail) this.#queues.delete(id);
    });
    return next;
  }

  #markDown(err: unknown): void {
    if (this.#consulUp !== false) this.#o.logger.warn({ consul: this.#o.consul.address, err: errSummary(err) }, 'Consul is unreachable: registrations are kept and retried');
    this.#consulUp = false;
  }

  #markUp(): void {
    if (this.#consulUp === false) this.#o.logger.info({ consul: this.#o.consul.address }, 'Consul is reachable again');
    this.#consulUp = true;
  }

  #view(e: Entry, checks: LocalCheck[] | undefined): Registration {
    const def = toConsulDefinition(e.spec, {
      nodeName: this.#o.nodeName,
      defaultAddress: this.#agentAddress ?? this.#o.advertiseAddress ?? '',
      sidecarId: this.#sidecarId,
      checkIntervalMs: this.#o.checkIntervalMs,
      checkTimeoutMs: this.#o.checkTimeoutMs,
      ttlMs: this.#o.ttlMs,
    });
    let health: Registration['health'] = 'unknown';
    if (checks) {
      const mine = checks.filter((c) => c.serviceId === e.id);
      if (mine.some((c) => c.checkId.startsWith('_service_maintenance'))) health = 'maintenance';
      else if (mine.length > 0) health = mine.some((c) => c.status === 'critical') ? 'critical' : mine.some((c) => c.status === 'warning') ? 'warning' : 'passing';
    }
    return {
      id: e.id,
      name: e.spec.name,
      version: e.spec.version,
      address: def.Address,
      port: def.Port,
      tags: def.Tags,
      meta: def.Meta,
      check: effectiveCheck(e.spec),
      source: e.source,
      state: e.state,
      health,
    };
  }
}

/** A write with the caller's own token cannot wait for Consul: only Consul can check that token. */
function notDeferred(err: ConsulUnavailableError): ConsulUnavailableError {
  return new ConsulUnavailableError(`${err.message}; a write made with your own Consul token is not kept for later (Consul must check the token): retry once Consul answers`, { cause: err });
}
