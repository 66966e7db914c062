// Hop-by-hop header handling: request header lines for the upstream and response header lines for the client, on the parser's output.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { egressRequestLines, responseLines, upstreamRequestLines } from '../../src/proxy/headers.ts';
import { DEFAULT_HEAD_LIMITS } from '../../src/proxy/http1/head-types.ts';
import { parseRequestHead } from '../../src/proxy/http1/request-head.ts';
import { parseResponseHead } from '../../src/proxy/http1/response-head.ts';

/** The parser's view of a request with these fields (flat lower-case names, Connection tokens). */
function request(fields: readonly string[]): { headers: string[]; connection: readonly string[] } {
  const text = `GET / HTTP/1.1\r\n${fields.map((f, i) => (i % 2 === 0 ? `${f}: ${fields[i + 1]}\r\n` : '')).join('')}\r\n`;
  const r = parseRequestHead(Buffer.from(text, 'latin1'), 0, DEFAULT_HEAD_LIMITS);
  assert.equal(r.kind, 'head', text);
  return r as { headers: string[]; connection: readonly string[] };
}

function response(fields: readonly string[]): { headers: string[]; connection: readonly string[] } {
  const text = `HTTP/1.1 200 OK\r\n${fields.map((f, i) => (i % 2 === 0 ? `${f}: ${fields[i + 1]}\r\n` : '')).join('')}\r\n`;
  const r = parseResponseHead(Buffer.from(text, 'latin1'), 0, DEFAULT_HEAD_LIMITS, 'GET');
  assert.equal(r.kind, 'head', text);
  return r as { headers: string[]; connection: readonly string[] };
}

function pairs(lines: string): [string, string][] {
  return lines
    .split('\r\n')
    .filter(Boolean)
    .map((l) => [l.slice(0, l.indexOf(':')), l.slice(l.indexOf(':') + 2)]);
}

function upstream(fields: readonly string[], remote: string | undefined): [string, string][] {
  const r = request(['Host', 'x', ...fields]);
  return pairs(upstreamRequestLines(r.headers, r.connection, remote)).filter(([n, v]) => !(n === 'x-forwarded-host' && v === 'x'));
}

test('hop-by-hop request headers are dropped, the rest kept in order', () => {
  const fields = [
    'Connection', 'keep-alive, X-Hop-Custom',
    'Keep-Alive', 'timeout=5',
    'TE', 'trailers',
    'Trailer', 'X-Checksum',
    'Upgrade', 'h2c',
    'Proxy-Authorization', 'Basic Zm9vOmJhcg==',
    'Proxy-Connection', 'keep-alive',
    'Expect', '100-continue',
    'X-Hop-Custom', 'secret',
    'Accept', 'application/json',
    'Authorization', 'Bearer t',
    'Content-Type', 'text/plain',
    'Cookie', 'a=1',
    'Cookie', 'b=2',
  ];
  assert.deepEqual(upstream(fields, '10.0.0.9'), [
    ['accept', 'application/json'],
    ['authorization', 'Bearer t'],
    ['content-type', 'text/plain'],
    ['cookie', 'a=1'],
    ['cookie', 'b=2'],
    ['x-forwarded-for', '10.0.0.9'],
    ['x-forwarded-proto', 'http'],
  ]);
});

test('headers named in Connection are dropped, whatever their case', () => {
  const fields = ['Connection', 'Close', 'Connection', 'x-a , X-B', 'X-A', '1', 'x-b', '2', 'x-c', '3'];
  assert.deepEqual(upstream(fields, '10.0.0.9').map(([n]) => n), ['x-c', 'x-forwarded-for', 'x-forwarded-proto']);
});

test('x-forwarded-for is appended to, x-forwarded-proto and -host are replaced', () => {
  const r = request(['host', 'api.local:7700', 'X-Forwarded-For', '1.1.1.1', 'x-forwarded-for', '2.2.2.2, 3.3.3.3', 'X-Forwarded-Proto', 'https', 'X-Forwarded-Host', 'spoofed.example']);
  assert.deepEqual(pairs(upstreamRequestLines(r.headers, r.connection, '::1')), [
    ['x-forwarded-for', '1.1.1.1, 2.2.2.2, 3.3.3.3, ::1'],
    ['x-forwarded-proto', 'http'],
    ['x-forwarded-host', 'api.local:7700'],
  ]);
});

test('an unknown peer and a missing host still give x-forwarded headers', () => {
  assert.deepEqual(pairs(upstreamRequestLines(['accept', '*/*'], [], undefined)), [
    ['accept', '*/*'],
    ['x-forwarded-for', 'unknown'],
    ['x-forwarded-proto', 'http'],
  ]);
});

test('websocket handshake headers other than connection/upgrade pass', () => {
  const fields = ['Connection', 'Upgrade', 'Upgrade', 'websocket', 'Sec-WebSocket-Key', 'dGhlIHNhbXBsZSBub25jZQ==', 'Sec-WebSocket-Version', '13'];
  assert.deepEqual(upstream(fields, '10.0.0.9').map(([n]) => n), ['sec-websocket-key', 'sec-websocket-version', 'x-forwarded-for', 'x-forwarded-proto']);
});

test('response lines drop hop-by-hop fields (framing but content-length) and those named in Connection', () => {
  const r = response([
    'connection', 'keep-alive, x-internal',
    'keep-alive', 'timeout=5',
    'proxy-connection', 'keep-alive',
    'te', 'trailers',
    'trailer', 'x-checksum',
    'upgrade', 'h2c',
    'proxy-authenticate', 'Basic',
    'x-internal', 'yes',
    'content-type', 'application/json',
    'content-length', '2',
    'set-cookie', 'a=1',
    'set-cookie', 'b=2',
    'cache-control', 'no-store',
  ]);
  assert.deepEqual(pairs(responseLines(r.headers, r.connection)), [
    ['content-type', 'application/json'],
    ['content-length', '2'],
    ['set-cookie', 'a=1'],
    ['set-cookie', 'b=2'],
    ['cache-control', 'no-store'],
  ]);
  const chunked = response(['transfer-encoding', 'chunked', 'x-a', '1']);
  assert.deepEqual(pairs(responseLines(chunked.headers, chunked.connection)), [['x-a', '1']]);
});

test("an upstream's own x-tandem-error, -instance, -sticky and -broadcast are removed; other x-tandem-* and app headers stay", () => {
  const r = response(['x-tandem-error', 'TANDEM_ERR_FAKE', 'x-tandem-instance', 'other', 'x-tandem-sticky', 'moved', 'x-tandem-broadcast', '3', 'x-tandem-app-thing', 'kept', 'retry-after', '7']);
  assert.deepEqual(pairs(responseLines(r.headers, r.connection)), [
    ['x-tandem-app-thing', 'kept'],
    ['retry-after', '7'],
  ]);
});

test('egress request headers: host is the target, hop-by-hop and x-tandem-* dropped, nothing added', () => {
  const r = request(['Host', 'proxy:7700', 'Proxy-Authorization', 'Basic x', 'X-Tandem-Version', '2', 'Connection', 'keep-alive, X-Drop', 'X-Drop', '1', 'Accept', '*/*', 'X-Forwarded-For', '10.0.0.1']);
  assert.deepEqual(pairs(egressRequestLines(r.headers, r.connection, 'example.com:8080')), [
    ['host', 'example.com:8080'],
    ['accept', '*/*'],
    ['x-forwarded-for', '10.0.0.1'],
  ]);
});
