// The real `tandem start` process: config errors exit before Consul, SIGTERM deregisters and exits 0, ACL denials are clear.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { ConsulDevAgent } from '../../src/consul/consul-dev-agent.ts';
import { agentServiceIds, eventually, healthOf, useConsul } from '../support/consul.ts';
import { api, BIN, FAST, removeDir, spawnSidecar, startService, startSidecar, tempDir } from '../support/sidecar.ts';

const consul = useConsul();
const cleanups: (() => Promise<unknown>)[] = [];
after(async () => {
  for (const c of cleanups.reverse()) await c().catch(() => undefined);
});

describe('tandem CLI', () => {
  test('--help lists every flag; an unknown command is one clear line', () => {
    const help = spawnSync(process.execPath, [BIN, 'start', '--help'], { encoding: 'utf8' });
    assert.equal(help.status, 0);
    for (const flag of ['--config', '--consul', '--proxy', '--api', '--state-dir', '--node-name', '--advertise', '--set']) assert.ok(help.stdout.includes(flag), flag);
    const top = spawnSync(process.execPath, [BIN, '--help'], { encoding: 'utf8' });
    assert.equal(top.status, 0);
    assert.match(top.stdout, /tandem start/);
    const bad = spawnSync(process.execPath, [BIN, 'frobnicate'], { encoding: 'utf8' });
    assert.equal(bad.status, 2);
    assert.equal(bad.stderr.trim().split('\n').length, 1);
  });

  test('an invalid config file reports every violation and exits non-zero before touching Consul', async () => {
    const dir = await tempDir();
    cleanups.push(() => removeDir(dir));
    const file = join(dir, 'tandem.yaml');
    await writeFile(file, 'proxy:\n  listen: nowhere\nservices:\n  - name: Bad\n    version: "1"\n    port: 0\nbogus: 1\n');
    const before = await agentServiceIds(consul);
    const run = spawnSync(process.execPath, [BIN, 'start', '--config', file, '--consul', consul.address, '--state-dir', dir], { encoding: 'utf8', timeout: 20_000 });
    assert.equal(run.status, 2);
    for (const want of ['config/proxy/listen', 'config/services/0/name', 'config/services/0/version', 'config/services/0/port', 'config/bogus: unknown key']) {
      assert.ok(run.stderr.includes(want), `${want} in ${run.stderr}`);
    }
    assert.ok(!run.stderr.includes('    at '), 'no stack trace');
    assert.deepEqual(await agentServiceIds(consul), before);
  });

  test('tandem start registers config services; SIGTERM deregisters everything and exits 0', async () => {
    const svc = await startService('billing', '4.2.0');
    cleanups.push(svc.close);
    const dir = await tempDir();
    cleanups.push(() => removeDir(dir));
    const file = join(dir, 'tandem.json');
    await writeFile(file, JSON.stringify({ services: [{ name: 'billing', version: '4.2.0', port: svc.port, check: { kind: 'http', path: '/health' } }] }));
    // Consul on a non-default address, given through CONSUL_HTTP_ADDR without a scheme.
    const side = await spawnSidecar(['--config', file, '--state-dir', dir, '--node-name', 'cli-node', ...FAST], { CONSUL_HTTP_ADDR: `127.0.0.1:${consul.httpPort}` });
    cleanups.push(async () => side.child.kill('SIGKILL'));
    const row = await eventually(async () => (await healthOf(consul, 'billing'))[0], 'billing passing');
    assert.equal(row.Service.Meta['version'], '4.2.0');
    assert.deepEqual(row.Service.Tags, ['v4', 'v4-2-0']);
    assert.equal((await api('POST', `${side.api}/v1/services`, { name: 'billing-worker', version: '4.2.0', port: svc.port })).status, 201);
    assert.equal((await agentServiceIds(consul)).length, 3);
    side.child.kill('SIGTERM');
    assert.equal(await side.exited, 0);
    assert.deepEqual(await agentServiceIds(consul), []);
  });

  test('Consul refusing with 403 gives a clear permission error and changes nothing', async () => {
    const acl = new ConsulDevAgent({
      extraArgs: ['-hcl', 'acl { enabled = true default_policy = "deny" enable_token_persistence = false tokens { master = "root-token" } }'],
      probeToken: 'root-token',
    });
    await acl.start();
    cleanups.push(() => acl.stop());
    const svc = await startService('secret', '1.0.0');
    cleanups.push(svc.close);
    // With ACLs on, a write needs a credential; api.token makes Tandem use its own token, which Consul refuses here.
    const apiToken = 'cli-api-token-0123456789';
    const bearer = { authorization: `Bearer ${apiToken}`, 'content-type': 'application/json' };
    const { sidecar, api: base, stateDir } = await startSidecar(acl.address, { args: ['--set', `api.token=${apiToken}`] });
    cleanups.push(() => sidecar.close(), () => removeDir(stateDir));
    assert.equal((await api('POST', `${base}/v1/services`, { name: 'secret', version: '1.0.0', port: svc.port })).status, 401);
    const res = await fetch(`${base}/v1/services`, { method: 'POST', headers: bearer, body: JSON.stringify({ name: 'secret', version: '1.0.0', port: svc.port }) });
    assert.equal(res.status, 502);
    const body = (await res.json()) as { code: string; message: string };
    assert.equal(body.code, 'TANDEM_ERR_CONSUL_PERMISSION_DENIED');
    assert.match(body.message, /ACL token lacks permission/);
    const listed = (await (await fetch(`${base}/v1/services`, { headers: bearer })).json()) as { id: string }[];
    assert.ok(!listed.some((r) => r.id.startsWith('secret-')), 'a refused registration is not kept');
    const services = await fetch(`${acl.address}/v1/agent/services`, { headers: { 'x-consul-token': 'root-token' } });
    assert.deepEqual(Object.keys((await services.json()) as object), []);
    // Reads are filtered to empty lists under default deny: the proxy says why instead of "unknown service".
    await eventually(async () => ((await (await fetch(`${base}/v1/health`)).json()) as { consul: string }).consul === 'forbidden', 'health says forbidden', 10_000);
    const routed = await fetch(`${sidecar.addresses.proxy}/secret/x`);
    assert.equal(routed.status, 503);
    assert.equal(routed.headers.get('x-tandem-error'), 'TANDEM_ERR_CONSUL_PERMISSION_DENIED');
    assert.match(((await routed.json()) as { message: string }).message, /ACL token/);
    await sidecar.close();

    // With the documented minimal policy's token, everything works.
    const root = { 'x-consul-token': 'root-token', 'content-type': 'application/json' };
    const rules = ['service_prefix "" { policy = "write" }', 'node_prefix "" { policy = "read" }', 'agent_prefix "" { policy = "read" }', 'key_prefix "tandem/" { policy = "write" }', 'session_prefix "" { policy = "write" }', 'event_prefix "" { policy = "write" }'].join('\n');
    const policy = await fetch(`${acl.address}/v1/acl/policy`, { method: 'PUT', headers: root, body: JSON.stringify({ Name: 'tandem', Rules: rules }) });
    assert.equal(policy.status, 200, await policy.clone().text());
    const token = (await (await fetch(`${acl.address}/v1/acl/token`, { method: 'PUT', headers: root, body: JSON.stringify({ Description: 'tandem sidecar', Policies: [{ Name: 'tandem' }] }) })).json()) as { SecretID: string };
    const good = await startSidecar(acl.address, { args: ['--set', `consul.token=${token.SecretID}`, '--set', `api.token=${apiToken}`] });
    cleanups.push(() => good.sidecar.close(), () => removeDir(good.stateDir));
    const reg = await fetch(`${good.api}/v1/services`, { method: 'POST', headers: bearer, body: JSON.stringify({ name: 'secret', version: '1.0.0', port: svc.port, check: { kind: 'http', path: '/health' } }) });
    assert.equal(reg.status, 201);
    await eventually(async () => (await fetch(`${good.sidecar.addresses.proxy}/secret/x`)).status === 200, 'routed with the policy token', 10_000);
    assert.equal(((await (await fetch(`${good.api}/v1/health`)).json()) as { consul: string }).consul, 'up');
    const pub = await fetch(`${good.api}/v1/events/acl-check`, { method: 'POST', headers: bearer, body: '{"ok":true}' });
    assert.equal(pub.status, 201, 'KV writes under tandem/ are allowed');
    await good.sidecar.close();
  });
});
