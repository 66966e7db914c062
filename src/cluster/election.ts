// Leader election on Consul sessions and a KV lock `tandem/leaders/<group>`, one campaign per app contender.
import { setTimeout as sleep } from 'node:timers/promises';
import type { Logger } from 'pino';
import type { LeaderInfo } from '../protocol/wire.ts';
import type { ConsulClient } from '../consul/consul-client.ts';
import { errSummary } from '../common/errors.ts';

export const LEADER_PREFIX = 'tandem/leaders/';
export const GROUP_PATTERN = '^[A-Za-z0-9_.-]{1,128}$';

export type { LeaderInfo };

export interface CampaignEvents {
  promoted(info: LeaderInfo): void;
  demoted(reason: string): void;
  error(message: string): void;
}

export interface ElectionOptions {
  consul: ConsulClient;
  logger: Logger;
  nodeName: string;
  sidecarId: () => string;
  /** Consul's lock-delay after a session is invalidated (not after a voluntary release). */
  lockDelayMs: number;
  waitMs: number;
}

/**
 * One contender. Its session is tied to serfHealth (the node) and the app's own service check, so a
 * crashed or hung app loses the lock; a contender that leaves releases it at once (no lock-delay).
 */
export class Campaign {
  readonly group: string;
  readonly serviceId: string;
  #o: ElectionOptions;
  #events: CampaignEvents;
  #abort = new AbortController();
  #session: string | undefined;
  #leader = false;
  #done: Promise<void>;

  constructor(group: string, serviceId: string, o: ElectionOptions, events: CampaignEvents) {
    this.group = group;
    this.serviceId = serviceId;
    this.#o = o;
    this.#events = events;
    this.#done = this.#run();
  }

  get key(): string {
    return `${LEADER_PREFIX}${this.group}`;
  }

  /** Leaves the election: releases the lock if held, destroys the session. */
  async resign(): Promise<void> {
    this.#abort.abort();
    await this.#done.catch(() => undefined);
    const session = this.#session;
    this.#session = undefined;
    if (!session) return;
    try {
      if (this.#leader) await this.#o.consul.kvPut(this.key, '', { release: session });
      await this.#o.consul.sessionDestroy(session);
    } catch (err) {
      this.#o.logger.warn({ group: this.group, err: errSummary(err) }, 'could not release the leader lock cleanly; its session will expire');
    }
    this.#leader = false;
  }

  async #run(): Promise<void> {
    const signal = this.#abort.signal;
    let index = 0;
    let failures = 0;
    while (!signal.aborted) {
      try {
        this.#session ??= await this.#o.consul.sessionCreate({
          name: `tandem election ${this.group} (${this.serviceId})`,
          checks: ['serfHealth', `service:${this.serviceId}`],
          lockDelayMs: this.#o.lockDelayMs,
          behavior: 'release',
        });
        const cur = await this.#o.consul.kvGet(this.key, { index, waitMs: this.#o.waitMs, signal });
        index = cur.index < index ? 0 : Math.max(cur.index, 1);
        failures = 0;
        const holder = cur.value?.session;
        if (this.#leader && holder !== this.#session) {
          this.#leader = false;
          // Our session was invalidated (app critical, node failed) or the lock taken from us.
          this.#session = undefined;
          this.#events.demoted('the lock was lost (the session was invalidated)');
          continue;
        }
        if (!holder && !this.#leader) {
          const value = JSON.stringify({ serviceId: this.serviceId, node: this.#o.nodeName, sidecar: this.#o.sidecarId(), since: Date.now() });
          if (await this.#o.consul.kvPut(this.key, value, { acquire: this.#session })) {
            const mine = await this.#o.consul.kvGet(this.key);
            if (mine.value?.session === this.#session) {
              this.#leader = true;
              const v = JSON.parse(mine.value.value) as Omit<LeaderInfo, 'group' | 'token'>;
              this.#events.promoted({ group: this.group, ...v, token: mine.value.modifyIndex });
            }
            index = 0;
          } else {
            // Lock-delay after an invalidated session: try again shortly.
            await sleep(Math.min(1000, this.#o.lockDelayMs || 250), undefined, { signal }).catch(() => undefined);
            index = 0;
          }
        }
      } catch (err) {
        if (signal.aborted) return;
        failures++;
        const msg = errSummary(err).message;
        if (/Check 'service:.*' is in critical state|invalid check|Missing check/i.test(msg) || /session/i.test(msg)) this.#session = undefined;
        if (failures === 1) this.#events.error(msg);
        await sleep(Math.min(100 * 2 ** failures, 3000) * (0.5 + Math.random() / 2), undefined, { signal }).catch(() => undefined);
      }
    }
  }
}

/** The current leader of a group, read from its lock key. */
export async function currentLeader(consul: ConsulClient, group: string): Promise<LeaderInfo | null> {
  const r = await consul.kvGet(`${LEADER_PREFIX}${group}`);
  if (!r.value?.session || r.value.value === '') return null;
  try {
    const v = JSON.parse(r.value.value) as Omit<LeaderInfo, 'group' | 'token'>;
    return { group, ...v, token: r.value.modifyIndex };
  } catch {
    return null;
  }
}
