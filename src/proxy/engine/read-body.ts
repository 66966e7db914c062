// A request body as the proxy needs it: none, read whole (small, so a retry can resend it), or streamed as it comes.
import { RequestTimeoutError } from '../errors.ts';
import type { ClientRequest } from './client-request.ts';
import type { RequestBody } from './exchange.ts';

/** The client cut its upload (or its framing was bad) while the body was being read. */
class BodyCutError extends Error {}

/**
 * Bodies with a Content-Length up to `limit` are read into memory; chunked and larger ones stream (and
 * cannot be retried). A body that does not arrive within `timeoutMs` is answered 408.
 */
export function readBody(req: ClientRequest, limit: number, timeoutMs: number): Promise<RequestBody> | RequestBody {
  const h = req.head;
  if (h.framing === 'none') return NONE;
  if (h.framing === 'chunked' || h.contentLength > limit) return { kind: 'stream', from: req };
  const data = Buffer.allocUnsafe(h.contentLength);
  let at = 0;
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new RequestTimeoutError(`the request body did not arrive within ${timeoutMs} ms`)), timeoutMs);
    req.readBody({
      data(chunk) {
        chunk.copy(data, at);
        at += chunk.length;
        return true;
      },
      end() {
        clearTimeout(timer);
        resolve({ kind: 'buffer', data });
      },
      fail(reason) {
        clearTimeout(timer);
        reject(new BodyCutError(reason));
      },
    });
  });
}

const NONE: RequestBody = { kind: 'none' };
