// Retry budget per service: retries may add at most a share of recent requests (plus a small floor per second).
export interface RetryBudgetOptions {
  /** Retries allowed as a share of requests in the window (0.2 = 20 %). */
  ratio: number;
  /** Retries always allowed per second, whatever the traffic. */
  minPerSecond: number;
  /** Length of the sliding window. */
  windowMs: number;
}

const BUCKETS = 10;

interface Counters {
  requests: number[];
  retries: number[];
  /** Index of the bucket `epoch` refers to. */
  epoch: number;
}

export class RetryBudget {
  readonly options: RetryBudgetOptions;
  #services = new Map<string, Counters>();
  #bucketMs: number;

  constructor(options: RetryBudgetOptions) {
    this.options = options;
    this.#bucketMs = Math.max(1, Math.floor(options.windowMs / BUCKETS));
  }

  /** Counts one request (not its retries). */
  request(service: string, now = Date.now()): void {
    const c = this.#roll(service, now);
    c.requests[c.epoch % BUCKETS] = (c.requests[c.epoch % BUCKETS] ?? 0) + 1;
  }

  /** True when one more retry fits in the budget (nothing is counted). */
  hasRoom(service: string, now = Date.now()): boolean {
    const c = this.#roll(service, now);
    const allowed = sum(c.requests) * this.options.ratio + (this.options.minPerSecond * this.options.windowMs) / 1000;
    return sum(c.retries) + 1 <= allowed;
  }

  /** True (and counted) when one more retry fits in the budget. */
  tryRetry(service: string, now = Date.now()): boolean {
    if (!this.hasRoom(service, now)) return false;
    const c = this.#roll(service, now);
    c.retries[c.epoch % BUCKETS] = (c.retries[c.epoch % BUCKETS] ?? 0) + 1;
    return true;
  }

  #roll(service: string, now: number): Counters {
    const epoch = Math.floor(now / this.#bucketMs);
    let c = this.#services.get(service);
    if (!c) {
      c = { requests: new Array<number>(BUCKETS).fill(0), retries: new Array<number>(BUCKETS).fill(0), epoch };
      this.#services.set(service, c);
      return c;
    }
    // Clear the buckets that slid out of the window since the last call.
    for (let e = Math.max(c.epoch + 1, epoch - BUCKETS + 1); e <= epoch; e++) {
      c.requests[e % BUCKETS] = 0;
      c.retries[e % BUCKETS] = 0;
    }
    c.epoch = Math.max(c.epoch, epoch);
    return c;
  }
}

function sum(a: number[]): number {
  let s = 0;
  for (const v of a) s += v;
  return s;
}
