// Cluster features under Consul ACLs (default deny): ready-to-stop needs credentials Consul accepts for that service; a refused campaign ends instead of retrying.
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { ConsulDevAgent } from '../../src/consul/consul-dev-agent.ts';
import { eventually } from '../support/consul.ts';
import { ConsulGate } from '../support/consul-gate.ts';
import { removeDir, startService, startSidecar } from '../support/sidecar.ts';
import { sseStream, type SseStream } from '../support/sse-client.ts';

const ACL_HCL = 'acl { enabled = true default_policy = "deny" enable_token_persistence = false tokens { master = "root-token" } }';
const NODE = 'acl-cluster';

const cleanups: (() => Promise<unknown>)[] = [];
after(async () => {
  for (const c of cleanups.reverse()) await c().catch(() => undefined);
});

type Stream = SseStream<Record<string, unknown>>;

/** An SSE client that records events (data parsed as JSON) and whether the server closed the stream. */
function stream(url: string, init: { method?: string; token?: string } = {}): Stream {
  const s = sseStream(url, { method: init.method ?? 'GET', headers: init.token ? { 'x-consul-token': init.token } : {} }, (d) => JSON.parse(d || '{}') as Record<string, unknown>);
  cleanups.push(async () => s.close());
  return s;
}

describe('with Consul ACLs on (default deny)', () => {
  const acl = new ConsulDevAgent({ extraArgs: ['-hcl', ACL_HCL], probeToken: 'root-token' });
  const tokens = { sidecar: '', app: '', other: '', readOnly: '' };
  let gate: ConsulGate;
  let api = '';
  let svcPort = 0;

  const root = async <T>(method: string, path: string, body?: unknown): Promise<T> => {
    const res = await fetch(`${acl.address}${path}`, { method, headers: { 'x-consul-token': 'root-token' }, ...(body !== undefined ? { body: JSON.stringify(body) } : {}) });
    const text = await res.text();
    assert.ok(res.ok, `${method} ${path}: ${res.status} ${text}`);
    return (text ? JSON.parse(text) : null) as T;
  };
  const tokenFor = async (name: string, rules: string[]): Promise<string> => {
    await root('PUT', '/v1/acl/policy', { Name: name, Rules: rules.join('\n') });
    return (await root<{ SecretID: string }>('PUT', '/v1/acl/token', { Description: name, Policies: [{ Name: name }] })).SecretID;
  };
  const call = async (method: string, path: string, token: string | undefined, body?: unknown) => {
    const headers: Record<string, string> = token !== undefined ? { 'x-consul-token': token } : {};
    if (body !== undefined) headers['content-type'] = 'application/json';
    const res = await fetch(`${api}${path}`, { method, headers, ...(body !== undefined ? { body: JSON.stringify(body) } : {}) });
    return { status: res.status, body: (await res.json()) as Record<string, unknown> };
  };
  const inConsul = async (id: string) => id in (await root<Record<string, unknown>>('GET', '/v1/agent/services'));
  /** An app service registered with the app's token, its TTL check passing. */
  const register = async (name: string): Promise<string> => {
    const reg = await call('POST', '/v1/services', tokens.app, { name, version: '1.0.0', port: svcPort, check: { kind: 'ttl', ttlMs: 60_000 } });
    assert.equal(reg.status, 201, JSON.stringify(reg.body));
    const id = String(reg.body['id']);
    assert.equal((await call('PUT', `/v1/services/${id}/heartbeat`, tokens.app, {})).status, 200);
    return id;
  };

  before(async () => {
    await acl.start();
    cleanups.push(() => acl.stop());
    tokens.sidecar = await tokenFor('tandem', [await readFile(new URL('../../deploy/consul/acl/tandem-policy.hcl', import.meta.url), 'utf8')]);
    const common = ['node_prefix "" { policy = "read" }', 'key_prefix "tandem/" { policy = "write" }', 'session_prefix "" { policy = "write" }'];
    tokens.app = await tokenFor('app', ['service_prefix "app-" { policy = "write" }', ...common]);
    tokens.other = await tokenFor('other', ['service_prefix "other-" { policy = "write" }', ...common]);
    tokens.readOnly = await tokenFor('read-only', ['service_prefix "" { policy = "read" }', 'node_prefix "" { policy = "read" }', 'key_prefix "" { policy = "read" }']);
    const svc = await startService('app', '1.0.0');
    cleanups.push(svc.close);
    svcPort = svc.port;
    // The sidecar reaches Consul through a gate that counts what it asks.
    gate = new ConsulGate(acl.address);
    const gateUrl = await gate.start();
    cleanups.push(() => gate.close());
    const s = await startSidecar(gateUrl, { nodeName: NODE, args: ['--set', `consul.token=${tokens.sidecar}`] });
    cleanups.push(() => s.sidecar.close(), () => removeDir(s.stateDir));
    api = s.api;
  }, { timeout: 120_000 });

  test('ready-to-stop during a drain: a made-up token, a read-only one or one for another service → 403 and the drain goes on; the app\'s own token ends it', async () => {
    const id = await register('app-drain');
    // Outside a drain, ready-to-stop records nothing: it cannot end the drain that comes later early.
    const early = await call('POST', `/v1/services/${id}/ready-to-stop`, 'garbage');
    assert.deepEqual([early.status, early.body['readyToStop']], [200, false]);
    // The app listens on the lifecycle stream: the drain waits for its ready-to-stop (or the deadline).
    const lifecycle = stream(`${api}/v1/lifecycle?services=${id}`);
    assert.equal(await lifecycle.status, 200);
    await eventually(() => lifecycle.events.some((e) => e.event === 'state') || undefined, 'lifecycle stream open');
    const drain = await call('PUT', `/v1/drain/${NODE}`, tokens.app, { reason: 'acl test', deadlineMs: 60_000 });
    assert.equal(drain.status, 200, JSON.stringify(drain.body));
    cleanups.push(() => root('DELETE', `/v1/kv/tandem/drain/${NODE}`));
    await eventually(() => lifecycle.events.some((e) => e.event === 'drain') || undefined, 'drain event');

    for (const [what, token, consulSays] of [
      ['made-up token', 'garbage', /ACL not found/],
      ['read-only token', tokens.readOnly, /Permission denied/],
      ['token for other-* services', tokens.other, /Permission denied/],
    ] as const) {
      const r = await call('POST', `/v1/services/${id}/ready-to-stop`, token);
      assert.equal(r.status, 403, `${what}: ${JSON.stringify(r.body)}`);
      assert.equal(r.body['code'], 'TANDEM_ERR_CONSUL_PERMISSION_DENIED', what);
      assert.match(String(r.body['message']), /caller's own ACL token/, what);
      assert.match(String(r.body['message']), consulSays, what);
    }
    await sleep(1500); // a ready-to-stop taken would have deregistered it by now
    assert.ok(await inConsul(id), 'the drain was not cut short');
    const checks = await root<Record<string, { ServiceID: string; Notes: string }>>('GET', '/v1/agent/checks');
    assert.match(Object.values(checks).find((c) => c.ServiceID === id && c.Notes.includes('tandem drain'))?.Notes ?? '', /acl test/, "the drain's maintenance is unchanged");

    const ok = await call('POST', `/v1/services/${id}/ready-to-stop`, tokens.app);
    assert.deepEqual([ok.status, ok.body['readyToStop']], [200, true], JSON.stringify(ok.body));
    await eventually(async () => !(await inConsul(id)), 'deregistered after the real ready-to-stop', 10_000);
    await eventually(() => lifecycle.events.some((e) => e.event === 'drained') || undefined, 'drained event');
    lifecycle.close();
    assert.equal((await call('DELETE', `/v1/drain/${NODE}`, tokens.app)).status, 200);
  });

  test('20 campaigns whose token Consul refuses: each gets the refusal as its error event and its stream closes; session creation is not retried', async () => {
    const id = await register('app-leader');
    const creates = () => gate.passed.filter((p) => p.startsWith('/v1/session/create')).length;
    const before = creates();
    const streams = Array.from({ length: 20 }, () => stream(`${api}/v1/leaders/acl-group/campaign?serviceId=${id}`, { method: 'POST', token: tokens.readOnly }));
    assert.deepEqual(await Promise.all(streams.map((s) => s.status)), Array(20).fill(200));
    await eventually(() => streams.every((s) => s.ended) || undefined, 'every refused campaign stream closed by the sidecar', 10_000);
    for (const s of streams) {
      const err = s.events.find((e) => e.event === 'error');
      assert.equal(err?.data['code'], 'TANDEM_ERR_CONSUL_PERMISSION_DENIED', JSON.stringify(s.events));
      assert.match(String(err?.data['message']), /create a session with the caller's own ACL token .*Permission denied/);
      assert.equal(s.events.filter((e) => e.event === 'promoted').length, 0);
    }
    const made = creates() - before;
    await sleep(3000); // retries (backoff 200 ms .. 3 s) would show here
    assert.equal(creates() - before, made, 'no session create after the refusals');
    assert.ok(made <= 20, `one refused create per campaign, not more (${made})`);

    // The SDK ends a refused campaign too (it would otherwise reconnect and be refused again, forever).
    const { Tandem } = await import('../../src/sdk/index.ts');
    const sdk = new Tandem({ url: api, consulToken: tokens.readOnly });
    const sdkBefore = creates();
    let refusal: { code?: string } | undefined;
    const election = sdk.elect('acl-group', { service: id, onPromote: () => assert.fail('promoted with a refused token'), onDemote: () => undefined, onError: (err) => (refusal = err) });
    await eventually(() => refusal?.code === 'TANDEM_ERR_CONSUL_PERMISSION_DENIED' || undefined, 'the SDK reports the refusal');
    await sleep(2000); // the SDK reconnects within ~1 s; a retry would show as a second create
    assert.equal(creates() - sdkBefore, 1, 'one session create, no reconnect loop');
    await election.resign();
    await sdk.close();

    // The same group with a token Consul accepts still works: the refused campaigns left nothing behind.
    const good = stream(`${api}/v1/leaders/acl-group/campaign?serviceId=${id}`, { method: 'POST', token: tokens.app });
    await eventually(() => good.events.some((e) => e.event === 'promoted') || undefined, 'promoted with the app token');
    good.close();
  });
});
