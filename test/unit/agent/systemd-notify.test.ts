import { describe, expect, it } from 'vitest';
import { FakeClock } from '../../../src/lib/clock.js';
import { silentLogger } from '../../../src/lib/logger.js';
import { ManualScheduler } from '../../../src/lib/scheduler.js';
import { FakeNft } from '../../../src/nft/fake.js';
import { createAgent, type Resolver } from '../../../src/agent/agent.js';
import { resolveConfig } from '../../../src/agent/config.js';
import { FakeDialer } from '../../../src/agent/controller-client.js';
import { MemoryStateStore } from '../../../src/agent/state-store.js';
import { FakeServiceManager, type NotifyState } from '../../../src/agent/systemd.js';
import { policy } from './fixtures.js';

const resolver: Resolver = { resolve: async () => [] };
const settle = () => new Promise((r) => setImmediate(r));

function setup(opts: { store?: MemoryStateStore; controller?: boolean; token?: boolean; watchdogMs?: number } = {}) {
  const nft = new FakeNft();
  const clock = new FakeClock();
  const dialer = new FakeDialer();
  const sm = new FakeServiceManager(opts.watchdogMs ?? null);
  // what was in the kernel when each notification went out
  const tableAtNotify: (string | null)[] = [];
  const notify = sm.notify.bind(sm);
  sm.notify = (s: NotifyState) => {
    tableAtNotify.push(nft.state?.comment ?? null);
    return notify(s);
  };
  const config = resolveConfig(
    { instance_id: 'ecs-1', http_listen: null, ready_wait_ms: 5000, ...(opts.controller === false ? {} : { controller: { url: 'ws://198.18.0.1:8080', token: 't' } }) },
    {},
  );
  const agent = createAgent({
    config, nft, store: opts.store ?? new MemoryStateStore(), clock, logger: silentLogger(), scheduler: new ManualScheduler(), resolver,
    dialer: opts.controller === false ? null : dialer.dial, serviceManager: sm, tokenPresent: () => opts.token ?? true,
  });
  return { nft, clock, dialer, sm, agent, tableAtNotify };
}

describe('agent under systemd (Type=notify, WatchdogSec=)', () => {
  it('sends READY=1 once, only after the last known good policy is in the kernel', async () => {
    const { sm, agent, tableAtNotify } = setup({ store: new MemoryStateStore(policy(7)) });
    await agent.start();
    const readies = sm.sent.filter((s) => s.ready);
    expect(readies).toEqual([{ ready: true, status: 'enforcing revision 7' }]);
    expect(tableAtNotify[sm.sent.indexOf(readies[0]!)]).toContain('revision=7');
    await agent.stop();
    expect(sm.sent.filter((s) => s.ready)).toHaveLength(1);
    expect(sm.sent.at(-1)).toMatchObject({ stopping: true });
  });

  it('with no last known good policy, READY=1 follows the controller\'s first policy', async () => {
    const { sm, agent, dialer, tableAtNotify } = setup();
    await agent.start();
    expect(sm.sent.filter((s) => s.ready)).toEqual([]);
    dialer.last.events.open();
    dialer.last.receive({ type: 'policy', policy: policy(3) });
    await agent.reconciler.idle();
    await settle();
    const i = sm.sent.findIndex((s) => s.ready);
    expect(sm.sent[i]).toEqual({ ready: true, status: 'enforcing revision 3' });
    expect(tableAtNotify[i]).toContain('revision=3');
    await agent.stop();
  });

  it('never holds the boot for an unreachable controller: READY=1 after ready_wait_ms, saying it is not enforcing', async () => {
    const { sm, agent, clock } = setup();
    await agent.start();
    await clock.advance(4999);
    expect(sm.sent.filter((s) => s.ready)).toEqual([]);
    await clock.advance(1);
    expect(sm.sent.filter((s) => s.ready)).toEqual([{ ready: true, status: 'no policy yet, none from the controller within 5000 ms: not enforcing yet' }]);
    await agent.stop();
  });

  it('without a controller token (or without a controller) there is nothing to wait for: READY=1 at once', async () => {
    for (const o of [{ token: false }, { controller: false }]) {
      const { sm, agent } = setup(o);
      await agent.start();
      expect(sm.sent.filter((s) => s.ready)).toEqual([{ ready: true, status: 'no policy yet and no controller token: not enforcing' }]);
      await agent.stop();
    }
  });

  it('feeds the watchdog from the main loop at its interval, and stops feeding it when stopped', async () => {
    const { sm, agent, clock } = setup({ store: new MemoryStateStore(policy(1)), watchdogMs: 1000 });
    await agent.start();
    const pings = () => sm.sent.filter((s) => s.watchdog).length;
    expect(pings()).toBe(0);
    await clock.advance(3000);
    expect(pings()).toBe(3);
    await agent.stop();
    await clock.advance(5000);
    expect(pings()).toBe(3);
  });

  it('sends nothing at all without a service manager', async () => {
    const nft = new FakeNft();
    const config = resolveConfig({ instance_id: 'ecs-1', http_listen: null }, {});
    const agent = createAgent({ config, nft, store: new MemoryStateStore(policy(2)), clock: new FakeClock(), logger: silentLogger(), scheduler: new ManualScheduler(), resolver, dialer: null });
    await agent.start();
    expect(agent.status().ready).toBe(true);
    await agent.stop();
  });
});
