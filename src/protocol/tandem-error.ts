// The one error shape of Tandem: a stable `code`, an HTTP `statusCode` and a message (sidecar and SDK alike).
import { STATUS_CODES } from 'node:http';
import type { ErrorBody } from './wire.ts';

/**
 * An error with a stable machine-readable code, e.g. `TANDEM_ERR_NO_HEALTHY_INSTANCE`, and the HTTP
 * status it maps to. The sidecar answers every error as {@link ErrorBody}; the SDK rebuilds this class
 * from that body.
 *
 * @example
 * ```ts
 * try { await tandem.request('users@^2', '/x'); }
 * catch (err) { if (err instanceof TandemError && err.code === 'TANDEM_ERR_NO_HEALTHY_INSTANCE') retryLater(); }
 * ```
 */
export class TandemError extends Error {
  readonly code: string;
  readonly statusCode: number;

  constructor(code: string, statusCode: number, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
    this.code = code;
    this.statusCode = statusCode;
  }

  /** The response body; never carries a stack or a cause's details. */
  toBody(): ErrorBody {
    return { statusCode: this.statusCode, code: this.code, error: STATUS_CODES[this.statusCode] ?? 'Error', message: this.message };
  }
}
