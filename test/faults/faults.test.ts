// Fault injection: kill upstreams, Consul, the Consul leader and the sidecar under load; hanging upstreams. No request may be lost.
import assert from 'node:assert/strict';
import type { ChildProcess } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { ConsulCluster } from '../support/consul-cluster.ts';
import { ConsulDevAgent, type DevAgentOptions } from '../../src/consul/consul-dev-agent.ts';
import type { Sidecar } from '../../src/sidecar.ts';
import { freePorts } from '../../src/common/free-port.ts';
import { agentServiceIds, eventually, healthOf } from '../support/consul.ts';
import { startLoad, type Load } from '../support/load.ts';
import { startReadyChild, stopProc } from '../support/processes.ts';
import { api, FAST, removeDir, spawnSidecar, startSidecar, tempDir } from '../support/sidecar.ts';
import { startUpstream } from '../support/upstream.ts';

const OUTAGE_MS = Number(process.env['FAULT_OUTAGE_MS'] ?? 60_000);
/**
 * A restarted sidecar's routing and registrations back, counted from the spawn of its process (Node's
 * start included): slack for a loaded 2-core CI machine, yet under the 10 s check interval of the
 * restarted registrations, which is how long they would take if the restart waited for a first check.
 */
const RESTART_BOUND_MS = 5000;
/** Slack over a 500 ms request deadline for a loaded 2-core CI machine; far under proxy.upstreamTimeoutMs (30 s). */
const DEADLINE_SLACK_MS = 2500;
const cleanups: (() => Promise<unknown>)[] = [];
after(async () => {
  for (const c of cleanups.reverse()) await c().catch(() => undefined);
});
const later = (fn: () => Promise<unknown>) => cleanups.push(fn);

const CHILD = fileURLToPath(new URL('../support/upstream-child.mjs', import.meta.url));
async function childUpstream(port: number, name: string): Promise<ChildProcess> {
  const p = await startReadyChild(process.execPath, [CHILD, String(port), name], `upstream ${name}`, { stdin: 'ignore' });
  later(() => stopProc(p, 0, 'SIGKILL'));
  return p.child;
}

async function register(base: string, name: string, port: number, check: object = { kind: 'http', path: '/health' }): Promise<string> {
  const res = await api('POST', `${base}/v1/services`, { name, version: '1.0.0', port, check });
  assert.ok(res.status === 201 || res.status === 202, JSON.stringify(res.body));
  return (res.body as { id: string }).id;
}

/** A sidecar on `consulAddress` for one test, closed (and its state dir removed) after the file's tests. */
async function sidecarOn(consulAddress: string, opts: Parameters<typeof startSidecar>[1] = {}): Promise<{ sidecar: Sidecar; base: string }> {
  const { sidecar, api: base, stateDir } = await startSidecar(consulAddress, opts);
  later(() => sidecar.close());
  later(() => removeDir(stateDir));
  return { sidecar, base };
}

/** A Consul dev agent and a sidecar on it for one test, both stopped after the file's tests. */
async function consulAndSidecar(opts: DevAgentOptions = {}): Promise<{ consul: ConsulDevAgent; sidecar: Sidecar; base: string }> {
  const consul = new ConsulDevAgent(opts);
  await consul.start();
  later(() => consul.stop());
  return { consul, ...(await sidecarOn(consul.address)) };
}

/** Resolves once `load` has done `n` more requests than now: it is running (and still succeeding, which stop() checks). */
function loadProgress(load: Load, n: number, what: string): Promise<true> {
  const from = load.total;
  return eventually(() => load.total >= from + n || undefined, what, 30_000);
}

/** Stops the load: more than `min` requests were made, and none failed. */
async function stopWithoutFailures(load: Load, min: number): Promise<void> {
  const r = await load.stop();
  assert.ok(r.total > min, `only ${r.total} requests`);
  assert.deepEqual(r.failures, [], `${r.failures.length} of ${r.total} failed`);
}

async function healthyCount(base: string, service: string): Promise<number> {
  const body = (await api('GET', `${base}/v1/instances/${service}`)).body as { instances?: { healthy: boolean }[] };
  return (body.instances ?? []).filter((i) => i.healthy).length;
}

describe('faults', () => {
  test('kill -9 one of three upstream instances under steady GET load: 0 failed requests', async () => {
    const { sidecar, base } = await consulAndSidecar();
    const ports = (await freePorts(3)) as [number, number, number];
    const children = await Promise.all(ports.map((p) => childUpstream(p, 'k9')));
    for (const p of ports) await register(base, 'k9', p, { kind: 'http', path: '/health', intervalMs: 1000 });
    await eventually(async () => (await healthyCount(base, 'k9')) === 3, '3 healthy');
    const load = startLoad(`${sidecar.addresses.proxy}/k9/x`, { workers: 4, maxMs: 60_000, maxRequests: 50_000 });
    await loadProgress(load, 100, 'load running before the kill');
    children[1]?.kill('SIGKILL');
    // Through ejection and Consul's check (every second) turning critical, and on after that.
    await eventually(async () => (await healthyCount(base, 'k9')) === 2, 'the killed instance critical in Consul', 20_000);
    await loadProgress(load, 100, 'load running after the check turned critical');
    await stopWithoutFailures(load, 200);
    await sidecar.close();
  });

  test(`Consul stopped for ${OUTAGE_MS / 1000} s under load: 0 failed requests; registrations made meanwhile appear after`, { timeout: OUTAGE_MS + 120_000 }, async () => {
    const { consul, sidecar, base } = await consulAndSidecar({ nodeName: 'outage-node' });
    const ups = await Promise.all([startUpstream('outage', '1.0.0'), startUpstream('outage', '1.0.0'), startUpstream('outage', '1.0.0')]);
    for (const u of ups) later(() => u.close());
    for (const u of ups) await register(base, 'outage', u.port);
    await eventually(async () => (await healthyCount(base, 'outage')) === 3, '3 healthy');
    const load = startLoad(`${sidecar.addresses.proxy}/outage/x`, { workers: 2, maxMs: OUTAGE_MS + 60_000, pauseMs: 5 });
    await loadProgress(load, 50, 'load running before the outage');
    await consul.stop();
    const late = await startUpstream('latecomer', '1.0.0');
    later(() => late.close());
    const pending = await api('POST', `${base}/v1/services`, { name: 'latecomer', version: '1.0.0', port: late.port });
    assert.equal(pending.status, 202);
    const inOutage = (await api('GET', `${base}/v1/instances/outage`)).body as { stale: boolean; viewAgeMs: number };
    await sleep(OUTAGE_MS); // on purpose: the outage itself, under load
    const during = (await api('GET', `${base}/v1/instances/outage`)).body as { stale: boolean; viewAgeMs: number };
    await consul.start();
    await eventually(async () => (await healthOf(consul, 'latecomer', false)).length === 1, 'the registration made during the outage', 15_000);
    await eventually(async () => (await healthOf(consul, 'outage')).length === 3, 'instances back in the restarted agent', 15_000);
    await loadProgress(load, 100, 'load running after Consul is back');
    await stopWithoutFailures(load, 100);
    assert.equal(during.stale, true, 'the view is marked stale during the outage');
    assert.ok(during.viewAgeMs >= OUTAGE_MS - 1000 && during.viewAgeMs > inOutage.viewAgeMs, `view age ${during.viewAgeMs} ms`);
    await sidecar.close();
  });

  test('three-server cluster with a client agent: killing the leader under load fails no request', { timeout: 180_000 }, async () => {
    const cluster = new ConsulCluster();
    await cluster.start();
    later(() => cluster.stop());
    const client = cluster.clients[0];
    assert.ok(client);
    const { sidecar, base } = await sidecarOn(client.address, { args: ['--advertise', '127.0.0.1', '--set', `consul.fallbackAddresses=${JSON.stringify(cluster.servers.map((s) => s.address))}`] });
    const ups = await Promise.all([startUpstream('ha', '1.0.0'), startUpstream('ha', '1.0.0')]);
    for (const u of ups) later(() => u.close());
    for (const u of ups) await register(base, 'ha', u.port);
    await eventually(async () => (await healthyCount(base, 'ha')) === 2, '2 healthy', 20_000);
    const load = startLoad(`${sidecar.addresses.proxy}/ha/x`, { workers: 2, maxMs: 120_000, pauseMs: 5 });
    await loadProgress(load, 50, 'load running before the kill');
    const leader = await cluster.leader();
    assert.ok(leader);
    await cluster.kill(leader.name);
    await eventually(async () => {
      const l = await cluster.leader();
      return l !== undefined && l.name !== leader.name;
    }, 'a new leader', 30_000);
    // A change through the new leader still reaches the sidecar's view.
    const extra = await startUpstream('ha', '1.0.0');
    later(() => extra.close());
    await register(base, 'ha', extra.port);
    await eventually(async () => (await healthyCount(base, 'ha')) === 3, 'new instance seen after failover', 30_000);
    await loadProgress(load, 50, 'load running after the failover');
    await stopWithoutFailures(load, 100);
    await sidecar.close();
  });

  test(`sidecar restarted under load (the client retries connections the restart refused or closed unanswered): registrations and routing back within ${RESTART_BOUND_MS / 1000} s`, async (t) => {
    const consul = new ConsulDevAgent();
    await consul.start();
    later(() => consul.stop());
    const stateDir = await tempDir();
    later(() => removeDir(stateDir));
    const [apiPort, proxyPort] = (await freePorts(2)) as [number, number];
    const ports = { api: apiPort, proxy: proxyPort };
    const args = ['--consul', consul.address, '--state-dir', stateDir, '--node-name', 'restart-node', '--advertise', '127.0.0.1', ...FAST];
    let side = await spawnSidecar(args, {}, ports);
    later(async () => side.child.kill('SIGKILL'));
    const ups = await Promise.all([startUpstream('phoenix', '1.0.0'), startUpstream('phoenix', '1.0.0')]);
    for (const u of ups) later(() => u.close());
    for (const u of ups) await register(side.api, 'phoenix', u.port, { kind: 'http', path: '/health', intervalMs: 10_000 });
    await eventually(async () => (await healthyCount(side.api, 'phoenix')) === 2, '2 healthy');
    const before = await agentServiceIds(consul);
    const load = startLoad(`http://127.0.0.1:${proxyPort}/phoenix/x`, { workers: 2, maxMs: 60_000, retryRefused: true, pauseMs: 5 });
    await loadProgress(load, 50, 'load running before the restart');
    side.child.kill('SIGTERM');
    assert.equal(await side.exited, 0);
    const startedAt = Date.now();
    side = await spawnSidecar(args, {}, ports);
    const totalAtRestart = load.total;
    await eventually(async () => load.total > totalAtRestart + 5 || undefined, 'routing back', 30_000);
    const routingMs = Date.now() - startedAt;
    await eventually(async () => JSON.stringify(await agentServiceIds(consul)) === JSON.stringify(before), 'registrations back', 30_000);
    const registeredMs = Date.now() - startedAt;
    const r = await load.stop();
    t.diagnostic(`from the spawn: routing back after ${routingMs} ms, registrations after ${registeredMs} ms`);
    assert.deepEqual(r.failures, [], `${r.failures.length} of ${r.total} failed`);
    assert.ok(routingMs <= RESTART_BOUND_MS, `routing back after ${routingMs} ms`);
    assert.ok(registeredMs <= RESTART_BOUND_MS, `registrations back after ${registeredMs} ms`);
    side.child.kill('SIGTERM');
    await side.exited;
  });

  test('a sidecar started while Consul is down routes from its persisted view (marked stale)', async () => {
    const consul = new ConsulDevAgent();
    await consul.start();
    later(() => consul.stop());
    const ups = await Promise.all([startUpstream('cold', '1.0.0'), startUpstream('cold', '1.1.0')]);
    for (const u of ups) later(() => u.close());
    // One sidecar owns the registrations; a second (the one restarted later) only routes.
    const owner = await startSidecar(consul.address, { nodeName: 'owner' });
    later(() => owner.sidecar.close());
    later(() => removeDir(owner.stateDir));
    for (const u of ups) await register(owner.api, 'cold', u.port);
    const stateDir = await tempDir();
    later(() => removeDir(stateDir));
    const router = await startSidecar(consul.address, { stateDir, nodeName: 'router' });
    await eventually(async () => (await healthyCount(router.api, 'cold')) === 2, '2 healthy');
    // The view is written at most once a second: wait for the write, not for a second.
    const saved = async () => (JSON.parse(await readFile(join(stateDir, 'catalog-view.json'), 'utf8')) as Record<string, { savedAt: number; endpoints: { healthy: boolean }[] } | undefined>)['cold'];
    await eventually(async () => (await saved())?.endpoints.filter((e) => e.healthy).length === 2, 'the view of cold persisted', 10_000);
    await router.sidecar.close();
    const savedAt = (await saved())?.savedAt ?? Date.now();
    await consul.stop();

    const again = await startSidecar(consul.address, { stateDir, nodeName: 'router' });
    later(() => again.sidecar.close());
    const seen = new Set<string>();
    for (let i = 0; i < 10; i++) {
      const res = await fetch(`${again.sidecar.addresses.proxy}/cold@^1/x`);
      assert.equal(res.status, 200);
      seen.add(res.headers.get('x-tandem-instance') ?? '');
    }
    assert.equal(seen.size, 2);
    const asked = Date.now();
    const view = (await api('GET', `${again.api}/v1/instances/cold`)).body as { stale: boolean; viewAgeMs: number };
    assert.equal(view.stale, true);
    // The age of the persisted view, counted from its save: not reset by loading it.
    assert.ok(view.viewAgeMs >= asked - savedAt && view.viewAgeMs <= Date.now() - savedAt, `view age ${view.viewAgeMs} ms, saved ${asked - savedAt} ms before asking`);
    await again.sidecar.close();
    await consul.start();
  });

  test('an upstream that hangs: the caller gets 504 at its deadline; other callers are unaffected', async () => {
    const { sidecar, base } = await consulAndSidecar();
    const stuck = await startUpstream('stuck', '1.0.0');
    const fine = await startUpstream('fine', '1.0.0');
    later(() => stuck.close());
    later(() => fine.close());
    await register(base, 'stuck', stuck.port);
    await register(base, 'fine', fine.port);
    await eventually(async () => (await healthyCount(base, 'stuck')) === 1 && (await healthyCount(base, 'fine')) === 1, 'both healthy');
    const proxy = sidecar.addresses.proxy;
    const load = startLoad(`${proxy}/fine/x`, { workers: 2, maxMs: 30_000 });
    const hanging = await Promise.all(
      Array.from({ length: 20 }, async () => {
        const t0 = Date.now();
        const res = await fetch(`${proxy}/stuck/stall`, { headers: { 'x-tandem-timeout-ms': '500' } });
        await res.arrayBuffer();
        return { status: res.status, code: res.headers.get('x-tandem-error'), ms: Date.now() - t0 };
      }),
    );
    const r = await load.stop();
    for (const h of hanging) {
      assert.equal(h.status, 504);
      assert.equal(h.code, 'TANDEM_ERR_UPSTREAM_TIMEOUT');
      assert.ok(h.ms >= 450 && h.ms < 500 + DEADLINE_SLACK_MS, `504 after ${h.ms} ms`);
    }
    assert.ok(r.total > 50, `only ${r.total} requests to the healthy service`);
    assert.deepEqual(r.failures, []);
    // The deadline travels upstream: what is left of it, in the same header.
    const seen = stuck.seen.at(-1)?.headers['x-tandem-timeout-ms'];
    assert.ok(seen !== undefined && Number(seen) <= 500 && Number(seen) > 0, `upstream saw ${String(seen)}`);
    await sidecar.close();
  });
});
