// The proxy against a real Consul agent and real upstream servers: ranges, round-robin, sticky, failover, streaming, hostile input.
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { request as httpRequest, type IncomingMessage } from 'node:http';
import { connect } from 'node:net';
import { fileURLToPath } from 'node:url';
import { describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import WebSocket from 'ws';
import { freePorts } from '../../src/common/free-port.ts';
import { eventually } from '../support/consul.ts';
import { api, removeDir, startSidecar, useSidecar } from '../support/sidecar.ts';
import { startUpstream, type Upstream } from '../support/upstream.ts';

let base: string;
let proxy: string;
const { consul, cleanups } = useSidecar(['--set', 'proxy.ejection.baseEjectionMs=1000'], (urls) => ({ api: base, proxy } = urls));

async function register(name: string, version: string, port: number, check: object = { kind: 'http', path: '/health' }): Promise<string> {
  const res = await api('POST', `${base}/v1/services`, { name, version, port, check });
  assert.equal(res.status, 201, JSON.stringify(res.body));
  return (res.body as { id: string }).id;
}

interface InstanceView {
  id: string;
  port: number;
  healthy: boolean;
  ejected: boolean;
  version: string;
}
async function instances(service: string): Promise<InstanceView[]> {
  const res = await api('GET', `${base}/v1/instances/${service}`);
  return (res.body as { instances: InstanceView[] }).instances;
}
async function waitHealthy(service: string, n: number): Promise<void> {
  await eventually(async () => (await instances(service)).filter((i) => i.healthy).length === n, `${n} healthy ${service}`);
}

async function get(path: string, headers: Record<string, string> = {}): Promise<{ status: number; instance: string | null; body: string; headers: Headers }> {
  const res = await fetch(`${proxy}${path}`, { headers });
  return { status: res.status, instance: res.headers.get('x-tandem-instance'), body: await res.text(), headers: res.headers };
}

async function startMany(name: string, versions: string[]): Promise<{ ups: Upstream[]; ids: string[] }> {
  const ups = await Promise.all(versions.map((v) => startUpstream(name, v)));
  for (const u of ups) cleanups.push(() => u.close());
  const ids: string[] = [];
  for (const u of ups) ids.push(await register(name, u.version, u.port));
  await waitHealthy(name, ups.length);
  return { ups, ids };
}

/** A raw HTTP exchange, for requests fetch() would refuse or normalise. */
function raw(text: string): Promise<string> {
  const { port, hostname } = new URL(proxy);
  return new Promise((resolve, reject) => {
    const sock = connect(Number(port), hostname);
    let out = '';
    sock.on('data', (d) => (out += d.toString('latin1')));
    sock.on('end', () => resolve(out));
    sock.on('close', () => resolve(out));
    sock.on('error', reject);
    sock.write(text);
    setTimeout(() => sock.end(), 1500);
  });
}

describe('proxy: versions and round-robin', () => {
  test('ranges select versions; round-robin is even; unknown ranges name the versions', async () => {
    const { ids } = await startMany('users', ['1.0.0', '1.4.0', '2.0.0']);
    const counts = new Map<string, number>();
    for (let i = 0; i < 100; i++) {
      const r = await get(`/users@^1/api/users/${i}?q=${i}`);
      assert.equal(r.status, 200);
      const body = JSON.parse(r.body) as { version: string; url: string };
      assert.match(body.version, /^1\./);
      assert.equal(body.url, `/api/users/${i}?q=${i}`);
      counts.set(r.instance ?? '', (counts.get(r.instance ?? '') ?? 0) + 1);
    }
    assert.deepEqual([...counts.values()], [50, 50]);
    assert.deepEqual([...counts.keys()].sort(), [ids[0], ids[1]].sort());

    for (let i = 0; i < 10; i++) assert.equal(JSON.parse((await get('/users@2/x')).body).version, '2.0.0');
    assert.equal(JSON.parse((await get('/users@%5E2.0/x')).body).version, '2.0.0'); // URL-encoded range
    assert.equal(JSON.parse((await get('/users@1.x%20%7C%7C%20%3E%3D3/x')).body).version.startsWith('1.'), true);

    const none = await get('/users@^3/x');
    assert.equal(none.status, 503);
    assert.equal(none.headers.get('x-tandem-error'), 'TANDEM_ERR_NO_HEALTHY_INSTANCE');
    const err = JSON.parse(none.body) as { code: string; message: string; statusCode: number };
    assert.equal(err.code, 'TANDEM_ERR_NO_HEALTHY_INSTANCE');
    assert.match(err.message, /1\.0\.0, 1\.4\.0, 2\.0\.0/);

    const all = new Set<string>();
    for (let i = 0; i < 30; i++) all.add((await get('/users/x')).instance ?? '');
    assert.equal(all.size, 3);

    const unknown = await get('/nosuch/x');
    assert.equal(unknown.status, 503);
    assert.equal(unknown.headers.get('x-tandem-error'), 'TANDEM_ERR_UNKNOWN_SERVICE');
    assert.equal((await get('/users@not-a-range!/x')).headers.get('x-tandem-error'), 'TANDEM_ERR_BAD_RANGE');

    // Absolute form, as an app with HTTP_PROXY would send it.
    const abs = await new Promise<{ status: number; body: string }>((resolve, reject) => {
      const { port } = new URL(proxy);
      const req = httpRequest({ host: '127.0.0.1', port, path: 'http://users.service.consul/abs?x=1', headers: { 'x-tandem-version': '2' } }, (res) => {
        let b = '';
        res.on('data', (c: Buffer) => (b += c.toString()));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body: b }));
      });
      req.on('error', reject);
      req.end();
    });
    assert.equal(abs.status, 200);
    assert.deepEqual(JSON.parse(abs.body).url, '/abs?x=1');
    assert.equal(JSON.parse(abs.body).version, '2.0.0');

    // Control API views.
    const view = (await api('GET', `${base}/v1/instances/users?range=^1`)).body as { instances: InstanceView[]; versions: string[] };
    assert.equal(view.instances.length, 2);
    assert.deepEqual(view.versions, ['1.0.0', '1.4.0', '2.0.0']);
    const resolved = (await api('GET', `${base}/v1/resolve/users?range=2`)).body as { id: string; version: string; port: number };
    assert.equal(resolved.version, '2.0.0');
    assert.equal(resolved.id, ids[2]);
    const stickyA = (await api('GET', `${base}/v1/resolve/users?stickyId=abc`)).body as { id: string };
    const stickyB = (await api('GET', `${base}/v1/resolve/users?stickyId=abc`)).body as { id: string };
    assert.equal(stickyA.id, stickyB.id);
  });

  test('an instance added receives traffic within a second of passing; a deregistered one receives none after', async () => {
    const { ups } = await startMany('orders', ['1.0.0']);
    const late = await startUpstream('orders', '1.1.0');
    cleanups.push(() => late.close());
    const id = await register('orders', '1.1.0', late.port);
    await waitHealthy('orders', 2);
    const t0 = Date.now();
    await eventually(async () => (await get('/orders/x')).instance === id, 'traffic to the new instance', 1000);
    assert.ok(Date.now() - t0 <= 1000);
    assert.equal((await api('DELETE', `${base}/v1/services/${id}`)).status, 200);
    const before = late.seen.length;
    for (let i = 0; i < 30; i++) assert.equal((await get('/orders/x')).status, 200);
    assert.equal(late.seen.length, before);
    assert.ok((ups[0]?.seen.length ?? 0) >= 30);
  });
});

describe('proxy: sticky routing', () => {
  test('the same X-StickyId hits the same instance; removing 1 of 5 moves only its keys; they come back', async () => {
    const { ups, ids } = await startMany('carts', ['1.0.0', '1.0.1', '1.0.2', '1.0.3', '1.0.4']);
    for (let i = 0; i < 100; i++) assert.equal((await get('/carts/x', { 'x-stickyid': 'user-42' })).instance, (await get('/carts/x', { 'x-stickyid': 'user-42' })).instance);
    const keys = Array.from({ length: 200 }, (_, i) => `key-${i}`);
    const owners = async () => {
      const m = new Map<string, string>();
      for (const k of keys) m.set(k, (await get('/carts/x', { 'x-stickyid': k })).instance ?? '');
      return m;
    };
    const before = await owners();
    assert.ok(new Set(before.values()).size >= 4, 'keys spread over the instances');
    const victim = ids[2] as string;
    const victimPort = ups[2]?.port as number;
    assert.equal((await api('DELETE', `${base}/v1/services/${victim}`)).status, 200);
    await eventually(async () => !(await instances('carts')).some((i) => i.id === victim), 'victim gone from the view');
    const during = await owners();
    for (const k of keys) {
      if (before.get(k) === victim) assert.notEqual(during.get(k), victim);
      else assert.equal(during.get(k), before.get(k), `key ${k} moved although its instance stayed`);
    }
    await register('carts', '1.0.2', victimPort);
    await waitHealthy('carts', 5);
    assert.deepEqual(await owners(), before);
  });

  test('when the hashed instance is unhealthy the next one serves and says x-tandem-sticky: moved', async () => {
    const { ups } = await startMany('prefs', ['1.0.0', '1.0.1', '1.0.2']);
    const first = await get('/prefs/x', { 'x-stickyid': 'sticky-user' });
    const owner = ups.find((u) => first.body.includes(`"port":${u.port}`));
    assert.ok(owner);
    await owner.close(); // its HTTP check goes critical; until then, connection refused → failover
    const moved = await get('/prefs/x', { 'x-stickyid': 'sticky-user' });
    assert.equal(moved.status, 200);
    assert.notEqual(moved.instance, first.instance);
    assert.equal(moved.headers.get('x-tandem-sticky'), 'moved');
    const pinnedGone = await get('/prefs/x', { 'x-tandem-instance': first.instance ?? '' });
    await eventually(async () => (await instances('prefs')).filter((i) => i.healthy).length === 2, 'owner critical');
    const pinned = await get('/prefs/x', { 'x-tandem-instance': first.instance ?? '' });
    assert.equal(pinned.status, 503);
    assert.equal(pinned.headers.get('x-tandem-error'), 'TANDEM_ERR_INSTANCE_NOT_FOUND');
    assert.ok([200, 502, 503].includes(pinnedGone.status));
    const other = moved.instance ?? '';
    for (let i = 0; i < 5; i++) assert.equal((await get('/prefs/x', { 'x-tandem-instance': other })).instance, other);
  });
});

describe('proxy: failover', () => {
  test('killing an instance during a steady stream of GETs fails no request; it is ejected, then served again after it restarts', async () => {
    const ports = await freePorts(3);
    const script = fileURLToPath(new URL('../support/upstream-child.mjs', import.meta.url));
    const children = new Map<number, ChildProcess>();
    const spawnChild = async (port: number) => {
      const child = spawn(process.execPath, [script, String(port), 'stream'], { stdio: ['ignore', 'pipe', 'ignore'] });
      children.set(port, child);
      await new Promise<void>((r) => child.stdout?.once('data', () => r()));
    };
    cleanups.push(async () => {
      for (const c of children.values()) c.kill('SIGKILL');
    });
    for (const p of ports) await spawnChild(p);
    const ids: string[] = [];
    for (const p of ports) ids.push(await register('stream', '1.0.0', p, { kind: 'http', path: '/health', intervalMs: 10_000 }));
    await waitHealthy('stream', 3);

    let failures = 0;
    let total = 0;
    let stop = false;
    const victimPort = ports[1] as number;
    const victim = ids[1] as string;
    const deadline = Date.now() + 20_000;
    const load = (async () => {
      while (Date.now() < deadline && total < 3000) {
        const r = await get('/stream/x');
        total++;
        if (r.status !== 200) failures++;
        if (stop) break;
      }
    })();
    await eventually(() => total >= 20 || undefined, 'load running before the kill', 10_000);
    children.get(victimPort)?.kill('SIGKILL'); // still "passing" in Consul: its check runs every 10 s
    await eventually(async () => (await instances('stream')).find((i) => i.id === victim)?.ejected === true, 'victim ejected', 5000);
    await spawnChild(victimPort);
    const seenAgain = await eventually(async () => (await get('/stream/x')).instance === victim || undefined, 'victim served again', 15_000);
    stop = true;
    await load;
    assert.ok(seenAgain);
    assert.ok(total > 50, `only ${total} requests ran`);
    assert.equal(failures, 0, `${failures} of ${total} requests failed`);
  });

  test('POST without Idempotency-Key is not retried after it reached an app, but is after a refused connection', async () => {
    const bad = await startUpstream('pay', '1.0.0');
    const good = await startUpstream('pay', '1.0.0');
    cleanups.push(() => bad.close(), () => good.close());
    bad.status = 503;
    await register('pay', '1.0.0', bad.port);
    await register('pay', '1.0.0', good.port);
    await waitHealthy('pay', 2);
    let served503 = 0;
    for (let i = 0; i < 10; i++) {
      const res = await fetch(`${proxy}/pay/status`, { method: 'POST', body: 'x', headers: { 'content-type': 'text/plain' } });
      await res.text();
      if (res.status === 503) served503++;
    }
    // Each POST that reached the 503 instance got its 503: none was retried elsewhere. (After 3
    // consecutive 503s the instance is ejected, so fewer than half reach it.)
    assert.ok(served503 >= 1);
    assert.equal(bad.seen.length, served503);
    assert.equal(good.seen.length, 10 - served503);
    // With Idempotency-Key, a 503 is retried on the other instance.
    for (let i = 0; i < 6; i++) {
      const res = await fetch(`${proxy}/pay/status`, { method: 'POST', body: 'x', headers: { 'idempotency-key': `k-${i}` } });
      await res.text();
      assert.equal(res.status, 200);
    }

    // A registered instance whose port refuses connections (TTL check kept passing by hand).
    const [deadPort] = await freePorts(1);
    const deadId = await register('pay2', '1.0.0', deadPort as number, { kind: 'ttl', ttlMs: 60_000 });
    assert.equal((await api('PUT', `${base}/v1/services/${deadId}/heartbeat`)).status, 200);
    const live = await startUpstream('pay2', '1.0.0');
    cleanups.push(() => live.close());
    await register('pay2', '1.0.0', live.port);
    await waitHealthy('pay2', 2);
    for (let i = 0; i < 6; i++) {
      const res = await fetch(`${proxy}/pay2/charge`, { method: 'POST', body: JSON.stringify({ i }), headers: { 'content-type': 'application/json' } });
      assert.equal(res.status, 200);
      await res.text();
    }
    assert.equal(live.seen.filter((s) => s.method === 'POST').length, 6);
  });
});

describe('proxy: timeouts', () => {
  test('an upstream that does not answer in time gives 504 with its code', async () => {
    const slow = await startUpstream('slow', '1.0.0');
    cleanups.push(() => slow.close());
    const second = await startSidecar(consul.address, { args: ['--set', 'proxy.upstreamTimeoutMs=300', '--set', 'proxy.retries=1'] });
    cleanups.push(() => second.sidecar.close(), () => removeDir(second.stateDir));
    assert.equal((await api('POST', `${second.api}/v1/services`, { name: 'slow', version: '1.0.0', port: slow.port, check: { kind: 'http', path: '/health' } })).status, 201);
    await eventually(async () => ((await api('GET', `${second.api}/v1/instances/slow`)).body as { instances: InstanceView[] }).instances.some((i) => i.healthy), 'slow healthy');
    const res = await fetch(`${second.sidecar.addresses.proxy}/slow/stall`);
    assert.equal(res.status, 504);
    assert.equal(res.headers.get('x-tandem-error'), 'TANDEM_ERR_UPSTREAM_TIMEOUT');
    assert.equal(((await res.json()) as { code: string }).code, 'TANDEM_ERR_UPSTREAM_TIMEOUT');
    assert.equal((await fetch(`${second.sidecar.addresses.proxy}/slow/ok`)).status, 200);
  });
});

describe('proxy: streaming', () => {
  test('10 MB up and down with matching hashes, SSE as sent, WebSocket echo, client abort closes upstream', async () => {
    const { ups } = await startMany('files', ['1.0.0']);
    const up = ups[0] as Upstream;
    const payload = Buffer.alloc(10 * 1024 * 1024);
    for (let i = 0; i < payload.length; i++) payload[i] = (i * 7 + 3) & 0xff;
    const want = createHash('sha256').update(payload).digest('hex');
    const upload = await fetch(`${proxy}/files/hash`, { method: 'PUT', body: payload });
    assert.deepEqual(await upload.json(), { sha256: want, bytes: payload.length });

    const down = await fetch(`${proxy}/files/big?bytes=${10 * 1024 * 1024}`);
    const h = createHash('sha256');
    let n = 0;
    for await (const chunk of down.body as unknown as AsyncIterable<Uint8Array>) {
      h.update(chunk);
      n += chunk.length;
    }
    assert.equal(n, 10 * 1024 * 1024);
    const direct = createHash('sha256');
    for await (const chunk of (await fetch(`http://127.0.0.1:${up.port}/big?bytes=${10 * 1024 * 1024}`)).body as unknown as AsyncIterable<Uint8Array>) direct.update(chunk);
    assert.equal(h.digest('hex'), direct.digest('hex'));

    // A chunked upload (no Content-Length) streams through too.
    const chunked = await fetch(`${proxy}/files/hash`, {
      method: 'POST',
      body: new ReadableStream({
        start(c) {
          c.enqueue(new Uint8Array(payload.subarray(0, 1_000_000)));
          c.close();
        },
      }),
      duplex: 'half',
    } as RequestInit);
    assert.equal(((await chunked.json()) as { bytes: number }).bytes, 1_000_000);

    // SSE: each event arrives on its own, about 200 ms apart.
    const sse = await fetch(`${proxy}/files/sse`);
    assert.equal(sse.headers.get('content-type'), 'text/event-stream');
    const arrivals: number[] = [];
    const t0 = Date.now();
    const decoder = new TextDecoder();
    let text = '';
    for await (const chunk of sse.body as unknown as AsyncIterable<Uint8Array>) {
      text += decoder.decode(chunk);
      arrivals.push(Date.now() - t0);
    }
    assert.match(text, /data: event-0[\s\S]*data: event-1[\s\S]*data: event-2/);
    assert.ok(arrivals.length >= 3, `events arrived in ${arrivals.length} chunks`);
    assert.ok((arrivals[arrivals.length - 1] ?? 0) - (arrivals[0] ?? 0) >= 300, 'events were not buffered until the end');

    // WebSocket echo.
    const wsUrl = `${proxy.replace('http', 'ws')}/files/ws`;
    const ws = new WebSocket(wsUrl);
    const reply = await new Promise<string>((resolve, reject) => {
      ws.on('open', () => ws.send('hello'));
      ws.on('message', (d) => resolve(String(d)));
      ws.on('error', reject);
    });
    assert.equal(reply, 'echo:hello');
    ws.close();

    // Client abort → the upstream sees its request closed.
    const ctrl = new AbortController();
    const hanging = await fetch(`${proxy}/files/hang`, { signal: ctrl.signal });
    const reader = (hanging.body as ReadableStream<Uint8Array>).getReader();
    await reader.read();
    ctrl.abort();
    await Promise.race([up.hangClosed, sleep(5000).then(() => assert.fail('upstream request was not closed'))]);

    // Clients that leave say nothing about the instance: it is not ejected, however many leave.
    const nextStall = () =>
      new Promise<IncomingMessage>((resolve) => {
        const on = (req: IncomingMessage) => {
          if (!req.url?.startsWith('/stall')) return;
          up.server.off('request', on);
          resolve(req);
        };
        up.server.on('request', on);
      });
    for (let i = 0; i < 4; i++) {
      const c = new AbortController();
      const reached = nextStall();
      const pending = fetch(`${proxy}/files/stall`, { signal: c.signal }).catch(() => undefined);
      const atApp = await Promise.race([reached, sleep(5000).then(() => assert.fail('the request did not reach the upstream'))]);
      const closed = new Promise((r) => atApp.socket.once('close', r));
      c.abort(); // at the app, before any response byte
      await pending;
      // The proxy has dealt with the abort once it closed the upstream request.
      await Promise.race([closed, sleep(5000).then(() => assert.fail('upstream request was not closed'))]);
    }
    assert.equal((await instances('files')).find((i) => i.port === up.port)?.ejected ?? false, false);
    assert.equal((await get('/files/x')).status, 200);
  });
});

describe('proxy: hostile input', () => {
  test('malformed and foreign requests get 4xx and the proxy keeps serving', async () => {
    await startMany('safe', ['1.0.0']);
    const consulHostPort = new URL(consul.address).host;
    const cases: [string, string, RegExp][] = [
      ['dot-dot', 'GET /safe/../etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n', /^HTTP\/1\.1 400[\s\S]*TANDEM_ERR_BAD_PATH/],
      ['encoded dot-dot', 'GET /safe/%2e%2e/x HTTP/1.1\r\nHost: x\r\n\r\n', /^HTTP\/1\.1 400[\s\S]*TANDEM_ERR_BAD_PATH/],
      ['encoded slash', 'GET /safe/a%2Fb HTTP/1.1\r\nHost: x\r\n\r\n', /^HTTP\/1\.1 400[\s\S]*TANDEM_ERR_BAD_PATH/],
      ['malformed path', 'GET safe HTTP/1.1\r\nHost: x\r\n\r\n', /^HTTP\/1\.1 400/],
      ['no service', 'GET / HTTP/1.1\r\nHost: x\r\n\r\n', /^HTTP\/1\.1 400[\s\S]*TANDEM_ERR_BAD_TARGET/],
      ['trailer header', 'GET /safe/x HTTP/1.1\r\nHost: x\r\nTrailer: x-foo\r\n\r\n', /^HTTP\/1\.1 400[\s\S]*TANDEM_ERR_TRAILER_NOT_SUPPORTED/],
      ['oversized headers', `GET /safe/x HTTP/1.1\r\nHost: x\r\nX-Big: ${'a'.repeat(40_000)}\r\n\r\n`, /^HTTP\/1\.1 431/],
      ['absolute URL to Consul', `GET http://${consulHostPort}/v1/agent/self HTTP/1.1\r\nHost: ${consulHostPort}\r\n\r\n`, /^HTTP\/1\.1 403[\s\S]*TANDEM_ERR_EGRESS_REFUSED/],
      ['absolute URL to a foreign name', 'GET http://example.invalid/ HTTP/1.1\r\nHost: example.invalid\r\n\r\n', /^HTTP\/1\.1 403/],
      ['CONNECT to Consul', `CONNECT ${consulHostPort} HTTP/1.1\r\nHost: ${consulHostPort}\r\n\r\n`, /^HTTP\/1\.1 403[\s\S]*TANDEM_ERR_EGRESS_REFUSED/],
      ['long URL', `GET /safe/${'a'.repeat(9000)} HTTP/1.1\r\nHost: x\r\n\r\n`, /^HTTP\/1\.1 414/],
      ['garbage', 'NOT HTTP AT ALL\r\n\r\n', /^HTTP\/1\.1 501[\s\S]*TANDEM_ERR_MALFORMED_REQUEST/], // an unknown method: 501 (RFC 9110 §15.6.2)
      ['dot-dot before a fragment', 'GET /safe/..#x HTTP/1.1\r\nHost: x\r\n\r\n', /^HTTP\/1\.1 400[\s\S]*TANDEM_ERR_BAD_PATH/],
      ['unknown Expect', 'GET /safe/x HTTP/1.1\r\nHost: x\r\nExpect: something-else\r\n\r\n', /^HTTP\/1\.1 417[\s\S]*TANDEM_ERR_EXPECTATION_FAILED/],
      ['failed upgrade', 'GET /safe/x HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n', /^HTTP\/1\.1 502[\s\S]*TANDEM_ERR_UPSTREAM_FAILED[\s\S]*answered \d{3}, not 101/],
      // Any other upgrade (h2c, tls/1.0) is an ordinary request to the proxy: the instance answers it.
      ['other upgrade', 'GET /safe/x HTTP/1.1\r\nHost: x\r\nUpgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n', /^HTTP\/1\.1 200/],
    ];
    // An error message that echoes non-ASCII input: its Content-Length counts UTF-8 bytes (a miscount would
    // leave this keep-alive client waiting for bytes that never come).
    const echoed = await fetch(`${proxy}/f%C3%BCzz/x`, { signal: AbortSignal.timeout(5000) });
    assert.equal(echoed.status, 400);
    assert.match(((await echoed.json()) as { message: string }).message, /'füzz' is not a service name/);
    for (const [what, text, want] of cases) {
      const out = await raw(text);
      assert.match(out, want, `${what}: ${out.slice(0, 200)}`);
      assert.ok(!out.includes('"v1/agent/self"') && !out.includes('"Config"'), `${what}: Consul's API must not be reachable through the proxy`);
      assert.equal((await get('/safe/ok')).status, 200, `still serving after ${what}`);
    }
    // Failed upgrades from clients that never close: the proxy closes those sockets itself (no fd leak).
    const { port: proxyPort, hostname } = new URL(proxy);
    const answers: string[] = [];
    const closedByServer = await Promise.all(
      Array.from({ length: 50 }, () =>
        new Promise<boolean>((resolve) => {
          const sock = connect(Number(proxyPort), hostname);
          const timer = setTimeout(() => {
            sock.destroy();
            resolve(false);
          }, 5000);
          sock.on('close', () => {
            clearTimeout(timer);
            resolve(true);
          });
          sock.on('error', () => undefined);
          sock.on('data', (d: Buffer) => answers.push(d.toString('latin1').split('\r\n')[0] ?? ''));
          sock.write('GET /safe/x HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\nmore bytes');
        }),
      ),
    );
    assert.equal(closedByServer.filter(Boolean).length, 50, `every failed-upgrade socket closed by the proxy (answers: ${JSON.stringify([...new Set(answers)])}, ${answers.length})`);
    // The control API maps fastify's own URL errors into the same error shape.
    const badUrl = await api('GET', `${base}/v1/instances/%zz`);
    assert.equal(badUrl.status, 400);
    assert.equal(badUrl.headers.get('x-tandem-error'), 'TANDEM_ERR_INVALID_REQUEST');
  });
});
