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
 * V8 reads these flags when it sizes the heap after a GC, not at start, so
 * they can change for a burst (`compileBurst()`, around the compile and
 * render of a full sync), in one of two modes (`burstMode`):
 *
 * - `memory` (a policy whose member addresses outnumber its rules more than
 *   MEMBERS_PER_RULE_FOR_MEMORY times: big remote groups, packed, few
 *   objects): the old generation may double between full GCs
 *   (`--heap-growing-percent=100`), the flag stays. Measured with
 *   `bench/compile-heap.ts` (round 4): compile + render CPU -50 % at 100k
 *   members; dropping the flag too saves 0-15 % more there but raises the
 *   peak by 10-15 MB (92-99 -> 108-109 MB at 100k members), against the
 *   <= 2x nft target of issue 18.
 * - `throughput` (rule-heavy policies: thousands of rule objects): the same,
 *   and the flag off until the burst ends. At 10k rules this cut the CPU of
 *   parse + compile + render (in a loop of eight, burst around each) by
 *   ~40 % (median 430-442 -> 232-288 ms, three alternating runs) at the
 *   same peak (143-152 MB), because the growing factor still bounds the
 *   heap (round 5, bench/README.md). The agent's burst covers the compile
 *   and render of a sync, not the document's parse before it.
 */
import { setFlagsFromString } from 'node:v8';
import { memberCount } from '../policy/packed-members.js';
import type { Policy } from '../policy/schema.js';

export const AGENT_V8_FLAGS = ['--optimize-for-size'] as const;

/** How a burst sizes the heap (see the module comment). */
export type BurstMode = 'memory' | 'throughput';

/** During a burst of each mode: [set at its start, set at its end (0: V8's own growing factor again)]. */
export const BURST_V8_FLAGS: Record<BurstMode, readonly (readonly [string, string])[]> = {
  memory: [['--heap-growing-percent=100', '--heap-growing-percent=0']],
  throughput: [
    ['--heap-growing-percent=100', '--heap-growing-percent=0'],
    ['--no-optimize-for-size', '--optimize-for-size'],
  ],
};

/** What a burst compiles: the policy's rules and the member addresses of its remote and address groups. */
export interface BurstWork {
  rules: number;
  members: number;
}

/** What compiling `policy` takes: its rules, and the addresses of its remote groups' members and address groups. */
export function burstWork(policy: Policy): BurstWork {
  let rules = 0;
  for (const g of policy.security_groups) rules += g.rules.length;
  let members = 0;
  for (const gid of Object.keys(policy.group_members)) members += memberCount(policy.group_members, gid);
  for (const ag of policy.address_groups) members += ag.ip_set.length;
  return { rules, members };
}

/** Member addresses per rule above which a burst keeps --optimize-for-size (memory mode). */
export const MEMBERS_PER_RULE_FOR_MEMORY = 20;

export function burstMode(work: BurstWork): BurstMode {
  return work.members > MEMBERS_PER_RULE_FOR_MEMORY * work.rules ? 'memory' : 'throughput';
}

let applied = false;

/** Applies AGENT_V8_FLAGS to this process (once). */
export function tuneForFootprint(): void {
  if (applied) return;
  applied = true;
  for (const f of AGENT_V8_FLAGS) setFlagsFromString(f);
}

/**
 * Bursts over `setFlag` (v8.setFlagsFromString in the agent): the first
 * burst sets the start flags of its mode, the end of the last one (bursts
 * nest; the first one's mode holds until then) sets that mode's end flags;
 * each end function acts once.
 */
export function burstsOver(setFlag: (flag: string) => void): (work: BurstWork) => () => void {
  let open = 0;
  let mode: BurstMode = 'memory';
  return (work) => {
    if (open++ === 0) {
      mode = burstMode(work);
      for (const [start] of BURST_V8_FLAGS[mode]) setFlag(start);
    }
    let ended = false;
    return () => {
      if (ended) return;
      ended = true;
      if (--open === 0) for (const [, end] of BURST_V8_FLAGS[mode]) setFlag(end);
    };
  };
}

const processBursts = burstsOver(setFlagsFromString);

/**
 * Starts a burst for `work` (see the module comment): heap sizing for
 * throughput until the returned function is called. Nothing happens unless
 * tuneForFootprint() ran (the agent's flags are not this process's).
 */
export function compileBurst(work: BurstWork): () => void {
  return applied ? processBursts(work) : () => undefined;
}
