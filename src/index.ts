// Tandem's programmatic entry: run a sidecar in-process (the CLI does the same) and its public types.
export { Sidecar, type SidecarOptions, type SidecarAddresses } from './sidecar.ts';
export { loadConfig, type Config, type FrozenConfig, type LoadOptions } from './config/config.ts';
export { TandemError } from './common/errors.ts';
export type { ServiceSpec, CheckSpec, Registration, ErrorBody } from './protocol/wire.ts';
