// Strict HTTP/1.1 response-head parser over Buffers: the status line, the fields, and the body framing they imply.
import * as chars from './chars.ts';
import { CRLFCRLF, latin1, lineEndsSoFar, scan, scanFields, strayAt } from './head-fields.ts';
import { INCOMPLETE, headError, type Framing, type HeadLimits, type ResponseHeadResult } from './head-types.ts';
import { versionMinor } from './request-head.ts';

// Module-local copies: tsx (tests, benches) compiles imported bindings into getter calls, which in these loops cost
// more than the parsing itself. Built output (tsc, ESM) reads them directly either way.
const { CLASS, C_FIELD, CR, LF, SP } = chars;

/**
 * Parses the response head at `offset` to a request made with `requestMethod` (which decides whether a body
 * follows: none after HEAD, none after a 2xx to CONNECT). Errors carry a request-side status for uniformity;
 * the caller answers the client its own 502 and closes the upstream connection.
 */
export function parseResponseHead(buf: Buffer, offset: number, limits: HeadLimits, requestMethod: string): ResponseHeadResult {
  const len = buf.length;
  let start = offset;
  while (start < len && (buf[start] === CR || buf[start] === LF)) start++;
  const crlf = start === len ? -1 : buf.indexOf(CRLFCRLF, start);
  if (crlf === -1) {
    const lineError = lineEndsSoFar(buf, start);
    if (lineError) return lineError;
    if (len - offset > limits.maxHeaderBytes) return headError(431, 'head-too-large', `the response head is larger than ${limits.maxHeaderBytes} bytes`);
    return INCOMPLETE;
  }

  const minor = versionMinor(buf, start);
  if (typeof minor !== 'number') return minor;
  // Status: SP, three digits from 100 to 599 (llhttp takes any three), then SP and a reason phrase, or the line end.
  const d = start + 9;
  const status = (buf[d] as number) * 100 + (buf[d + 1] as number) * 10 + (buf[d + 2] as number) - 0x30 * 111;
  const digits = isDigit(buf[d]) && isDigit(buf[d + 1]) && isDigit(buf[d + 2]);
  if (buf[start + 8] !== SP || !digits || status < 100 || status > 599) {
    return strayAt(buf, digits ? d + 3 : start + 8, headError(400, 'bad-status-line', 'expected a status line: HTTP/1.x, a status code from 100 to 599, a reason phrase'));
  }
  let p = d + 3;
  let r0 = p;
  if (buf[p] === SP) {
    r0 = ++p;
    let c = buf[p] as number;
    while ((CLASS[c] as number) & C_FIELD) c = buf[++p] as number;
  }
  if (buf[p] !== CR || buf[p + 1] !== LF) return strayAt(buf, p, headError(400, 'bad-status-line', 'invalid character in the status line'));
  const length = crlf + 4 - offset;
  if (length > limits.maxHeaderBytes) return headError(431, 'head-too-large', `the response head is larger than ${limits.maxHeaderBytes} bytes`);
  const head = latin1(buf, start, crlf + 4);
  const reason = head.slice(r0 - start, p - start);
  const fieldError = scanFields(buf, p + 2, limits, false, head, start);
  if (fieldError) return fieldError;
  const s = scan;

  const tunnel = requestMethod === 'CONNECT' && status >= 200 && status < 300;
  // RFC 9112 §6.3 rules 1-2: these never have a body, whatever their fields say.
  const bodiless = requestMethod === 'HEAD' || status < 200 || status === 204 || status === 304 || tunnel;
  let framing: Framing;
  if (s.te) {
    if (minor === 0) return headError(400, 'transfer-encoding-in-http10', 'Transfer-Encoding in an HTTP/1.0 response');
    // Chunked last: chunked. Any other coding last: the body runs to the close (RFC 9112 §6.3 rule 4).
    framing = bodiless ? 'none' : s.teChunked ? 'chunked' : 'close';
  } else if (s.contentLength !== -1) {
    framing = bodiless || s.contentLength === 0 ? 'none' : 'length';
  } else {
    framing = bodiless ? 'none' : 'close';
  }
  return {
    kind: 'head',
    // The status line first, as on the wire.
    status,
    reason,
    length,
    versionMinor: minor,
    headers: s.headers,
    framing,
    contentLength: s.contentLength,
    keepAlive: framing !== 'close' && !s.close && (minor === 1 || s.keepAliveToken),
    connection: s.connection,
    upgrade: s.upgrade,
    isUpgrade: status === 101 || tunnel,
    trailer: s.trailer,
  };
}

function isDigit(c: number | undefined): boolean {
  return c !== undefined && c >= 0x30 && c <= 0x39;
}
