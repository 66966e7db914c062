// Writes one registration to the local Consul agent: its definition, with the first check status its probe found.
import type { ServiceSpec } from '../protocol/wire.ts';
import type { CallOptions, ConsulServiceDefinition } from '../consul/consul-client.ts';
import { TandemError } from '../common/errors.ts';
import { ConsulPermissionError } from '../consul/errors.ts';
import { checkTimeoutMs, effectiveCheck, toConsulDefinition, type DefinitionContext } from './service-definition.ts';
import { probeCheck, type ProbeResult } from './probe.ts';
import type { Probe, RegistrationConsul } from './ports.ts';

export interface ConsulRegistrationOptions {
  consul: Pick<RegistrationConsul, 'agentSelf' | 'registerService'>;
  nodeName: string;
  /** Overrides the address learnt from the local Consul agent. */
  advertiseAddress?: string | undefined;
  checkIntervalMs: number;
  checkTimeoutMs: number;
  ttlMs: number;
  /** How a service is probed before it is registered; probeCheck unless a test fakes it. */
  probe?: Probe | undefined;
}

export class ConsulRegistration {
  #o: ConsulRegistrationOptions;
  #agentAddress: string | undefined;
  sidecarId = '';

  constructor(opts: ConsulRegistrationOptions) {
    this.#o = opts;
  }

  /** The definition Consul gets (the address is the agent's until it has been asked once). */
  definition(spec: ServiceSpec): ConsulServiceDefinition {
    return toConsulDefinition(spec, this.#ctx());
  }

  /**
   * Probes the service the way its check will, then registers it with that first status (`status`
   * overrides the probe: a heartbeat passes a TTL check). `onlyIfUp`: registers nothing, and resolves
   * undefined, when the probe finds it critical.
   */
  async register(spec: ServiceSpec, call: CallOptions, status?: ProbeResult['status'], onlyIfUp = false): Promise<ProbeResult | undefined> {
    this.#agentAddress ??= this.#o.advertiseAddress ?? (await this.#agentSelf(call)).advertiseAddress;
    const def = this.definition(spec);
    const probe = status ? { status, output: 'heartbeat' } : await (this.#o.probe ?? probeCheck)(def.Check, checkTimeoutMs(effectiveCheck(spec), this.#o));
    if (onlyIfUp && probe.status === 'critical') return undefined;
    def.Check.Status = probe.status;
    await this.#o.consul.registerService(def, call);
    return probe;
  }

  #ctx(): DefinitionContext {
    const { nodeName, checkIntervalMs, checkTimeoutMs: timeoutMs, ttlMs } = this.#o;
    return { nodeName, defaultAddress: this.#agentAddress ?? this.#o.advertiseAddress ?? '', sidecarId: this.sidecarId, checkIntervalMs, checkTimeoutMs: timeoutMs, ttlMs };
  }

  /** Read with the sidecar's token: on a caller's write, its refusal must not pass for the caller's token being refused. */
  async #agentSelf(call: CallOptions): Promise<{ advertiseAddress: string }> {
    try {
      return await this.#o.consul.agentSelf();
    } catch (err) {
      if (call.token === undefined || !(err instanceof ConsulPermissionError)) throw err;
      throw new TandemError(err.code, err.statusCode, err.message);
    }
  }
}
