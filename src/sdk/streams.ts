// The SDK's long-lived streams: instance watches, event subscriptions and election campaigns, each surviving sidecar restarts.
import { TandemError } from '../protocol/tandem-error.ts';
import type { Election, InstanceInfo, LeaderInfo, TandemEvent } from '../protocol/wire.ts';
import type { SidecarClient } from './sidecar-client.ts';

/**
 * A change seen by {@link Tandem.watch}: an instance became routable (healthy, in range) or stopped being.
 *
 * @example
 * ```ts
 * tandem.watch('users@^1', (e) => console.log(e.type, e.instance.id));
 * ```
 */
export interface WatchEvent {
  type: 'added' | 'removed';
  instance: InstanceInfo;
}

/**
 * What {@link Tandem.watch} and {@link Tandem.subscribe} return: call it to stop the stream. `ready`
 * resolves once the sidecar has the stream in place — for a watch, its first `reset` (the current
 * instances) has arrived; for a subscription, its starting cursor has, so every event published from
 * then on is delivered. It stays pending while the sidecar cannot be reached (`onError` reports each
 * attempt), resolves once (a later reconnect does not reset it), and rejects with an `AbortError` if
 * the stream is stopped first; awaiting it is optional.
 *
 * @example
 * ```ts
 * const stop = tandem.subscribe('orders.created', (payload) => console.log(payload));
 * await stop.ready;                          // in place on the sidecar
 * await tandem.publish('orders.created', 1); // delivered to the handler above
 * stop();
 * ```
 */
export interface StreamHandle {
  (): void;
  readonly ready: Promise<void>;
}

/**
 * `users@^2` → `{ service: 'users', range: '^2' }`.
 *
 * @example
 * ```ts
 * splitTarget('users@^2'); // { service: 'users', range: '^2' }
 * ```
 */
export function splitTarget(target: string): { service: string; range: string } {
  const at = target.indexOf('@');
  return at === -1 ? { service: target, range: '' } : { service: target.slice(0, at), range: target.slice(at + 1) };
}

/**
 * Streams `added`/`removed` for a target until `signal` aborts; after a reconnect, what changed
 * meanwhile. Resolves once the sidecar's first `reset` has arrived (see {@link StreamHandle}).
 *
 * @example
 * ```ts
 * await watchStream(client, 'users@^1', (e) => console.log(e.type), ctrl.signal);
 * ```
 */
export function watchStream(client: SidecarClient, target: string, listener: (event: WatchEvent) => void, signal: AbortSignal, onError?: (err: TandemError) => void): Promise<void> {
  const { service, range } = splitTarget(target);
  const path = `/v1/watch/${encodeURIComponent(service)}${range ? `?range=${encodeURIComponent(range)}` : ''}`;
  const known = new Map<string, InstanceInfo>();
  const apply = (event: string, data: string) => {
    if (event === 'reset') {
      const now = new Map((JSON.parse(data) as { instances: InstanceInfo[] }).instances.map((i) => [i.id, i]));
      const removed = [...known.values()].filter((i) => !now.has(i.id));
      const added = [...now.values()].filter((i) => !known.has(i.id));
      for (const i of removed) {
        known.delete(i.id);
        listener({ type: 'removed', instance: i });
      }
      for (const i of added) {
        known.set(i.id, i);
        listener({ type: 'added', instance: i });
      }
    } else if (event === 'added' || event === 'removed') {
      const i = JSON.parse(data) as InstanceInfo;
      if (event === 'added') known.set(i.id, i);
      else known.delete(i.id);
      listener({ type: event, instance: i });
    }
  };
  // The route sends `reset` once its listener on the routing table is attached.
  return client.stream({ path: () => path, onEvent: apply, signal, onError, ack: 'reset' });
}

/**
 * Delivers each event of `topic` once, resuming from its cursor after a reconnect. Resolves once the
 * sidecar has sent the starting cursor (see {@link StreamHandle}).
 *
 * @example
 * ```ts
 * await subscribeStream(client, 'orders.created', (payload) => console.log(payload), ctrl.signal);
 * ```
 */
export function subscribeStream(client: SidecarClient, topic: string, handler: (payload: unknown, event: TandemEvent) => void, signal: AbortSignal, onError?: (err: TandemError) => void): Promise<void> {
  let cursor: Record<string, number> | undefined;
  return client.stream({
    path: () => `/v1/events/${encodeURIComponent(topic)}${cursor ? `?cursor=${encodeURIComponent(JSON.stringify(cursor))}` : ''}`,
    onEvent: (event, data) => {
      if (event === 'cursor') {
        cursor ??= JSON.parse(data) as Record<string, number>;
        return;
      }
      if (event !== 'event') return;
      const e = JSON.parse(data) as TandemEvent;
      cursor ??= {};
      if (e.seq <= (cursor[e.publisher] ?? 0)) return; // a duplicate (at-least-once delivery)
      cursor[e.publisher] = e.seq;
      handler(e.payload, e);
    },
    signal,
    onError,
    // `cursor` is where "from now on" starts: what is published after it arrives is delivered. The
    // stream's open alone is not enough (the sidecar takes the starting point once the topic is read).
    ack: 'cursor',
  });
}

/**
 * What {@link Tandem.elect} takes: the service the campaign runs for, and what to do on promotion and demotion.
 *
 * @example
 * ```ts
 * const opts: ElectOptions = { service: svc, onPromote: ({ token }) => start(token), onDemote: () => stop() };
 * ```
 */
export interface ElectOptions {
  service: { readonly id: string } | string;
  onPromote: (info: LeaderInfo) => void;
  onDemote: (reason: string) => void;
  onError?: (err: TandemError) => void;
}

/**
 * Runs a campaign stream until the returned election resigns or `ctrl` aborts.
 *
 * @example
 * ```ts
 * const election = campaign(client, 'scheduler', opts, new AbortController());
 * ```
 */
export function campaign(client: SidecarClient, group: string, opts: ElectOptions, ctrl: AbortController): Election {
  const id = typeof opts.service === 'string' ? opts.service : opts.service.id;
  let leader = false;
  const demote = (reason: string) => {
    if (!leader) return;
    leader = false;
    opts.onDemote(reason);
  };
  const ready = client.stream({
    path: () => `/v1/leaders/${encodeURIComponent(group)}/campaign?serviceId=${encodeURIComponent(id)}`,
    onEvent: (event, data) => {
      if (event === 'promoted' && !leader) {
        leader = true;
        opts.onPromote(JSON.parse(data) as LeaderInfo);
      } else if (event === 'demoted') demote((JSON.parse(data) as { reason: string }).reason);
      else if (event === 'error') {
        const body = JSON.parse(data) as { message: string; code?: string; statusCode?: number };
        // Consul refused the credentials: campaigning again would be refused again. The campaign ends.
        if (body.code === 'TANDEM_ERR_CONSUL_PERMISSION_DENIED') {
          ctrl.abort();
          demote('Consul refused the campaign');
          opts.onError?.(new TandemError(body.code, body.statusCode ?? 403, body.message));
        } else opts.onError?.(new TandemError('TANDEM_ERR_ELECTION', 503, body.message));
      }
    },
    signal: ctrl.signal,
    onError: opts.onError,
    method: 'POST',
    onDisconnect: () => demote('lost the connection to the sidecar'),
    // Sent once the campaign has started on the sidecar (before any promotion).
    ack: 'campaign',
  });
  return {
    get leader() {
      return leader;
    },
    ready,
    resign: async () => {
      ctrl.abort();
      demote('resigned');
      // The sidecar resigns (releases the lock) when the stream closes; give it a moment to do so.
      await new Promise((r) => setTimeout(r, 50));
    },
  };
}

/**
 * node-discovery's need/ready over watches: `ready` once every target has an instance, `lost` (with
 * the target) when one loses its last. Returns the function that stops every watch.
 *
 * @example
 * ```ts
 * const stop = needTargets(['users@^1'], (t, l) => tandem.watch(t, l), (e, arg) => tandem.emit(e, arg));
 * ```
 */
export function needTargets(targets: readonly string[], watch: (target: string, listener: (e: WatchEvent) => void) => () => void, emit: (event: 'ready' | 'lost', arg: unknown) => void): () => void {
  const counts = new Map<string, Set<string>>(targets.map((t) => [t, new Set<string>()]));
  let ready = false;
  const check = (changed: string) => {
    const all = [...counts.values()].every((s) => s.size > 0);
    if (all && !ready) {
      ready = true;
      emit('ready', [...targets]);
    } else if (!all && ready && (counts.get(changed)?.size ?? 0) === 0) {
      ready = false;
      emit('lost', changed);
    }
  };
  const stops = targets.map((t) =>
    watch(t, (e) => {
      const set = counts.get(t) as Set<string>;
      if (e.type === 'added') set.add(e.instance.id);
      else set.delete(e.instance.id);
      check(t);
    }),
  );
  return () => stops.forEach((s) => s());
}

/**
 * Polls each target's instances until every one has a healthy, non-ejected instance; rejects with
 * `TANDEM_ERR_WAIT_TIMEOUT` naming those still missing after `timeoutMs`, at once when the sidecar is
 * unreachable.
 *
 * @example
 * ```ts
 * await waitForTargets(['users@^1'], { timeoutMs: 30_000 }, (t) => tandem.instances(t));
 * ```
 */
export async function waitForTargets(targets: readonly string[], opts: { timeoutMs: number; intervalMs?: number }, instances: (target: string) => Promise<InstanceInfo[]>): Promise<void> {
  const deadline = Date.now() + opts.timeoutMs;
  let missing = targets;
  for (;;) {
    const ready = await Promise.all(
      missing.map(async (t) => {
        try {
          return (await instances(t)).some((i) => i.healthy && !i.ejected);
        } catch (err) {
          if (err instanceof TandemError && err.code === 'TANDEM_ERR_SIDECAR_UNREACHABLE') throw err;
          return false;
        }
      }),
    );
    missing = missing.filter((_, i) => !ready[i]);
    if (missing.length === 0) return;
    if (Date.now() >= deadline) throw new TandemError('TANDEM_ERR_WAIT_TIMEOUT', 504, `still no healthy instance after ${opts.timeoutMs} ms for: ${missing.join(', ')}`);
    await new Promise((r) => setTimeout(r, Math.min(opts.intervalMs ?? 200, Math.max(0, deadline - Date.now()))));
  }
}
