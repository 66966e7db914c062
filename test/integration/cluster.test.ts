// The cluster features' Consul footprint and trust on a real Consul: one query for all topics and groups, streams that leave nothing, forged events, crashed sidecars.
import assert from 'node:assert/strict';
import { createServer, request } from 'node:http';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import pino from 'pino';
import { EventBus } from '../../src/cluster/event-bus.ts';
import { encodeEvent, eventKey } from '../../src/cluster/event-feed.ts';
import { freePorts } from '../../src/common/free-port.ts';
import { ConsulClient } from '../../src/consul/consul-client.ts';
import { Tandem, type LeaderInfo } from '../../src/sdk/index.ts';
import { consulGet, eventually, useConsul } from '../support/consul.ts';
import { ConsulGate } from '../support/consul-gate.ts';
import { connectionsTo } from '../support/proc-stats.ts';
import { sseStream, type SseStream } from '../support/sse-client.ts';
import { api, FAST, removeDir, spawnSidecar, startSidecar, tempDir } from '../support/sidecar.ts';

const consul = useConsul();
const cleanups: (() => Promise<unknown> | unknown)[] = [];
after(async () => {
  for (const c of cleanups.reverse()) await Promise.resolve(c()).catch(() => undefined);
});

async function sidecar(consulAddress: string, nodeName: string, args: string[] = []) {
  const s = await startSidecar(consulAddress, { nodeName, args });
  cleanups.push(async () => {
    await s.sidecar.close();
    await removeDir(s.stateDir);
  });
  return s;
}

type Stream = SseStream<string>;

/** An SSE client: records every event; `close()` leaves like a client that goes away. */
const stream = (url: string, method = 'GET'): Stream => sseStream(url, { method });

const payloads = (s: Stream) => s.events.filter((e) => e.event === 'event').map((e) => (JSON.parse(e.data) as { payload: unknown }).payload);
const timers = () => process.getActiveResourcesInfo().filter((r) => r === 'Timeout').length;

/** A request with its path sent as written (fetch would resolve `..` before sending). */
function rawRequest(base: string, method: string, path: string): Promise<{ status: number; code: string }> {
  return new Promise((resolve, reject) => {
    const u = new URL(base);
    const req = request({ host: u.hostname, port: u.port, method, path, headers: method === 'GET' ? {} : { 'content-type': 'application/json' } }, (res) => {
      let body = '';
      res.on('data', (d: Buffer) => (body += d.toString()));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, code: (JSON.parse(body || '{}') as { code?: string }).code ?? '' }));
    });
    req.on('error', reject);
    req.end(method === 'GET' || method === 'DELETE' ? undefined : '{}');
  });
}

test('230 event streams on distinct topics hold one Consul query; Consul keeps answering; closing them gives everything back', async (t) => {
  // The events query gives its lease back when its request in flight ends (BlockingQuery#stop does not
  // abort it: Consul would count the dropped connection until the wait ends anyway), so a short wait.
  const s = await sidecar(consul.address, 'flood', ['--set', 'watch.waitMs=5000']);
  const before = { leases: s.sidecar.clusterStats().budget.inUse, conns: connectionsTo(consul.httpPort) };
  const streams = Array.from({ length: 230 }, (_, i) => stream(`${s.api}/v1/events/flood-${i}`));
  await eventually(() => streams.every((x) => x.has('cursor')) || undefined, 'every stream started', 60_000);
  const during = s.sidecar.clusterStats();
  assert.deepEqual(during.events, { topics: 230, subscribers: 230, watching: true, retryScheduled: false });
  assert.ok(during.budget.inUse <= before.leases + 1, `blocking-query leases ${before.leases} → ${during.budget.inUse}`);
  const conns = connectionsTo(consul.httpPort);
  assert.ok(conns <= before.conns + 20, `connections to Consul ${before.conns} → ${conns}`);
  const plain = await fetch(`${consul.address}/v1/status/leader`);
  assert.equal(plain.status, 200, 'a new client from 127.0.0.1 still gets answers');
  // Fan-out: one topic's event reaches its stream only.
  assert.equal((await api('POST', `${s.api}/v1/events/flood-117`, { hello: 117 })).status, 201);
  await eventually(() => payloads(streams[117] as Stream).length === 1 || undefined, 'the event on its topic');
  assert.equal(streams.reduce((n, x) => n + payloads(x).length, 0), 1);

  for (const x of streams) x.close();
  await eventually(() => {
    const st = s.sidecar.clusterStats();
    return (st.events?.topics === 0 && !st.events.watching && st.openStreams === 0 && st.budget.inUse === before.leases) || undefined;
  }, 'every subscription, stream and lease given back');
  const afterConns = await eventually(() => (connectionsTo(consul.httpPort) <= before.conns + 8 ? connectionsTo(consul.httpPort) : undefined), 'connections back near the baseline', 15_000);
  t.diagnostic(`230 streams: blocking-query leases ${before.leases} → ${during.budget.inUse} → ${s.sidecar.clusterStats().budget.inUse}; TCP connections to Consul (this process) ${before.conns} → ${conns} during → ${afterConns} after`);
});

test('20 streams abandoned before their first Consul answer leave no subscription, lease, timer or request; close() is quick', async (t) => {
  const gate = new ConsulGate(consul.address);
  const gateUrl = await gate.start();
  cleanups.push(() => gate.close());
  // Consul "has not answered yet" for the events prefix, for as long as the test wants.
  gate.hold = (req) => req.method === 'GET' && decodeURIComponent(req.url ?? '').startsWith('/v1/kv/tandem/events/');
  const { sidecar: side, api: url, stateDir } = await startSidecar(gateUrl, { nodeName: 'abandon' });
  cleanups.push(async () => {
    await side.close();
    await removeDir(stateDir);
  });
  const before = { leases: side.clusterStats().budget.inUse, timers: timers() };
  const streams = Array.from({ length: 20 }, (_, i) => stream(`${url}/v1/events/abandon-${i}`));
  assert.deepEqual(await Promise.all(streams.map((x) => x.status)), Array(20).fill(200), 'streams open at once');
  await eventually(() => gate.held.size === 1 || undefined, 'the one events query waiting on Consul');
  assert.deepEqual(side.clusterStats().events, { topics: 20, subscribers: 20, watching: true, retryScheduled: false });
  assert.equal(streams.filter((x) => x.has('cursor')).length, 0, 'no first answer yet');

  for (const x of streams) x.close();
  await eventually(() => {
    const st = side.clusterStats();
    return (st.events?.topics === 0 && !st.events.watching && st.openStreams === 0 && st.budget.inUse === before.leases && gate.held.size === 0) || undefined;
  }, 'no subscription, stream, lease or held Consul request left');
  assert.ok(timers() <= before.timers + 2, `timers ${before.timers} → ${timers()}`);
  const t0 = Date.now();
  await side.close();
  const closeMs = Date.now() - t0;
  assert.ok(closeMs < 5000, `close took ${closeMs} ms`);
  t.diagnostic(`abandoned streams: held Consul requests 1 → ${gate.held.size}, timers ${before.timers} → ${timers()}, close() ${closeMs} ms`);
});

test('streams beyond api.maxStreams get 503 TANDEM_ERR_TOO_MANY_STREAMS, on every stream route', async () => {
  const s = await sidecar(consul.address, 'bounded', ['--set', 'api.maxStreams=3']);
  const open = [stream(`${s.api}/v1/events/b1`), stream(`${s.api}/v1/events/b2`), stream(`${s.api}/v1/lifecycle`)];
  assert.deepEqual(await Promise.all(open.map((x) => x.status)), [200, 200, 200]);
  const refused = await fetch(`${s.api}/v1/events/b4`);
  assert.equal(refused.status, 503);
  assert.equal(((await refused.json()) as { code: string }).code, 'TANDEM_ERR_TOO_MANY_STREAMS');
  assert.equal(s.sidecar.clusterStats().events?.topics, 2, 'the refused stream left no subscription');
  open[0]?.close();
  await eventually(() => s.sidecar.clusterStats().openStreams === 2 || undefined, 'a slot given back');
  const again = stream(`${s.api}/v1/events/b5`);
  assert.equal(await again.status, 200);
  for (const x of [...open, again]) x.close();
});

test('a forged high-sequence key does not stop a publisher\'s later events, and is deleted; a mismatched value is ignored', async () => {
  const s = await sidecar(consul.address, 'forge');
  const sub = stream(`${s.api}/v1/events/forge`);
  cleanups.push(() => sub.close());
  await eventually(() => sub.has('cursor') || undefined, 'subscribed');
  const e1 = (await api('POST', `${s.api}/v1/events/forge`, { n: 1 })).body as { publisher: string; seq: number };
  await eventually(() => payloads(sub).length === 1 || undefined, 'first event');
  const forgedSeq = 9_000_000_000_000_000;
  const forgedKey = eventKey('forge', e1.publisher, forgedSeq);
  const put = (key: string, value: string) => fetch(`${consul.address}/v1/kv/${key}`, { method: 'PUT', body: value });
  assert.equal((await put(forgedKey, encodeEvent(e1.publisher, forgedSeq, Date.now(), 'forged'))).status, 200);
  assert.equal((await put(eventKey('forge', e1.publisher, e1.seq + 1), encodeEvent('mallory', e1.seq + 1, Date.now(), 'mismatched'))).status, 200);
  for (const n of [2, 3]) assert.equal((await api('POST', `${s.api}/v1/events/forge`, { n })).status, 201);
  await eventually(() => payloads(sub).length >= 3 || undefined, 'later events delivered');
  assert.deepEqual(payloads(sub), [{ n: 1 }, { n: 2 }, { n: 3 }]);
  await eventually(async () => (await fetch(`${consul.address}/v1/kv/${forgedKey}`)).status === 404, 'forged key deleted');
  // A subscriber that comes later starts below the real publisher's seqs, not at the forged one.
  const late = stream(`${s.api}/v1/events/forge`);
  cleanups.push(() => late.close());
  await eventually(() => late.has('cursor') || undefined, 'late subscriber started');
  assert.ok((JSON.parse(late.events[0]?.data ?? '{}') as Record<string, number>)[e1.publisher] ?? 0 < forgedSeq);
  await api('POST', `${s.api}/v1/events/forge`, { n: 4 });
  await eventually(() => payloads(late).length === 1 || undefined, 'the late subscriber gets the next event');
});

test("a forged key 50 s ahead (zero-padded, matching value) neither reaches subscribers nor silences the publisher; one 3 s ahead waits for its time", async () => {
  const s = await sidecar(consul.address, 'forge-near');
  const sub = stream(`${s.api}/v1/events/orders`);
  cleanups.push(() => sub.close());
  await eventually(() => sub.has('cursor') || undefined, 'subscribed');
  const pub = ((await api('POST', `${s.api}/v1/events/orders`, { n: 1 })).body as { publisher: string }).publisher;
  await eventually(() => payloads(sub).length === 1 || undefined, 'first event');
  // What the review put straight into Consul KV: the publisher's own key shape and a value naming it.
  const forge = async (aheadMs: number) => {
    const seq = (Date.now() + aheadMs) * 1000;
    const res = await fetch(`${consul.address}/v1/kv/${eventKey('orders', pub, seq)}`, { method: 'PUT', body: encodeEvent(pub, seq, Date.now(), 'FORGED') });
    assert.equal(res.status, 200);
    return { seq, key: eventKey('orders', pub, seq) };
  };
  const publish = async (n: number) => assert.equal((await api('POST', `${s.api}/v1/events/orders`, { n })).status, 201);

  const far = await forge(50_000);
  // The sidecar deletes a key that far ahead once it sees it: it has, before the real events.
  await eventually(async () => (await fetch(`${consul.address}/v1/kv/${far.key}`)).status === 404, 'the forged key deleted');
  for (const n of [2, 3]) await publish(n);
  await eventually(() => payloads(sub).length >= 3 || undefined, 'the real events after the forged key');
  assert.deepEqual(payloads(sub), [{ n: 1 }, { n: 2 }, { n: 3 }]);

  // Within the skew allowance: delivered (impersonation needs signatures to stop), but only once its
  // time has come, after every real event published before it; the events after it arrive too.
  const near = await forge(3000);
  // Nothing shows that the sidecar holds a key still waiting for its time: a bounded wait for its watch.
  await sleep(300);
  for (const n of [4, 5]) await publish(n);
  await eventually(() => payloads(sub).length >= 5 || undefined, 'the real events published while the forged key waits');
  // Held back, they would come only once the forged key is due (its seq is its time, in µs).
  const early = near.seq / 1000 - Date.now();
  assert.ok(early > 0, `not held back by the forged key (delivered ${-early} ms after it was due)`);
  await eventually(() => payloads(sub).includes('FORGED') || undefined, 'the forged event, once due', 10_000);
  await publish(6);
  await eventually(() => payloads(sub).length >= 7 || undefined, 'the real event after it');
  assert.deepEqual(payloads(sub), [{ n: 1 }, { n: 2 }, { n: 3 }, { n: 4 }, { n: 5 }, 'FORGED', { n: 6 }]);
});

test('a CAS write that stores nothing fails publish with 409 TANDEM_ERR_EVENT_NOT_STORED (real Consul, its next key taken)', async (t) => {
  const client = new ConsulClient({ address: consul.address, requestTimeoutMs: 5000 });
  const bus = new EventBus({ consul: client, logger: pino({ level: 'silent' }), retentionMs: 60_000, waitMs: 5000, maxBackoffMs: 1000 });
  cleanups.push(() => (bus.close(), client.close()));
  bus.start('cas-publisher');
  // The next seq is Date.now() in µs: with the clock pinned, the key the publish will use is known.
  const at = Date.now() + 1000;
  const taken = eventKey('cas', 'cas-publisher', at * 1000);
  assert.equal((await fetch(`${consul.address}/v1/kv/${taken}`, { method: 'PUT', body: 'taken' })).status, 200);
  t.mock.method(Date, 'now', () => at);
  await assert.rejects(bus.publish('cas', { n: 1 }), (err: { code: string; statusCode: number }) => err.code === 'TANDEM_ERR_EVENT_NOT_STORED' && err.statusCode === 409);
  t.mock.restoreAll();
  const e = await bus.publish('cas', { n: 2 });
  assert.ok(e.seq > at * 1000);
});

test('names . and .. are refused with 400 on every route that takes a topic, group or node; nothing is left watching', async () => {
  const s = await sidecar(consul.address, 'names');
  for (const [method, path] of [
    ['GET', '/v1/events/..'],
    ['GET', '/v1/events/%2E%2E'],
    ['POST', '/v1/events/.'],
    ['GET', '/v1/leaders/..'],
    ['POST', '/v1/leaders/../campaign?serviceId=x'],
    ['PUT', '/v1/drain/..'],
    ['GET', '/v1/drain/%2e'],
    ['DELETE', '/v1/drain/..'],
  ] as const) {
    const r = await rawRequest(s.api, method, path);
    assert.equal(r.status, 400, `${method} ${path}: ${r.status} ${r.code}`);
  }
  assert.deepEqual(s.sidecar.clusterStats().events, { topics: 0, subscribers: 0, watching: false, retryScheduled: false });
});

test('a Consul hiccup is not a lost session (group named "session-…"): the leader stays leader', async () => {
  const gate = new ConsulGate(consul.address);
  const gateUrl = await gate.start();
  cleanups.push(() => gate.close());
  const s = await sidecar(gateUrl, 'hiccup');
  const app = new Tandem({ url: s.api });
  cleanups.push(() => app.close());
  const server = createServer((_q, r) => r.end());
  cleanups.push(() => new Promise((r) => server.close(r)));
  const svc = await app.register('hiccup-app@1.0.0', server, { deregisterOnSignal: false });
  const promoted: LeaderInfo[] = [];
  const demoted: string[] = [];
  const election = app.elect('session-hiccup', { service: svc, onPromote: (i) => promoted.push(i), onDemote: (r) => demoted.push(r), onError: () => undefined });
  cleanups.push(() => election.resign());
  await eventually(() => promoted.length === 1 || undefined, 'promoted');
  const failedRenewals = () => gate.failed.filter((p) => p.startsWith('/v1/session/renew')).length;
  gate.mode = 'fail';
  await eventually(() => failedRenewals() >= 1 || undefined, 'a renewal failed during the hiccup', 15_000);
  gate.mode = 'pass';
  await eventually(() => gate.passed.some((p) => p.startsWith('/v1/session/renew')) || undefined, 'a renewal after the hiccup', 15_000);
  assert.deepEqual(demoted, []);
  assert.equal(promoted.length, 1);
  assert.equal((await app.leader('session-hiccup'))?.token, promoted[0]?.token);
});

test('SIGKILL of the sidecar while its app leads; restarted on the same state dir, the app is leader again within TTL + lock-delay + 5 s', async (t) => {
  const stateDir = await tempDir();
  cleanups.push(() => removeDir(stateDir));
  const [apiPort, proxyPort] = (await freePorts(2)) as [number, number];
  const args = ['--consul', consul.address, '--state-dir', stateDir, '--node-name', 'crash-node', '--advertise', '127.0.0.1', ...FAST];
  let side = await spawnSidecar(args, {}, { api: apiPort, proxy: proxyPort });
  cleanups.push(() => side.child.kill('SIGKILL'));
  const app = new Tandem({ url: side.api });
  cleanups.push(() => app.close());
  const server = createServer((_q, r) => r.end());
  cleanups.push(() => new Promise((r) => server.close(r)));
  const svc = await app.register('crash-app@1.0.0', server, { deregisterOnSignal: false });
  const promoted: { info: LeaderInfo; at: number }[] = [];
  const election = app.elect('crash-group', { service: svc, onPromote: (info) => promoted.push({ info, at: Date.now() }), onDemote: () => undefined, onError: () => undefined });
  cleanups.push(() => election.resign());
  await eventually(() => promoted.length === 1 || undefined, 'promoted', 20_000);
  const lock = (await consulGet<{ Session: string }[]>(consul, '/v1/kv/tandem/leaders/crash-group'))[0];
  const session = (await consulGet<{ TTL: string; Checks?: string[]; NodeChecks?: string[]; ServiceChecks?: { ID: string }[] }[]>(consul, `/v1/session/info/${lock?.Session}`))[0];
  assert.equal(session?.TTL, '10s', 'the session has a TTL');
  assert.match(JSON.stringify(session), /serfHealth/);
  assert.match(JSON.stringify(session), new RegExp(`service:${svc.id}`));
  assert.match(await readFile(join(stateDir, 'election-sessions.json'), 'utf8'), new RegExp(lock?.Session ?? 'none'), 'the session id is in the state dir');

  const killedAt = Date.now();
  side.child.kill('SIGKILL');
  await side.exited;
  side = await spawnSidecar(args, {}, { api: apiPort, proxy: proxyPort });
  const restartedAt = Date.now();
  const again = await eventually(() => promoted[1], 'promoted again after the restart', 30_000);
  const repromoteMs = again.at - restartedAt;
  t.diagnostic(`SIGKILL → restart took ${restartedAt - killedAt} ms; restart → promoted again ${repromoteMs} ms (bound: TTL 10 s + lock-delay 5 s + 5 s)`);
  assert.ok(repromoteMs <= 20_000, `re-promoted after ${repromoteMs} ms`);
  assert.ok(again.info.token > (promoted[0]?.info.token ?? 0), 'the fencing token increased');
  assert.deepEqual(await consulGet<unknown[]>(consul, `/v1/session/info/${lock?.Session}`), [], "the killed sidecar's session is gone");
  assert.equal((await app.leader('crash-group'))?.token, again.info.token, 'GET /v1/leaders agrees with Consul');
  await election.resign();
  side.child.kill('SIGTERM');
  await side.exited;
});
