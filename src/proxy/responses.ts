// The small pieces every proxy answer shares: Tandem's own response lines, who left, errors as TandemErrors.
import type { Picked } from './balancing/balancer.ts';
import type { Endpoint } from './endpoint-source.ts';
import type { ClientRequest } from './engine/client-request.ts';
import { TandemError } from './errors.ts';

/** The client left: its connection is gone, or its upload was cut. */
export function clientGone(req: ClientRequest): boolean {
  return req.gone || req.bodyProblem === 'aborted';
}


export function toTandemError(err: unknown): TandemError {
  return err instanceof TandemError ? err : new TandemError('TANDEM_ERR_INTERNAL', 500, 'internal error', { cause: err });
}

export function extraLines(endpoint: Endpoint, picked: Picked): string {
  return picked.moved ? `x-tandem-instance: ${endpoint.id}\r\nx-tandem-sticky: moved\r\n` : `x-tandem-instance: ${endpoint.id}\r\n`;
}
