// An answer read whole into memory instead of streamed to a client (broadcast): bounded in size and time.
import type { Framing } from '../http1/head-types.ts';
import { CONTROL_PLANE_CODE } from './upstream-pool.ts';
import type { AttemptResult, ResponseTarget } from './exchange.ts';

export type Collected =
  | { status: number; headers: Record<string, string | string[]>; body: Buffer }
  | { error: { code: string; message: string } };

class CollectTarget implements ResponseTarget {
  gone = false;
  status = 0;
  lines = '';
  framing: Framing = 'none';
  chunks: Buffer[] = [];
  size = 0;
  tooLarge = false;
  #max: number;
  #onGone: (() => void) | undefined;

  constructor(max: number) {
    this.#max = max;
  }

  writeHead(status: number, _reason: string, lines: string, framing: Framing, body?: Buffer): boolean {
    this.status = status;
    this.lines = lines;
    this.framing = framing;
    if (body) this.write(body);
    return true;
  }

  write(chunk: Buffer): boolean {
    this.size += chunk.length;
    if (this.size > this.#max) {
      this.tooLarge = true;
      this.cut();
      return true;
    }
    this.chunks.push(chunk);
    return true;
  }

  onDrain(): void {}
  end(): void {}
  destroy(): void {}

  onGone(cb: () => void): void {
    this.#onGone = cb;
  }

  /** Gives up on the answer (too large, too late): the exchange aborts and closes its connection. */
  cut(): void {
    if (this.gone) return;
    this.gone = true;
    const f = this.#onGone;
    this.#onGone = undefined;
    f?.();
  }
}

/** Runs `run` against a buffer and makes the outcome a broadcast entry. */
export async function collectInto(maxBodyBytes: number, timeoutMs: number, run: (t: ResponseTarget) => Promise<AttemptResult>): Promise<Collected> {
  // The chunked framing counts too: the payload is at most the raw size.
  const t = new CollectTarget(maxBodyBytes + (maxBodyBytes >> 3) + 1024);
  let late = false;
  const timer = setTimeout(() => {
    late = true;
    t.cut();
  }, timeoutMs);
  let r: AttemptResult;
  try {
    r = await run(t);
  } finally {
    clearTimeout(timer);
  }
  if (t.tooLarge) return tooLarge(maxBodyBytes);
  if (late || (r.kind === 'failed' && r.timeout)) return { error: { code: 'TANDEM_ERR_UPSTREAM_TIMEOUT', message: `no complete answer within ${timeoutMs} ms` } };
  if (r.kind === 'failed') {
    if (r.controlPlane) return { error: { code: CONTROL_PLANE_CODE, message: 'the instance is a control plane: not proxied to' } };
    return { error: { code: 'TANDEM_ERR_UPSTREAM_FAILED', message: r.reason } };
  }
  if (r.kind === 'aborted') return { error: { code: 'TANDEM_ERR_UPSTREAM_FAILED', message: 'the answer was cut' } };
  const raw = Buffer.concat(t.chunks);
  const body = t.framing === 'chunked' ? dechunk(raw) : raw;
  if (body.length > maxBodyBytes) return tooLarge(maxBodyBytes);
  return { status: t.status, headers: headerObject(t.lines), body };
}

function tooLarge(max: number): Collected {
  return { error: { code: 'TANDEM_ERR_BROADCAST_BODY_TOO_LARGE', message: `the response is larger than ${max} bytes` } };
}

/** `name: value\r\n` lines as an object (repeated names become arrays), as clients see headers. */
function headerObject(lines: string): Record<string, string | string[]> {
  const out: Record<string, string | string[]> = {};
  for (const line of lines.split('\r\n')) {
    const colon = line.indexOf(':');
    if (colon <= 0) continue;
    const name = line.slice(0, colon);
    const value = line.slice(colon + 1).trim();
    const cur = out[name];
    out[name] = cur === undefined ? value : Array.isArray(cur) ? [...cur, value] : [cur, value];
  }
  return out;
}

/** The payload of a chunked body the scanner already validated: sizes and extensions dropped, data kept. */
function dechunk(raw: Buffer): Buffer {
  const parts: Buffer[] = [];
  let p = 0;
  for (;;) {
    const eol = raw.indexOf('\r\n', p, 'latin1');
    if (eol === -1) break;
    const sizeText = raw.toString('latin1', p, eol).split(';')[0] as string;
    const size = Number.parseInt(sizeText, 16);
    if (!(size > 0)) break;
    parts.push(raw.subarray(eol + 2, eol + 2 + size));
    p = eol + 2 + size + 2;
  }
  return Buffer.concat(parts);
}
