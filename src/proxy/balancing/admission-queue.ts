// The bounded wait for a free instance when every one in range is at its maxInFlight: FIFO per service, then 503.
import { OverloadedError } from '../errors.ts';

interface Waiter<T> {
  /** Tries to get a slot now; undefined when still everything is full. */
  attempt: () => T | undefined;
  resolve: (v: T) => void;
  reject: (err: unknown) => void;
  timer: NodeJS.Timeout;
}

export interface AdmissionQueueOptions {
  /** Longest wait for a slot. */
  timeoutMs: number;
  /** Requests waiting at once per service; one more is refused at once. */
  maxQueued: number;
}

export class AdmissionQueue {
  readonly options: AdmissionQueueOptions;
  #queues = new Map<string, Waiter<unknown>[]>();

  constructor(options: AdmissionQueueOptions) {
    this.options = options;
  }

  /**
   * Waits until `attempt` gives a value (tried again each time a slot of `service` frees), at most
   * `min(timeoutMs, maxWaitMs)`; rejects with OverloadedError when the queue is full or time runs out.
   */
  wait<T>(service: string, attempt: () => T | undefined, maxWaitMs = Infinity): Promise<T> {
    const q = this.#queues.get(service) ?? [];
    const retryAfterS = Math.max(1, Math.ceil(this.options.timeoutMs / 1000));
    if (q.length >= this.options.maxQueued) return Promise.reject(new OverloadedError(service, 'its queue is full', retryAfterS, true));
    const waitMs = Math.max(0, Math.min(this.options.timeoutMs, maxWaitMs));
    return new Promise<T>((resolve, reject) => {
      const w: Waiter<T> = {
        attempt,
        resolve,
        reject,
        timer: setTimeout(() => {
          this.#remove(service, w as Waiter<unknown>);
          reject(new OverloadedError(service, `no instance had room within ${waitMs} ms`, retryAfterS));
        }, waitMs),
      };
      q.push(w as Waiter<unknown>);
      this.#queues.set(service, q);
    });
  }

  /**
   * A slot of `service` freed: waiters try again in arrival order. Each one that gets a slot leaves;
   * those that do not (their range or tried instances differ) keep their place.
   */
  wake(service: string): void {
    const q = this.#queues.get(service);
    if (!q) return;
    for (const w of [...q]) {
      let got: unknown;
      try {
        got = w.attempt();
      } catch (err) {
        this.#remove(service, w);
        clearTimeout(w.timer);
        w.reject(err);
        continue;
      }
      if (got === undefined) continue;
      this.#remove(service, w);
      clearTimeout(w.timer);
      w.resolve(got);
    }
  }

  #remove(service: string, w: Waiter<unknown>): void {
    const q = this.#queues.get(service);
    if (!q) return;
    const i = q.indexOf(w);
    if (i >= 0) q.splice(i, 1);
    if (q.length === 0) this.#queues.delete(service);
  }
}
