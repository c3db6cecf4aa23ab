/**
 * What the hub records about agents (acks, port reports, last seen and where
 * they are connected) while the store is unavailable: kept in memory and
 * written once the store answers again, so that after an outage `/status`
 * and `/ports` on every replica show what the agents reported meanwhile,
 * without waiting for their next frame.
 *
 * - Bounded: at most one entry per instance; a newer patch is merged over
 *   the held one (field by field, newest wins), as the store merges them.
 * - `update` is the store's `updateAgentState`; when the store throws
 *   STORE_UNAVAILABLE the patch is held and `update` answers true (whether
 *   the instance still exists is learnt when it is written; a patch of an
 *   instance deleted meanwhile is dropped then). Other errors propagate.
 *   While an instance has a patch held, its updates are merged into it and
 *   written by the next flush, so an older patch never lands after a newer.
 * - `flush` writes everything held, one flush at a time; the caller triggers
 *   it when the store is likely back: any successful `update` does, the hub
 *   also on the change feed's reconnect (`resync`) and on its heartbeat. An
 *   entry that gets a newer patch while its write is on the way stays held
 *   (the next flush writes the merged patch).
 * - Callers update one instance's state one after another (the hub's queue
 *   per connection); updates of different instances may overlap.
 *
 * Log lines: `agent_states_held` (warn, once per outage: the first patch
 * held, with the store's error), `agent_states_flushed` (info: how many were
 * written, how many belonged to deleted instances, how many are left).
 */
import { isSecgroupError, errorMessage } from '../lib/errors.js';
import type { Logger } from '../lib/logger.js';
import type { AgentState, Store } from './store/store.js';

interface Held {
  projectId: string;
  instanceId: string;
  patch: Partial<AgentState>;
}

export class AgentStateBuffer {
  private readonly held = new Map<string, Held>();
  private flushing: Promise<void> | null = null;

  constructor(private readonly o: { store: Store; logger: Logger }) {}

  /** Instances with a patch not written yet. */
  get size(): number {
    return this.held.size;
  }

  /** Is a patch of the instance waiting to be written (its stored state is behind)? */
  holds(projectId: string, instanceId: string): boolean {
    return this.held.has(JSON.stringify([projectId, instanceId]));
  }

  /** `store.updateAgentState`, or the patch held while the store is unavailable (see the design note). */
  async update(projectId: string, instanceId: string, patch: Partial<AgentState>): Promise<boolean> {
    const key = JSON.stringify([projectId, instanceId]);
    const h = this.held.get(key);
    if (h) {
      // written by the next flush, after what is held: never overtaken by it
      this.held.set(key, { ...h, patch: { ...h.patch, ...patch } });
      return true;
    }
    let found: boolean;
    try {
      found = (await this.o.store.updateAgentState(projectId, instanceId, patch)) !== null;
    } catch (e) {
      if (!isSecgroupError(e, 'STORE_UNAVAILABLE')) throw e;
      this.held.set(key, { projectId, instanceId, patch });
      if (this.held.size === 1) {
        this.o.logger.warn({ event: 'agent_states_held', error: e.message }, 'the store is unavailable: agent acks and reports are kept in memory (one entry per instance) and written when it is back');
      }
      return true;
    }
    // the store answers: write what an outage left
    if (this.held.size) void this.flush();
    return found;
  }

  /** Writes every held patch (one flush at a time); never throws: what cannot be written stays held. */
  flush(): Promise<void> {
    if (!this.held.size) return Promise.resolve();
    this.flushing ??= this.writeHeld().finally(() => (this.flushing = null));
    return this.flushing;
  }

  private async writeHeld(): Promise<void> {
    const entries = [...this.held.entries()];
    const results = await Promise.allSettled(entries.map(([, h]) => this.o.store.updateAgentState(h.projectId, h.instanceId, h.patch)));
    let written = 0;
    let gone = 0;
    let unavailable: unknown = null;
    results.forEach((r, i) => {
      const [key, h] = entries[i]!;
      if (r.status === 'rejected' && isSecgroupError(r.reason, 'STORE_UNAVAILABLE')) {
        unavailable = r.reason;
        return;
      }
      // a newer patch merged meanwhile stays held: it holds this one's fields too
      if (this.held.get(key) === h) this.held.delete(key);
      if (r.status === 'rejected') {
        this.o.logger.error({ event: 'agent_state_flush_failed', project: h.projectId, instance: h.instanceId, err: r.reason }, `a held agent state could not be written and is dropped: ${errorMessage(r.reason)}`);
      } else if (r.value !== null) written++;
      else gone++;
    });
    if (written || gone) {
      this.o.logger.info({ event: 'agent_states_flushed', written, gone, left: this.held.size }, `the store is back: ${written} agent states held during the outage were written`);
    }
    if (unavailable) this.o.logger.debug({ event: 'agent_states_flush_deferred', left: this.held.size, error: errorMessage(unavailable) }, 'the store is still unavailable; held agent states are retried');
  }
}
