// Metrics move with traffic, and `tandem status` matches Consul (real agent, real upstreams).
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { after, before, test } from 'node:test';
import { ConsulDevAgent } from '../../src/consul/consul-dev-agent.ts';
import { freePorts } from '../../src/common/free-port.ts';
import type { Sidecar } from '../../src/sidecar.ts';
import { eventually, healthOf } from '../support/consul.ts';
import { api, BIN, removeDir, startSidecar } from '../support/sidecar.ts';
import { startUpstream, type Upstream } from '../support/upstream.ts';

const consul = new ConsulDevAgent();
let side: { sidecar: Sidecar; api: string; stateDir: string };
const ups: Upstream[] = [];

before(async () => {
  await consul.start();
  side = await startSidecar(consul.address);
  for (const v of ['1.0.0', '1.1.0']) ups.push(await startUpstream('obs', v));
  for (const u of ups) await api('POST', `${side.api}/v1/services`, { name: 'obs', version: u.version, port: u.port, check: { kind: 'http', path: '/health', intervalMs: 10_000 } });
  // An instance that refuses connections but passes its (TTL) check: every try on it is retried.
  const [dead] = await freePorts(1);
  const r = await api('POST', `${side.api}/v1/services`, { name: 'obs', version: '1.2.0', port: dead, check: { kind: 'ttl', ttlMs: 60_000 } });
  await api('PUT', `${side.api}/v1/services/${(r.body as { id: string }).id}/heartbeat`);
  await eventually(async () => (await healthOf(consul, 'obs')).length === 3, '3 passing');
});
after(async () => {
  await side?.sidecar.close();
  for (const u of ups) await u.close();
  await consul.stop();
  await removeDir(side.stateDir);
});

/** The sum of every sample of `name` whose labels include `labels`. */
function metric(text: string, name: string, labels: Record<string, string>): number {
  const want = Object.entries(labels).map(([k, v]) => `${k}="${v}"`);
  let sum = 0;
  for (const line of text.split('\n')) {
    if (!line.startsWith(`${name}{`) && !line.startsWith(`${name} `)) continue;
    if (want.every((w) => line.includes(w))) sum += Number(line.split(' ').pop());
  }
  return sum;
}

test('metrics appear and move with traffic', async () => {
  const proxy = side.sidecar.addresses.proxy;
  const before = await (await fetch(`${side.api}/metrics`)).text();
  for (let i = 0; i < 30; i++) assert.equal((await fetch(`${proxy}/obs/x`)).status, 200);
  assert.equal((await fetch(`${proxy}/nosuch/x`)).status, 503);
  const res = await fetch(`${side.api}/metrics`);
  assert.match(res.headers.get('content-type') ?? '', /text\/plain/);
  const text = await res.text();
  const ok = metric(text, 'tandem_proxy_requests_total', { service: 'obs', status_class: '2xx' });
  assert.ok(ok - metric(before, 'tandem_proxy_requests_total', { service: 'obs', status_class: '2xx' }) === 30, `2xx count ${ok}`);
  assert.ok(metric(text, 'tandem_proxy_retries_total', { service: 'obs' }) >= 1, 'retries counted');
  assert.ok(metric(text, 'tandem_proxy_ejections_total', { service: 'obs' }) >= 1, 'the dead instance was ejected');
  assert.equal(metric(text, 'tandem_proxy_requests_total', { service: '_none', status_class: '5xx', outcome: 'failed' }), 1, 'unknown services share one label value');
  assert.ok(metric(text, 'tandem_proxy_request_duration_seconds_count', { service: 'obs' }) >= 30);
  assert.ok(text.includes('tandem_watch_age_seconds{service="obs"}'));
  assert.equal(metric(text, 'tandem_registrations', { state: 'registered' }), 4); // 3 obs + the sidecar
  assert.equal(metric(text, 'tandem_outage', {}), 0);
  assert.ok(!/user-|x-request-id|stickyid/i.test(text), 'no per-request label values');
});

test('tandem status matches Consul', async () => {
  const out = await new Promise<string>((resolve, reject) =>
    execFile(process.execPath, [BIN, 'status', '--json', '--api', side.api], { encoding: 'utf8', timeout: 30_000 }, (err, stdout, stderr) => (err ? reject(new Error(stderr)) : resolve(stdout))),
  );
  const st = JSON.parse(out) as { routing: { service: string; instances: { id: string; version: string; healthy: boolean }[] }[]; registrations: { id: string; state: string }[] };
  const obs = st.routing.find((r) => r.service === 'obs');
  assert.ok(obs);
  const rows = await healthOf(consul, 'obs', false);
  assert.deepEqual(
    obs.instances.map((i) => [i.id, i.version, i.healthy]).sort(),
    rows.map((r) => [r.Service.ID, r.Service.Meta['version'], r.Checks.every((c) => c.Status === 'passing')]).sort(),
  );
  const agentIds = Object.keys((await (await fetch(`${consul.address}/v1/agent/services`)).json()) as object).sort();
  assert.deepEqual(st.registrations.map((r) => r.id).sort(), agentIds);
  const table = await new Promise<string>((resolve, reject) =>
    execFile(process.execPath, [BIN, 'status', '--api', side.api], { encoding: 'utf8', timeout: 30_000 }, (err, stdout, stderr) => (err ? reject(new Error(stderr)) : resolve(stdout))),
  );
  assert.match(table, /Routing table/);
  assert.match(table, /obs\s+\* 3\/3/);
  assert.match(table, /LOAD \(in flight\/max, ewma\)/);
  // Each instance's cost inputs (what least-loaded compares) are in the status.
  const loads = (st as unknown as { routing: { service: string; instances: { load?: { inflight: number } }[] }[] }).routing.find((r) => r.service === 'obs')?.instances.map((i) => i.load?.inflight);
  assert.ok(loads?.every((n) => typeof n === 'number'), JSON.stringify(loads));
});

test('pub/sub and election counters move: published, delivered, promotions', { timeout: 60_000 }, async () => {
  const { Tandem } = await import('../../src/sdk/index.ts');
  const read = async () => (await fetch(`${side.api}/metrics`)).text();
  const before = await read();
  const base = {
    published: metric(before, 'tandem_events_published_total', {}),
    delivered: metric(before, 'tandem_events_delivered_total', {}),
    promotions: metric(before, 'tandem_election_promotions_total', {}),
  };
  const tandem = new Tandem({ url: side.api });
  const got: unknown[] = [];
  const stop = tandem.subscribe('obs-metrics', (payload) => got.push(payload));
  await stop.ready; // in place: the event published next is delivered
  await tandem.publish('obs-metrics', { n: 0 });
  await eventually(() => got.length > 0, 'the event delivered to the subscriber');
  const r = await api('POST', `${side.api}/v1/services`, { name: 'obs-leader', version: '1.0.0', port: ups[0]?.port ?? 1, check: { kind: 'ttl', ttlMs: 60_000 } });
  const id = (r.body as { id: string }).id;
  await api('PUT', `${side.api}/v1/services/${id}/heartbeat`);
  let promoted = false;
  const election = tandem.elect('obs-metrics-group', { service: id, onPromote: () => (promoted = true), onDemote: () => undefined });
  await eventually(() => promoted, 'the contender promoted');
  const after = await read();
  stop();
  await election.resign();
  await api('DELETE', `${side.api}/v1/services/${id}`);
  assert.ok(metric(after, 'tandem_events_published_total', {}) > base.published, 'published did not move');
  assert.ok(metric(after, 'tandem_events_delivered_total', {}) > base.delivered, 'delivered did not move');
  assert.equal(metric(after, 'tandem_election_promotions_total', {}), base.promotions + 1);
});
