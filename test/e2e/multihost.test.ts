// End-to-end on the multi-host harness (test/support/multihost-harness.ts): routing across hosts, a host lost and back, the Consul leader lost — real processes on loopback.
// Needs the built CLI: npm run build && node --import tsx --test --test-concurrency=1 test/e2e/*.test.ts
import assert from 'node:assert/strict';
import { after, before, beforeEach, describe, test } from 'node:test';
import { startHarness, stopHarness, type Harness, type HarnessHost } from '../support/multihost-harness.ts';
import { eventually } from '../support/consul.ts';
import { startLoad, type Load } from '../support/load.ts';
import { FAST } from '../support/sidecar.ts';

// host-a runs greeter 2.0.0, host-b 1.0.0, host-c 1.1.0: `^1` from host-a reaches only hosts b and c.
const RANGE = '^1';
let harness: Harness | undefined;

function h(): Harness {
  assert.ok(harness, 'the harness is not running');
  return harness;
}
const hostA = (): HarnessHost => h().host('host-a');
const url = (path = '/hello') => `${hostA().proxy}/greeter@${RANGE}${path}`;

interface Instance {
  id: string;
  address: string;
  healthy: boolean;
  ejected: boolean;
  flapping: boolean;
}

/** Addresses of the `^1` greeters in host-a's view: passing in Consul (and, with `routable`, neither ejected nor held out as flapping). */
async function viewOfA(routable = true): Promise<string[]> {
  const res = await fetch(`${hostA().api}/v1/instances/greeter?range=${encodeURIComponent(RANGE)}`);
  const body = (await res.json()) as { instances: Instance[] };
  return body.instances.filter((i) => i.healthy && !(routable && (i.ejected || i.flapping))).map((i) => i.address).sort();
}
const routable = () => viewOfA(true);

/** `n` sequential GETs from host-a; the serving host (the demo's x-demo-host) of each. */
async function hostsServing(n: number, headers: Record<string, string> = {}): Promise<{ host: string; instance: string }[]> {
  const out: { host: string; instance: string }[] = [];
  for (let i = 0; i < n; i++) {
    const res = await fetch(url(), { headers, signal: AbortSignal.timeout(10_000) });
    await res.arrayBuffer();
    assert.equal(res.status, 200, `request ${i}: ${res.status} ${res.headers.get('x-tandem-error') ?? ''}`);
    out.push({ host: res.headers.get('x-demo-host') ?? '?', instance: res.headers.get('x-tandem-instance') ?? '?' });
  }
  return out;
}

function count(values: readonly string[]): Record<string, number> {
  const c: Record<string, number> = {};
  for (const v of values) c[v] = (c[v] ?? 0) + 1;
  return c;
}

const B = '127.0.0.22';
const C = '127.0.0.23';
const same = (a: readonly string[], b: readonly string[]) => JSON.stringify(a) === JSON.stringify(b);

/**
 * Every test starts from the whole harness up and host-a routing `^1` to hosts b and c, whatever an
 * earlier test (or an earlier failure) left down: no test relies on another's side effects.
 */
async function baseline(): Promise<void> {
  const hz = h();
  // The Consul servers first, alive in the leader's member list: the client agents rejoin through them.
  const down = hz.cluster.servers.filter((s) => !s.proc);
  for (const s of down) await hz.cluster.restart(s.name);
  if (down.length > 0) {
    await eventually(async () => {
      const leader = await hz.cluster.leader();
      if (!leader) return false;
      const members = (await (await fetch(`${leader.address}/v1/agent/members`)).json()) as { Name: string; Status: number }[];
      return hz.cluster.servers.every((s) => members.some((m) => m.Name === s.name && m.Status === 1));
    }, 'every Consul server back in the cluster', 60_000);
  }
  for (const host of hz.hosts) {
    if (!hz.cluster.node(host.consulNode).proc) await hz.startAgent(host);
    for (const s of host.services) if (!s.proc) await hz.startService(s);
  }
  await eventually(async () => same(await routable(), [B, C]), 'host-a routing ^1 to hosts b and c', 90_000);
}

/** Kills host-c's Consul agent and its services at once; returns when. */
async function loseHostC(): Promise<number> {
  const c = h().host('host-c');
  const at = Date.now();
  await Promise.all([h().stopAgent(c, 'SIGKILL'), ...c.services.map((s) => h().stopService(s, 'SIGKILL'))]);
  return at;
}

/** Resolves once `load` has done `n` more requests than now: it is running (stop() checks they succeeded). */
function loadProgress(load: Load, n: number, what: string): Promise<true> {
  const from = load.total;
  return eventually(() => load.total >= from + n || undefined, what, 60_000);
}

describe('multi-host harness: 3 Consul servers, 3 hosts with agent + tandem + greeter', () => {
  before(async () => {
    // Ports 8300-8302/8500 on these addresses are shared with test/faults' cluster: wait for them.
    harness = await startHarness({ sidecarArgs: FAST, checkIntervalMs: 500, portWaitMs: 300_000 });
  }, { timeout: 420_000 });

  beforeEach(baseline, { timeout: 240_000 });

  after(async () => {
    if (harness) await stopHarness(harness);
  }, { timeout: 120_000 });

  test('a caller on host-a reaches hosts b and c round-robin, evenly', async () => {
    const served = await hostsServing(20);
    assert.deepEqual(count(served.map((s) => s.host)), { [B]: 10, [C]: 10 });
    // Strict alternation: never the same host twice in a row.
    for (let i = 1; i < served.length; i++) assert.notEqual(served[i]?.host, served[i - 1]?.host, `request ${i}`);
  });

  test('sticky: the same X-StickyId always reaches the same instance; keys spread over both hosts', async () => {
    const owners = new Map<string, string>();
    for (let k = 0; k < 16; k++) {
      const served = await hostsServing(4, { 'x-stickyid': `user-${k}` });
      const instances = new Set(served.map((s) => s.instance));
      assert.equal(instances.size, 1, `user-${k} went to ${[...instances].join(', ')}`);
      owners.set(`user-${k}`, served[0]?.host ?? '?');
    }
    assert.deepEqual(Object.keys(count([...owners.values()])).sort(), [B, C]);
  });

  test('host-c loses its Consul agent and its services under load: 0 failed requests, routing moves to host-b', { timeout: 120_000 }, async (t) => {
    const load = startLoad(url('/during-loss'), { workers: 4, maxMs: 90_000, maxRequests: 40_000, pauseMs: 2 });
    await loadProgress(load, 100, 'load running before the loss');
    const killedAt = await loseHostC();
    // The proxy fails over (and ejects host-c) at once; Consul marks host-c's node critical a few seconds later.
    await eventually(async () => same(await routable(), [B]), 'host-c out of host-a routing', 60_000);
    const removedAfter = Date.now() - killedAt;
    await eventually(async () => same(await viewOfA(false), [B]), 'Consul no longer passing host-c', 60_000);
    t.diagnostic(`host-c ejected after ${removedAfter} ms, out of Consul's passing set after ${Date.now() - killedAt} ms`);
    await loadProgress(load, 100, 'load running after host-c left');
    const r = await load.stop();
    assert.ok(r.total > 200, `only ${r.total} requests`);
    t.diagnostic(`${r.total} requests, ${r.failures.length} failed`);
    assert.deepEqual(r.failures, [], `${r.failures.length} of ${r.total} failed`);
    assert.deepEqual(count((await hostsServing(10)).map((s) => s.host)), { [B]: 10 });
  });

  test('host-c comes back (agent and services restarted): it is routed to again, 0 failed requests meanwhile', { timeout: 150_000 }, async (t) => {
    const c = h().host('host-c');
    // Set-up: host-c lost, as in the test before (which this one does not rely on).
    await loseHostC();
    await eventually(async () => same(await viewOfA(false), [B]), 'host-c out of Consul\'s passing set', 60_000);
    const load = startLoad(url('/during-return'), { workers: 2, maxMs: 120_000, maxRequests: 40_000, pauseMs: 5 });
    await h().startAgent(c);
    for (const s of c.services) await h().startService(s);
    await eventually(async () => same(await routable(), [B, C]), 'host-c back in host-a routing', 90_000);
    const r = await load.stop();
    t.diagnostic(`${r.total} requests, ${r.failures.length} failed`);
    assert.ok(r.total > 50, `only ${r.total} requests`);
    assert.deepEqual(r.failures, [], `${r.failures.length} of ${r.total} failed`);
    assert.deepEqual(count((await hostsServing(20)).map((s) => s.host)), { [B]: 10, [C]: 10 });
  });

  test('killing the Consul leader under load fails no request', { timeout: 120_000 }, async (t) => {
    const cluster = h().cluster;
    const load = startLoad(url('/during-election'), { workers: 4, maxMs: 90_000, maxRequests: 40_000, pauseMs: 2 });
    await loadProgress(load, 100, 'load running before the kill');
    const leader = await cluster.leader();
    assert.ok(leader, 'a leader before the kill');
    await cluster.kill(leader.name, 'SIGKILL');
    const next = await eventually(async () => {
      const l = await cluster.leader();
      return l !== undefined && l.name !== leader.name ? l : undefined;
    }, 'a new leader', 30_000);
    await loadProgress(load, 200, 'load running under the new leader');
    const r = await load.stop();
    t.diagnostic(`leader ${leader.name} killed, new leader ${next.name}; ${r.total} requests, ${r.failures.length} failed`);
    assert.ok(r.total > 200, `only ${r.total} requests`);
    assert.deepEqual(r.failures, [], `${r.failures.length} of ${r.total} failed`);
    assert.notEqual(next.name, leader.name);
    assert.deepEqual(count((await hostsServing(10)).map((s) => s.host)), { [B]: 5, [C]: 5 });
    // The killed server stays down: the next test's baseline() restarts it.
  });
});
