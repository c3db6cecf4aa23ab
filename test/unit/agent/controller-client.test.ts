import { describe, expect, it } from 'vitest';
import { FakeClock } from '../../../src/lib/clock.js';
import { silentLogger } from '../../../src/lib/logger.js';
import { ControllerClient, FakeDialer, reconnectDelay } from '../../../src/agent/controller-client.js';

function setup(random = 0.5) {
  const clock = new FakeClock();
  const dialer = new FakeDialer();
  const policies: unknown[] = [];
  let connected = 0;
  const client = new ControllerClient({
    dial: dialer.dial,
    clock,
    logger: silentLogger(),
    random: () => random,
    hello: () => ({ type: 'hello', protocol: 1, instance_id: 'ecs-1', agent_version: '0.1.0', applied_revision: null }),
    onPolicy: (p) => policies.push(p),
    onConnected: () => connected++,
    pingIntervalMs: 1000,
    pongTimeoutMs: 500,
    reconnectInitialMs: 100,
    reconnectMaxMs: 30_000,
    maxMessageBytes: 1024,
  });
  return { clock, dialer, client, policies, connected: () => connected };
}

describe('controller client', () => {
  it('says hello on open and hands validated policies over', () => {
    const { dialer, client, policies } = setup();
    client.start();
    dialer.last.events.open();
    expect(dialer.last.messages).toEqual([expect.objectContaining({ type: 'hello', instance_id: 'ecs-1' })]);
    dialer.last.receive({ type: 'policy', policy: { anything: 1 } });
    dialer.last.receive({ type: 'surprise' });
    dialer.last.receive('not json');
    expect(policies).toEqual([{ anything: 1 }]);
  });

  it('reconnects with exponential backoff, jitter and a cap', async () => {
    expect([0, 1, 2, 3].map((a) => reconnectDelay(a, 100, 30_000, 0))).toEqual([50, 100, 200, 400]);
    expect(reconnectDelay(20, 100, 30_000, 0.999)).toBeLessThanOrEqual(30_000);
    expect(reconnectDelay(20, 100, 30_000, 0)).toBe(15_000);
    const { clock, dialer, client } = setup(0);
    client.start();
    dialer.last.events.close(1006, ''); // attempt 0 -> 50 ms
    await clock.advance(49);
    expect(dialer.sockets.length).toBe(1);
    await clock.advance(1);
    expect(dialer.sockets.length).toBe(2);
    dialer.last.events.close(1006, ''); // 100 ms
    await clock.advance(100);
    expect(dialer.sockets.length).toBe(3);
    dialer.last.events.open();
    dialer.last.receive({ type: 'welcome', protocol: 1, instance_id: 'ecs-1', desired_revision: null }); // resets backoff
    dialer.last.close(1001, 'going away');
    await clock.advance(50);
    expect(dialer.sockets.length).toBe(4);
  });

  it('drops a connection that does not answer pings, then reconnects', async () => {
    const { clock, dialer, client } = setup(0);
    client.start();
    const s = dialer.last;
    s.events.open();
    await clock.advance(1000);
    expect(s.pings).toBe(1);
    s.events.pong();
    await clock.advance(1000);
    expect(s.pings).toBe(2);
    await clock.advance(500); // no pong
    expect(s.terminated).toBe(true);
    expect(client.connected).toBe(false);
    await clock.advance(50);
    expect(dialer.sockets.length).toBe(2);
  });

  it('rejects a policy frame over the size limit with an ack that says why, and keeps the connection', () => {
    const { dialer, client, policies } = setup();
    client.start();
    dialer.last.events.open();
    dialer.last.receive({ type: 'policy', policy: { revision: 12, pad: 'x'.repeat(2000) } });
    expect(policies).toEqual([]);
    expect(dialer.last.closed).toBeNull();
    expect(client.connected).toBe(true);
    const ack = dialer.last.messages.find((m) => m.type === 'ack');
    expect(ack).toMatchObject({ type: 'ack', revision: 12, status: 'rejected', error: { code: 'POLICY_TOO_LARGE', message: expect.stringMatching(/2\d{3} bytes.*limit of 1024 bytes.*max_message_bytes/) } });
    // a frame over the limit that is not a policy is dropped without an ack
    dialer.last.receive({ type: 'welcome', pad: 'x'.repeat(2000) });
    expect(dialer.last.messages.filter((m) => m.type === 'ack').length).toBe(1);
    expect(dialer.last.closed).toBeNull();
  });

  it('stops reconnecting after stop', async () => {
    const { clock, dialer, client } = setup();
    client.start();
    dialer.last.events.open();
    client.stop();
    await clock.advance(60_000);
    expect(dialer.sockets.length).toBe(1);
    expect(client.send({ type: 'ack', revision: 1, status: 'applied' })).toBe(false);
    expect(clock.timers).toBe(0);
  });
});

describe('controller client dial failures', () => {
  it('retries when opening the socket throws (e.g. unreadable token file)', async () => {
    const clock = new FakeClock();
    let dials = 0;
    const dialer = new FakeDialer();
    const client = new ControllerClient({
      dial: (events) => {
        if (++dials === 1) throw new Error('cannot read token file');
        return dialer.dial(events);
      },
      clock,
      logger: silentLogger(),
      random: () => 0,
      hello: () => ({ type: 'hello', protocol: 1, instance_id: 'i', agent_version: 'v', applied_revision: null }),
      onPolicy: () => undefined,
      reconnectInitialMs: 100,
    });
    client.start();
    await clock.advance(50);
    expect(dials).toBe(2);
    client.stop();
  });
});
