// The proxy's error catalogue: every error the data path answers with, each with a stable code and status.
import { TandemError } from '../protocol/tandem-error.ts';

export { TandemError };

export class BadTargetError extends TandemError {
  constructor(message: string) {
    super('TANDEM_ERR_BAD_TARGET', 400, message);
  }
}

/** A request head the strict parser refused (RFC 9112): 400, or 501 for an unknown method, 505 for another HTTP version. */
export class MalformedRequestError extends TandemError {
  constructor(status: number, reason: string) {
    super('TANDEM_ERR_MALFORMED_REQUEST', status, `malformed HTTP request: ${reason}`);
  }
}

export class BadRangeError extends TandemError {
  constructor(range: string) {
    super('TANDEM_ERR_BAD_RANGE', 400, `'${range}' is not a valid semver range (try ^1.2, ~2.0.1, >=1 <3, 1.x || 2.x)`);
  }
}

export class BadPathError extends TandemError {
  constructor(message: string) {
    super('TANDEM_ERR_BAD_PATH', 400, message);
  }
}

export class BadTimeoutError extends TandemError {
  constructor(value: string) {
    super('TANDEM_ERR_BAD_TIMEOUT', 400, `X-Tandem-Timeout-Ms must be a whole number of milliseconds from 1 to 86400000 (got '${value}')`);
  }
}

export class PayloadTooLargeError extends TandemError {
  constructor(limit: number) {
    super('TANDEM_ERR_PAYLOAD_TOO_LARGE', 413, `the request body is larger than ${limit} bytes`);
  }
}

export class StartingError extends TandemError {
  constructor() {
    super('TANDEM_ERR_STARTING', 503, 'the sidecar is still starting (restoring its registrations)');
  }
}

export class ExpectationFailedError extends TandemError {
  constructor() {
    super('TANDEM_ERR_EXPECTATION_FAILED', 417, 'only Expect: 100-continue is supported');
  }
}

export class ForeignHostError extends TandemError {
  constructor(host: string) {
    super('TANDEM_ERR_FOREIGN_HOST', 403, `'${host}' is not a catalog service: Tandem only proxies to <service>.service.consul (it is not an open proxy)`);
  }
}

/**
 * The target is a control plane: a Tandem sidecar (its control API or proxy) or a Consul agent. The
 * proxy is the data plane; letting it reach a control API would lend the proxy's reach to writes.
 */
export class ControlPlaneError extends TandemError {
  constructor(what: string) {
    super('TANDEM_ERR_CONTROL_PLANE', 403, `${what} is a control plane (a Tandem sidecar or a Consul agent): the proxy never routes to it; call a control API directly, with credentials`);
  }
}

/**
 * A host that is not a catalog service, refused by the egress policy (`proxy.egress`). The message names
 * the policy, the config key and NO_PROXY, so whoever reads it in an app's log knows the two ways out.
 */
export class EgressRefusedError extends TandemError {
  constructor(target: string, mode: string, reason: string) {
    super(
      'TANDEM_ERR_EGRESS_REFUSED',
      403,
      `'${target}' is not a catalog service and the proxy's egress policy refuses it (proxy.egress.mode '${mode}': ${reason}). ` +
        `Allow it with proxy.egress.allow (host:port or CIDR), or keep the app's calls to it off the proxy with NO_PROXY`,
    );
  }
}

/** A host the egress policy allows, that could not be reached (name not resolved, refused, reset). */
export class EgressFailedError extends TandemError {
  constructor(target: string, reason: string) {
    super('TANDEM_ERR_EGRESS_FAILED', 502, `'${target}' (not a catalog service, reached through the egress policy) failed: ${reason}`);
  }
}

export class EgressTimeoutError extends TandemError {
  constructor(target: string, timeoutMs: number) {
    super('TANDEM_ERR_EGRESS_TIMEOUT', 504, `'${target}' (not a catalog service, reached through the egress policy) did not answer within ${timeoutMs} ms`);
  }
}

/** TLS inside a CONNECT tunnel to a catalog service: Tandem terminates service tunnels and reads plain HTTP only. */
export class TlsToServiceError extends TandemError {
  constructor(authority: string) {
    super(
      'TANDEM_ERR_TLS_NOT_SUPPORTED',
      400,
      `CONNECT ${authority}: TLS to a catalog service is not proxied (Tandem routes each request by version, sticky id and health, which it cannot read inside TLS); call http://<service>.service.consul/ instead`,
    );
  }
}

/** The request head did not arrive in time (`proxy.headersTimeoutMs`), or the whole request did not. */
export class RequestTimeoutError extends TandemError {
  constructor(message: string) {
    super('TANDEM_ERR_REQUEST_TIMEOUT', 408, message);
  }
}

export class UrlTooLongError extends TandemError {
  constructor(limit: number) {
    super('TANDEM_ERR_URL_TOO_LONG', 414, `the request URL is longer than ${limit} bytes`);
  }
}

export class HeadersTooLargeError extends TandemError {
  constructor(message = 'the request headers are too large') {
    super('TANDEM_ERR_HEADERS_TOO_LARGE', 431, message);
  }
}

export class TrailerNotSupportedError extends TandemError {
  constructor() {
    super('TANDEM_ERR_TRAILER_NOT_SUPPORTED', 400, 'requests declaring trailers (a Trailer header) are not proxied');
  }
}

export class UnknownServiceError extends TandemError {
  constructor(service: string) {
    super('TANDEM_ERR_UNKNOWN_SERVICE', 503, `no service named '${service}' is in the catalog`);
  }
}

export class CatalogForbiddenError extends TandemError {
  constructor(service: string, problem: string) {
    super('TANDEM_ERR_CONSUL_PERMISSION_DENIED', 503, `cannot tell whether '${service}' exists: ${problem} (Consul answers reads it does not allow with empty lists)`);
  }
}

export class NoHealthyInstanceError extends TandemError {
  constructor(service: string, range: string | undefined, versions: readonly string[], healthyVersions: readonly string[]) {
    const want = range ? ` in range '${range}'` : '';
    super(
      'TANDEM_ERR_NO_HEALTHY_INSTANCE',
      503,
      `no healthy instance of '${service}'${want}; versions in the catalog: ${versions.length ? versions.join(', ') : 'none'}` +
        `; healthy: ${healthyVersions.length ? healthyVersions.join(', ') : 'none'}`,
    );
  }
}

export class InstanceNotFoundError extends TandemError {
  constructor(service: string, id: string) {
    super('TANDEM_ERR_INSTANCE_NOT_FOUND', 503, `instance '${id}' of '${service}' is not a healthy instance in range (gone, critical or ejected)`);
  }
}

export class CatalogUnavailableError extends TandemError {
  constructor(service: string, waitedMs: number) {
    super('TANDEM_ERR_CATALOG_UNAVAILABLE', 503, `no catalog answer for '${service}' within ${waitedMs} ms (is Consul reachable?)`);
  }
}

export class TooManyServicesError extends TandemError {
  constructor(limit: number) {
    super('TANDEM_ERR_TOO_MANY_SERVICES', 503, `the sidecar already watches ${limit} services (watch.maxServices)`);
  }
}

export class UpstreamFailedError extends TandemError {
  constructor(service: string, tries: number, reason: string, options?: { cause?: unknown }) {
    super('TANDEM_ERR_UPSTREAM_FAILED', 502, `'${service}' failed after ${tries} ${tries === 1 ? 'try' : 'tries'}: ${reason}`, options);
  }
}

export class UpstreamTimeoutError extends TandemError {
  constructor(service: string, timeoutMs: number) {
    super('TANDEM_ERR_UPSTREAM_TIMEOUT', 504, `'${service}' did not answer within ${timeoutMs} ms`);
  }
}

/**
 * Every instance in range is at its `maxInFlight` (from this sidecar) and the request could not wait
 * for a free one: the queue (`proxy.maxQueued`) was full or `proxy.queueTimeoutMs` passed. Answered
 * with `Retry-After`.
 */
export class OverloadedError extends TandemError {
  readonly retryAfterS: number;
  /** Refused without waiting (the queue was full). */
  readonly immediate: boolean;

  constructor(service: string, reason: string, retryAfterS: number, immediate = false) {
    super('TANDEM_ERR_OVERLOADED', 503, `every instance of '${service}' in range is at its maxInFlight: ${reason}`);
    this.retryAfterS = retryAfterS;
    this.immediate = immediate;
  }
}
