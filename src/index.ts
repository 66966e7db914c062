// Tandem's programmatic entry: run a sidecar in-process (the CLI does the same) and its public types.
export { Sidecar, type SidecarOptions, type SidecarAddresses } from './agent/sidecar.ts';
export { loadConfig, type Config, type FrozenConfig, type LoadOptions } from './agent/config.ts';
export { TandemError } from './agent/errors.ts';
export type { ServiceSpec, CheckSpec, Registration, ErrorBody } from './sdk/wire.ts';
