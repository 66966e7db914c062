// Micro-benchmark of the HTTP/1.1 head parser: ns per parse of a typical request head and response head, llhttp beside it.
//
//   node --import tsx bench/http1-parser.ts        (HTTP1_BENCH_ITERATIONS=200000 by default, 7 rounds, median printed)
//
// The llhttp line is Node's own parser driven through `node:_http_common` with the callbacks node:http installs
// reduced to no-ops: a floor for what node:http pays for framing alone, not for what node:http costs per request.
import { createRequire } from 'node:module';
import { parseRequestHead } from '../src/proxy/http1/request-head.ts';
import { parseResponseHead } from '../src/proxy/http1/response-head.ts';
import { DEFAULT_HEAD_LIMITS } from '../src/proxy/http1/head-types.ts';

const ITERATIONS = Number(process.env['HTTP1_BENCH_ITERATIONS'] ?? 200_000);
const ROUNDS = 7;

const REQUEST = Buffer.from(
  'GET /greeter/api/v1/users/12345/orders?include=items&limit=20 HTTP/1.1\r\n' +
    'Host: greeter.service.consul\r\n' +
    'User-Agent: axios/1.7.9\r\n' +
    'Accept: application/json, text/plain, */*\r\n' +
    'Accept-Encoding: gzip, compress, deflate, br\r\n' +
    'X-Tandem-Version: ^1.2\r\n' +
    'X-Request-Id: 7f3c2a9e-4b1d-4c8e-9a6f-2d5e8b1c0f47\r\n' +
    'Connection: keep-alive\r\n' +
    '\r\n',
  'latin1',
);
const RESPONSE = Buffer.from(
  'HTTP/1.1 200 OK\r\n' +
    'Content-Type: application/json; charset=utf-8\r\n' +
    'Content-Length: 1432\r\n' +
    'Date: Thu, 26 Nov 2026 10:00:00 GMT\r\n' +
    'Connection: keep-alive\r\n' +
    'Keep-Alive: timeout=5\r\n' +
    '\r\n',
  'latin1',
);

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)] ?? NaN;
}

function measure(name: string, bytes: number, fn: () => unknown): void {
  for (let i = 0; i < 20_000; i++) fn();
  const perRound: number[] = [];
  for (let r = 0; r < ROUNDS; r++) {
    const t0 = process.hrtime.bigint();
    for (let i = 0; i < ITERATIONS; i++) fn();
    perRound.push(Number(process.hrtime.bigint() - t0) / ITERATIONS);
  }
  process.stdout.write(`${name.padEnd(40)} ${bytes} B  ${median(perRound).toFixed(0).padStart(6)} ns/parse (rounds: ${perRound.map((x) => x.toFixed(0)).join(' ')})\n`);
}

interface LlhttpParser {
  initialize(type: number, resource: object, maxHeaderSize: number, lenient: number): void;
  execute(buf: Buffer): number | Error;
  [k: number]: unknown;
}
interface HttpCommon {
  HTTPParser: { new (): LlhttpParser; REQUEST: number; RESPONSE: number; kOnHeadersComplete: number; kOnMessageComplete: number; kOnBody: number; kLenientNone: number };
}

function llhttp(type: 'REQUEST' | 'RESPONSE'): () => void {
  const { HTTPParser } = createRequire(import.meta.url)('_http_common') as HttpCommon;
  const p = new HTTPParser();
  p.initialize(HTTPParser[type], {}, 0, HTTPParser.kLenientNone);
  p[HTTPParser.kOnHeadersComplete] = () => 0;
  p[HTTPParser.kOnMessageComplete] = () => undefined;
  p[HTTPParser.kOnBody] = () => undefined;
  // Bodyless keep-alive messages: the parser restarts by itself after each one.
  const buf = type === 'REQUEST' ? REQUEST : Buffer.from(RESPONSE.toString('latin1').replace('Content-Length: 1432', 'Content-Length: 0'), 'latin1');
  return () => {
    const r = p.execute(buf);
    if (typeof r !== 'number') throw r;
  };
}

process.stdout.write(`node ${process.version}, ${ITERATIONS} parses per round, ${ROUNDS} rounds\n`);
let sink = 0;
measure('parseRequestHead', REQUEST.length, () => {
  const h = parseRequestHead(REQUEST, 0, DEFAULT_HEAD_LIMITS);
  if (h.kind !== 'head') throw new Error('request head did not parse');
  sink += h.length;
});
measure('parseResponseHead', RESPONSE.length, () => {
  const h = parseResponseHead(RESPONSE, 0, DEFAULT_HEAD_LIMITS, 'GET');
  if (h.kind !== 'head') throw new Error('response head did not parse');
  sink += h.length;
});
measure('llhttp (node:_http_common) request', REQUEST.length, llhttp('REQUEST'));
measure('llhttp (node:_http_common) response', RESPONSE.length, llhttp('RESPONSE'));
if (sink === 0) process.stdout.write('(unreachable)\n');
