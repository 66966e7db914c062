// Whose credentials a control-API write runs with: the caller's own Consul token, or the sidecar's when the caller proved `api.token`.
import type { FastifyRequest } from 'fastify';
import type { CallOptions } from '../consul/consul-client.ts';

const CREDENTIALS = Symbol('tandem.credentials');

type WithCredentials = FastifyRequest & { [CREDENTIALS]?: CallOptions };

/** Set once per request by the control API's auth hook. */
export function setCredentials(req: FastifyRequest, call: CallOptions): void {
  (req as WithCredentials)[CREDENTIALS] = call;
}

/**
 * The options every Consul write made for this request must carry: `{ token }` when the caller sent
 * `X-Consul-Token` (Consul's own ACLs decide), `{}` otherwise (the sidecar's token: ACLs are off, or
 * the caller proved `api.token`).
 */
export function credentials(req: FastifyRequest): CallOptions {
  return (req as WithCredentials)[CREDENTIALS] ?? {};
}
