// Builds the web console (Preact) into dist/console, served by the controller at /console
// (src/controller/api/console-route.ts). `npm run build` runs it after tsc; it prints the
// gzipped size of the JS (budget: ~150 KB).
import { gzipSync } from 'node:zlib';
import { defineConfig, type Plugin } from 'vite';

const reportSize: Plugin = {
  name: 'secgroup-console-size',
  generateBundle(_options, bundle) {
    let raw = 0;
    let gz = 0;
    for (const chunk of Object.values(bundle)) {
      if (chunk.type !== 'chunk') continue;
      raw += chunk.code.length;
      gz += gzipSync(chunk.code).length;
    }
    this.info(`console JS: ${(raw / 1024).toFixed(1)} KB, ${(gz / 1024).toFixed(1)} KB gzipped (budget 150 KB gzipped)`);
    if (gz > 150 * 1024) this.error(`console JS is ${(gz / 1024).toFixed(1)} KB gzipped, over the 150 KB budget`);
  },
};

export default defineConfig({
  root: import.meta.dirname,
  base: '/console/',
  logLevel: 'info',
  oxc: { jsx: { runtime: 'automatic', importSource: 'preact' } },
  build: {
    outDir: '../dist/console',
    emptyOutDir: true,
    // no inline script or style may be needed (the CSP forbids them): modules and CSS as files
    assetsInlineLimit: 0,
    modulePreload: { polyfill: false },
    sourcemap: false,
    target: 'es2022',
  },
  plugins: [reportSize],
});
