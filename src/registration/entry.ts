// One registration as the registrar keeps it, what of it is persisted, and how the control API shows it.
import type { Registration, ServiceSpec } from '../protocol/wire.ts';
import type { ConsulServiceDefinition, LocalCheck } from '../consul/consul-client.ts';
import { effectiveCheck } from './service-definition.ts';

export type Source = Registration['source'];

export interface Entry {
  id: string;
  spec: ServiceSpec;
  source: Source;
  state: 'registered' | 'pending' | 'draining';
  /** Held by its app's liveness stream (the SDK): removed a grace after the stream closes for good. Persisted. */
  liveness: boolean;
  /**
   * The agent dropped it while the sidecar's own registration stayed, and its probe fails: Consul's
   * DeregisterCriticalServiceAfter reaped it (or an operator removed it). It stays out of Consul until
   * its probe passes (TTL: until a heartbeat), instead of coming back critical only to be reaped again.
   */
  reaped: boolean;
  /** When its app last sent a heartbeat (TTL checks): a re-registration within the TTL of it starts passing. */
  beatAt?: number;
}

/** What the state file keeps per API registration. */
export interface Stored {
  spec: ServiceSpec;
  liveness?: boolean;
}

/** The API registrations to persist (config services live in the config file, the sidecar's own is rebuilt). */
export function toStored(entries: Iterable<Entry>): Stored[] {
  return [...entries].filter((e) => e.source === 'api' && e.state !== 'draining').map((e) => (e.liveness ? { spec: e.spec, liveness: true } : { spec: e.spec }));
}

export function toRegistration(e: Entry, def: ConsulServiceDefinition, checks: readonly LocalCheck[] | undefined): Registration {
  return {
    id: e.id,
    name: e.spec.name,
    version: e.spec.version,
    address: def.Address,
    port: def.Port,
    tags: def.Tags,
    meta: def.Meta,
    check: effectiveCheck(e.spec),
    source: e.source,
    state: e.state,
    health: healthOf(e.id, checks),
  };
}

/** A registration's aggregated Consul health from the agent's checks (`unknown` without them, or while it has no check there). */
export function healthOf(id: string, checks: readonly LocalCheck[] | undefined): Registration['health'] {
  const mine = checks?.filter((c) => c.serviceId === id) ?? [];
  if (mine.some((c) => c.checkId.startsWith('_service_maintenance'))) return 'maintenance';
  if (mine.length === 0) return 'unknown';
  return mine.some((c) => c.status === 'critical') ? 'critical' : mine.some((c) => c.status === 'warning') ? 'warning' : 'passing';
}
