// Test helper: an in-memory stand-in for the local Consul agent, the state directory and the probe, for the registrar's unit tests.
// It models only what the registrar sees of an agent: its services with their check status, maintenance, and
// three ways of failing (unreachable, a 403 for chosen ids, calls held until the test lets them go). Answers for
// unknown ids are Consul 1.8.7's: maintenance 404, deregistration 200, a check pass 500.
import type { AgentSelf, CallOptions, ConsulServiceDefinition, LocalCheck, LocalService } from '../../src/consul/consul-client.ts';
import { ConsulPermissionError, ConsulRejectedError, ConsulUnavailableError } from '../../src/consul/errors.ts';
import type { Probe, RegistrationConsul, RegistrationStore } from '../../src/registration/ports.ts';
import type { ProbeStatus } from '../../src/registration/probe.ts';

/** One call the registrar made, with the token it used (undefined = the sidecar's own). */
export interface AgentCall {
  op: 'agentSelf' | 'register' | 'deregister' | 'maintenance' | 'pass' | 'services' | 'checks';
  id?: string;
  token?: string | undefined;
}

export class FakeAgent implements RegistrationConsul {
  readonly address = 'http://fake-agent:8500';
  /** What the agent has registered, by service id. */
  readonly services = new Map<string, ConsulServiceDefinition>();
  readonly maintenance = new Set<string>();
  readonly calls: AgentCall[] = [];
  /** Unreachable: every call fails as a refused connection would. */
  down = false;
  /** Service ids the agent refuses every write for with 403. */
  readonly refuse = new Set<string>();
  /** When set, a call for which it returns a promise waits for that promise first. */
  hold: ((call: AgentCall) => Promise<void> | undefined) | undefined;

  /** The agent restarted: a dev agent keeps nothing. */
  restart(): void {
    this.services.clear();
    this.maintenance.clear();
  }

  /** Calls of one kind (and id), in order. */
  callsOf(op: AgentCall['op'], id?: string): AgentCall[] {
    return this.calls.filter((c) => c.op === op && (id === undefined || c.id === id));
  }

  status(id: string): ConsulServiceDefinition['Check']['Status'] {
    return this.services.get(id)?.Check.Status;
  }

  async agentSelf(): Promise<AgentSelf> {
    await this.#enter({ op: 'agentSelf' });
    return { nodeName: 'fake-node', advertiseAddress: '10.0.0.7', datacenter: 'dc1', version: '1.8.7', aclsEnabled: false };
  }

  async registerService(def: ConsulServiceDefinition, call?: CallOptions): Promise<void> {
    await this.#enter({ op: 'register', id: def.ID, token: call?.token });
    if (this.refuse.has(def.ID)) throw new ConsulPermissionError(`register service '${def.ID}'`, 'Permission denied');
    this.services.set(def.ID, structuredClone(def));
  }

  async deregisterService(id: string, call?: CallOptions): Promise<void> {
    await this.#enter({ op: 'deregister', id, token: call?.token });
    if (this.refuse.has(id)) throw new ConsulPermissionError(`deregister service '${id}'`, 'Permission denied');
    this.services.delete(id);
    this.maintenance.delete(id);
  }

  async setMaintenance(id: string, enable: boolean, _reason?: string, call?: CallOptions): Promise<void> {
    await this.#enter({ op: 'maintenance', id, token: call?.token });
    if (this.refuse.has(id)) throw new ConsulPermissionError(`enable maintenance of '${id}'`, 'Permission denied');
    if (!this.services.has(id)) throw new ConsulRejectedError(`${enable ? 'enable' : 'disable'} maintenance of '${id}'`, 404, `No service registered with ID "${id}"`);
    if (enable) this.maintenance.add(id);
    else this.maintenance.delete(id);
  }

  async passCheck(checkId: string, _note?: string, call?: CallOptions): Promise<void> {
    const id = checkId.replace(/^service:/, '');
    await this.#enter({ op: 'pass', id, token: call?.token });
    const def = this.services.get(id);
    if (!def) throw new ConsulUnavailableError(`Consul is unavailable: could not pass check '${checkId}' (500)`);
    def.Check.Status = 'passing';
  }

  async localServices(): Promise<Map<string, LocalService>> {
    await this.#enter({ op: 'services' });
    return new Map([...this.services.values()].map((d) => [d.ID, { id: d.ID, name: d.Name, port: d.Port, meta: d.Meta, tags: d.Tags }]));
  }

  async localChecks(): Promise<LocalCheck[]> {
    await this.#enter({ op: 'checks' });
    const checks: LocalCheck[] = [...this.services.values()].map((d) => ({ checkId: `service:${d.ID}`, serviceId: d.ID, name: d.Check.Name, status: d.Check.Status ?? 'critical', output: '' }));
    for (const id of this.maintenance) checks.push({ checkId: `_service_maintenance:${id}`, serviceId: id, name: 'maintenance', status: 'critical', output: '' });
    return checks;
  }

  async #enter(call: AgentCall): Promise<void> {
    this.calls.push(call);
    await this.hold?.(call);
    if (this.down) throw new ConsulUnavailableError(`Consul at ${this.address} is unreachable (ECONNREFUSED)`);
  }
}

/** The state directory in memory: what was saved last under each name. */
export class FakeStore implements RegistrationStore {
  readonly docs = new Map<string, unknown>();
  saves = 0;
  closed = false;
  /** When set, the next saves fail with it (a full disk). */
  failWith: Error | undefined;

  constructor(initial: Record<string, unknown> = {}) {
    for (const [k, v] of Object.entries(initial)) this.docs.set(k, structuredClone(v));
  }

  async load(name: string): Promise<unknown> {
    return structuredClone(this.docs.get(name));
  }

  async save(name: string, value: unknown): Promise<void> {
    if (this.failWith) throw this.failWith;
    this.saves++;
    this.docs.set(name, structuredClone(value));
  }

  async close(): Promise<void> {
    this.closed = true;
  }
}

/** A probe whose verdict per port the test sets (default passing), counting its runs. */
export class FakeProbe {
  readonly verdicts = new Map<number, ProbeStatus>();
  runs = 0;
  readonly probe: Probe = async (check) => {
    this.runs++;
    const port = Number(/:(\d+)(?:\/|$)/.exec(check.HTTP ?? check.TCP ?? '')?.[1]);
    if (check.TTL !== undefined) return { status: 'critical', output: 'waiting for the first heartbeat' };
    const status = this.verdicts.get(port) ?? 'passing';
    return { status, output: `fake probe of port ${port}: ${status}` };
  };
}
