// The SDK's entry point (`tandem/sdk`): the wire types shared with the sidecar; the client lands with the SDK issue.
export type { CheckSpec, ErrorBody, Registration, RegistrationState, ServiceSpec } from './wire.ts';
