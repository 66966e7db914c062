// Byte classes and constants for the HTTP/1.1 parser: lookup tables, so each hot loop costs one array load per byte.

export const CR = 0x0d;
export const LF = 0x0a;
export const SP = 0x20;
export const HTAB = 0x09;
export const COLON = 0x3a;
export const COMMA = 0x2c;
export const SEMICOLON = 0x3b;
export const EQUALS = 0x3d;
export const DQUOTE = 0x22;
export const BACKSLASH = 0x5c;

/** RFC 9110 tchar: method, field names, transfer codings, chunk-extension names and token values. */
export const C_TCHAR = 1;
/** Visible ASCII (0x21-0x7e): what a request-target may hold (Node's llhttp refuses obs-text in URLs too). */
export const C_VCHAR = 2;
/** Field-value bytes: HTAB, SP, VCHAR, obs-text. Every other control byte and DEL is refused. */
export const C_FIELD = 4;
/** Authority-form bytes (CONNECT host:port, the authority of an absolute-form target): unreserved, sub-delims, ':', '%', '[', ']'. */
export const C_AUTHORITY = 8;
/** qdtext of a quoted chunk-extension value: HTAB, SP, VCHAR except '"' and '\', obs-text. */
export const C_QDTEXT = 16;
export const C_ALPHA = 32;
/** A-Z: a field name holding none needs no lower-casing. */
export const C_UPPER = 64;

const TCHAR_EXTRA = "!#$%&'*+-.^_`|~";
const AUTHORITY_EXTRA = "-._~!$&'()*+,;=:%[]";

/** One entry per byte value: an OR of the C_* bits above. */
export const CLASS: Uint8Array = (() => {
  const t = new Uint8Array(256);
  const set = (code: number, bits: number): void => {
    t[code] = (t[code] ?? 0) | bits;
  };
  for (let c = 0x21; c <= 0x7e; c++) set(c, C_VCHAR | C_FIELD);
  for (let c = 0x80; c <= 0xff; c++) set(c, C_FIELD | C_QDTEXT);
  set(SP, C_FIELD | C_QDTEXT);
  set(HTAB, C_FIELD | C_QDTEXT);
  for (let c = 0x21; c <= 0x7e; c++) if (c !== DQUOTE && c !== BACKSLASH) set(c, C_QDTEXT);
  const alnum = (c: number): boolean => (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5a) || (c >= 0x61 && c <= 0x7a);
  for (let c = 0; c < 128; c++) {
    if (alnum(c)) set(c, C_TCHAR | C_AUTHORITY);
    if ((c >= 0x41 && c <= 0x5a) || (c >= 0x61 && c <= 0x7a)) set(c, C_ALPHA);
    if (c >= 0x41 && c <= 0x5a) set(c, C_UPPER);
  }
  for (const ch of TCHAR_EXTRA) set(ch.charCodeAt(0), C_TCHAR);
  for (const ch of AUTHORITY_EXTRA) set(ch.charCodeAt(0), C_AUTHORITY);
  return t;
})();

/** Hex digit value, or -1. */
export const HEX: Int8Array = (() => {
  const t = new Int8Array(256).fill(-1);
  for (let c = 0; c < 10; c++) t[0x30 + c] = c;
  for (let c = 0; c < 6; c++) {
    t[0x41 + c] = 10 + c;
    t[0x61 + c] = 10 + c;
  }
  return t;
})();

/**
 * The methods Node's llhttp accepts with HTTP/1.x (`http.METHODS`, identical on Node 20 to 26) minus PRI, which
 * llhttp only takes as the HTTP/2 preface. Anything else that is a token is answered 501, as before the engine
 * (node:http refused it as malformed), so no method reaches an upstream that node:http would not have passed.
 */
export const METHODS: ReadonlySet<string> = new Set([
  'ACL', 'BIND', 'CHECKOUT', 'CONNECT', 'COPY', 'DELETE', 'GET', 'HEAD', 'LINK', 'LOCK', 'M-SEARCH', 'MERGE', 'MKACTIVITY',
  'MKCALENDAR', 'MKCOL', 'MOVE', 'NOTIFY', 'OPTIONS', 'PATCH', 'POST', 'PROPFIND', 'PROPPATCH', 'PURGE', 'PUT', 'QUERY',
  'REBIND', 'REPORT', 'SEARCH', 'SOURCE', 'SUBSCRIBE', 'TRACE', 'UNBIND', 'UNLINK', 'UNLOCK', 'UNSUBSCRIBE',
]);
