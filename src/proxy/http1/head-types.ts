// The results of the HTTP/1.1 head parser: a parsed head, "need more bytes", or a refusal with the status to answer.

/** Bounds on what a peer may send before we refuse; every one is checked before the head is complete too. */
export interface HeadLimits {
  /** The whole head, request/status line and blank line included; over it: 431. */
  maxHeaderBytes: number;
  /** The request-target as sent; over it: 414 (requests only). */
  maxUrlBytes: number;
  /** Header fields (lines); over it: 431. node:http instead dropped fields past 2,000 silently. */
  maxHeaders: number;
}

/** Envoy's and Apache's default field count; the byte limits are the proxy's config defaults. */
export const DEFAULT_HEAD_LIMITS: Readonly<HeadLimits> = { maxHeaderBytes: 16_384, maxUrlBytes: 8192, maxHeaders: 100 };

/**
 * How the message body is delimited:
 * - `length`: exactly `contentLength` (> 0) bytes follow the head;
 * - `chunked`: chunked transfer coding (scan it with `ChunkedBodyScanner`);
 * - `close`: responses only, the body runs until the upstream closes the connection;
 * - `none`: no body bytes follow (no framing headers, `Content-Length: 0`, HEAD/1xx/204/304 answers, CONNECT).
 */
export type Framing = 'length' | 'chunked' | 'close' | 'none';

export type HeadErrorStatus = 400 | 414 | 431 | 501 | 505;

export type HeadErrorCode =
  | 'bad-request-line'
  | 'bad-method'
  | 'unknown-method'
  | 'bad-target'
  | 'url-too-long'
  | 'bad-version'
  | 'unsupported-version'
  | 'bad-status-line'
  | 'bad-header-name'
  | 'bad-header-value'
  | 'bare-cr'
  | 'bare-lf'
  | 'obs-fold'
  | 'too-many-headers'
  | 'head-too-large'
  | 'bad-content-length'
  | 'duplicate-content-length'
  | 'content-length-with-transfer-encoding'
  | 'bad-transfer-encoding'
  | 'unsupported-transfer-encoding'
  | 'transfer-encoding-in-http10'
  | 'missing-host'
  | 'duplicate-host'
  | 'connect-with-body';

export interface HeadIncomplete {
  readonly kind: 'incomplete';
}

/** For a request, answer `status` and close. For a response, the caller answers its own 502 and closes both sides. */
export interface HeadError {
  readonly kind: 'error';
  readonly status: HeadErrorStatus;
  /** Stable, for tests, metrics and logs. */
  readonly code: HeadErrorCode;
  /** For humans; never echoes the peer's bytes (they could be anything). */
  readonly reason: string;
}

interface HeadCommon {
  readonly kind: 'head';
  /** Bytes from the `offset` given to the parser to the end of the blank line (empty lines before the head included). */
  length: number;
  /** 0 for HTTP/1.0, 1 for HTTP/1.1 (nothing else is accepted). */
  versionMinor: 0 | 1;
  /** Flat: name, value, name, value... Names lower-cased; values as sent (latin1, one char per byte), less surrounding whitespace. */
  headers: string[];
  framing: Framing;
  /** The Content-Length as declared, or -1 without one (also set when the framing ignores it: HEAD, 204, 304). */
  contentLength: number;
  /** The connection may carry another message after this one (llhttp's `should_keep_alive`). */
  keepAlive: boolean;
  /** Lower-cased tokens of the Connection fields (names of hop-by-hop fields to drop); empty without one. */
  connection: readonly string[];
  /** The Upgrade field as sent, or undefined. */
  upgrade: string | undefined;
  /**
   * After this message the bytes on the connection are another protocol: a request with `Upgrade` and
   * `Connection: upgrade` (after its body, if it has one) or CONNECT; a 101 answer, or a 2xx answer to CONNECT.
   */
  isUpgrade: boolean;
  /** A Trailer field was sent (the proxy refuses requests declaring trailers). */
  trailer: boolean;
}

export interface RequestHead extends HeadCommon {
  /** One of `METHODS` (upper case as sent: methods are case-sensitive). */
  method: string;
  /** The request-target as sent (latin1), not decoded or normalised. */
  target: string;
  /** The Host field as sent, or undefined (HTTP/1.0 only: HTTP/1.1 requires one). */
  host: string | undefined;
  /** The Expect field as sent, or undefined. */
  expect: string | undefined;
  /** `Expect: 100-continue` (case-insensitive): the client waits for a 100 before sending the body. */
  expectContinue: boolean;
}

export interface ResponseHead extends HeadCommon {
  status: number;
  /** The reason phrase as sent (may be empty). */
  reason: string;
}

export type RequestHeadResult = RequestHead | HeadIncomplete | HeadError;
export type ResponseHeadResult = ResponseHead | HeadIncomplete | HeadError;

/** Shared: "incomplete" carries nothing, so one frozen object serves every call. */
export const INCOMPLETE: HeadIncomplete = Object.freeze({ kind: 'incomplete' });

export function headError(status: HeadErrorStatus, code: HeadErrorCode, reason: string): HeadError {
  return { kind: 'error', status, code, reason };
}
