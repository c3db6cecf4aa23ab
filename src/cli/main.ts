#!/usr/bin/env node
/** Entry point of the `secgroup` command (node, dist/secgroup.mjs); the single executable's is sea.ts. */
import { run } from './run.js';

process.exitCode = await run(process.argv.slice(2));
