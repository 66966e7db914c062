// Real HTTP clients configured only by the proxy variable (fetch, http.get, undici, axios, curl) reach services by name; service tunnels; the egress policy.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createServer, request as httpRequest, type IncomingHttpHeaders, type Server } from 'node:http';
import type { Socket } from 'node:net';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Sidecar } from '../../src/sidecar.ts';
import { eventually, useConsul } from '../support/consul.ts';
import { NO_NODE24, NODE24 } from '../support/node24.ts';
import { api, removeDir, startSidecar } from '../support/sidecar.ts';
import { listenLocal } from '../support/listen.ts';
import { rawExchange } from '../support/raw-http.ts';
import { startUpstream, type Upstream } from '../support/upstream.ts';

const run = promisify(execFile);
const CLIENT = fileURLToPath(new URL('../support/proxy-client.mjs', import.meta.url));
const ROOT = fileURLToPath(new URL('../../', import.meta.url));

const consul = useConsul();
let sidecar: Sidecar;
let base: string;
let proxy: string;
let stateDir: string;
let greeters: Upstream[] = [];
let ids: Map<number, string>;
/** Plain servers on loopback that are not catalog services: one allow-listed, one not. */
let allowed: { server: Server; port: number; seen: { method: string; url: string; host: string | undefined }[] };
let other: { server: Server; port: number; seen: { method: string; url: string; host: string | undefined }[] };
const cleanups: (() => Promise<unknown>)[] = [];

async function plainServer(text: string): Promise<typeof allowed> {
  const seen: { method: string; url: string; host: string | undefined }[] = [];
  const server = createServer((req, res) => {
    seen.push({ method: req.method ?? '', url: req.url ?? '', host: req.headers.host });
    res.setHeader('content-type', 'text/plain');
    res.end(text);
  });
  const { port, close } = await listenLocal(server);
  cleanups.push(close);
  return { server, port, seen };
}

after(async () => {
  for (const c of cleanups.reverse()) await c().catch(() => undefined);
  await sidecar?.close();
  if (stateDir) await removeDir(stateDir);
});

interface Result {
  status?: number;
  headers?: Record<string, string | string[] | undefined>;
  body?: string;
  error?: string;
}

/** The standard plan every client runs: by name, sticky, by version, an unknown service. */
function plan(): { url: string; headers?: Record<string, string> }[] {
  return [
    { url: 'http://greeter.service.consul/hello?x=1' },
    ...Array.from({ length: 6 }, () => ({ url: 'http://greeter.service.consul/sticky', headers: { 'X-StickyId': 'user-42' } })),
    ...Array.from({ length: 3 }, () => ({ url: 'http://greeter.service.consul/v2', headers: { 'X-Tandem-Version': '2' } })),
    { url: 'http://nosuch.service.consul/x' },
  ];
}

function h(r: Result, name: string): string | undefined {
  const v = r.headers?.[name];
  return Array.isArray(v) ? v[0] : v;
}

function checkPlan(who: string, results: Result[]): void {
  assert.equal(results.length, 11, who);
  for (const r of results) assert.equal(r.error, undefined, `${who}: ${r.error}`);
  const [first, ...rest] = results as [Result, ...Result[]];
  assert.equal(first.status, 200, `${who}: ${first.body}`);
  assert.deepEqual({ name: JSON.parse(first.body ?? '{}').name, url: JSON.parse(first.body ?? '{}').url }, { name: 'greeter', url: '/hello?x=1' }, who);
  assert.ok(ids.has(Number(JSON.parse(first.body ?? '{}').port)), who);
  const sticky = rest.slice(0, 6);
  const stickyIds = new Set(sticky.map((r) => h(r, 'x-tandem-instance')));
  assert.equal(stickyIds.size, 1, `${who}: X-StickyId stays on one instance (${[...stickyIds].join(', ')})`);
  assert.ok([...stickyIds][0], who);
  for (const r of rest.slice(6, 9)) {
    assert.equal(r.status, 200, who);
    assert.equal(JSON.parse(r.body ?? '{}').version, '2.0.0', `${who}: X-Tandem-Version: 2`);
  }
  const unknown = rest[9] as Result;
  assert.equal(unknown.status, 503, `${who}: ${unknown.body}`);
  assert.equal(h(unknown, 'x-tandem-error'), 'TANDEM_ERR_UNKNOWN_SERVICE', who);
  assert.equal(JSON.parse(unknown.body ?? '{}').code, 'TANDEM_ERR_UNKNOWN_SERVICE', who);
}

/** Runs proxy-client.mjs with only the proxy variable (and NODE_USE_ENV_PROXY for Node's own clients) in its environment. */
async function nodeClient(nodeBin: string, client: string, requests: { url: string; headers?: Record<string, string> }[], envProxy: boolean): Promise<Result[]> {
  const env: Record<string, string> = { PATH: process.env['PATH'] ?? '', HTTP_PROXY: proxy };
  if (envProxy) env['NODE_USE_ENV_PROXY'] = '1';
  const { stdout } = await run(nodeBin, [CLIENT, client, JSON.stringify(requests)], { env, cwd: ROOT, timeout: 60_000 });
  return JSON.parse(stdout) as Result[];
}

/** curl with only `http_proxy` set (curl reads the lower-case one for http:// URLs); `-i` output parsed. */
async function curl(url: string, headers: Record<string, string> = {}, extra: string[] = []): Promise<Result> {
  const args = ['-s', '-i', '--max-time', '20', ...extra, ...Object.entries(headers).flatMap(([k, v]) => ['-H', `${k}: ${v}`]), url];
  const { stdout } = await run('curl', args, { env: { PATH: process.env['PATH'] ?? '', http_proxy: proxy }, timeout: 30_000 });
  // With -p (CONNECT) curl prints the proxy's answer first: the last head is the response's.
  const heads = stdout.split(/\r\n\r\n/);
  let i = 0;
  while (i < heads.length - 1 && /^HTTP\/1\.[01] 200 Connection established/i.test(heads[i] ?? '')) i++;
  const head = heads[i] ?? '';
  const body = heads.slice(i + 1).join('\r\n\r\n');
  const [statusLine, ...lines] = head.split('\r\n');
  const out: IncomingHttpHeaders = {};
  for (const l of lines) {
    const at = l.indexOf(':');
    if (at > 0) out[l.slice(0, at).toLowerCase()] = l.slice(at + 1).trim();
  }
  return { status: Number(statusLine?.split(' ')[1]), headers: out as Record<string, string>, body };
}

/** Raw bytes to the proxy; everything it answers until it closes or `waitMs` passes. */
function raw(text: string | Buffer, waitMs = 1500, then?: (sock: Socket, out: () => string) => void): Promise<{ out: string; closedByServer: boolean }> {
  return rawExchange(proxy, text, waitMs, then);
}

function absolute(url: string, headers: Record<string, string> = {}): Promise<Result> {
  const { port } = new URL(proxy);
  return new Promise((resolve, reject) => {
    const req = httpRequest({ host: '127.0.0.1', port, path: url, headers: { host: new URL(url).host, ...headers } }, (res) => {
      let body = '';
      res.on('data', (c: Buffer) => (body += c.toString()));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers as Record<string, string>, body }));
    });
    req.on('error', reject);
    req.end();
  });
}

async function metric(line: RegExp): Promise<number> {
  const text = (await api('GET', `${base}/metrics`)).body as string;
  const m = text.split('\n').find((l) => line.test(l));
  return m ? Number(m.split(' ').pop()) : 0;
}

describe('real clients through HTTP_PROXY', () => {
  before(async () => {
    allowed = await plainServer('egress ok');
    other = await plainServer('should never be reached');
    ({ sidecar, api: base, stateDir } = await startSidecar(consul.address, { args: ['--set', `proxy.egress.allow=${JSON.stringify([`127.0.0.1:${allowed.port}`])}`] }));
    proxy = sidecar.addresses.proxy;
    greeters = await Promise.all([startUpstream('greeter', '1.0.0'), startUpstream('greeter', '1.0.0'), startUpstream('greeter', '2.0.0')]);
    for (const g of greeters) cleanups.push(() => g.close());
    ids = new Map();
    for (const g of greeters) {
      const res = await api('POST', `${base}/v1/services`, { name: 'greeter', version: g.version, port: g.port, check: { kind: 'http', path: '/health' } });
      assert.equal(res.status, 201, JSON.stringify(res.body));
      ids.set(g.port, (res.body as { id: string }).id);
    }
    await eventually(async () => ((await api('GET', `${base}/v1/instances/greeter`)).body as { instances?: { healthy: boolean }[] }).instances?.filter((i) => i.healthy).length === 3, '3 healthy greeters');
  });

  test("Node's built-in fetch with NODE_USE_ENV_PROXY=1 (CONNECT for http:// URLs)", { skip: NO_NODE24 }, async () => {
    const tunnels = await metric(/^tandem_proxy_requests_total\{service="greeter"/);
    checkPlan(`fetch on ${NODE24}`, await nodeClient(NODE24 as string, 'fetch', plan(), true));
    assert.ok((await metric(/^tandem_proxy_requests_total\{service="greeter"/)) > tunnels);
  });

  test("http.get with NODE_USE_ENV_PROXY=1 (absolute form)", { skip: NO_NODE24 }, async () => {
    checkPlan(`http.get on ${NODE24}`, await nodeClient(NODE24 as string, 'http', plan(), true));
  });

  test("undici's EnvHttpProxyAgent with its defaults (CONNECT for http:// URLs)", async () => {
    checkPlan('undici EnvHttpProxyAgent', await nodeClient(process.execPath, 'undici', plan(), false));
  });

  test('axios (proxy from HTTP_PROXY, absolute form)', async () => {
    checkPlan('axios', await nodeClient(process.execPath, 'axios', plan(), false));
  });

  test('curl (http_proxy, absolute form; and -p, a CONNECT tunnel)', async () => {
    const results: Result[] = [];
    for (const r of plan()) results.push(await curl(r.url, r.headers));
    checkPlan('curl', results);
    const tunnelled: Result[] = [];
    for (const r of plan()) tunnelled.push(await curl(r.url, r.headers, ['-p']));
    checkPlan('curl -p', tunnelled);
  });
});

describe('the path form through HTTP_PROXY', () => {
  test("an app that calls the proxy's own path form with HTTP_PROXY set reaches the service (absolute form and CONNECT to the proxy itself)", async () => {
    const viaCurl = await curl(`${proxy}/greeter@2/self`);
    assert.equal(viaCurl.status, 200, viaCurl.body);
    assert.equal(JSON.parse(viaCurl.body ?? '{}').version, '2.0.0');
    assert.equal(JSON.parse(viaCurl.body ?? '{}').url, '/self');
    const [viaUndici] = await nodeClient(process.execPath, 'undici', [{ url: `${proxy}/greeter@2/tunnelled` }], false);
    assert.equal(viaUndici?.status, 200, viaUndici?.error ?? viaUndici?.body);
    assert.equal(JSON.parse(viaUndici?.body ?? '{}').url, '/tunnelled');
  });
});

describe('CONNECT tunnels to services', () => {
  test('keep-alive and pipelined requests inside one tunnel, in order; paths go to the tunnel’s service as they are', async () => {
    const r = await raw(
      'CONNECT greeter.service.consul:80 HTTP/1.1\r\nHost: greeter.service.consul:80\r\n\r\n' +
        'GET /a HTTP/1.1\r\nHost: greeter.service.consul\r\n\r\n' +
        'GET /greeter@2/b HTTP/1.1\r\nHost: greeter.service.consul\r\nX-Tandem-Version: 2\r\n\r\n' +
        'GET http://greeter.service.consul/c HTTP/1.1\r\nHost: greeter.service.consul\r\nConnection: close\r\n\r\n',
      3000,
    );
    const statuses = [...r.out.matchAll(/HTTP\/1\.1 (\d{3}) [^\r]*/g)].map((m) => m[0]);
    assert.deepEqual(statuses, ['HTTP/1.1 200 Connection Established', 'HTTP/1.1 200 OK', 'HTTP/1.1 200 OK', 'HTTP/1.1 200 OK']);
    const bodies = [...r.out.matchAll(/\{"name":"greeter"[^}]*\}/g)].map((m) => JSON.parse(m[0]) as { url: string; version: string });
    assert.deepEqual(bodies.map((b) => b.url), ['/a', '/greeter@2/b', '/c']);
    assert.equal(bodies[1]?.version, '2.0.0');
    assert.ok(r.closedByServer, 'connection: close inside the tunnel closes it');
  });

  test('a client that leaves mid-response cancels the upstream request; errors inside keep the JSON shape', async () => {
    const g = greeters[0] as Upstream;
    const id = ids.get(g.port) as string;
    await raw(`CONNECT greeter.service.consul:80 HTTP/1.1\r\nHost: x\r\n\r\nGET /hang HTTP/1.1\r\nHost: greeter.service.consul\r\nX-Tandem-Instance: ${id}\r\n\r\n`, 5000, (sock, out) => {
      const t = setInterval(() => {
        if (out().includes('started')) {
          clearInterval(t);
          sock.destroy();
        }
      }, 20);
    });
    await Promise.race([g.hangClosed, sleep(5000).then(() => assert.fail('the upstream request was not cancelled'))]);
    const bad = await raw('CONNECT greeter.service.consul:80 HTTP/1.1\r\nHost: x\r\n\r\nGET /../etc HTTP/1.1\r\nHost: greeter.service.consul\r\nConnection: close\r\n\r\n');
    assert.match(bad.out, /^HTTP\/1\.1 200 Connection Established\r\n\r\nHTTP\/1\.1 400 [\s\S]*x-tandem-error: TANDEM_ERR_BAD_PATH/);
    const unknown = await raw('CONNECT nosuch.service.consul:80 HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: nosuch.service.consul\r\nConnection: close\r\n\r\n');
    assert.match(unknown.out, /HTTP\/1\.1 503 [\s\S]*TANDEM_ERR_UNKNOWN_SERVICE/);
    const cp = await raw('CONNECT tandem.service.consul:80 HTTP/1.1\r\nHost: x\r\n\r\n');
    assert.match(cp.out, /^HTTP\/1\.1 403 [\s\S]*TANDEM_ERR_CONTROL_PLANE/);
  });

  test('TLS to a service is refused clearly: CONNECT :443 answers 400, a ClientHello inside a tunnel is closed', async () => {
    const r = await raw('CONNECT greeter.service.consul:443 HTTP/1.1\r\nHost: greeter.service.consul:443\r\n\r\n');
    assert.match(r.out, /^HTTP\/1\.1 400 [\s\S]*x-tandem-error: TANDEM_ERR_TLS_NOT_SUPPORTED[\s\S]*http:\/\/<service>\.service\.consul/);
    const hello = Buffer.concat([Buffer.from('CONNECT greeter.service.consul:80 HTTP/1.1\r\nHost: x\r\n\r\n'), Buffer.from([0x16, 0x03, 0x01, 0x00, 0x05, 0x01, 0x00, 0x00, 0x01, 0x00])]);
    const t = await raw(hello, 3000);
    assert.equal(t.out, 'HTTP/1.1 200 Connection Established\r\n\r\n', 'nothing but the tunnel answer: no HTTP error written at a TLS client');
    assert.ok(t.closedByServer);
    // curl to an https:// service URL through the proxy fails at CONNECT, with the proxy's status.
    const c = await run('curl', ['-s', '-o', '/dev/null', '-w', '%{http_connect}', '--max-time', '10', 'https://greeter.service.consul/'], { env: { PATH: process.env['PATH'] ?? '', https_proxy: proxy } }).catch((err: { stdout?: string }) => ({ stdout: err.stdout ?? '' }));
    assert.equal(c.stdout, '400');
  });
});

describe('egress: hosts that are not catalog services', () => {
  test('an allow-listed loopback port is reached through absolute form and through CONNECT', async () => {
    const forwardedBefore = await metric(/^tandem_proxy_egress_total\{kind="http",outcome="forwarded"\}/);
    const abs = await absolute(`http://127.0.0.1:${allowed.port}/egress?x=1`, { 'x-tandem-version': '9', 'proxy-authorization': 'secret' });
    assert.equal(abs.status, 200);
    assert.equal(abs.body, 'egress ok');
    assert.equal(abs.headers?.['x-tandem-instance'], undefined);
    assert.deepEqual(allowed.seen.at(-1), { method: 'GET', url: '/egress?x=1', host: `127.0.0.1:${allowed.port}` });
    const viaCurl = await curl(`http://127.0.0.1:${allowed.port}/curl`);
    assert.equal(viaCurl.body, 'egress ok');
    // undici's EnvHttpProxyAgent tunnels http:// URLs: a CONNECT passthrough.
    const [viaUndici] = await nodeClient(process.execPath, 'undici', [{ url: `http://127.0.0.1:${allowed.port}/tunnel` }], false);
    assert.equal(viaUndici?.body, 'egress ok', viaUndici?.error);
    assert.equal(allowed.seen.at(-1)?.url, '/tunnel');
    const tunnel = await raw(`CONNECT 127.0.0.1:${allowed.port} HTTP/1.1\r\nHost: 127.0.0.1:${allowed.port}\r\n\r\nGET /raw HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n`);
    assert.match(tunnel.out, /^HTTP\/1\.1 200 Connection Established\r\n\r\nHTTP\/1\.1 200 OK[\s\S]*egress ok$/);
    assert.equal(await metric(/^tandem_proxy_egress_total\{kind="http",outcome="forwarded"\}/), forwardedBefore + 2);
    assert.ok((await metric(/^tandem_proxy_egress_total\{kind="connect",outcome="forwarded"\}/)) >= 2);
  });

  test('a loopback port not on the list, the Consul agent and a name under .invalid are refused with the policy’s error', async () => {
    const consulHost = new URL(consul.address).host;
    const refusedBefore = await metric(/^tandem_proxy_egress_total\{kind="connect",outcome="refused"\}/);
    for (const [what, authority] of [
      ['loopback port not allow-listed', `127.0.0.1:${other.port}`],
      ['the same as localhost', `localhost:${other.port}`],
      ['the Consul agent', consulHost],
      ['a .invalid name', 'example.invalid:80'],
    ] as const) {
      const abs = await absolute(`http://${authority}/v1/agent/self`);
      assert.equal(abs.status, 403, `${what}: ${abs.body}`);
      assert.equal(abs.headers?.['x-tandem-error'], 'TANDEM_ERR_EGRESS_REFUSED', what);
      const message = (JSON.parse(abs.body ?? '{}') as { message: string }).message;
      assert.match(message, /proxy\.egress\.mode 'auto \(public\)'/, what);
      assert.match(message, /proxy\.egress\.allow/, what);
      assert.match(message, /NO_PROXY/, what);
      const tunnel = await raw(`CONNECT ${authority} HTTP/1.1\r\nHost: ${authority}\r\n\r\nGET /v1/agent/self HTTP/1.1\r\nHost: x\r\n\r\n`);
      assert.match(tunnel.out, /^HTTP\/1\.1 403 Forbidden\r\n[\s\S]*x-tandem-error: TANDEM_ERR_EGRESS_REFUSED[\s\S]*NO_PROXY/, what);
      assert.doesNotMatch(tunnel.out, /"Config"|should never be reached/, what);
      assert.ok(tunnel.closedByServer, what);
    }
    assert.deepEqual(other.seen, [], 'the port that is not allow-listed saw nothing');
    // What an app sees: curl prints the proxy's JSON.
    const viaCurl = await curl(`http://127.0.0.1:${other.port}/`);
    assert.equal(viaCurl.status, 403);
    assert.equal(JSON.parse(viaCurl.body ?? '{}').code, 'TANDEM_ERR_EGRESS_REFUSED');
    assert.equal(await metric(/^tandem_proxy_egress_total\{kind="connect",outcome="refused"\}/), refusedBefore + 4);
  });
});
