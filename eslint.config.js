// Lint rules for the whole project: typescript-eslint's recommended set plus a few house rules.
import js from '@eslint/js';
import tseslint from 'typescript-eslint';

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
      'no-restricted-properties': ['error', { object: 'process', property: 'env', message: 'Only src/agent/config.ts reads process.env.' }],
    },
  },
  {
    // The SDK reads TANDEM_API / TANDEM_API_TOKEN (it runs inside apps, not in the sidecar).
    files: ['src/agent/config.ts', 'test/**', 'bench/**', 'examples/**', 'src/sdk/**'],
    rules: { 'no-restricted-properties': 'off' },
  },
);
