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
 * Streams `added`/`removed` for a target until `signal` aborts; after a reconnect, what changed meanwhile.
 *
 * @example
 * ```ts
 * watchStream(client, 'users@^1', (e) => console.log(e.type), ctrl.signal);
 * ```
 */
export function watchStream(client: SidecarClient, target: string, listener: (event: WatchEvent) => void, signal: AbortSignal, onError?: (err: TandemError) => void): void {
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
  client.stream({ path: () => path, onEvent: apply, signal, onError });
}

/**
 * Delivers each event of `topic` once, resuming from its cursor after a reconnect.
 *
 * @example
 * ```ts
 * subscribeStream(client, 'orders.created', (payload) => console.log(payload), ctrl.signal);
 * ```
 */
export function subscribeStream(client: SidecarClient, topic: string, handler: (payload: unknown, event: TandemEvent) => void, signal: AbortSignal, onError?: (err: TandemError) => void): void {
  let cursor: Record<string, number> | undefined;
  client.stream({
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
  client.stream({
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
  });
  return {
    get leader() {
      return leader;
    },
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
