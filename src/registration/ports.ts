// What the registration room needs of Consul, the state directory and the probe: the narrowest surface, so a fake can stand in (test/unit).
import type { ConsulClient } from '../consul/consul-client.ts';
import type { StateStore } from '../common/state-store.ts';
import type { probeCheck } from './probe.ts';

/** The local agent's calls that registration makes (ConsulClient is the real one). */
export type RegistrationConsul = Pick<ConsulClient, 'address' | 'agentSelf' | 'registerService' | 'deregisterService' | 'setMaintenance' | 'passCheck' | 'localServices' | 'localChecks'>;

/** Where the API registrations are kept between runs (StateStore is the real one). */
export type RegistrationStore = Pick<StateStore, 'load' | 'save' | 'close'>;

/** Runs a service's check once (probeCheck is the real one). */
export type Probe = typeof probeCheck;
