// The Node-lineage features on a real Consul with several sidecars: pub/sub, broadcast, elections, drain, members.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { ConsulDevAgent } from '../../src/agent/consul-dev-agent.ts';
import { freePorts } from '../../src/agent/free-port.ts';
import type { Sidecar } from '../../src/agent/sidecar.ts';
import { Tandem, type TandemEvent } from '../../src/sdk/index.ts';
import { eventually } from '../helpers/consul.ts';
import { api, FAST, removeDir, spawnSidecar, startSidecar, tempDir, type ChildSidecar } from '../helpers/sidecar.ts';
import { startUpstream } from '../helpers/upstream.ts';

const consul = new ConsulDevAgent();
const sidecars: { sidecar: Sidecar; api: string; stateDir: string }[] = [];
const cleanups: (() => Promise<unknown>)[] = [];
let a: Tandem;
let b: Tandem;

before(async () => {
  await consul.start();
  for (const node of ['host-a', 'host-b']) sidecars.push(await startSidecar(consul.address, { nodeName: node }));
  a = new Tandem({ url: sidecars[0]?.api as string });
  b = new Tandem({ url: sidecars[1]?.api as string });
});
after(async () => {
  for (const c of cleanups.reverse()) await c().catch(() => undefined);
  for (const s of sidecars) {
    await s.sidecar.close();
    await removeDir(s.stateDir);
  }
  await consul.stop();
});

describe('pub/sub', () => {
  test('1,000 events from two publishers reach subscribers on two sidecars, complete, in order, once; a restarted sidecar catches up', async (t) => {
    // A third sidecar in its own process, restarted mid-stream.
    const stateDir = await tempDir();
    cleanups.push(() => removeDir(stateDir));
    const [apiPort, proxyPort] = (await freePorts(2)) as [number, number];
    const args = ['--consul', consul.address, '--state-dir', stateDir, '--node-name', 'host-c', '--advertise', '127.0.0.1', ...FAST];
    let side: ChildSidecar = await spawnSidecar(args, {}, { api: apiPort, proxy: proxyPort });
    cleanups.push(async () => side.child.kill('SIGKILL'));
    const c = new Tandem({ url: side.api });

    const got: Record<string, TandemEvent[]> = { a: [], b: [], c: [] };
    const latencies: number[] = [];
    const stops = [
      a.subscribe('orders', (_p, e) => got['a']?.push(e)),
      b.subscribe('orders', (_p, e) => {
        got['b']?.push(e);
        latencies.push(Date.now() - e.ts);
      }),
      c.subscribe('orders', (_p, e) => got['c']?.push(e)),
    ];
    cleanups.push(async () => stops.forEach((s) => s()));
    await sleep(500); // subscriptions in place: only events from now on count
    const N = 500;
    const started = Date.now();
    const publishAll = async (who: Tandem, name: string) => {
      for (let i = 0; i < N; i++) await who.publish('orders', { from: name, n: i });
    };
    const publishing = Promise.all([publishAll(a, 'pa'), publishAll(b, 'pb')]);
    await sleep(300);
    side.child.kill('SIGKILL');
    await side.exited;
    await sleep(500);
    side = await spawnSidecar(args, {}, { api: apiPort, proxy: proxyPort });
    await publishing;
    const publishMs = Date.now() - started;
    for (const who of ['a', 'b', 'c']) await eventually(() => (got[who]?.length ?? 0) >= 2 * N || undefined, `${who} received everything (has ${got[who]?.length})`, 20_000);
    await sleep(300);
    for (const who of ['a', 'b', 'c']) {
      const list = got[who] ?? [];
      assert.equal(list.length, 2 * N, `${who}: ${list.length} events`);
      assert.equal(new Set(list.map((e) => e.id)).size, 2 * N, `${who}: duplicates`);
      for (const from of ['pa', 'pb']) {
        const ns = list.filter((e) => (e.payload as { from: string }).from === from).map((e) => (e.payload as { n: number }).n);
        assert.deepEqual(ns, Array.from({ length: N }, (_, i) => i), `${who}: ${from}'s order`);
      }
    }
    latencies.sort((x, y) => x - y);
    t.diagnostic(`published ${2 * N} events in ${publishMs} ms (${Math.round((2 * N * 1000) / publishMs)}/s over two sidecars); publish→deliver on the other sidecar p50 ${latencies[Math.floor(latencies.length / 2)]} ms, p99 ${latencies[Math.floor(latencies.length * 0.99)]} ms`);

    const big = await fetch(`${sidecars[0]?.api}/v1/events/orders`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ blob: 'x'.repeat(70_000) }) });
    assert.equal(big.status, 413);
    assert.equal(((await big.json()) as { code: string }).code, 'TANDEM_ERR_BODY_TOO_LARGE');
    const badTopic = await fetch(`${sidecars[0]?.api}/v1/events/${encodeURIComponent('no spaces')}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{}' });
    assert.equal(badTopic.status, 400);
    side.child.kill('SIGTERM');
    await side.exited;
  });
});

describe('broadcast', () => {
  test('three instances give three entries; a killed one is an error entry within the per-instance timeout', async () => {
    const ups = await Promise.all([startUpstream('cache', '1.0.0'), startUpstream('cache', '1.0.0'), startUpstream('cache', '1.1.0')]);
    for (const u of ups) cleanups.push(() => u.close());
    for (const u of ups) assert.equal((await api('POST', `${sidecars[1]?.api}/v1/services`, { name: 'cache', version: u.version, port: u.port, check: { kind: 'http', path: '/health', intervalMs: 10_000 } })).status, 201);
    await a.waitFor('cache', { timeoutMs: 10_000 });
    await eventually(async () => (await a.instances('cache')).filter((i) => i.healthy).length === 3, '3 healthy');
    const all = await a.broadcast('cache', '/flush', { method: 'POST', body: JSON.stringify({ all: true }), headers: { 'content-type': 'application/json' } });
    assert.equal(all.length, 3);
    for (const e of all) {
      assert.ok('status' in e, JSON.stringify(e));
      assert.equal(e.status, 200);
      assert.equal((e.body as { url: string; method: string }).url, '/flush');
    }
    const ranged = await a.broadcast('cache@~1.0', '/x');
    assert.equal(ranged.length, 2);

    await ups[0]?.close(); // gone, still passing in Consul for a while
    const t0 = Date.now();
    const partial = await a.broadcast('cache', '/ping', { timeoutMs: 1000 });
    assert.ok(Date.now() - t0 < 1500);
    assert.equal(partial.length, 3);
    assert.equal(partial.filter((e) => 'error' in e).length, 1);
    assert.equal(partial.filter((e) => 'status' in e && e.status === 200).length, 2);

    const t1 = Date.now();
    const slow = await a.broadcast('cache@1.1', '/stall', { timeoutMs: 500 });
    assert.ok(Date.now() - t1 < 1500);
    assert.equal(slow.length, 1);
    assert.ok('error' in (slow[0] as object));
    assert.equal((slow[0] as { error: { code: string } }).error.code, 'TANDEM_ERR_UPSTREAM_TIMEOUT');
  });
});
