// The semver range cache: one parsed Range per string, BadRangeError for anything unparsable, bounded size.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import semver from 'semver';
import { TandemError } from '../../src/proxy/errors.ts';
import { RangeCache } from '../../src/proxy/balancing/range-cache.ts';

test('the same Range object comes back for the same string', () => {
  const cache = new RangeCache();
  const r = cache.get('^1.2');
  assert.ok(r instanceof semver.Range);
  assert.equal(cache.get('^1.2'), r);
  assert.notEqual(cache.get('~1.2'), r);
  assert.ok(r.test('1.9.0'));
  assert.ok(!r.test('2.0.0'));
  assert.ok(cache.get('1.x || 2.x').test('2.3.4'));
  assert.ok(cache.get('>=1 <3').test('2.0.0'));
});

test('invalid ranges throw TANDEM_ERR_BAD_RANGE', () => {
  const cache = new RangeCache();
  for (const raw of ['banana', '1.2.3.4', '>>1', '^1 ||| 2', `^${'1'.repeat(300)}`]) {
    assert.throws(
      () => cache.get(raw),
      (err: unknown) => {
        assert.ok(err instanceof TandemError, `${raw}: ${String(err)}`);
        assert.equal(err.code, 'TANDEM_ERR_BAD_RANGE');
        assert.equal(err.statusCode, 400);
        return true;
      },
      raw,
    );
  }
  assert.throws(() => cache.get('banana'), /'banana' is not a valid semver range/, 'a bad range is not cached as good');
});

test('overlong ranges are refused even when semver would accept them', () => {
  const long = Array.from({ length: 60 }, (_, i) => `${i}.x`).join(' || ');
  assert.ok(long.length > 256 && semver.validRange(long) !== null);
  assert.throws(() => new RangeCache().get(long), (err: unknown) => err instanceof TandemError && err.code === 'TANDEM_ERR_BAD_RANGE' && !err.message.includes(long));
});

test('the cache is bounded', () => {
  const cache = new RangeCache(3);
  const a = cache.get('^1');
  const b = cache.get('^2');
  const c = cache.get('^3');
  assert.equal(cache.get('^1'), a);
  assert.equal(cache.get('^2'), b);
  assert.equal(cache.get('^3'), c);
  const d = cache.get('^4');
  assert.equal(cache.get('^4'), d, 'the newest entry is kept');
  const a2 = cache.get('^1');
  assert.notEqual(a2, a, 'older entries were dropped');
  assert.ok(a2.test('1.0.0'));
  for (let i = 0; i < 10_000; i++) cache.get(`>=${i}`);
  assert.equal(cache.get('>=9999'), cache.get('>=9999'));
});
