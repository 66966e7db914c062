// Cluster pub/sub on Consul KV: events are keys `tandem/events/<topic>/<publisher>/<seq>`; every topic shares one blocking query.
import type { Logger } from 'pino';
import type { TandemEvent } from '../protocol/wire.ts';
import { backoffDelay } from '../consul/backoff.ts';
import { BlockingQuery } from '../consul/blocking-query.ts';
import type { CallOptions, ConsulClient } from '../consul/consul-client.ts';
import { errSummary, ShuttingDownError, TandemError } from '../common/errors.ts';
import { encodeEvent, EVENT_PREFIX, eventKey, isFromTheFuture, parseEventKey, TopicFeed, type Cursor, type EventKey, type FeedSubscriber } from './event-feed.ts';
import { InvalidNameError, isValidName } from './names.ts';

export { EVENT_PREFIX };
export type { Cursor, FeedSubscriber, TandemEvent };

export interface EventBusOptions {
  consul: ConsulClient;
  logger: Logger;
  retentionMs: number;
  waitMs: number;
  maxBackoffMs: number;
}

/** The CAS write did not store the event (its key already existed): nothing was published. */
export class EventNotStoredError extends TandemError {
  constructor(topic: string) {
    super('TANDEM_ERR_EVENT_NOT_STORED', 409, `the event on '${topic}' was not stored: Consul refused the write because its key already exists; publish it again`);
  }
}

export interface Subscription {
  /** Stops delivery; the last subscription of the bus also ends its Consul query. Idempotent. */
  close(): void;
}

/** What the bus holds right now (for status and tests): all zero/false when no one listens. */
export interface EventBusStats {
  topics: number;
  subscribers: number;
  watching: boolean;
  retryScheduled: boolean;
}

/** The one query on the events prefix, alive while at least one topic has a subscriber. */
interface Watch {
  query: BlockingQuery<string[]>;
  unsubscribe: () => void;
  /** Cancels the value reads of this watch's syncs. */
  abort: AbortController;
  keys: string[] | undefined;
}

/**
 * Events for every topic come from one blocking query on `tandem/events/` (a reserved lease of the
 * connection budget), fanned out per topic in memory: 230 topics cost what one does, and a topic no one
 * listens to costs nothing — its values are never read. The query exists only while someone listens.
 *
 * Trust on read (see TopicFeed): a key's value must name the key's publisher and seq; a seq further
 * ahead than clock skew explains when first seen is ignored and deleted, and one a little ahead waits
 * until our clock reaches it, so a forged key cannot silence a publisher; an event whose read failed
 * holds back that publisher's later ones until a retry reads it.
 */
export class EventBus {
  #o: EventBusOptions;
  #feeds = new Map<string, TopicFeed>();
  #watch: Watch | undefined;
  #dirty = false;
  #syncing = false;
  #retryTimer: NodeJS.Timeout | undefined;
  #retryAttempt = 0;
  /** Wakes the feeds when the earliest event waiting for its seq's time is due. */
  #dueTimer: NodeJS.Timeout | undefined;
  #dueAt = Infinity;
  #lastSeq = 0;
  #publishing = new Map<string, Promise<unknown>>();
  #cleaner: NodeJS.Timeout | undefined;
  #publisherId = '';
  #closed = false;

  constructor(opts: EventBusOptions) {
    this.#o = opts;
  }

  /** `publisherId` is this sidecar's id: the publisher part of its events' keys. */
  start(publisherId: string): void {
    this.#publisherId = publisherId;
    this.#cleaner = setInterval(() => void this.#clean(), Math.max(1000, Math.floor(this.#o.retentionMs / 4)));
    this.#cleaner.unref();
  }

  close(): void {
    this.#closed = true;
    if (this.#cleaner) clearInterval(this.#cleaner);
    this.#feeds.clear();
    this.#stopWatch();
    this.#query?.close();
  }

  stats(): EventBusStats {
    let subscribers = 0;
    for (const f of this.#feeds.values()) subscribers += f.size;
    return { topics: this.#feeds.size, subscribers, watching: this.#watch !== undefined, retryScheduled: this.#retryTimer !== undefined };
  }

  /**
   * Stores one event with the caller's credentials; one publisher's events on a topic commit in seq
   * order. Throws EventNotStoredError (409) when Consul did not store it.
   */
  publish(topic: string, payload: unknown, call?: CallOptions): Promise<TandemEvent> {
    if (!isValidName(topic)) throw new InvalidNameError('topic', topic);
    const prev = this.#publishing.get(topic) ?? Promise.resolve();
    const next = prev.then(async () => {
      const ts = Date.now();
      // Time-based and strictly increasing: a restarted sidecar (same id) continues above its old events.
      const seq = Math.max(this.#lastSeq + 1, ts * 1000);
      this.#lastSeq = seq;
      const stored = await this.#o.consul.kvPut(eventKey(topic, this.#publisherId, seq), encodeEvent(this.#publisherId, seq, ts, payload), { cas: 0 }, call);
      if (!stored) throw new EventNotStoredError(topic);
      return { id: `${this.#publisherId}:${seq}`, topic, publisher: this.#publisherId, seq, ts, payload };
    });
    const tail = next.catch(() => undefined);
    this.#publishing.set(topic, tail);
    void tail.then(() => {
      if (this.#publishing.get(topic) === tail) this.#publishing.delete(topic);
    });
    return next;
  }

  /**
   * Delivers every event of `topic` past `cursor` (undefined: every event published from this call
   * on, however late Consul answers), retained ones first:
   * `handlers.start` gets the starting cursor once the topic's retained events are read, then `event`
   * each event. No handler runs before this returns. Throws on a bad topic, or (503) when the
   * connection budget has no room for the events query.
   */
  subscribe(topic: string, cursor: Cursor | undefined, handlers: FeedSubscriber): Subscription {
    if (this.#closed) throw new ShuttingDownError();
    if (!isValidName(topic)) throw new InvalidNameError('topic', topic);
    this.#ensureWatch();
    let feed = this.#feeds.get(topic);
    if (!feed) {
      feed = new TopicFeed(topic);
      this.#feeds.set(topic, feed);
    }
    const f = feed;
    const remove = f.add(handlers, cursor);
    if (!f.loaded) this.#kick();
    let open = true;
    return {
      close: () => {
        if (!open) return;
        open = false;
        remove();
        if (f.size === 0 && this.#feeds.get(topic) === f) this.#feeds.delete(topic);
        if (this.#feeds.size === 0) this.#stopWatch();
      },
    };
  }

  /**
   * One query for the bus's whole life: when the last topic goes its loop stops after the request in
   * flight, and a topic opened meanwhile reuses it — open/close churn costs no new connection.
   */
  #query: BlockingQuery<string[]> | undefined;

  #ensureWatch(): void {
    if (this.#watch) return;
    const query = (this.#query ??= new BlockingQuery<string[]>({
      name: `kv:${EVENT_PREFIX}`,
      fetch: (q) => this.#o.consul.kvKeys(EVENT_PREFIX, q),
      waitMs: this.#o.waitMs,
      maxBackoffMs: this.#o.maxBackoffMs,
      budget: this.#o.consul.budget,
      kind: 'reserved',
      onFailing: (failing, err) => {
        if (failing) this.#o.logger.warn({ err: errSummary(err) }, 'event watch failed; retrying');
        else this.#o.logger.info('event watch answers again');
      },
    }));
    const watch: Watch = { query, unsubscribe: () => undefined, abort: new AbortController(), keys: undefined };
    // Throws (nothing started) when the budget has no room.
    watch.unsubscribe = query.subscribe((keys) => {
      if (this.#watch !== watch) return;
      watch.keys = keys;
      this.#kick();
    });
    this.#watch = watch;
  }

  /** Leaves the query (it ends after its request in flight), ends the value reads and the retry timer. */
  #stopWatch(): void {
    const w = this.#watch;
    this.#watch = undefined;
    if (!w) return;
    w.unsubscribe();
    w.abort.abort();
    if (this.#retryTimer) clearTimeout(this.#retryTimer);
    this.#retryTimer = undefined;
    this.#retryAttempt = 0;
    if (this.#dueTimer) clearTimeout(this.#dueTimer);
    this.#dueTimer = undefined;
    this.#dueAt = Infinity;
  }

  /** Brings every feed up to the latest key list; runs one sync at a time, again when asked meanwhile. */
  #kick(): void {
    this.#dirty = true;
    if (!this.#syncing) void this.#syncLoop();
  }

  async #syncLoop(): Promise<void> {
    this.#syncing = true;
    try {
      while (this.#dirty) {
        this.#dirty = false;
        const w = this.#watch;
        if (!w?.keys) break;
        await this.#syncAll(w, w.keys);
      }
    } catch (err) {
      this.#o.logger.warn({ err: errSummary(err) }, 'event delivery failed');
    } finally {
      this.#syncing = false;
    }
  }

  async #syncAll(w: Watch, keys: readonly string[]): Promise<void> {
    const byTopic = new Map<string, EventKey[]>();
    for (const key of keys) {
      const k = parseEventKey(key);
      if (!k || !this.#feeds.has(k.topic)) continue;
      const list = byTopic.get(k.topic);
      if (list) list.push(k);
      else byTopic.set(k.topic, [k]);
    }
    let failing = 0;
    let nextDueMs = Infinity;
    for (const feed of [...this.#feeds.values()]) {
      if (w.abort.signal.aborted) return;
      const r = await feed.sync(byTopic.get(feed.topic) ?? [], (key) => this.#read(key, w.abort.signal));
      for (const key of r.rejected) this.#o.logger.warn({ key }, 'ignoring an event whose stored value does not match its key (publisher and seq)');
      for (const k of r.ahead) this.#discard(k);
      failing += feed.failedReads;
      if (r.nextDueMs !== undefined) nextDueMs = Math.min(nextDueMs, r.nextDueMs);
    }
    if (this.#watch !== w) return;
    this.#wakeAt(nextDueMs);
    if (failing === 0) {
      this.#retryAttempt = 0;
      return;
    }
    // Failed reads are retried from the same key list: later events of their publishers wait for them.
    if (this.#retryTimer) return;
    this.#retryTimer = setTimeout(() => {
      this.#retryTimer = undefined;
      this.#kick();
    }, backoffDelay(++this.#retryAttempt, { baseMs: 200, maxMs: this.#o.maxBackoffMs }));
    this.#retryTimer.unref();
  }

  /** Syncs again when the earliest held event is due (one timer, moved earlier when needed). */
  #wakeAt(ms: number): void {
    if (ms === Infinity || ms >= this.#dueAt) return;
    if (this.#dueTimer) clearTimeout(this.#dueTimer);
    this.#dueAt = ms;
    // +1 ms: the feed compares whole milliseconds, and a timer may fire within the millisecond it was set for.
    this.#dueTimer = setTimeout(() => {
      this.#dueTimer = undefined;
      this.#dueAt = Infinity;
      this.#kick();
    }, Math.max(0, ms - Date.now()) + 1);
    this.#dueTimer.unref();
  }

  async #read(key: string, signal: AbortSignal): Promise<string | undefined> {
    const r = await this.#o.consul.kvGet(key, { signal });
    return r.value ? r.value.value : undefined;
  }

  /** A key too far ahead when first seen: never delivered (its feed remembers), and deleted so that no later reader takes it. */
  #discard(k: EventKey): void {
    this.#o.logger.warn({ key: k.key, publisher: k.publisher }, 'deleting an event whose seq is further in the future than clock skew explains (forged, or its publisher\'s clock is off)');
    this.#o.consul.kvDelete(k.key).catch((err: unknown) => this.#o.logger.warn({ key: k.key, err: errSummary(err) }, 'could not delete a future event'));
  }

  /** Deletes this publisher's events past retention, anyone's past twice the retention, and future ones. */
  async #clean(): Promise<void> {
    try {
      const { value: keys } = await this.#o.consul.kvKeys(EVENT_PREFIX, { index: 0, waitMs: 0 });
      const nowMs = Date.now();
      for (const key of keys) {
        const p = parseEventKey(key);
        if (!p) continue;
        const ageMs = nowMs - p.seq / 1000;
        if (isFromTheFuture(p, nowMs) || (p.publisher === this.#publisherId && ageMs > this.#o.retentionMs) || ageMs > 2 * this.#o.retentionMs) await this.#o.consul.kvDelete(key);
      }
    } catch (err) {
      this.#o.logger.warn({ err: errSummary(err) }, 'event retention clean-up failed');
    }
  }
}
