// The SDK's public surface: typed without `any`, dependency-free, and shipped (built code and .d.ts) by npm pack.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { test } from 'node:test';
import type { InstanceInfo, ResolvedInstance, ServiceHandle, Tandem, TandemError, WatchEvent } from '../../src/sdk/index.ts';

// Compile-time checks (run by `npm run typecheck`): none of these public types is `any`.
type IsAny<T> = 0 extends 1 & T ? true : false;
type Expect<T extends false> = T;
export type PublicTypesAreNotAny = [
  Expect<IsAny<Awaited<ReturnType<Tandem['resolve']>>>>,
  Expect<IsAny<Awaited<ReturnType<Tandem['instances']>>[number]>>,
  Expect<IsAny<Awaited<ReturnType<Tandem['register']>>>>,
  Expect<IsAny<Awaited<ReturnType<Tandem['request']>>>>,
  Expect<IsAny<Parameters<Tandem['watch']>[1]>>,
  Expect<IsAny<ServiceHandle['registration']>>,
  Expect<IsAny<WatchEvent['instance']>>,
  Expect<IsAny<TandemError['code']>>,
  Expect<IsAny<ResolvedInstance['port']>>,
  Expect<IsAny<InstanceInfo['ejected']>>,
];

const root = new URL('../../', import.meta.url);

test('the built SDK declarations contain no `any`', () => {
  const dir = new URL('dist/sdk/', root);
  const files = readdirSync(dir).filter((f) => f.endsWith('.d.ts'));
  assert.ok(files.includes('index.d.ts') && files.includes('tandem.d.ts'), `run npm run build first (found ${files.join(', ')})`);
  for (const f of files) {
    const code = readFileSync(new URL(f, dir), 'utf8').replace(/\/\*[\s\S]*?\*\//g, '').replace(/\/\/.*$/gm, '');
    assert.doesNotMatch(code, /\bany\b/, `${f} exposes any`);
  }
});

test('the SDK imports only Node built-ins, its own files and the shared protocol', () => {
  for (const room of ['src/sdk/', 'src/protocol/']) {
    const dir = new URL(room, root);
    for (const f of readdirSync(dir).filter((x) => x.endsWith('.ts'))) {
      const src = readFileSync(new URL(f, dir), 'utf8');
      for (const m of src.matchAll(/^(?:import|export)[^'\n]*from '([^']+)'/gm)) {
        const spec = m[1] as string;
        const ok = spec.startsWith('node:') || (spec.startsWith('./') && !spec.includes('..')) || (room === 'src/sdk/' && /^\.\.\/protocol\/[\w-]+\.ts$/.test(spec));
        assert.ok(ok, `${room}${f} imports ${spec}`);
      }
    }
  }
});

test('npm pack ships the built SDK with its types and the exports map points at them', () => {
  const out = execFileSync('npm', ['pack', '--dry-run', '--json', '--ignore-scripts'], { cwd: root, encoding: 'utf8' });
  const files = new Set((JSON.parse(out) as { files: { path: string }[] }[])[0]?.files.map((f) => f.path));
  for (const f of ['dist/sdk/index.js', 'dist/sdk/index.d.ts', 'dist/sdk/tandem.js', 'dist/sdk/tandem.d.ts', 'dist/index.js', 'bin/tandem.js']) assert.ok(files.has(f), `${f} missing from the package`);
  const pkg = JSON.parse(readFileSync(new URL('package.json', root), 'utf8')) as { exports: Record<string, { types: string; default: string }> };
  assert.deepEqual(Object.keys(pkg.exports['./sdk'] ?? {}), ['types', 'default'], 'types first');
  assert.ok(files.has((pkg.exports['./sdk']?.types ?? '').replace(/^\.\//, '')));
});
