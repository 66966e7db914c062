// The proxy engine's framing over real sockets (no Consul): what a raw client sends, what a raw upstream answers, what arrives.
import assert from 'node:assert/strict';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { after, before, test } from 'node:test';
import { exchange } from '../../src/proxy/engine/exchange.ts';
import { Http1Server } from '../../src/proxy/engine/http1-server.ts';
import { UpstreamPool } from '../../src/proxy/engine/upstream-pool.ts';
import { upstreamRequestLines } from '../../src/proxy/headers.ts';
import { DEFAULT_HEAD_LIMITS } from '../../src/proxy/http1/head-types.ts';

/** A raw upstream: each connection's bytes go to `answer`, which writes whatever it likes back. */
let answer: (request: string, sock: Socket) => void = () => undefined;
const seen: string[] = [];
let upstream: Server;
let proxy: Http1Server;
let proxyPort = 0;
let pool: UpstreamPool;

before(async () => {
  upstream = createServer((sock) => {
    let buf = '';
    sock.on('data', (d) => {
      buf += d.toString('latin1');
      // One request at a time is enough here: answer once the head (and a Content-Length body) is in.
      const end = buf.indexOf('\r\n\r\n');
      if (end === -1) return;
      const cl = /content-length: (\d+)/i.exec(buf.slice(0, end));
      const chunked = /transfer-encoding: chunked/i.test(buf.slice(0, end));
      if (cl && buf.length < end + 4 + Number(cl[1])) return;
      if (chunked && !buf.endsWith('0\r\n\r\n')) return;
      const request = buf;
      buf = '';
      seen.push(request);
      answer(request, sock);
    });
    sock.on('error', () => undefined);
  });
  await new Promise<void>((resolve) => upstream.listen(0, '127.0.0.1', resolve));
  const upPort = (upstream.address() as { port: number }).port;
  pool = new UpstreamPool({ host: '127.0.0.1', port: upPort, max: 4, connectTimeoutMs: 1000, idleMs: 4000 });
  proxy = new Http1Server({
    limits: DEFAULT_HEAD_LIMITS,
    headersTimeoutMs: 1000,
    keepAliveMs: 5000,
    handle(req) {
      const h = req.head;
      void exchange(pool, req, {
        method: req.method,
        head: `${req.method} ${req.url} HTTP/1.${h.versionMinor}\r\nhost: up\r\n${upstreamRequestLines(h.headers, h.connection, '127.0.0.1')}${h.framing === 'chunked' ? 'transfer-encoding: chunked\r\n' : ''}\r\n`,
        body: h.framing === 'none' ? { kind: 'none' } : { kind: 'stream', from: req },
        headersTimeoutMs: 1000,
        bodyTimeoutMs: 0,
        retryStatuses: undefined,
        extraLines: 'x-via: engine\r\n',
        replaySafe: false,
        limits: DEFAULT_HEAD_LIMITS,
      }).then((r) => {
        if (r.kind === 'failed' && !req.headersSent) req.respond(502, 'Bad Gateway', '', r.reason);
      });
    },
    refuse(conn, error) {
      conn.socket.end(`HTTP/1.1 ${typeof error === 'string' ? 408 : error.status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n`);
    },
  });
  proxyPort = await proxy.listen(0, '127.0.0.1');
});

after(async () => {
  await proxy.close(0);
  await pool.destroy();
  upstream.close();
});

/** Sends `text` on a new connection; resolves with everything received until the proxy closes or `waitMs` passes. */
function raw(text: string | string[], waitMs = 800): Promise<{ out: string; closed: boolean }> {
  return new Promise((resolve) => {
    const sock = connect(proxyPort, '127.0.0.1');
    let out = '';
    let closed = false;
    const timer = setTimeout(() => sock.destroy(), waitMs);
    sock.on('data', (d) => (out += d.toString('latin1')));
    sock.on('end', () => (closed = true));
    sock.on('error', () => undefined);
    sock.on('close', () => {
      clearTimeout(timer);
      resolve({ out, closed });
    });
    const parts = Array.isArray(text) ? text : [text];
    parts.forEach((p, i) => setTimeout(() => sock.write(p), i * 50));
  });
}

test('content-length and chunked answers pass through as framed; pipelined requests are answered in order', async () => {
  answer = (req, sock) => {
    if (req.startsWith('GET /chunked')) sock.write('HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n');
    else sock.write(`HTTP/1.1 200 OK\r\ncontent-length: 5\r\nx-tandem-error: FORGED\r\n\r\nhello`);
  };
  const r = await raw('GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /chunked HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n');
  const answers = r.out.split(/(?=HTTP\/1\.1 )/);
  assert.equal(answers.length, 3, r.out);
  assert.match(answers[0] as string, /^HTTP\/1\.1 200 OK\r\ncontent-length: 5\r\nx-via: engine\r\n\r\nhello$/);
  assert.match(answers[1] as string, /transfer-encoding: chunked\r\nx-via: engine\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n$/);
  assert.match(answers[2] as string, /connection: close\r\n\r\nhello$/);
  assert.ok(r.closed, 'closed after the answer to `connection: close`');
  assert.doesNotMatch(r.out, /FORGED/, "an upstream's own x-tandem-error is dropped");
});

test('HEAD, 204 and 304 answers have no body whatever their fields say; 1xx before the answer are dropped', async () => {
  answer = (req, sock) => {
    if (req.startsWith('HEAD')) sock.write('HTTP/1.1 200 OK\r\ncontent-length: 999\r\n\r\n');
    else if (req.startsWith('GET /204')) sock.write('HTTP/1.1 204 No Content\r\n\r\n');
    else sock.write('HTTP/1.1 103 Early Hints\r\nlink: </x>\r\n\r\nHTTP/1.1 304 Not Modified\r\netag: "1"\r\n\r\n');
  };
  const r = await raw('HEAD /h HTTP/1.1\r\nHost: x\r\n\r\nGET /204 HTTP/1.1\r\nHost: x\r\n\r\nGET /304 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n');
  const statuses = [...r.out.matchAll(/HTTP\/1\.1 (\d{3})/g)].map((m) => m[1]);
  assert.deepEqual(statuses, ['200', '204', '304'], r.out);
  assert.match(r.out, /content-length: 999\r\nx-via: engine\r\n\r\nHTTP\/1\.1 204/);
  assert.ok(r.out.endsWith('etag: "1"\r\nx-via: engine\r\nconnection: close\r\n\r\n'), r.out);
});

test('a close-delimited answer ends the client connection too (its end is the close)', async () => {
  answer = (_req, sock) => sock.end('HTTP/1.1 200 OK\r\n\r\nuntil the end');
  const r = await raw('GET /c HTTP/1.1\r\nHost: x\r\n\r\n');
  assert.match(r.out, /^HTTP\/1\.1 200 OK\r\nx-via: engine\r\nconnection: close\r\n\r\nuntil the end$/);
  assert.ok(r.closed);
});

test('a chunked request body goes upstream as it came, over several packets, after a 100 Continue', async () => {
  answer = (_req, sock) => sock.write('HTTP/1.1 201 Created\r\ncontent-length: 0\r\n\r\n');
  seen.length = 0;
  const r = await raw(['POST /up HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n', '4\r\nwiki\r\n', '5\r\npedia\r\n0\r\n\r\n']);
  assert.match(r.out, /^HTTP\/1\.1 100 Continue\r\n\r\nHTTP\/1\.1 201 Created/);
  assert.match(seen[0] as string, /transfer-encoding: chunked\r\n\r\n4\r\nwiki\r\n5\r\npedia\r\n0\r\n\r\n$/);
  assert.doesNotMatch(seen[0] as string, /expect:/i, 'Expect is hop-by-hop');
});

test('smuggling shapes are refused before any upstream sees them', async () => {
  seen.length = 0;
  for (const [what, text, status] of [
    ['CL + TE', 'POST /s HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n', '400'],
    ['two lengths', 'POST /s HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcd', '400'],
    ['obs-fold', 'GET /s HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n  folded\r\n\r\n', '400'],
    ['bare LF', 'GET /s HTTP/1.1\nHost: x\n\n', '400'],
    ['space before colon', 'GET /s HTTP/1.1\r\nHost: x\r\nContent-Length : 4\r\n\r\nabcd', '400'],
    ['chunk size overflow', 'POST /s HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nFFFFFFFFFFFFFFFFF\r\n', 'cut'],
  ] as const) {
    const r = await raw(text);
    if (status === 'cut') assert.doesNotMatch(r.out, /^HTTP\/1\.1 2/, what);
    else assert.match(r.out, new RegExp(`^HTTP/1\\.1 ${status}`), `${what}: ${r.out}`);
  }
  assert.deepEqual(seen.filter((s) => !s.startsWith('POST /s HTTP/1.1\r\nhost: up\r\ntransfer-encoding')), [], 'no refused head reached the upstream');
});

test('a client that leaves mid-answer closes the upstream connection (nothing more is read for it)', async () => {
  let upstreamClosed: () => void = () => undefined;
  const closed = new Promise<void>((resolve) => (upstreamClosed = resolve));
  answer = (_req, sock) => {
    sock.write('HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nfirst\r\n');
    sock.once('close', () => upstreamClosed());
  };
  const r = await raw('GET /stream HTTP/1.1\r\nHost: x\r\n\r\n', 300);
  assert.match(r.out, /5\r\nfirst\r\n$/);
  await closed;
});

test('a head that does not arrive within headersTimeoutMs is refused (one byte at a time does not extend it)', async () => {
  const started = Date.now();
  const r = await raw(['GET /slow HTTP/1.1\r\n', 'Host: x\r\n', 'X-A: 1\r\n', 'X-B: 2\r\n'], 5000);
  assert.match(r.out, /^HTTP\/1\.1 408/);
  assert.ok(Date.now() - started < 4000, `held ${Date.now() - started} ms with headersTimeoutMs 1000`);
});

test('a try for a client that already left sends nothing upstream', async () => {
  seen.length = 0;
  const gone = { gone: true, writeHead: () => true, write: () => true, onDrain: () => undefined, end: () => undefined, destroy: () => undefined, onGone: () => undefined };
  const r = await exchange(pool, gone, {
    method: 'GET',
    head: 'GET /never HTTP/1.1\r\nhost: up\r\n\r\n',
    body: { kind: 'none' },
    headersTimeoutMs: 1000,
    bodyTimeoutMs: 0,
    retryStatuses: undefined,
    extraLines: '',
    replaySafe: true,
    limits: DEFAULT_HEAD_LIMITS,
  });
  assert.deepEqual(r, { kind: 'aborted' });
  // A request sent after it reaches the upstream first: the aborted try wrote nothing before it.
  answer = (_req, sock) => sock.write('HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n');
  await raw('GET /after HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n');
  assert.deepEqual(seen.map((x) => x.split(' ').slice(0, 2).join(' ')), ['GET /after']);
});

test('a body nobody reads yet is held only up to a bound: then the client is paused', async () => {
  let held: import('../../src/proxy/engine/client-request.ts').ClientRequest | undefined;
  const slow = new Http1Server({ limits: DEFAULT_HEAD_LIMITS, headersTimeoutMs: 5000, keepAliveMs: 5000, handle: (req) => void (held = req), refuse: (conn) => conn.socket.destroy() });
  const port = await slow.listen(0, '127.0.0.1');
  const sock = connect(port, '127.0.0.1');
  sock.on('error', () => undefined);
  try {
    sock.write('POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000\r\n\r\n');
    const chunk = Buffer.alloc(65_536, 0x61);
    // Up to 4 MB while the handler has not read the body: the proxy must stop reading long before that.
    for (let i = 0; i < 64 && !(held?.conn.socket.isPaused() ?? false); i++) {
      sock.write(chunk);
      await new Promise((resolve) => setTimeout(resolve, 5));
    }
    assert.ok(held?.conn.socket.isPaused(), 'the client socket is paused while nobody reads the body');
  } finally {
    sock.destroy();
    held?.conn.socket.destroy();
    await slow.close(0);
  }
});
