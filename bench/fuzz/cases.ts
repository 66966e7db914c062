// Fuzz cases: whole requests from the grammar, mutated bytes, pipelines, garbage, bursts and slowloris connections, each replayable from (seed, case id).
import { Rng } from '../../test/support/rng.ts';
import { apiTarget, baseHeaders, bodyPlan, COMMON_METHODS, HOST, method, PATH_CHARS, PRINTABLE, proxyTarget, SERVICE, serviceSpec, SPICES, type Tag, utf8 } from './grammar.ts';
import type { ParsedResponse } from './response-stream.ts';

/** After the last byte is written: how long a connection may stay silent before we stop waiting. */
export const IDLE_MS = 1500;
const BURST_IDLE_MS = 5000;
const CASE_MAX_MS = 10_000;

/** Every case has its own generator, seeded from (seed, case id), so one case can be replayed alone. */
const caseRng = (seed: number, id: string): Rng => Rng.from(`${seed}/${id}`);

// --- what a case is

export type Listener = 'proxy' | 'api';

export interface Ctx {
  proxyPort: number;
  apiPort: number;
  consulPort: number;
  upstreamPort: number;
}

interface Part {
  data: Buffer;
  delayMs: number;
}

interface Expectation {
  what: string;
  ok: (r: ParsedResponse) => boolean;
  severity: 'violation' | 'finding';
}

export interface FuzzCase {
  id: string;
  listener: Listener;
  gen: string;
  parts: Part[];
  /** The methods of the requests, in order (one per expected response). */
  methods: string[];
  /** Per request, what its answer must satisfy (only set for requests the grammar built unmutated). */
  expects: (Expectation | undefined)[];
  /** Every request is framed exactly (no conflicting lengths, no mutation): one answer per request, in order. */
  exact: boolean;
  endAfterWrite: boolean;
  idleMs: number;
  maxMs: number;
  /** Is a valid request to the fuzz service: counted for the burst/post-run success ratio. */
  valid: boolean;
}

interface RawRequest {
  method: string;
  /** Request target as bytes (latin1 string). */
  target: string;
  version: string;
  headers: [string, string][];
  body: Buffer;
  eol: string;
}

function serialize(r: RawRequest): Buffer {
  const head = `${r.method} ${r.target} ${r.version}${r.eol}${r.headers.map(([k, v]) => `${k}: ${v}${r.eol}`).join('')}${r.eol}`;
  return Buffer.concat([Buffer.from(head, 'latin1'), r.body]);
}

// --- whole cases

/** One request from the grammar. */
function grammarRequest(r: Rng, listener: Listener, ctx: Ctx): { req: RawRequest; tag: Tag; exact: boolean } {
  let m = method(r);
  let target: string;
  let tag: Tag = 'other';
  let bodyKind: 'spec' | 'heartbeat' | 'random' | 'none';
  if (listener === 'proxy') {
    const t = proxyTarget(r, ctx);
    target = t.target;
    tag = t.tag;
    bodyKind = m === 'POST' || m === 'PUT' || m === 'PATCH' ? (r.chance(0.8) ? 'random' : 'none') : r.chance(0.1) ? 'random' : 'none';
    if (m === 'CONNECT' && r.chance(0.6)) {
      target = r.pick([`${HOST}:${ctx.consulPort}`, 'example.invalid:443', `${SERVICE}.service.consul:80`, `${HOST}:${ctx.upstreamPort}`, `${HOST}:${ctx.apiPort}`, `localhost:${ctx.consulPort}`]);
      // A CONNECT to a catalog service is a tunnel Tandem terminates; anything else is egress, refused here.
      tag = target.startsWith(`${SERVICE}.`) ? 'tunnel' : 'foreign';
    }
  } else {
    const t = apiTarget(r, ctx);
    m = t.method;
    target = t.target;
    bodyKind = t.body;
  }
  const headers = baseHeaders(r, listener, ctx);
  let exact = true;
  for (let n = r.weighted<number>([[45, 0], [30, 1], [15, 2], [10, r.int(3, 6)]]); n > 0; n--) {
    const [, spice, framing] = r.weighted(SPICES.map((s) => [s[0], s] as const));
    for (const h of spice(r)) headers.splice(r.int(0, headers.length), 0, h);
    if (framing) exact = false;
  }
  let body: Buffer = Buffer.alloc(0);
  if (bodyKind !== 'none') {
    const json = bodyKind === 'spec' ? serviceSpec(r, ctx) : bodyKind === 'heartbeat' ? r.pick(['{}', '{"note":"ok"}', 'null', '{"note":1}', '{"x":1}', `{"note":"${'n'.repeat(5000)}"}`, '']) : undefined;
    const contentType =
      json === undefined
        ? r.pick([undefined, 'application/octet-stream', 'application/json', 'text/plain'])
        : r.weighted<string | undefined>([
            [85, 'application/json'],
            [3, 'application/json; charset=utf-8'],
            [2, 'application/json; charset=latin1'],
            [2, 'text/plain'],
            [2, undefined],
            [2, 'APPLICATION/JSON'],
            [2, 'application/json, text/plain'],
            [2, 'multipart/form-data; boundary=x'],
          ]);
    const plan = bodyPlan(r, json === undefined ? undefined : Buffer.from(json, 'utf8'), contentType);
    headers.push(...plan.headers);
    body = plan.body;
    exact = exact && plan.exact;
  }
  const version = r.weighted<string>([[96, 'HTTP/1.1'], [2, 'HTTP/1.0'], [1, r.pick(['HTTP/2.0', 'HTTP/1.2', 'HTTP/0.9', 'http/1.1', 'HTTP/1.1 ', 'HTTP/11'])], [1, '']]);
  const eol = r.chance(0.97) ? '\r\n' : '\n';
  if (version !== 'HTTP/1.1' || eol !== '\r\n') exact = false;
  // A request whose method Node does not know, or that upgrades, changes how the connection goes on.
  if (!COMMON_METHODS.includes(m) || headers.some(([k, v]) => /^(upgrade|expect)$/i.test(k) || (/^connection$/i.test(k) && !/^(close|keep-alive)$/i.test(v)))) exact = false;
  return { req: { method: m, target, version, headers, body, eol }, tag, exact };
}

function expectationFor(tag: Tag, listener: Listener, m: string): Expectation | undefined {
  if (listener !== 'proxy') return undefined;
  const refused = (r: ParsedResponse) => r.status >= 400 && !r.headers.has('x-tandem-instance');
  if (tag === 'foreign') return { what: 'a foreign absolute-form target (or CONNECT) is refused by the proxy itself (>= 400, no x-tandem-instance)', ok: refused, severity: 'violation' };
  if (tag === 'tunnel') return { what: 'a CONNECT to a catalog service opens a tunnel (200) or is refused in the error shape (>= 400)', ok: (r) => (r.status === 200 || r.status >= 400) && !r.headers.has('x-tandem-instance'), severity: 'violation' };
  if (tag === 'traversal') return { what: "a '..' / encoded-separator path is refused by the proxy itself (>= 400, no x-tandem-instance)", ok: refused, severity: 'violation' };
  if (m === 'CONNECT') return { what: 'CONNECT is refused by the proxy itself', ok: refused, severity: 'violation' };
  return undefined;
}

const MUTATION_TOKENS = ['\r\n', '\n', '\r', ' ', '\t', ':', '\0', '%', '%00', '..', '/', '@', 'HTTP/1.1', 'chunked', 'Content-Length: 0\r\n', 'Transfer-Encoding: chunked\r\n', '\r\n\r\n', 'GET / HTTP/1.1\r\n', '0\r\n\r\n', '\xff', utf8('🙂'), 'Host: x\r\n', 'Upgrade: websocket\r\nConnection: upgrade\r\n'];

function mutate(r: Rng, data: Buffer): Buffer {
  let b: Buffer = Buffer.from(data);
  for (let n = r.int(1, 8); n > 0; n--) {
    const pos = r.int(0, b.length);
    b = r.weighted<() => Buffer>([
      [25, () => (b.length === 0 ? b : Buffer.concat([b.subarray(0, Math.min(pos, b.length - 1)), Buffer.from([r.int(0, 255)]), b.subarray(Math.min(pos, b.length - 1) + 1)]))],
      [15, () => Buffer.concat([b.subarray(0, pos), r.bytes(r.int(1, 16)), b.subarray(pos)])],
      [15, () => Buffer.concat([b.subarray(0, pos), b.subarray(Math.min(b.length, pos + r.int(1, 32)))])],
      [10, () => Buffer.concat([b.subarray(0, pos), b.subarray(pos, pos + r.int(1, 64)), b.subarray(pos)])],
      [30, () => Buffer.concat([b.subarray(0, pos), Buffer.from(r.pick(MUTATION_TOKENS), 'latin1'), b.subarray(pos)])],
      [5, () => b.subarray(0, pos)],
    ])();
  }
  return b;
}

export function garbage(r: Rng, ctx: Ctx): Buffer {
  return r.weighted<() => Buffer>([
    [20, () => r.bytes(r.int(1, 4096))],
    [15, () => Buffer.from(Array.from({ length: r.int(1, 20) }, () => r.str(r.int(0, 80), PRINTABLE)).join(r.pick(['\r\n', '\n', '\r'])), 'latin1')],
    [5, () => Buffer.concat([Buffer.from([0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03]), r.bytes(r.int(32, 512))])],
    [5, () => Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n', 'latin1')],
    [5, () => Buffer.from(`GET /${SERVICE}/\r\n`, 'latin1')],
    [5, () => Buffer.from(`\r\n\r\n\r\nGET /${SERVICE}/ HTTP/1.1\r\nHost: x\r\n\r\n`, 'latin1')],
    [5, () => Buffer.from(`GET /${SERVICE}/ HTTP/1.1\r\n${'X: y\r\n'.repeat(r.int(1, 5000))}\r\n`, 'latin1')],
    [5, () => Buffer.from(`GET http://${HOST}:${ctx.consulPort}/v1/agent/self HTTP/1.1\r\nHost: ${HOST}:${ctx.consulPort}\r\n\r\n`, 'latin1')],
    [5, () => Buffer.from('\0'.repeat(r.int(1, 2000)), 'latin1')],
    [5, () => Buffer.from(' '.repeat(r.int(1, 20_000)), 'latin1')],
  ])();
}

function splitParts(r: Rng, data: Buffer): Part[] {
  if (data.length < 2 || r.chance(0.75)) return [{ data, delayMs: 0 }];
  const cuts = new Set<number>();
  for (let n = r.int(1, 6); n > 0; n--) cuts.add(r.int(1, data.length - 1));
  const sorted = [...cuts].sort((a, b) => a - b);
  const parts: Part[] = [];
  let prev = 0;
  for (const c of [...sorted, data.length]) {
    parts.push({ data: data.subarray(prev, c), delayMs: parts.length === 0 ? 0 : r.int(0, 60) });
    prev = c;
  }
  return parts;
}

/** Main fuzz case number `n` ("f:<n>"). */
export function fuzzCase(seed: number, n: number, ctx: Ctx): FuzzCase {
  const id = `f:${n}`;
  const r = caseRng(seed, id);
  const listener: Listener = r.chance(0.7) ? 'proxy' : 'api';
  const gen = r.weighted<string>([[62, 'grammar'], [20, 'mutated'], [10, 'pipeline'], [8, 'garbage']]);
  let data: Buffer;
  let methods: string[];
  let expects: (Expectation | undefined)[] = [];
  let exact = false;
  if (gen === 'grammar' || gen === 'mutated') {
    const g = grammarRequest(r, listener, ctx);
    data = serialize(g.req);
    methods = [g.req.method];
    if (gen === 'mutated') data = mutate(r, data);
    else {
      expects = [expectationFor(g.tag, listener, g.req.method)];
      exact = g.exact;
    }
  } else if (gen === 'pipeline') {
    const reqs = Array.from({ length: r.int(2, 4) }, () => grammarRequest(r, listener, ctx));
    data = Buffer.concat(reqs.map((g) => serialize(g.req)));
    methods = reqs.map((g) => g.req.method);
    exact = reqs.every((g) => g.exact);
    expects = reqs.map((g) => expectationFor(g.tag, listener, g.req.method));
  } else {
    data = garbage(r, ctx);
    methods = ['GET'];
  }
  return { id, listener, gen, parts: splitParts(r, data), methods, expects, exact, endAfterWrite: r.chance(0.1), idleMs: IDLE_MS, maxMs: CASE_MAX_MS, valid: false };
}

function validRequest(listener: Listener, ctx: Ctx, path: string): Buffer {
  const port = listener === 'proxy' ? ctx.proxyPort : ctx.apiPort;
  return Buffer.from(`GET ${path} HTTP/1.1\r\nHost: ${HOST}:${port}\r\nConnection: close\r\n\r\n`, 'latin1');
}

/** Connection `n` of burst `k` ("b:<k>:<n>"): 60 % valid GETs to the fuzz service, the rest fuzz cases. */
export function burstCase(seed: number, k: number, n: number, ctx: Ctx): FuzzCase {
  const id = `b:${k}:${n}`;
  const r = caseRng(seed, id);
  if (r.chance(0.6)) {
    const okStatus: Expectation = { what: 'a valid GET to the fuzz service during a burst of 500 connections is answered 2xx by the upstream', ok: (x) => x.status >= 200 && x.status < 300 && x.headers.has('x-tandem-instance'), severity: 'finding' };
    return { id, listener: 'proxy', gen: 'burst-valid', parts: [{ data: validRequest('proxy', ctx, `/${SERVICE}/burst/${n}`), delayMs: 0 }], methods: ['GET'], expects: [okStatus], exact: true, endAfterWrite: false, idleMs: BURST_IDLE_MS, maxMs: 30_000, valid: true };
  }
  const c = fuzzCase(seed, 1_000_000_000 + k * 1000 + n, ctx);
  return { ...c, id, gen: `burst-${c.gen}`, idleMs: BURST_IDLE_MS, maxMs: 30_000 };
}

/** Slowloris connection `n` ("s:<n>"): a plain request sent one byte at a time with pauses. */
export function slowCase(seed: number, n: number, ctx: Ctx, budgetMs: number): FuzzCase {
  const id = `s:${n}`;
  const r = caseRng(seed, id);
  const listener: Listener = n % 2 === 0 ? 'proxy' : 'api';
  const path = listener === 'proxy' ? `/${SERVICE}/slow/${n}` : '/v1/health';
  const port = listener === 'proxy' ? ctx.proxyPort : ctx.apiPort;
  const head = `GET ${path} HTTP/1.1\r\nHost: ${HOST}:${port}\r\nX-Slow: ${r.str(r.int(20, 200), PATH_CHARS)}\r\n\r\n`;
  const bytes = Buffer.from(head, 'latin1');
  const parts: Part[] = [];
  for (let i = 0; i < bytes.length; i++) parts.push({ data: bytes.subarray(i, i + 1), delayMs: i === 0 ? 0 : r.int(100, 1500) });
  return { id, listener, gen: 'slowloris', parts, methods: ['GET'], expects: [undefined], exact: true, endAfterWrite: false, idleMs: 3000, maxMs: budgetMs, valid: false };
}

export function caseById(seed: number, id: string, ctx: Ctx): FuzzCase {
  const f = /^f:(\d+)$/.exec(id);
  if (f) return fuzzCase(seed, Number(f[1]), ctx);
  const b = /^b:(\d+):(\d+)$/.exec(id);
  if (b) return burstCase(seed, Number(b[1]), Number(b[2]), ctx);
  const s = /^s:(\d+)$/.exec(id);
  if (s) return slowCase(seed, Number(s[1]), ctx, 600_000);
  throw new Error(`FUZZ_REPLAY: '${id}' is not a case id (f:<n>, b:<k>:<n>, s:<n>)`);
}

