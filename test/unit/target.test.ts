// Request addressing: path and absolute forms, encoded ranges, and refusal of foreign hosts, bad names and traversal.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { TandemError } from '../../src/proxy/errors.ts';
import { parseTarget } from '../../src/proxy/target.ts';

function refused(url: string, code: string, header?: string): void {
  assert.throws(
    () => parseTarget(url, header),
    (err: unknown) => {
      assert.ok(err instanceof TandemError, `${url}: not a TandemError: ${String(err)}`);
      assert.equal(err.code, code, `${url}: ${err.message}`);
      return true;
    },
    `${url} should be refused with ${code}`,
  );
}

test('path form without a range', () => {
  assert.deepEqual(parseTarget('/users/v1/list', undefined), { service: 'users', range: '', path: '/v1/list' });
  assert.deepEqual(parseTarget('/users/', undefined), { service: 'users', range: '', path: '/' });
  assert.deepEqual(parseTarget('/a-b-9/x', undefined), { service: 'a-b-9', range: '', path: '/x' });
});

test('path form with a range', () => {
  assert.deepEqual(parseTarget('/users@^1/v1/list', undefined), { service: 'users', range: '^1', path: '/v1/list' });
  assert.deepEqual(parseTarget('/users@1.2.3/x', undefined), { service: 'users', range: '1.2.3', path: '/x' });
  assert.deepEqual(parseTarget('/users@~2', undefined), { service: 'users', range: '~2', path: '/' });
});

test('URL-encoded ranges are decoded', () => {
  assert.deepEqual(parseTarget('/users@%5E1/x', undefined), { service: 'users', range: '^1', path: '/x' });
  assert.deepEqual(parseTarget('/users@%7E2/x', undefined), { service: 'users', range: '~2', path: '/x' });
  assert.deepEqual(parseTarget('/users@%3E%3D1%20%3C3/x', undefined), { service: 'users', range: '>=1 <3', path: '/x' });
  assert.deepEqual(parseTarget('/users@1.x%20%7C%7C%202.x/x', undefined), { service: 'users', range: '1.x || 2.x', path: '/x' });
  assert.deepEqual(parseTarget('/users%40%5e1/x', undefined), { service: 'users', range: '^1', path: '/x' });
  assert.deepEqual(parseTarget('/users@%20%5E1%20/x', undefined), { service: 'users', range: '^1', path: '/x' }, 'the range is trimmed');
});

test('the query string is kept unchanged', () => {
  assert.deepEqual(parseTarget('/users@^1/x?a=1&b=%2F&c=..', undefined), { service: 'users', range: '^1', path: '/x?a=1&b=%2F&c=..' });
  assert.deepEqual(parseTarget('/users/x?next=/a/../b', undefined), { service: 'users', range: '', path: '/x?next=/a/../b' });
  assert.deepEqual(parseTarget('/users/x?', undefined), { service: 'users', range: '', path: '/x?' });
});

test('a bare service gives the root path', () => {
  assert.deepEqual(parseTarget('/svc', undefined), { service: 'svc', range: '', path: '/' });
  assert.deepEqual(parseTarget('/svc?x=1', undefined), { service: 'svc', range: '', path: '/?x=1' });
  assert.deepEqual(parseTarget('/svc@^2?x=1', undefined), { service: 'svc', range: '^2', path: '/?x=1' });
  assert.deepEqual(parseTarget('/svc?x=/y', undefined), { service: 'svc', range: '', path: '/?x=/y' });
});

test('absolute form takes the range from the header', () => {
  assert.deepEqual(parseTarget('http://users.service.consul/x?y', undefined), { service: 'users', range: '', path: '/x?y' });
  assert.deepEqual(parseTarget('http://users.service.consul/x?y', '^1'), { service: 'users', range: '^1', path: '/x?y' });
  assert.deepEqual(parseTarget('http://users.service/x', ' ~2.1 '), { service: 'users', range: '~2.1', path: '/x' });
  assert.deepEqual(parseTarget('http://users.service.consul./a/b', undefined), { service: 'users', range: '', path: '/a/b' });
  assert.deepEqual(parseTarget('http://users.service.consul', undefined), { service: 'users', range: '', path: '/' });
  assert.deepEqual(parseTarget('http://users.service.consul:8080/x', undefined), { service: 'users', range: '', path: '/x' });
});

test('absolute form without a path keeps the query', () => {
  assert.deepEqual(parseTarget('http://users.service.consul?next=/admin', undefined), { service: 'users', range: '', path: '/?next=/admin' });
});

test('absolute form without a path does not refuse a query containing ..', () => {
  assert.deepEqual(parseTarget('http://users.service.consul?x=/../a', undefined), { service: 'users', range: '', path: '/?x=/../a' });
});

test('absolute form: a backslash right after the host is refused', () => {
  refused('http://users.service.consul\\..\\admin', 'TANDEM_ERR_BAD_PATH');
});

test('foreign hosts are refused', () => {
  for (const url of [
    'http://example.invalid/',
    'http://127.0.0.1:8500/v1/agent/self',
    'https://users.service.consul/',
    'http://users.node.consul/',
    'http://users.service.consul.evil.example/',
    'http://evil.example/users.service.consul/',
    'http://user:pw@users.service.consul/',
    'http://users@users.service.consul/',
  ]) {
    refused(url, 'TANDEM_ERR_FOREIGN_HOST');
  }
});

test('bad service names are refused', () => {
  for (const url of ['/Users/x', '/USERS', '//x', '/@^1/x', '/', '/my_svc/x', '/-users/x', '/users-/x', `/${'a'.repeat(64)}/x`, '/users@/x', '/users@%20/x']) {
    refused(url, 'TANDEM_ERR_BAD_TARGET');
  }
  assert.equal(parseTarget(`/${'a'.repeat(63)}/x`, undefined).service, 'a'.repeat(63));
});

test('.. segments are refused, raw or encoded', () => {
  for (const url of [
    '/users/../admin',
    '/users/a/..',
    '/users/..?x=1',
    '/users@^1/..',
    '/users/%2e%2e/admin',
    '/users/%2E%2E/admin',
    '/users/.%2e/admin',
    '/users/%2e./admin',
    'http://users.service.consul/a/../b',
    'http://users.service.consul/%2e%2e/b',
  ]) {
    refused(url, 'TANDEM_ERR_BAD_PATH');
  }
  assert.equal(parseTarget('/users/..foo/a..b/...', undefined).path, '/..foo/a..b/...', 'dots inside a segment are fine');
});

test('encoded slashes and backslashes are refused', () => {
  for (const url of ['/users/a%2Fb', '/users/a%2fb', '/users/a%5Cb', '/users/a%5cb', '/users/a\\b', '/users/..%2Fadmin', 'http://users.service.consul/a%2Fb', 'http://users.service.consul/a\\b']) {
    refused(url, 'TANDEM_ERR_BAD_PATH');
  }
});

test('non-path targets are refused', () => {
  for (const url of ['*', '', 'users/x', 'users.service.consul:80', 'ftp://users.service.consul/', 'http://', 'http://[::1/']) {
    refused(url, 'TANDEM_ERR_BAD_TARGET');
  }
});

test('bad percent-encoding in the service segment is refused', () => {
  for (const url of ['/users@%E0%A4%A/x', '/users@%zz/x', '/users%/x', '/%C0%AF/x']) {
    refused(url, 'TANDEM_ERR_BAD_TARGET');
  }
});

test('errors carry their HTTP status', () => {
  for (const [url, status] of [
    ['*', 400],
    ['/users/../x', 400],
    ['http://example.invalid/', 403],
  ] as const) {
    assert.throws(() => parseTarget(url, undefined), (err: unknown) => err instanceof TandemError && err.statusCode === status);
  }
});

test('a fragment is dropped and cannot hide a .. segment', () => {
  assert.equal(parseTarget('/users/a/b#frag', undefined).path, '/a/b');
  refused('/users/..#x', 'TANDEM_ERR_BAD_PATH');
  refused('/users/x/..#', 'TANDEM_ERR_BAD_PATH');
});
