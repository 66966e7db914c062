// One contender of a leader election: its Consul session, its attempts on the lock, and what it tells its app.
import type { LeaderInfo } from '../protocol/wire.ts';
import { backoffDelay } from '../consul/backoff.ts';
import type { CallOptions, ConsulClient, KvEntry } from '../consul/consul-client.ts';
import { ConsulPermissionError } from '../consul/errors.ts';
import { errSummary } from '../common/errors.ts';

export const LEADER_PREFIX = 'tandem/leaders/';

export interface CampaignEvents {
  promoted(info: LeaderInfo): void;
  demoted(reason: string): void;
  /** A step failed (Consul unreachable, a check not passing, ...): the campaign retries with backoff. */
  error(message: string): void;
  /**
   * Consul refused one of the campaign's own writes (403: its token may not do it). Retrying cannot
   * help, so the campaign is over: it has resigned, and its stream should say why and close.
   */
  refused(err: ConsulPermissionError): void;
}

/** What a campaign needs from the elections module that runs it. */
export interface CampaignContext {
  consul: ConsulClient;
  nodeName: string;
  sidecarId: () => string;
  lockDelayMs: number;
  sessionTtlMs: number;
  /** Creates a session and records it in the state dir before it can hold any lock. */
  createSession(c: Campaign): Promise<string>;
  /** The session is gone (destroyed by us, or by Consul): forget it. */
  forgetSession(id: string): void;
  /** Destroying it failed: keep it in the state dir, the next start destroys it. */
  keepSession(id: string): void;
  onResigned(c: Campaign): void;
}

/** Parses a lock's value as the elections module writes it. */
export function leaderInfo(group: string, entry: KvEntry | undefined): LeaderInfo | null {
  if (!entry?.session || entry.value === '') return null;
  try {
    const v = JSON.parse(entry.value) as Omit<LeaderInfo, 'group' | 'token'>;
    return { group, ...v, token: entry.modifyIndex };
  } catch {
    return null;
  }
}

/**
 * One contender. Its session is tied to serfHealth (the node), the app's own service check, and a
 * TTL the sidecar renews: a crashed or hung app, a lost node or a killed sidecar all end it. A
 * contender that leaves releases the lock at once (no lock-delay).
 *
 * Session loss is decided by Consul's answer, never by an error's text: a renewal answering "not
 * found" or a session read answering "no such session" is a loss; a failed call is "unknown" and
 * is retried. A 403 on one of its own writes (session, lock, renewal: made with the caller's
 * credentials) ends the campaign instead: the same token would be refused forever, and hundreds of
 * streams retrying it would only load Consul.
 */
export class Campaign {
  readonly group: string;
  readonly serviceId: string;
  readonly call: CallOptions;
  #ctx: CampaignContext;
  #events: CampaignEvents;
  #session: string | undefined;
  #leader = false;
  #resigned = false;
  #resigning: Promise<void> | undefined;
  /** The lock key as the shared query last saw it; `seen` once there was an answer. */
  #entry: KvEntry | undefined;
  #seen = false;
  #running: Promise<void> | undefined;
  #again = false;
  /** After a failed step: check that the session still exists before using it again. */
  #verify = false;
  #failures = 0;
  #retryTimer: NodeJS.Timeout | undefined;

  constructor(group: string, serviceId: string, call: CallOptions, ctx: CampaignContext, events: CampaignEvents) {
    this.group = group;
    this.serviceId = serviceId;
    this.call = call;
    this.#ctx = ctx;
    this.#events = events;
  }

  get key(): string {
    return `${LEADER_PREFIX}${this.group}`;
  }

  get session(): string | undefined {
    return this.#session;
  }

  get leader(): boolean {
    return this.#leader;
  }

  /** The shared query's view of this group's lock key changed (or was read for the first time). */
  update(entry: KvEntry | undefined): void {
    this.#entry = entry;
    this.#seen = true;
    this.#kick();
  }

  /** Called by the renewal timer: false from Consul means the session is gone; a throw means unknown. */
  async renew(): Promise<void> {
    const id = this.#session;
    if (!id || this.#resigned) return;
    let alive: boolean;
    try {
      alive = await this.#ctx.consul.sessionRenew(id, this.call);
    } catch (err) {
      if (!(err instanceof ConsulPermissionError)) throw err;
      this.#refused(err);
      return;
    }
    if (!alive && this.#session === id) this.#lost(id, 'the session expired or was invalidated');
  }

  /** Leaves the election: releases the lock if held, destroys the session. Idempotent. */
  resign(): Promise<void> {
    this.#resigning ??= this.#resign();
    return this.#resigning;
  }

  async #resign(): Promise<void> {
    this.#resigned = true;
    if (this.#retryTimer) clearTimeout(this.#retryTimer);
    this.#retryTimer = undefined;
    // A step in flight could still take the lock: release only after it.
    await this.#running;
    const id = this.#session;
    this.#session = undefined;
    this.#leader = false;
    this.#ctx.onResigned(this);
    if (!id) return;
    try {
      await this.#ctx.consul.kvPut(this.key, '', { release: id }, this.call);
      await this.#ctx.consul.sessionDestroy(id, this.call);
      this.#ctx.forgetSession(id);
    } catch {
      // Its TTL ends it anyway; the state dir keeps its id so that the next start destroys it.
      this.#ctx.keepSession(id);
    }
  }

  #lost(id: string, reason: string): void {
    this.#ctx.forgetSession(id);
    if (this.#session !== id) return;
    this.#session = undefined;
    if (this.#leader) {
      this.#leader = false;
      this.#events.demoted(reason);
    }
    this.#kick();
  }

  /** Ends the campaign after a refused write: demoted if it led, told why, resigned (the refused session, if any, ends with its TTL). */
  #refused(err: ConsulPermissionError): void {
    if (this.#resigned) return;
    if (this.#leader) {
      this.#leader = false;
      this.#events.demoted(`Consul refused the campaign's token: ${err.detail}`);
    }
    this.#events.refused(err);
    void this.resign();
  }

  /** One of the campaign's own writes: a refusal is marked so that #steps ends the campaign instead of retrying. */
  async #own<T>(write: () => Promise<T>): Promise<T> {
    try {
      return await write();
    } catch (err) {
      throw err instanceof ConsulPermissionError ? new RefusedWrite(err) : err;
    }
  }

  #kick(): void {
    if (this.#resigned) return;
    if (this.#running) {
      this.#again = true;
      return;
    }
    this.#running = this.#steps().finally(() => (this.#running = undefined));
  }

  async #steps(): Promise<void> {
    do {
      this.#again = false;
      try {
        await this.#step();
        this.#failures = 0;
      } catch (err) {
        if (this.#resigned) return;
        if (err instanceof RefusedWrite) {
          this.#refused(err.refusal);
          return;
        }
        this.#verify = true;
        if (this.#failures++ === 0) this.#events.error(errSummary(err).message);
        this.#retry(backoffDelay(this.#failures, { baseMs: 200, maxMs: 3000 }));
      }
    } while (this.#again && !this.#resigned);
  }

  #retry(ms: number): void {
    if (this.#retryTimer || this.#resigned) return;
    this.#retryTimer = setTimeout(() => {
      this.#retryTimer = undefined;
      this.#kick();
    }, ms);
    this.#retryTimer.unref();
  }

  async #step(): Promise<void> {
    if (!this.#seen || this.#resigned) return;
    const consul = this.#ctx.consul;
    if (this.#session && this.#verify) {
      const id = this.#session;
      const exists = await consul.sessionExists(id); // throws: still unknown, try again later
      this.#verify = false;
      if (!exists) this.#lost(id, 'the session was invalidated');
    }
    this.#session ??= await this.#own(() => this.#ctx.createSession(this));
    if (this.#resigned) return;
    const session = this.#session;
    const holder = this.#entry?.session;
    if (this.#leader) {
      if (holder === session) return;
      // The lock is no longer ours: the session was invalidated (app critical, node lost, TTL) or the key was removed.
      this.#leader = false;
      this.#events.demoted('the lock was lost');
      this.#verify = true;
      this.#again = true;
      return;
    }
    if (holder === session) {
      this.#promote(this.#entry);
      return;
    }
    if (holder) return; // someone else leads; the next answer of the shared query wakes us
    const value = JSON.stringify({ serviceId: this.serviceId, node: this.#ctx.nodeName, sidecar: this.#ctx.sidecarId(), since: Date.now() });
    if (await this.#own(() => consul.kvPut(this.key, value, { acquire: session }, this.call))) {
      const mine = await consul.kvGet(this.key);
      if (mine.value?.session === session && !this.#resigned) this.#promote(mine.value);
      return;
    }
    // Not acquired: our session is gone, or the lock-delay after an invalidated holder is running.
    if (!(await consul.sessionExists(session))) {
      this.#lost(session, 'the session was invalidated');
      return;
    }
    this.#retry(Math.min(1000, this.#ctx.lockDelayMs || 250));
  }

  #promote(entry: KvEntry | undefined): void {
    const info = leaderInfo(this.group, entry);
    if (!info || this.#leader) return;
    this.#leader = true;
    this.#events.promoted(info);
  }
}

/** A refusal of one of the campaign's own writes, told apart from the reads it makes with the sidecar's token. */
class RefusedWrite extends Error {
  readonly refusal: ConsulPermissionError;
  constructor(refusal: ConsulPermissionError) {
    super(refusal.message);
    this.refusal = refusal;
  }
}
