// Counts the sidecar's long-lived Consul connections (blocking queries) against a fixed capacity, with room kept for the sidecar's own watches.

export type LeaseKind = 'reserved' | 'shared';

/** One admitted blocking query; `release()` gives its room back (idempotent). */
export interface Lease {
  readonly kind: LeaseKind;
  readonly owner: string;
  release(): void;
}

export interface BudgetSnapshot {
  capacity: number;
  reserved: number;
  inUse: number;
  byKind: Record<LeaseKind, number>;
  /** Shared requests refused since start (callers were served another way or got 503). */
  refused: number;
}

/**
 * The blocking-query half of `consul.maxConnections`. Every loop that holds a connection open (a
 * blocking query) takes a lease first and gives it back when it stops. `reserved` leases (the
 * sidecar's own: drain, catalog names, events, elections, configured upstreams) may use the whole
 * capacity; `shared` ones (services apps happen to call) only what is left above `reserved`, so no
 * caller can starve the sidecar's own watches. The HTTP agent underneath enforces the same capacity
 * as a hard socket limit; this class is what lets callers be refused (or served another way) instead
 * of queueing behind it.
 */
export class ConnectionBudget {
  readonly capacity: number;
  readonly reserved: number;
  #byKind: Record<LeaseKind, number> = { reserved: 0, shared: 0 };
  #refused = 0;
  #onRelease = new Set<() => void>();

  constructor(opts: { capacity: number; reserved: number }) {
    if (!(opts.capacity >= 1) || !(opts.reserved >= 0) || opts.reserved > opts.capacity) throw new RangeError(`invalid budget: capacity ${opts.capacity}, reserved ${opts.reserved}`);
    this.capacity = opts.capacity;
    this.reserved = opts.reserved;
  }

  get inUse(): number {
    return this.#byKind.reserved + this.#byKind.shared;
  }

  /** Room left for shared leases. */
  get sharedFree(): number {
    return Math.max(0, this.capacity - Math.max(this.reserved, this.#byKind.reserved) - this.#byKind.shared);
  }

  tryAcquire(kind: LeaseKind, owner: string): Lease | undefined {
    const ok = kind === 'reserved' ? this.inUse < this.capacity : this.sharedFree > 0;
    if (!ok) {
      this.#refused++;
      return undefined;
    }
    this.#byKind[kind]++;
    let held = true;
    return {
      kind,
      owner,
      release: () => {
        if (!held) return;
        held = false;
        this.#byKind[kind]--;
        // Told after the caller's own code ran (no re-entry while it releases).
        if (this.#onRelease.size > 0) queueMicrotask(() => {
          for (const fn of [...this.#onRelease]) fn();
        });
      },
    };
  }

  /** Calls `fn` whenever room comes free (a lease was given back); returns the function that stops it. */
  onRelease(fn: () => void): () => void {
    this.#onRelease.add(fn);
    return () => this.#onRelease.delete(fn);
  }

  snapshot(): BudgetSnapshot {
    return { capacity: this.capacity, reserved: this.reserved, inUse: this.inUse, byKind: { ...this.#byKind }, refused: this.#refused };
  }
}
