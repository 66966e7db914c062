// The proxy's control-plane guard: names, marks, sidecar ids and addresses it refuses, and the ordinary ones it lets through.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { ControlPlaneGuard } from '../../src/proxy/control-plane.ts';
import type { Endpoint, EndpointSource, Update } from '../../src/proxy/endpoint-source.ts';
import { Subset } from '../../src/proxy/endpoint-set.ts';

function ep(id: string, address: string, port: number, extra: Partial<Endpoint> = {}): Endpoint {
  return { id, service: 'svc', address, port, version: '1.0.0', semver: null, node: 'n', healthy: true, ...extra };
}

test('refuses the sidecar and Consul by name, ordinary names pass', () => {
  const g = new ControlPlaneGuard();
  assert.ok(g.refusesService('tandem'));
  assert.ok(g.refusesService('consul'));
  assert.ok(!g.refusesService('users'));
  assert.throws(() => g.checkTarget('tandem', undefined), { code: 'TANDEM_ERR_CONTROL_PLANE', statusCode: 403 });
  assert.doesNotThrow(() => g.checkTarget('users', 'users-1'));
});

test("listeners on this host are refused on every local address; remote ones on their exact address", () => {
  const g = new ControlPlaneGuard({ consulAddresses: ['http://127.0.0.1:8500', 'http://10.9.8.7:8500'] });
  g.protect('127.0.0.1', 7701);
  g.protect('0.0.0.0', 7700);
  for (const [host, port] of [['127.0.0.1', 8500], ['127.0.0.2', 8500], ['localhost', 7701], ['[::1]', 7701], ['::ffff:127.0.0.1', 7700], ['0.0.0.0', 7700], ['10.9.8.7', 8500]] as const) {
    assert.ok(g.refusesAddress(host, port), `${host}:${port}`);
  }
  for (const [host, port] of [['127.0.0.1', 3000], ['10.9.8.6', 8500], ['10.9.8.7', 7701], ['192.0.2.1', 7700]] as const) {
    assert.ok(!g.refusesAddress(host, port), `${host}:${port} is an ordinary instance`);
  }
});

test('marks, sidecar ids and learnt addresses are refused; subsets cache until something changes', () => {
  const g = new ControlPlaneGuard();
  g.protectInstance('tandem-a-7701');
  const plain = ep('plain', '192.0.2.5', 3000);
  const marked = ep('marked', '192.0.2.5', 3001, { controlPlane: true });
  const pinned = ep('tandem-a-7701', '192.0.2.5', 3002);
  const subset = new Subset([plain, marked, pinned]);
  assert.deepEqual([...g.refusedIn(subset)].sort(), ['marked', 'tandem-a-7701']);
  assert.equal(g.refusedIn(subset), g.refusedIn(subset), 'cached');
  g.learn(plain);
  assert.deepEqual([...g.refusedIn(subset)].sort(), ['marked', 'plain', 'tandem-a-7701'], 're-computed after learning');
  assert.ok(g.refusesPeer('192.0.2.5', 3000));
  assert.ok(!g.refusesPeer(undefined, 3000));
});

test('follows the catalog: every sidecar instance (id and address) is refused, and forgotten when it leaves', () => {
  let push: ((u: Update) => void) | undefined;
  let asked: string | undefined;
  const source: EndpointSource = {
    subscribe(service, onUpdate) {
      asked = service;
      push = onUpdate;
      return { close: () => undefined };
    },
  };
  const g = new ControlPlaneGuard();
  g.follow(source);
  assert.equal(asked, 'tandem');
  push?.({ kind: 'reset', endpoints: [ep('tandem-b-7701', '198.51.100.2', 7701, { service: 'tandem' })] });
  assert.ok(g.refusesAddress('198.51.100.2', 7701));
  assert.ok(g.refusesInstance('tandem-b-7701'));
  assert.ok(!g.refusesAddress('198.51.100.3', 7701));
  push?.({ kind: 'remove', ids: ['tandem-b-7701'] });
  assert.ok(!g.refusesAddress('198.51.100.2', 7701));
  assert.ok(!g.refusesInstance('tandem-b-7701'));
});
