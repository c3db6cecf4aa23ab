import js from '@eslint/js';
import tseslint from 'typescript-eslint';

export default tseslint.config(
  { ignores: ['dist/**', 'node_modules/**', 'bench/results/**', 'coverage/**'] },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  {
    languageOptions: {
      globals: { process: 'readonly', console: 'readonly', Buffer: 'readonly', setTimeout: 'readonly', clearTimeout: 'readonly', URL: 'readonly' },
    },
    rules: {
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_' }],
      'no-restricted-syntax': [
        'error',
        {
          selector: "CallExpression[callee.object.name='Date'][callee.property.name='now']",
          message: 'Time is injected: use the Clock from src/lib/clock.ts.',
        },
      ],
    },
  },
  {
    // the web console runs in the browser (its clock is the browser's, for display only)
    files: ['console/src/**'],
    languageOptions: {
      globals: {
        window: 'readonly', document: 'readonly', location: 'readonly', history: 'readonly', sessionStorage: 'readonly', fetch: 'readonly',
        performance: 'readonly', addEventListener: 'readonly', removeEventListener: 'readonly', dispatchEvent: 'readonly', PopStateEvent: 'readonly',
        AbortController: 'readonly', AbortSignal: 'readonly', TextDecoderStream: 'readonly', URLSearchParams: 'readonly', HTMLInputElement: 'readonly',
        HTMLSelectElement: 'readonly', Event: 'readonly',
      },
    },
    rules: { 'no-restricted-syntax': 'off' },
  },
  {
    files: ['src/lib/clock.ts', 'test/**', 'bench/**'],
    rules: { 'no-restricted-syntax': 'off' },
  },
);
