/**
 * Gives the agent's free C heap back to the kernel after a burst of work
 * (issue 18: idle RSS; native/secgroup-memtrim.c).
 *
 * V8 returns its own heap pages when its memory reducer runs, but what V8
 * and Node free through malloc (compiler zones, parser buffers, small
 * buffers of nft's output) stays in glibc's arenas whenever a live block sits
 * above it: free() gives back only the top of the heap. An idle agent with
 * 1k rules held 4.5 or 11.5 MB of brk heap depending on where its last live
 * block landed (bench/README.md, "Issue 18 round 8"). glibc's malloc_trim
 * releases every whole free page of every arena; Node has no call for it, so
 * a small Node-API addon makes it, found next to the program or where the
 * packages install it (`memtrimCandidates`). Without the addon (another libc,
 * no build tools where it was built) the agent runs the same, with that RSS.
 *
 * `MemoryTrimmer` trims TRIM_DELAY_MS after the first sync of a burst (and so
 * at most once per TRIM_DELAY_MS under a stream of deltas): late enough that
 * the sync, its ack and the port report that follows it are done.
 */
import { existsSync } from 'node:fs';
import type { Clock, Timer } from '../lib/clock.js';
import { errorMessage } from '../lib/errors.js';
import { agentPartCandidates } from './native-parts.js';
import type { Logger } from '../lib/logger.js';

export const MEMTRIM_FILE = 'secgroup-memtrim.node';

/** Where the addon is looked for (native-parts.ts). */
export function memtrimCandidates(moduleUrl: string = import.meta.url): string[] {
  return agentPartCandidates(MEMTRIM_FILE, moduleUrl);
}

export interface MemTrim {
  /** malloc_trim(0): true when memory was released */
  trim(): boolean;
  /** the addon's file */
  path: string;
}

/**
 * Loads the first addon of `candidates` that exists. Null when there is none;
 * throws when one exists but cannot be loaded or has no trim function (the
 * caller logs it and runs without).
 */
export function loadMemTrim(candidates: readonly string[] = memtrimCandidates()): MemTrim | null {
  const path = candidates.find((p) => existsSync(p));
  if (path === undefined) return null;
  const mod = { exports: {} as { trim?: unknown } };
  process.dlopen(mod, path);
  const trim = mod.exports.trim;
  if (typeof trim !== 'function') throw new Error(`${path} has no trim function`);
  return { trim: () => trim() === true, path };
}

/** After the first sync of a burst, the trim comes this much later. */
export const TRIM_DELAY_MS = 5_000;

export class MemoryTrimmer {
  private timer: Timer | null = null;
  private stopped = false;

  constructor(
    private readonly o: {
      trim: () => boolean;
      clock: Clock;
      logger: Logger;
      delayMs?: number;
    },
  ) {}

  /** A burst of work happened (a sync): trim once it is over, unless a trim is already due. */
  noteWork(): void {
    if (this.timer || this.stopped) return;
    this.timer = this.o.clock.setTimeout(() => this.run(), this.o.delayMs ?? TRIM_DELAY_MS);
  }

  stop(): void {
    this.stopped = true;
    this.timer?.cancel();
    this.timer = null;
  }

  private run(): void {
    this.timer = null;
    const t0 = this.o.clock.monotonic();
    try {
      const released = this.o.trim();
      this.o.logger.debug({ event: 'memory_trim', released, ms: Math.round((this.o.clock.monotonic() - t0) * 100) / 100 }, released ? 'free C heap given back' : 'no free C heap to give back');
    } catch (e) {
      // never again: a trim that throws once would throw after every burst
      this.stop();
      this.o.logger.warn({ event: 'memory_trim_failed', err: e }, `giving the free C heap back failed, not trying again: ${errorMessage(e)}`);
    }
  }
}
