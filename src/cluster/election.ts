// Leader elections on Consul: one blocking query on `tandem/leaders/` for every group, TTL sessions renewed here and remembered in the state dir.
import type { Logger } from 'pino';
import type { LeaderInfo } from '../protocol/wire.ts';
import { backoffDelay, sleepUnlessAborted } from '../consul/backoff.ts';
import { BlockingQuery } from '../consul/blocking-query.ts';
import type { CallOptions, ConsulClient, KvEntry } from '../consul/consul-client.ts';
import { errSummary, ShuttingDownError } from '../common/errors.ts';
import type { StateStore } from '../common/state-store.ts';
import { Campaign, LEADER_PREFIX, leaderInfo, type CampaignContext, type CampaignEvents } from './campaign.ts';
import { InvalidNameError, isValidName } from './names.ts';

export { LEADER_PREFIX };
export type { Campaign, CampaignEvents, LeaderInfo };

/** The state file listing this sidecar's election sessions (id and lock key). */
export const SESSIONS_FILE = 'election-sessions';

export interface ElectionsOptions {
  consul: ConsulClient;
  store: StateStore;
  logger: Logger;
  nodeName: string;
  sidecarId: () => string;
  /** Consul's lock-delay after a session is invalidated (not after a voluntary release). */
  lockDelayMs: number;
  /** Session TTL (Consul: 10 s .. 24 h); renewed every third of it. */
  sessionTtlMs: number;
  waitMs: number;
  maxBackoffMs: number;
}

interface StoredSession {
  id: string;
  key: string;
}

/**
 * Every campaign of this sidecar. All groups share one blocking query on the leaders prefix (a
 * reserved lease), which exists only while there is a campaign. Sessions carry a TTL renewed here
 * every TTL/3, on top of serfHealth and the app's own check, and their ids are written to the state
 * dir before they can hold a lock: a sidecar started again on the same state dir releases and
 * destroys what its killed predecessor held, so an app that campaigns again is not locked out.
 */
export class Elections {
  #o: ElectionsOptions;
  #groups = new Map<string, Set<Campaign>>();
  #query: BlockingQuery<KvEntry[]> | undefined;
  /** This process's live sessions, by id → lock key. */
  #live = new Map<string, string>();
  /** Sessions of an earlier run (or whose destroy failed) still to destroy. */
  #leftovers = new Map<string, string>();
  #renewTimer: NodeJS.Timeout | undefined;
  #renewFailing = false;
  #abort = new AbortController();
  #cleanup: Promise<void> | undefined;
  #closed = false;

  constructor(opts: ElectionsOptions) {
    this.#o = opts;
  }

  /** Reads the sessions a previous run left and, in the background, releases their locks and destroys them. */
  async start(): Promise<void> {
    let stored: unknown;
    try {
      stored = await this.#o.store.load(SESSIONS_FILE);
    } catch (err) {
      this.#o.logger.warn({ err: errSummary(err) }, 'could not read the election sessions of the previous run');
    }
    const list = (stored as { sessions?: unknown } | undefined)?.sessions;
    for (const s of Array.isArray(list) ? (list as StoredSession[]) : []) if (typeof s?.id === 'string' && typeof s.key === 'string') this.#leftovers.set(s.id, s.key);
    if (this.#leftovers.size > 0) this.#cleanup = this.#destroyLeftovers();
  }

  /** Leftover sessions not yet destroyed (for tests and status). */
  get leftovers(): number {
    return this.#leftovers.size;
  }

  /** Resigns every campaign (releasing its lock at once), then stops the query and the timers. */
  async close(): Promise<void> {
    this.#closed = true;
    const all = [...this.#groups.values()].flatMap((s) => [...s]);
    await Promise.all(all.map((c) => c.resign()));
    this.#stopQuery();
    this.#query?.close();
    this.#abort.abort();
    await this.#cleanup;
    await this.#persist();
  }

  /**
   * Starts a contender for `group` on behalf of service `serviceId`, with the caller's credentials for
   * every write it makes. Throws on a bad group name, or (503) when the budget has no room for the
   * leaders query. Its events start asynchronously, after this returns.
   */
  campaign(group: string, serviceId: string, call: CallOptions, events: CampaignEvents): Campaign {
    if (this.#closed) throw new ShuttingDownError();
    if (!isValidName(group)) throw new InvalidNameError('group', group);
    const query = this.#ensureQuery();
    const c = new Campaign(group, serviceId, call, this.#context(), events);
    let set = this.#groups.get(group);
    if (!set) {
      set = new Set();
      this.#groups.set(group, set);
    }
    set.add(c);
    if (query.hasValue) {
      const entries = query.current ?? [];
      queueMicrotask(() => c.update(entries.find((e) => e.key === c.key)));
    }
    this.#ensureRenewal();
    return c;
  }

  /**
   * The group's leader as Consul has it now: a consistent read of the lock, and its holder's session
   * checked to exist (a lock held by a session Consul no longer has is no leader).
   */
  async leader(group: string): Promise<LeaderInfo | null> {
    if (!isValidName(group)) throw new InvalidNameError('group', group);
    const r = await this.#o.consul.kvGet(`${LEADER_PREFIX}${group}`);
    const info = leaderInfo(group, r.value);
    if (!info || !r.value?.session) return null;
    return (await this.#o.consul.sessionExists(r.value.session)) ? info : null;
  }

  /**
   * Has Consul check that `call`'s credentials may write service `serviceId` on this agent, by
   * enabling its maintenance with `reason` while it is already in maintenance. Consul authorises the
   * call (`service:write` on that service) before it looks at anything else, and then changes nothing:
   * an agent ignores enabling maintenance that is already on. So it suits only a service a drain has
   * put in maintenance (the control API's ready-to-stop, which may end that drain early); were it not
   * in maintenance yet (the drain's own write failed), this puts it there, as the drain wanted. Throws
   * ConsulPermissionError when Consul refuses. Lives here because the elections already act on
   * behalf of a service with the caller's credentials; the control API never calls Consul itself.
   */
  async proveServiceWrite(serviceId: string, reason: string, call: CallOptions): Promise<void> {
    await this.#o.consul.setMaintenance(serviceId, true, reason, call);
  }

  #context(): CampaignContext {
    return {
      consul: this.#o.consul,
      nodeName: this.#o.nodeName,
      sidecarId: this.#o.sidecarId,
      lockDelayMs: this.#o.lockDelayMs,
      sessionTtlMs: this.#o.sessionTtlMs,
      createSession: async (c) => {
        const id = await this.#o.consul.sessionCreate(
          {
            name: `tandem election ${c.group} (${c.serviceId})`,
            checks: ['serfHealth', `service:${c.serviceId}`],
            lockDelayMs: this.#o.lockDelayMs,
            behavior: 'release',
            ttlMs: this.#o.sessionTtlMs,
          },
          c.call,
        );
        this.#live.set(id, c.key);
        // Written down before the session can take a lock; a failed write keeps it from campaigning.
        try {
          await this.#persist();
        } catch (err) {
          this.#live.delete(id);
          await this.#o.consul.sessionDestroy(id, c.call).catch(() => undefined);
          throw err;
        }
        return id;
      },
      forgetSession: (id) => {
        if (this.#live.delete(id)) void this.#persist().catch((err: unknown) => this.#o.logger.warn({ err: errSummary(err) }, 'could not write the election sessions'));
      },
      keepSession: (id) => {
        const key = this.#live.get(id);
        this.#live.delete(id);
        if (key !== undefined) this.#leftovers.set(id, key);
      },
      onResigned: (c) => {
        const set = this.#groups.get(c.group);
        set?.delete(c);
        if (set?.size === 0) this.#groups.delete(c.group);
        if (this.#groups.size === 0) this.#stopQuery();
      },
    };
  }

  /** Leaves the leaders query; set while subscribed. */
  #unsubscribe: (() => void) | undefined;

  /**
   * One query for the sidecar's life: when the last campaign ends its loop stops after the request in
   * flight (a dropped blocking query would keep counting against Consul's per-IP limit until its wait
   * ends), and a campaign started meanwhile reuses it.
   */
  #ensureQuery(): BlockingQuery<KvEntry[]> {
    const query = (this.#query ??= new BlockingQuery<KvEntry[]>({
      name: `kv:${LEADER_PREFIX}`,
      fetch: (q) => this.#o.consul.kvList(LEADER_PREFIX, q),
      waitMs: this.#o.waitMs,
      maxBackoffMs: this.#o.maxBackoffMs,
      budget: this.#o.consul.budget,
      kind: 'reserved',
      onFailing: (failing, err) => {
        if (failing) this.#o.logger.warn({ err: errSummary(err) }, 'leaders watch failed; retrying');
      },
    }));
    this.#unsubscribe ??= query.subscribe((entries) => {
      const byKey = new Map(entries.map((e) => [e.key, e]));
      for (const set of this.#groups.values()) for (const c of set) c.update(byKey.get(c.key));
    });
    return query;
  }

  #stopQuery(): void {
    this.#unsubscribe?.();
    this.#unsubscribe = undefined;
    if (this.#renewTimer) clearInterval(this.#renewTimer);
    this.#renewTimer = undefined;
  }

  /** One timer renews every live session every TTL/3: two renewals can fail before Consul's TTL runs out. */
  #ensureRenewal(): void {
    if (this.#renewTimer) return;
    this.#renewTimer = setInterval(() => {
      const all = [...this.#groups.values()].flatMap((s) => [...s]);
      void Promise.allSettled(all.map((c) => c.renew())).then((results) => {
        const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
        if (failed && !this.#renewFailing) this.#o.logger.warn({ err: errSummary(failed.reason) }, 'could not renew election sessions (Consul did not answer); retrying');
        this.#renewFailing = failed !== undefined;
      });
    }, Math.floor(this.#o.sessionTtlMs / 3));
    this.#renewTimer.unref();
  }

  #persist(): Promise<void> {
    const sessions: StoredSession[] = [...this.#leftovers, ...this.#live].map(([id, key]) => ({ id, key }));
    return this.#o.store.save(SESSIONS_FILE, { sessions });
  }

  /**
   * Releases the locks of the previous run's sessions (no lock-delay, unlike invalidation) and
   * destroys them. Retried while Consul does not answer, until Consul has surely expired them anyway.
   */
  async #destroyLeftovers(): Promise<void> {
    const giveUpAt = Date.now() + 2 * this.#o.sessionTtlMs + 60_000;
    for (let attempt = 1; this.#leftovers.size > 0 && !this.#abort.signal.aborted && Date.now() < giveUpAt; attempt++) {
      for (const [id, key] of [...this.#leftovers]) {
        try {
          await this.#o.consul.kvPut(key, '', { release: id });
          await this.#o.consul.sessionDestroy(id);
          this.#leftovers.delete(id);
          this.#o.logger.info({ session: id, key }, 'released and destroyed an election session of the previous run');
        } catch (err) {
          if (attempt === 1) this.#o.logger.warn({ session: id, err: errSummary(err) }, 'could not destroy an election session of the previous run; retrying');
        }
      }
      await this.#persist().catch(() => undefined);
      if (this.#leftovers.size > 0) await sleepUnlessAborted(backoffDelay(attempt, { baseMs: 500, maxMs: 10_000 }), this.#abort.signal);
    }
    if (this.#leftovers.size > 0 && Date.now() >= giveUpAt) {
      this.#leftovers.clear();
      await this.#persist().catch(() => undefined);
    }
  }
}
