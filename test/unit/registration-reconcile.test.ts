// The registrar's reconciliation with a fake agent: what it should have registered against what Consul has, after a
// lost agent, a reaped service, a registration pending while Consul is down, a replaced id, a restore from the state file.
// What belongs to Consul itself (its reaper, a dev agent's restart, check runs) stays tested against a real agent in
// test/integration/registration.test.ts and lifecycle.test.ts.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { pino } from 'pino';
import type { ServiceSpec } from '../../src/protocol/wire.ts';
import { Registrar, type RegistrarOptions } from '../../src/registration/registrar.ts';
import type { Stored } from '../../src/registration/entry.ts';
import { eventually } from '../support/consul.ts';
import { FakeAgent, FakeProbe, FakeStore } from '../support/fake-agent.ts';

const SIDECAR: ServiceSpec = { name: 'tandem', version: '0.1.0', port: 7701, tags: ['tandem-sidecar'], check: { kind: 'http', path: '/v1/health' } };
const SIDECAR_ID = 'tandem-n1-7701';
const users: ServiceSpec = { name: 'users', version: '1.0.0', port: 4001 };
const orders: ServiceSpec = { name: 'orders', version: '2.0.0', port: 4002 };
const jobs: ServiceSpec = { name: 'jobs', version: '1.0.0', port: 4003, check: { kind: 'ttl', ttlMs: 10_000 } };
const id = (s: ServiceSpec) => s.id ?? `${s.name}-n1-${s.port}`;

interface Rig {
  agent: FakeAgent;
  store: FakeStore;
  probe: FakeProbe;
  registrar: Registrar;
  /** How many lines the registrar logged with this message (about this service). */
  logged: (msg: string | RegExp, service?: string) => number;
  said: (msg: string | RegExp, service?: string) => boolean;
  /** The API registrations in the state file, by id. */
  stored: () => Map<string, Stored>;
}

/** A registrar on a fake agent; its timer never fires during a test (each sync is the test's own call). */
function rig(opts: Partial<RegistrarOptions> & { stored?: Stored[] } = {}): Rig {
  const { stored, ...over } = opts;
  const agent = new FakeAgent();
  const store = new FakeStore(stored ? { registrations: stored } : {});
  const probe = new FakeProbe();
  const logs: { msg: string; service?: string }[] = [];
  const logger = pino({ level: 'info' }, { write: (line: string) => void logs.push(JSON.parse(line) as { msg: string }) });
  const registrar = new Registrar({
    consul: agent, store, logger, nodeName: 'n1', syncIntervalMs: 3_600_000, drainMs: 0, checkIntervalMs: 10_000,
    checkTimeoutMs: 1000, ttlMs: 10_000, livenessGraceMs: 60_000, configServices: [], probe: probe.probe, ...over,
  });
  const logged = (msg: string | RegExp, service?: string) => logs.filter((l) => (typeof msg === 'string' ? l.msg === msg : msg.test(l.msg)) && (service === undefined || l.service === service)).length;
  const said = (msg: string | RegExp, service?: string) => logged(msg, service) > 0;
  const storedNow = () => new Map(((store.docs.get('registrations') ?? []) as Stored[]).map((s) => [id(s.spec), s]));
  return { agent, store, probe, registrar, logged, said, stored: storedNow };
}

const stateOf = (r: Registrar, sid: string) => r.snapshot().find((e) => e.id === sid)?.state;

/** Started; users-1 registered at 1.0.0, then replaced by 2.0.0 while Consul was down: the replacement pending, 1.0.0 still in Consul. */
async function pendingReplacement({ agent, registrar }: Rig): Promise<void> {
  await registrar.start(SIDECAR);
  await registrar.register({ ...users, id: 'users-1' });
  agent.down = true;
  assert.equal((await registrar.register({ ...users, id: 'users-1', version: '2.0.0' })).pending, true);
  agent.down = false;
}

describe('start and restore', () => {
  test('start registers the sidecar, the config services and the stored API ones, each with its probed status and the sidecar token', async () => {
    const { agent, probe, registrar } = rig({ configServices: [users], stored: [{ spec: orders }] });
    probe.verdicts.set(orders.port, 'critical');
    await registrar.start(SIDECAR);
    assert.deepEqual([...agent.services.keys()].sort(), [id(orders), SIDECAR_ID, id(users)]);
    assert.equal(agent.status(id(users)), 'passing');
    assert.equal(agent.status(id(orders)), 'critical', 'registered with what its probe found, not passing on faith');
    assert.equal(agent.services.get(id(users))?.Address, '10.0.0.7', 'the address the agent advertises');
    assert.ok(agent.callsOf('register').every((c) => c.token === undefined), 'upkeep writes carry the sidecar token');
    assert.deepEqual(registrar.snapshot().map((e) => [e.id, e.source, e.state]).sort(), [
      [id(orders), 'api', 'registered'],
      [SIDECAR_ID, 'sidecar', 'registered'],
      [id(users), 'config', 'registered'],
    ]);
    assert.equal(registrar.consulReachable, true);
    await registrar.close();
  });

  test('a stored registration with a sidecar mark is not restored; an app that registered before start keeps its newer spec', async () => {
    const forged: ServiceSpec = { name: 'forged', version: '1.0.0', port: 4010, tags: ['tandem-sidecar'] };
    const { agent, registrar, said } = rig({ stored: [{ spec: forged }, { spec: users }] });
    // The control API may take a registration before start() has loaded the state file.
    await registrar.register({ ...users, version: '1.5.0' });
    await registrar.start(SIDECAR);
    assert.equal(registrar.has(id(forged)), false);
    assert.equal(agent.services.has(id(forged)), false);
    assert.ok(said('not restoring a stored registration that carries a sidecar mark', 'forged'));
    assert.equal(agent.services.get(id(users))?.Meta['version'], '1.5.0');
    await registrar.close();
  });

  test('a config service with a sidecar mark stops start() with TANDEM_ERR_RESERVED_SERVICE', async () => {
    const { registrar } = rig({ configServices: [{ name: 'tandem', version: '1.0.0', port: 4011 }] });
    await assert.rejects(registrar.start(SIDECAR), { code: 'TANDEM_ERR_RESERVED_SERVICE' });
  });

  test('restored liveness registrations must be claimed by their app within the grace, or they go', async () => {
    const dead: ServiceSpec = { name: 'dead', version: '1.0.0', port: 4020 };
    const alive: ServiceSpec = { name: 'alive', version: '1.0.0', port: 4021 };
    const { agent, registrar, stored, said } = rig({ livenessGraceMs: 150, stored: [{ spec: dead, liveness: true }, { spec: alive, liveness: true }, { spec: users }] });
    await assert.rejects(registrar.holdLiveness(id(alive)), { code: 'TANDEM_ERR_STARTING', statusCode: 503 }, 'before the restore: "retry", not "not found"');
    await registrar.start(SIDECAR);
    assert.ok(agent.services.has(id(dead)), 'restored first: the grace is for its app to come back');
    const release = await registrar.holdLiveness(id(alive));
    await eventually(() => !agent.services.has(id(dead)), 'the unclaimed one deregistered', 3000);
    assert.equal(registrar.has(id(dead)), false);
    assert.equal(stored().has(id(dead)), false, 'and forgotten in the state file');
    assert.ok(said("the app's liveness stream closed and did not come back within the grace: deregistering its service", id(dead)));
    await sleep(300);
    assert.ok(agent.services.has(id(alive)), 'the claimed one stays past the grace');
    assert.ok(agent.services.has(id(users)), 'a registration without liveness never expires');
    release();
    release(); // idempotent
    await eventually(() => !agent.services.has(id(alive)), 'released: gone after the grace', 3000);
    assert.deepEqual([...stored().keys()], [id(users)]);
    await registrar.close();
  });

  test('holdLiveness refuses ids it does not own, and a failed state write gives the stream back (the registration can still expire)', async () => {
    const { agent, store, registrar } = rig({ livenessGraceMs: 100, configServices: [orders] });
    await registrar.start(SIDECAR);
    await assert.rejects(registrar.holdLiveness('nope'), { code: 'TANDEM_ERR_SERVICE_NOT_FOUND' });
    await assert.rejects(registrar.holdLiveness(id(orders)), { code: 'TANDEM_ERR_SERVICE_NOT_FOUND' }, 'a config service is not the app’s to hold');
    await assert.rejects(registrar.holdLiveness(SIDECAR_ID), { code: 'TANDEM_ERR_SERVICE_NOT_FOUND' });
    await registrar.register(users);
    store.failWith = new Error('ENOSPC');
    await assert.rejects(registrar.holdLiveness(id(users)), /ENOSPC/);
    store.failWith = undefined;
    await eventually(() => !agent.services.has(id(users)), 'expired: the failed hold left no stream open', 3000);
    await registrar.close();
  });
});

describe('lost: the agent dropped registrations', () => {
  test('after an agent restart (the sidecar’s own registration gone too) everything comes back, even a service whose probe fails', async () => {
    const { agent, probe, registrar, said } = rig({ configServices: [users] });
    await registrar.start(SIDECAR);
    await registrar.register(orders);
    probe.verdicts.set(orders.port, 'critical');
    const before = agent.callsOf('register').length;
    await registrar.sync();
    assert.equal(agent.callsOf('register').length, before, 'nothing missing: a sync only reads');
    agent.restart();
    await registrar.sync();
    assert.deepEqual([...agent.services.keys()].sort(), [id(orders), SIDECAR_ID, id(users)]);
    assert.equal(agent.status(id(orders)), 'critical', 'back with its probed status (the agent lost it; nothing says it was reaped)');
    assert.ok(said('re-registered a service the Consul agent had lost', id(users)));
    assert.ok(agent.callsOf('register').slice(before).every((c) => c.token === undefined));
    await registrar.close();
  });

  test('reaped: one service gone while the sidecar’s stays is kept out until its probe passes', async () => {
    const { agent, probe, registrar, said } = rig();
    await registrar.start(SIDECAR);
    await registrar.register(orders);
    probe.verdicts.set(orders.port, 'critical');
    agent.services.delete(id(orders)); // DeregisterCriticalServiceAfter, or an operator
    await registrar.sync();
    assert.equal(agent.services.has(id(orders)), false, 'not back critical only to be reaped again');
    assert.equal(stateOf(registrar, id(orders)), 'pending');
    assert.ok(said(/Consul removed this service while its check failed/, id(orders)));
    const runs = probe.runs;
    await registrar.sync();
    assert.equal(agent.services.has(id(orders)), false);
    assert.ok(probe.runs > runs, 'probed again on every sync');
    probe.verdicts.set(orders.port, 'passing');
    await registrar.sync();
    assert.equal(agent.status(id(orders)), 'passing');
    assert.equal(stateOf(registrar, id(orders)), 'registered');
    assert.ok(said('its check passes again: back in Consul', id(orders)));
    await registrar.close();
  });

  test('a reaped TTL registration waits for a heartbeat, which brings it back passing (the heartbeat is the proof of life)', async () => {
    const { agent, registrar, said } = rig();
    await registrar.start(SIDECAR);
    await registrar.register(jobs);
    assert.equal(agent.status(id(jobs)), 'critical', 'TTL checks start critical');
    agent.services.delete(id(jobs));
    await registrar.sync();
    await registrar.sync();
    assert.equal(agent.services.has(id(jobs)), false, 'no probe can pass a TTL check: it stays out');
    await registrar.heartbeat(id(jobs), 'alive', { token: 'app-token' });
    assert.equal(agent.status(id(jobs)), 'passing');
    assert.equal(stateOf(registrar, id(jobs)), 'registered');
    assert.deepEqual(agent.calls.slice(-2).map((c) => [c.op, c.token]), [['register', 'app-token'], ['pass', 'app-token']]);
    assert.ok(said('a heartbeat brought back a registration Consul had removed', id(jobs)));
    await registrar.close();
  });

  test('a TTL registration the agent lost comes back passing when its app beat within the TTL', async () => {
    const { agent, registrar } = rig();
    await registrar.start(SIDECAR);
    await registrar.register(jobs);
    await registrar.heartbeat(id(jobs));
    agent.restart();
    await registrar.sync();
    assert.equal(agent.status(id(jobs)), 'passing', 'else the restore races the app’s next beat');
    await registrar.close();
  });
});

describe('pending: Consul unreachable', () => {
  test('a registration made while Consul is down is kept, persisted, and registered by the first sync that reaches Consul', async () => {
    const { agent, registrar, stored, said } = rig();
    await registrar.start(SIDECAR);
    agent.down = true;
    const r = await registrar.register(orders);
    assert.equal(r.pending, true);
    assert.equal(r.registration.state, 'pending');
    assert.ok(stored().has(id(orders)), 'persisted: a sidecar restart meanwhile keeps it');
    assert.equal(registrar.consulReachable, false);
    assert.deepEqual((await registrar.list()).map((x) => x.health), ['unknown', 'unknown']);
    await registrar.sync();
    await registrar.sync();
    assert.equal(stateOf(registrar, id(orders)), 'pending');
    agent.down = false;
    await registrar.sync();
    assert.equal(agent.status(id(orders)), 'passing');
    assert.equal(stateOf(registrar, id(orders)), 'registered');
    assert.equal(registrar.consulReachable, true);
    assert.ok(said('pending registration registered', id(orders)));
    assert.ok(said('Consul is reachable again'));
    await registrar.close();
  });

  test('start with Consul down: everything pending, registered once it answers', async () => {
    const { agent, registrar, logged } = rig({ configServices: [users], stored: [{ spec: orders }] });
    agent.down = true;
    await registrar.start(SIDECAR);
    assert.equal(registrar.consulReachable, false);
    assert.deepEqual(registrar.snapshot().map((e) => e.state), ['pending', 'pending', 'pending']);
    await registrar.sync();
    agent.down = false;
    await registrar.sync();
    assert.deepEqual([...agent.services.keys()].sort(), [id(orders), SIDECAR_ID, id(users)]);
    assert.equal(logged('Consul is unreachable: registrations are kept and retried'), 1, 'said once per outage, not once per attempt');
    await registrar.close();
  });

  test('a write with the caller’s own token is not deferred: it fails, and nothing is kept', async () => {
    const { agent, registrar, stored } = rig();
    await registrar.start(SIDECAR);
    agent.down = true;
    await assert.rejects(registrar.register(orders, { token: 'app' }, false), (err: Error & { code?: string }) => err.code === 'TANDEM_ERR_CONSUL_UNAVAILABLE' && /not kept for later/.test(err.message));
    assert.equal(registrar.has(id(orders)), false);
    assert.equal(stored().has(id(orders)), false);
    agent.down = false;
    await registrar.register(users, { token: 'app' }, false);
    agent.down = true;
    await assert.rejects(registrar.deregister(id(users), { token: 'app' }, false), /not kept for later/);
    assert.equal(stateOf(registrar, id(users)), 'registered', 'still there, as in Consul');
    agent.down = false;
    await registrar.close();
  });

  test('a deregistration while Consul is down forgets the service at once and removes it from Consul once it answers', async () => {
    const { agent, registrar, stored } = rig();
    await registrar.start(SIDECAR);
    await registrar.register(users);
    await registrar.register(orders);
    agent.down = true;
    assert.deepEqual(await registrar.deregister(id(users)), { pending: true });
    assert.deepEqual(await registrar.deregister(id(orders)), { pending: true });
    assert.equal(registrar.has(id(users)), false);
    assert.equal(stored().size, 0);
    // The app comes back before Consul does: its new registration must not be deregistered by the old orphan.
    assert.equal((await registrar.register(orders)).pending, true);
    agent.down = false;
    await registrar.sync();
    assert.equal(agent.services.has(id(users)), false, 'the orphan is deregistered');
    assert.ok(agent.services.has(id(orders)), 'the re-registered one stays');
    assert.equal(agent.callsOf('deregister', id(orders)).length, 0);
    await registrar.close();
  });

  test('a registration Consul does not have (pending, reaped) is deregistered at once: maintenance 404 means nothing to drain', async () => {
    const { agent, probe, registrar } = rig({ drainMs: 10_000 });
    await registrar.start(SIDECAR);
    agent.down = true;
    await registrar.register(users);
    agent.down = false;
    const t0 = Date.now();
    assert.deepEqual(await registrar.deregister(id(users)), { pending: false });
    assert.ok(Date.now() - t0 < 5000, 'no drain wait either (drainMs is 10 s here)');
    assert.equal(registrar.has(id(users)), false);
    assert.equal(agent.callsOf('deregister', id(users)).length, 0);
    // The same for one kept out of Consul after it was reaped (pending until its probe passes).
    await registrar.register(orders);
    probe.verdicts.set(orders.port, 'critical');
    agent.services.delete(id(orders));
    await registrar.sync();
    assert.equal(stateOf(registrar, id(orders)), 'pending');
    assert.deepEqual(await registrar.deregister(id(orders)), { pending: false });
    probe.verdicts.set(orders.port, 'passing');
    await registrar.sync();
    assert.equal(agent.services.has(id(orders)), false, 'and it does not come back');
    agent.restart(); // nothing left in Consul: close() has nothing to drain, so no 10 s wait
    await registrar.close();
  });

  test('deregistering a replacement still pending removes the registration it replaced from Consul', async () => {
    const r = rig();
    const { agent, registrar } = r;
    await pendingReplacement(r);
    assert.deepEqual(await registrar.deregister('users-1'), { pending: false });
    assert.equal(agent.services.has('users-1'), false, 'the 1.0.0 registration is not left behind');
    await registrar.close();
  });

  test('a deregistration that Consul refuses (403, not unreachable) keeps the registration in the state it had', async () => {
    const { agent, registrar } = rig();
    await registrar.start(SIDECAR);
    await registrar.register(users);
    agent.down = true;
    await registrar.register(orders);
    agent.down = false;
    agent.refuse.add(id(users));
    agent.refuse.add(id(orders));
    await assert.rejects(registrar.deregister(id(users), { token: 'weak' }), { code: 'TANDEM_ERR_CONSUL_PERMISSION_DENIED' });
    await assert.rejects(registrar.deregister(id(orders), { token: 'weak' }), { code: 'TANDEM_ERR_CONSUL_PERMISSION_DENIED' });
    assert.equal(stateOf(registrar, id(users)), 'registered');
    assert.equal(stateOf(registrar, id(orders)), 'pending', 'still to be registered by the next sync');
    agent.refuse.clear();
    await registrar.sync();
    assert.ok(agent.services.has(id(orders)));
    await registrar.close();
  });
});

describe('replaced: the same id registered again', () => {
  test('the newer spec replaces the older in Consul and in the state file, under one entry', async () => {
    const { agent, registrar, stored } = rig();
    await registrar.start(SIDECAR);
    const v1: ServiceSpec = { ...users, id: 'users-1' };
    await registrar.register(v1);
    await registrar.register({ ...v1, version: '1.1.0', tags: ['canary'] });
    assert.equal(registrar.snapshot().filter((e) => e.id === 'users-1').length, 1);
    assert.equal(agent.services.get('users-1')?.Meta['version'], '1.1.0');
    assert.deepEqual(agent.services.get('users-1')?.Tags, ['v1', 'v1-1-0', 'canary']);
    assert.equal(stored().get('users-1')?.spec.version, '1.1.0');
    await registrar.close();
  });

  test('a replacement kept pending while Consul is down overwrites the old definition once Consul answers', async () => {
    const r = rig();
    const { agent, registrar } = r;
    await pendingReplacement(r);
    await registrar.sync();
    assert.equal(agent.services.get('users-1')?.Meta['version'], '2.0.0', 'present in Consul, yet pending: registered again');
    assert.equal(stateOf(registrar, 'users-1'), 'registered');
    await registrar.close();
  });

  test('a replacement Consul refuses (403) leaves the old registration as it was', async () => {
    const { agent, registrar, stored } = rig();
    await registrar.start(SIDECAR);
    await registrar.register({ ...users, id: 'users-1' });
    agent.refuse.add('users-1');
    await assert.rejects(registrar.register({ ...users, id: 'users-1', version: '9.0.0' }, { token: 'weak' }), { code: 'TANDEM_ERR_CONSUL_PERMISSION_DENIED' });
    assert.equal(registrar.snapshot().find((e) => e.id === 'users-1')?.version, '1.0.0');
    assert.equal(stored().get('users-1')?.spec.version, '1.0.0');
    assert.equal(agent.services.get('users-1')?.Meta['version'], '1.0.0');
    await registrar.close();
  });

  test('a sync queued behind a replacement does not write the replaced spec back', async () => {
    const { agent, registrar } = rig();
    await registrar.start(SIDECAR);
    await registrar.register({ ...users, id: 'users-1' });
    agent.services.delete('users-1'); // lost: the next sync picks the entry it has now
    let letGo = () => undefined as void;
    const gate = new Promise<void>((r) => (letGo = r));
    agent.hold = (c) => (c.op === 'register' && c.id === 'users-1' ? gate : undefined);
    const replacing = registrar.register({ ...users, id: 'users-1', version: '3.0.0' });
    await eventually(() => agent.callsOf('register', 'users-1').length === 2, 'the replacement in flight', 2000);
    const syncing = registrar.sync();
    await sleep(20);
    agent.hold = undefined;
    letGo();
    await Promise.all([replacing, syncing]);
    assert.equal(agent.services.get('users-1')?.Meta['version'], '3.0.0');
    assert.equal(agent.callsOf('register', 'users-1').length, 2, 'the stale entry was skipped, not registered over the new one');
    await registrar.close();
  });
});

describe('the sidecar token and Consul refusals', () => {
  test('a 403 on the sidecar’s own registration is reported until Consul accepts the token', async () => {
    const { agent, registrar, said } = rig({ configServices: [users] });
    agent.refuse.add(SIDECAR_ID);
    agent.refuse.add(id(users));
    await registrar.start(SIDECAR);
    assert.match(registrar.permissionProblem ?? '', /refuses the sidecar ACL token \(403\)/);
    assert.equal(stateOf(registrar, SIDECAR_ID), 'pending');
    assert.ok(said('Consul refuses this registration; retrying', id(users)), 'an app service refused is retried, not a token problem');
    await registrar.sync();
    agent.refuse.clear();
    await registrar.sync();
    assert.equal(registrar.permissionProblem, undefined);
    assert.ok(agent.services.has(SIDECAR_ID) && agent.services.has(id(users)));
    assert.ok(said('Consul accepts the ACL token again'));
    await registrar.close();
  });

  test('the sidecar’s own registration cannot be replaced or removed through the registrar', async () => {
    const { registrar } = rig();
    await registrar.start(SIDECAR);
    await assert.rejects(registrar.register({ name: 'other', version: '1.0.0', port: 1, id: SIDECAR_ID }), { code: 'TANDEM_ERR_PROTECTED_SERVICE' });
    await assert.rejects(registrar.deregister(SIDECAR_ID), { code: 'TANDEM_ERR_PROTECTED_SERVICE' });
    await registrar.removeNow([SIDECAR_ID]);
    assert.ok(registrar.has(SIDECAR_ID));
    await registrar.close();
  });
});

describe('drain and shutdown', () => {
  test('a sync during a drain does not bring the draining service back', async () => {
    const { agent, registrar } = rig({ drainMs: 150 });
    await registrar.start(SIDECAR);
    await registrar.register(users);
    const draining = registrar.deregister(id(users));
    await eventually(() => agent.maintenance.has(id(users)), 'maintenance on', 2000);
    agent.restart(); // the agent loses everything mid-drain
    await registrar.sync();
    assert.equal(agent.services.has(id(users)), false);
    assert.ok(agent.services.has(SIDECAR_ID), 'the rest came back');
    assert.deepEqual(await draining, { pending: false });
    assert.equal(registrar.has(id(users)), false);
    await registrar.close();
  });

  test('close(): maintenance on every registration first, then deregistration of those Consul has; the state file kept', async () => {
    const { agent, store, registrar, stored } = rig({ configServices: [users] });
    await registrar.start(SIDECAR);
    await registrar.register(orders);
    agent.down = true;
    await registrar.register(jobs); // pending: never reached Consul
    agent.down = false;
    const from = agent.calls.length;
    await registrar.close();
    const ops = agent.calls.slice(from).filter((c) => c.op === 'maintenance' || c.op === 'deregister');
    assert.deepEqual(ops.map((c) => c.op), ['maintenance', 'maintenance', 'maintenance', 'maintenance', 'deregister', 'deregister', 'deregister']);
    assert.equal(agent.callsOf('deregister', id(jobs)).length, 0, 'a pending registration is not in Consul (maintenance 404) and blocks no other');
    assert.equal(agent.services.size, 0);
    assert.deepEqual([...stored().keys()].sort(), [id(jobs), id(orders)], 'a restarted sidecar restores them');
    assert.equal(store.closed, true);
    await assert.rejects(registrar.register(users), { code: 'TANDEM_ERR_SHUTTING_DOWN' });
  });

  test('a deregistration while a sync is registering the service again ends with it gone from Consul and from the sidecar', async () => {
    const { agent, registrar, stored } = rig();
    await registrar.start(SIDECAR);
    await registrar.register(users);
    agent.restart();
    let letGo = () => undefined as void;
    const gate = new Promise<void>((r) => (letGo = r));
    agent.hold = (c) => (c.op === 'register' && c.id === id(users) ? gate : undefined);
    const syncing = registrar.sync();
    await eventually(() => agent.callsOf('register', id(users)).length === 2, 'the re-registration in flight', 2000);
    const deregistering = registrar.deregister(id(users));
    agent.hold = undefined;
    letGo();
    await syncing;
    assert.deepEqual(await deregistering, { pending: false });
    assert.equal(agent.services.has(id(users)), false);
    assert.equal(registrar.has(id(users)), false);
    assert.equal(stored().has(id(users)), false);
    await registrar.sync();
    assert.equal(agent.services.has(id(users)), false, 'and no later sync brings it back');
    await registrar.close();
  });

  test('concurrent syncs share one pass', async () => {
    const { agent, registrar } = rig();
    await registrar.start(SIDECAR);
    const before = agent.callsOf('services').length;
    await Promise.all([registrar.sync(), registrar.sync(), registrar.sync()]);
    assert.equal(agent.callsOf('services').length, before + 1);
    await registrar.close();
  });
});
