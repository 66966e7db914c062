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

/** ACLs are on and a control-API write came with neither the caller's Consul token nor `api.token`. */
export class CredentialsRequiredError extends TandemError {
  constructor() {
    super(
      'TANDEM_ERR_CREDENTIALS_REQUIRED',
      401,
      'the Consul agent enforces ACLs, so this write needs a credential: your own Consul token in X-Consul-Token (Tandem makes the write with it; ' +
        'the SDK and the tandem CLI send it from CONSUL_HTTP_TOKEN, so set that), or configure api.token on the sidecar and send Authorization: Bearer <api.token>',
    );
  }
}

/** Consul answered 403 to a write made with the caller's own token (X-Consul-Token): Consul's ACLs said no. */
export class CallerTokenRefusedError extends TandemError {
  constructor(action: string, detail: string) {
    super(
      'TANDEM_ERR_CONSUL_PERMISSION_DENIED',
      403,
      `Consul refused to ${action} with the caller's own ACL token (X-Consul-Token): ${detail}. Tandem made this write with that token, so Consul's ACLs decided; use a token whose policy allows it (the SDK and CLI send CONSUL_HTTP_TOKEN).`,
    );
  }
}

/** An app tried to register something only a sidecar may register (its name, tag or Meta namespace). */
export class ReservedServiceError extends TandemError {
  constructor(problem: string) {
    super('TANDEM_ERR_RESERVED_SERVICE', 400, `cannot register this service: ${problem}`);
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
