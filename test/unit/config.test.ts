// The config loader: layer order, env names, flag parsing, every violation at once, frozen result.
import assert from 'node:assert/strict';
import { writeFileSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { loadConfig, parseListen } from '../../src/config/config.ts';
import { InvalidConfigError } from '../../src/common/errors.ts';

const dir = mkdtempSync(join(tmpdir(), 'tandem-config-'));

test('defaults listen on loopback only', () => {
  const c = loadConfig({ argv: [], env: {} });
  assert.equal(c.proxy.listen, '127.0.0.1:7700');
  assert.equal(c.api.listen, '127.0.0.1:7701');
  assert.equal(c.consul.address, 'http://127.0.0.1:8500');
  assert.ok(Object.isFrozen(c) && Object.isFrozen(c.consul) && Object.isFrozen(c.services));
});

test('defaults < file < environment < flags', () => {
  const file = join(dir, 'layers.yaml');
  writeFileSync(file, 'proxy:\n  listen: 127.0.0.1:1000\napi:\n  listen: 127.0.0.1:2000\nstateDir: /tmp/from-file\nconsul:\n  address: http://127.0.0.1:3000\n');
  const c = loadConfig({
    argv: ['--config', file, '--api', '127.0.0.1:2002', '--set', 'registration.drainMs=5'],
    env: { TANDEM_API: '127.0.0.1:2001', TANDEM_PROXY: '127.0.0.1:1001', CONSUL_HTTP_ADDR: '127.0.0.1:3001', CONSUL_HTTP_TOKEN: 's3cret' },
  });
  assert.equal(c.proxy.listen, '127.0.0.1:1001');
  assert.equal(c.api.listen, '127.0.0.1:2002');
  assert.equal(c.stateDir, '/tmp/from-file');
  assert.equal(c.consul.address, 'http://127.0.0.1:3001');
  assert.equal(c.consul.token, 's3cret');
  assert.equal(c.registration.drainMs, 5);
});

test('the token can come from CONSUL_HTTP_TOKEN_FILE', () => {
  const file = join(dir, 'token');
  writeFileSync(file, 'file-token\n');
  assert.equal(loadConfig({ argv: [], env: { CONSUL_HTTP_TOKEN_FILE: file } }).consul.token, 'file-token');
});

test('every violation is reported at once with its path', () => {
  const file = join(dir, 'bad.json');
  writeFileSync(file, JSON.stringify({ proxy: { listen: 'x' }, nope: true, services: [{ name: 'A', version: '1.0', port: 99999, check: { kind: 'grpc' } }] }));
  try {
    loadConfig({ argv: ['--config', file, '--frob', '1'], env: { TANDEM_LOG_LEVEL: 'loud' } });
    assert.fail('should throw');
  } catch (err) {
    assert.ok(err instanceof InvalidConfigError);
    const text = err.problems.join('\n');
    for (const want of ['flag --frob', 'config/nope: unknown key', 'config/proxy/listen', 'config/services/0/name', 'config/services/0/version', 'config/services/0/port', 'config/services/0/check/kind', 'config/log/level']) {
      assert.ok(text.includes(want), `${want} missing from:\n${text}`);
    }
  }
});

test('a config file that does not parse is one clear problem', () => {
  const file = join(dir, 'broken.json');
  writeFileSync(file, '{ "proxy": ');
  assert.throws(() => loadConfig({ argv: ['--config', file], env: {} }), (err: unknown) => err instanceof InvalidConfigError && /broken\.json/.test(err.message));
});

test('duplicate service ids are refused', () => {
  const services = JSON.stringify([{ name: 'a', version: '1.0.0', port: 1 }, { name: 'a', version: '2.0.0', port: 1 }]);
  assert.throws(() => loadConfig({ argv: ['--node-name', 'n', '--set', `services=${services}`], env: {} }), /duplicate service id 'a-n-1'/);
});

test('parseListen handles IPv4 and IPv6', () => {
  assert.deepEqual(parseListen('127.0.0.1:7700'), { host: '127.0.0.1', port: 7700 });
  assert.deepEqual(parseListen('[::1]:80'), { host: '::1', port: 80 });
});

test('config/defaults.json documents the real defaults', async () => {
  const { readFile } = await import('node:fs/promises');
  const documented = JSON.parse(await readFile(new URL('../../config/defaults.json', import.meta.url), 'utf8')) as Record<string, unknown>;
  const actual = JSON.parse(JSON.stringify(loadConfig({ argv: [], env: {}, cwd: '/' }))) as Record<string, unknown>;
  assert.deepEqual({ ...documented, node: null, stateDir: null }, { ...actual, node: null, stateDir: null });
});

test('config/tandem.example.yaml is valid', () => {
  const c = loadConfig({ argv: ['--config', new URL('../../config/tandem.example.yaml', import.meta.url).pathname], env: {} });
  assert.ok(c.services.length > 0);
});
