// Body framing scanners for zero-copy passthrough: they say how many incoming bytes belong to the current message.
import * as chars from './chars.ts';
import type { Framing } from './head-types.ts';

// Module-local copies: tsx (tests, benches) compiles imported bindings into getter calls, which in these loops cost
// more than the parsing itself. Built output (tsc, ESM) reads them directly either way.
const { CLASS, C_FIELD, C_QDTEXT, C_TCHAR, CR, DQUOTE, BACKSLASH, EQUALS, HEX, LF, SEMICOLON } = chars;

export type BodyErrorCode = 'bad-chunk-size' | 'chunk-size-overflow' | 'bad-chunk-extension' | 'chunk-extensions-too-long' | 'bad-chunk-end' | 'trailers';

/** Framing errors make the connection unusable: answer (400 for a request, 502 for a response) and close. */
export interface BodyError {
  readonly code: BodyErrorCode;
  readonly reason: string;
}

/**
 * The same interface for every framing, so the proxy's pump does not care which it has:
 *
 *   const n = scanner.feed(chunk);       // bytes of chunk[0, n) are this message's body: forward them as they are
 *   if (scanner.error) ...               // refuse and close (n is then meaningless)
 *   else if (scanner.done) ...           // the message ended at n; chunk[n, ...) is the next message
 */
export interface BodyScanner {
  /** Consumes from buf[start, end) and returns how many bytes belong to this message; 0 once done or failed. */
  feed(buf: Buffer, start?: number, end?: number): number;
  readonly done: boolean;
  readonly error: BodyError | undefined;
  /** Payload bytes so far (chunk data without the chunked framing): what a body-size limit should count. */
  readonly payloadBytes: number;
}

export class ContentLengthBodyScanner implements BodyScanner {
  #remaining: number;
  payloadBytes = 0;
  readonly error: BodyError | undefined = undefined;

  constructor(length: number) {
    this.#remaining = length;
  }

  get done(): boolean {
    return this.#remaining === 0;
  }

  feed(buf: Buffer, start = 0, end = buf.length): number {
    const n = Math.min(this.#remaining, end - start);
    this.#remaining -= n;
    this.payloadBytes += n;
    return n;
  }
}

/** A response body that runs until the upstream closes: every byte belongs to it, and only the close ends it. */
export class CloseDelimitedBodyScanner implements BodyScanner {
  payloadBytes = 0;
  readonly done = false;
  readonly error: BodyError | undefined = undefined;

  feed(buf: Buffer, start = 0, end = buf.length): number {
    this.payloadBytes += end - start;
    return end - start;
  }
}

// Chunked states: the framing bytes are walked one by one, chunk data is skipped by arithmetic.
const SIZE_FIRST = 0;
const SIZE = 1;
const EXT_NAME_FIRST = 2;
const EXT_NAME = 3;
const EXT_VALUE_FIRST = 4;
const EXT_VALUE = 5;
const EXT_QUOTED = 6;
const EXT_QUOTED_PAIR = 7;
const EXT_AFTER_QUOTE = 8;
const SIZE_LF = 9;
const DATA = 10;
const DATA_CR = 11;
const DATA_LF = 12;
const TRAILER = 13;
const END_LF = 14;
const DONE = 15;
const FAILED = 16;

/** 16 hex digits fill 64 bits; JavaScript numbers are exact up to 2^53 - 1, which also bounds any real body. */
const MAX_SIZE_DIGITS = 16;
/** Node's own bound on the chunk-extension bytes of one message (its fix for CVE-2024-22019). */
const MAX_EXTENSION_BYTES = 16_384;

/**
 * Chunked transfer coding (RFC 9112 §7.1), strict: hex sizes of 1 to 16 digits up to 2^53 - 1, no whitespace,
 * chunk extensions only as `;name[=token|"quoted"]`, CRLF everywhere, and no trailer fields: the proxy refuses
 * trailers (code `trailers`: answer TrailerNotSupportedError).
 */
export class ChunkedBodyScanner implements BodyScanner {
  #state = SIZE_FIRST;
  #size = 0;
  #digits = 0;
  #remaining = 0;
  #extensionBytes = 0;
  payloadBytes = 0;
  error: BodyError | undefined = undefined;

  get done(): boolean {
    return this.#state === DONE;
  }

  /** Ready for another message (a scanner can be pooled with its connection). */
  reset(): void {
    this.#state = SIZE_FIRST;
    this.#size = this.#digits = this.#remaining = this.#extensionBytes = this.payloadBytes = 0;
    this.error = undefined;
  }

  feed(buf: Buffer, start = 0, end = buf.length): number {
    let state = this.#state;
    if (state >= DONE) return 0;
    let p = start;
    while (p < end) {
      if (state === DATA) {
        const n = Math.min(this.#remaining, end - p);
        p += n;
        this.#remaining -= n;
        this.payloadBytes += n;
        if (this.#remaining === 0) state = DATA_CR;
        continue;
      }
      const c = buf[p++] as number;
      const cls = CLASS[c] as number;
      switch (state) {
        case SIZE_FIRST:
        case SIZE: {
          const h = HEX[c] as number;
          if (h >= 0) {
            if (++this.#digits > MAX_SIZE_DIGITS || this.#size > (Number.MAX_SAFE_INTEGER - h) / 16) {
              return this.#fail('chunk-size-overflow', 'a chunk size is larger than 2^53 - 1 or has more than 16 digits', p - start);
            }
            this.#size = this.#size * 16 + h;
            state = SIZE;
          } else if (state === SIZE && c === SEMICOLON) state = EXT_NAME_FIRST;
          else if (state === SIZE && c === CR) state = SIZE_LF;
          else return this.#fail('bad-chunk-size', 'a chunk size is not a hex number followed by CRLF', p - start);
          break;
        }
        case EXT_NAME_FIRST:
        case EXT_NAME:
          if (cls & C_TCHAR) state = EXT_NAME;
          else if (state === EXT_NAME && c === EQUALS) state = EXT_VALUE_FIRST;
          else if (state === EXT_NAME && c === SEMICOLON) state = EXT_NAME_FIRST;
          else if (state === EXT_NAME && c === CR) state = SIZE_LF;
          else return this.#badExtension(p - start);
          break;
        case EXT_VALUE_FIRST:
        case EXT_VALUE:
          if (cls & C_TCHAR) state = EXT_VALUE;
          else if (state === EXT_VALUE_FIRST && c === DQUOTE) state = EXT_QUOTED;
          else if (state === EXT_VALUE && c === SEMICOLON) state = EXT_NAME_FIRST;
          else if (state === EXT_VALUE && c === CR) state = SIZE_LF;
          else return this.#badExtension(p - start);
          break;
        case EXT_QUOTED:
          if (c === DQUOTE) state = EXT_AFTER_QUOTE;
          else if (c === BACKSLASH) state = EXT_QUOTED_PAIR;
          else if (!(cls & C_QDTEXT)) return this.#badExtension(p - start);
          break;
        case EXT_QUOTED_PAIR:
          if (!(cls & C_FIELD)) return this.#badExtension(p - start);
          state = EXT_QUOTED;
          break;
        case EXT_AFTER_QUOTE:
          if (c === SEMICOLON) state = EXT_NAME_FIRST;
          else if (c === CR) state = SIZE_LF;
          else return this.#badExtension(p - start);
          break;
        case SIZE_LF:
          if (c !== LF) return this.#fail('bad-chunk-size', 'a chunk-size line does not end with CRLF', p - start);
          this.#remaining = this.#size;
          state = this.#size === 0 ? TRAILER : DATA;
          this.#size = this.#digits = 0;
          break;
        case DATA_CR:
        case DATA_LF:
          if (c !== (state === DATA_CR ? CR : LF)) return this.#fail('bad-chunk-end', 'chunk data is not followed by CRLF', p - start);
          state = state === DATA_CR ? DATA_LF : SIZE_FIRST;
          break;
        case TRAILER:
          if (c === LF) return this.#fail('bad-chunk-end', 'the last chunk is not followed by CRLF', p - start);
          if (c !== CR) return this.#fail('trailers', 'the chunked body has trailer fields', p - start);
          state = END_LF;
          break;
        case END_LF:
          if (c !== LF) return this.#fail('bad-chunk-end', 'the last chunk is not followed by CRLF', p - start);
          this.#state = DONE;
          return p - start;
      }
      if (state >= EXT_NAME_FIRST && state <= EXT_AFTER_QUOTE && ++this.#extensionBytes > MAX_EXTENSION_BYTES) {
        return this.#fail('chunk-extensions-too-long', `the chunk extensions of one message exceed ${MAX_EXTENSION_BYTES} bytes`, p - start);
      }
    }
    this.#state = state;
    return p - start;
  }

  #badExtension(consumed: number): number {
    return this.#fail('bad-chunk-extension', 'a chunk extension is not ;name, ;name=token or ;name="quoted"', consumed);
  }

  #fail(code: BodyErrorCode, reason: string, consumed: number): number {
    this.#state = FAILED;
    this.error = { code, reason };
    return consumed;
  }
}

/** The scanner for a parsed head's framing; `none` gives a scanner that is already done. */
export function createBodyScanner(head: { readonly framing: Framing; readonly contentLength: number }): BodyScanner {
  switch (head.framing) {
    case 'chunked':
      return new ChunkedBodyScanner();
    case 'length':
      return new ContentLengthBodyScanner(head.contentLength);
    case 'close':
      return new CloseDelimitedBodyScanner();
    case 'none':
      return new ContentLengthBodyScanner(0);
  }
}
