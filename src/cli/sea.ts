/**
 * Entry point of the single executable (scripts/build-sea.mjs): Node's SEA
 * runs one CommonJS script, which cannot use top-level await.
 */
import { run } from './run.js';

void run(process.argv.slice(2)).then((code) => {
  process.exitCode = code;
});
