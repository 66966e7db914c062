// The Consul layer's errors: unreachable, refused (ACL), rejected, and the limits the sidecar sets itself.
import { TandemError } from '../protocol/tandem-error.ts';
import type { BudgetSnapshot } from './connection-budget.ts';

/** Consul could not be reached, or answered 5xx. */
export class ConsulUnavailableError extends TandemError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('TANDEM_ERR_CONSUL_UNAVAILABLE', 503, message, options);
  }
}

/** Consul answered 403: the ACL token lacks a permission. */
export class ConsulPermissionError extends TandemError {
  /** What was refused and Consul's words, so a caller's own refused token can be named (control API). */
  readonly action: string;
  readonly detail: string;
  constructor(action: string, detail: string, options?: { cause?: unknown }) {
    super(
      'TANDEM_ERR_CONSUL_PERMISSION_DENIED',
      502,
      `Consul refused to ${action}: the ACL token lacks permission (${detail}). Set CONSUL_HTTP_TOKEN or CONSUL_HTTP_TOKEN_FILE to a token with the Tandem policy.`,
      options,
    );
    this.action = action;
    this.detail = detail;
  }
}

/** Consul answered another 4xx: it rejected what we sent. */
export class ConsulRejectedError extends TandemError {
  readonly consulStatus: number;
  constructor(action: string, consulStatus: number, detail: string, options?: { cause?: unknown }) {
    super('TANDEM_ERR_CONSUL_REJECTED', 502, `Consul rejected the request to ${action} (${consulStatus}): ${detail}`, options);
    this.consulStatus = consulStatus;
  }
}

/** The connection budget has no room for another blocking query that callers can multiply. */
export class ConsulBudgetExhaustedError extends TandemError {
  constructor(what: string, b: BudgetSnapshot) {
    super(
      'TANDEM_ERR_CONSUL_BUDGET_EXHAUSTED',
      503,
      `no room for another Consul watch (${what}): ${b.inUse} of ${b.capacity} watch connections in use (consul.maxConnections); try again when fewer streams are open`,
    );
  }
}

/** A watch had no first answer from Consul in time. */
export class FirstAnswerTimeoutError extends TandemError {
  constructor(what: string, timeoutMs: number) {
    super('TANDEM_ERR_CATALOG_UNAVAILABLE', 503, `Consul did not answer for ${what} within ${timeoutMs} ms`);
  }
}
