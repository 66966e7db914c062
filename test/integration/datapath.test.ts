// Data-path bugs (a)-(h) of issue 13 against a real Consul and real upstreams: each test failed before its fix.
import assert from 'node:assert/strict';
import { createServer, request as httpRequest, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { connect } from 'node:net';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { freePorts } from '../../src/common/free-port.ts';
import type { Sidecar } from '../../src/sidecar.ts';
import { eventually, useConsul } from '../support/consul.ts';
import { listenLocal } from '../support/listen.ts';
import { rawExchange } from '../support/raw-http.ts';
import { api, removeDir, startSidecar } from '../support/sidecar.ts';

const consul = useConsul();
let sidecar: Sidecar;
let base: string;
let proxy: string;
let stateDir: string;
const cleanups: (() => Promise<unknown>)[] = [];

after(async () => {
  for (const c of cleanups.reverse()) await c().catch(() => undefined);
  await sidecar?.close();
  if (stateDir) await removeDir(stateDir);
});

/** A plain upstream with /health and the given handler for everything else. */
async function upstream(handle: (req: IncomingMessage, res: ServerResponse) => void): Promise<{ port: number; server: Server }> {
  const server = createServer((req, res) => (req.url === '/health' ? res.end('ok') : handle(req, res)));
  const { port, close } = await listenLocal(server);
  cleanups.push(close);
  return { port, server };
}

async function register(name: string, port: number, check: object = { kind: 'http', path: '/health' }): Promise<string> {
  const res = await api('POST', `${base}/v1/services`, { name, version: '1.0.0', port, check });
  assert.equal(res.status, 201, JSON.stringify(res.body));
  return (res.body as { id: string }).id;
}

async function healthy(service: string, n: number): Promise<void> {
  await eventually(async () => {
    const body = (await api('GET', `${base}/v1/instances/${service}`)).body as { instances?: { healthy: boolean }[] };
    return (body.instances ?? []).filter((i) => i.healthy).length === n;
  }, `${n} healthy ${service}`);
}

/** Raw bytes in, everything the proxy writes until it closes (or `waitMs` passes) out. */
function raw(text: string, waitMs = 1500): Promise<{ out: string; closedByServer: boolean; ms: number }> {
  return rawExchange(proxy, text, waitMs);
}

function statusLines(out: string): string[] {
  return [...out.matchAll(/HTTP\/1\.1 \d{3} [^\r]*/g)].map((m) => m[0]);
}

async function metric(line: RegExp): Promise<number> {
  const text = (await api('GET', `${base}/metrics`)).body as string;
  const m = text.split('\n').find((l) => line.test(l));
  return m ? Number(m.split(' ').pop()) : 0;
}

/** An upstream answering `chunks` chunks of `chunk` bytes, one every `everyMs`: a long download. */
async function slowDownload(chunks: number, everyMs: number, onRequest?: () => void): Promise<{ port: number }> {
  return upstream((_req, res) => {
    onRequest?.();
    res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': String(chunks * 1000) });
    let n = 0;
    const t = setInterval(() => {
      res.write(Buffer.alloc(1000, 0x61));
      if (++n === chunks) {
        clearInterval(t);
        res.end();
      }
    }, everyMs);
    res.on('close', () => clearInterval(t));
  });
}

async function download(path: string): Promise<{ status: number; bytes: number; error?: string }> {
  const res = await fetch(`${proxy}${path}`);
  let bytes = 0;
  try {
    for await (const c of res.body as unknown as AsyncIterable<Uint8Array>) bytes += c.length;
  } catch (err) {
    return { status: res.status, bytes, error: String((err as Error).cause ?? err) };
  }
  return { status: res.status, bytes };
}

describe('data path', () => {
  // In the suite (not at the top level): Node 20 does not wait for one top-level before() before the next.
  before(async () => {
    ({ sidecar, api: base, stateDir } = await startSidecar(consul.address, {
      args: ['--set', 'proxy.upstreamTimeoutMs=400', '--set', 'watch.idleMs=1000', '--set', 'proxy.headersTimeoutMs=500', '--set', 'proxy.ejection.consecutiveFailures=1000'],
    }));
    proxy = sidecar.addresses.proxy;
  });

  test('(a) an error after a small buffered request body answers the JSON error, counted with its real status', async () => {
    // An instance whose port refuses connections (TTL check kept passing by hand): every try fails.
    const [deadPort] = await freePorts(1);
    const deadId = await register('refusing', deadPort as number, { kind: 'ttl', ttlMs: 60_000 });
    assert.equal((await api('PUT', `${base}/v1/services/${deadId}/heartbeat`)).status, 200);
    await healthy('refusing', 1);
    const before = await metric(/^tandem_proxy_requests_total\{service="refusing",status_class="5xx",outcome="failed"\}/);
    const res = await fetch(`${proxy}/refusing/charge`, { method: 'POST', body: JSON.stringify({ amount: 1 }), headers: { 'content-type': 'application/json' } });
    assert.equal(res.status, 502);
    assert.equal(res.headers.get('x-tandem-error'), 'TANDEM_ERR_UPSTREAM_FAILED');
    assert.equal(((await res.json()) as { code: string }).code, 'TANDEM_ERR_UPSTREAM_FAILED');

    // An upstream that never answers: 504 after the upstream timeout, with the body read first.
    const stall = await upstream(() => undefined);
    await register('stalling', stall.port);
    await healthy('stalling', 1);
    const slow = await fetch(`${proxy}/stalling/x`, { method: 'PUT', body: 'small body' });
    assert.equal(slow.status, 504);
    assert.equal(((await slow.json()) as { code: string }).code, 'TANDEM_ERR_UPSTREAM_TIMEOUT');

    await eventually(async () => (await metric(/^tandem_proxy_requests_total\{service="refusing",status_class="5xx",outcome="failed"\}/)) === before + 1, 'the 502 counted as 5xx/failed');
    assert.equal(await metric(/^tandem_proxy_requests_total\{service="refusing",status_class="2xx",outcome="aborted"\}/), 0);
    // A client that leaves in the middle of a small upload is an abort, not a failure (nor an internal
    // error). (Pipelined requests are taken one at a time: one queued behind a stalled answer is never
    // handled, so it is not counted at all — see the pipelining test below.)
    await raw('POST /refusing/charge HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nonly ten b', 150);
    await eventually(async () => (await metric(/^tandem_proxy_requests_total\{service="refusing",status_class="none",outcome="aborted"\}/)) === 1, 'the cut upload counted as aborted');
    assert.equal(await metric(/^tandem_proxy_requests_total\{service="refusing",status_class="5xx",outcome="failed"\}/), before + 1);
    assert.equal(await metric(/^tandem_proxy_requests_total\{service="stalling",status_class="5xx",outcome="timeout"\}/), 1);
    // Pipelined behind a stalled answer: handled only after it (so the upload's answer is never mixed into the stalled one's).
    await raw('GET /stalling/first HTTP/1.1\r\nHost: x\r\n\r\nPOST /refusing/charge HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nonly ten b', 150);
    await eventually(async () => (await metric(/^tandem_proxy_requests_total\{service="stalling",status_class="none",outcome="aborted"\}/)) === 1, 'the stalled request counted as aborted');
    assert.equal(await metric(/^tandem_proxy_requests_total\{service="refusing",status_class="none",outcome="aborted"\}/), 1);
  });

  test('(b) the idle sweep does not drop a service while its response is still streaming', async () => {
    // watch.idleMs is 1 s and the sweep runs every second: the download lasts 3.5 s with no other request.
    const up = await slowDownload(35, 100);
    await register('quietdl', up.port);
    await healthy('quietdl', 1);
    const routed = async () => ((await api('GET', `${base}/v1/status`)).body as { routing: { service: string }[] }).routing.some((s) => s.service === 'quietdl');
    // The registration's own lookups are idle: the sweep has dropped them, only the download brings it back.
    await eventually(async () => !(await routed()), 'quietdl idle before the download', 5000);
    const pending = download('/quietdl/file');
    await sleep(2800); // on purpose: past idleMs and two sweeps, the time in which a wrong sweep would drop it
    assert.ok(await routed(), 'still in the routing table while its response streams');
    const r = await pending;
    assert.equal(r.error, undefined, `download cut: ${r.error}`);
    assert.deepEqual(r, { status: 200, bytes: 35_000 });
    await eventually(async () => !(await routed()), 'dropped once idle', 5000);
  });

  test('(c) an instance that leaves the catalog finishes the responses in flight', async () => {
    let reached = false;
    const up = await slowDownload(30, 100, () => (reached = true));
    const id = await register('leaving', up.port);
    await healthy('leaving', 1);
    const pending = download('/leaving/file');
    await eventually(() => reached || undefined, 'the download in flight at the instance', 5000);
    assert.equal((await api('DELETE', `${base}/v1/services/${id}`)).status, 200);
    await eventually(async () => ((await api('GET', `${base}/v1/instances/leaving`)).body as { instances?: unknown[] }).instances?.length === 0, 'the instance gone from the view', 5000);
    const r = await pending;
    assert.equal(r.error, undefined, `download cut: ${r.error}`);
    assert.deepEqual(r, { status: 200, bytes: 30_000 });
    // No new request goes to it.
    assert.equal((await fetch(`${proxy}/leaving/x`)).status, 503);
  });

  test("(d) a 503 from the only or the pinned instance reaches the client as the upstream sent it", async () => {
    const busy = await upstream((_req, res) => {
      res.writeHead(503, { 'content-type': 'application/json', 'retry-after': '7', 'x-app': 'busy' });
      res.end(JSON.stringify({ busy: true }));
    });
    const busyId = await register('busy', busy.port);
    await healthy('busy', 1);
    const only = await fetch(`${proxy}/busy/x`);
    assert.equal(only.status, 503);
    assert.equal(only.headers.get('retry-after'), '7');
    assert.equal(only.headers.get('x-app'), 'busy');
    assert.equal(only.headers.get('x-tandem-error'), null);
    assert.equal(only.headers.get('x-tandem-instance'), busyId);
    assert.deepEqual(await only.json(), { busy: true });

    // Two instances, pinned on the busy one: its 503 as is, no try elsewhere.
    let okSeen = 0;
    const ok = await upstream((_req, res) => {
      okSeen++;
      res.end('ok');
    });
    await register('busy', ok.port);
    await healthy('busy', 2);
    const pinned = await fetch(`${proxy}/busy/x`, { headers: { 'x-tandem-instance': busyId } });
    assert.equal(pinned.status, 503);
    assert.equal(pinned.headers.get('retry-after'), '7');
    assert.deepEqual(await pinned.json(), { busy: true });
    assert.equal(okSeen, 0);
    // Unpinned, the 503 is retried on the other instance.
    for (let i = 0; i < 4; i++) {
      const r = await fetch(`${proxy}/busy/x`);
      assert.equal(r.status, 200);
      assert.equal(await r.text(), 'ok');
    }
    // Every instance busy: the last 503 as it was sent, not a synthetic 502.
    const busy2 = await upstream((_req, res) => {
      res.writeHead(503, { 'retry-after': '3' });
      res.end('busy two');
    });
    await register('allbusy', busy.port);
    await register('allbusy', busy2.port);
    await healthy('allbusy', 2);
    const all = await fetch(`${proxy}/allbusy/x`);
    assert.equal(all.status, 503);
    assert.ok(['3', '7'].includes(all.headers.get('retry-after') ?? ''));
    assert.equal(all.headers.get('x-tandem-error'), null);
  });

  test('(e) a request with more header fields than the limit is answered 431, never forwarded without its body', async () => {
    const seen: string[] = [];
    const up = await upstream((req, res) => {
      let body = '';
      req.on('data', (c: Buffer) => (body += c.toString()));
      req.on('end', () => {
        seen.push(`${req.method} ${body}`);
        res.end('ok');
      });
    });
    await register('headers', up.port);
    await healthy('headers', 1);
    // proxy.maxHeaders is 100 (node:http instead dropped fields past 2,000 silently, Content-Length included).
    const many = 'x-h: v\r\n'.repeat(150);
    const r = await raw(`POST /headers/x HTTP/1.1\r\nHost: x\r\n${many}Content-Length: 5\r\n\r\nhello`);
    assert.match(r.out, /^HTTP\/1\.1 431 [\s\S]*x-tandem-error: TANDEM_ERR_HEADERS_TOO_LARGE[\s\S]*more than 100 header fields/);
    assert.match(r.out, /connection: close/i);
    assert.equal(statusLines(r.out).length, 1);
    assert.deepEqual(seen, []);
    // Under the limit, the body arrives.
    const fine = await raw(`POST /headers/x HTTP/1.1\r\nHost: x\r\n${'x-h: v\r\n'.repeat(97)}Content-Length: 5\r\nConnection: close\r\n\r\nhello`);
    assert.match(fine.out, /^HTTP\/1\.1 200/);
    assert.deepEqual(seen, ['POST hello']);
  });

  test("(f) an upstream's own x-tandem-* response headers never reach the client", async () => {
    const liar = await upstream((_req, res) => {
      res.writeHead(200, { 'x-tandem-error': 'TANDEM_ERR_FAKE', 'x-tandem-sticky': 'moved', 'x-tandem-instance': 'someone-else', 'x-tandem-broadcast': '9', 'x-app': 'kept' });
      res.end('hi');
    });
    const id = await register('liar', liar.port);
    await healthy('liar', 1);
    const res = await fetch(`${proxy}/liar/x`);
    assert.equal(res.status, 200);
    assert.equal(res.headers.get('x-tandem-error'), null);
    assert.equal(res.headers.get('x-tandem-sticky'), null);
    assert.equal(res.headers.get('x-tandem-broadcast'), null);
    assert.equal(res.headers.get('x-tandem-instance'), id);
    assert.equal(res.headers.get('x-app'), 'kept');
    // The same through a held (retryable) answer.
    const liar503 = await upstream((_req, res) => {
      res.writeHead(503, { 'x-tandem-error': 'TANDEM_ERR_FAKE' });
      res.end('no');
    });
    await register('liar503', liar503.port);
    await healthy('liar503', 1);
    const r503 = await fetch(`${proxy}/liar503/x`);
    assert.equal(r503.status, 503);
    assert.equal(r503.headers.get('x-tandem-error'), null);
  });

  test("(g) after an answer that says connection: close, nothing more is written on the connection", async () => {
    const up = await upstream((_req, res) => res.end('fine'));
    await register('piped', up.port);
    await healthy('piped', 1);
    // A 400 that closes, then a pipelined CONNECT and a pipelined GET: one answer, the 400.
    for (const next of ['CONNECT example.invalid:443 HTTP/1.1\r\nHost: example.invalid:443\r\n\r\n', 'GET /piped/ok HTTP/1.1\r\nHost: x\r\n\r\n', 'GET /piped/x HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n']) {
      const r = await raw(`GET /piped/../etc HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n${next}`);
      assert.deepEqual(statusLines(r.out), ['HTTP/1.1 400 Bad Request'], `${next.split('\r\n')[0]}: ${r.out}`);
      assert.match(r.out, /TANDEM_ERR_BAD_PATH/);
      assert.ok(r.closedByServer);
    }
    // The parser's own 400 (an HTTP/1.1 request without Host) closes too: the CONNECT or upgrade after it gets nothing.
    for (const next of ['CONNECT /not-an-authority HTTP/1.1\r\nHost: x\r\n\r\n', 'GET /piped/%2e%2e/x HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n']) {
      const r = await raw(`GET /piped/a HTTP/1.1\r\nUser-Agent: no-host\r\n\r\n${next}`);
      assert.deepEqual(statusLines(r.out), ['HTTP/1.1 400 Bad Request'], `${next.split('\r\n')[0]}: ${r.out}`);
      assert.match(r.out, /TANDEM_ERR_MALFORMED_REQUEST[^]*must have a Host field/);
    }
    // The same with a proxied answer that closes.
    const proxied = await raw('GET /piped/a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\nCONNECT example.invalid:443 HTTP/1.1\r\nHost: example.invalid:443\r\n\r\n');
    assert.deepEqual(statusLines(proxied.out), ['HTTP/1.1 200 OK']);
    assert.match(proxied.out, /fine$/);
    // Keep-alive answers first, in order, then the CONNECT's own.
    const ordered = await raw('GET /piped/../etc HTTP/1.1\r\nHost: x\r\n\r\nGET /piped/ok HTTP/1.1\r\nHost: x\r\n\r\nCONNECT example.invalid:443 HTTP/1.1\r\nHost: example.invalid:443\r\n\r\n');
    assert.deepEqual(statusLines(ordered.out), ['HTTP/1.1 400 Bad Request', 'HTTP/1.1 200 OK', 'HTTP/1.1 403 Forbidden']);
    assert.match(ordered.out, /TANDEM_ERR_EGRESS_REFUSED[^]*$/);
  });

  test('pipelined: a 100 Continue for a queued answer comes before that answer’s head, never inside it', async () => {
    const up = await upstream((req, res) => {
      req.resume();
      req.on('end', () => setTimeout(() => res.end(Buffer.from(`answer ${req.url}`)), req.url === '/slow' ? 200 : 0));
    });
    await register('continued', up.port);
    await healthy('continued', 1);
    const r = await raw('GET /continued/slow HTTP/1.1\r\nHost: x\r\n\r\nPOST /continued/next HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\nhello', 1500);
    assert.deepEqual(statusLines(r.out), ['HTTP/1.1 200 OK', 'HTTP/1.1 100 Continue', 'HTTP/1.1 200 OK'], r.out);
    assert.match(r.out, /answer \/slowHTTP\/1\.1 100 Continue\r\n\r\nHTTP\/1\.1 200 OK\r\n[^]*\r\n\r\nanswer \/next$/);
  });

  test('(h) a client that never finishes its request head is cut after proxy.headersTimeoutMs', async () => {
    const r = await raw('GET /piped/x HTTP/1.1\r\nHost: x\r\nX-Slow: a', 10_000);
    assert.ok(r.closedByServer, 'closed by the proxy');
    assert.ok(r.ms < 3000, `held ${r.ms} ms with proxy.headersTimeoutMs=500`);
    assert.match(r.out, /^HTTP\/1\.1 408 [\s\S]*TANDEM_ERR_REQUEST_TIMEOUT/);
    // One byte at a time does not reset it.
    const { port, hostname } = new URL(proxy);
    const started = Date.now();
    const closed = await new Promise<number>((resolve) => {
      const sock = connect(Number(port), hostname);
      const head = 'GET /piped/x HTTP/1.1\r\nHost: x\r\nX-Slow: abcdefghijklmnopqrstuvwxyz\r\n\r\n';
      let i = 0;
      const t = setInterval(() => (i < head.length ? sock.write(head[i++] as string) : undefined), 100);
      sock.on('error', () => undefined);
      sock.on('close', () => {
        clearInterval(t);
        resolve(Date.now() - started);
      });
    });
    assert.ok(closed < 3000, `a slowloris connection held ${closed} ms`);
    // A normal request on a kept-alive connection is not affected by time spent idle between requests.
    const res = await new Promise<number>((resolve, reject) => {
      const req = httpRequest(`${proxy}/piped/x`, (r) => {
        r.resume();
        r.on('end', () => resolve(r.statusCode ?? 0));
      });
      req.on('error', reject);
      req.end();
    });
    assert.equal(res, 200);
  });
});
