// Strict HTTP/1.1 request-head parser over Buffers: the request line, the fields, and the body framing they imply.
import * as chars from './chars.ts';
import { CRLFCRLF, latin1, lineEndsSoFar, scan, scanFields, strayAt } from './head-fields.ts';
import { INCOMPLETE, headError, type Framing, type HeadError, type HeadLimits, type RequestHeadResult } from './head-types.ts';

// Module-local copies: tsx (tests, benches) compiles imported bindings into getter calls, which in these loops cost
// more than the parsing itself. Built output (tsc, ESM) reads them directly either way.
const { CLASS, C_ALPHA, C_AUTHORITY, C_TCHAR, C_VCHAR, CR, LF, METHODS, SP } = chars;

/** The longest method in `METHODS` (UNSUBSCRIBE): anything longer is refused before a string is made of it. */
const MAX_METHOD = 11;

/**
 * Parses the request head starting at `offset` (the start of the message: leading empty lines are skipped, as
 * RFC 9112 §2.2 and llhttp allow). Looks for the end of the head once (a native CRLFCRLF search), then walks it
 * once. `length` in the result counts from `offset`; the body, or the next pipelined request, starts there.
 */
export function parseRequestHead(buf: Buffer, offset: number, limits: HeadLimits): RequestHeadResult {
  const len = buf.length;
  let start = offset;
  while (start < len && (buf[start] === CR || buf[start] === LF)) start++;
  const crlf = start === len ? -1 : buf.indexOf(CRLFCRLF, start);
  if (crlf === -1) return incomplete(buf, offset, start, limits);

  // Method: a token from the list, then exactly one SP.
  let p = start;
  let c = buf[p] as number;
  while ((CLASS[c] as number) & C_TCHAR) c = buf[++p] as number;
  if (c !== SP || p === start) return strayAt(buf, p, headError(400, 'bad-method', 'the method is not a token followed by one space'));
  const method = methodName(buf, start, p);
  if (method === undefined) return headError(501, 'unknown-method', 'the method is not implemented');

  // Target: visible ASCII up to exactly one SP (no obs-text, no control bytes, no runs of spaces).
  const t0 = ++p;
  c = buf[p] as number;
  while ((CLASS[c] as number) & C_VCHAR) c = buf[++p] as number;
  if (c !== SP || p === t0) return strayAt(buf, p, headError(400, 'bad-target', 'the request-target is empty, has a byte that is not visible ASCII, or is followed by more than one space'));
  if (p - t0 > limits.maxUrlBytes) return headError(414, 'url-too-long', `the request-target is longer than ${limits.maxUrlBytes} bytes`);
  const formError = checkTargetForm(buf, t0, p, method === 'CONNECT');
  if (formError) return formError;

  // Version: HTTP/1.0 or HTTP/1.1, then CRLF.
  const v = p + 1;
  const minor = versionMinor(buf, v);
  if (typeof minor !== 'number') return minor;
  if (buf[v + 8] !== CR || buf[v + 9] !== LF) return strayAt(buf, v + 8, headError(400, 'bad-version', 'the request line does not end after the HTTP version'));

  const length = crlf + 4 - offset;
  if (length > limits.maxHeaderBytes) return headError(431, 'head-too-large', `the request head is larger than ${limits.maxHeaderBytes} bytes`);
  const head = latin1(buf, start, crlf + 4);
  const fieldError = scanFields(buf, v + 10, limits, true, head, start);
  if (fieldError) return fieldError;
  const s = scan;

  // RFC 9112 §3.2 (and node:http's requireHostHeader, on by default): an HTTP/1.1 request without Host is a 400.
  if (minor === 1 && s.host === undefined) return headError(400, 'missing-host', 'an HTTP/1.1 request must have a Host field');
  let framing: Framing = 'none';
  if (s.te) {
    // RFC 9112 §6.1: Transfer-Encoding in an HTTP/1.0 message means the framing is faulty.
    if (minor === 0) return headError(400, 'transfer-encoding-in-http10', 'Transfer-Encoding in an HTTP/1.0 request');
    if (!s.teChunked) return headError(400, 'bad-transfer-encoding', 'chunked must be the final transfer coding of a request');
    // Codings under chunked (gzip, chunked) are legal but nothing here or upstream decodes them: say so (RFC 9112 §6.1).
    if (s.teOther) return headError(501, 'unsupported-transfer-encoding', 'only Transfer-Encoding: chunked is supported');
    framing = 'chunked';
  } else if (s.contentLength > 0) {
    framing = 'length';
  }
  const connect = method === 'CONNECT';
  // A CONNECT has no content (RFC 9110 §9.3.6); what follows the head is the tunnel. Content-Length: 0 is harmless.
  if (connect && framing !== 'none') return headError(400, 'connect-with-body', 'a CONNECT request cannot have a body');
  const expect = s.expect;
  return {
    kind: 'head',
    length,
    versionMinor: minor,
    headers: s.headers,
    framing,
    contentLength: s.contentLength,
    // HTTP/1.1 is persistent unless `close`; HTTP/1.0 only with `keep-alive` (and, unlike llhttp, never with `close` too).
    keepAlive: !s.close && (minor === 1 || s.keepAliveToken),
    connection: s.connection,
    upgrade: s.upgrade,
    isUpgrade: connect || (s.upgrade !== undefined && s.upgradeToken),
    trailer: s.trailer,
    method,
    target: head.slice(t0 - start, p - start),
    host: s.host,
    expect,
    expectContinue: expect !== undefined && expect.length === 12 && expect.toLowerCase() === '100-continue',
  };
}

/** The method as one of the interned strings of `METHODS`, or undefined. GET and POST skip the string building. */
function methodName(buf: Buffer, start: number, end: number): string | undefined {
  const n = end - start;
  const c0 = buf[start];
  if (n === 3 && c0 === 0x47 && buf[start + 1] === 0x45 && buf[start + 2] === 0x54) return 'GET';
  if (n === 4 && c0 === 0x50 && buf[start + 1] === 0x4f && buf[start + 2] === 0x53 && buf[start + 3] === 0x54) return 'POST';
  if (n > MAX_METHOD) return undefined;
  const m = latin1(buf, start, end);
  return METHODS.has(m) ? m : undefined;
}

/**
 * The four forms of RFC 9112 §3.2, as far as llhttp checks them: origin (`/...`), asterisk (`*` alone),
 * absolute (`scheme://authority[/?...]`, scheme letters only) and, for CONNECT only, authority (`host:port`).
 */
function checkTargetForm(buf: Buffer, t0: number, t1: number, connect: boolean): HeadError | undefined {
  if (connect) {
    for (let i = t0; i < t1; i++) if (!((CLASS[buf[i] as number] as number) & C_AUTHORITY)) return badTarget('a CONNECT target must be host:port');
    return undefined;
  }
  const first = buf[t0] as number;
  if (first === 0x2f /* / */) return undefined;
  if (first === 0x2a /* * */) return t1 - t0 === 1 ? undefined : badTarget('an asterisk-form target must be * alone');
  let i = t0;
  while (i < t1 && (CLASS[buf[i] as number] as number) & C_ALPHA) i++;
  if (i === t0 || buf[i] !== 0x3a || buf[i + 1] !== 0x2f || buf[i + 2] !== 0x2f) return badTarget('the request-target is not origin-form, absolute-form or *');
  i += 3;
  for (; i < t1; i++) {
    const b = buf[i] as number;
    if (b === 0x2f || b === 0x3f /* / ? */) return undefined;
    // '@' separates userinfo; llhttp refuses only two in a row, and so do we (routing refuses userinfo anyway).
    if (b === 0x40 /* @ */ ? buf[i - 1] === 0x40 : !((CLASS[b] as number) & C_AUTHORITY)) return badTarget('invalid character in the authority of an absolute-form target');
  }
  return undefined;
}

function badTarget(why: string): HeadError {
  return headError(400, 'bad-target', why);
}

/** 0 or 1 for `HTTP/1.0` / `HTTP/1.1` at `v`; 505 for another well-formed version; 400 for anything else. */
export function versionMinor(buf: Buffer, v: number): 0 | 1 | HeadError {
  if (buf[v] !== 0x48 || buf[v + 1] !== 0x54 || buf[v + 2] !== 0x54 || buf[v + 3] !== 0x50 || buf[v + 4] !== 0x2f || buf[v + 6] !== 0x2e) {
    return strayAt(buf, v, headError(400, 'bad-version', 'expected HTTP/<digit>.<digit>'));
  }
  const major = (buf[v + 5] as number) - 0x30;
  const minor = (buf[v + 7] as number) - 0x30;
  if (major < 0 || major > 9 || minor < 0 || minor > 9) return headError(400, 'bad-version', 'expected HTTP/<digit>.<digit>');
  if (major === 1 && minor === 1) return 1;
  if (major === 1 && minor === 0) return 0;
  return headError(505, 'unsupported-version', 'only HTTP/1.0 and HTTP/1.1 are supported');
}

/** Not complete yet: still refuse now what is already certain to fail, so a bad peer is not waited for. */
function incomplete(buf: Buffer, offset: number, start: number, limits: HeadLimits): RequestHeadResult {
  const len = buf.length;
  const lineError = lineEndsSoFar(buf, start);
  if (lineError) return lineError;
  // The target so far (from the first SP to the next SP, the end of the line or of the data) is already too long.
  const lf = buf.indexOf(LF, start);
  const lineEnd = lf === -1 ? len : lf;
  const sp1 = buf.indexOf(SP, start);
  if (sp1 !== -1 && sp1 < lineEnd) {
    const sp2 = buf.indexOf(SP, sp1 + 1);
    const targetEnd = sp2 === -1 || sp2 > lineEnd ? lineEnd : sp2;
    if (targetEnd - sp1 - 1 > limits.maxUrlBytes) return headError(414, 'url-too-long', `the request-target is longer than ${limits.maxUrlBytes} bytes`);
  }
  if (len - offset > limits.maxHeaderBytes) return headError(431, 'head-too-large', `the request head is larger than ${limits.maxHeaderBytes} bytes`);
  return INCOMPLETE;
}
