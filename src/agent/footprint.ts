/**
 * Memory settings for the long-running agent process (issue 6: idle RSS).
 *
 * The agent idles most of its life and works in short bursts (compile,
 * render, nft, read-back of a policy). With V8's defaults the heap grown by
 * one burst stays committed while idle (a 1k-rule apply left ~70 MB of heap
 * for ~25 MB of live objects). `--optimize-for-size` makes V8 size the heap
 * for memory rather than throughput: it grows less per burst and the memory
 * reducer gives the pages back a few seconds after the burst. Measured with
 * `npm run bench -- footprint` (bench/README.md). Only `secgroup agent` calls
 * this (not --dry-run, not the policy commands, not the controller).
 *
 * It is set at run time (v8.setFlagsFromString) because NODE_OPTIONS does not
 * accept it and the program may be started without a wrapper; the flag only
 * steers heap sizing and compilation heuristics, nothing the program's
 * results depend on.
 */
import { setFlagsFromString } from 'node:v8';

export const AGENT_V8_FLAGS = ['--optimize-for-size'] as const;

let applied = false;

/** Applies AGENT_V8_FLAGS to this process (once). */
export function tuneForFootprint(): void {
  if (applied) return;
  applied = true;
  for (const f of AGENT_V8_FLAGS) setFlagsFromString(f);
}
