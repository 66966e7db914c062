// Hop-by-hop header handling: request headers for the upstream and response headers for the client.
import assert from 'node:assert/strict';
import type { IncomingHttpHeaders } from 'node:http';
import { test } from 'node:test';
import { egressRequestHeaders, stripResponseHeaders, upstreamRequestHeaders } from '../../src/proxy/headers.ts';

/** The parsed view Node would give for a raw header list (lower-case names, repeated values joined). */
function parsed(raw: readonly string[]): IncomingHttpHeaders {
  const out: Record<string, string> = {};
  for (let i = 0; i < raw.length; i += 2) {
    const name = (raw[i] as string).toLowerCase();
    const value = raw[i + 1] as string;
    out[name] = out[name] === undefined ? value : `${out[name]}, ${value}`;
  }
  return out;
}

function pairs(flat: readonly string[]): [string, string][] {
  const out: [string, string][] = [];
  for (let i = 0; i < flat.length; i += 2) out.push([flat[i] as string, flat[i + 1] as string]);
  return out;
}

test('hop-by-hop request headers are dropped, the rest kept in order with their case', () => {
  const raw = [
    'Host', 'users.service.consul',
    'Connection', 'keep-alive, X-Hop-Custom',
    'Keep-Alive', 'timeout=5',
    'TE', 'trailers',
    'Trailer', 'X-Checksum',
    'Transfer-Encoding', 'chunked',
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
  assert.deepEqual(pairs(upstreamRequestHeaders(raw, parsed(raw), '10.0.0.9')), [
    ['Accept', 'application/json'],
    ['Authorization', 'Bearer t'],
    ['Content-Type', 'text/plain'],
    ['Cookie', 'a=1'],
    ['Cookie', 'b=2'],
    ['x-forwarded-for', '10.0.0.9'],
    ['x-forwarded-proto', 'http'],
    ['x-forwarded-host', 'users.service.consul'],
  ]);
});

test('headers named in Connection are dropped, whatever their case', () => {
  const raw = ['Connection', 'Close', 'Connection', 'x-a , X-B', 'X-A', '1', 'x-b', '2', 'x-c', '3'];
  assert.deepEqual(pairs(upstreamRequestHeaders(raw, parsed(raw), '10.0.0.9')).map(([n]) => n), ['x-c', 'x-forwarded-for', 'x-forwarded-proto']);
});

test('x-forwarded-for is appended to, x-forwarded-proto and -host are replaced', () => {
  const raw = ['host', 'api.local:7700', 'X-Forwarded-For', '1.1.1.1', 'x-forwarded-for', '2.2.2.2, 3.3.3.3', 'X-Forwarded-Proto', 'https', 'X-Forwarded-Host', 'spoofed.example'];
  assert.deepEqual(pairs(upstreamRequestHeaders(raw, parsed(raw), '::1')), [
    ['x-forwarded-for', '1.1.1.1, 2.2.2.2, 3.3.3.3, ::1'],
    ['x-forwarded-proto', 'http'],
    ['x-forwarded-host', 'api.local:7700'],
  ]);
});

test('an unknown peer and a missing host still give x-forwarded headers', () => {
  assert.deepEqual(pairs(upstreamRequestHeaders(['accept', '*/*'], { accept: '*/*' }, undefined)), [
    ['accept', '*/*'],
    ['x-forwarded-for', 'unknown'],
    ['x-forwarded-proto', 'http'],
  ]);
});

test('websocket handshake headers other than connection/upgrade pass', () => {
  const raw = ['Connection', 'Upgrade', 'Upgrade', 'websocket', 'Sec-WebSocket-Key', 'dGhlIHNhbXBsZSBub25jZQ==', 'Sec-WebSocket-Version', '13'];
  assert.deepEqual(pairs(upstreamRequestHeaders(raw, parsed(raw), '10.0.0.9')).map(([n]) => n), ['Sec-WebSocket-Key', 'Sec-WebSocket-Version', 'x-forwarded-for', 'x-forwarded-proto']);
});

test('the input arrays are left as they are', () => {
  const raw = ['Connection', 'close', 'accept', '*/*'];
  const copy = [...raw];
  upstreamRequestHeaders(raw, parsed(raw), '10.0.0.9');
  assert.deepEqual(raw, copy);
});

test('stripResponseHeaders removes hop-by-hop headers in place', () => {
  const headers: IncomingHttpHeaders = {
    connection: 'keep-alive, x-internal',
    'keep-alive': 'timeout=5',
    'proxy-connection': 'keep-alive',
    'transfer-encoding': 'chunked',
    te: 'trailers',
    trailer: 'x-checksum',
    upgrade: 'h2c',
    'proxy-authenticate': 'Basic',
    'x-internal': 'yes',
    'content-type': 'application/json',
    'content-length': '2',
    'set-cookie': ['a=1', 'b=2'],
    'cache-control': 'no-store',
  };
  const out = stripResponseHeaders(headers);
  assert.equal(out, headers);
  assert.deepEqual(out, { 'content-type': 'application/json', 'content-length': '2', 'set-cookie': ['a=1', 'b=2'], 'cache-control': 'no-store' });
});

test('stripResponseHeaders with a plain close', () => {
  assert.deepEqual(stripResponseHeaders({ connection: 'close', 'x-a': '1' }), { 'x-a': '1' });
  assert.deepEqual(stripResponseHeaders({ 'x-a': '1' }), { 'x-a': '1' });
});

test("an upstream's own x-tandem-error, -instance, -sticky and -broadcast are removed; other x-tandem-* and app headers stay", () => {
  const h: IncomingHttpHeaders = { 'x-tandem-error': 'TANDEM_ERR_FAKE', 'x-tandem-instance': 'other', 'x-tandem-sticky': 'moved', 'x-tandem-broadcast': '3', 'x-tandem-app-thing': 'kept', 'retry-after': '7' };
  assert.deepEqual(stripResponseHeaders(h), { 'x-tandem-app-thing': 'kept', 'retry-after': '7' });
});

test('egress request headers: host is the target, hop-by-hop and x-tandem-* dropped, nothing added', () => {
  const raw = ['Host', 'proxy:7700', 'Proxy-Authorization', 'Basic x', 'X-Tandem-Version', '2', 'Connection', 'keep-alive, X-Drop', 'X-Drop', '1', 'Accept', '*/*', 'X-Forwarded-For', '10.0.0.1'];
  assert.deepEqual(pairs(egressRequestHeaders(raw, parsed(raw), 'example.com:8080')), [
    ['host', 'example.com:8080'],
    ['Accept', '*/*'],
    ['X-Forwarded-For', '10.0.0.1'],
  ]);
});
