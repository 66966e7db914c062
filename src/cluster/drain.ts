// Remote drain: watches `tandem/drain/<node>` in Consul KV and drains this host when an operator writes it.
import { EventEmitter } from 'node:events';
import type { Logger } from 'pino';
import { sleepUnlessAborted } from '../consul/backoff.ts';
import { BlockingQuery } from '../consul/blocking-query.ts';
import type { CallOptions, ConsulClient, KvEntry } from '../consul/consul-client.ts';
import { errSummary } from '../common/errors.ts';
import type { Registrar } from '../registration/registrar.ts';
import { InvalidNameError, isValidName } from './names.ts';

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

export interface DrainOptions {
  consul: ConsulClient;
  registrar: Registrar;
  logger: Logger;
  nodeName: string;
  waitMs: number;
  maxBackoffMs: number;
  graceMs: number;
}

function drainKey(node: string): string {
  if (!isValidName(node)) throw new InvalidNameError('node', node);
  return `${DRAIN_PREFIX}${node}`;
}

function parseRequest(entry: KvEntry | undefined): DrainRequest | undefined {
  if (!entry?.value) return undefined;
  try {
    const v = JSON.parse(entry.value) as unknown;
    return typeof v === 'object' && v !== null && !Array.isArray(v) ? (v as DrainRequest) : undefined;
  } catch {
    return undefined;
  }
}

/**
 * The drain of this host. Order: maintenance with the reason (instances leave `?passing`, the UI shows
 * why) → `drain` to the apps (lifecycle stream) → wait for the ready-to-stop of every app listening
 * (or the deadline; without listeners, the registrar's drain time) → deregister → mark the key `drained`. Deleting the key before that reverses it (`undrain`).
 * Emits `drain`, `undrain`, `drained` for the lifecycle stream. The key is watched through the
 * blocking-query engine with a reserved lease; the requests for any node (`request`, `cancel`, `read`)
 * go through here too, so that the control API never talks to Consul itself.
 */
export class DrainController extends EventEmitter {
  #o: DrainOptions;
  #abort = new AbortController();
  #query: BlockingQuery<KvEntry | undefined>;
  #state: DrainState = { state: 'serving' };
  #ready = new Set<string>();
  #wake: (() => void) | undefined;
  #ids: string[] = [];
  /** Each drain run's number: a run that is no longer the latest (undrained, drained again) stops. */
  #gen = 0;
  /** Services whose app holds a lifecycle stream open: only those are waited for (ready-to-stop). */
  #listening = new Map<symbol, ReadonlySet<string>>();

  /** `graceMs`: how long services without a listening app stay in maintenance before deregistration. */
  constructor(o: DrainOptions) {
    super();
    this.#o = o;
    const key = this.key;
    this.#query = new BlockingQuery<KvEntry | undefined>({
      name: `kv:${key}`,
      fetch: (q) => o.consul.kvGet(key, q),
      waitMs: o.waitMs,
      maxBackoffMs: o.maxBackoffMs,
      budget: o.consul.budget,
      kind: 'reserved',
      // A wake-up without a new write is not a new request.
      equals: (a, b) => a?.modifyIndex === b?.modifyIndex,
      onFailing: (failing, err) => {
        if (failing) o.logger.warn({ err: errSummary(err) }, 'drain watch failed; retrying');
      },
    });
  }

  get key(): string {
    return `${DRAIN_PREFIX}${this.#o.nodeName}`;
  }

  get state(): DrainState {
    return this.#state;
  }

  start(): void {
    this.#query.subscribe((entry) => this.#onRequest(parseRequest(entry), entry?.modifyIndex ?? 0));
  }

  close(): void {
    this.#abort.abort();
    this.#query.close();
    this.#wake?.();
  }

  /** Asks `node`'s sidecar to drain its host (a KV write with the caller's credentials). */
  async request(node: string, req: DrainRequest, call?: CallOptions): Promise<void> {
    await this.#o.consul.kvPut(drainKey(node), JSON.stringify(req), {}, call);
  }

  /** Cancels an unfinished drain of `node` (or forgets a finished one). */
  async cancel(node: string, call?: CallOptions): Promise<void> {
    await this.#o.consul.kvDelete(drainKey(node), {}, call);
  }

  /** The drain request for `node`, or undefined when it is serving. */
  async read(node: string): Promise<DrainRequest | undefined> {
    return parseRequest((await this.#o.consul.kvGet(drainKey(node))).value);
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

  #onRequest(req: DrainRequest | undefined, modifyIndex: number): void {
    // Every new request drains (again): after a finished drain, services registered since then go too;
    // during a drain, the newest request's reason and deadline replace the old ones.
    if (req && req.state !== 'drained') void this.#drain(req, modifyIndex);
    else if (!req && this.#state.state === 'draining') void this.#undrain();
    else if (!req && this.#state.state === 'drained') {
      this.#gen++;
      this.#state = { state: 'serving' };
    }
  }

  async #drain(req: DrainRequest, modifyIndex: number): Promise<void> {
    const gen = ++this.#gen;
    const current = () => this.#gen === gen && !this.#abort.signal.aborted;
    this.#wake?.();
    const deadline = Date.now() + req.deadlineMs;
    const reason = req.reason || 'drained by an operator';
    // A request replacing one still draining keeps that drain's services (they are in maintenance).
    const wasDraining = this.#state.state === 'draining';
    this.#state = { state: 'draining', reason, deadline };
    this.#ready.clear();
    const apps = this.#o.registrar.appServices();
    this.#ids = [...new Set([...(wasDraining ? this.#ids : []), ...apps.map((a) => a.id)])];
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
    if (listening().length === 0 && this.#o.graceMs > 0) await sleepUnlessAborted(Math.min(this.#o.graceMs, Math.max(0, deadline - Date.now())), this.#abort.signal);
    while (current() && Date.now() < deadline && !listening().every((id) => this.#ready.has(id))) {
      let wake: (() => void) | undefined;
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, Math.min(1000, Math.max(0, deadline - Date.now())));
        wake = () => {
          clearTimeout(t);
          resolve();
        };
        this.#wake = wake;
      });
      if (this.#wake === wake) this.#wake = undefined;
    }
    // Undrained, or replaced by a newer request, meanwhile: this run's deadline no longer counts.
    if (!current()) return;
    await this.#o.registrar.removeNow(this.#ids);
    if (!current()) return;
    this.#state = { state: 'drained', reason, deadline };
    this.emit('drained', { reason });
    try {
      // Only over the request this run answered: an undrain or a new request meanwhile must not be overwritten.
      await this.#o.consul.kvPut(this.key, JSON.stringify({ ...req, state: 'drained', drainedAt: Date.now() }), { cas: modifyIndex });
    } catch (err) {
      this.#o.logger.warn({ err: errSummary(err) }, 'could not mark the drain done');
    }
    this.#o.logger.warn({ reason }, 'host drained: its services are deregistered');
  }

  async #undrain(): Promise<void> {
    this.#gen++;
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
