// The one retry delay of the sidecar: capped exponential backoff with full jitter, so many loops never retry in lockstep.

export interface BackoffOptions {
  /** First delay's upper bound. */
  baseMs: number;
  /** No delay exceeds this. */
  maxMs: number;
}

/**
 * Delay before retry number `attempt` (1 = the first retry): uniformly random in [cap/2, cap], with
 * cap = min(base × 2^(attempt-1), max). Half the range is fixed so a failing loop always slows down;
 * the other half spreads loops that failed together (a Consul restart fails every watch at once).
 *
 * @example backoffDelay(3, { baseMs: 100, maxMs: 10_000 }) // 200..400
 */
export function backoffDelay(attempt: number, o: BackoffOptions): number {
  const cap = Math.min(o.baseMs * 2 ** Math.min(Math.max(attempt - 1, 0), 30), o.maxMs);
  return cap / 2 + Math.random() * (cap / 2);
}

/** Sleeps `ms`, ending early (without error) when `signal` aborts. Its timer never keeps the process alive past an abort. */
export function sleepUnlessAborted(ms: number, signal: AbortSignal): Promise<void> {
  if (signal.aborted) return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(t);
      signal.removeEventListener('abort', done);
      resolve();
    };
    const t = setTimeout(done, ms);
    signal.addEventListener('abort', done, { once: true });
  });
}
