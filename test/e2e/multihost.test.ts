// End-to-end on the multi-host harness (test/support/multihost-harness.ts): routing across hosts, a host lost and back, the Consul leader lost — real processes on loopback.
// Needs the built CLI: npm run build && node --import tsx --test --test-concurrency=1 test/e2e/*.test.ts
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { startHarness, stopHarness, type Harness, type HarnessHost } from '../support/multihost-harness.ts';
import { eventually } from '../support/consul.ts';
import { startLoad } from '../support/load.ts';
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

describe('multi-host harness: 3 Consul servers, 3 hosts with agent + tandem + greeter', () => {
  before(async () => {
    // Ports 8300-8302/8500 on these addresses are shared with test/faults' cluster: wait for them.
    harness = await startHarness({ sidecarArgs: FAST, checkIntervalMs: 500, portWaitMs: 300_000 });
    await eventually(async () => JSON.stringify(await routable()) === JSON.stringify([B, C]), 'host-a routing ^1 to hosts b and c', 30_000);
  }, { timeout: 420_000 });

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
    const c = h().host('host-c');
    const load = startLoad(url('/during-loss'), { workers: 4, maxMs: 90_000, maxRequests: 40_000, pauseMs: 2 });
    await sleep(1000);
    const killedAt = Date.now();
    await Promise.all([h().stopAgent(c, 'SIGKILL'), ...c.services.map((s) => h().stopService(s, 'SIGKILL'))]);
    // The proxy fails over (and ejects host-c) at once; Consul marks host-c's node critical a few seconds later.
    await eventually(async () => JSON.stringify(await routable()) === JSON.stringify([B]), 'host-c out of host-a routing', 60_000);
    const removedAfter = Date.now() - killedAt;
    await eventually(async () => JSON.stringify(await viewOfA(false)) === JSON.stringify([B]), 'Consul no longer passing host-c', 60_000);
    t.diagnostic(`host-c ejected after ${removedAfter} ms, out of Consul's passing set after ${Date.now() - killedAt} ms`);
    const atRemoval = load.total;
    await sleep(1000);
    const r = await load.stop();
    assert.ok(r.total > 200 && r.total > atRemoval, `only ${r.total} requests`);
    t.diagnostic(`${r.total} requests, ${r.failures.length} failed`);
    assert.deepEqual(r.failures, [], `${r.failures.length} of ${r.total} failed`);
    assert.deepEqual(count((await hostsServing(10)).map((s) => s.host)), { [B]: 10 });
  });

  test('host-c comes back (agent and services restarted): it is routed to again, 0 failed requests meanwhile', { timeout: 150_000 }, async (t) => {
    const c = h().host('host-c');
    const load = startLoad(url('/during-return'), { workers: 2, maxMs: 120_000, maxRequests: 40_000, pauseMs: 5 });
    await h().startAgent(c);
    for (const s of c.services) await h().startService(s);
    await eventually(async () => JSON.stringify(await routable()) === JSON.stringify([B, C]), 'host-c back in host-a routing', 90_000);
    const r = await load.stop();
    t.diagnostic(`${r.total} requests, ${r.failures.length} failed`);
    assert.ok(r.total > 50, `only ${r.total} requests`);
    assert.deepEqual(r.failures, [], `${r.failures.length} of ${r.total} failed`);
    assert.deepEqual(count((await hostsServing(20)).map((s) => s.host)), { [B]: 10, [C]: 10 });
  });

  test('killing the Consul leader under load fails no request', { timeout: 120_000 }, async (t) => {
    const cluster = h().cluster;
    const load = startLoad(url('/during-election'), { workers: 4, maxMs: 90_000, maxRequests: 40_000, pauseMs: 2 });
    await sleep(1000);
    const leader = await cluster.leader();
    assert.ok(leader, 'a leader before the kill');
    await cluster.kill(leader.name, 'SIGKILL');
    const next = await eventually(async () => {
      const l = await cluster.leader();
      return l !== undefined && l.name !== leader.name ? l : undefined;
    }, 'a new leader', 30_000);
    await sleep(2000);
    const r = await load.stop();
    t.diagnostic(`leader ${leader.name} killed, new leader ${next.name}; ${r.total} requests, ${r.failures.length} failed`);
    assert.ok(r.total > 200, `only ${r.total} requests`);
    assert.deepEqual(r.failures, [], `${r.failures.length} of ${r.total} failed`);
    assert.notEqual(next.name, leader.name);
    assert.deepEqual(count((await hostsServing(10)).map((s) => s.host)), { [B]: 5, [C]: 5 });
    await cluster.restart(leader.name);
  });
});
