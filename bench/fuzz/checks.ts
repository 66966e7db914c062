// The fuzzer's checks of every answer (violations fail the run, findings are listed) and its counters.
import type { FuzzCase, Listener } from './cases.ts';
import { SERVICE } from './grammar.ts';
import { esc, type ParsedResponse } from './response-stream.ts';
import type { ConnResult } from './connection.ts';

const EXAMPLES = 3;

export interface Tally {
  count: number;
  examples: string[];
}

export class Stats {
  requestsSent = 0;
  connections = 0;
  connectFailures = 0;
  cases = new Map<string, number>();
  classes: Record<Listener, Map<string, number>> = { proxy: new Map(), api: new Map() };
  statuses: Record<Listener, Map<number, number>> = { proxy: new Map(), api: new Map() };
  parserAnswers = new Map<string, number>();
  headBodies = 0;
  socketErrors = new Map<string, number>();
  violations = new Map<string, Tally>();
  findings = new Map<string, Tally>();
  slow = { opened: 0, answered: 0, closedUnanswered: 0, waiting: 0, longestHeldMs: 0, statuses: new Map<number, number>() };
  bursts = { run: 0, valid: 0, validOk: 0 };
  health = { ok: 0, failed: 0, streak: 0, longestStreak: 0, lastError: '' };
  rss = { baseline: 0, peak: 0, after: 0 };
  fds = { baseline: { all: 0, sockets: 0 }, after: { all: 0, sockets: 0 } };
  shutdown: { ms: number; status: string; killed: boolean } | undefined;
  post = { sent: 0, ok: 0, failures: new Map<string, number>() };
  stderr = { lines: 0, warn: 0, error: 0, other: 0, warnMessages: new Map<string, number>() };
  crash: string | undefined;

  bump<K>(m: Map<K, number>, k: K, n = 1): void {
    m.set(k, (m.get(k) ?? 0) + n);
  }

  /** `example` is built only while fewer than EXAMPLES are kept. */
  #add(into: Map<string, Tally>, kind: string, example: string | (() => string)): void {
    const t = into.get(kind) ?? { count: 0, examples: [] };
    t.count++;
    if (t.examples.length < EXAMPLES) t.examples.push(typeof example === 'string' ? example : example());
    into.set(kind, t);
  }

  violation(kind: string, example: string | (() => string)): void {
    this.#add(this.violations, kind, example);
  }

  finding(kind: string, example: string | (() => string)): void {
    this.#add(this.findings, kind, example);
  }
}

const STACK = / {4}at [^\n]*(?::\d+:\d+|native|<anonymous>)/;
const CONSUL_SELF = /"DebugConfig"|"Config"\s*:\s*\{\s*"Datacenter"|"Member"\s*:\s*\{\s*"Name"/;

export function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function parseJson(body: Buffer): unknown {
  try {
    return JSON.parse(body.toString('utf8')) as unknown;
  } catch {
    return undefined;
  }
}

/** 'ok', a parser-level answer (Node's or fastify's own, for garbage), or what is wrong with an error body. */
function errorShape(res: ParsedResponse): { kind: 'ok' } | { kind: 'parser'; label: string } | { kind: 'bad'; reason: string } {
  const j = parseJson(res.body);
  const xte = res.headers.get('x-tandem-error')?.[0];
  // A HEAD answer has no body (Node drops it): the header is all there is to check.
  if (res.method === 'HEAD' && res.body.length === 0 && xte !== undefined) {
    return /^TANDEM_ERR_[A-Z0-9_]+$/.test(xte) ? { kind: 'ok' } : { kind: 'bad', reason: `x-tandem-error '${xte}' is not a TANDEM_ERR_*` };
  }
  if (isRecord(j) && typeof j['code'] === 'string' && typeof j['error'] === 'string' && typeof j['message'] === 'string' && typeof j['statusCode'] === 'number') {
    if (j['statusCode'] !== res.status) return { kind: 'bad', reason: `body statusCode ${String(j['statusCode'])} differs from the status line's ${res.status}` };
    if (xte !== j['code']) return { kind: 'bad', reason: `x-tandem-error header ${xte === undefined ? 'missing' : `'${xte}'`} for code '${j['code']}'` };
    if (!/^TANDEM_ERR_[A-Z0-9_]+$/.test(j['code'])) return { kind: 'bad', reason: `code '${j['code']}' is not a TANDEM_ERR_*` };
    return { kind: 'ok' };
  }
  if ((res.status === 400 || res.status === 408 || res.status === 431) && xte === undefined) {
    if (res.body.length === 0) return { kind: 'parser', label: `${res.status} with an empty body (written by Node's http server itself: a request its parser or its checks reject, e.g. HTTP/1.1 without Host)` };
    if (isRecord(j) && j['code'] === undefined && ['Client Error', 'Client Timeout', 'Exceeded maximum allowed HTTP header size'].includes(String(j['message']))) {
      return { kind: 'parser', label: `${res.status} '${String(j['message'])}' (fastify's clientError handler)` };
    }
  }
  if (res.status === 417 && res.body.length === 0 && xte === undefined) return { kind: 'bad', reason: "Node's automatic empty 417 for an Expect other than 100-continue (no 'checkExpectation' handler)" };
  return { kind: 'bad', reason: `not the sidecar's error shape {statusCode, code, error, message}: ${esc(res.body.toString('latin1'), 150)}` };
}

function traversalIn(url: string): string | undefined {
  const cut = url.search(/[?#]/);
  const path = cut === -1 ? url : url.slice(0, cut);
  for (const seg of path.split('/')) {
    let decoded = seg;
    try {
      decoded = decodeURIComponent(seg);
    } catch {
      // not valid percent-encoding: checked raw
    }
    if (seg === '..' || decoded === '..' || decoded.includes('/') || decoded.includes('\\')) return seg;
  }
  return undefined;
}

function requestExcerpt(c: FuzzCase): string {
  const head: Buffer[] = [];
  let n = 0;
  for (const p of c.parts) {
    if (n > 1024) break;
    head.push(p.data.subarray(0, 1025 - n));
    n += p.data.length;
  }
  const total = c.parts.reduce((k, p) => k + p.data.length, 0);
  return `${esc(Buffer.concat(head).toString('latin1'), 240)}${total > 240 ? ` (${total} bytes)` : ''}`;
}

export function checkCase(c: FuzzCase, r: ConnResult, s: Stats): void {
  const cls = s.classes[c.listener];
  const ex = (what: string, res?: ParsedResponse) => (): string => `[${c.id} ${c.listener} ${c.gen}] ${what}\n        request:  ${requestExcerpt(c)}${res ? `\n        response: ${esc(res.excerpt, 300)}` : ''}`;
  if (!r.connected) {
    s.connectFailures++;
    s.bump(cls, 'none');
    return;
  }
  if (r.socketError) s.bump(s.socketErrors, r.socketError);
  const st = r.stream;
  const parseError = st.error;
  if (parseError !== undefined) s.violation('malformed HTTP response', () => `${ex(parseError)()}\n        raw in:   ${esc(r.rawIn.toString('latin1'), 300)}`);
  if (st.interim > 0) s.bump(cls, '1xx', st.interim);
  if (st.finals.length === 0 && !st.error) s.bump(cls, r.leftover > 0 ? 'cut' : 'none');
  // An event stream (GET /v1/watch) only ever ends by the connection closing.
  if (r.leftover > 0 && r.serverClosed && !r.rawIn.toString('latin1').includes('text/event-stream')) s.finding('response cut short by the server (connection closed mid-response)', () => `${ex(`${r.leftover} bytes of an unfinished response`)()}\n        raw in:   ${esc(r.rawIn.toString('latin1'), 300)}`);
  if (c.exact && !st.error && st.finals.length > c.methods.length && !st.upgraded) s.finding('more responses than requests on an exactly framed connection', ex(`${st.finals.length} responses to ${c.methods.length} request(s)`, st.finals[st.finals.length - 1]));

  const lastFinal = st.finals[st.finals.length - 1];
  if (st.trailing > 0 && lastFinal && lastFinal.method !== 'HEAD') {
    s.finding("bytes after a 'connection: close' response (a client must drop them)", () => `${ex(`${st.trailing} bytes followed`, lastFinal)()}\n        raw in (end): ${esc(r.rawIn.subarray(Math.max(0, r.rawIn.length - 300)).toString('latin1'), 300)}`);
  }
  s.headBodies += st.headBodies;
  st.finals.forEach((res, i) => {
    s.bump(cls, `${Math.floor(res.status / 100)}xx`);
    s.bump(s.statuses[c.listener], res.status);
    const text = res.body.toString('latin1');
    if (STACK.test(text)) s.violation('stack trace in a response body', ex('body contains a stack frame', res));
    if (CONSUL_SELF.test(text)) s.violation("Consul's agent output in a response (open proxy)", ex("body looks like Consul's /v1/agent/self", res));
    const fromUpstream = res.headers.has('x-tandem-instance');
    if (res.status >= 400 && !(c.listener === 'proxy' && fromUpstream)) {
      const shape = errorShape(res);
      if (shape.kind === 'parser') s.bump(s.parserAnswers, `${c.listener}: ${shape.label}`);
      else if (shape.kind === 'bad') {
        const what = `${res.status} ${parseJsonCode(res) ?? (res.body.length === 0 ? 'empty body' : 'no code')}`;
        if (c.listener === 'proxy') s.violation(`proxy error without the sidecar's error shape (${what})`, ex(shape.reason, res));
        else s.finding(`control API error without the sidecar's error shape (${what})`, ex(shape.reason, res));
      }
    }
    const code = parseJsonCode(res);
    if (res.status >= 500 && code === 'TANDEM_ERR_INTERNAL') s.finding(`${c.listener}: 500 TANDEM_ERR_INTERNAL (an unexpected exception inside the sidecar)`, ex('internal error', res));
    if (c.listener === 'proxy' && res.status >= 200 && res.status < 400 && !fromUpstream && !(res.method === 'CONNECT' && res.status === 200)) s.violation('proxy success without x-tandem-instance (not from a catalog instance)', ex('2xx/3xx without x-tandem-instance', res));
    if (c.listener === 'proxy' && fromUpstream) {
      const echo = parseJson(res.body);
      if (isRecord(echo) && echo['service'] === SERVICE && typeof echo['url'] === 'string') {
        const url = echo['url'];
        const seg = traversalIn(url);
        if (seg !== undefined) s.violation("a '..' segment or an encoded separator reached the upstream", ex(`upstream received url ${esc(url, 200)} (segment ${esc(seg)})`, res));
        if (url.includes('#')) s.finding('a URL fragment was forwarded to the upstream', ex(`upstream received url ${esc(url, 200)}`, res));
        if (!url.startsWith('/')) s.violation("the upstream received a request target that does not start with '/'", ex(`upstream received url ${esc(url, 200)}`, res));
        if (echo['method'] === 'CONNECT') s.violation('a CONNECT reached the upstream', ex('upstream received CONNECT', res));
        const hop = Array.isArray(echo['headers']) ? echo['headers'].filter((h): h is string => typeof h === 'string' && ['proxy-authorization', 'trailer', 'upgrade', 'te', 'keep-alive', 'proxy-connection'].includes(h)) : [];
        if (hop.length > 0) s.finding('hop-by-hop request headers reached the upstream', ex(`upstream received ${hop.join(', ')}`, res));
      }
    }
    const e = i === 0 || c.exact ? c.expects[i] : undefined;
    if (e && !e.ok(res)) {
      if (e.severity === 'violation') s.violation(`expectation failed: ${e.what}`, ex(`got ${res.status}`, res));
      else s.finding(`expectation failed: ${e.what}`, ex(`got ${res.status}`, res));
    }
  });
  if (c.valid) {
    s.bursts.valid++;
    if (st.finals[0] && st.finals[0].status >= 200 && st.finals[0].status < 300) s.bursts.validOk++;
    else if (st.finals.length === 0) s.finding('expectation failed: a valid GET to the fuzz service during a burst of 500 connections is answered 2xx by the upstream', ex(`no answer (${r.socketError ?? (r.serverClosed ? 'closed by the server' : 'we stopped waiting')})`));
  }
}

function parseJsonCode(res: ParsedResponse): string | undefined {
  const j = parseJson(res.body);
  return isRecord(j) && typeof j['code'] === 'string' ? j['code'] : undefined;
}

