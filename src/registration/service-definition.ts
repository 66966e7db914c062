// Turns a validated ServiceSpec into the definition Consul's agent takes: id, version meta and tags, a readable check.
import type { CheckSpec, ServiceSpec } from '../protocol/wire.ts';
import { consulDuration, type ConsulServiceDefinition } from '../consul/consul-client.ts';

export interface DefinitionContext {
  nodeName: string;
  /** Used when the spec has no address of its own. */
  defaultAddress: string;
  sidecarId: string;
  checkIntervalMs: number;
  checkTimeoutMs: number;
  ttlMs: number;
}

/**
 * The backstop against zombies on every registration: Consul's agent removes a service whose check
 * has been critical this long (its minimum; the agent's reaper runs every 30 s, so removal comes
 * 60-90 s after the check went critical). It covers what the sidecar cannot: the sidecar itself
 * killed for good, or an app registered without a liveness stream that died.
 */
export const DEREGISTER_CRITICAL_AFTER = '1m';

export function serviceId(spec: Pick<ServiceSpec, 'id' | 'name' | 'port'>, nodeName: string): string {
  return spec.id ?? `${spec.name}-${nodeName}-${spec.port}`;
}

/** DNS-safe version tags: `v1` and `v1-2-3` for 1.2.3 (dotted tags are not discoverable through DNS). */
export function versionTags(version: string): string[] {
  const [major, minor, patch] = version.split(/[.+-]/);
  return [`v${major}`, `v${major}-${minor}-${patch}`];
}

export function effectiveCheck(spec: ServiceSpec): CheckSpec {
  // Without a check of its own, a service is checked on its port over TCP: it works for any server.
  return spec.check ?? { kind: 'tcp' };
}

/** How long one run of an HTTP/TCP check may take (Consul's `Timeout`; the sidecar's own probe uses the same bound). */
export function checkTimeoutMs(check: CheckSpec, ctx: Pick<DefinitionContext, 'checkIntervalMs' | 'checkTimeoutMs'>): number {
  if (check.kind === 'ttl') return ctx.checkTimeoutMs;
  return check.timeoutMs ?? Math.min(ctx.checkTimeoutMs, check.intervalMs ?? ctx.checkIntervalMs);
}

function hostPort(address: string, port: number): string {
  return address.includes(':') ? `[${address}]:${port}` : `${address}:${port}`;
}

export function toConsulDefinition(spec: ServiceSpec, ctx: DefinitionContext): ConsulServiceDefinition {
  const id = serviceId(spec, ctx.nodeName);
  const address = spec.address ?? ctx.defaultAddress;
  const check = effectiveCheck(spec);
  const who = `${spec.name} ${spec.version}`;
  const notes = `Registered by the tandem sidecar ${ctx.sidecarId} on node ${ctx.nodeName}.`;
  let Check: ConsulServiceDefinition['Check'];
  switch (check.kind) {
    case 'http': {
      const interval = check.intervalMs ?? ctx.checkIntervalMs;
      Check = {
        Name: `${who}: HTTP GET ${check.path} every ${consulDuration(interval)}`,
        Notes: notes,
        HTTP: `http://${hostPort(address, spec.port)}${check.path}`,
        Interval: consulDuration(interval),
        Timeout: consulDuration(checkTimeoutMs(check, ctx)),
      };
      break;
    }
    case 'tcp': {
      const interval = check.intervalMs ?? ctx.checkIntervalMs;
      Check = {
        Name: `${who}: TCP connect to port ${spec.port} every ${consulDuration(interval)}`,
        Notes: notes,
        TCP: hostPort(address, spec.port),
        Interval: consulDuration(interval),
        Timeout: consulDuration(checkTimeoutMs(check, ctx)),
      };
      break;
    }
    case 'ttl': {
      const ttl = check.ttlMs ?? ctx.ttlMs;
      Check = {
        Name: `${who}: heartbeat at least every ${consulDuration(ttl)}`,
        Notes: `${notes} The app sends heartbeats through PUT /v1/services/${id}/heartbeat on the sidecar.`,
        TTL: consulDuration(ttl),
      };
      break;
    }
  }
  Check.DeregisterCriticalServiceAfter = DEREGISTER_CRITICAL_AFTER;
  const tags = [...new Set([...versionTags(spec.version), ...(spec.tags ?? [])])];
  return {
    ID: id,
    Name: spec.name,
    Tags: tags,
    Address: address,
    Port: spec.port,
    // The limit travels in the catalog so that every calling sidecar applies it (each on its own count).
    Meta: { ...spec.meta, version: spec.version, tandem_node: ctx.nodeName, tandem_sidecar: ctx.sidecarId, ...(spec.maxInFlight !== undefined ? { tandem_max_inflight: String(spec.maxInFlight) } : {}) },
    Check,
  };
}
