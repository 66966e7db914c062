// Parsing responses off the wire for the fuzzer (strictly: a malformed answer is a finding in itself).

export interface ParsedResponse {
  status: number;
  /** The method of the request this answers (by position), upper-cased. */
  method: string;
  statusLine: string;
  headers: Map<string, string[]>;
  body: Buffer;
  /** Head and the start of the body, for examples. */
  excerpt: string;
  /** An error answer to a HEAD that came with a body anyway (written without knowing the method). */
  bodyOnHead?: boolean;
}

const STATUS_LINE = /^HTTP\/1\.1 ([1-5]\d\d) ([\t\x20-\x7e\x80-\xff]*)$/;
const HEADER_LINE = /^([!#$%&'*+.^_`|~0-9A-Za-z-]+):([\t\x20-\x7e\x80-\xff]*)$/;

export class ResponseStream {
  readonly finals: ParsedResponse[] = [];
  interim = 0;
  error: string | undefined;
  upgraded = false;
  /** A final response said `connection: close`: whatever follows is not parsed (counted here). */
  closing = false;
  trailing = 0;
  headBodies = 0;
  #methods: readonly string[];
  #buf: Buffer = Buffer.alloc(0);
  #pending: Buffer[] = [];
  #len = 0;
  #off = 0;
  #need = 1;

  constructor(methods: readonly string[]) {
    this.#methods = methods;
  }

  get stopped(): boolean {
    return this.error !== undefined || this.upgraded || this.closing;
  }

  push(chunk: Buffer): void {
    this.#pending.push(chunk);
    this.#len += chunk.length;
    if (this.closing) this.trailing += chunk.length;
    else if (!this.stopped && this.#len >= this.#need) this.#parse(false);
  }

  /** Bytes left over after the last complete response (a response in progress when the connection ended). */
  finish(closedByServer: boolean): number {
    if (!this.stopped) this.#parse(closedByServer);
    return this.stopped ? 0 : this.#len - this.#off;
  }

  #parse(closed: boolean): void {
    if (this.#pending.length > 0) {
      this.#buf = Buffer.concat([this.#buf, ...this.#pending]);
      this.#pending = [];
    }
    const buf = this.#buf;
    for (;;) {
      const off = this.#off;
      if (off >= buf.length) {
        this.#need = buf.length + 1;
        return;
      }
      // An error answer to a HEAD written below the router (e.g. fastify's clientError handler) carries its body.
      const prev = this.finals[this.finals.length - 1];
      const declared = Number(prev?.headers.get('content-length')?.[0] ?? 0);
      const start9 = buf.subarray(off, Math.min(buf.length, off + 9)).toString('latin1');
      if (prev && prev.method === 'HEAD' && prev.status >= 400 && !prev.bodyOnHead && declared > 0 && !'HTTP/1.1 '.startsWith(start9) && !start9.startsWith('HTTP/1.1 ')) {
        if (buf.length - off < declared) {
          this.#need = off + declared;
          return;
        }
        prev.body = buf.subarray(off, off + declared);
        prev.bodyOnHead = true;
        this.headBodies++;
        this.#off = off + declared;
        continue;
      }
      const headEnd = buf.indexOf('\r\n\r\n', off, 'latin1');
      if (headEnd === -1) {
        const start = buf.subarray(off, Math.min(buf.length, off + 9)).toString('latin1');
        if (!'HTTP/1.1 '.startsWith(start) && !start.startsWith('HTTP/1.1 ')) {
          this.error = `response does not start with 'HTTP/1.1 ': ${esc(buf.subarray(off, off + 80).toString('latin1'))}`;
          return;
        }
        if (buf.length - off > 1024 * 1024) {
          this.error = 'response head larger than 1 MiB';
          return;
        }
        this.#need = buf.length + 1;
        return;
      }
      const head = buf.subarray(off, headEnd).toString('latin1');
      const lines = head.split('\r\n');
      const statusLine = lines[0] ?? '';
      const m = STATUS_LINE.exec(statusLine);
      if (!m) {
        this.error = `malformed status line: ${esc(statusLine.slice(0, 200))}`;
        return;
      }
      const headers = new Map<string, string[]>();
      for (const line of lines.slice(1)) {
        const h = HEADER_LINE.exec(line);
        if (!h) {
          this.error = `malformed header line: ${esc(line.slice(0, 200))} (after ${esc(statusLine)})`;
          return;
        }
        const name = (h[1] ?? '').toLowerCase();
        headers.set(name, [...(headers.get(name) ?? []), (h[2] ?? '').trim()]);
      }
      const status = Number(m[1]);
      const bodyStart = headEnd + 4;
      const excerpt = (end: number) => `${head}\r\n\r\n${buf.subarray(bodyStart, Math.min(end, bodyStart + 300)).toString('latin1')}`;
      if (status >= 100 && status < 200 && status !== 101) {
        this.interim++;
        this.#off = bodyStart;
        continue;
      }
      const method = (this.#methods[this.finals.length] ?? 'GET').toUpperCase();
      // 2xx to CONNECT: a tunnel; what follows belongs to the tunnel, not to this connection's HTTP.
      if (status === 101 || (method === 'CONNECT' && status >= 200 && status < 300)) {
        this.finals.push({ status, method, statusLine, headers, body: Buffer.alloc(0), excerpt: excerpt(bodyStart) });
        this.upgraded = true;
        return;
      }
      const te = headers.get('transfer-encoding');
      const cl = headers.get('content-length');
      let framing: number | 'chunked' | 'close';
      if (method === 'HEAD' || status === 204 || status === 304) framing = 0;
      else if (te !== undefined) {
        if (cl !== undefined) {
          this.error = `response has both Transfer-Encoding and Content-Length (${esc(statusLine)})`;
          return;
        }
        framing = /(?:^|,)\s*chunked\s*$/i.test(te.join(',')) ? 'chunked' : 'close';
      } else if (cl !== undefined) {
        const first = cl[0] ?? '';
        if (cl.some((v) => v !== first) || !/^\d{1,15}$/.test(first)) {
          this.error = `bad response Content-Length ${esc(cl.join(' | '))} (${esc(statusLine)})`;
          return;
        }
        framing = Number(first);
      } else framing = 'close';

      if (typeof framing === 'number') {
        if (buf.length < bodyStart + framing) {
          this.#need = bodyStart + framing;
          return;
        }
        this.finals.push({ status, method, statusLine, headers, body: buf.subarray(bodyStart, bodyStart + framing), excerpt: excerpt(bodyStart + framing) });
        this.#off = bodyStart + framing;
        if (this.#closeAfter(headers)) return;
        continue;
      }
      if (framing === 'close') {
        if (!closed) {
          this.#need = buf.length + 1;
          return;
        }
        this.finals.push({ status, method, statusLine, headers, body: buf.subarray(bodyStart), excerpt: excerpt(buf.length) });
        this.#off = buf.length;
        return;
      }
      const c = dechunk(buf, bodyStart);
      if (c === 'more') {
        this.#need = buf.length + 1;
        return;
      }
      if ('error' in c) {
        this.error = `${c.error} (${esc(statusLine)})`;
        return;
      }
      this.finals.push({ status, method, statusLine, headers, body: c.body, excerpt: excerpt(c.end) });
      this.#off = c.end;
      if (this.#closeAfter(headers)) return;
    }
  }

  /**
   * After `connection: close` nothing more is a response. (An answer written below the HTTP parser, e.g. to a
   * HEAD the parser then rejected, may carry a body although the request was HEAD: those bytes land here.)
   */
  #closeAfter(headers: Map<string, string[]>): boolean {
    if (!(headers.get('connection') ?? []).some((v) => /(?:^|,)\s*close\s*(?:,|$)/i.test(v))) return false;
    this.closing = true;
    this.trailing = this.#buf.length - this.#off;
    this.#off = this.#buf.length;
    return true;
  }
}

function dechunk(buf: Buffer, start: number): { end: number; body: Buffer } | { error: string } | 'more' {
  const parts: Buffer[] = [];
  let q = start;
  for (;;) {
    const eol = buf.indexOf('\r\n', q, 'latin1');
    if (eol === -1) return 'more';
    const line = buf.subarray(q, eol).toString('latin1');
    const m = /^([0-9a-fA-F]{1,15})(?:[ \t]*;[^\r\n]*)?$/.exec(line);
    if (!m) return { error: `bad chunk-size line ${esc(line.slice(0, 80))}` };
    const size = parseInt(m[1] ?? '0', 16);
    if (size === 0) {
      let t = eol + 2;
      for (;;) {
        const e = buf.indexOf('\r\n', t, 'latin1');
        if (e === -1) return 'more';
        if (e === t) return { end: e + 2, body: Buffer.concat(parts) };
        t = e + 2;
      }
    }
    const dataEnd = eol + 2 + size;
    if (buf.length < dataEnd + 2) return 'more';
    if (buf[dataEnd] !== 13 || buf[dataEnd + 1] !== 10) return { error: 'chunk data not followed by CRLF' };
    parts.push(buf.subarray(eol + 2, dataEnd));
    q = dataEnd + 2;
  }
}

export function esc(s: string, max = 300): string {
  const cut = s.length > max ? `${s.slice(0, max)}…(+${s.length - max})` : s;
  return JSON.stringify(cut);
}

