// Load-aware balancing against a real Consul agent and real upstreams with injected latency: least-loaded vs round-robin, maxInFlight, bounded-load sticky.
import assert from 'node:assert/strict';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { describe, test } from 'node:test';
import { eventually } from '../support/consul.ts';
import { api, useSidecar } from '../support/sidecar.ts';

let base: string;
let proxy: string;
const { cleanups } = useSidecar(['--set', 'proxy.services.fastslow-ll.balancer=least-loaded', '--set', 'proxy.queueTimeoutMs=1500', '--set', 'proxy.maxQueued=2'], (urls) => ({ api: base, proxy } = urls));

/** An upstream answering after `delayMs`, counting the requests it has in flight at once. */
interface Slow {
  port: number;
  served: number;
  inflight: number;
  maxInflight: number;
}
async function startSlow(delayMs: number): Promise<Slow> {
  const s: Slow = { port: 0, served: 0, inflight: 0, maxInflight: 0 };
  const server: Server = createServer((req, res) => {
    if (req.url === '/health') return void res.end('ok');
    s.inflight++;
    s.maxInflight = Math.max(s.maxInflight, s.inflight);
    setTimeout(() => {
      s.inflight--;
      s.served++;
      res.end(String(s.port));
    }, delayMs);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  s.port = (server.address() as AddressInfo).port;
  cleanups.push(() => new Promise((r) => server.close(r)));
  return s;
}

async function register(name: string, port: number, extra: object = {}): Promise<void> {
  const res = await api('POST', `${base}/v1/services`, { name, version: '1.0.0', port, check: { kind: 'http', path: '/health' }, ...extra });
  assert.equal(res.status, 201, JSON.stringify(res.body));
}

interface InstanceView {
  port: number;
  healthy: boolean;
  balancer: string;
  load: { inflight: number; ewmaMs?: number; cost: number; maxInFlight?: number };
}
async function instances(service: string): Promise<InstanceView[]> {
  return ((await api('GET', `${base}/v1/instances/${service}`)).body as { instances: InstanceView[] }).instances;
}
async function waitHealthy(service: string, n: number): Promise<void> {
  await eventually(async () => (await instances(service)).filter((i) => i.healthy).length === n, `${n} healthy ${service}`);
}

/** `total` requests, `concurrency` at a time; every answer's status and headers. */
async function load(path: string, total: number, concurrency: number, headers: Record<string, string> = {}): Promise<{ status: number; headers: Headers; body: string }[]> {
  const out: { status: number; headers: Headers; body: string }[] = [];
  let next = 0;
  const worker = async () => {
    while (next < total) {
      next++;
      const res = await fetch(`${proxy}${path}`, { headers });
      out.push({ status: res.status, headers: res.headers, body: await res.text() });
    }
  };
  await Promise.all(Array.from({ length: concurrency }, worker));
  return out;
}

/** Two 2 ms instances and one 80 ms instance of `service`, registered and healthy. */
async function twoFastOneSlow(service: string): Promise<Slow[]> {
  const ups = [await startSlow(2), await startSlow(2), await startSlow(80)];
  for (const u of ups) await register(service, u.port);
  await waitHealthy(service, 3);
  return ups;
}

function shares(ups: Slow[], total: number): string {
  return ups.map((u) => `${u.port}: ${u.served} (${((100 * u.served) / total).toFixed(1)} %)`).join(', ');
}

describe('least-loaded vs round-robin with one slow instance', () => {
  test('least-loaded: an 80 ms instance among two 2 ms peers gets at most 10 % of 400 requests', async () => {
    const ups = await twoFastOneSlow('fastslow-ll');
    const answers = await load('/fastslow-ll/x', 400, 8);
    assert.ok(answers.every((a) => a.status === 200));
    const slow = ups[2] as Slow;
    console.log(`least-loaded shares: ${shares(ups, 400)}`);
    assert.equal(ups.reduce((n, u) => n + u.served, 0), 400);
    assert.ok(slow.served / 400 <= 0.1, `slow instance got ${slow.served} of 400`);
    // The instances view shows the cost inputs: the slow one's latency estimate is above its peers' (peak
    // EWMA: a fast instance's estimate keeps its early spikes, connection set-up, for a while).
    const view = await instances('fastslow-ll');
    assert.ok(view.every((i) => i.balancer === 'least-loaded'));
    const slowView = view.find((i) => i.port === slow.port);
    const fastView = view.find((i) => i.port === ups[0]?.port);
    assert.ok((slowView?.load.ewmaMs ?? 0) > 2 * (fastView?.load.ewmaMs ?? Infinity), JSON.stringify(view.map((i) => i.load)));
  });

  test('round-robin (the default): even counts', async () => {
    const ups = await twoFastOneSlow('fastslow-rr');
    const answers = await load('/fastslow-rr/x', 399, 8);
    assert.ok(answers.every((a) => a.status === 200));
    console.log(`round-robin shares: ${shares(ups, 399)}`);
    assert.deepEqual(ups.map((u) => u.served), [133, 133, 133]);
    assert.ok((await instances('fastslow-rr')).every((i) => i.balancer === 'round-robin'));
  });
});

describe('maxInFlight', () => {
  test('a bad maxInFlight is refused with 400 and a code', async () => {
    for (const bad of [0, -1, 1.5, '2']) {
      const res = await api('POST', `${base}/v1/services`, { name: 'bad-limit', version: '1.0.0', port: 4000, maxInFlight: bad });
      assert.equal(res.status, 400, JSON.stringify(res.body));
      assert.match((res.body as { code: string }).code, /^TANDEM_ERR_/);
      assert.match((res.body as { message: string }).message, /maxInFlight/);
    }
  });

  test('never more than maxInFlight in flight from the sidecar; beyond the queue, 503 OVERLOADED with Retry-After', async () => {
    const up = await startSlow(300);
    await register('limited', up.port, { maxInFlight: 2 });
    await waitHealthy('limited', 1);
    // The limit travels through Consul's Meta back into this sidecar's view.
    await eventually(async () => (await instances('limited'))[0]?.load.maxInFlight === 2, 'maxInFlight in the view');
    // 2 in flight + 2 queued (proxy.maxQueued) are served; the other 6 are refused at once.
    const answers = await load('/limited/x', 10, 10);
    const ok = answers.filter((a) => a.status === 200);
    const refused = answers.filter((a) => a.status === 503);
    assert.equal(ok.length, 4, answers.map((a) => a.status).join(','));
    assert.equal(refused.length, 6);
    for (const r of refused) {
      assert.equal(r.headers.get('x-tandem-error'), 'TANDEM_ERR_OVERLOADED');
      assert.equal(r.headers.get('retry-after'), '2');
      assert.equal((JSON.parse(r.body) as { code: string }).code, 'TANDEM_ERR_OVERLOADED');
    }
    assert.equal(up.maxInflight, 2, 'the upstream saw at most 2 at once');
    const metrics = await (await fetch(`${base}/metrics`)).text();
    assert.match(metrics, /tandem_proxy_overloaded_total\{service="limited"\} 6/);
  });
});

describe('bounded-load sticky hashing', () => {
  test("a hot key's owner stays within the load factor; the overflow is marked moved", async () => {
    const ups = [await startSlow(200), await startSlow(200), await startSlow(200)];
    for (const u of ups) await register('hotkey', u.port);
    await waitHealthy('hotkey', 3);
    // Unloaded, the key goes to its ring owner, every time.
    const owner = (await load('/hotkey/x', 3, 1, { 'x-stickyid': 'hot' })).map((a) => a.body);
    assert.equal(new Set(owner).size, 1);
    assert.ok(owner.every((b, i) => (i === 0 ? true : b === owner[0])));
    const ownerUp = ups.find((u) => String(u.port) === owner[0]) as Slow;
    const answers = await load('/hotkey/x', 24, 24, { 'x-stickyid': 'hot' });
    assert.ok(answers.every((a) => a.status === 200));
    const moved = answers.filter((a) => a.headers.get('x-tandem-sticky') === 'moved');
    const atOwner = answers.filter((a) => a.body === owner[0]);
    console.log(`hot key: owner ${atOwner.length} of 24 (max ${ownerUp.maxInflight} at once), moved ${moved.length}`);
    // ceil(1.25 × 24 / 3) = 10: the owner never carried more at once.
    assert.ok(ownerUp.maxInflight <= 10, `owner had ${ownerUp.maxInflight} in flight`);
    assert.ok(moved.length >= 14, `${moved.length} moved`);
    assert.ok(moved.every((a) => a.body !== owner[0]), 'moved answers come from other instances');
    assert.equal(moved.length + atOwner.length, 24);
    const metrics = await (await fetch(`${base}/metrics`)).text();
    assert.match(metrics, /tandem_proxy_sticky_moves_total\{service="hotkey",reason="load"\} \d+/);
  });
});
