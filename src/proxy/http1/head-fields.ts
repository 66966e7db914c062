// The header-field section of an HTTP/1.1 head, shared by requests and responses: one pass over the bytes, strict.
import * as chars from './chars.ts';
import { headError, type HeadError, type HeadLimits } from './head-types.ts';

// Module-local copies: tsx (tests, benches) compiles imported bindings into getter calls, which in these loops cost
// more than the parsing itself. Built output (tsc, ESM) reads them directly either way.
const { CLASS, C_TCHAR, C_UPPER, COMMA, CR, HTAB, LF, SP } = chars;

const MAX_CONTENT_LENGTH_DIGITS = 16;

/** Shared by every head without Connection tokens (most of them): frozen, so nobody appends to it by mistake. */
const NO_TOKENS: readonly string[] = Object.freeze([]);

/**
 * What the last `scanFields` call found. Parsing is synchronous and never re-entered, so one module-level object
 * serves every call: nothing is allocated for state that only the request/response assembly reads.
 */
export const scan = {
  headers: [] as string[],
  contentLength: -1,
  /** A Transfer-Encoding field with at least one coding. */
  te: false,
  /** The last transfer coding so far is `chunked`. */
  teChunked: false,
  /** A coding other than `chunked` appears. */
  teOther: false,
  close: false,
  keepAliveToken: false,
  upgradeToken: false,
  connection: NO_TOKENS,
  upgrade: undefined as string | undefined,
  host: undefined as string | undefined,
  expect: undefined as string | undefined,
  trailer: false,
};

interface Latin1Slicer {
  latin1Slice(start: number, end: number): string;
}

/**
 * The bytes as a latin1 string (one char per byte, so it writes back unchanged with 'latin1'). Buffer's own
 * `latin1Slice` (present on every Node we support) skips `toString`'s argument and encoding dispatch.
 */
export function latin1(buf: Buffer, start: number, end: number): string {
  return (buf as unknown as Latin1Slicer).latin1Slice(start, end);
}

const BARE_LF = 'a line ends with LF alone (CRLF is required)';
const BARE_CR = 'a CR is not followed by LF';

/** The error for the byte at `p`, which should not be there: a CR or LF out of place is a line-ending problem, worth its own code. */
export function strayAt(buf: Buffer, p: number, other: HeadError): HeadError {
  const c = buf[p];
  if (c === LF) return headError(400, 'bare-lf', BARE_LF);
  if (c === CR && buf[p + 1] !== LF) return headError(400, 'bare-cr', BARE_CR);
  return other;
}

function isOws(c: number | undefined): boolean {
  return c === SP || c === HTAB;
}

/** Case-insensitive compare of buf[start, start + word.length) with a lower-case ASCII word. */
function equalsLower(buf: Buffer, start: number, end: number, word: string): boolean {
  if (end - start !== word.length) return false;
  for (let i = 0; i < word.length; i++) if (((buf[start + i] as number) | 0x20) !== word.charCodeAt(i)) return false;
  return true;
}

/**
 * Reads header fields from `p` (the first byte after the start line's CRLF) through the blank line into `scan`
 * (which is the first CRLFCRLF the caller found: every line before it is checked to end in CRLF and hold no CR or LF).
 * The caller has found CRLFCRLF ahead, so every loop below stops inside the buffer (at that CR at the latest).
 * `head` is the whole head as one latin1 string starting at buffer offset `base`: one native call makes it, and
 * names and values are cut from it in JavaScript (a native slice per field cost three times as much).
 */
export function scanFields(buf: Buffer, p: number, limits: HeadLimits, request: boolean, head: string, base: number): HeadError | undefined {
  const s = scan;
  const headers: string[] = [];
  s.headers = headers;
  s.contentLength = -1;
  s.te = s.teChunked = s.teOther = false;
  s.close = s.keepAliveToken = s.upgradeToken = s.trailer = false;
  s.connection = NO_TOKENS;
  s.upgrade = s.host = s.expect = undefined;
  let count = 0;
  let hosts = 0;
  for (;;) {
    let c = buf[p] as number;
    if (c === CR) {
      if (buf[p + 1] !== LF) return headError(400, 'bare-cr', BARE_CR);
      return undefined;
    }
    // A field line starting with whitespace continues the previous one (obs-fold): refused, as llhttp does.
    if (c === SP || c === HTAB) return headError(400, 'obs-fold', count === 0 ? 'whitespace before the first header field' : 'obsolete line folding (a field line starting with whitespace)');
    if (++count > limits.maxHeaders) return headError(431, 'too-many-headers', `more than ${limits.maxHeaders} header fields`);
    const n0 = p;
    let classes = 0;
    let k = CLASS[c] as number;
    while (k & C_TCHAR) {
      classes |= k;
      c = buf[++p] as number;
      k = CLASS[c] as number;
    }
    if (c !== 0x3a /* : */ || p === n0) {
      return strayAt(buf, p, headError(400, 'bad-header-name', p === n0 ? 'a header field has no name' : 'invalid character in a header field name (or whitespace before the colon)'));
    }
    const n1 = p;
    c = buf[++p] as number;
    while (c === SP || c === HTAB) c = buf[++p] as number;
    const v0 = p;
    // Field-value bytes (C_FIELD): HTAB, SP, VCHAR, obs-text. Two compares measured ~10% faster than the table here.
    while (c > 0x1f ? c !== 0x7f : c === HTAB) c = buf[++p] as number;
    if (c !== CR || buf[p + 1] !== LF) return strayAt(buf, p, headError(400, 'bad-header-value', 'control character in a header field value'));
    let v1 = p;
    while (v1 > v0 && isOws(buf[v1 - 1])) v1--;
    p += 2;
    const name = knownName(buf, n0, n1) ?? (classes & C_UPPER ? head.slice(n0 - base, n1 - base).toLowerCase() : head.slice(n0 - base, n1 - base));
    const value = head.slice(v0 - base, v1 - base);
    headers.push(name, value);
    // Only framing and routing fields need more than their string; switch on length first to keep this cheap.
    switch (n1 - n0) {
      case 4:
        if (name === 'host' && request) {
          // RFC 9112 §3.2: more than one Host is a 400 (node:http kept the first silently).
          if (++hosts > 1) return headError(400, 'duplicate-host', 'more than one Host field');
          s.host = value;
        }
        break;
      case 6:
        if (name === 'expect') s.expect = value;
        break;
      case 7:
        if (name === 'upgrade' && v1 > v0) s.upgrade = value;
        else if (name === 'trailer') s.trailer = true;
        break;
      case 10:
      case 16:
        if (name === 'connection' || name === 'proxy-connection') connectionTokens(buf, v0, v1, name === 'connection', head, base);
        break;
      case 14:
        if (name === 'content-length') {
          const e = contentLength(buf, v0, v1);
          if (e) return e;
        }
        break;
      case 17:
        if (name === 'transfer-encoding') {
          // "chunked<HTAB>": llhttp does not take it for chunked (it refuses the request, reads the response to
          // the close) while OWS trimming would: refuse it rather than frame it differently from Node.
          for (let i = v1; i < p - 2; i++) if (buf[i] === HTAB) return headError(400, 'bad-transfer-encoding', 'a tab after the last transfer coding');
          const e = transferEncoding(buf, v0, v1, request);
          if (e) return e;
        }
        break;
    }
  }
}

/** Field names real clients and servers send, by length: found without building a string, and already interned. */
const KNOWN_NAMES: string[][] = (() => {
  const names = [
    'host', 'user-agent', 'accept', 'accept-encoding', 'accept-language', 'connection', 'content-length', 'content-type',
    'transfer-encoding', 'cookie', 'authorization', 'referer', 'origin', 'cache-control', 'pragma', 'date', 'server', 'etag',
    'keep-alive', 'upgrade', 'expect', 'te', 'trailer', 'via', 'forwarded', 'x-forwarded-for', 'x-forwarded-proto',
    'x-request-id', 'traceparent', 'tracestate', 'if-none-match', 'if-modified-since', 'last-modified', 'location', 'vary',
    'set-cookie', 'content-encoding', 'range', 'x-tandem-version', 'x-stickyid', 'proxy-connection', 'sec-websocket-key',
    'sec-websocket-version', 'x-tandem-timeout-ms', 'x-tandem-instance',
  ];
  const byLength: string[][] = [];
  for (const n of names) (byLength[n.length] ??= []).push(n);
  return byLength;
})();

function knownName(buf: Buffer, n0: number, n1: number): string | undefined {
  const candidates = KNOWN_NAMES[n1 - n0];
  if (candidates === undefined) return undefined;
  const first = (buf[n0] as number) | 0x20;
  for (let k = 0; k < candidates.length; k++) {
    const name = candidates[k] as string;
    if (name.charCodeAt(0) !== first) continue;
    let i = 1;
    while (i < name.length && ((buf[n0 + i] as number) | 0x20) === name.charCodeAt(i)) i++;
    if (i === name.length) return name;
  }
  return undefined;
}

function contentLength(buf: Buffer, v0: number, v1: number): HeadError | undefined {
  // llhttp refuses a second Content-Length even when it repeats the first; so do we (RFC 9110 allows merging
  // identical values, but a proxy that merges what its upstream might not is how smuggling starts).
  if (scan.contentLength !== -1) return headError(400, 'duplicate-content-length', 'more than one Content-Length field');
  if (scan.te) return headError(400, 'content-length-with-transfer-encoding', 'both Content-Length and Transfer-Encoding');
  if (v1 === v0 || v1 - v0 > MAX_CONTENT_LENGTH_DIGITS) return headError(400, 'bad-content-length', 'Content-Length must be 1 to 16 digits');
  let n = 0;
  for (let i = v0; i < v1; i++) {
    const d = (buf[i] as number) - 0x30;
    if (d < 0 || d > 9) return headError(400, 'bad-content-length', 'Content-Length must be digits only');
    n = n * 10 + d;
  }
  if (n > Number.MAX_SAFE_INTEGER) return headError(400, 'bad-content-length', 'Content-Length is too large');
  scan.contentLength = n;
  return undefined;
}

/**
 * A comma-separated list of transfer codings, each a bare token (no parameters, no empty elements). In a
 * request nothing may follow `chunked` (RFC 9112 §6.3, llhttp); in a response it only makes the body close-delimited.
 */
function transferEncoding(buf: Buffer, v0: number, v1: number, request: boolean): HeadError | undefined {
  const s = scan;
  if (s.contentLength !== -1) return headError(400, 'content-length-with-transfer-encoding', 'both Content-Length and Transfer-Encoding');
  let i = v0;
  for (;;) {
    while (i < v1 && isOws(buf[i])) i++;
    const e0 = i;
    while (i < v1 && (CLASS[buf[i] as number] as number) & C_TCHAR) i++;
    const e1 = i;
    while (i < v1 && isOws(buf[i])) i++;
    if (e1 === e0 || (i < v1 && buf[i] !== COMMA)) return headError(400, 'bad-transfer-encoding', 'Transfer-Encoding must be a list of codings without parameters or empty elements');
    if (s.teChunked && request) return headError(400, 'bad-transfer-encoding', 'a transfer coding follows chunked');
    s.te = true;
    s.teChunked = equalsLower(buf, e0, e1, 'chunked');
    if (!s.teChunked) s.teOther = true;
    if (i >= v1) return undefined;
    i++;
  }
}

/** close / keep-alive / upgrade set the connection's fate (Proxy-Connection too, as llhttp does); the others name hop-by-hop fields. */
function connectionTokens(buf: Buffer, v0: number, v1: number, list: boolean, head: string, base: number): void {
  const s = scan;
  let i = v0;
  while (i < v1) {
    while (i < v1 && (isOws(buf[i]) || buf[i] === COMMA)) i++;
    const t0 = i;
    while (i < v1 && buf[i] !== COMMA) i++;
    let t1 = i;
    while (t1 > t0 && isOws(buf[t1 - 1])) t1--;
    if (t1 === t0) continue;
    let token: string;
    if (equalsLower(buf, t0, t1, 'close')) {
      s.close = true;
      token = 'close';
    } else if (equalsLower(buf, t0, t1, 'keep-alive')) {
      s.keepAliveToken = true;
      token = 'keep-alive';
    } else if (equalsLower(buf, t0, t1, 'upgrade')) {
      s.upgradeToken = true;
      token = 'upgrade';
    } else {
      if (!list) continue;
      token = head.slice(t0 - base, t1 - base).toLowerCase();
    }
    if (!list) continue;
    if (s.connection === NO_TOKENS) s.connection = [];
    (s.connection as string[]).push(token);
  }
}

/**
 * For a head still incomplete: catches a peer whose lines end with a bare LF (or a CR alone) without waiting for a
 * CRLFCRLF it may never send. Only the first and the last line end and the first CR are looked at, so a head trickling in
 * byte by byte costs three native scans per call rather than a walk over every line; the full check runs once it
 * is complete.
 */
export function lineEndsSoFar(buf: Buffer, start: number): HeadError | undefined {
  const first = buf.indexOf(LF, start);
  if (first !== -1) {
    if (first === start || buf[first - 1] !== CR) return headError(400, 'bare-lf', BARE_LF);
    const last = buf.lastIndexOf(LF);
    if (last > first && buf[last - 1] !== CR) return headError(400, 'bare-lf', BARE_LF);
  }
  const cr = buf.indexOf(CR, start);
  if (cr !== -1 && cr + 1 < buf.length && buf[cr + 1] !== LF) return headError(400, 'bare-cr', BARE_CR);
  return undefined;
}

/** The end of a head: an empty line after the last field (or after the start line when there are none). */
export const CRLFCRLF = Buffer.from('\r\n\r\n', 'latin1');
