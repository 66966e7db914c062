// The registrar's anti-entropy: one pass at a time reconciles what this host should have registered with what its Consul agent has.
// A pass registers what is pending, brings back what the agent lost (all of it after an agent restart) and keeps
// out what Consul reaped until its check passes again, deregisters what was removed while Consul was unreachable,
// and tracks whether Consul answers and accepts the sidecar's token. The registrar owns the entries; work on one
// id runs in its queue, so a pass never races a registration, a deregistration or a heartbeat of that id.
import type { Logger } from 'pino';
import { errSummary } from '../common/errors.ts';
import type { KeyedSerial } from '../common/keyed-serial.ts';
import { ConsulPermissionError, ConsulUnavailableError } from '../consul/errors.ts';
import type { ConsulRegistration } from './consul-registration.ts';
import type { Entry } from './entry.ts';
import type { RegistrationConsul } from './ports.ts';
import { effectiveCheck } from './service-definition.ts';

export interface ReconcilerOptions {
  consul: RegistrationConsul;
  logger: Logger;
  writer: ConsulRegistration;
  /** The registrar's entries, by id (read here; each entry's state and reaped mark are written here, in its queue). */
  entries: ReadonlyMap<string, Entry>;
  queue: KeyedSerial;
  ttlMs: number;
  /** The registrar is shutting down: no pass starts, no entry is registered again. */
  closing: () => boolean;
}

const SYNC_CONCURRENCY = 8;

export class Reconciler {
  /** Ids removed while Consul was unreachable: deregistered as soon as it answers again. */
  readonly orphans = new Set<string>();
  #o: ReconcilerOptions;
  #syncing: Promise<void> | undefined;
  #consulUp: boolean | undefined;
  #permission: string | undefined;

  constructor(opts: ReconcilerOptions) {
    this.#o = opts;
  }

  /** Whether Consul answered last time it was asked (undefined before the first call). */
  get consulReachable(): boolean | undefined {
    return this.#consulUp;
  }

  /** Set while Consul refuses the sidecar's ACL token (its own registration gets 403). */
  get permissionProblem(): string | undefined {
    return this.#permission;
  }

  /** One pass; a call while one runs shares it. */
  sync(): Promise<void> {
    this.#syncing ??= this.#pass().finally(() => {
      this.#syncing = undefined;
    });
    return this.#syncing;
  }

  /** Resolves when no pass runs. */
  async idle(): Promise<void> {
    await this.#syncing;
  }

  /** A call found Consul unreachable (said once per outage). */
  markDown(err: unknown): void {
    if (this.#consulUp !== false) this.#o.logger.warn({ consul: this.#o.consul.address, err: errSummary(err) }, 'Consul is unreachable: registrations are kept and retried');
    this.#consulUp = false;
  }

  #markUp(): void {
    if (this.#consulUp === false) this.#o.logger.info({ consul: this.#o.consul.address }, 'Consul is reachable again');
    this.#consulUp = true;
  }

  async #pass(): Promise<void> {
    if (this.#o.closing()) return;
    let present: Set<string>;
    try {
      present = new Set((await this.#o.consul.localServices()).keys());
    } catch (err) {
      this.markDown(err);
      return;
    }
    this.#markUp();
    // Without the sidecar's own registration the agent lost everything (restarted): all comes back.
    // With it, one missing service was removed on purpose (reaper, operator): see Entry.reaped.
    const agentLostAll = !present.has(this.#o.writer.sidecarId);
    for (const id of [...this.orphans]) {
      await this.#o.queue.run(id, async () => {
        if (this.#o.entries.has(id)) return;
        try {
          await this.#o.consul.deregisterService(id);
          this.orphans.delete(id);
        } catch (err) {
          this.#o.logger.warn({ service: id, err: errSummary(err) }, 'deregistration deferred');
        }
      });
    }
    const todo = [...this.#o.entries.values()].filter((e) => e.state !== 'draining' && !(e.state === 'registered' && present.has(e.id)));
    // A few at a time: each probes its service first (bounded by the check timeout), so one hanging port delays no other.
    const worker = async () => {
      for (let entry = todo.shift(); entry; entry = todo.shift()) await this.#syncEntry(entry, agentLostAll);
    };
    await Promise.all(Array.from({ length: Math.min(SYNC_CONCURRENCY, todo.length) }, worker));
  }

  #syncEntry(entry: Entry, agentLostAll: boolean): Promise<void> {
    return this.#o.queue.run(entry.id, async () => {
      if (this.#o.entries.get(entry.id) !== entry || entry.state === 'draining' || this.#o.closing()) return;
      const wasPending = entry.state === 'pending';
      const wasReaped = entry.reaped;
      if (entry.state === 'registered' && !agentLostAll && entry.source !== 'sidecar') entry.reaped = true;
      try {
        const probe = await this.#o.writer.register(entry.spec, {}, this.#recentBeat(entry) ? 'passing' : undefined, entry.reaped);
        // A deregistration began meanwhile: it is queued behind this and drains whatever Consul has now.
        if (isDraining(entry)) return;
        if (!probe) {
          if (entry.state === 'registered') this.#o.logger.warn({ service: entry.id }, 'Consul removed this service while its check failed (DeregisterCriticalServiceAfter, or an operator): kept out of Consul until its check passes');
          entry.state = 'pending';
          return;
        }
        entry.state = 'registered';
        entry.reaped = false;
        if (entry.source === 'sidecar' && this.#permission) {
          this.#permission = undefined;
          this.#o.logger.info('Consul accepts the ACL token again');
        }
        this.#o.logger.info({ service: entry.id, check: probe.status }, wasReaped ? 'its check passes again: back in Consul' : wasPending ? 'pending registration registered' : 're-registered a service the Consul agent had lost');
      } catch (err) {
        if (!isDraining(entry)) entry.state = 'pending';
        if (err instanceof ConsulPermissionError && entry.source === 'sidecar') {
          if (!this.#permission) this.#o.logger.error({ err: errSummary(err) }, 'Consul refuses the sidecar ACL token: registrations fail and reads may come back filtered (empty)');
          this.#permission = 'Consul refuses the sidecar ACL token (403): set CONSUL_HTTP_TOKEN or CONSUL_HTTP_TOKEN_FILE to a token with the Tandem policy';
        }
        if (err instanceof ConsulUnavailableError) this.markDown(err);
        else this.#o.logger.error({ service: entry.id, err: errSummary(err) }, 'Consul refuses this registration; retrying');
      }
    });
  }

  /**
   * The app heartbeated within its TTL, so a TTL check registered again now starts passing (as Consul's
   * would still be): else an SDK app's first beat after a sidecar restart could race the restore.
   */
  #recentBeat(entry: Entry): boolean {
    const check = effectiveCheck(entry.spec);
    return check.kind === 'ttl' && entry.beatAt !== undefined && Date.now() - entry.beatAt < (check.ttlMs ?? this.#o.ttlMs);
  }
}

/** Set by a deregistration while other work on the entry was in flight (TypeScript narrows `state` across the await otherwise). */
function isDraining(entry: Entry): boolean {
  return entry.state === 'draining';
}
