// The strict HTTP/1.1 parser: each refusal rule, each framing case, incremental input and pipelined messages.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { ChunkedBodyScanner, CloseDelimitedBodyScanner, ContentLengthBodyScanner, createBodyScanner } from '../../src/proxy/http1/body-scanner.ts';
import { DEFAULT_HEAD_LIMITS, type HeadLimits, type RequestHead, type RequestHeadResult, type ResponseHead, type ResponseHeadResult } from '../../src/proxy/http1/head-types.ts';
import { parseRequestHead } from '../../src/proxy/http1/request-head.ts';
import { parseResponseHead } from '../../src/proxy/http1/response-head.ts';

const L = DEFAULT_HEAD_LIMITS;
const b = (s: string): Buffer => Buffer.from(s, 'latin1');
const req = (s: string, limits: HeadLimits = L, offset = 0): RequestHeadResult => parseRequestHead(b(s), offset, limits);
const res = (s: string, method = 'GET', limits: HeadLimits = L): ResponseHeadResult => parseResponseHead(b(s), 0, limits, method);

function head(r: RequestHeadResult): RequestHead;
function head(r: ResponseHeadResult): ResponseHead;
function head(r: RequestHeadResult | ResponseHeadResult): RequestHead | ResponseHead {
  assert.equal(r.kind, 'head', `expected a head, got ${JSON.stringify(r)}`);
  return r as RequestHead | ResponseHead;
}

function refused(r: RequestHeadResult | ResponseHeadResult, status: number, code: string, what = ''): void {
  assert.equal(r.kind, 'error', `${what}: expected ${status} ${code}, got ${JSON.stringify(r)}`);
  if (r.kind === 'error') assert.deepEqual([r.status, r.code], [status, code], `${what}: ${r.reason}`);
}

const H = 'Host: svc\r\n';

test('a GET head: method, target, version, lower-cased names with raw values, length, framing', () => {
  const text = `GET /users/1?x=%20y HTTP/1.1\r\nHost: svc.service.consul\r\nUser-Agent: curl/8\r\nX-Custom: A b\t \r\nAccept:*/*\r\n\r\n`;
  const h = head(req(text));
  assert.equal(h.method, 'GET');
  assert.equal(h.target, '/users/1?x=%20y');
  assert.equal(h.versionMinor, 1);
  assert.deepEqual(h.headers, ['host', 'svc.service.consul', 'user-agent', 'curl/8', 'x-custom', 'A b', 'accept', '*/*']);
  assert.equal(h.length, text.length);
  assert.equal(h.framing, 'none');
  assert.equal(h.contentLength, -1);
  assert.equal(h.keepAlive, true);
  assert.equal(h.host, 'svc.service.consul');
  assert.equal(h.isUpgrade, false);
});

test('values keep obs-text bytes and inner tabs; names are matched case-insensitively', () => {
  const h = head(req(`GET / HTTP/1.1\r\nHOST: a\r\nX-Obs: caf\xe9\r\nX-Tab: a\tb\r\nX-Empty:\r\n\r\n`));
  assert.deepEqual(h.headers, ['host', 'a', 'x-obs', 'caf\xe9', 'x-tab', 'a\tb', 'x-empty', '']);
  assert.equal(h.host, 'a');
});

test('empty lines before a request line are skipped and counted in its length', () => {
  const text = `\r\n\r\nGET / HTTP/1.1\r\n${H}\r\n`;
  const h = head(req(text));
  assert.equal(h.length, text.length);
  assert.equal(req('\r\n\r\n').kind, 'incomplete');
});

test('an incomplete head is incomplete at every byte until the blank line', () => {
  const text = `POST /a HTTP/1.1\r\n${H}Content-Length: 3\r\n\r\n`;
  for (let i = 0; i < text.length; i++) assert.equal(req(text.slice(0, i)).kind, 'incomplete', `at ${i}`);
  assert.equal(head(req(text)).contentLength, 3);
});

test('framing of requests: content-length, zero length, chunked, none', () => {
  const cl = head(req(`POST / HTTP/1.1\r\n${H}Content-Length: 42\r\n\r\n`));
  assert.deepEqual([cl.framing, cl.contentLength], ['length', 42]);
  const zero = head(req(`POST / HTTP/1.1\r\n${H}Content-Length: 0\r\n\r\n`));
  assert.deepEqual([zero.framing, zero.contentLength], ['none', 0]);
  assert.equal(head(req(`POST / HTTP/1.1\r\n${H}Transfer-Encoding: chunked\r\n\r\n`)).framing, 'chunked');
  assert.equal(head(req(`POST / HTTP/1.1\r\n${H}Transfer-Encoding: Chunked \r\n\r\n`)).framing, 'chunked');
  assert.equal(head(req(`POST / HTTP/1.1\r\n${H}Content-Length: 007\r\n\r\n`)).contentLength, 7);
});

test('pipelined requests in one buffer parse at the right offsets', () => {
  const first = `GET /a HTTP/1.1\r\n${H}\r\n`;
  const second = `POST /b HTTP/1.1\r\n${H}Content-Length: 5\r\n\r\n`;
  const third = `GET /c HTTP/1.1\r\n${H}\r\n`;
  const buf = b(first + second + 'hello' + third);
  const a = head(parseRequestHead(buf, 0, L));
  assert.deepEqual([a.target, a.length], ['/a', first.length]);
  const c = head(parseRequestHead(buf, a.length, L));
  assert.deepEqual([c.target, c.length, c.contentLength], ['/b', second.length, 5]);
  const d = head(parseRequestHead(buf, a.length + c.length + 5, L));
  assert.deepEqual([d.target, d.length], ['/c', third.length]);
});

test('keep-alive: HTTP/1.1 unless close, HTTP/1.0 only with keep-alive, never with close', () => {
  const ka = (text: string): boolean => head(req(text)).keepAlive;
  assert.equal(ka(`GET / HTTP/1.1\r\n${H}\r\n`), true);
  assert.equal(ka(`GET / HTTP/1.1\r\n${H}Connection: close\r\n\r\n`), false);
  assert.equal(ka(`GET / HTTP/1.1\r\n${H}Connection: x-a, CLOSE\r\n\r\n`), false);
  assert.equal(ka(`GET / HTTP/1.1\r\n${H}Proxy-Connection: close\r\n\r\n`), false, 'as llhttp: Proxy-Connection counts too');
  assert.equal(ka(`GET / HTTP/1.0\r\n\r\n`), false);
  assert.equal(ka(`GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n`), true);
  assert.equal(ka(`GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n`), false, 'llhttp would keep this alive');
  assert.deepEqual(head(req(`GET / HTTP/1.1\r\n${H}Connection: Keep-Alive, X-Hop ,, te\r\n\r\n`)).connection, ['keep-alive', 'x-hop', 'te']);
});

test('Expect, Upgrade, CONNECT and Trailer are reported', () => {
  assert.equal(head(req(`POST / HTTP/1.1\r\n${H}Expect: 100-Continue\r\nContent-Length: 1\r\n\r\n`)).expectContinue, true);
  const other = head(req(`POST / HTTP/1.1\r\n${H}Expect: 200-ok\r\n\r\n`));
  assert.deepEqual([other.expect, other.expectContinue], ['200-ok', false]);
  const ws = head(req(`GET /ws HTTP/1.1\r\n${H}Connection: Upgrade\r\nUpgrade: websocket\r\n\r\n`));
  assert.deepEqual([ws.isUpgrade, ws.upgrade], [true, 'websocket']);
  assert.equal(head(req(`GET / HTTP/1.1\r\n${H}Upgrade: websocket\r\n\r\n`)).isUpgrade, false, 'Upgrade without Connection: upgrade');
  const connect = head(req(`CONNECT svc.service.consul:80 HTTP/1.1\r\nHost: svc.service.consul:80\r\n\r\n`));
  assert.deepEqual([connect.method, connect.target, connect.isUpgrade, connect.framing], ['CONNECT', 'svc.service.consul:80', true, 'none']);
  assert.equal(head(req(`POST / HTTP/1.1\r\n${H}Trailer: X-Sum\r\nTransfer-Encoding: chunked\r\n\r\n`)).trailer, true);
});

test('target forms: origin, absolute, asterisk, authority (CONNECT only)', () => {
  assert.equal(head(req(`GET http://svc.service.consul/x?y HTTP/1.1\r\n${H}\r\n`)).target, 'http://svc.service.consul/x?y');
  assert.equal(head(req(`GET http://user:pw@svc HTTP/1.1\r\n${H}\r\n`)).target, 'http://user:pw@svc');
  assert.equal(head(req(`OPTIONS * HTTP/1.1\r\n${H}\r\n`)).target, '*');
  for (const t of ['*x', 'a/b', '%2F', 'http:/x', 'h2c://x/', 'http://a#b', 'http://a@@b/', '/a\x7fb', '/caf\xe9']) refused(req(`GET ${t} HTTP/1.1\r\n${H}\r\n`), 400, 'bad-target', t);
  for (const t of ['host:1/x', 'a@b:1', 'h?x:1']) refused(req(`CONNECT ${t} HTTP/1.1\r\n${H}\r\n`), 400, 'bad-target', t);
});

test('refused: Content-Length with Transfer-Encoding, in either order', () => {
  refused(req(`POST / HTTP/1.1\r\n${H}Content-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n`), 400, 'content-length-with-transfer-encoding');
  refused(req(`POST / HTTP/1.1\r\n${H}Transfer-Encoding: chunked\r\nContent-Length: 6\r\n\r\n`), 400, 'content-length-with-transfer-encoding');
  refused(res(`HTTP/1.1 200 OK\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n`), 400, 'content-length-with-transfer-encoding');
});

test('refused: a second Content-Length, even an identical one (as llhttp), and malformed lengths', () => {
  refused(req(`POST / HTTP/1.1\r\n${H}Content-Length: 5\r\nContent-Length: 5\r\n\r\n`), 400, 'duplicate-content-length');
  refused(req(`POST / HTTP/1.1\r\n${H}Content-Length: 5\r\nContent-Length: 6\r\n\r\n`), 400, 'duplicate-content-length');
  for (const v of ['', '+5', '-1', '5,5', '5, 5', '0x5', '5 5', '1e3', '1'.repeat(17), '9007199254740992']) {
    refused(req(`POST / HTTP/1.1\r\n${H}Content-Length: ${v}\r\n\r\n`), 400, 'bad-content-length', v);
  }
  assert.equal(head(req(`POST / HTTP/1.1\r\n${H}Content-Length: 9007199254740991\r\n\r\n`)).contentLength, Number.MAX_SAFE_INTEGER);
});

test('refused: request transfer codings other than a final chunked', () => {
  const te = (v: string): RequestHeadResult => req(`POST / HTTP/1.1\r\n${H}Transfer-Encoding: ${v}\r\n\r\n`);
  for (const v of ['gzip', 'identity', 'chunked, gzip', 'xchunked', 'chunked;q=1', ', chunked', 'chunked,', '"chunked"', 'chunked\t', 'chun ked', '']) refused(te(v), 400, 'bad-transfer-encoding', v);
  refused(req(`POST / HTTP/1.1\r\n${H}Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n`), 400, 'bad-transfer-encoding', 'chunked twice');
  refused(te('gzip, chunked'), 501, 'unsupported-transfer-encoding');
  refused(req(`POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n`), 400, 'transfer-encoding-in-http10');
  refused(req(`CONNECT a:1 HTTP/1.1\r\n${H}Content-Length: 1\r\n\r\n`), 400, 'connect-with-body');
});

test('refused: obs-fold and whitespace before the first field', () => {
  refused(req(`GET / HTTP/1.1\r\n${H}X: a\r\n b\r\n\r\n`), 400, 'obs-fold');
  refused(req(`GET / HTTP/1.1\r\n${H}X: a\r\n\tb\r\n\r\n`), 400, 'obs-fold');
  refused(req(`GET / HTTP/1.1\r\n Host: a\r\n\r\n`), 400, 'obs-fold');
});

test('refused: bare LF and bare CR line ends, complete or not', () => {
  refused(req(`GET / HTTP/1.1\n${H}\r\n`), 400, 'bare-lf', 'request line');
  refused(req(`GET / HTTP/1.1\r\nHost: a\nX: b\r\n\r\n`), 400, 'bare-lf', 'field line');
  refused(req(`GET / HTTP/1.1\r\nHost: a\r\n\n\r\n\r\n`), 400, 'bare-lf', 'blank line');
  refused(req(`GET / HTTP/1.1\nHost: a\n`), 400, 'bare-lf', 'incomplete, first line');
  refused(req(`GET / HTTP/1.1\r\nHost: a\nX: y`), 400, 'bare-lf', 'incomplete, last line');
  refused(req(`GET / HTTP/1.1\r\nHost: a\rX: y\r\n\r\n`), 400, 'bare-cr', 'field line');
  refused(req(`GET / HTTP/1.1\r\nHost: a\r\n\rX\r\n\r\n`), 400, 'bare-cr', 'blank line');
  refused(req(`GET / HTTP/1.1\rHost: a`), 400, 'bare-cr', 'incomplete');
});

test('refused: invalid token characters in the method and in field names', () => {
  for (const m of ['GE(T', 'G\x80T', 'GET\t/', '', 'G"T']) refused(req(`${m} / HTTP/1.1\r\n${H}\r\n`), 400, 'bad-method', m);
  for (const m of ['get', 'FOO', 'PRI', 'G'.repeat(30)]) refused(req(`${m} / HTTP/1.1\r\n${H}\r\n`), 501, 'unknown-method', m);
  for (const n of ['Bad Name', 'Name ', 'Name\t', '', 'N\x80me', 'a(b)', 'x"y']) refused(req(`GET / HTTP/1.1\r\n${H}${n}: v\r\n\r\n`), 400, 'bad-header-name', JSON.stringify(n));
  refused(req(`GET / HTTP/1.1\r\n${H}NoColon\r\n\r\n`), 400, 'bad-header-name');
});

test('refused: control characters in field values', () => {
  for (const c of ['\x00', '\x01', '\x08', '\x0b', '\x0c', '\x1b', '\x7f']) refused(req(`GET / HTTP/1.1\r\n${H}X: a${c}b\r\n\r\n`), 400, 'bad-header-value', JSON.stringify(c));
});

test('Host: required once in HTTP/1.1 (as node:http and RFC 9112), optional in HTTP/1.0', () => {
  refused(req(`GET / HTTP/1.1\r\n\r\n`), 400, 'missing-host');
  refused(req(`GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n`), 400, 'duplicate-host');
  assert.equal(head(req(`GET / HTTP/1.0\r\n\r\n`)).host, undefined);
  assert.equal(head(req(`GET / HTTP/1.1\r\nHost:\r\n\r\n`)).host, '');
});

test('limits: head bytes (431), target bytes (414), field count (431), complete or not', () => {
  const small: HeadLimits = { maxHeaderBytes: 200, maxUrlBytes: 50, maxHeaders: 5 };
  const at = (n: number): string => `GET / HTTP/1.1\r\n${H}X: ${'v'.repeat(n)}\r\n\r\n`;
  const fits = 200 - at(0).length;
  assert.equal(head(req(at(fits), small)).length, 200);
  refused(req(at(fits + 1), small), 431, 'head-too-large');
  refused(req(at(fits + 10).slice(0, -2), small), 431, 'head-too-large', 'incomplete');
  assert.equal(req(at(fits + 1).slice(0, 200), small).kind, 'incomplete', 'not over the limit yet');
  assert.equal(head(req(`GET /${'a'.repeat(49)} HTTP/1.1\r\n${H}\r\n`, small)).target.length, 50);
  refused(req(`GET /${'a'.repeat(50)} HTTP/1.1\r\n${H}\r\n`, small), 414, 'url-too-long');
  refused(req(`GET /${'a'.repeat(50)}`, small), 414, 'url-too-long', 'incomplete, no version yet');
  refused(req(`GET /${'a'.repeat(50)} HTTP/1.1\r\nHo`, small), 414, 'url-too-long', 'incomplete, line done');
  const fields = (n: number): string => `GET / HTTP/1.1\r\n${H}${'X: 1\r\n'.repeat(n - 1)}\r\n`;
  assert.equal(head(req(fields(5), small)).headers.length, 10);
  refused(req(fields(6), small), 431, 'too-many-headers');
});

test('versions: 1.0 and 1.1 only; other well-formed versions 505, malformed 400', () => {
  assert.equal(head(req(`GET / HTTP/1.0\r\n\r\n`)).versionMinor, 0);
  for (const v of ['HTTP/2.0', 'HTTP/0.9', 'HTTP/1.2', 'HTTP/3.0']) refused(req(`GET / ${v}\r\n${H}\r\n`), 505, 'unsupported-version', v);
  for (const v of ['HTTP/1.10', 'http/1.1', 'HTTP/1', 'HTTP/1.1 ', 'HTTP/1.x']) refused(req(`GET / ${v}\r\n${H}\r\n`), 400, 'bad-version', v);
  refused(req(`GET  / HTTP/1.1\r\n${H}\r\n`), 400, 'bad-target', 'two spaces');
  refused(req(`GET /\r\n${H}\r\n`), 400, 'bad-target', 'HTTP/0.9 request line');
});

test('responses: content-length, chunked and close-delimited framing, keep-alive', () => {
  const text = `HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\n`;
  const h = head(res(text));
  assert.deepEqual([h.status, h.reason, h.framing, h.contentLength, h.keepAlive, h.length], [200, 'OK', 'length', 5, true, text.length]);
  assert.equal(head(res(`HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n`)).framing, 'chunked');
  assert.equal(head(res(`HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n`)).framing, 'chunked');
  const close = head(res(`HTTP/1.1 200 OK\r\n\r\n`));
  assert.deepEqual([close.framing, close.keepAlive], ['close', false]);
  for (const te of ['gzip', 'chunked, gzip']) assert.equal(head(res(`HTTP/1.1 200 OK\r\nTransfer-Encoding: ${te}\r\n\r\n`)).framing, 'close', te);
  assert.equal(head(res(`HTTP/1.0 200 OK\r\nContent-Length: 1\r\nConnection: keep-alive\r\n\r\n`)).keepAlive, true);
  assert.equal(head(res(`HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n`)).keepAlive, false);
  assert.equal(head(res(`HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n`)).reason, '');
  assert.equal(head(res(`HTTP/1.1 200 \r\nContent-Length: 0\r\n\r\n`)).framing, 'none');
});

test('responses without a body: HEAD, 1xx, 204, 304, and a 2xx to CONNECT', () => {
  const none = (text: string, method = 'GET'): ResponseHead => {
    const h = head(res(text, method));
    assert.equal(h.framing, 'none', `${method} ${text}`);
    return h;
  };
  assert.deepEqual([none(`HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n`, 'HEAD').contentLength, none(`HTTP/1.1 200 OK\r\n\r\n`, 'HEAD').keepAlive], [5, true]);
  none(`HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n`, 'HEAD');
  for (const s of [100, 102, 103, 199, 204, 304]) none(`HTTP/1.1 ${s} X\r\nContent-Length: 5\r\n\r\n`);
  assert.equal(none(`HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n`).isUpgrade, true);
  assert.equal(none(`HTTP/1.1 200 Connection established\r\n\r\n`, 'CONNECT').isUpgrade, true);
  const refusedTunnel = head(res(`HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 2\r\n\r\n`, 'CONNECT'));
  assert.deepEqual([refusedTunnel.framing, refusedTunnel.isUpgrade], ['length', false]);
});

test('a 100 Continue then the final response, back to back', () => {
  const first = 'HTTP/1.1 100 Continue\r\n\r\n';
  const buf = b(`${first}HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok`);
  const a = head(parseResponseHead(buf, 0, L, 'POST'));
  assert.deepEqual([a.status, a.length, a.framing], [100, first.length, 'none']);
  const c = head(parseResponseHead(buf, a.length, L, 'POST'));
  assert.deepEqual([c.status, c.contentLength, a.length + c.length + 2], [200, 2, buf.length]);
});

test('responses refused: status out of range, control bytes in the reason, bad versions, bad codings', () => {
  for (const line of ['HTTP/1.1 099 X', 'HTTP/1.1 600 X', 'HTTP/1.1 20 X', 'HTTP/1.1 2000 X', 'HTTP/1.1 2x0 X', 'HTTP/1.1  200 X', 'HTTP/1.1 200 a\x01b', 'HTTP/1.1 200 a\x7f']) {
    refused(res(`${line}\r\nContent-Length: 0\r\n\r\n`), 400, 'bad-status-line', JSON.stringify(line));
  }
  refused(res(`HTTP/2.0 200 OK\r\n\r\n`), 505, 'unsupported-version');
  refused(res(`http/1.1 200 OK\r\n\r\n`), 400, 'bad-version');
  refused(res(`HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n`), 400, 'transfer-encoding-in-http10');
  refused(res(`HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked;x=1\r\n\r\n`), 400, 'bad-transfer-encoding');
  refused(res(`HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n`), 400, 'duplicate-content-length');
  refused(res(`HTTP/1.1 200 OK\nContent-Length: 1\n\n`), 400, 'bare-lf');
  refused(res(`HTTP/1.1 200 OK\r\nX: ${'v'.repeat(300)}`, 'GET', { ...L, maxHeaderBytes: 256 }), 431, 'head-too-large');
});

// ---------------------------------------------------------------------------------------------------------------
// Bodies

const CHUNKED = '5\r\nhello\r\n1A;name=value;q="a \\"b\\""\r\nabcdefghijklmnopqrstuvwxyz\r\n0;last\r\n\r\n';

function scanAll(body: string, pieces: number[]): { consumed: number; done: boolean; error: string | undefined; payload: number } {
  const s = new ChunkedBodyScanner();
  const buf = b(body);
  let at = 0;
  let consumed = 0;
  for (const end of [...pieces, buf.length]) {
    if (s.done || s.error) break;
    consumed += s.feed(buf, at, end);
    at = end;
  }
  return { consumed, done: s.done, error: s.error?.code, payload: s.payloadBytes };
}

test('chunked: the whole body, then split at every byte boundary and fed byte by byte', () => {
  const whole = scanAll(CHUNKED, []);
  assert.deepEqual(whole, { consumed: CHUNKED.length, done: true, error: undefined, payload: 31 });
  for (let i = 1; i < CHUNKED.length; i++) assert.deepEqual(scanAll(CHUNKED, [i]), whole, `split at ${i}`);
  assert.deepEqual(scanAll(CHUNKED, [...Array(CHUNKED.length).keys()].slice(1)), whole, 'byte by byte');
});

test('chunked: the message ends exactly at the last CRLF; what follows is the next message', () => {
  const next = 'GET / HTTP/1.1\r\n\r\n';
  const s = new ChunkedBodyScanner();
  const buf = b(CHUNKED + next);
  assert.equal(s.feed(buf), CHUNKED.length);
  assert.equal(s.done, true);
  assert.equal(s.feed(buf, CHUNKED.length), 0, 'nothing more once done');
  s.reset();
  assert.deepEqual([s.feed(b('0\r\n\r\n')), s.done], [5, true]);
});

test('chunked refusals: size overflow, bad hex, bad CRLF, bad extensions, trailers', () => {
  const cases: [string, string][] = [
    ['1'.repeat(17) + '\r\n', 'chunk-size-overflow'],
    ['0'.repeat(16) + '1\r\nx\r\n0\r\n\r\n', 'chunk-size-overflow'],
    ['20000000000000\r\n', 'chunk-size-overflow'],
    ['g\r\n', 'bad-chunk-size'],
    ['0x5\r\nhello\r\n', 'bad-chunk-size'],
    [' 5\r\nhello\r\n', 'bad-chunk-size'],
    ['5 \r\nhello\r\n', 'bad-chunk-size'],
    ['\r\n', 'bad-chunk-size'],
    ['5\r\nhello\r\n\r\n', 'bad-chunk-size'],
    ['5\r\nhello\r\n;a\r\n', 'bad-chunk-size'],
    ['5\nhello\r\n', 'bad-chunk-size'],
    ['5\rxhello\r\n', 'bad-chunk-size'],
    ['5\r\nhelloX\r\n', 'bad-chunk-end'],
    ['5\r\nhello\rX0\r\n\r\n', 'bad-chunk-end'],
    ['5\r\nhello\n0\r\n\r\n', 'bad-chunk-end'],
    ['0\r\n\n', 'bad-chunk-end'],
    ['0\r\n\rX', 'bad-chunk-end'],
    ['5; a\r\n', 'bad-chunk-extension'],
    ['5;a =b\r\n', 'bad-chunk-extension'],
    ['5;=b\r\n', 'bad-chunk-extension'],
    ['5;;a\r\n', 'bad-chunk-extension'],
    ['5;a=b"c"\r\n', 'bad-chunk-extension'],
    ['5;a="\x01"\r\n', 'bad-chunk-extension'],
    ['5;a="x"y\r\n', 'bad-chunk-extension'],
    ['5;a\n', 'bad-chunk-extension'],
    [`5;${'x'.repeat(16_400)}\r\n`, 'chunk-extensions-too-long'],
    ['0\r\nX-Sum: 1\r\n\r\n', 'trailers'],
  ];
  for (const [body, code] of cases) assert.equal(scanAll(body, []).error, code, JSON.stringify(body.slice(0, 40)));
  assert.equal(scanAll(`1fffffffffffff\r\n`, []).error, undefined, '2^53 - 1 is a size (and waits for its data)');
});

test('content-length and close-delimited scanners share the interface', () => {
  const s = new ContentLengthBodyScanner(5);
  assert.deepEqual([s.feed(b('abc')), s.done], [3, false]);
  assert.deepEqual([s.feed(b('defGET')), s.done, s.payloadBytes, s.error], [2, true, 5, undefined]);
  assert.equal(s.feed(b('more')), 0);
  const c = new CloseDelimitedBodyScanner();
  assert.deepEqual([c.feed(b('abc')), c.feed(b('xyz'), 1), c.done, c.payloadBytes], [3, 2, false, 5]);
  assert.ok(createBodyScanner({ framing: 'chunked', contentLength: -1 }) instanceof ChunkedBodyScanner);
  assert.ok(createBodyScanner({ framing: 'close', contentLength: -1 }) instanceof CloseDelimitedBodyScanner);
  assert.equal(createBodyScanner({ framing: 'none', contentLength: 0 }).done, true);
  assert.equal(createBodyScanner({ framing: 'length', contentLength: 3 }).feed(b('abcdef')), 3);
});
