// The operator commands of the CLI (drain, undrain, leaders, members): thin calls to a sidecar's control API.
import { apiUrlFrom } from '../config/config.ts';

interface Parsed {
  positional: string[];
  flags: Map<string, string | true>;
}

function parse(args: readonly string[]): Parsed {
  const positional: string[] = [];
  const flags = new Map<string, string | true>();
  for (let i = 0; i < args.length; i++) {
    const a = args[i] as string;
    if (!a.startsWith('--')) {
      positional.push(a);
      continue;
    }
    const eq = a.indexOf('=');
    if (eq > 0) flags.set(a.slice(2, eq), a.slice(eq + 1));
    else if (['healthy', 'critical', 'json', 'help'].includes(a.slice(2))) flags.set(a.slice(2), true);
    else {
      const v = args[i + 1];
      if (v === undefined) throw new Error(`${a} needs a value`);
      flags.set(a.slice(2), v);
      i++;
    }
  }
  return { positional, flags };
}

/** A sidecar's control API and the operator's credentials for it. */
interface ApiTarget {
  url: string;
  /** `api.token`, sent as a bearer token. */
  token?: string;
  /** The operator's own Consul token (CONSUL_HTTP_TOKEN): the sidecar makes the operator's writes with it. */
  consulToken?: string;
}

async function call(api: ApiTarget, method: string, path: string, body?: unknown): Promise<unknown> {
  const base = api.url;
  const headers: Record<string, string> = api.token ? { authorization: `Bearer ${api.token}` } : {};
  if (api.consulToken) headers['x-consul-token'] = api.consulToken;
  if (body !== undefined) headers['content-type'] = 'application/json';
  let res: Response;
  try {
    res = await fetch(`${base}${path}`, { method, headers, ...(body !== undefined ? { body: JSON.stringify(body) } : {}) });
  } catch {
    throw new Error(`cannot reach the sidecar at ${base}: is tandem running? (set --api or TANDEM_API)`);
  }
  const data = (await res.json().catch(() => ({}))) as { message?: string; code?: string };
  if (!res.ok) throw new Error(`${data.message ?? `the sidecar answered ${res.status}`}${data.code ? ` [${data.code}]` : ''}`);
  return data;
}

function table(rows: string[][]): string {
  const widths = rows[0]?.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? '').length))) ?? [];
  return rows.map((r) => r.map((c, i) => c.padEnd(widths[i] ?? 0)).join('  ').trimEnd()).join('\n');
}

interface StatusView {
  version: string;
  node: string;
  consul: string;
  consulReachable: boolean | null;
  outage: boolean;
  registrations: { id: string; name: string; version: string; source: string; state: string; health?: string }[];
  routing: {
    service: string;
    viewAgeMs: number | null;
    stale: boolean;
    ranges: { range: string; instances: number; healthy: number; stickyRingSize: number }[];
    instances: { id: string; version: string; address: string; healthy: boolean; ejected: boolean; slowStart: boolean; flapping: boolean; load?: { inflight: number; ewmaMs?: number; maxInFlight?: number } }[];
  }[];
}

export const OPERATOR_USAGE = `Operator commands (they talk to a sidecar's control API: --api URL, else TANDEM_API, else http://127.0.0.1:7701):
  tandem drain <node> [--reason TEXT] [--deadline-ms N]   drain a host: maintenance, tell its apps, deregister
  tandem undrain <node>                                   cancel a drain that has not finished
  tandem leaders <group>                                  the current leader of an election group
  tandem members [--service S] [--node N] [--healthy|--critical] [--json]
                                                          every instance in the cluster with version, node, health
  tandem status [--json]                                  this sidecar's registrations (with their Consul health) and routing table
`;

/** Runs one operator command; resolves with the exit code. */
export async function runOperator(command: string, args: readonly string[], out: (s: string) => void): Promise<number> {
  const p = parse(args);
  const target: ApiTarget = apiUrlFrom(typeof p.flags.get('api') === 'string' ? (p.flags.get('api') as string) : undefined);
  switch (command) {
    case 'drain': {
      const node = p.positional[0];
      if (!node) throw new Error('usage: tandem drain <node> [--reason TEXT] [--deadline-ms N]');
      const body: { reason?: string; deadlineMs?: number } = {};
      const reason = p.flags.get('reason');
      if (typeof reason === 'string') body.reason = reason;
      const deadline = p.flags.get('deadline-ms');
      if (typeof deadline === 'string') body.deadlineMs = Number(deadline);
      await call(target, 'PUT', `/v1/drain/${encodeURIComponent(node)}`, body);
      out(`draining ${node}${body.reason ? ` (${body.reason})` : ''}: its services are in maintenance; they are deregistered once their apps are ready to stop\n`);
      return 0;
    }
    case 'undrain': {
      const node = p.positional[0];
      if (!node) throw new Error('usage: tandem undrain <node>');
      await call(target, 'DELETE', `/v1/drain/${encodeURIComponent(node)}`);
      out(`${node}: drain cancelled\n`);
      return 0;
    }
    case 'leaders': {
      const group = p.positional[0];
      if (!group) throw new Error('usage: tandem leaders <group>');
      const r = (await call(target, 'GET', `/v1/leaders/${encodeURIComponent(group)}`)) as { leader: { serviceId: string; node: string; token: number; since: number } | null };
      out(r.leader ? `${group}: ${r.leader.serviceId} on ${r.leader.node} (fencing token ${r.leader.token}, since ${new Date(r.leader.since).toISOString()})\n` : `${group}: no leader\n`);
      return 0;
    }
    case 'members': {
      const q = new URLSearchParams();
      for (const k of ['service', 'node'] as const) {
        const v = p.flags.get(k);
        if (typeof v === 'string') q.set(k, v);
      }
      if (p.flags.has('healthy')) q.set('health', 'passing');
      if (p.flags.has('critical')) q.set('health', 'critical');
      const rows = (await call(target, 'GET', `/v1/members${q.size ? `?${q}` : ''}`)) as { service: string; id: string; version: string; node: string; address: string; port: number; health: string; reason?: string }[];
      if (p.flags.has('json')) out(`${JSON.stringify(rows, null, 2)}\n`);
      else out(`${table([['SERVICE', 'VERSION', 'ID', 'NODE', 'ADDRESS', 'HEALTH'], ...rows.map((r) => [r.service, r.version, r.id, r.node, `${r.address}:${r.port}`, r.reason ? `${r.health} (${r.reason})` : r.health])])}\n`);
      return 0;
    }
    case 'status': {
      const st = (await call(target, 'GET', '/v1/status')) as StatusView;
      if (p.flags.has('json')) {
        out(`${JSON.stringify(st, null, 2)}\n`);
        return 0;
      }
      out(`tandem ${st.version} on ${st.node}; Consul ${st.consul} ${st.consulReachable === false ? 'UNREACHABLE' : 'reachable'}${st.outage ? ' (OUTAGE MODE: routing from the last good view)' : ''}\n\n`);
      out('Registrations\n');
      out(`${table([['ID', 'SERVICE', 'VERSION', 'SOURCE', 'STATE', 'HEALTH'], ...st.registrations.map((r) => [r.id, r.name, r.version, r.source, r.state, r.health ?? 'unknown'])])}\n\nRouting table\n`);
      const rows = [['SERVICE', 'RANGES (healthy/in range, ring)', 'INSTANCE', 'VERSION', 'HEALTH', 'LOAD (in flight/max, ewma)', 'VIEW AGE']];
      for (const s of st.routing) {
        const ranges = s.ranges.map((r) => `${r.range} ${r.healthy}/${r.instances}${r.stickyRingSize ? ` ring ${r.stickyRingSize}` : ''}`).join(', ') || '-';
        const age = s.viewAgeMs === null ? '-' : `${(s.viewAgeMs / 1000).toFixed(1)}s${s.stale ? ' STALE' : ''}`;
        if (s.instances.length === 0) rows.push([s.service, ranges, '(none)', '', '', '', age]);
        for (const [i, e] of s.instances.entries()) {
          const health = [e.healthy ? 'passing' : 'critical', e.ejected ? 'ejected' : '', e.slowStart ? 'slow-start' : '', e.flapping ? 'flapping' : ''].filter(Boolean).join(',');
          const load = e.load ? `${e.load.inflight}/${e.load.maxInFlight ?? '-'}, ${e.load.ewmaMs === undefined ? '-' : `${e.load.ewmaMs.toFixed(1)}ms`}` : '';
          rows.push([i === 0 ? s.service : '', i === 0 ? ranges : '', `${e.id} ${e.address}`, e.version, health, load, i === 0 ? age : '']);
        }
      }
      out(`${table(rows)}\n`);
      return 0;
    }
    default:
      throw new Error(`unknown command '${command}'`);
  }
}
