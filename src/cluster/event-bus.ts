// Cluster pub/sub on Consul KV: events are keys `tandem/events/<topic>/<publisher>/<seq>`, read with blocking queries.
import { setTimeout as sleep } from 'node:timers/promises';
import type { Logger } from 'pino';
import type { TandemEvent } from '../protocol/wire.ts';
import type { ConsulClient } from '../consul/consul-client.ts';
import { errSummary, TandemError } from '../common/errors.ts';

export const EVENT_PREFIX = 'tandem/events/';
export const TOPIC_PATTERN = '^[A-Za-z0-9_.-]{1,128}$';
const TOPIC = new RegExp(TOPIC_PATTERN);
const SEQ_DIGITS = 16;

export type { TandemEvent };

/** Where a subscriber is: the last seq seen per publisher. Publishers not listed: everything retained. */
export type Cursor = Record<string, number>;

export interface EventBusOptions {
  consul: ConsulClient;
  logger: Logger;
  retentionMs: number;
  waitMs: number;
}

function parseKey(key: string): { topic: string; publisher: string; seq: number } | undefined {
  const parts = key.slice(EVENT_PREFIX.length).split('/');
  if (parts.length !== 3) return undefined;
  const [topic, publisher, seq] = parts as [string, string, string];
  const n = Number(seq);
  return Number.isSafeInteger(n) ? { topic, publisher, seq: n } : undefined;
}

interface Subscriber {
  cursor: Cursor;
  deliver: (e: TandemEvent) => void;
}

/** One topic's feed on this sidecar: a blocking watch of its keys, the retained events, the local subscribers. */
class TopicFeed {
  readonly topic: string;
  readonly subscribers = new Set<Subscriber>();
  /** Retained events by key, in key order once sorted (publisher, then zero-padded seq). */
  events = new Map<string, TandemEvent>();
  #loaded: Promise<void>;
  #markLoaded!: () => void;
  #abort = new AbortController();
  #o: EventBusOptions;

  constructor(topic: string, o: EventBusOptions) {
    this.topic = topic;
    this.#o = o;
    this.#loaded = new Promise((r) => (this.#markLoaded = r));
    void this.#loop();
  }

  /** Resolves once the retained events have been read once. */
  loaded(): Promise<void> {
    return this.#loaded;
  }

  stop(): void {
    this.#abort.abort();
  }

  /** The cursor that makes a new subscriber see only what is published from now on. */
  headCursor(): Cursor {
    const c: Cursor = {};
    for (const e of this.events.values()) if ((c[e.publisher] ?? 0) < e.seq) c[e.publisher] = e.seq;
    return c;
  }

  /** Sends `sub` every retained event past its cursor, each publisher's in order. */
  backlog(sub: Subscriber): void {
    for (const e of this.#ordered([...this.events.values()])) this.#offer(sub, e);
  }

  #offer(sub: Subscriber, e: TandemEvent): void {
    if (e.seq <= (sub.cursor[e.publisher] ?? 0)) return;
    sub.cursor[e.publisher] = e.seq;
    sub.deliver(e);
  }

  #ordered(list: TandemEvent[]): TandemEvent[] {
    return list.sort((a, b) => (a.publisher < b.publisher ? -1 : a.publisher > b.publisher ? 1 : a.seq - b.seq));
  }

  async #loop(): Promise<void> {
    const prefix = `${EVENT_PREFIX}${this.topic}/`;
    const signal = this.#abort.signal;
    let index = 0;
    let failures = 0;
    while (!signal.aborted) {
      let keys: string[];
      try {
        const r = await this.#o.consul.kvKeys(prefix, { index, waitMs: this.#o.waitMs, signal });
        index = r.index < index ? 0 : Math.max(r.index, 1);
        keys = r.value;
        failures = 0;
      } catch (err) {
        if (signal.aborted) return;
        if (failures++ === 0) this.#o.logger.warn({ topic: this.topic, err: errSummary(err) }, 'event feed failed; retrying');
        await sleep(Math.min(100 * 2 ** failures, 5000) * (0.5 + Math.random() / 2), undefined, { signal }).catch(() => undefined);
        continue;
      }
      const present = new Set(keys);
      for (const k of this.events.keys()) if (!present.has(k)) this.events.delete(k);
      const fresh = keys.filter((k) => !this.events.has(k));
      const got = await this.#fetch(fresh, signal);
      for (const [key, e] of got) this.events.set(key, e);
      const added = this.#ordered(got.map(([, e]) => e));
      this.#markLoaded();
      for (const e of added) for (const sub of this.subscribers) this.#offer(sub, e);
    }
  }

  async #fetch(keys: string[], signal: AbortSignal): Promise<[string, TandemEvent][]> {
    const out: [string, TandemEvent][] = [];
    for (let i = 0; i < keys.length && !signal.aborted; i += 16) {
      const batch = await Promise.all(
        keys.slice(i, i + 16).map(async (key) => {
          const parsed = parseKey(key);
          if (!parsed) return undefined;
          try {
            const r = await this.#o.consul.kvGet(key);
            if (!r.value) return undefined; // deleted meanwhile (retention)
            const body = JSON.parse(r.value.value) as { ts: number; payload: unknown };
            const e: TandemEvent = { id: `${parsed.publisher}:${parsed.seq}`, topic: parsed.topic, publisher: parsed.publisher, seq: parsed.seq, ts: body.ts, payload: body.payload };
            return [key, e] as [string, TandemEvent];
          } catch (err) {
            this.#o.logger.warn({ key, err: errSummary(err) }, 'could not read an event');
            return undefined;
          }
        }),
      );
      for (const e of batch) if (e) out.push(e);
    }
    return out;
  }
}

export class InvalidTopicError extends TandemError {
  constructor(topic: string) {
    super('TANDEM_ERR_INVALID_TOPIC', 400, `'${topic.slice(0, 140)}' is not a topic: letters, digits, '_', '.', '-', at most 128`);
  }
}

export class EventBus {
  #o: EventBusOptions;
  #feeds = new Map<string, TopicFeed>();
  #lastSeq = 0;
  #publishing = new Map<string, Promise<unknown>>();
  #cleaner: NodeJS.Timeout | undefined;
  #publisherId = '';

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
    if (this.#cleaner) clearInterval(this.#cleaner);
    for (const f of this.#feeds.values()) f.stop();
    this.#feeds.clear();
  }

  /** Stores one event; one publisher's events commit in seq order (publishes to a topic are serialised). */
  publish(topic: string, payload: unknown): Promise<TandemEvent> {
    if (!TOPIC.test(topic)) throw new InvalidTopicError(topic);
    const prev = this.#publishing.get(topic) ?? Promise.resolve();
    const next = prev.then(async () => {
      const ts = Date.now();
      // Time-based and strictly increasing: a restarted sidecar (same id) continues above its old events.
      const seq = Math.max(this.#lastSeq + 1, ts * 1000);
      this.#lastSeq = seq;
      const key = `${EVENT_PREFIX}${topic}/${this.#publisherId}/${String(seq).padStart(SEQ_DIGITS, '0')}`;
      await this.#o.consul.kvPut(key, JSON.stringify({ ts, payload }), { cas: 0 });
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
   * Delivers every event of `topic` past `cursor` (undefined: from now on), retained ones first.
   * Returns the starting cursor (to hand to the subscriber) and the function that stops it.
   */
  async subscribe(topic: string, cursor: Cursor | undefined, deliver: (e: TandemEvent) => void): Promise<{ cursor: Cursor; close: () => void }> {
    if (!TOPIC.test(topic)) throw new InvalidTopicError(topic);
    let feed = this.#feeds.get(topic);
    if (!feed) {
      feed = new TopicFeed(topic, this.#o);
      this.#feeds.set(topic, feed);
    }
    const f = feed;
    await f.loaded();
    const sub: Subscriber = { cursor: { ...(cursor ?? f.headCursor()) }, deliver };
    const start = { ...sub.cursor };
    f.backlog(sub);
    f.subscribers.add(sub);
    return {
      cursor: start,
      close: () => {
        f.subscribers.delete(sub);
        if (f.subscribers.size === 0 && this.#feeds.get(topic) === f) {
          f.stop();
          this.#feeds.delete(topic);
        }
      },
    };
  }

  /** Deletes this publisher's events past retention, and anyone's past twice the retention. */
  async #clean(): Promise<void> {
    try {
      const { value: keys } = await this.#o.consul.kvKeys(EVENT_PREFIX, { index: 0, waitMs: 0 });
      const now = Date.now() * 1000;
      for (const key of keys) {
        const p = parseKey(key);
        if (!p) continue;
        const ageMs = (now - p.seq) / 1000;
        if ((p.publisher === this.#publisherId && ageMs > this.#o.retentionMs) || ageMs > 2 * this.#o.retentionMs) await this.#o.consul.kvDelete(key);
      }
    } catch (err) {
      this.#o.logger.warn({ err: errSummary(err) }, 'event retention clean-up failed');
    }
  }
}
