/**
 * The agent when the wall clock is stepped (NTP, `date -s`): retries,
 * reconnects and drift checks keep their schedule (timers run on monotonic
 * time; the cron schedule recomputes from the new wall time), no timer piles
 * up, no burst of work, and timestamps follow the new wall time.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { FakeClock } from '../../../src/lib/clock.js';
import { silentLogger } from '../../../src/lib/logger.js';
import { cronSchedulerOn } from '../../../src/lib/scheduler.js';
import { FakeNft } from '../../../src/nft/fake.js';
import { createAgent } from '../../../src/agent/agent.js';
import { resolveConfig } from '../../../src/agent/config.js';
import { FakeDialer } from '../../../src/agent/controller-client.js';
import { FileStateStore, MemoryStateStore } from '../../../src/agent/state-store.js';
import { policy } from './fixtures.js';

const HOUR = 3_600_000;

function setup() {
  const nft = new FakeNft();
  const clock = new FakeClock(Date.parse('2026-03-10T10:00:00.500Z'));
  const store = new MemoryStateStore(policy(1));
  const dialer = new FakeDialer();
  const config = resolveConfig(
    {
      instance_id: 'ecs-1',
      http_listen: null,
      drift_schedule: '*/2 * * * * *',
      retry_initial_ms: 1000,
      retry_max_ms: 4000,
      ports_interval_ms: 0,
      controller: { url: 'ws://198.18.0.1:8080', token: 't', reconnect_initial_ms: 1000, reconnect_max_ms: 4000 },
    },
    {},
  );
  const agent = createAgent({
    config,
    nft,
    store,
    clock,
    logger: silentLogger(),
    scheduler: cronSchedulerOn(clock),
    resolver: { resolve: async () => [] },
    dialer: dialer.dial,
    random: () => 0.5,
  });
  return { nft, clock, store, dialer, agent };
}

describe('agent across wall-clock jumps', () => {
  for (const [name, jump] of [
    ['set back an hour', -HOUR],
    ['set forward a day', 24 * HOUR],
  ] as const) {
    it(`clock ${name}: drift checks, apply retries and reconnects keep their schedule; no timer piles up`, async () => {
      const { nft, clock, dialer, agent } = setup();
      await agent.start();
      await clock.advance(10_000);
      const reads0 = nft.count('readTable');
      expect(reads0).toBe(5); // one drift check every 2 s

      // the controller is gone (every dial fails) and revision 2 keeps failing to apply
      dialer.last.events.close(1006, '');
      for (let i = 0; i < 8; i++) nft.failNext('apply');
      void agent.reconciler.submit(policy(2, { httpPort: '8080' }), 'controller');
      await clock.advance(0);
      const applies0 = nft.count('apply');
      const dials0 = dialer.sockets.length;

      clock.jumpWall(jump);
      for (let s = 0; s < 20; s++) {
        await clock.advance(1000);
        const s2 = dialer.sockets.at(-1)!;
        if (!s2.closed) s2.close(1006, 'refused');
      }
      // drift checks: 10 periods of 2 s (one may be lost across the jump), never a burst
      const reads = nft.count('readTable') - reads0;
      expect(reads).toBeGreaterThanOrEqual(9);
      expect(reads).toBeLessThanOrEqual(11);
      // apply retries at 1, 2, 4, 4, 4 s ... after the failure: 6 retries within 20 s, exactly as without a jump
      expect(nft.count('apply') - applies0).toBe(6);
      // reconnects at the same backoff (full jitter at 0.5: 0.5 s, 1 s, 2 s, 2 s ...): a handful, no tight loop
      const dials = dialer.sockets.length - dials0;
      expect(dials).toBeGreaterThanOrEqual(7);
      expect(dials).toBeLessThanOrEqual(12);
      // one drift timer, one apply retry, one reconnect: nothing piled up
      expect(clock.timers).toBeLessThanOrEqual(3);

      // timestamps follow the new wall time
      await clock.advance(20_000); // the failures run out: revision 2 applies and is saved
      expect(agent.status().appliedRevision).toBe(2);
      await agent.stop();
    });
  }

  it('saved_at of the last known good follows the (stepped) wall clock', async () => {
    const clock = new FakeClock(Date.parse('2026-03-10T10:00:00.500Z'));
    const dir = await mkdtemp(join(tmpdir(), 'sg-clock-'));
    try {
      const store = new FileStateStore(dir, () => clock.now());
      clock.jumpWall(-HOUR);
      await store.save(policy(2));
      const r = await store.peek();
      expect(r).toMatchObject({ kind: 'ok', savedAt: '2026-03-10T09:00:00.500Z' });
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
