// The liveness stream an SDK registration holds open on the sidecar, so the registration dies with the app (internal to tandem/sdk).
// The kernel closes it when the process dies, however it dies (SIGKILL, a crash, OOM): the sidecar then
// deregisters the service after its grace, unless the stream comes back (a sidecar restart, which the
// reconnect below rides out). It is written on node:http rather than fetch to unref its socket: an open
// liveness stream must never be what keeps an app's process running.
import { request as httpRequest } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { sseParser, type SidecarClient } from './sidecar-client.ts';

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
  let delay = 100;
  const connect = () => {
    if (signal.aborted) return;
    let over = false;
    const retry = () => {
      if (over || signal.aborted) return;
      over = true;
      const t = setTimeout(connect, delay);
      t.unref();
      delay = Math.min(delay * 2, MAX_RECONNECT_DELAY_MS);
    };
    const url = new URL(`${client.url}/v1/services/${encodeURIComponent(id)}/liveness`);
    const request = url.protocol === 'https:' ? httpsRequest : httpRequest;
    // content-length 0: a POST without it would be sent chunked, as if it had a body.
    const req = request(url, { method: 'POST', headers: { ...client.headers(), 'content-length': '0' }, agent: false, signal }, (res) => {
      res.setEncoding('utf8');
      if (res.statusCode === 200) {
        delay = 100;
        res.on('data', sseParser((event) => event === 'alive' && events.onAlive()));
        res.once('close', retry);
        return;
      }
      let body = '';
      res.on('data', (c: string) => (body += c));
      res.once('end', () => {
        // The registration is gone (a drain, an operator, the grace ran out): nothing left to hold. A 404
        // for the route itself (an older sidecar) only means there is no liveness to hold.
        if (res.statusCode === 404) {
          over = true;
          if (body.includes('TANDEM_ERR_SERVICE_NOT_FOUND')) events.onGone();
          return;
        }
        retry();
      });
      res.once('error', retry);
    });
    req.on('socket', (socket) => socket.unref());
    req.once('error', retry);
    req.end();
  };
  connect();
}
