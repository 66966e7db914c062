// Remote drain: watches `tandem/drain/<node>` in Consul KV and drains this host when an operator writes it.
import { EventEmitter } from 'node:events';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Logger } from 'pino';
import type { ConsulClient } from '../consul/consul-client.ts';
import { errSummary } from '../common/errors.ts';
import type { Registrar } from '../registration/registrar.ts';

export const DRAIN_PREFIX = 'tandem/drain/';

export interface DrainRequest {
  reason: string;
  /** How long apps get to say ready-to-stop before their services are deregistered anyway. */
  deadlineMs: number;
  requestedAt: number;
  state?: 'draining' | 'drained';
  drainedAt?: number;
}

export type DrainState = { state: 'serving' } | { state: 'draining' | 'drained'; reason: string; deadline: number };

/**
 * The drain of this host. Order: maintenance with the reason (instances leave `?passing`, the UI shows
 * why) → `drain` to the apps (lifecycle stream) → wait for the ready-to-stop of every app listening
 * (or the deadline; without listeners, the registrar's drain time) → deregister → mark the key `drained`. Deleting the key before that reverses it (`undrain`).
 * Emits `drain`, `undrain`, `drained` for the lifecycle stream.
 */
export class DrainController extends EventEmitter {
  #o: { consul: ConsulClient; registrar: Registrar; logger: Logger; nodeName: string; waitMs: number; graceMs: number };
  #abort = new AbortController();
  #state: DrainState = { state: 'serving' };
  #ready = new Set<string>();
  #wake: (() => void) | undefined;
  #ids: string[] = [];
  /** Services whose app holds a lifecycle stream open: only those are waited for (ready-to-stop). */
  #listening = new Map<symbol, ReadonlySet<string>>();

  /** `graceMs`: how long services without a listening app stay in maintenance before deregistration. */
  constructor(o: { consul: ConsulClient; registrar: Registrar; logger: Logger; nodeName: string; waitMs: number; graceMs: number }) {
    super();
    this.#o = o;
  }

  get key(): string {
    return `${DRAIN_PREFIX}${this.#o.nodeName}`;
  }

  get state(): DrainState {
    return this.#state;
  }

  start(): void {
    void this.#loop();
  }

  close(): void {
    this.#abort.abort();
    this.#wake?.();
  }

  /** An app opened the lifecycle stream for these services; returns the function to call when it closes. */
  listen(serviceIds: readonly string[]): () => void {
    const key = Symbol('lifecycle');
    this.#listening.set(key, new Set(serviceIds));
    return () => {
      this.#listening.delete(key);
      this.#wake?.();
    };
  }

  /** An app says it finished its in-flight work for this service. */
  readyToStop(id: string): void {
    this.#ready.add(id);
    this.#wake?.();
  }

  async #loop(): Promise<void> {
    const signal = this.#abort.signal;
    let index = 0;
    let failures = 0;
    while (!signal.aborted) {
      try {
        const r = await this.#o.consul.kvGet(this.key, { index, waitMs: this.#o.waitMs, signal });
        index = r.index < index ? 0 : Math.max(r.index, 1);
        failures = 0;
        let req: DrainRequest | undefined;
        try {
          req = r.value && r.value.value ? (JSON.parse(r.value.value) as DrainRequest) : undefined;
        } catch {
          req = undefined;
        }
        if (req && req.state !== 'drained' && this.#state.state === 'serving') void this.#drain(req);
        else if (!req && this.#state.state === 'draining') await this.#undrain();
      } catch (err) {
        if (signal.aborted) return;
        if (failures++ === 0) this.#o.logger.warn({ err: errSummary(err) }, 'drain watch failed; retrying');
        await sleep(Math.min(100 * 2 ** failures, 5000), undefined, { signal }).catch(() => undefined);
      }
    }
  }

  async #drain(req: DrainRequest): Promise<void> {
    const deadline = Date.now() + req.deadlineMs;
    const reason = req.reason || 'drained by an operator';
    this.#state = { state: 'draining', reason, deadline };
    this.#ready.clear();
    const apps = this.#o.registrar.appServices();
    this.#ids = apps.map((a) => a.id);
    this.#o.logger.warn({ reason, services: this.#ids }, 'draining this host');
    try {
      await this.#o.registrar.setMaintenance(this.#ids, true, `tandem drain: ${reason}`);
    } catch (err) {
      this.#o.logger.error({ err: errSummary(err) }, 'could not put services in maintenance');
    }
    this.emit('drain', { reason, deadline });
    // Only apps listening on the lifecycle stream can answer; the others get the registrar's drain time.
    const listening = () => {
      const ids = new Set<string>();
      for (const set of this.#listening.values()) for (const id of set) if (this.#ids.includes(id)) ids.add(id);
      return [...ids];
    };
    if (listening().length === 0 && this.#o.graceMs > 0) await sleep(Math.min(this.#o.graceMs, Math.max(0, deadline - Date.now())));
    while (this.#state.state === 'draining' && Date.now() < deadline && !listening().every((id) => this.#ready.has(id))) {
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, Math.min(1000, Math.max(0, deadline - Date.now())));
        this.#wake = () => {
          clearTimeout(t);
          resolve();
        };
      });
      this.#wake = undefined;
    }
    if (this.#state.state !== 'draining' || this.#abort.signal.aborted) return; // undrained meanwhile
    await this.#o.registrar.removeNow(this.#ids);
    this.#state = { state: 'drained', reason, deadline };
    this.emit('drained', { reason });
    try {
      await this.#o.consul.kvPut(this.key, JSON.stringify({ ...req, state: 'drained', drainedAt: Date.now() }));
    } catch (err) {
      this.#o.logger.warn({ err: errSummary(err) }, 'could not mark the drain done');
    }
    this.#o.logger.warn({ reason }, 'host drained: its services are deregistered');
  }

  async #undrain(): Promise<void> {
    this.#state = { state: 'serving' };
    this.#wake?.();
    try {
      await this.#o.registrar.setMaintenance(this.#ids, false);
    } catch (err) {
      this.#o.logger.error({ err: errSummary(err) }, 'could not take services out of maintenance');
    }
    this.emit('undrain', {});
    this.#o.logger.info('drain cancelled: serving again');
  }
}
