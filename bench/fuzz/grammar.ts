// The fuzz grammar: methods, request targets (proxy and control API), headers, bodies and JSON service specs, from a seeded Rng.
import type { Rng } from '../../test/support/rng.ts';
import type { Ctx, Listener } from './cases.ts';

export const HOST = '127.0.0.1';
export const SERVICE = 'fuzz';

/** A unicode string as the latin1 string of its UTF-8 bytes (what goes on the wire). */
export const utf8 = (s: string): string => Buffer.from(s, 'utf8').toString('latin1');

const TOKEN = 'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&\'*+-.^_`|~';
export const PATH_CHARS = 'abcdefghijklmnopqrstuvwxyz0123456789-._~';
export const PRINTABLE = ' !"#$%&\'()*+,-./0123456789:;<=>?@ABCDEFGHIJKLMNOPQRSTUVWXYZ[\\]^_`abcdefghijklmnopqrstuvwxyz{|}~';

export const COMMON_METHODS = ['GET', 'GET', 'GET', 'GET', 'POST', 'POST', 'PUT', 'DELETE', 'HEAD', 'OPTIONS', 'PATCH'];
const ODD_METHODS = ['CONNECT', 'TRACE', 'get', 'Get', 'post', 'PROPFIND', 'MKCOL', 'LOCK', 'SEARCH', 'PURGE', 'M-SEARCH', 'QUERY', 'SOURCE', 'PRI', 'LINK', 'REPORT', 'ACL', 'NOTIFY', 'MERGE'];

export function method(r: Rng): string {
  return r.weighted<() => string>([
    [80, () => r.pick(COMMON_METHODS)],
    [15, () => r.pick(ODD_METHODS)],
    [2, () => r.pick(['G', 'GET', 'X']).repeat(r.int(20, 30_000))],
    [2, () => r.str(r.int(1, 24), TOKEN)],
    [1, () => r.pick(['GE T', 'G\tET', 'GET\0', '', utf8('GÉT'), 'GET\r'])],
  ])();
}

const GOOD_RANGES = ['^1', '1', '1.x', '1.0.0', '*', '>=1.0.0 <2', '~1.0', '1.x || 2.x', '>=0.1', '^1.0.0-0', 'x', '1.0.x', '<2', '=1.0.0', 'v1'];
const BAD_RANGES = ['^2', '2.x', '<1', '>=1.0.1', 'not-a-range', '^^1', '>>1', '1.0.0.0', '||||', ' ', '%', '%%', 'a'.repeat(300), utf8('^１'), '1 - ', '@', '\u0000', '>=1 <', '~>1'];

/** Ranges that all match 1.0.0 but are textually distinct (each is a new cache key in the proxy). */
function distinctRange(r: Rng): string {
  const n = r.int(2, 999_999_999);
  return r.pick([`>=1.0.0 <${n}.0.0`, `1.x || ${n}.x`, `^1 || >=${n}`, `<=${n}.0.0`, `>=1.0.0-0 <${n}`]);
}

function goodRange(r: Rng): string {
  return r.chance(0.5) ? distinctRange(r) : r.pick(GOOD_RANGES);
}

function randPath(r: Rng): string {
  const segs: string[] = [];
  for (let i = r.int(0, 4); i > 0; i--) segs.push(r.str(r.int(1, 12), PATH_CHARS));
  let p = segs.join('/');
  if (r.chance(0.2)) p += `?${r.str(r.int(1, 6), PATH_CHARS)}=${r.pick(['1', '%20', 'a+b', '%2F', '..', '%00', utf8('é')])}`;
  return p;
}

export type Tag = 'valid' | 'foreign' | 'traversal' | 'tunnel' | 'other';

export function proxyTarget(r: Rng, ctx: Ctx): { target: string; tag: Tag } {
  const c = ctx.consulPort;
  const p = randPath(r);
  return r.weighted<() => { target: string; tag: Tag }>([
    [30, () => ({ target: `/${SERVICE}/${p}`, tag: 'valid' })],
    [14, () => ({ target: `/${SERVICE}@${goodRange(r)}/${p}`.replace(/ /g, '%20'), tag: 'valid' })],
    [4, () => ({ target: `/${SERVICE}@${encodeURIComponent(goodRange(r))}/${p}`, tag: 'valid' })],
    [5, () => ({ target: `/${SERVICE}@${encodeURIComponent(r.pick(BAD_RANGES))}/${p}`, tag: 'other' })],
    [
      6,
      () => ({
        target: r.pick([
          `/${SERVICE}/../x`, `/${SERVICE}/..`, `/${SERVICE}/a/../../x`, `/${SERVICE}/%2e%2e/x`, `/${SERVICE}/%2E%2e/x`, `/${SERVICE}/.%2e/x`, `/${SERVICE}/%2e./x`,
          `/${SERVICE}/a%2fb`, `/${SERVICE}/a%2F..%2Fb`, `/${SERVICE}/%5c..%5cx`, `/${SERVICE}/a\\..\\b`, `/${SERVICE}/..%2f`, `/${SERVICE}@^1/../x`, `/${SERVICE}/..?x=1`,
          `http://${SERVICE}.service.consul/../x`, `http://${SERVICE}.service.consul/%2e%2e/`, `http://${SERVICE}.service.consul/a%2fb`, `http://${SERVICE}.service.consul\\..\\x`,
        ]),
        tag: 'traversal',
      }),
    ],
    [
      3,
      () => ({
        target: r.pick([`/${SERVICE}/..;/x`, '/%2e%2e/fuzz', `/${SERVICE}/x/..#`, `/${SERVICE}/..#x`, `/${SERVICE}/%252e%252e/x`, `/${SERVICE}/${utf8('\uff0e\uff0e')}/x`, `/${SERVICE}/.../x`]),
        tag: 'other',
      }),
    ],
    [3, () => ({ target: r.pick([`/${SERVICE}/%00`, `/${SERVICE}/a%00b`, `/${SERVICE}%00/x`, `/${SERVICE}/\0`, '/%00/', `/${SERVICE}/%`, '/fu%zz/', `/${SERVICE}/%E0%A4%A`, '/%ED%A0%80/']), tag: 'other' })],
    [3, () => ({ target: r.pick([`/${SERVICE}/${utf8('ünïcødé/日本語/🙂')}`, `/${utf8('füzz')}/x`, `/${SERVICE}@${utf8('^１')}/x`, `/${SERVICE}/${utf8('\u202e')}`, `/${SERVICE}/\xc0\xae\xc0\xae/`, `/${encodeURIComponent('füzz')}/`]), tag: 'other' })],
    [2, () => ({ target: `/${SERVICE}/${'a'.repeat(r.int(7000, 70_000))}`, tag: 'other' })],
    [1, () => ({ target: `/${SERVICE}/?${'q'.repeat(r.int(7000, 20_000))}`, tag: 'other' })],
    [1, () => ({ target: `/${'a'.repeat(r.int(64, 300))}/x`, tag: 'other' })],
    [
      8,
      () => ({
        target: r.pick([
          'http://example.invalid/', `http://example.invalid/${p}`, `http://${HOST}:${c}/v1/agent/self`, `http://localhost:${c}/v1/agent/self`, `http://[::1]:${c}/v1/agent/self`,
          `http://${HOST}:${ctx.apiPort}/v1/health`, `http://${SERVICE}.service.consul@${HOST}:${c}/v1/agent/self`, `http://${SERVICE}.service.consul.example.invalid/`,
          `http://${SERVICE}.service.consul:80@example.invalid/`, `https://${SERVICE}.service.consul/`, `http://user:pw@${SERVICE}.service.consul/`, `ftp://${SERVICE}.service.consul/`,
          `http://${HOST}:${c}/v1/agent/self?x=${SERVICE}.service.consul`, `http://${HOST}:${c}#@${SERVICE}.service.consul/`, `HTTP://${HOST}:${c}/v1/agent/self`, `http://0x7f000001:${c}/v1/agent/self`,
          `http://2130706433:${c}/v1/agent/self`, `http://127.1:${c}/v1/agent/self`, `http://${HOST}:${ctx.upstreamPort}/`, `http://${SERVICE}.service.consul%2e${HOST}/`,
          `//${HOST}:${c}/v1/agent/self`, `http:/${HOST}:${c}/v1/agent/self`, `http://${HOST}:${c}\\@${SERVICE}.service.consul/`,
        ]),
        tag: 'foreign',
      }),
    ],
    [
      5,
      () => ({
        target: r.pick([
          `http://${SERVICE}.service.consul/${p}`, `http://${SERVICE}.service/${p}`, `http://${SERVICE}.service.consul./`, `http://${SERVICE.toUpperCase()}.SERVICE.CONSUL/`,
          `http://${SERVICE}.service.consul:${c}/v1/agent/self`, `http://${SERVICE}.service.consul/?a=1#frag`, `http://${SERVICE}.service.consul`,
        ]),
        tag: 'valid',
      }),
    ],
    [
      5,
      () => ({
        target: r.pick([
          '/consul/v1/agent/self', 'http://consul.service.consul/v1/agent/self', '/tandem/v1/health', '/tandem/v1/services', `/tandem/v1/instances/${SERVICE}`, `/fzsvc${r.int(0, 149)}/x`,
          `http://fzsvc${r.int(0, 149)}.service.consul/`, `/${SERVICE.toUpperCase()}/`, `/-${SERVICE}/`, `/${SERVICE}?x=1`, `/${SERVICE}`, '/', '*', 'fuzz/x', `//${SERVICE}/x`, `/${SERVICE}#frag`,
          `/${SERVICE}@/x`, '/@^1/x', `/${SERVICE}@@/x`, '/?', `/${SERVICE}/\t`, `/${SERVICE}/ x`, `/${SERVICE}/${'%'.repeat(r.int(1, 50))}`,
        ]),
        tag: 'other',
      }),
    ],
  ])();
}

function weirdServiceParam(r: Rng): string {
  return r.pick([SERVICE, SERVICE, '%zz', 'FUZZ', 'a'.repeat(101), 'a'.repeat(64), '..', '%2e%2e', '%00', utf8('füzz'), `${SERVICE}%2Fx`, '', 'consul', 'tandem', `fzsvc${r.int(0, 149)}`, '%E0%A4%A', 'a b']);
}

export function apiTarget(r: Rng, ctx: Ctx): { method: string; target: string; body: 'spec' | 'heartbeat' | 'random' | 'none' } {
  const rangeQ = () => `range=${r.chance(0.7) ? encodeURIComponent(goodRange(r)) : encodeURIComponent(r.pick(BAD_RANGES))}`;
  return r.weighted<() => { method: string; target: string; body: 'spec' | 'heartbeat' | 'random' | 'none' }>([
    [35, () => ({ method: r.chance(0.9) ? 'POST' : method(r), target: r.chance(0.95) ? '/v1/services' : r.pick(['/v1/services/', '/v1/services?x=1', '/v1//services', '/V1/SERVICES']), body: 'spec' })],
    [8, () => ({ method: 'GET', target: r.pick(['/v1/health', '/v1/services', '/v1/health?x=1', '/v1/health/']), body: 'none' })],
    [10, () => ({ method: 'GET', target: `/v1/instances/${weirdServiceParam(r)}${r.chance(0.6) ? `?${rangeQ()}` : ''}`, body: 'none' })],
    [
      8,
      () => ({
        method: 'GET',
        target: `/v1/resolve/${weirdServiceParam(r)}?${rangeQ()}${r.chance(0.5) ? `&stickyId=${r.pick(['u1', 'x'.repeat(r.int(1000, 5000)), encodeURIComponent('🙂'), '%zz'])}` : ''}`,
        body: 'none',
      }),
    ],
    [5, () => ({ method: r.pick(['DELETE', 'DELETE', 'GET', 'POST']), target: `/v1/services/${r.pick(['fzreg-1-1', `fz-${r.int(0, 9999)}`, '%00', 'a'.repeat(200), '..', '%2F', utf8('ü')])}`, body: 'none' })],
    [5, () => ({ method: r.pick(['PUT', 'PUT', 'POST']), target: `/v1/services/${r.pick(['fzreg-1-1', `fz-${r.int(0, 9999)}`, '%zz', 'a'.repeat(129)])}/heartbeat`, body: 'heartbeat' })],
    [1, () => ({ method: 'GET', target: `/v1/watch/${r.pick([SERVICE, '%zz', 'x'])}${r.chance(0.5) ? `?${rangeQ()}` : ''}`, body: 'none' })],
    [
      12,
      () => ({
        method: method(r),
        target: r.pick([
          '/', '*', '/v1/', '/v1/../v1/health', '/v1/%2e%2e/v1/health', '/v1/health%00', '/v1/services?%zz', `/v1/${utf8('ünï')}`, `/${'a'.repeat(r.int(7000, 70_000))}`,
          `http://${HOST}:${ctx.consulPort}/v1/agent/self`, `http://example.invalid/v1/health`, '/v1/services?' + 'a=1&'.repeat(r.int(10, 3000)), '//v1/health', '/v1/health#x',
        ]),
        body: r.pick(['none', 'random'] as const),
      }),
    ],
    [6, () => ({ method: method(r), target: r.pick(['/v1/health', '/v1/services', `/v1/instances/${SERVICE}`]), body: r.pick(['none', 'random', 'spec'] as const) })],
  ])();
}

// --- headers

type HeaderSpice = (r: Rng) => [string, string][];

function hugeValue(r: Rng): string {
  return r.str(1, 'abc') + 'x'.repeat(r.int(1000, 40_000));
}

/** [weight, generator, whether it touches the message framing]. */
export const SPICES: readonly (readonly [number, HeaderSpice, boolean])[] = [
  [6, (r) => [['X-StickyId', r.pick(['user-42', r.str(r.int(1, 40), TOKEN), 'x'.repeat(r.int(1000, 15_000)), utf8('🙂'), ''])]], false],
  [6, (r) => [['X-Tandem-Timeout-Ms', r.pick(['abc', '-1', '0', '1', '50', '1e3', '99999999999', ' 5 ', '', '1.5', '0x10', '86400001', '86400000', 'NaN', 'Infinity', utf8('٣'), '5,5', '+5', '0005'])]], false],
  [5, (r) => [['X-Tandem-Version', r.chance(0.5) ? goodRange(r) : r.pick(BAD_RANGES)]], false],
  [3, (r) => [['X-Tandem-Instance', r.pick(['nope', 'x'.repeat(r.int(100, 5000)), '', `${SERVICE}-1`, '../../x'])]], false],
  [3, () => [['Trailer', 'X-Foo']], false],
  [4, (r) => [['Connection', r.pick(['Upgrade', 'upgrade, keep-alive'])], ['Upgrade', r.pick(['websocket', 'WebSocket', 'h2c', 'tls/1.0', ''])]], false],
  [4, (r) => [['Connection', r.pick(['close', 'keep-alive', 'x-stickyid', 'te, close', 'host', 'x-tandem-version', 'content-length', 'transfer-encoding', r.str(5, TOKEN)])]], false],
  [3, (r) => [['Expect', r.pick(['100-continue', '100-Continue', 'garbage'])]], false],
  [3, (r) => [[r.pick(['X-Forwarded-For', 'X-Forwarded-Host', 'X-Forwarded-Proto', 'Forwarded', 'Proxy-Authorization', 'Proxy-Connection', 'TE', 'Keep-Alive', 'Via', 'Max-Forwards']), r.pick(['1.2.3.4', 'evil', 'trailers', 'Basic Zm9vOmJhcg==', '0'])]], false],
  [2, (r) => [['Idempotency-Key', r.str(r.int(0, 64), TOKEN)]], false],
  [
    5,
    (r) =>
      r.pick<[string, string][]>([
        [['X-Bad', 'a\x00b']], [['X-Bad', 'a\x7fb']], [['X Bad', 'x']], [['X-Bad:', 'x']], [['', 'x']], [[utf8('X-Ü'), 'x']], [['X-Bad', 'a\rb']], [['X-Bad', 'a\nb']],
        [['X-Bad', utf8('ünï 🙂')]], [['X-Fold', 'a\r\n b']], [['X-Bad', '\x01\x02\x03']], [['(X)', 'x']], [['X-Bad ', 'x']], [[' X-Lead', 'x']],
      ]),
    false,
  ],
  [3, (r) => [['Host', r.pick(['a', `${SERVICE}.service.consul`])], ['Host', r.pick(['b', `${HOST}:1`])]], false],
  [3, (r) => [['X-StickyId', 'a'], ['X-StickyId', 'b'], ...(r.chance(0.5) ? ([['X-Tandem-Version', '^1'], ['X-Tandem-Version', '^2']] as [string, string][]) : [])], false],
  [3, (r) => [['X-Huge', hugeValue(r)]], false],
  [2, (r) => Array.from({ length: r.int(50, 2500) }, (_, i): [string, string] => [`X-Many-${i}`, 'v']), false],
  [2, (r) => [['Cookie', r.str(r.int(0, 3000), PRINTABLE)], ['Authorization', `Bearer ${r.str(r.int(0, 100), TOKEN)}`]], false],
  [3, (r) => [['Transfer-Encoding', r.pick(['chunked', 'gzip, chunked', 'chunked, gzip', 'identity', 'xchunked', ' chunked', 'chunked\t', 'CHUNKED', 'chunked, chunked'])]], true],
  [3, (r) => [['Content-Length', r.pick(['0', '5', '-1', 'abc', '1e3', '18446744073709551616', ' 10', '5, 5', '0x10', '+5', '', '99999999999'])]], true],
  [2, () => [['Content-Length', '3'], ['Content-Length', '5']], true],
  [2, () => [['Transfer-Encoding', 'chunked'], ['Content-Length', '4']], true],
];

export function baseHeaders(r: Rng, listener: Listener, ctx: Ctx): [string, string][] {
  const port = listener === 'proxy' ? ctx.proxyPort : ctx.apiPort;
  const host = r.weighted<() => string | undefined>([
    [80, () => `${HOST}:${port}`],
    [5, () => undefined],
    [5, () => `${SERVICE}.service.consul`],
    [3, () => 'example.invalid'],
    [3, () => `${HOST}:${ctx.consulPort}`],
    [2, () => ''],
    [2, () => 'h'.repeat(r.int(300, 20_000))],
  ])();
  const out: [string, string][] = host === undefined ? [] : [['Host', host]];
  if (r.chance(0.5)) out.push(['User-Agent', 'tandem-fuzz']);
  if (r.chance(0.3)) out.push(['Accept', r.pick(['*/*', 'application/json', 'text/event-stream'])]);
  if (r.chance(0.15)) out.push(['Connection', 'close']);
  return out;
}

// --- bodies

interface BodyPlan {
  headers: [string, string][];
  body: Buffer;
  /** The framing is exactly right (the server reads exactly this body). */
  exact: boolean;
}

export function chunked(r: Rng, data: Buffer, opts: { trailers?: boolean } = {}): Buffer {
  const parts: Buffer[] = [];
  let i = 0;
  while (i < data.length) {
    const n = Math.min(data.length - i, r.int(1, 4096));
    const ext = r.chance(0.1) ? `;ext=${r.str(3, PATH_CHARS)}` : '';
    parts.push(Buffer.from(`${n.toString(16)}${ext}\r\n`, 'latin1'), data.subarray(i, i + n), Buffer.from('\r\n'));
    i += n;
  }
  parts.push(Buffer.from(opts.trailers ? '0\r\nX-Trailer: 1\r\n\r\n' : '0\r\n\r\n', 'latin1'));
  return Buffer.concat(parts);
}

function randomBody(r: Rng): Buffer {
  const n = r.weighted<() => number>([
    [60, () => r.int(1, 512)],
    [30, () => r.int(512, 8192)],
    [8, () => r.int(60_000, 70_000)],
    [2, () => r.int(100_000, 300_000)],
  ])();
  return r.chance(0.5) ? r.bytes(n) : Buffer.from(r.str(n, PRINTABLE), 'latin1');
}

export function bodyPlan(r: Rng, data: Buffer | undefined, contentType: string | undefined): BodyPlan {
  const ct: [string, string][] = contentType === undefined ? [] : [['Content-Type', contentType]];
  const d = data ?? randomBody(r);
  return r.weighted<() => BodyPlan>([
    [data ? 70 : 20, () => ({ headers: [...ct, ['Content-Length', String(d.length)]], body: d, exact: true })],
    [8, () => ({ headers: [...ct, ['Transfer-Encoding', 'chunked']], body: chunked(r, d, { trailers: r.chance(0.3) }), exact: true })],
    // Shorter than announced: the server waits for the rest.
    [4, () => ({ headers: [...ct, ['Content-Length', String(d.length + r.int(1, 1000))]], body: d, exact: false })],
    // Longer than announced: the tail becomes the "next request".
    [4, () => ({ headers: [...ct, ['Content-Length', String(Math.max(0, d.length - r.int(1, Math.max(1, d.length))))]], body: d, exact: false })],
    // Chunked, cut before the last chunk.
    [4, () => ({ headers: [...ct, ['Transfer-Encoding', 'chunked']], body: chunked(r, d).subarray(0, r.int(0, Math.max(0, d.length - 1))), exact: false })],
    [
      3,
      () => ({
        headers: [...ct, ['Transfer-Encoding', 'chunked']],
        body: Buffer.from(r.pick(['zz\r\nabc\r\n0\r\n\r\n', 'ffffffffffffffffff\r\nx\r\n', '-1\r\nx\r\n0\r\n\r\n', '5\r\nabc\r\n0\r\n\r\n', '3\nabc\n0\n\n', '0x3\r\nabc\r\n0\r\n\r\n', '3 \r\nabc\r\n0\r\n\r\n']), 'latin1'),
        exact: false,
      }),
    ],
    // Transfer-Encoding and Content-Length together (request smuggling's favourite).
    [4, () => ({ headers: [...ct, ['Content-Length', String(r.int(0, 10))], ['Transfer-Encoding', 'chunked']], body: Buffer.concat([chunked(r, d), Buffer.from('GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n')]), exact: false })],
    [2, () => ({ headers: [...ct, ['Transfer-Encoding', 'chunked'], ['Transfer-Encoding', 'identity']], body: chunked(r, d), exact: false })],
  ])();
}

// --- JSON bodies for POST /v1/services

class Raw {
  constructor(readonly text: string) {}
}

class Obj {
  constructor(readonly entries: [string, unknown][]) {}
}

function toJson(v: unknown): string {
  if (v instanceof Raw) return v.text;
  if (v instanceof Obj) return `{${v.entries.map(([k, x]) => `${JSON.stringify(k)}:${toJson(x)}`).join(',')}}`;
  if (Array.isArray(v)) return `[${v.map((x: unknown) => toJson(x)).join(',')}]`;
  return JSON.stringify(v) ?? 'null';
}

function safePort(r: Rng, ctx: Ctx): number {
  const used = new Set([ctx.proxyPort, ctx.apiPort, ctx.consulPort, ctx.upstreamPort]);
  for (;;) {
    const p = r.int(20_000, 60_000);
    if (!used.has(p)) return p;
  }
}

const WEIRD_VALUES: readonly unknown[] = [
  null, true, false, 0, -1, 1.5, 65536, 2 ** 53, '', ' ', 'x'.repeat(300), [], new Obj([]), [1, 2], new Obj([['a', 1]]), '1.0', 'v1.0.0', '01.0.0', '../../etc', '\u0000', '🙂', 'A',
  'consul', 'tandem', new Raw('1e309'), new Raw('-0'), new Raw('1e-400'), new Raw('9'.repeat(400)), '1.0.0\n', 'a b', 'a/b', 80, '80',
];

function deep(r: Rng): Raw {
  const d = r.int(100, 50_000);
  return r.chance(0.5) ? new Raw('['.repeat(d) + ']'.repeat(d)) : new Raw('{"a":'.repeat(d) + '1' + '}'.repeat(d));
}

export function serviceSpec(r: Rng, ctx: Ctx): string {
  const entries: [string, unknown][] = [
    ['name', `fzreg-${r.int(0, 999)}`],
    ['version', r.pick(['1.0.0', '2.3.4', '0.0.1-alpha.1', '1.0.0+build.5'])],
    ['port', safePort(r, ctx)],
  ];
  if (r.chance(0.3)) entries.push(['address', r.pick(['127.0.0.1', '::1', 'localhost'])]);
  if (r.chance(0.3)) entries.push(['id', `fzreg-${r.int(0, 999)}-${r.int(0, 9)}`]);
  if (r.chance(0.3)) entries.push(['tags', Array.from({ length: r.int(0, 5) }, () => r.str(r.int(1, 10), PATH_CHARS))]);
  if (r.chance(0.3)) entries.push(['meta', new Obj([['team', 'fuzz'], ['k', r.str(5, PATH_CHARS)]])]);
  if (r.chance(0.4)) {
    entries.push(['check', r.pick([new Obj([['kind', 'ttl'], ['ttlMs', 60_000]]), new Obj([['kind', 'tcp'], ['intervalMs', 5000]]), new Obj([['kind', 'http'], ['path', '/health'], ['intervalMs', 5000]])])]);
  }
  // A small share stays valid (these really register, checked on unused loopback ports); the rest is broken.
  const mutations = r.chance(0.02) ? 0 : r.int(1, 3);
  const fields = ['name', 'version', 'port', 'address', 'id', 'tags', 'meta', 'check'];
  const set = (k: string, v: unknown) => {
    const i = entries.findIndex(([n]) => n === k);
    if (i === -1) entries.push([k, v]);
    else entries[i] = [k, v];
  };
  for (let m = 0; m < mutations; m++) {
    r.weighted<() => void>([
      [20, () => set(r.pick(fields), r.pick(WEIRD_VALUES))],
      [8, () => entries.splice(r.int(0, 2), 1)],
      [6, () => entries.push([r.pick(['extra', '__proto__', 'constructor', 'prototype', 'Name', '']), r.pick([new Obj([['polluted', true]]), 1, 'x'])])],
      [4, () => entries.push([r.pick(fields), r.pick(WEIRD_VALUES)])],
      [
        6,
        () => {
          const n = r.int(61, 6000);
          const keyKind = r.int(0, 3);
          set('meta', new Obj(Array.from({ length: n }, (_, i): [string, unknown] => [keyKind === 0 ? `k${i}` : keyKind === 1 ? `consul-${i}` : keyKind === 2 ? `bad key ${i}` : 'version', r.chance(0.8) ? 'v' : i])));
        },
      ],
      [4, () => set('meta', new Obj([[r.pick(['version', 'consul-x', 'tandem_x', 'a'.repeat(129), 'ü', '']), r.pick(['v', 1, null, 'x'.repeat(600)])]]))],
      [6, () => set('tags', Array.from({ length: r.int(65, 60_000) }, (_, i) => (r.chance(0.5) ? i : 't')))],
      [3, () => set('tags', r.pick([[''], ['x'.repeat(256)], 'v1', [null], [[]]]))],
      [
        6,
        () =>
          set(
            'check',
            r.pick([
              new Obj([['kind', 'grpc']]), new Obj([['kind', 'http']]), new Obj([['kind', 'http'], ['path', 'no-slash']]), new Obj([['kind', 'http'], ['path', '/a b']]), new Obj([['kind', 'ttl'], ['ttlMs', 1]]),
              new Obj([['kind', ['ttl']]]), new Obj([]), new Obj([['kind', 'tcp'], ['extra', 1]]), 'ttl', new Obj([['kind', 'tcp'], ['intervalMs', 1e12]]), new Obj([['kind', null]]),
              new Obj([['kind', 'http'], ['path', `/${'p'.repeat(2000)}`]]), new Obj([['kind', '__proto__']]),
            ]),
          ),
      ],
      [5, () => set(r.pick(['meta', 'tags', 'check', 'name', 'extra']), deep(r))],
      [2, () => set('name', 'n'.repeat(r.int(64, 200_000)))],
      [2, () => set('version', `1.0.0-${'a.'.repeat(r.int(100, 20_000))}a`)],
    ])();
  }
  const json = toJson(new Obj(entries));
  // Syntax-level damage on top, sometimes.
  return r.weighted<() => string>([
    [80, () => json],
    [4, () => json.slice(0, r.int(0, json.length - 1))],
    [2, () => json.replace(/}$/, ',}')],
    [2, () => `\ufeff${json}`],
    [2, () => json.replace(/"/g, "'")],
    [2, () => `/* c */${json}`],
    [2, () => r.pick(['[]', '"x"', '1', 'null', 'true', '', ' ', 'NaN', '{', '}', '{"name":"a","name":1}'])],
    [2, () => `${json}${json}`],
    [2, () => `{"name":"fzreg-x","version":"1.0.0","port":1,"note":"${'x'.repeat(r.int(200_000, 300_000))}"}`],
    [2, () => json.replace(/:/, ':\u0000')],
  ])();
}

