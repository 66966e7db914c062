// Trust boundaries on a real Consul: the proxy never reaches a control plane; with ACLs on, control-API writes need the caller's own credentials.
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { createServer, request as httpRequest, type IncomingHttpHeaders } from 'node:http';
import { after, describe, test } from 'node:test';
import { ConsulDevAgent } from '../../src/consul/consul-dev-agent.ts';
import { runOperator } from '../../src/cli/cli-client.ts';
import { Tandem, TandemError } from '../../src/sdk/index.ts';
import { agentServiceIds, eventually, useConsul } from '../support/consul.ts';
import { removeDir, startService, startSidecar } from '../support/sidecar.ts';

const consul = useConsul();
const cleanups: (() => Promise<unknown>)[] = [];
after(async () => {
  for (const c of cleanups.reverse()) await c().catch(() => undefined);
});

interface Answer {
  status: number;
  code: string | null;
  body: { code?: string; message?: string } & Record<string, unknown>;
}

/** One request with node:http (absolute-form targets and Upgrade need it), answered as status, x-tandem-error and JSON body. */
function raw(base: string, path: string, opts: { method?: string; headers?: Record<string, string>; body?: string } = {}): Promise<Answer> {
  const u = new URL(base);
  return new Promise((resolve, reject) => {
    const req = httpRequest({ host: u.hostname, port: u.port, method: opts.method ?? 'GET', path, headers: opts.headers ?? {} }, (res) => {
      let text = '';
      res.on('data', (d: Buffer) => (text += d.toString()));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, code: (res.headers['x-tandem-error'] as string | undefined) ?? null, body: parse(text) }));
    });
    // An upgrade the proxy refuses is answered on the raw socket: node reports it as a response.
    req.on('upgrade', (res, socket) => {
      socket.destroy();
      resolve({ status: res.statusCode ?? 101, code: null, body: {} });
    });
    req.on('error', reject);
    req.end(opts.body);
  });
}

function parse(text: string): Answer['body'] {
  try {
    return JSON.parse(text) as Answer['body'];
  } catch {
    return { text };
  }
}

/** A control-API call with the given credentials. */
async function call(base: string, method: string, path: string, creds: { consulToken?: string; bearer?: string } = {}, body?: unknown): Promise<Answer> {
  const headers: Record<string, string> = {};
  if (creds.consulToken !== undefined) headers['x-consul-token'] = creds.consulToken;
  if (creds.bearer !== undefined) headers['authorization'] = `Bearer ${creds.bearer}`;
  if (body !== undefined) headers['content-type'] = 'application/json';
  const res = await fetch(`${base}${path}`, { method, headers, ...(body !== undefined ? { body: JSON.stringify(body) } : {}) });
  return { status: res.status, code: res.headers.get('x-tandem-error'), body: parse(await res.text()) };
}

function assertControlPlane(a: Answer, what: string): void {
  assert.equal(a.status, 403, `${what}: ${JSON.stringify(a.body)}`);
  assert.equal(a.body.code, 'TANDEM_ERR_CONTROL_PLANE', what);
  assert.match(a.body.message ?? '', /control plane/, what);
}

describe('the proxy never reaches a control plane', () => {
  test("/tandem/... plain, absolute form, pinned, broadcast or upgraded: 403 and the control API is not reached", async () => {
    const { sidecar, api: base, stateDir } = await startSidecar(consul.address, { nodeName: 'trust-proxy' });
    cleanups.push(() => sidecar.close(), () => removeDir(stateDir));
    const proxy = sidecar.addresses.proxy;
    const ids = async () => ((await call(base, 'GET', '/v1/services')).body as unknown as { id: string; source: string }[]).map((r) => `${r.source}:${r.id}`).sort();
    const registered = await ids();
    const selfId = registered.find((r) => r.startsWith('sidecar:'))?.slice('sidecar:'.length) ?? '';
    assert.match(selfId, /^tandem-trust-proxy-\d+$/);
    const before = await agentServiceIds(consul);
    // What an attacker with only the proxy port would send: a service pointing at Consul's own HTTP port.
    const evil = JSON.stringify({ name: 'evil', version: '1.0.0', address: '127.0.0.1', port: consul.httpPort });
    const post = { method: 'POST', headers: { 'content-type': 'application/json' }, body: evil };

    assertControlPlane(await raw(proxy, '/tandem/v1/services', post), 'path form');
    assertControlPlane(await raw(proxy, '/tandem@%5E0/v1/services', post), 'path form with a range');
    assertControlPlane(await raw(proxy, 'http://tandem.service.consul/v1/services', post), 'absolute form');
    assertControlPlane(await raw(proxy, 'http://tandem.service/v1/services', post), 'absolute form without .consul');
    assertControlPlane(await raw(proxy, '/tandem/v1/services', { ...post, headers: { ...post.headers, 'x-tandem-instance': selfId } }), 'pinned');
    // Pinned on the sidecar's id under another service name: refused before any catalog lookup.
    assertControlPlane(await raw(proxy, '/anything/v1/services', { ...post, headers: { ...post.headers, 'x-tandem-instance': selfId } }), 'pinned under another name');
    assertControlPlane(await raw(proxy, '/tandem/v1/services', { ...post, headers: { ...post.headers, 'x-tandem-broadcast': 'all' } }), 'broadcast');
    assertControlPlane(await raw(proxy, '/consul/v1/agent/services'), "Consul's own service");
    const upgrade = await raw(proxy, '/tandem/v1/events/x', { headers: { connection: 'Upgrade', upgrade: 'websocket', 'sec-websocket-version': '13', 'sec-websocket-key': 'dGhlIHNhbXBsZSBub25jZQ==' } });
    assertControlPlane(upgrade, 'websocket upgrade');

    assert.deepEqual(await agentServiceIds(consul), before, 'nothing was registered through the proxy');
    assert.deepEqual(await ids(), registered, "the sidecar's registrations are unchanged");
    await sidecar.close();
  });

  test("an instance at Consul's or a sidecar's address:port, or carrying the sidecar mark, is never proxied to", async () => {
    const { sidecar, api: base, stateDir } = await startSidecar(consul.address, { nodeName: 'trust-addr' });
    cleanups.push(() => sidecar.close(), () => removeDir(stateDir));
    const proxy = sidecar.addresses.proxy;
    const apiPort = Number(new URL(base).port);
    const proxyPort = Number(new URL(proxy).port);
    const real = await startService('real', '1.0.0');
    cleanups.push(real.close);

    // Through Tandem, as an app would: a TTL-checked service at the Consul agent's own HTTP address.
    const reg = await call(base, 'POST', '/v1/services', {}, { name: 'at-consul', version: '1.0.0', address: '127.0.0.1', port: consul.httpPort, check: { kind: 'ttl', ttlMs: 60_000 } });
    assert.equal(reg.status, 201, JSON.stringify(reg.body));
    assert.equal((await call(base, 'PUT', `/v1/services/${String(reg.body['id'])}/heartbeat`)).status, 200);
    // Straight into Consul (no check: passing), as any app with Consul access could.
    const direct = async (id: string, address: string, port: number, extra: Record<string, unknown> = {}) => {
      const res = await fetch(`${consul.address}/v1/agent/service/register`, { method: 'PUT', body: JSON.stringify({ ID: id, Name: id, Address: address, Port: port, Meta: { version: '1.0.0' }, ...extra }) });
      assert.equal(res.status, 200, await res.text());
      cleanups.push(() => fetch(`${consul.address}/v1/agent/service/deregister/${id}`, { method: 'PUT' }));
    };
    await direct('consul-other-loopback', '127.0.0.2', consul.httpPort); // the agent's port on another local address
    await direct('own-api-by-name', 'localhost', apiPort);
    await direct('own-proxy', '127.0.0.1', proxyPort);
    await direct('numeric-consul', '2130706433', consul.httpPort); // 127.0.0.1 spelt as a number: caught at connect time
    await direct('marked-tag', '127.0.0.1', real.port, { Tags: ['tandem-sidecar'] });
    await direct('marked-meta', '127.0.0.1', real.port, { Meta: { version: '1.0.0', tandem_api: '127.0.0.1:1' } });
    await direct('plain', '127.0.0.1', real.port);

    // The control: an ordinary instance routes.
    const plain = await eventually(async () => {
      const a = await raw(proxy, '/plain/hello');
      return a.status === 200 ? a : undefined;
    }, 'plain routes');
    assert.equal(plain.body['name'], 'real');

    for (const name of ['at-consul', 'consul-other-loopback', 'own-api-by-name', 'own-proxy', 'numeric-consul', 'marked-tag', 'marked-meta']) {
      // Wait until the proxy knows the service (not 503 unknown/no healthy yet), then it must refuse it.
      const a = await eventually(async () => {
        const r = await raw(proxy, `/${name}/v1/agent/services`);
        return r.status === 503 ? undefined : r;
      }, `${name} known to the proxy`);
      assertControlPlane(a, name);
      assertControlPlane(await raw(proxy, `http://${name}.service.consul/v1/agent/services`), `${name}, absolute form`);
    }
    // The refused instance is refused when pinned too.
    assertControlPlane(await raw(proxy, '/at-consul/v1/agent/services', { headers: { 'x-tandem-instance': String(reg.body['id']) } }), 'pinned at-consul');

    // Apps cannot put the sidecar's marks on what they register through Tandem.
    for (const [what, spec, code] of [
      ['name', { name: 'tandem', version: '1.0.0', port: real.port }, 'TANDEM_ERR_RESERVED_SERVICE'],
      ['tag', { name: 'sneaky', version: '1.0.0', port: real.port, tags: ['tandem-sidecar'] }, 'TANDEM_ERR_RESERVED_SERVICE'],
      ['meta', { name: 'sneaky', version: '1.0.0', port: real.port, meta: { tandem_api: 'x' } }, 'TANDEM_ERR_INVALID_SERVICE'], // the schema reserves tandem_*
    ] as const) {
      const r = await call(base, 'POST', '/v1/services', {}, spec);
      assert.equal(r.status, 400, what);
      assert.equal(r.body.code, code, what);
      assert.match(r.body.message ?? '', /reserved/, what);
    }
    await sidecar.close();
  });
});

const ACL_HCL = 'acl { enabled = true default_policy = "deny" enable_token_persistence = false tokens { master = "root-token" } }';

describe('with Consul ACLs on (default deny), control-API writes need credentials', () => {
  const acl = new ConsulDevAgent({ extraArgs: ['-hcl', ACL_HCL], probeToken: 'root-token' });
  const root = { 'x-consul-token': 'root-token', 'content-type': 'application/json' };
  const tokens = { sidecar: '', app: '', readOnly: '' };
  const API_TOKEN = 'trust-api-token-0123456789';
  let bare: Awaited<ReturnType<typeof startSidecar>>;
  let guarded: Awaited<ReturnType<typeof startSidecar>>;
  let svcPort = 0;

  const consulAs = async <T>(method: string, path: string, body?: unknown): Promise<T> => {
    const res = await fetch(`${acl.address}${path}`, { method, headers: root, ...(body !== undefined ? { body: JSON.stringify(body) } : {}) });
    const text = await res.text();
    assert.ok(res.ok, `${method} ${path}: ${res.status} ${text}`);
    return (text ? JSON.parse(text) : null) as T;
  };
  const tokenFor = async (name: string, rules: string): Promise<string> => {
    await consulAs('PUT', '/v1/acl/policy', { Name: name, Rules: rules });
    return (await consulAs<{ SecretID: string }>('PUT', '/v1/acl/token', { Description: name, Policies: [{ Name: name }] })).SecretID;
  };
  const servicesInConsul = async () => Object.keys(await consulAs<Record<string, unknown>>('GET', '/v1/agent/services')).sort();
  const drainKey = async (node: string) => (await fetch(`${acl.address}/v1/kv/tandem/drain/${node}`, { headers: root })).status;

  test('setup: an ACL agent, the Tandem policy for the sidecars, an app token and a read-only token', async () => {
    await acl.start();
    cleanups.push(() => acl.stop());
    tokens.sidecar = await tokenFor('tandem', await readFile(new URL('../../deploy/consul/acl/tandem-policy.hcl', import.meta.url), 'utf8'));
    tokens.app = await tokenFor('app', ['service_prefix "app-" { policy = "write" }', 'node_prefix "" { policy = "read" }', 'key_prefix "tandem/" { policy = "write" }', 'session_prefix "" { policy = "write" }'].join('\n'));
    tokens.readOnly = await tokenFor('read-only', ['service_prefix "" { policy = "read" }', 'node_prefix "" { policy = "read" }', 'key_prefix "" { policy = "read" }'].join('\n'));
    const svc = await startService('app-svc', '1.0.0');
    cleanups.push(svc.close);
    svcPort = svc.port;
    bare = await startSidecar(acl.address, { nodeName: 'trust-bare', args: ['--set', `consul.token=${tokens.sidecar}`] });
    cleanups.push(() => bare.sidecar.close(), () => removeDir(bare.stateDir));
    guarded = await startSidecar(acl.address, { nodeName: 'trust-guarded', args: ['--set', `consul.token=${tokens.sidecar}`, '--set', `api.token=${API_TOKEN}`] });
    cleanups.push(() => guarded.sidecar.close(), () => removeDir(guarded.stateDir));
  });

  test('without credentials: register, deregister, heartbeat, drain, publish, campaign, ready-to-stop → 401 that says how to fix it', async () => {
    const before = await servicesInConsul();
    const spec = { name: 'app-svc', version: '1.0.0', port: svcPort };
    const writes: [string, string, unknown][] = [
      ['POST', '/v1/services', spec],
      ['DELETE', `/v1/services/tandem-trust-bare-1`, undefined],
      ['PUT', '/v1/services/x/heartbeat', {}],
      ['PUT', '/v1/drain/elsewhere', { reason: 'no' }],
      ['DELETE', '/v1/drain/elsewhere', undefined],
      ['POST', '/v1/events/trust', { hello: 1 }],
      ['POST', '/v1/leaders/trust/campaign?serviceId=x', undefined],
      ['POST', '/v1/services/x/ready-to-stop', undefined],
    ];
    for (const [method, path, body] of writes) {
      const r = await call(bare.api, method, path, {}, body);
      assert.equal(r.status, 401, `${method} ${path}: ${JSON.stringify(r.body)}`);
      assert.equal(r.code, 'TANDEM_ERR_CREDENTIALS_REQUIRED');
      assert.match(r.body.message ?? '', /X-Consul-Token/);
      assert.match(r.body.message ?? '', /CONSUL_HTTP_TOKEN/);
      assert.match(r.body.message ?? '', /api\.token/);
    }
    // An empty token is no token.
    assert.equal((await call(bare.api, 'POST', '/v1/services', { consulToken: ' ' }, spec)).status, 401);
    assert.deepEqual(await servicesInConsul(), before, 'Consul unchanged');
    assert.equal(await drainKey('elsewhere'), 404, 'no drain written');
    // Reads need no credential.
    assert.equal((await call(bare.api, 'GET', '/v1/services')).status, 200);
    assert.equal((await call(bare.api, 'GET', '/v1/drain/elsewhere')).status, 200);
  });

  test("with the caller's own token that Consul accepts, each write works (made with that token)", async () => {
    const app = { consulToken: tokens.app };
    const reg = await call(bare.api, 'POST', '/v1/services', app, { name: 'app-svc', version: '1.0.0', port: svcPort, check: { kind: 'ttl', ttlMs: 60_000 } });
    assert.equal(reg.status, 201, JSON.stringify(reg.body));
    const id = String(reg.body['id']);
    assert.ok((await servicesInConsul()).includes(id));
    assert.equal((await call(bare.api, 'PUT', `/v1/services/${id}/heartbeat`, app, {})).status, 200);
    const pub = await call(bare.api, 'POST', '/v1/events/trust', app, { hello: 1 });
    assert.equal(pub.status, 201, JSON.stringify(pub.body));
    const drain = await call(bare.api, 'PUT', '/v1/drain/elsewhere', app, { reason: 'maintenance window' });
    assert.equal(drain.status, 200, JSON.stringify(drain.body));
    assert.equal(await drainKey('elsewhere'), 200);
    assert.equal((await call(bare.api, 'DELETE', '/v1/drain/elsewhere', app)).status, 200);
    assert.equal(await drainKey('elsewhere'), 404);
    const promoted = await campaign(bare.api, 'trust-ok', id, app);
    assert.equal(promoted.event, 'promoted', JSON.stringify(promoted));
    const del = await call(bare.api, 'DELETE', `/v1/services/${id}`, app);
    assert.equal(del.status, 200, JSON.stringify(del.body));
    assert.ok(!(await servicesInConsul()).includes(id));
  });

  test("with a token Consul refuses → 403 naming Consul's refusal of the caller's token; nothing changes", async () => {
    const before = await servicesInConsul();
    for (const [what, token, consulSays] of [
      ['read-only token', tokens.readOnly, /Permission denied/],
      ['unknown token', '00000000-0000-4000-8000-000000000000', /ACL not found/],
    ] as const) {
      const reg = await call(bare.api, 'POST', '/v1/services', { consulToken: token }, { name: 'app-svc', version: '1.0.0', port: svcPort });
      assert.equal(reg.status, 403, `${what}: ${JSON.stringify(reg.body)}`);
      assert.equal(reg.code, 'TANDEM_ERR_CONSUL_PERMISSION_DENIED');
      assert.match(reg.body.message ?? '', /caller's own ACL token/);
      assert.match(reg.body.message ?? '', consulSays);
      assert.ok(!JSON.stringify(reg.body).includes(token), 'the token is never echoed');
    }
    // A token that may not write this service's name is refused by Consul even though the sidecar's could.
    const other = await call(bare.api, 'POST', '/v1/services', { consulToken: tokens.app }, { name: 'not-app', version: '1.0.0', port: svcPort });
    assert.equal(other.status, 403, JSON.stringify(other.body));
    const ro = { consulToken: tokens.readOnly };
    const pub = await call(bare.api, 'POST', '/v1/events/trust', ro, { hello: 1 });
    assert.equal(pub.status, 403, JSON.stringify(pub.body));
    assert.match(pub.body.message ?? '', /caller's own ACL token/);
    const drain = await call(bare.api, 'PUT', '/v1/drain/elsewhere', ro, { reason: 'no' });
    assert.equal(drain.status, 403, JSON.stringify(drain.body));
    assert.match(drain.body.message ?? '', /caller's own ACL token/);
    assert.equal(await drainKey('elsewhere'), 404);
    assert.deepEqual(await servicesInConsul(), before);

    // A campaign's stream is open before its first Consul write: the refusal arrives as its error event.
    const reg = await call(bare.api, 'POST', '/v1/services', { consulToken: tokens.app }, { name: 'app-leader', version: '1.0.0', port: svcPort, check: { kind: 'ttl', ttlMs: 60_000 } });
    assert.equal(reg.status, 201);
    // Passing, so only the token can be what Consul refuses (a session needs its checks passing).
    assert.equal((await call(bare.api, 'PUT', `/v1/services/${String(reg.body['id'])}/heartbeat`, { consulToken: tokens.app }, {})).status, 200);
    const refused = await campaign(bare.api, 'trust-no', String(reg.body['id']), ro);
    if (refused.status === 403) assert.match(String(refused.data['message']), /caller's own ACL token/);
    else {
      assert.equal(refused.event, 'error', JSON.stringify(refused));
      assert.match(String(refused.data['message']), /Permission denied/);
    }
    assert.equal((await call(bare.api, 'DELETE', `/v1/services/${String(reg.body['id'])}`, { consulToken: tokens.app })).status, 200);
  });

  test("api.token as bearer: writes work with the sidecar's own token; without it, nothing but health", async () => {
    const bearer = { bearer: API_TOKEN };
    assert.equal((await call(guarded.api, 'POST', '/v1/services', {}, { name: 'app-svc', version: '1.0.0', port: svcPort })).code, 'TANDEM_ERR_UNAUTHORIZED');
    // The sidecar's token (Tandem policy) may register any name: the operator chose to lend it to api.token holders.
    const reg = await call(guarded.api, 'POST', '/v1/services', bearer, { name: 'ops-svc', version: '1.0.0', port: svcPort, check: { kind: 'ttl', ttlMs: 60_000 } });
    assert.equal(reg.status, 201, JSON.stringify(reg.body));
    const id = String(reg.body['id']);
    assert.ok((await servicesInConsul()).includes(id));
    assert.equal((await call(guarded.api, 'PUT', `/v1/services/${id}/heartbeat`, bearer, {})).status, 200);
    assert.equal((await call(guarded.api, 'POST', '/v1/events/trust', bearer, { ops: true })).status, 201);
    assert.equal((await call(guarded.api, 'PUT', '/v1/drain/elsewhere', bearer, {})).status, 200);
    assert.equal((await call(guarded.api, 'DELETE', '/v1/drain/elsewhere', bearer)).status, 200);
    // Bearer plus the caller's own token: the caller's token is the one used, so Consul refuses a read-only one.
    const both = await call(guarded.api, 'POST', '/v1/events/trust', { ...bearer, consulToken: tokens.readOnly }, { ops: true });
    assert.equal(both.status, 403, JSON.stringify(both.body));
    assert.equal((await call(guarded.api, 'DELETE', `/v1/services/${id}`, bearer)).status, 200);
  });

  test('the SDK and the CLI send the caller token from CONSUL_HTTP_TOKEN to the control API, never to services', async () => {
    // An upstream that shows the headers it got.
    const seen: IncomingHttpHeaders[] = [];
    const echo = createServer((req, res) => {
      seen.push(req.headers);
      res.end(req.url === '/health' ? 'ok' : 'seen');
    });
    await new Promise<void>((r) => echo.listen(0, '127.0.0.1', r));
    cleanups.push(() => new Promise((r) => echo.close(r)));
    const port = (echo.address() as { port: number }).port;

    await withEnv({ CONSUL_HTTP_TOKEN: tokens.app, CONSUL_HTTP_TOKEN_FILE: undefined }, async () => {
      const tandem = new Tandem({ url: bare.api, proxyUrl: bare.sidecar.addresses.proxy });
      const svc = await tandem.register({ name: 'app-echo', version: '1.0.0', port, check: { kind: 'http', path: '/health' } }, undefined, { deregisterOnSignal: false });
      assert.ok((await servicesInConsul()).includes(svc.id), 'registered with the token from CONSUL_HTTP_TOKEN');
      await eventually(async () => (await tandem.request('app-echo', '/x')).status === 200, 'app-echo routed');
      assert.ok(seen.length > 0 && seen.every((h) => h['x-consul-token'] === undefined), 'the token never reaches a service');
      assert.equal(await tandem.publish('trust', { from: 'sdk' }).then(() => 'ok'), 'ok');
      await svc.close();
      // The CLI: the operator's own token, for a drain.
      const out: string[] = [];
      assert.equal(await runOperator('drain', ['elsewhere', '--api', bare.api], (t) => out.push(t)), 0);
      assert.equal(await drainKey('elsewhere'), 200);
      assert.equal(await runOperator('undrain', ['elsewhere', '--api', bare.api], (t) => out.push(t)), 0);
    });
    // Without a token (the option's '' sends none): a clear 401 the app can act on.
    const anonymous = new Tandem({ url: bare.api, consulToken: '' });
    await assert.rejects(anonymous.register({ name: 'app-echo', version: '1.0.0', port }, undefined, { deregisterOnSignal: false }), (err: unknown) => {
      assert.ok(err instanceof TandemError);
      assert.equal(err.code, 'TANDEM_ERR_CREDENTIALS_REQUIRED');
      assert.equal(err.statusCode, 401);
      return true;
    });
    await withEnv({ CONSUL_HTTP_TOKEN: undefined, CONSUL_HTTP_TOKEN_FILE: undefined }, () =>
      assert.rejects(runOperator('drain', ['elsewhere', '--api', bare.api], () => undefined), /CONSUL_HTTP_TOKEN.*TANDEM_ERR_CREDENTIALS_REQUIRED/),
    );
  });

  test("Consul unreachable: a write with the caller's own token is refused, never kept to be made later with the sidecar's", async () => {
    await acl.stop();
    const spec = { name: 'app-later', version: '1.0.0', port: svcPort };
    const own = await call(bare.api, 'POST', '/v1/services', { consulToken: tokens.app }, spec);
    assert.equal(own.status, 503, JSON.stringify(own.body));
    assert.equal(own.code, 'TANDEM_ERR_CONSUL_UNAVAILABLE');
    assert.match(own.body.message ?? '', /not kept for later/);
    const listed = (await call(bare.api, 'GET', '/v1/services')).body as unknown as { id: string }[];
    assert.ok(!listed.some((r) => r.id.startsWith('app-later-')), 'nothing pending');
    // The operator's bearer lends the sidecar's token on purpose: that one may wait for Consul.
    const lent = await call(guarded.api, 'POST', '/v1/services', { bearer: API_TOKEN }, { ...spec, name: 'ops-later' });
    assert.equal(lent.status, 202, JSON.stringify(lent.body));
  });
});

/** Runs `fn` with these environment variables set (undefined: unset), then puts them back. */
async function withEnv(vars: Record<string, string | undefined>, fn: () => Promise<unknown>): Promise<void> {
  const saved = Object.fromEntries(Object.keys(vars).map((k) => [k, process.env[k]]));
  const apply = (v: Record<string, string | undefined>) => {
    for (const [k, x] of Object.entries(v)) {
      if (x === undefined) delete process.env[k];
      else process.env[k] = x;
    }
  };
  apply(vars);
  try {
    await fn();
  } finally {
    apply(saved);
  }
}

/** Opens a campaign stream and returns its first event after `campaign` (or the refusal), then closes it. */
async function campaign(base: string, group: string, serviceId: string, creds: { consulToken?: string }): Promise<{ status: number; event?: string; data: Record<string, unknown> }> {
  const ctrl = new AbortController();
  const timer = setTimeout(() => ctrl.abort(), 20_000);
  try {
    const res = await fetch(`${base}/v1/leaders/${group}/campaign?serviceId=${encodeURIComponent(serviceId)}`, {
      method: 'POST',
      headers: creds.consulToken ? { 'x-consul-token': creds.consulToken } : {},
      signal: ctrl.signal,
    });
    if (!res.ok || !res.body) return { status: res.status, data: parse(await res.text()) };
    let buf = '';
    const decoder = new TextDecoder();
    for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
      buf += decoder.decode(chunk, { stream: true });
      let end;
      while ((end = buf.indexOf('\n\n')) !== -1) {
        const block = buf.slice(0, end);
        buf = buf.slice(end + 2);
        const event = /^event: (.*)$/m.exec(block)?.[1];
        const data = /^data: (.*)$/m.exec(block)?.[1];
        if (event && event !== 'campaign' && data) return { status: res.status, event, data: parse(data) };
      }
    }
    return { status: res.status, data: {} };
  } finally {
    clearTimeout(timer);
    ctrl.abort();
  }
}
