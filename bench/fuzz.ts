// Fuzzer for the sidecar: random and mutated raw HTTP over TCP against a real `tandem start` (proxy and control API), checking every answer, liveness, stderr and RSS.
//
//   npm run fuzz                                                      (builds dist/ first; 60 s or 200000 requests)
//   FUZZ_SECONDS=30 FUZZ_SEED=12345 npm run fuzz                      (the seed is printed; same seed, same cases)
//   FUZZ_SKIP_BUILD=1 FUZZ_SEED=12345 FUZZ_REPLAY=f:812 npm run fuzz  (one case again, printing the bytes both ways)
//
// Env: FUZZ_SECONDS (60), FUZZ_MAX_REQUESTS (200000), FUZZ_SEED (random, printed), FUZZ_CONCURRENCY (48),
// FUZZ_SKIP_BUILD=1, FUZZ_REPLAY=<case id as printed in the examples>.
//
// One process tree: a Consul dev agent, one upstream (this file run with `--upstream <port>`: it answers every request
// with what it received, as JSON) and `node bin/tandem.js start --log-level warn`. Everything listens on and connects to
// 127.0.0.1 only: the sidecar runs with proxy.egress.mode=allow-list and an empty list, so no mutated host or address
// (a public IP, a name that would need DNS) is ever contacted, and every loopback target (Consul, the upstream's own
// port, the control API) must be refused by the policy; a CONNECT to the catalog service opens a tunnel. Cases: raw
// requests from a grammar (odd methods, targets, headers, bodies), byte-level mutations of those, pipelines, garbage,
// JSON specs for POST /v1/services; plus slowloris connections and bursts of 500 concurrent connections. Every response is parsed and checked; the sidecar's pid, /v1/health and stderr are watched throughout.
// Afterwards: valid traffic, RSS and open fds against the baseline, then a SIGTERM that must stop the sidecar (and
// deregister its services) within 30 s. Summary on stdout, progress on stderr. Exit status 0 clean, 1 violation or
// crash, 130 interrupted. Violations fail the run; findings (contract deviations outside the checks above) are listed.
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { randomInt } from 'node:crypto';
import { readdirSync, readFileSync, readlinkSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { ConsulDevAgent } from '../src/consul/consul-dev-agent.ts';
import { freePorts } from '../src/common/free-port.ts';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const BIN = join(ROOT, 'bin', 'tandem.js');
const SELF = fileURLToPath(import.meta.url);
const HOST = '127.0.0.1';
const SERVICE = 'fuzz';

const BURSTS = 3;
const BURST_SIZE = 500;
const SLOWLORIS = 50;
/** After the last byte is written: how long a connection may stay silent before we stop waiting. */
const IDLE_MS = 1500;
const BURST_IDLE_MS = 5000;
const CASE_MAX_MS = 10_000;
const MAX_BYTES_IN = 32 * 1024 * 1024;
const EXAMPLES = 3;
/** SIGTERM to exit: the sidecar's own shutdownTimeoutMs (15 s) for in-flight requests, plus deregistration. */
const SHUTDOWN_MS = 30_000;

// ---------------------------------------------------------------------------------------------------
// Settings

interface Settings {
  seconds: number;
  maxRequests: number;
  seed: number;
  concurrency: number;
  build: boolean;
  replay: string | undefined;
}

function intEnv(name: string, def: number, min: number, max = Number.MAX_SAFE_INTEGER): number {
  const raw = process.env[name];
  if (raw === undefined || raw.trim() === '') return def;
  const n = Number(raw);
  if (!Number.isInteger(n) || n < min || n > max) throw new Error(`${name} must be an integer from ${min} to ${max} (got '${raw}')`);
  return n;
}

function readSettings(): Settings {
  const replay = process.env['FUZZ_REPLAY']?.trim();
  return {
    seconds: intEnv('FUZZ_SECONDS', 60, 1),
    maxRequests: intEnv('FUZZ_MAX_REQUESTS', 200_000, 1),
    seed: intEnv('FUZZ_SEED', randomInt(0, 0xffffffff), 0, 0xffffffff),
    concurrency: intEnv('FUZZ_CONCURRENCY', 48, 1, 1000),
    build: !['1', 'true', 'yes'].includes((process.env['FUZZ_SKIP_BUILD'] ?? '').toLowerCase()),
    replay: replay === undefined || replay === '' ? undefined : replay,
  };
}

// ---------------------------------------------------------------------------------------------------
// Seeded randomness: every case has its own generator, seeded from (seed, case id), so one case can be replayed alone.

class Rng {
  #s: number;

  constructor(seed: number) {
    this.#s = seed >>> 0;
  }

  /** mulberry32: [0, 1). */
  float(): number {
    this.#s = (this.#s + 0x6d2b79f5) >>> 0;
    let t = this.#s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }

  /** An integer in [min, max]. */
  int(min: number, max: number): number {
    return min + Math.floor(this.float() * (max - min + 1));
  }

  chance(p: number): boolean {
    return this.float() < p;
  }

  pick<T>(items: readonly T[]): T {
    if (items.length === 0) throw new Error('pick from an empty list');
    return items[this.int(0, items.length - 1)] as T;
  }

  weighted<T>(items: readonly (readonly [number, T])[]): T {
    const total = items.reduce((n, [w]) => n + w, 0);
    let x = this.float() * total;
    for (const [w, v] of items) {
      x -= w;
      if (x < 0) return v;
    }
    const last = items[items.length - 1];
    if (last === undefined) throw new Error('weighted pick from an empty list');
    return last[1];
  }

  bytes(n: number): Buffer {
    const b = Buffer.allocUnsafe(n);
    for (let i = 0; i < n; i++) b[i] = this.int(0, 255);
    return b;
  }

  str(n: number, alphabet: string): string {
    let s = '';
    for (let i = 0; i < n; i++) s += alphabet[this.int(0, alphabet.length - 1)] ?? 'x';
    return s;
  }
}

/** FNV-1a. */
function hash32(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) {
    h ^= s.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return h >>> 0;
}

const caseRng = (seed: number, id: string): Rng => new Rng(hash32(`${seed}/${id}`));

// ---------------------------------------------------------------------------------------------------
// Cases: bytes to write (in parts, with pauses), the methods sent (HEAD answers carry no body) and what to expect

type Listener = 'proxy' | 'api';

interface Ctx {
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

interface FuzzCase {
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

/** A unicode string as the latin1 string of its UTF-8 bytes (what goes on the wire). */
const utf8 = (s: string): string => Buffer.from(s, 'utf8').toString('latin1');

function serialize(r: RawRequest): Buffer {
  const head = `${r.method} ${r.target} ${r.version}${r.eol}${r.headers.map(([k, v]) => `${k}: ${v}${r.eol}`).join('')}${r.eol}`;
  return Buffer.concat([Buffer.from(head, 'latin1'), r.body]);
}

const TOKEN = 'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&\'*+-.^_`|~';
const PATH_CHARS = 'abcdefghijklmnopqrstuvwxyz0123456789-._~';
const PRINTABLE = ' !"#$%&\'()*+,-./0123456789:;<=>?@ABCDEFGHIJKLMNOPQRSTUVWXYZ[\\]^_`abcdefghijklmnopqrstuvwxyz{|}~';

const COMMON_METHODS = ['GET', 'GET', 'GET', 'GET', 'POST', 'POST', 'PUT', 'DELETE', 'HEAD', 'OPTIONS', 'PATCH'];
const ODD_METHODS = ['CONNECT', 'TRACE', 'get', 'Get', 'post', 'PROPFIND', 'MKCOL', 'LOCK', 'SEARCH', 'PURGE', 'M-SEARCH', 'QUERY', 'SOURCE', 'PRI', 'LINK', 'REPORT', 'ACL', 'NOTIFY', 'MERGE'];

function method(r: Rng): string {
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

type Tag = 'valid' | 'foreign' | 'traversal' | 'tunnel' | 'other';

function proxyTarget(r: Rng, ctx: Ctx): { target: string; tag: Tag } {
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

function apiTarget(r: Rng, ctx: Ctx): { method: string; target: string; body: 'spec' | 'heartbeat' | 'random' | 'none' } {
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
const SPICES: readonly (readonly [number, HeaderSpice, boolean])[] = [
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

function baseHeaders(r: Rng, listener: Listener, ctx: Ctx): [string, string][] {
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

function chunked(r: Rng, data: Buffer, opts: { trailers?: boolean } = {}): Buffer {
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

function bodyPlan(r: Rng, data: Buffer | undefined, contentType: string | undefined): BodyPlan {
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

function serviceSpec(r: Rng, ctx: Ctx): string {
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

function garbage(r: Rng, ctx: Ctx): Buffer {
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
function fuzzCase(seed: number, n: number, ctx: Ctx): FuzzCase {
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
function burstCase(seed: number, k: number, n: number, ctx: Ctx): FuzzCase {
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
function slowCase(seed: number, n: number, ctx: Ctx, budgetMs: number): FuzzCase {
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

function caseById(seed: number, id: string, ctx: Ctx): FuzzCase {
  const f = /^f:(\d+)$/.exec(id);
  if (f) return fuzzCase(seed, Number(f[1]), ctx);
  const b = /^b:(\d+):(\d+)$/.exec(id);
  if (b) return burstCase(seed, Number(b[1]), Number(b[2]), ctx);
  const s = /^s:(\d+)$/.exec(id);
  if (s) return slowCase(seed, Number(s[1]), ctx, 600_000);
  throw new Error(`FUZZ_REPLAY: '${id}' is not a case id (f:<n>, b:<k>:<n>, s:<n>)`);
}

// ---------------------------------------------------------------------------------------------------
// Parsing responses off the wire (strictly: a malformed answer is a finding in itself)

interface ParsedResponse {
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

class ResponseStream {
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

function esc(s: string, max = 300): string {
  const cut = s.length > max ? `${s.slice(0, max)}…(+${s.length - max})` : s;
  return JSON.stringify(cut);
}

// ---------------------------------------------------------------------------------------------------
// One connection

interface ConnResult {
  stream: ResponseStream;
  connected: boolean;
  /** The server closed (or reset) the connection; otherwise we stopped waiting. */
  serverClosed: boolean;
  socketError: string | undefined;
  /** Bytes of a response still in progress when the connection ended. */
  leftover: number;
  bytesIn: number;
  rawIn: Buffer;
  written: boolean;
  /** How long the connection was open. */
  ms: number;
}

const openSockets = new Set<Socket>();
let stopWriting = false;

function runConnection(port: number, c: FuzzCase): Promise<ConnResult> {
  return new Promise((resolve) => {
    const stream = new ResponseStream(c.methods);
    const t0 = Date.now();
    const sock = connect({ host: HOST, port });
    openSockets.add(sock);
    let connected = false;
    let written = false;
    let writesDone = false;
    let settled = false;
    let serverClosed = false;
    let socketError: string | undefined;
    let bytesIn = 0;
    const rawIn: Buffer[] = [];
    let rawLen = 0;
    let idle: NodeJS.Timeout | undefined;
    let writeTimer: NodeJS.Timeout | undefined;

    const done = () => {
      if (settled) return;
      settled = true;
      clearTimeout(hard);
      clearTimeout(idle);
      clearTimeout(writeTimer);
      sock.destroy();
      openSockets.delete(sock);
      const leftover = stream.finish(serverClosed);
      resolve({ stream, connected, serverClosed, socketError, leftover, bytesIn, rawIn: Buffer.concat(rawIn), written, ms: Date.now() - t0 });
    };
    const hard = setTimeout(done, c.maxMs);
    const armIdle = () => {
      if (!writesDone || settled) return;
      clearTimeout(idle);
      idle = setTimeout(done, c.idleMs);
    };
    const complete = () => stream.stopped || (writesDone && stream.finals.length >= c.methods.length);

    let i = 0;
    const writeNext = () => {
      if (settled) return;
      if (stopWriting && c.gen === 'slowloris') {
        writesDone = true;
        armIdle();
        return;
      }
      const part = c.parts[i++];
      if (part === undefined) {
        writesDone = true;
        if (c.endAfterWrite) sock.end();
        armIdle();
        if (complete()) done();
        return;
      }
      if (!sock.destroyed && sock.writable) {
        sock.write(part.data);
        written = true;
      }
      const next = c.parts[i];
      if (next === undefined || next.delayMs === 0) setImmediate(writeNext);
      else writeTimer = setTimeout(writeNext, next.delayMs);
    };

    sock.on('connect', () => {
      connected = true;
      writeNext();
    });
    sock.on('data', (d: Buffer) => {
      bytesIn += d.length;
      if (rawLen < 65_536) {
        rawIn.push(d);
        rawLen += d.length;
      }
      stream.push(d);
      if (bytesIn > MAX_BYTES_IN) {
        socketError = `more than ${MAX_BYTES_IN} bytes in`;
        done();
        return;
      }
      armIdle();
      if (complete() || (c.gen === 'slowloris' && stream.finals.length > 0)) done();
    });
    sock.on('end', () => {
      serverClosed = true;
      done();
    });
    sock.on('error', (err: NodeJS.ErrnoException) => {
      socketError = err.code ?? err.message;
    });
    sock.on('close', () => {
      if (!settled) serverClosed = true;
      done();
    });
  });
}

// ---------------------------------------------------------------------------------------------------
// Checks and statistics

interface Tally {
  count: number;
  examples: string[];
}

class Stats {
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

function isRecord(v: unknown): v is Record<string, unknown> {
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

function checkCase(c: FuzzCase, r: ConnResult, s: Stats): void {
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

// ---------------------------------------------------------------------------------------------------
// Processes (same pattern as bench/run.ts)

let interrupted = false;
const children = new Set<ChildProcess>();

function log(msg: string): void {
  process.stderr.write(`[fuzz] ${msg}\n`);
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

function checkInterrupted(): void {
  if (interrupted) throw new Error('interrupted');
}

function onSignal(signal: NodeJS.Signals): void {
  if (interrupted) process.exit(130); // second signal: the exit hooks kill the children and the agent
  interrupted = true;
  stopWriting = true;
  log(`${signal}: stopping and cleaning up (again to force)`);
  for (const s of openSockets) s.destroy();
}

process.on('exit', () => {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
});

function track(child: ChildProcess): Promise<void> {
  children.add(child);
  return new Promise((resolve) => {
    child.once('exit', () => {
      children.delete(child);
      resolve();
    });
  });
}

async function stopChild(child: ChildProcess, exited: Promise<void>, graceMs: number): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
  await exited;
  clearTimeout(timer);
}

async function build(): Promise<void> {
  log('npm run build (FUZZ_SKIP_BUILD=1 to skip)');
  try {
    await promisify(execFile)('npm', ['run', 'build'], { cwd: ROOT, timeout: 300_000 });
  } catch (err) {
    const e = err as { stdout?: string; stderr?: string; message: string };
    throw new Error(`npm run build failed:\n${e.stdout ?? ''}${e.stderr ?? ''}${e.message}`, { cause: err });
  }
}

interface Proc {
  child: ChildProcess;
  exited: Promise<void>;
}

async function startUpstream(port: number): Promise<Proc & { output: () => string }> {
  const child = spawn(process.execPath, ['--import', 'tsx', SELF, '--upstream', String(port)], { cwd: ROOT, stdio: ['pipe', 'pipe', 'pipe'], env: { PATH: process.env['PATH'] ?? '' } });
  const exited = track(child);
  let out = '';
  child.stderr?.on('data', (d: Buffer) => (out = (out + d.toString()).slice(-20_000)));
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`upstream not ready in 20 s: ${out}`)), 20_000);
    child.stdout?.on('data', (d: Buffer) => {
      if (d.toString().includes('ready')) {
        clearTimeout(timer);
        resolve();
      }
    });
    void exited.then(() => {
      clearTimeout(timer);
      reject(new Error(`upstream exited during start (${String(child.exitCode ?? child.signalCode)}): ${out}`));
    });
  });
  return { child, exited, output: () => out };
}

interface Sidecar extends Proc {
  pid: number;
  api: string;
  stderrTail: () => string;
}

const STDERR_BAD = /unhandledRejection|uncaughtException|TypeError|RangeError|FATAL ERROR|heap out of memory|Maximum call stack/;

function watchStderr(child: ChildProcess, stats: Stats): () => string {
  let tail = '';
  let partial = '';
  const onLine = (line: string) => {
    if (line.trim() === '') return;
    stats.stderr.lines++;
    let level = 0;
    let msg = line;
    try {
      const j: unknown = JSON.parse(line);
      if (isRecord(j)) {
        level = typeof j['level'] === 'number' ? j['level'] : 0;
        msg = typeof j['msg'] === 'string' ? j['msg'] : line;
      }
    } catch {
      // not a pino line (a crash prints plain text)
    }
    if (level >= 50) {
      stats.stderr.error++;
      stats.finding(`sidecar logged at error level or above: ${esc(msg, 80)}`, `stderr: ${esc(line, 400)}`);
    } else if (level >= 40) {
      stats.stderr.warn++;
      stats.bump(stats.stderr.warnMessages, msg.slice(0, 120));
    } else stats.stderr.other++;
    if (STDERR_BAD.test(line)) stats.violation('sidecar stderr mentions a crash-class error', `stderr: ${esc(line, 400)}`);
  };
  child.stderr?.on('data', (d: Buffer) => {
    const text = partial + d.toString();
    const lines = text.split('\n');
    partial = lines.pop() ?? '';
    if (partial.length > 100_000) {
      onLine(partial);
      partial = '';
    }
    for (const l of lines) onLine(l);
    tail = (tail + d.toString()).slice(-20_000);
  });
  child.stderr?.on('end', () => {
    if (partial) onLine(partial);
    partial = '';
  });
  return () => tail;
}

async function startSidecar(consul: string, apiPort: number, proxyPort: number, stateDir: string, stats: Stats): Promise<Sidecar> {
  const args = [
    BIN, 'start',
    '--consul', consul,
    '--api', `${HOST}:${apiPort}`,
    '--proxy', `${HOST}:${proxyPort}`,
    '--state-dir', stateDir,
    '--log-level', 'warn',
    '--advertise', HOST,
    '--set', 'registration.checkIntervalMs=1000',
    '--set', 'registration.drainMs=200',
    // Egress to nothing: foreign targets are refused without a connection or a DNS lookup (see the header).
    '--set', 'proxy.egress.mode=allow-list',
  ];
  // Only PATH: no CONSUL_HTTP_* or TANDEM_* from the caller's environment leaks into the run.
  const child = spawn(process.execPath, args, { cwd: ROOT, stdio: ['ignore', 'ignore', 'pipe'], env: { PATH: process.env['PATH'] ?? '' } });
  const exited = track(child);
  const stderrTail = watchStderr(child, stats);
  const api = `http://${HOST}:${apiPort}`;
  const deadline = Date.now() + 20_000;
  for (;;) {
    checkInterrupted();
    if (child.exitCode !== null || child.signalCode !== null) throw new Error(`tandem exited during start (${String(child.exitCode ?? child.signalCode)}): ${stderrTail()}`);
    try {
      const res = await fetch(`${api}/v1/health`, { signal: AbortSignal.timeout(1000) });
      await res.arrayBuffer();
      if (res.ok) break;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) throw new Error(`tandem's control API did not answer within 20 s: ${stderrTail()}`);
    await sleep(100);
  }
  if (child.pid === undefined) throw new Error('tandem has no pid');
  return { child, exited, pid: child.pid, api, stderrTail };
}

async function registerUpstream(api: string, port: number): Promise<void> {
  const res = await fetch(`${api}/v1/services`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ name: SERVICE, version: '1.0.0', port, address: HOST }),
  });
  const text = await res.text();
  if (res.status !== 201 && res.status !== 202) throw new Error(`POST /v1/services answered ${res.status}: ${text}`);
}

async function waitHealthy(api: string, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let last: string | undefined;
  for (;;) {
    checkInterrupted();
    try {
      const res = await fetch(`${api}/v1/instances/${SERVICE}`, { signal: AbortSignal.timeout(2000) });
      const body: unknown = await res.json();
      last = JSON.stringify(body);
      const instances = isRecord(body) && Array.isArray(body['instances']) ? body['instances'] : [];
      if (res.ok && instances.length === 1 && instances.every((i) => isRecord(i) && i['healthy'] === true)) return;
    } catch (err) {
      last = String(err);
    }
    if (Date.now() > deadline) throw new Error(`${SERVICE} was not healthy within ${timeoutMs} ms; last answer: ${last ?? 'none'}`);
    await sleep(200);
  }
}

function readRssKiB(pid: number): number {
  try {
    const m = /^VmRSS:\s+(\d+)\s+kB/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) : 0;
  } catch {
    return 0;
  }
}

/** Open file descriptors of a process, and how many are sockets. */
function fdCount(pid: number): { all: number; sockets: number } {
  try {
    const fds = readdirSync(`/proc/${pid}/fd`);
    let sockets = 0;
    for (const fd of fds) {
      try {
        if (readlinkSync(`/proc/${pid}/fd/${fd}`).startsWith('socket:')) sockets++;
      } catch {
        // closed meanwhile
      }
    }
    return { all: fds.length, sockets };
  } catch {
    return { all: 0, sockets: 0 };
  }
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** Valid traffic through fetch (keep-alive) for `ms`: returns [sent, ok, failures by reason]. */
async function validTraffic(proxy: string, api: string, ms: number, stats: Stats | undefined): Promise<{ sent: number; ok: number }> {
  const until = Date.now() + ms;
  let sent = 0;
  let ok = 0;
  const worker = async (w: number) => {
    for (let i = 0; Date.now() < until && !interrupted; i++) {
      const url = i % 5 === 4 ? `${api}/v1/instances/${SERVICE}` : `${proxy}/${SERVICE}${i % 2 ? '@^1' : ''}/valid/${w}/${i}`;
      sent++;
      try {
        const res = await fetch(url, { signal: AbortSignal.timeout(5000), headers: i % 3 === 0 ? { 'x-stickyid': `user-${w}` } : {} });
        await res.arrayBuffer();
        if (res.status === 200) ok++;
        else if (stats) stats.bump(stats.post.failures, `${url.startsWith(api) ? 'api' : 'proxy'} ${res.status} ${res.headers.get('x-tandem-error') ?? ''}`.trim());
      } catch (err) {
        if (stats) stats.bump(stats.post.failures, err instanceof Error ? `${err.name}: ${err.message}`.slice(0, 100) : String(err));
      }
    }
  };
  await Promise.all(Array.from({ length: 8 }, (_, w) => worker(w)));
  return { sent, ok };
}

/**
 * SIGTERM, as an orchestrator would: the sidecar must drain, deregister its services and exit 0 in time. Then asks the
 * Consul agent what is still registered.
 */
async function gracefulStop(sidecar: Sidecar, consul: string, stats: Stats): Promise<void> {
  log('SIGTERM to the sidecar: it must deregister its services and exit');
  const held = fdCount(sidecar.pid);
  const t = Date.now();
  sidecar.child.kill('SIGTERM');
  const exited = await Promise.race([sidecar.exited.then(() => true), sleep(SHUTDOWN_MS).then(() => false)]);
  const ms = Date.now() - t;
  await sleep(300); // the last stderr lines
  if (!exited) {
    stats.violation(
      `the sidecar did not exit within ${SHUTDOWN_MS / 1000} s of SIGTERM (graceful shutdown hung; killed with SIGKILL)`,
      `it held ${held.all} fds (${held.sockets} sockets) when SIGTERM was sent, with no client connection of ours open; last stderr: ${esc(sidecar.stderrTail().slice(-600), 600)}`,
    );
    sidecar.child.kill('SIGKILL');
    await sidecar.exited;
  } else if (sidecar.child.exitCode !== 0) {
    stats.violation('the sidecar did not exit 0 on SIGTERM', `exit ${String(sidecar.child.exitCode ?? sidecar.child.signalCode)}; last stderr: ${esc(sidecar.stderrTail().slice(-600), 600)}`);
  }
  stats.shutdown = { ms, status: exited ? String(sidecar.child.exitCode ?? sidecar.child.signalCode) : 'SIGKILL', killed: !exited };
  try {
    const res = await fetch(`${consul}/v1/agent/services`, { signal: AbortSignal.timeout(3000) });
    const body: unknown = await res.json();
    const names = isRecord(body) ? Object.values(body).flatMap((v) => (isRecord(v) && typeof v['Service'] === 'string' && v['Service'] !== 'consul' ? [v['Service']] : [])) : [];
    if (names.length > 0) stats.finding('services still registered in Consul after the sidecar stopped', `${names.length}: ${[...new Set(names)].slice(0, 12).join(', ')}`);
  } catch (err) {
    log(`could not list Consul's services after the stop: ${err instanceof Error ? err.message : String(err)}`);
  }
}

// ---------------------------------------------------------------------------------------------------
// The run

interface Run {
  ctx: Ctx;
  settings: Settings;
  stats: Stats;
  sidecar: Sidecar;
}

async function runOne(run: Run, c: FuzzCase): Promise<ConnResult> {
  const port = c.listener === 'proxy' ? run.ctx.proxyPort : run.ctx.apiPort;
  run.stats.connections++;
  run.stats.bump(run.stats.cases, c.gen);
  const result = await runConnection(port, c);
  if (result.written) run.stats.requestsSent += c.methods.length;
  checkCase(c, result, run.stats);
  return result;
}

async function monitor(run: Run, until: () => boolean): Promise<void> {
  const { sidecar, stats } = run;
  while (!until()) {
    const alive = sidecar.child.exitCode === null && sidecar.child.signalCode === null && pidAlive(sidecar.pid);
    if (!alive) {
      stats.crash ??= `tandem exited (${String(sidecar.child.exitCode ?? sidecar.child.signalCode)}); last stderr:\n${sidecar.stderrTail().slice(-3000)}`;
      stopWriting = true;
      return;
    }
    stats.rss.peak = Math.max(stats.rss.peak, readRssKiB(sidecar.pid));
    try {
      const res = await fetch(`${sidecar.api}/v1/health`, { signal: AbortSignal.timeout(3000) });
      const body: unknown = await res.json();
      if (!res.ok || !isRecord(body) || body['status'] !== 'ok') throw new Error(`answered ${res.status}: ${JSON.stringify(body).slice(0, 200)}`);
      stats.health.ok++;
      stats.health.streak = 0;
    } catch (err) {
      stats.health.failed++;
      stats.health.streak++;
      stats.health.longestStreak = Math.max(stats.health.longestStreak, stats.health.streak);
      stats.health.lastError = err instanceof Error ? err.message : String(err);
      if (stats.health.streak === 3) stats.violation('GET /v1/health failed 3 times in a row', `last: ${stats.health.lastError}`);
    }
    await sleep(1000);
  }
}

async function fuzz(run: Run): Promise<string> {
  const { settings, stats, ctx } = run;
  const start = Date.now();
  const deadline = start + settings.seconds * 1000;
  const budgetLeft = () => settings.maxRequests - stats.requestsSent;
  // A bug in this file must not leave connections running behind the cleanup: stop everything, then rethrow.
  let failure: unknown;
  const guard = async (fn: () => Promise<void>): Promise<void> => {
    try {
      await fn();
    } catch (err) {
      failure ??= err;
      stopWriting = true;
    }
  };
  const running = () => failure === undefined && !interrupted && !stats.crash && Date.now() < deadline && budgetLeft() > 0;
  /** Sleeps `ms`, or less once the run is over. */
  const pause = async (ms: number): Promise<void> => {
    const until = Date.now() + ms;
    while (running() && Date.now() < until) await sleep(Math.min(100, until - Date.now()));
  };
  let next = 0;
  const inflight: Promise<void>[] = [];

  // Slowloris connections, opened once 10 % of the run has gone by; they stop writing when the run ends.
  inflight.push(
    guard(async () => {
      await pause(Math.min(settings.seconds * 100, 5000));
      if (!running()) return;
      const n = Math.min(SLOWLORIS, budgetLeft());
      log(`opening ${n} slowloris connections`);
      stats.slow.opened = n;
      await Promise.all(
        Array.from({ length: n }, async (_, i) => {
          const c = slowCase(settings.seed, i, ctx, deadline - Date.now() + 15_000);
          const r = await runOne(run, c);
          const first = r.stream.finals[0];
          if (first) {
            stats.slow.answered++;
            stats.bump(stats.slow.statuses, first.status);
          } else if (r.serverClosed) stats.slow.closedUnanswered++;
          else {
            stats.slow.waiting++;
            stats.slow.longestHeldMs = Math.max(stats.slow.longestHeldMs, r.ms);
          }
        }),
      );
    }),
  );

  // Bursts of BURST_SIZE connections at once.
  for (let k = 0; k < BURSTS; k++) {
    inflight.push(
      guard(async () => {
        await pause(((k + 1) / (BURSTS + 1)) * settings.seconds * 1000);
        if (!running()) return;
        const n = Math.min(BURST_SIZE, budgetLeft());
        log(`burst ${k + 1}/${BURSTS}: ${n} connections at once`);
        stats.bursts.run++;
        const cases = Array.from({ length: n }, (_, i) => burstCase(settings.seed, k, i, ctx));
        await Promise.all(cases.map((c) => runOne(run, c)));
      }),
    );
  }

  // Progress line every 10 s.
  const progress = setInterval(() => {
    const p = stats.classes.proxy;
    log(`${Math.round((Date.now() - start) / 1000)} s: ${stats.requestsSent} requests, proxy 2xx ${p.get('2xx') ?? 0} 4xx ${p.get('4xx') ?? 0} 5xx ${p.get('5xx') ?? 0}, violations ${[...stats.violations.values()].reduce((n, t) => n + t.count, 0)}, rss ${(readRssKiB(run.sidecar.pid) / 1024).toFixed(1)} MiB`);
  }, 10_000);

  const workers = Array.from({ length: settings.concurrency }, () =>
    guard(async () => {
      while (running()) await runOne(run, fuzzCase(settings.seed, next++, ctx));
    }),
  );
  await Promise.all(workers);
  stopWriting = true;
  clearInterval(progress);
  const stoppedBy = interrupted ? 'interrupted' : stats.crash ? 'sidecar crash' : budgetLeft() <= 0 ? 'FUZZ_MAX_REQUESTS' : 'FUZZ_SECONDS';
  log(`stopped (${stoppedBy}) after ${((Date.now() - start) / 1000).toFixed(1)} s; waiting for open connections`);
  await Promise.all(inflight);
  if (failure !== undefined) throw failure;
  return stoppedBy;
}

async function replay(run: Run, id: string): Promise<void> {
  const c = caseById(run.settings.seed, id, run.ctx);
  const all = Buffer.concat(c.parts.map((p) => p.data));
  process.stdout.write(`case ${c.id} (${c.gen}) to the ${c.listener} listener, ${all.length} bytes in ${c.parts.length} part(s):\n${esc(all.toString('latin1'), 4000)}\n\n`);
  const r = await runOne(run, c);
  process.stdout.write(`answer (${r.bytesIn} bytes, ${r.serverClosed ? 'closed by the server' : 'we stopped waiting'}${r.socketError ? `, ${r.socketError}` : ''}):\n${esc(r.rawIn.toString('latin1'), 8000)}\n\n`);
  process.stdout.write(`parsed: ${r.stream.finals.map((f) => f.status).join(', ') || 'no response'}${r.stream.error ? `; parse error: ${r.stream.error}` : ''}\n`);
}

function fmt(n: number): string {
  return n.toLocaleString('en-US');
}

function classLine(m: Map<string, number>): string {
  return ['1xx', '2xx', '3xx', '4xx', '5xx', 'none', 'cut'].map((k) => `${k} ${fmt(m.get(k) ?? 0)}`).join(' | ');
}

function topStatuses(m: Map<number, number>): string {
  return [...m.entries()].sort((a, b) => b[1] - a[1]).slice(0, 12).map(([k, v]) => `${k}×${fmt(v)}`).join(', ') || '—';
}

function tallies(m: Map<string, Tally>): string {
  if (m.size === 0) return '  none\n';
  return [...m.entries()].map(([kind, t]) => `  - ${kind}: ${fmt(t.count)}\n${t.examples.map((e) => `      ${e}`).join('\n')}\n`).join('');
}

function summary(run: Run, stoppedBy: string, seconds: number): string {
  const { stats: s, settings } = run;
  const mib = (k: number) => `${(k / 1024).toFixed(1)} MiB`;
  const ratio = s.rss.baseline > 0 ? s.rss.after / s.rss.baseline : Number.NaN;
  const lines = [
    '',
    '== tandem fuzz summary ==',
    `seed ${settings.seed} (FUZZ_SEED=${settings.seed} repeats the cases), ran ${seconds.toFixed(1)} s, stopped by ${stoppedBy}`,
    `requests sent: ${fmt(s.requestsSent)} on ${fmt(s.connections)} connections (${fmt(s.connectFailures)} could not connect)`,
    `cases: ${[...s.cases.entries()].sort((a, b) => b[1] - a[1]).map(([k, v]) => `${k} ${fmt(v)}`).join(', ')}`,
    `proxy responses: ${classLine(s.classes.proxy)}`,
    `  statuses: ${topStatuses(s.statuses.proxy)}`,
    `api responses:   ${classLine(s.classes.api)}`,
    `  statuses: ${topStatuses(s.statuses.api)}`,
    `  (none = no answer before the connection ended or went idle ${IDLE_MS} ms; cut = we stopped waiting mid-response, e.g. SSE)`,
    `parser-level answers (not the sidecar's shape, accepted for garbage): ${[...s.parserAnswers.entries()].map(([k, v]) => `${k} ×${fmt(v)}`).join('; ') || 'none'}`,
    `error answers to HEAD requests that carried a body anyway (written before the method was known; accepted): ${fmt(s.headBodies)}`,
    `client-side socket errors: ${[...s.socketErrors.entries()].map(([k, v]) => `${k} ×${fmt(v)}`).join(', ') || 'none'}`,
    `slowloris: ${s.slow.opened} opened; answered ${s.slow.answered} (${topStatuses(s.slow.statuses)}), closed unanswered by the server ${s.slow.closedUnanswered}, still unanswered when we gave up ${s.slow.waiting}${s.slow.waiting ? ` (the server held one with an unfinished request head for ${(s.slow.longestHeldMs / 1000).toFixed(1)} s)` : ''}`,
    `bursts: ${s.bursts.run} × up to ${BURST_SIZE} connections; valid GETs answered 2xx: ${s.bursts.validOk}/${s.bursts.valid}`,
    `sidecar: ${s.crash ? `CRASHED: ${s.crash}` : `alive the whole run (pid ${run.sidecar.pid})`}; /v1/health ok ${s.health.ok}, failed ${s.health.failed} (longest failing streak ${s.health.longestStreak}${s.health.lastError ? `, last: ${s.health.lastError}` : ''})`,
    `sidecar stderr: ${s.stderr.lines} lines (warn ${s.stderr.warn}, error+ ${s.stderr.error}, other ${s.stderr.other})${s.stderr.warnMessages.size ? `; warn messages: ${[...s.stderr.warnMessages.entries()].slice(0, 8).map(([k, v]) => `${esc(k, 80)} ×${v}`).join(', ')}` : ''}`,
    `post-run valid traffic: ${fmt(s.post.ok)}/${fmt(s.post.sent)} answered 200${s.post.failures.size ? ` (failures: ${[...s.post.failures.entries()].map(([k, v]) => `${k} ×${v}`).join(', ')})` : ''}`,
    `open fds of the sidecar: baseline ${s.fds.baseline.all} (${s.fds.baseline.sockets} sockets), after ${s.fds.after.all} (${s.fds.after.sockets} sockets) — with all of our fuzz connections closed (watches of up to watch.maxServices services and the upstream pool are legitimate)`,
    `graceful stop (SIGTERM): ${s.shutdown ? (s.shutdown.killed ? `HUNG, killed after ${(s.shutdown.ms / 1000).toFixed(1)} s` : `exited ${s.shutdown.status} after ${(s.shutdown.ms / 1000).toFixed(1)} s`) : 'not tried (crash or interrupted run)'}`,
    `RSS of the sidecar: ${s.rss.after === 0 ? '(no after-reading: the run was cut short) ' : ''}baseline ${mib(s.rss.baseline)} (after warm-up), peak ${mib(s.rss.peak)}, after ${mib(s.rss.after)} (5 s after the post-run traffic) — after/baseline ×${ratio.toFixed(2)}${ratio > 2 ? ' (more than doubled: look for a leak)' : ''}`,
    '',
    `VIOLATIONS (${[...s.violations.values()].reduce((n, t) => n + t.count, 0)}):`,
    tallies(s.violations),
    `FINDINGS, not failing the run (${[...s.findings.values()].reduce((n, t) => n + t.count, 0)}):`,
    tallies(s.findings),
    `result: ${s.violations.size > 0 || s.crash ? 'FAIL' : 'PASS'}`,
    '',
  ];
  return lines.join('\n');
}

async function main(): Promise<number> {
  const settings = readSettings();
  process.on('SIGINT', () => onSignal('SIGINT'));
  process.on('SIGTERM', () => onSignal('SIGTERM'));
  log(`seed ${settings.seed} (FUZZ_SEED=${settings.seed} to repeat)`);
  if (settings.build) await build();
  checkInterrupted();

  const stats = new Stats();
  const agent = new ConsulDevAgent();
  let stateDir: string | undefined;
  let upstream: (Proc & { output: () => string }) | undefined;
  let sidecar: Sidecar | undefined;
  let monitorDone = false;
  let monitoring: Promise<void> | undefined;
  try {
    log('starting a Consul dev agent (deploy/consul/install.sh provides consul)');
    await agent.start();
    checkInterrupted();
    stateDir = await mkdtemp(join(tmpdir(), 'tandem-fuzz-'));
    const [upstreamPort, apiPort, proxyPort] = (await freePorts(3)) as [number, number, number];
    const ctx: Ctx = { proxyPort, apiPort, consulPort: agent.httpPort, upstreamPort };
    log(`upstream on ${HOST}:${upstreamPort}`);
    upstream = await startUpstream(upstreamPort);
    checkInterrupted();
    log(`tandem start: api ${HOST}:${apiPort}, proxy ${HOST}:${proxyPort}, consul ${agent.address}`);
    sidecar = await startSidecar(agent.address, apiPort, proxyPort, stateDir, stats);
    await registerUpstream(sidecar.api, upstreamPort);
    await waitHealthy(sidecar.api, 30_000);
    const run: Run = { ctx, settings, stats, sidecar };
    const proxy = `http://${HOST}:${proxyPort}`;
    monitoring = monitor(run, () => monitorDone || interrupted);

    if (settings.replay !== undefined) {
      await replay(run, settings.replay);
      process.stdout.write(`violations: ${tallies(stats.violations)}findings: ${tallies(stats.findings)}`);
      return stats.violations.size > 0 || stats.crash ? 1 : 0;
    }

    log('warm-up: 2 s of valid requests');
    const warm = await validTraffic(proxy, sidecar.api, 2000, undefined);
    if (warm.ok === 0) throw new Error(`warm-up: none of ${warm.sent} valid requests was answered 200`);
    await sleep(1000);
    stats.rss.baseline = readRssKiB(sidecar.pid);
    stats.rss.peak = stats.rss.baseline;
    stats.fds.baseline = fdCount(sidecar.pid);
    log(`baseline RSS ${(stats.rss.baseline / 1024).toFixed(1)} MiB after ${warm.ok}/${warm.sent} valid warm-up requests`);
    checkInterrupted();

    log(`fuzzing for up to ${settings.seconds} s / ${settings.maxRequests} requests, ${settings.concurrency} connections at a time`);
    const t0 = Date.now();
    const stoppedBy = await fuzz(run);
    const seconds = (Date.now() - t0) / 1000;

    // Interrupted: no post-run phase, but the summary of what ran.
    if (!stats.crash && !interrupted) {
      await sleep(1000);
      log('post-run: 3 s of valid requests');
      const post = await validTraffic(proxy, sidecar.api, 3000, stats);
      stats.post.sent = post.sent;
      stats.post.ok = post.ok;
      if (post.ok < post.sent) stats.violation('valid requests failed after the fuzz run', `${post.sent - post.ok} of ${post.sent} failed: ${[...stats.post.failures.entries()].map(([k, v]) => `${k} ×${v}`).join(', ')}`);
      log('waiting 5 s before reading RSS again');
      await sleep(5000);
      stats.rss.after = readRssKiB(sidecar.pid);
      stats.fds.after = fdCount(sidecar.pid);
    }
    monitorDone = true;
    await monitoring;
    if (stats.crash) stats.violation('sidecar crashed', stats.crash);
    else if (!interrupted) await gracefulStop(sidecar, agent.address, stats);
    process.stdout.write(summary(run, stoppedBy, seconds));
    if (interrupted) return 130;
    return stats.violations.size > 0 || stats.crash ? 1 : 0;
  } catch (err) {
    if (sidecar?.stderrTail().trim()) log(`tandem stderr (tail):\n${sidecar.stderrTail().trim()}`);
    if (upstream?.output().trim()) log(`upstream stderr:\n${upstream.output().trim()}`);
    throw err;
  } finally {
    monitorDone = true;
    stopWriting = true;
    for (const s of openSockets) s.destroy();
    log('cleaning up');
    const step = async (what: string, fn: () => Promise<void>) => {
      const t = Date.now();
      try {
        await fn();
        if (Date.now() - t > 2000) log(`cleanup: ${what} took ${((Date.now() - t) / 1000).toFixed(1)} s`);
      } catch (err) {
        log(`cleanup: ${what} failed: ${err instanceof Error ? err.message : String(err)}`);
      }
    };
    if (monitoring) await step('stop the monitor', () => monitoring ?? Promise.resolve());
    // The sidecar first: it deregisters its services while Consul is still there.
    if (sidecar) {
      const s = sidecar;
      await step('stop tandem', () => stopChild(s.child, s.exited, 20_000));
    }
    if (upstream) {
      const u = upstream;
      await step('stop upstream', () => stopChild(u.child, u.exited, 3_000));
    }
    await step('stop consul', () => agent.stop());
    if (stateDir) {
      const d = stateDir;
      await step('remove temp dir', () => rm(d, { recursive: true, force: true }));
    }
  }
}

// ---------------------------------------------------------------------------------------------------
// Upstream mode: `fuzz.ts --upstream <port>` answers every request with what it received, as JSON

async function upstreamMain(args: readonly string[]): Promise<void> {
  const port = Number(args[0]);
  if (!Number.isInteger(port) || port < 1 || port > 65535) {
    process.stderr.write(`usage: fuzz.ts --upstream <port> (got ${args.join(' ')})\n`);
    process.exit(2);
  }
  const server: Server = createServer({ maxHeaderSize: 64 * 1024 }, (req, res) => {
    let bodyBytes = 0;
    req.on('data', (c: Buffer) => (bodyBytes += c.length));
    req.on('error', () => res.destroy());
    req.on('end', () => {
      const body = JSON.stringify({ service: SERVICE, method: req.method, url: req.url, headers: Object.keys(req.headers), bodyBytes });
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
      res.end(body);
    });
  });
  server.keepAliveTimeout = 65_000;
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, HOST, () => {
      server.removeListener('error', reject);
      resolve();
    });
  });
  let stopping = false;
  const stop = () => {
    if (stopping) return;
    stopping = true;
    server.closeAllConnections();
    server.close();
    setTimeout(() => process.exit(0), 1000).unref();
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
  process.stdin.on('end', stop);
  process.stdin.on('error', stop);
  process.stdin.resume();
  process.stdout.write('ready\n');
}

if (process.argv[2] === '--upstream') {
  void upstreamMain(process.argv.slice(3));
} else {
  main().then(
    (code) => {
      process.exitCode = interrupted ? 130 : code;
    },
    (err: unknown) => {
      process.stderr.write(`[fuzz] failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
      process.exitCode = interrupted ? 130 : 1;
    },
  );
}
