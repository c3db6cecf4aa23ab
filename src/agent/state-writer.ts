/**
 * Writes the last known good (state-store.ts) after the reconciler's syncs,
 * coalesced after element updates: a write serialises the whole document
 * (~10 ms of CPU at 100k members, `npm run bench -- state-write`) while a
 * member delta costs a fraction of that, so
 * after element updates a write happens at most once per `coalesceMs`, and
 * one trailing write takes the newest applied revision when the window ends.
 * After a full reload, a failure or on `stop` the caller writes at once
 * (`writeNow`). The file is always one complete good policy (written
 * atomically); after a crash it may be up to `coalesceMs` older than what
 * was applied (the reconciler's module comment says why that is fine).
 *
 * The trailing write runs under the caller's lock (`serialize`: the
 * reconciler's mutex) and not while the caller's loop is `busy` (the loop
 * writes when it ends). A failed write is logged (`persist_failed`) and
 * counted, never thrown: the ruleset stays enforced.
 */
import type { Clock, Timer } from '../lib/clock.js';
import { asSecgroupError } from '../lib/errors.js';
import type { Logger } from '../lib/logger.js';
import type { Policy } from '../policy/schema.js';
import type { AgentMetrics } from './metrics.js';
import type { StateStore } from './state-store.js';

export interface CoalescedStateWriterOptions {
  store: StateStore;
  clock: Clock;
  logger: Logger;
  metrics: Pick<AgentMetrics, 'stateErrors'>;
  /** after element updates, write at most this often (0: after every sync) */
  coalesceMs: number;
  /** runs the trailing write under the caller's lock */
  serialize: (write: () => Promise<void>) => Promise<void>;
  /** true while the caller's loop runs: a trailing write due then is left to the loop, which writes when it ends */
  busy: () => boolean;
}

export class CoalescedStateWriter {
  /** The applied policy not written yet (null: none): what the next write takes; the caller sets it (or puts back what was). */
  pending: Policy | null = null;
  /** monotonic ms of the last write */
  private lastWriteAt = -Infinity;
  private timer: Timer | null = null;
  private trailing: Promise<void> | null = null;

  constructor(private readonly o: CoalescedStateWriterOptions) {}

  /** A trailing write is scheduled (after element updates within the window). */
  get trailingDue(): boolean {
    return this.timer !== null;
  }

  /**
   * After a sync: writes now, or after element updates (`coalesce`) within
   * `coalesceMs` of the last write, schedules one trailing write (of the
   * newest pending policy then). Never throws.
   */
  async afterSync(coalesce: boolean): Promise<void> {
    const wait = this.lastWriteAt + this.o.coalesceMs - this.o.clock.monotonic();
    if (!coalesce || wait <= 0) return this.writeNow();
    if (this.timer || !this.pending) return;
    this.timer = this.o.clock.setTimeout(() => {
      this.timer = null;
      if (this.o.busy()) return;
      const w = (this.trailing = this.o.serialize(() => this.writeNow()).finally(() => {
        if (this.trailing === w) this.trailing = null;
      }));
    }, wait);
  }

  /** Writes the pending policy, if any, and cancels a trailing write. Never throws. */
  async writeNow(): Promise<void> {
    this.timer?.cancel();
    this.timer = null;
    const policy = this.pending;
    if (!policy) return;
    this.pending = null;
    this.lastWriteAt = this.o.clock.monotonic();
    try {
      await this.o.store.save(policy);
    } catch (e) {
      const err = asSecgroupError(e, 'the save of the state');
      this.o.metrics.stateErrors.inc({ code: err.code });
      this.o.logger.error({ event: 'persist_failed', revision: policy.revision, err }, `revision ${policy.revision} is applied but could not be saved as last known good: ${err.message}`);
    }
  }

  /** Waits for a trailing write under way, then writes what is still pending. Never throws. */
  async flush(): Promise<void> {
    await this.trailing;
    await this.writeNow();
  }
}
