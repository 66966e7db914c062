// The agent's error catalogue: every error the control API, the registrar or the Consul client raise.
import { TandemError } from '../protocol/tandem-error.ts';

export { TandemError };

export class InvalidConfigError extends TandemError {
  readonly problems: readonly string[];
  constructor(problems: readonly string[]) {
    super('TANDEM_ERR_INVALID_CONFIG', 400, `invalid configuration:\n  - ${problems.join('\n  - ')}`);
    this.problems = problems;
  }
}

export class InvalidRequestError extends TandemError {
  constructor(message: string, code = 'TANDEM_ERR_INVALID_REQUEST') {
    super(code, 400, message);
  }
}

export class InvalidServiceError extends TandemError {
  constructor(message: string) {
    super('TANDEM_ERR_INVALID_SERVICE', 400, message);
  }
}

export class MalformedJsonError extends TandemError {
  constructor(message: string) {
    super('TANDEM_ERR_MALFORMED_JSON', 400, `request body is not valid JSON: ${message}`);
  }
}

export class ServiceNotFoundError extends TandemError {
  constructor(id: string) {
    super('TANDEM_ERR_SERVICE_NOT_FOUND', 404, `no service with id '${id}' is registered through this sidecar`);
  }
}

export class NotTtlCheckError extends TandemError {
  constructor(id: string, kind: string) {
    super('TANDEM_ERR_NOT_TTL_CHECK', 409, `service '${id}' has a ${kind} check; heartbeats apply to ttl checks only`);
  }
}

export class ProtectedServiceError extends TandemError {
  constructor(id: string) {
    super('TANDEM_ERR_PROTECTED_SERVICE', 409, `service '${id}' is the sidecar's own registration; stop the sidecar to remove it`);
  }
}

export class UnauthorizedError extends TandemError {
  constructor() {
    super('TANDEM_ERR_UNAUTHORIZED', 401, 'this control API needs Authorization: Bearer <token> (the sidecar was started with an API token)');
  }
}

export class RouteNotFoundError extends TandemError {
  constructor(method: string, url: string) {
    super('TANDEM_ERR_ROUTE_NOT_FOUND', 404, `no control API route ${method} ${url}`);
  }
}

export class ShuttingDownError extends TandemError {
  constructor() {
    super('TANDEM_ERR_SHUTTING_DOWN', 503, 'the sidecar is shutting down');
  }
}

/** Code and message only: Consul errors must never carry a token or a whole response into a log. */
export function errSummary(err: unknown): { code?: string; message: string } {
  if (err instanceof TandemError) return { code: err.code, message: err.message };
  return { message: err instanceof Error ? err.message : String(err) };
}
