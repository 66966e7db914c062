// The liveness stream an SDK registration holds open on the sidecar, so the registration dies with the app (internal to tandem/sdk).
// The kernel closes it when the process dies, however it dies (SIGKILL, a crash, OOM): the sidecar then
// deregisters the service after its grace, unless the stream comes back (a sidecar restart, which the
// reconnect below rides out). Its socket and reconnect timer are unref'd: an open liveness stream must
// never be what keeps an app's process running.
import { TandemError } from '../protocol/tandem-error.ts';
import type { SidecarClient } from './sidecar-client.ts';

/** Well under the sidecar's default grace (5 s): a restarted sidecar is reconnected to in time. */
const MAX_RECONNECT_DELAY_MS = 1000;

/**
 * What a liveness stream reports: `onAlive` on every (re)connect, `onGone` once when the sidecar no
 * longer knows the registration (it was removed: the stream stops).
 *
 * @example
 * ```ts
 * holdLiveness(client, svc.id, ctrl.signal, { onAlive: () => heartbeat(), onGone: () => stopHeartbeats() });
 * ```
 */
export interface LivenessEvents {
  onAlive: () => void;
  onGone: () => void;
}

/**
 * Keeps `POST /v1/services/:id/liveness` open until `signal` aborts, reconnecting with backoff.
 *
 * @example
 * ```ts
 * const ctrl = new AbortController();
 * holdLiveness(client, 'users-host1-3000', ctrl.signal, { onAlive: () => undefined, onGone: () => undefined });
 * ctrl.abort(); // the app deregistered: the stream's end is expected
 * ```
 */
export function holdLiveness(client: SidecarClient, id: string, signal: AbortSignal, events: LivenessEvents): void {
  // Also stopped from inside, when there is nothing left to hold.
  const ctrl = new AbortController();
  if (signal.aborted) return;
  signal.addEventListener('abort', () => ctrl.abort(), { once: true });
  void client.stream({
    method: 'POST',
    path: () => `/v1/services/${encodeURIComponent(id)}/liveness`,
    onEvent: (event) => event === 'alive' && events.onAlive(),
    signal: ctrl.signal,
    unref: true,
    maxDelayMs: MAX_RECONNECT_DELAY_MS,
    onError: (err: TandemError) => {
      // The registration is gone (a drain, an operator, the grace ran out): nothing left to hold. A 404
      // for the route itself (an older sidecar) only means there is no liveness to hold.
      if (err.statusCode !== 404) return;
      ctrl.abort();
      if (err.code === 'TANDEM_ERR_SERVICE_NOT_FOUND') events.onGone();
    },
  });
}
