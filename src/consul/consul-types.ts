// Consul's answers as Tandem types, and the one mapping from node-consul's failures onto our error catalogue.
import { TandemError } from '../common/errors.ts';
import { ConsulPermissionError, ConsulRejectedError, ConsulUnavailableError } from './errors.ts';

/** What Consul's `/v1/agent/service/register` takes (the subset Tandem sends). */
export interface ConsulServiceDefinition {
  ID: string;
  Name: string;
  Tags: string[];
  Address: string;
  Port: number;
  Meta: Record<string, string>;
  Check: ConsulCheckDefinition;
}

export interface ConsulCheckDefinition {
  Name: string;
  Notes?: string;
  HTTP?: string;
  TCP?: string;
  TTL?: string;
  Interval?: string;
  Timeout?: string;
  Status?: 'passing' | 'warning' | 'critical';
  /** Consul's agent removes the service once this check has been critical this long (minimum 1m; its reaper runs every 30 s). */
  DeregisterCriticalServiceAfter?: string;
}

export interface AgentSelf {
  nodeName: string;
  advertiseAddress: string;
  datacenter: string;
  version: string;
  /** The agent enforces ACLs: control-API writes then need the caller's own credentials. Undefined when the agent does not say. */
  aclsEnabled: boolean | undefined;
}

export interface LocalService {
  id: string;
  name: string;
  port: number;
  meta: Record<string, string>;
  tags: string[];
}

export interface LocalCheck {
  checkId: string;
  serviceId: string;
  name: string;
  status: 'passing' | 'warning' | 'critical';
  output: string;
}

export interface KvEntry {
  key: string;
  value: string;
  modifyIndex: number;
  lockIndex: number;
  session?: string;
}

/** One instance from `/v1/health/service/<name>`. */
export interface HealthEntry {
  node: string;
  nodeAddress: string;
  id: string;
  name: string;
  address: string;
  port: number;
  tags: string[];
  meta: Record<string, string>;
  /** Worst status among the instance's checks (node checks included). */
  status: 'passing' | 'warning' | 'critical';
  checks: { checkId: string; name: string; status: 'passing' | 'warning' | 'critical'; notes: string; output: string }[];
}

const STATUS_RANK = { passing: 0, warning: 1, critical: 2 } as const;
type CheckStatus = keyof typeof STATUS_RANK;

export function asStatus(v: unknown): CheckStatus {
  return v === 'passing' || v === 'warning' ? v : 'critical';
}

/** Consul's duration syntax. */
export function consulDuration(ms: number): string {
  return ms % 1000 === 0 ? `${ms / 1000}s` : `${ms}ms`;
}

export function toHealthEntry(raw: unknown): HealthEntry {
  const e = raw as {
    Node: { Node: string; Address: string };
    Service: { ID: string; Service: string; Address: string; Port: number; Tags: string[] | null; Meta: Record<string, string> | null };
    Checks: { CheckID: string; Name: string; Status: string; Notes?: string; Output?: string }[] | null;
  };
  let worst: CheckStatus = 'passing';
  for (const c of e.Checks ?? []) {
    const s = asStatus(c.Status);
    if (STATUS_RANK[s] > STATUS_RANK[worst]) worst = s;
  }
  return {
    node: e.Node.Node,
    nodeAddress: e.Node.Address,
    id: e.Service.ID,
    name: e.Service.Service,
    // An empty service address means "the node's address" in Consul.
    address: e.Service.Address || e.Node.Address,
    port: e.Service.Port,
    tags: e.Service.Tags ?? [],
    meta: e.Service.Meta ?? {},
    status: worst,
    checks: (e.Checks ?? []).map((c) => ({ checkId: c.CheckID, name: c.Name, status: asStatus(c.Status), notes: c.Notes ?? '', output: c.Output ?? '' })),
  };
}

export function mapError(action: string, err: unknown): TandemError {
  if (err instanceof TandemError) return err;
  const e = err as { statusCode?: number; message?: string; code?: string; isPapi?: boolean; isResponse?: boolean };
  const status = typeof e.statusCode === 'number' ? e.statusCode : undefined;
  // node-consul errors keep the whole response; we keep only the status and a short message.
  const detail = String(e.message ?? 'unknown error').replace(/^consul: [\w.]+: /, '').slice(0, 300);
  if (status === 403) return new ConsulPermissionError(action, detail, { cause: new Error(detail) });
  if (status !== undefined && status >= 400 && status < 500) return new ConsulRejectedError(action, status, detail, { cause: new Error(detail) });
  return new ConsulUnavailableError(`Consul is unavailable: could not ${action} (${status ?? e.code ?? detail})`, { cause: new Error(detail) });
}
