#!/usr/bin/env node
/**
 * Entry point of the `secgroup` command (node: dist/secgroup.cjs, dist/cli/main.js); the single executable's is
 * sea.ts. No top-level await: the bundle is CommonJS (scripts/bundle.mjs says why).
 *
 * With NODE_COMPILE_CACHE set (the agent's unit sets it: systemd/README.md, "Memory"), Node keeps V8's code cache
 * of the program there, and a start that finds it neither parses the 2.7 MB file nor compiles its modules' top
 * level: ~7 MB less RSS for as long as the agent runs (bench/README.md, "Issue 18 round 5"). Node writes the cache
 * when the process exits, which for the agent may be months away: it is written here, once every module is loaded
 * (a no-op when the cache was used, is not enabled, or cannot be written).
 */
import { flushCompileCache } from 'node:module';
import { run } from './run.js';

flushCompileCache();
void run(process.argv.slice(2)).then((code) => {
  process.exitCode = code;
});
