// Keeps this host's services registered in Consul: probes them first, persists them, re-registers what the agent lost, drains on removal.
// Whose token: a control-API call passes the caller's CallOptions for its one Consul write (Consul's
// ACLs decide). Upkeep of what Consul already accepted (re-registration, restore at start, drain and
// shutdown deregistration) uses the sidecar's token: a caller's token is never kept, and a restarted
// sidecar must restore and remove what it registered without its apps (docs/security.md).
import { setTimeout as sleep } from 'node:timers/promises';
import type { Logger } from 'pino';
import type { Registration, ServiceSpec } from '../protocol/wire.ts';
import type { CallOptions, LocalCheck } from '../consul/consul-client.ts';
import { errSummary, NotTtlCheckError, ProtectedServiceError, ReservedServiceError, ServiceNotFoundError, ShuttingDownError, TandemError } from '../common/errors.ts';
import { sidecarMarkProblem } from '../common/sidecar-marker.ts';
import { KeyedSerial } from '../common/keyed-serial.ts';
import { ConsulRejectedError, ConsulUnavailableError } from '../consul/errors.ts';
import { effectiveCheck, serviceId } from './service-definition.ts';
import { ConsulRegistration } from './consul-registration.ts';
import type { RegistrationTimings } from '../common/registration-timings.ts';
import { Reconciler } from './reconciler.ts';
import { Liveness } from './liveness.ts';
import { healthOf, toRegistration, toStored, type Entry, type Source, type Stored } from './entry.ts';
import type { ProbeResult } from './probe.ts';
import type { Probe, RegistrationConsul, RegistrationStore } from './ports.ts';

export interface RegistrarOptions extends RegistrationTimings {
  consul: RegistrationConsul;
  store: RegistrationStore;
  logger: Logger;
  nodeName: string;
  /** Overrides the address learnt from the local Consul agent. */
  advertiseAddress?: string | undefined;
  /** Services from the config file: registered at start, not persisted (the file is their home). */
  configServices: readonly ServiceSpec[];
  /** How a service is probed before it is registered; probeCheck unless a test fakes it. */
  probe?: Probe | undefined;
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
  /** Consul-changing work for one id runs one at a time, so a sync never races a removal. */
  #queue = new KeyedSerial();
  #timer: NodeJS.Timeout | undefined;
  #closing = false;
  #liveness: Liveness;
  #writer: ConsulRegistration;
  #reconciler: Reconciler;
  /** The stored registrations are loaded: a liveness stream can find what it holds, and the state file may be written. */
  #restored = false;
  /** A registration changed before the restore: start() writes the merged set. */
  #unsaved = false;

  constructor(opts: RegistrarOptions) {
    this.#o = opts;
    this.#writer = new ConsulRegistration(opts);
    this.#reconciler = new Reconciler({ consul: opts.consul, logger: opts.logger, writer: this.#writer, entries: this.#entries, queue: this.#queue, ttlMs: opts.ttlMs, closing: () => this.#closing });
    this.#liveness = new Liveness(opts.livenessGraceMs, (id) => this.#expire(id));
  }

  get consulReachable(): boolean | undefined {
    return this.#reconciler.consulReachable;
  }

  /** Set while Consul refuses the sidecar's ACL token (its own registration gets 403). */
  get permissionProblem(): string | undefined {
    return this.#reconciler.permissionProblem;
  }

  /** Loads config and persisted registrations, adds the sidecar's own `tandem` service, and syncs. */
  async start(sidecarService: ServiceSpec): Promise<void> {
    const stored = await this.#o.store.load(STATE_FILE);
    const fromState = Array.isArray(stored) ? (stored as Stored[]) : [];
    this.#writer.sidecarId = serviceId(sidecarService, this.#o.nodeName);
    this.#add(sidecarService, 'sidecar');
    for (const spec of this.#o.configServices) {
      // The sidecar's marks are unforgeable only if nothing else registered through Tandem carries them.
      const problem = sidecarMarkProblem(spec);
      if (problem) throw new ReservedServiceError(`config service '${spec.name}': ${problem}`);
      this.#add(spec, 'config');
    }
    for (const { spec, liveness } of fromState) {
      const problem = sidecarMarkProblem(spec);
      if (problem) this.#o.logger.warn({ service: spec.name, problem }, 'not restoring a stored registration that carries a sidecar mark');
      // A restored SDK registration must be claimed again by its app's liveness stream within the grace,
      // or it goes: a sidecar restart must not resurrect an app that died meanwhile.
      else if (this.#add(spec, 'api', liveness === true)) this.#liveness.expect(serviceId(spec, this.#o.nodeName));
    }
    this.#restored = true;
    if (this.#unsaved) await this.#persist();
    await this.sync();
    this.#timer = setInterval(() => void this.sync(), this.#o.syncIntervalMs);
    this.#timer.unref();
  }

  /**
   * Registers (or replaces) a service, in Consul with `call`'s token, its check's first status taken
   * from probing it now. Consul unreachable → kept as pending (unless `defer` is false); Consul
   * refusing → nothing changes. `defer: false` is for a caller's own token under ACLs: a pending
   * registration is made later with the sidecar's token, which would lend it to a token Consul never
   * checked. `liveness`: the app holds a liveness stream for it (see holdLiveness).
   */
  async register(spec: ServiceSpec, call: CallOptions = {}, defer = true, opts: { liveness?: boolean } = {}): Promise<RegisterResult> {
    if (this.#closing) throw new ShuttingDownError();
    const problem = sidecarMarkProblem(spec);
    if (problem) throw new ReservedServiceError(problem);
    const id = serviceId(spec, this.#o.nodeName);
    if (id === this.#writer.sidecarId) throw new ProtectedServiceError(id);
    return this.#queue.run(id, async () => {
      const entry: Entry = { id, spec, source: 'api', state: 'pending', liveness: opts.liveness === true || this.#liveness.connected(id), reaped: false };
      let pending = false;
      let probe: ProbeResult | undefined;
      try {
        probe = await this.#writer.register(spec, call);
        entry.state = 'registered';
      } catch (err) {
        if (!(err instanceof ConsulUnavailableError)) throw err; // 403/400: the old registration stays as it was
        this.#reconciler.markDown(err);
        if (!defer) throw notDeferred(err);
        pending = true;
      }
      this.#reconciler.orphans.delete(id);
      this.#entries.set(id, entry);
      if (entry.liveness) this.#liveness.expect(id);
      else this.#liveness.forget(id);
      await this.#persist();
      this.#o.logger.info({ service: id, pending, check: probe?.status, probe: probe?.output }, pending ? 'registration kept pending: Consul is unreachable' : 'service registered');
      return { registration: toRegistration(entry, this.#writer.definition(spec), undefined), pending };
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
    const was = entry.state;
    entry.state = 'draining';
    return this.#queue.run(id, async () => {
      try {
        await this.#drain([entry], call);
        return { pending: false };
      } catch (err) {
        if (err instanceof ConsulUnavailableError) this.#reconciler.markDown(err);
        if (!(err instanceof ConsulUnavailableError) || !defer) {
          entry.state = was;
          throw err instanceof ConsulUnavailableError ? notDeferred(err) : err;
        }
        this.#reconciler.orphans.add(id);
        return { pending: true };
      } finally {
        if (entry.state === 'draining' && this.#entries.get(id) === entry) {
          this.#entries.delete(id);
          this.#liveness.forget(id);
          await this.#persist();
        }
      }
    });
  }

  /**
   * An app's liveness stream for `id` opened (the SDK holds one per registration): from now on the
   * registration lives as long as its app holds one, plus the grace. Returns the function to call
   * when the stream closes.
   */
  async holdLiveness(id: string): Promise<() => void> {
    // Before the restore, "not found" would be wrong, and the app would stop holding it: retry instead.
    if (!this.#restored) throw new TandemError('TANDEM_ERR_STARTING', 503, 'the sidecar is still starting (restoring its registrations)');
    const entry = this.#entries.get(id);
    if (!entry || entry.state === 'draining' || entry.source !== 'api') throw new ServiceNotFoundError(id);
    const release = this.#liveness.open(id);
    if (!entry.liveness) {
      entry.liveness = true;
      try {
        await this.#persist();
      } catch (err) {
        // The caller never gets `release`: close the count here, or the registration could never expire.
        release();
        throw err;
      }
    }
    return release;
  }

  get livenessGraceMs(): number {
    return this.#liveness.graceMs;
  }

  /** Passes a TTL check, with `call`'s token. A reaped TTL registration comes back with it (the heartbeat is the proof of life). */
  async heartbeat(id: string, note?: string, call: CallOptions = {}): Promise<void> {
    const entry = this.#entries.get(id);
    if (!entry || entry.state === 'draining') throw new ServiceNotFoundError(id);
    const check = effectiveCheck(entry.spec);
    if (check.kind !== 'ttl') throw new NotTtlCheckError(id, check.kind);
    // Proof of life even when it cannot be passed on yet (a restarted sidecar that has not registered it again).
    entry.beatAt = Date.now();
    // In line with registrations of this id, so that one in flight cannot overwrite this pass with critical.
    await this.#queue.run(id, async () => {
      if (entry.reaped && entry.state !== 'draining' && this.#entries.get(id) === entry) {
        await this.#writer.register(entry.spec, call, 'passing');
        entry.reaped = false;
        entry.state = 'registered';
        this.#o.logger.info({ service: id }, 'a heartbeat brought back a registration Consul had removed');
      }
      await this.#o.consul.passCheck(`service:${id}`, note, call);
    });
  }

  /** This host's registrations with their Consul health (`unknown` when Consul is unreachable). */
  async list(): Promise<Registration[]> {
    let checks: LocalCheck[] | undefined;
    try {
      checks = await this.#o.consul.localChecks();
    } catch (err) {
      if (!(err instanceof ConsulUnavailableError)) throw err;
    }
    return [...this.#entries.values()].map((e) => toRegistration(e, this.#writer.definition(e.spec), checks));
  }

  /** Every registration as it stands, without asking Consul (for status and metrics). */
  snapshot(): { id: string; name: string; version: string; source: Registration['source']; state: Entry['state']; liveness: boolean }[] {
    return [...this.#entries.values()].map((e) => ({ id: e.id, name: e.spec.name, version: e.spec.version, source: e.source, state: e.state, liveness: e.liveness }));
  }

  /** The snapshot with each registration's Consul health from the local agent (`unknown` when it cannot be read). */
  async snapshotWithHealth(): Promise<(ReturnType<Registrar['snapshot']>[number] & { health: Registration['health'] })[]> {
    const checks = await this.#o.consul.localChecks().catch(() => undefined);
    return this.snapshot().map((r) => ({ ...r, health: healthOf(r.id, checks) }));
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

  /** Deregisters at once (the caller drained them already, or their app is gone) and forgets them. */
  async removeNow(ids: readonly string[], why = 'drained'): Promise<void> {
    for (const id of ids) {
      const entry = this.#entries.get(id);
      if (!entry || entry.source === 'sidecar') continue;
      entry.state = 'draining';
      await this.#queue.run(id, async () => {
        try {
          await this.#o.consul.deregisterService(id);
        } catch (err) {
          if (!(err instanceof ConsulUnavailableError)) throw err;
          this.#reconciler.orphans.add(id);
        }
        this.#entries.delete(id);
        this.#liveness.forget(id);
        this.#o.logger.info({ service: id }, `service deregistered (${why})`);
      });
    }
    await this.#persist();
  }

  /** One anti-entropy pass: registers what is pending or what the agent lost; deregisters orphans. */
  sync(): Promise<void> {
    return this.#reconciler.sync();
  }

  /** Stops syncing and removes every registration from Consul (maintenance, drain, deregister); state stays on disk. */
  async close(): Promise<void> {
    this.#closing = true;
    this.#liveness.close();
    if (this.#timer) clearInterval(this.#timer);
    await this.#reconciler.idle();
    const entries = [...this.#entries.values()].filter((e) => e.state !== 'draining');
    for (const e of entries) e.state = 'draining';
    try {
      await this.#drain(entries);
    } catch (err) {
      this.#o.logger.warn({ err: errSummary(err) }, 'could not deregister every service on shutdown');
    }
    await this.#o.store.close();
  }

  /** The liveness grace of `id` ran out without a stream: its app is gone, so is the registration (no drain: nothing answers). */
  #expire(id: string): void {
    const entry = this.#entries.get(id);
    if (!entry?.liveness || entry.state === 'draining' || this.#closing) return;
    this.#o.logger.warn({ service: id, graceMs: this.#liveness.graceMs }, "the app's liveness stream closed and did not come back within the grace: deregistering its service");
    this.removeNow([id], 'its app is gone').catch((err: unknown) => this.#o.logger.warn({ service: id, err: errSummary(err) }, 'could not deregister a service whose app is gone'));
  }

  /**
   * Maintenance, the drain wait, deregistration. Consul decides what is there to drain, not the entry's
   * state: a pending replacement leaves the old registration in Consul, and one the agent lost or
   * reaped answers maintenance with 404 (nothing to drain, nothing to deregister).
   */
  async #drain(entries: readonly Entry[], call: CallOptions = {}): Promise<void> {
    // Maintenance first: the instances leave `?passing` at once, so watchers stop sending before they go.
    const there = await Promise.all(entries.map((e) => this.#o.consul.setMaintenance(e.id, true, 'tandem: draining before deregistration', call).then(() => true, notThere)));
    const live = entries.filter((_, i) => there[i]);
    if (live.length === 0) return;
    if (this.#o.drainMs > 0) await sleep(this.#o.drainMs);
    await Promise.all(live.map((e) => this.#o.consul.deregisterService(e.id, call)));
    for (const e of live) this.#o.logger.info({ service: e.id }, 'service deregistered');
  }

  /** Adds a restored registration; false when an entry for its id was there already. */
  #add(spec: ServiceSpec, source: Source, liveness = false): boolean {
    const id = serviceId(spec, this.#o.nodeName);
    // An app may have registered through the API before start() ran: its newer spec wins (never over the sidecar's own).
    if (source !== 'sidecar' && this.#entries.has(id)) return false;
    this.#entries.set(id, { id, spec, source, state: 'pending', liveness, reaped: false });
    return true;
  }

  async #persist(): Promise<void> {
    // Before the restore the file still holds what start() is about to load: writing now would lose it.
    if (!this.#restored) return void (this.#unsaved = true);
    await this.#o.store.save(STATE_FILE, toStored(this.#entries.values()));
  }
}

/** Maintenance refused with 404: the agent has no such service (never registered, lost, reaped). */
function notThere(err: unknown): false {
  if (err instanceof ConsulRejectedError && err.consulStatus === 404) return false;
  throw err;
}

/** A write with the caller's own token cannot wait for Consul: only Consul can check that token. */
function notDeferred(err: ConsulUnavailableError): ConsulUnavailableError {
  return new ConsulUnavailableError(`${err.message}; a write made with your own Consul token is not kept for later (Consul must check the token): retry once Consul answers`, { cause: err });
}
