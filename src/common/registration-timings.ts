// How registrations are kept: the registrar's timings, as the config file names them (shared by config and registrar).

export interface RegistrationTimings {
  /** How often the sidecar compares its registrations with the agent's and re-registers what is missing. */
  syncIntervalMs: number;
  /** Time between maintenance-on and deregistration on a graceful removal. */
  drainMs: number;
  checkIntervalMs: number;
  checkTimeoutMs: number;
  ttlMs: number;
  /** How long an SDK registration outlives its app's liveness stream (a sidecar restart, a hiccup). */
  livenessGraceMs: number;
}
