// Lint rules for the whole project: typescript-eslint's recommended set, house rules, and the direction of imports between rooms.
import js from '@eslint/js';
import tseslint from 'typescript-eslint';

/** A room may import only from the rooms listed for it (plus node: built-ins and packages). */
const rooms = {
  protocol: [],
  sdk: ['protocol'],
  common: ['protocol'],
  config: ['common', 'protocol'],
  consul: ['common', 'protocol'],
  proxy: ['common', 'protocol'],
  discovery: ['consul', 'proxy', 'common', 'protocol'],
  registration: ['consul', 'common', 'protocol'],
  cluster: ['consul', 'registration', 'common', 'protocol'],
  api: ['proxy', 'discovery', 'registration', 'cluster', 'config', 'common', 'protocol'],
  cli: ['config', 'consul', 'sdk', 'common', 'protocol', 'sidecar'],
};
const all = [...Object.keys(rooms), 'sidecar'];
/** Rooms a room may import types from, but no values: routes never call Consul themselves (they go through src/cluster etc.). */
const typesOnly = { api: ['consul'] };

function direction(room, allowed) {
  const banned = all.filter((r) => r !== room && !allowed.includes(r));
  const patterns = [{ group: ['**/test/**', '**/bench/**'], message: 'src may not import test or bench code.' }, ...banned.map((r) => ({
    group: r === 'sidecar' ? ['**/sidecar.ts'] : [`**/${r}/**`, `../${r}/*`],
    message: `src/${room} may not import ${typesOnly[room]?.includes(r) ? 'anything but types ' : ''}from ${r === 'sidecar' ? 'the composition root' : `src/${r}`} (see "The house" in the README).`,
    ...(typesOnly[room]?.includes(r) ? { allowTypeImports: true } : {}),
  }))];
  // typescript-eslint's version of the rule: the same options, plus allowTypeImports.
  return { files: [`src/${room}/**/*.ts`], rules: { 'no-restricted-imports': 'off', '@typescript-eslint/no-restricted-imports': ['error', { patterns }] } };
}

export default tseslint.config(
  { ignores: ['dist/**', 'node_modules/**', '.cache/**', 'coverage/**'] },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  {
    languageOptions: {
      globals: { process: 'readonly', console: 'readonly', setTimeout: 'readonly', clearTimeout: 'readonly', setInterval: 'readonly', clearInterval: 'readonly', URL: 'readonly', AbortController: 'readonly', AbortSignal: 'readonly', fetch: 'readonly', Response: 'readonly', Headers: 'readonly', Request: 'readonly', TextDecoder: 'readonly', TextEncoder: 'readonly', Buffer: 'readonly', structuredClone: 'readonly', queueMicrotask: 'readonly', setImmediate: 'readonly' },
    },
    rules: {
      '@typescript-eslint/no-explicit-any': 'error',
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_' }],
      'no-restricted-properties': ['error', { object: 'process', property: 'env', message: 'Only src/config/config.ts reads process.env.' }],
    },
  },
  {
    // The SDK reads TANDEM_API / TANDEM_API_TOKEN / CONSUL_HTTP_TOKEN (it runs inside apps, not in the sidecar).
    files: ['src/config/config.ts', 'test/**', 'bench/**', 'examples/**', 'src/sdk/**'],
    rules: { 'no-restricted-properties': 'off' },
  },
  ...Object.entries(rooms).map(([room, allowed]) => direction(room, allowed)),
  {
    // Product code never imports test-only tooling.
    files: ['src/**/*.ts'],
    ignores: Object.keys(rooms).map((r) => `src/${r}/**`),
    rules: { 'no-restricted-imports': ['error', { patterns: [{ group: ['**/test/**', '**/bench/**'], message: 'src may not import test or bench code.' }] }] },
  },
);
