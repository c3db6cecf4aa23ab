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
 *
 * Its price is CPU during a burst: V8 then grows the old generation by a
 * few percent per mark-compact and makes every one a memory-reducing
 * (compacting) one, so compiling a big policy runs a dozen full GCs over a
 * 30-50 MB live heap: the compile of 10k rules or 100k members cost 2-3x
 * the CPU it costs without the flag (bench/README.md "Issue 18 round 4").
 * V8 reads its heap-growing flags when it sizes the heap after a GC, not
 * at start, so they can change for a burst: `compileBurst()` lets the old
 * generation double between full GCs while the reconciler compiles and
 * renders a full sync (BURST_V8_FLAGS) and puts V8's own sizing back after.
 * Measured (`npx tsx bench/compile-heap.ts`, two runs): compile + render
 * CPU -35-45 % (10k rules) / -50 % (100k members) for +25-60 MB of peak
 * RSS (+15-40 %); dropping the flag during the burst saves a little more
 * CPU but nearly doubles the peak (+115-185 MB), which the memory targets
 * of issue 18 rule out.
 */
import { setFlagsFromString } from 'node:v8';

export const AGENT_V8_FLAGS = ['--optimize-for-size'] as const;

/** During a burst: [set at its start, set at its end (0: V8's own growing factor again)]. */
export const BURST_V8_FLAGS = [['--heap-growing-percent=100', '--heap-growing-percent=0']] as const;

let applied = false;

/** Applies AGENT_V8_FLAGS to this process (once). */
export function tuneForFootprint(): void {
  if (applied) return;
  applied = true;
  for (const f of AGENT_V8_FLAGS) setFlagsFromString(f);
}

/**
 * Bursts over `setFlag` (v8.setFlagsFromString in the agent): the first
 * burst sets the start flags of BURST_V8_FLAGS, the end of the last one
 * (bursts nest) sets their end flags; each end function acts once.
 */
export function burstsOver(setFlag: (flag: string) => void): () => () => void {
  let open = 0;
  return () => {
    if (open++ === 0) for (const [start] of BURST_V8_FLAGS) setFlag(start);
    let ended = false;
    return () => {
      if (ended) return;
      ended = true;
      if (--open === 0) for (const [, end] of BURST_V8_FLAGS) setFlag(end);
    };
  };
}

const processBursts = burstsOver(setFlagsFromString);

/**
 * Starts a burst (see the module comment): heap sizing for throughput until
 * the returned function is called. Nothing happens unless tuneForFootprint()
 * ran (the agent's flags are not this process's).
 */
export function compileBurst(): () => void {
  return applied ? processBursts() : () => undefined;
}
