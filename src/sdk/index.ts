// The SDK's entry point (`tandem/sdk`): the client, its error class and the wire types.
export { Tandem, type TandemOptions, type RegisterSpec, type RegisterOptions, type ServiceHandle, type TandemRequestInit, type WatchEvent, type ElectOptions, type StreamHandle } from './tandem.ts';
export { TandemError } from '../protocol/tandem-error.ts';
export type { BroadcastEntry, Election, LeaderInfo, Member, TandemEvent, CheckSpec, ErrorBody, InstanceInfo, Registration, RegistrationState, ResolvedInstance, ServiceSpec } from '../protocol/wire.ts';
