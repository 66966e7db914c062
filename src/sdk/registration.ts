// An SDK registration's life: listen, register, heartbeat, hold the liveness stream, and close all of it again.
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { TandemError } from '../protocol/tandem-error.ts';
import type { CheckSpec, Registration, ServiceSpec } from '../protocol/wire.ts';
import { holdLiveness } from './liveness.ts';
import { closeOnSignal } from './signals.ts';
import type { SidecarClient } from './sidecar-client.ts';

/**
 * What {@link Tandem.register} takes: a spec (port optional when a server is given), or `'name@version'`.
 *
 * @example
 * ```ts
 * await tandem.register('users@1.2.3', server);
 * await tandem.register({ name: 'users', version: '1.2.3', port: 3000, check: { kind: 'http', path: '/health' } });
 * ```
 */
export type RegisterSpec = string | (Omit<ServiceSpec, 'port'> & { port?: number });

/**
 * Options of {@link Tandem.register}.
 *
 * @example
 * ```ts
 * await tandem.register('worker@1.0.0', server, { deregisterOnSignal: false });
 * ```
 */
export interface RegisterOptions {
  /**
   * Deregister (gracefully) when the process gets SIGTERM or SIGINT. Nothing else changes: an app with
   * its own listener for the signal decides what happens next (the server stays as it is: closing it is
   * the app's call); without one, the process then ends by that signal, as it would have without the
   * SDK (after at most 10 s of deregistering). Default true.
   */
  deregisterOnSignal?: boolean;
}

/**
 * A registered service. `close()` removes it gracefully — maintenance on (callers stop picking it), the
 * sidecar's drain time, deregistration — and closes what the SDK opened for it: the server it made
 * listen (not one the app had started itself), its heartbeat timer, its liveness stream. A process
 * whose last registration is closed exits by itself once its own work is done.
 *
 * @example
 * ```ts
 * const svc = await tandem.register('users@1.2.3', server);
 * await svc.close();
 * ```
 */
export interface ServiceHandle {
  readonly id: string;
  readonly port: number;
  readonly registration: Registration;
  close(): Promise<void>;
}

/** The SDK's default TTL check: a hung or dead app goes critical within 10 s. */
const SDK_TTL_MS = 10_000;

/** How long close() lets requests in flight finish on a server the SDK made listen, after deregistration. */
const SERVER_CLOSE_BOUND_MS = 5000;

/**
 * Listens (when the SDK must), registers with a liveness stream, heartbeats the SDK's TTL check, and
 * returns the handle; `forget` is called once the handle closes.
 *
 * @example
 * ```ts
 * const handle = await registerService(client, 'users@1.2.3', server, {}, (id) => handles.delete(id));
 * ```
 */
export async function registerService(client: SidecarClient, spec: RegisterSpec, server: Server | undefined, opts: RegisterOptions, forget: (id: string) => void): Promise<ServiceHandle> {
  const base: Omit<ServiceSpec, 'port'> & { port?: number } = typeof spec === 'string' ? parseShorthand(spec) : spec;
  let port = base.port;
  // Only a server the SDK made listen is the SDK's to close.
  const ownServer = server !== undefined && !server.listening ? server : undefined;
  if (ownServer) await listen(ownServer, port);
  if (server) port = (server.address() as AddressInfo).port;
  if (port === undefined) throw new TandemError('TANDEM_ERR_INVALID_SERVICE', 400, 'register() needs a port or an http.Server');
  const check: CheckSpec = base.check ?? { kind: 'ttl', ttlMs: SDK_TTL_MS };
  const body: ServiceSpec = { ...base, port, check };
  let registration: Registration;
  try {
    registration = await client.api<Registration>('POST', '/v1/services?liveness=true', body);
  } catch (err) {
    if (ownServer) await closeServer(ownServer);
    throw err;
  }
  const id = registration.id;
  const path = `/v1/services/${encodeURIComponent(id)}`;

  // The SDK's own TTL check passes right after registering (registered critical, it is routable from
  // the first beat), then every third of the TTL, and at once after each reconnect of the liveness
  // stream: a restarted sidecar registers it critical again until it hears from the app.
  const beat = base.check ? undefined : () => void client.api('PUT', `${path}/heartbeat`, {}).catch(() => undefined);
  let heartbeat: NodeJS.Timeout | undefined;
  if (beat) {
    beat();
    heartbeat = setInterval(beat, Math.floor(SDK_TTL_MS / 3));
    heartbeat.unref();
  }
  const liveness = new AbortController();
  let connects = 0;
  holdLiveness(client, id, liveness.signal, {
    onAlive: () => {
      if (connects++ > 0) beat?.();
    },
    // The sidecar no longer knows it (drained, removed, or it outlived its grace): nothing to keep passing.
    onGone: () => clearInterval(heartbeat),
  });

  // On a signal only the registration goes: what happens to the server is the app's own handler's call.
  let deregistering: Promise<void> | undefined;
  let stopSignals: () => void = () => undefined;
  const deregister = () => {
    deregistering ??= (async () => {
      stopSignals();
      clearInterval(heartbeat);
      // Closed first: should the DELETE below never arrive, the sidecar still removes it after the grace.
      liveness.abort();
      forget(id);
      try {
        await client.api('DELETE', path);
      } catch (err) {
        if (!(err instanceof TandemError && err.statusCode === 404)) throw err;
      }
    })();
    return deregistering;
  };
  const handle: ServiceHandle = {
    id,
    port,
    registration,
    close: async () => {
      try {
        await deregister();
      } finally {
        if (ownServer?.listening) await closeServer(ownServer);
      }
    },
  };
  if (opts.deregisterOnSignal !== false) stopSignals = closeOnSignal(deregister);
  return handle;
}

function listen(server: Server, port: number | undefined): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port ?? 0, '127.0.0.1', () => {
      server.removeListener('error', reject);
      resolve();
    });
  });
}

/** Stops listening, lets requests in flight finish (bounded), then drops what is left. */
function closeServer(server: Server): Promise<void> {
  return new Promise<void>((resolve) => {
    const timer = setTimeout(() => server.closeAllConnections(), SERVER_CLOSE_BOUND_MS);
    timer.unref();
    server.close(() => {
      clearTimeout(timer);
      resolve();
    });
    server.closeIdleConnections();
  });
}

function parseShorthand(s: string): Omit<ServiceSpec, 'port'> {
  const at = s.lastIndexOf('@');
  if (at <= 0) throw new TandemError('TANDEM_ERR_INVALID_SERVICE', 400, `'${s}' is not 'name@version'`);
  return { name: s.slice(0, at), version: s.slice(at + 1) };
}
