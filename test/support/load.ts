// Test helper: a bounded steady GET load (count and time) that records every failed request.
import { setTimeout as sleep } from 'node:timers/promises';

export interface LoadResult {
  total: number;
  ok: number;
  failures: { at: number; status: number; code: string | null; error?: string }[];
}

export interface Load {
  stop(): Promise<LoadResult>;
  /** Requests done so far. */
  readonly total: number;
}

/**
 * Runs `workers` loops of sequential requests until stop() (or `maxRequests` / `maxMs`). With
 * `retryRefused`, a request that got no response because the proxy itself was restarting — the
 * connection refused, or an idle keep-alive connection closed by the stopping sidecar just as the
 * request went out (ECONNRESET, or undici's UND_ERR_SOCKET for a FIN, before any response byte: no handler saw it) — is retried, as a client
 * library does for a GET; anything else that is not 2xx, including a response cut after it began, is
 * a failure.
 */
export function startLoad(url: string | (() => string), opts: { workers?: number; maxRequests?: number; maxMs?: number; headers?: Record<string, string>; retryRefused?: boolean; pauseMs?: number } = {}): Load {
  const result: LoadResult = { total: 0, ok: 0, failures: [] };
  const deadline = Date.now() + (opts.maxMs ?? 180_000);
  const max = opts.maxRequests ?? 200_000;
  let stopped = false;
  const worker = async () => {
    while (!stopped && Date.now() < deadline && result.total < max) {
      const target = typeof url === 'string' ? url : url();
      let responded = false;
      try {
        const res = await fetch(target, { headers: opts.headers ?? {}, signal: AbortSignal.timeout(30_000) });
        responded = true;
        await res.arrayBuffer();
        result.total++;
        if (res.ok) result.ok++;
        else result.failures.push({ at: Date.now(), status: res.status, code: res.headers.get('x-tandem-error') });
      } catch (err) {
        const code = (err as { cause?: { code?: string } }).cause?.code;
        if (opts.retryRefused && (code === 'ECONNREFUSED' || ((code === 'ECONNRESET' || code === 'UND_ERR_SOCKET') && !responded))) {
          await sleep(20);
          continue;
        }
        result.total++;
        result.failures.push({ at: Date.now(), status: 0, code: code ?? null, error: (err as Error).message });
      }
      if (opts.pauseMs) await sleep(opts.pauseMs);
    }
  };
  const running = Promise.all(Array.from({ length: opts.workers ?? 2 }, worker));
  return {
    get total() {
      return result.total;
    },
    stop: async () => {
      stopped = true;
      await running;
      return result;
    },
  };
}
