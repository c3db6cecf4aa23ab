import { describe, expect, it } from 'vitest';
import { FakeClock } from '../../../src/lib/clock.js';
import { SecgroupError } from '../../../src/lib/errors.js';
import { Mutex } from '../../../src/lib/mutex.js';
import { AgentMetrics } from '../../../src/agent/metrics.js';
import { MemoryStateStore } from '../../../src/agent/state-store.js';
import { CoalescedStateWriter } from '../../../src/agent/state-writer.js';
import { captureLogs } from '../../helpers/log-capture.js';
import { policy } from './fixtures.js';

function setup(coalesceMs = 30_000) {
  const clock = new FakeClock();
  const store = new MemoryStateStore();
  const metrics = new AgentMetrics();
  const { logger, lines } = captureLogs();
  const mutex = new Mutex();
  const state = { busy: false, serialized: 0 };
  const w = new CoalescedStateWriter({
    store,
    clock,
    logger,
    metrics,
    coalesceMs,
    serialize: (write) => {
      state.serialized++;
      return mutex.run(write);
    },
    busy: () => state.busy,
  });
  return { clock, store, metrics, lines, mutex, state, w };
}

describe('CoalescedStateWriter (last known good after syncs)', () => {
  it('writes at once after a sync that is not coalesced (a full reload), and nothing when nothing is pending', async () => {
    const { store, w } = setup();
    w.pending = policy(1);
    await w.afterSync(false);
    expect(store.saves).toBe(1);
    expect(store.policy?.revision).toBe(1);
    expect(w.pending).toBeNull();
    await w.afterSync(false);
    await w.writeNow();
    expect(store.saves).toBe(1);
  });

  it('after element updates writes at most once per coalesceMs: one trailing write takes the newest pending policy', async () => {
    const { clock, store, state, w } = setup(30_000);
    w.pending = policy(1);
    await w.afterSync(true); // nothing written yet: no window to wait for
    expect(store.saves).toBe(1);
    for (const rev of [2, 3, 4]) {
      await clock.advance(1000);
      w.pending = policy(rev);
      await w.afterSync(true);
    }
    expect(store.saves).toBe(1);
    expect(w.trailingDue).toBe(true);
    expect(clock.timers).toBe(1);
    await clock.advance(26_999);
    expect(store.saves).toBe(1);
    await clock.advance(1);
    expect(store.saves).toBe(2);
    expect(store.policy?.revision).toBe(4);
    expect(state.serialized).toBe(1); // under the caller's lock
    expect(w.trailingDue).toBe(false);
    expect(w.pending).toBeNull();
  });

  it('a window that has passed writes at once', async () => {
    const { clock, store, w } = setup(30_000);
    w.pending = policy(1);
    await w.afterSync(true);
    await clock.advance(30_000);
    w.pending = policy(2);
    await w.afterSync(true);
    expect(store.saves).toBe(2);
    expect(w.trailingDue).toBe(false);
  });

  it('leaves a trailing write due while the caller is busy to the caller (its loop writes when it ends)', async () => {
    const { clock, store, state, w } = setup(1000);
    w.pending = policy(1);
    await w.afterSync(true);
    w.pending = policy(2);
    await w.afterSync(true);
    state.busy = true;
    await clock.advance(1000);
    expect(store.saves).toBe(1);
    expect(state.serialized).toBe(0);
    expect(w.trailingDue).toBe(false);
    expect(w.pending?.revision).toBe(2);
    await w.writeNow();
    expect(store.policy?.revision).toBe(2);
  });

  it('a write now cancels the trailing write', async () => {
    const { clock, store, w } = setup(1000);
    w.pending = policy(1);
    await w.afterSync(true);
    w.pending = policy(2);
    await w.afterSync(true);
    await w.writeNow();
    expect(store.saves).toBe(2);
    expect(clock.timers).toBe(0);
    await clock.advance(1000);
    expect(store.saves).toBe(2);
  });

  it('flush waits for a trailing write under way, then writes what is still pending', async () => {
    const { clock, store, mutex, w } = setup(1000);
    w.pending = policy(1);
    await w.afterSync(true);
    w.pending = policy(2);
    await w.afterSync(true);
    let release!: () => void;
    const held = mutex.run(() => new Promise<void>((r) => (release = r)));
    await clock.advance(1000); // the trailing write waits for the lock
    expect(store.saves).toBe(1);
    w.pending = policy(3);
    const flushed = w.flush();
    release();
    await held;
    await flushed;
    expect(store.saves).toBe(2);
    expect(store.policy?.revision).toBe(3);
  });

  it('a failed write is logged and counted, never thrown, and the policy is not retried by the next write', async () => {
    const { store, metrics, lines, w } = setup();
    store.failNextSave = new SecgroupError('STATE_IO', 'disk full');
    w.pending = policy(7);
    await w.afterSync(false);
    expect(lines.filter((l) => l.event === 'persist_failed')).toEqual([expect.objectContaining({ revision: 7, err: expect.objectContaining({ code: 'STATE_IO' }) })]);
    expect((await metrics.registry.getSingleMetricAsString('secgroup_state_errors_total')).split('\n').at(-1)).toBe('secgroup_state_errors_total{code="STATE_IO"} 1');
    expect(w.pending).toBeNull();
    expect(store.policy).toBeNull();
  });
});
