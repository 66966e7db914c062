// One topic's events on this sidecar: the keys' format, what makes a stored event trustworthy, and delivery in publisher order.
import type { TandemEvent } from '../protocol/wire.ts';

export const EVENT_PREFIX = 'tandem/events/';
const SEQ_DIGITS = 16;
/**
 * Seqs are µs since the epoch on the publisher's clock. A key whose seq is further ahead than this of
 * when this sidecar first saw it is never delivered (and is deleted): sidecars run NTP, so honest
 * clocks agree far better than 5 s, and a publisher's clock running further ahead than that loses its
 * events. Keys within it are held until our clock reaches their seq (see TopicFeed), so a forged key
 * cannot move a cursor past the real publisher's events either.
 */
export const MAX_CLOCK_SKEW_MS = 5000;

/** Where a subscriber is: the last seq seen per publisher. Publishers not listed: everything retained. */
export type Cursor = Record<string, number>;

export interface EventKey {
  key: string;
  topic: string;
  publisher: string;
  seq: number;
}

export function eventKey(topic: string, publisher: string, seq: number): string {
  return `${EVENT_PREFIX}${topic}/${publisher}/${String(seq).padStart(SEQ_DIGITS, '0')}`;
}

export function parseEventKey(key: string): EventKey | undefined {
  if (!key.startsWith(EVENT_PREFIX)) return undefined;
  const parts = key.slice(EVENT_PREFIX.length).split('/');
  if (parts.length !== 3) return undefined;
  const [topic, publisher, seq] = parts as [string, string, string];
  if (!topic || !publisher || !/^[0-9]{1,16}$/.test(seq)) return undefined;
  // At most 16 digits: beyond 2^53 the number is approximate, but such a seq is centuries ahead (see isFromTheFuture).
  const n = Number(seq);
  return n > 0 ? { key, topic, publisher, seq: n } : undefined;
}

/** True when the key's seq is further ahead of `nowMs` than clock skew explains: never deliver it, delete it. */
export function isFromTheFuture(k: EventKey, nowMs: number): boolean {
  return k.seq > (nowMs + MAX_CLOCK_SKEW_MS) * 1000;
}

/** The stored value: the publisher and seq are repeated so that a key copied or forged elsewhere does not match. */
export function encodeEvent(publisher: string, seq: number, ts: number, payload: unknown): string {
  return JSON.stringify({ publisher, seq, ts, payload });
}

/** The event a key and its stored value make, or undefined when the value does not belong to that key. */
export function decodeEvent(k: EventKey, raw: string): TandemEvent | undefined {
  let body: unknown;
  try {
    body = JSON.parse(raw);
  } catch {
    return undefined;
  }
  if (typeof body !== 'object' || body === null) return undefined;
  const b = body as { publisher?: unknown; seq?: unknown; ts?: unknown; payload?: unknown };
  if (b.publisher !== k.publisher || b.seq !== k.seq || typeof b.ts !== 'number' || !('payload' in b)) return undefined;
  return { id: `${k.publisher}:${k.seq}`, topic: k.topic, publisher: k.publisher, seq: k.seq, ts: b.ts, payload: b.payload };
}

export interface FeedSubscriber {
  /** Called once, with the cursor the subscriber starts from, before any event. */
  start(cursor: Cursor): void;
  event(e: TandemEvent): void;
}

interface Member {
  handlers: FeedSubscriber;
  asked: Cursor | undefined;
  /** When it subscribed (µs, our clock): where "from now on" starts, however late the topic loads. */
  sinceUs: number;
  cursor: Cursor;
  started: boolean;
}

/** Reads one key's value: undefined when it no longer exists; throws when Consul did not answer. */
export type ReadValue = (key: string) => Promise<string | undefined>;

/** What one sync found, for the bus to act on. */
export interface SyncResult {
  /** Keys newly found whose value does not belong to them (forged or damaged). */
  rejected: string[];
  /** Keys newly found whose seq is further ahead than clock skew explains (see MAX_CLOCK_SKEW_MS). */
  ahead: EventKey[];
  /** When the earliest event held until its seq's time becomes due (ms since epoch), if any. */
  nextDueMs: number | undefined;
}

/**
 * A topic's state on one sidecar, fed the topic's keys by the event bus. Events reach subscribers in
 * each publisher's seq order, once. Two things hold back a publisher's later events (a cursor never
 * moves past an event not yet delivered):
 * - an event whose read failed, until a retry reads it;
 * - an event whose seq our clock has not reached yet, until it has. A key is judged once, when this
 *   feed first sees it: more than MAX_CLOCK_SKEW_MS ahead, it is never delivered; within it, it waits
 *   for its time. So a forged key with a seq a little ahead is delivered after every real event of
 *   its publisher published before that time, and moves no cursor past the ones published after.
 */
export class TopicFeed {
  readonly topic: string;
  #clock: () => number;
  #members = new Set<Member>();
  /** Delivered events still retained in Consul, by key. */
  #delivered = new Map<string, TandemEvent>();
  /** Read, but waiting behind an earlier event of the same publisher whose read failed, or for its time. */
  #held = new Map<string, TandemEvent>();
  /** Keys whose value does not belong to them (forged or damaged): never read again. */
  #rejected = new Set<string>();
  /** Keys too far ahead when first seen: never read, never delivered, whatever the clock says later. */
  #ahead = new Set<string>();
  /** Every listed key already judged, so that each is judged against the time it was first seen. */
  #seen = new Set<string>();
  /** Keys whose read failed, with their seq. */
  #failed = new Map<string, EventKey>();
  #keys: readonly EventKey[] = [];
  #loaded = false;

  /** `clock`: ms since the epoch (tests pass their own). */
  constructor(topic: string, clock: () => number = Date.now) {
    this.topic = topic;
    this.#clock = clock;
  }

  get size(): number {
    return this.#members.size;
  }

  get loaded(): boolean {
    return this.#loaded;
  }

  /** Events whose read failed and will be retried. */
  get failedReads(): number {
    return this.#failed.size;
  }

  /**
   * Adds a subscriber from `cursor` (undefined: only what is published from now on, this call's
   * millisecond included). It starts at once when the topic is loaded, otherwise after the first
   * sync. Returns the function removing it.
   */
  add(handlers: FeedSubscriber, cursor: Cursor | undefined): () => void {
    const m: Member = { handlers, asked: cursor ? { ...cursor } : undefined, sinceUs: this.#clock() * 1000, cursor: {}, started: false };
    this.#members.add(m);
    if (this.#loaded) queueMicrotask(() => this.#members.has(m) && this.#start(m));
    return () => void this.#members.delete(m);
  }

  /**
   * Brings the feed up to `keys` (this topic's keys, as Consul listed them): judges the new ones,
   * reads those not too far ahead, keeps those whose value matches its key, and delivers what is no
   * longer held back. Call it again (same keys) at `nextDueMs` to deliver what waited for its time.
   */
  async sync(keys: readonly EventKey[], read: ReadValue, batch = 16): Promise<SyncResult> {
    this.#keys = keys;
    const present = new Set(keys.map((k) => k.key));
    for (const map of [this.#delivered, this.#held, this.#failed]) for (const k of map.keys()) if (!present.has(k)) map.delete(k);
    for (const set of [this.#rejected, this.#ahead, this.#seen]) for (const k of set) if (!present.has(k)) set.delete(k);
    const seenAt = this.#clock();
    const ahead: EventKey[] = [];
    for (const k of keys) {
      if (this.#seen.has(k.key)) continue;
      this.#seen.add(k.key);
      if (isFromTheFuture(k, seenAt)) {
        this.#ahead.add(k.key);
        ahead.push(k);
      }
    }
    const toRead = keys.filter((k) => !this.#delivered.has(k.key) && !this.#held.has(k.key) && !this.#rejected.has(k.key) && !this.#ahead.has(k.key));
    const rejected: string[] = [];
    for (let i = 0; i < toRead.length; i += batch) {
      await Promise.all(
        toRead.slice(i, i + batch).map(async (k) => {
          let raw: string | undefined;
          try {
            raw = await read(k.key);
          } catch {
            this.#failed.set(k.key, k);
            return;
          }
          this.#failed.delete(k.key);
          if (raw === undefined) return; // deleted meanwhile (retention)
          const e = decodeEvent(k, raw);
          if (e) this.#held.set(k.key, e);
          else {
            this.#rejected.add(k.key);
            rejected.push(k.key);
          }
        }),
      );
    }
    const released = this.#release();
    // Only what waits for its time: events behind a failed read are the bus's retry timer's business.
    const nowUs = this.#clock() * 1000;
    let nextDue = Infinity;
    for (const e of this.#held.values()) if (e.seq > nowUs) nextDue = Math.min(nextDue, e.seq);
    const result: SyncResult = { rejected, ahead, nextDueMs: nextDue === Infinity ? undefined : Math.ceil(nextDue / 1000) };
    if (!this.#loaded) {
      this.#loaded = true;
      for (const m of this.#members) this.#start(m);
      return result;
    }
    for (const e of released) for (const m of this.#members) if (m.started) this.#offer(m, e);
    return result;
  }

  /**
   * Moves held events that nothing holds back into `delivered`; returns them in publisher, seq order.
   * A publisher's events from the first failed read, or the first seq our clock has not reached, wait.
   */
  #release(): TandemEvent[] {
    const nowUs = this.#clock() * 1000;
    const blockedAt = new Map<string, number>();
    const block = (publisher: string, seq: number) => blockedAt.set(publisher, Math.min(blockedAt.get(publisher) ?? Infinity, seq));
    for (const f of this.#failed.values()) block(f.publisher, f.seq);
    for (const e of this.#held.values()) if (e.seq > nowUs) block(e.publisher, e.seq);
    const out: [string, TandemEvent][] = [];
    for (const [key, e] of this.#held) if (e.seq < (blockedAt.get(e.publisher) ?? Infinity)) out.push([key, e]);
    for (const [key, e] of out) {
      this.#held.delete(key);
      this.#delivered.set(key, e);
    }
    return ordered(out.map(([, e]) => e));
  }

  /**
   * What a subscriber "from now on" starts from: per publisher, the newest listed seq from before the
   * millisecond it subscribed in. That time, not the time it starts: a topic loads with a Consul
   * answer (late after a failure, or after another topic's reads), and the keys listed by then may
   * include events published after the subscription, which are the subscriber's. A key ahead of that
   * time (skew, or a forger) is after it too: it reaches the subscriber when due.
   */
  #head(sinceUs: number): Cursor {
    const c: Cursor = {};
    for (const k of this.#keys) if (!this.#rejected.has(k.key) && !this.#ahead.has(k.key) && k.seq < sinceUs && (c[k.publisher] ?? 0) < k.seq) c[k.publisher] = k.seq;
    return c;
  }

  #start(m: Member): void {
    if (m.started) return;
    m.started = true;
    m.cursor = { ...(m.asked ?? this.#head(m.sinceUs)) };
    m.handlers.start({ ...m.cursor });
    for (const e of ordered([...this.#delivered.values()])) this.#offer(m, e);
  }

  #offer(m: Member, e: TandemEvent): void {
    if (e.seq <= (m.cursor[e.publisher] ?? 0)) return;
    m.cursor[e.publisher] = e.seq;
    m.handlers.event(e);
  }
}

function ordered(list: TandemEvent[]): TandemEvent[] {
  return list.sort((a, b) => (a.publisher < b.publisher ? -1 : a.publisher > b.publisher ? 1 : a.seq - b.seq));
}
