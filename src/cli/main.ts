#!/usr/bin/env node
/**
 * Entry point of the `secgroup` command (node: dist/secgroup.cjs, dist/cli/main.js); the single executable's is
 * sea.ts. No top-level await: the bundle is CommonJS (scripts/bundle.mjs says why).
 */
import { run } from './run.js';

void run(process.argv.slice(2)).then((code) => {
  process.exitCode = code;
});
