// Building Consul service definitions: ids, version meta and DNS-safe tags, readable checks.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { toConsulDefinition, versionTags } from '../../src/registration/service-definition.ts';

const ctx = { nodeName: 'host1', defaultAddress: '10.0.0.5', sidecarId: 'tandem-host1-7701', checkIntervalMs: 10_000, checkTimeoutMs: 5000, ttlMs: 30_000 };

test('version tags are DNS-safe', () => {
  assert.deepEqual(versionTags('1.2.3'), ['v1', 'v1-2-3']);
  assert.deepEqual(versionTags('2.0.0-rc.1'), ['v2', 'v2-0-0']);
});

test('default id, meta, tags and TCP check', () => {
  const d = toConsulDefinition({ name: 'users', version: '1.2.3', port: 3000, tags: ['blue', 'v1'] }, ctx);
  assert.equal(d.ID, 'users-host1-3000');
  assert.equal(d.Address, '10.0.0.5');
  assert.deepEqual(d.Tags, ['v1', 'v1-2-3', 'blue']);
  assert.deepEqual(d.Meta, { version: '1.2.3', tandem_node: 'host1', tandem_sidecar: 'tandem-host1-7701' });
  assert.equal(d.Check.TCP, '10.0.0.5:3000');
  assert.equal(d.Check.Interval, '10s');
  assert.match(d.Check.Name, /^users 1\.2\.3: TCP connect to port 3000 every 10s$/);
});

test('HTTP and TTL checks', () => {
  const h = toConsulDefinition({ name: 'a', version: '1.0.0', port: 80, address: '::1', check: { kind: 'http', path: '/hz', intervalMs: 1500 } }, ctx);
  assert.equal(h.Check.HTTP, 'http://[::1]:80/hz');
  assert.equal(h.Check.Interval, '1500ms');
  const t = toConsulDefinition({ name: 'a', version: '1.0.0', port: 80, id: 'custom', check: { kind: 'ttl', ttlMs: 15_000 } }, ctx);
  assert.equal(t.ID, 'custom');
  assert.equal(t.Check.TTL, '15s');
  assert.match(t.Check.Notes ?? '', /PUT \/v1\/services\/custom\/heartbeat/);
});
