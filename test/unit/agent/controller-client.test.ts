import { describe, expect, it } from 'vitest';
import { FakeClock } from '../../../src/lib/clock.js';
import { silentLogger } from '../../../src/lib/logger.js';
import { ControllerClient, FakeDialer, UpgradeRefused, reconnectDelay, type DialTarget } from '../../../src/agent/controller-client.js';
import { captureLogs } from '../../helpers/log-capture.js';

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

function several(targets: DialTarget[], random = 0.5) {
  const clock = new FakeClock();
  const dialer = new FakeDialer();
  const log = captureLogs('info');
  const client = new ControllerClient({
    dial: dialer.dial,
    clock,
    logger: log.logger,
    random: () => random,
    hello: () => ({ type: 'hello', protocol: 1, instance_id: 'ecs-1', agent_version: '0.1.0', applied_revision: 3 }),
    onPolicy: () => undefined,
    targets: () => targets,
    reconnectInitialMs: 100,
    reconnectMaxMs: 30_000,
  });
  return { clock, dialer, client, lines: log.lines };
}

describe('controller client with several controllers', () => {
  it('moves to the next controller after a lost or failed connection, in order and round, logging controller_switch', async () => {
    const a = { url: 'wss://ctl-a.test:8443' };
    const b1 = { url: 'wss://ctl.test:8443', address: '198.18.0.2' };
    const b2 = { url: 'wss://ctl.test:8443', address: 'fd00:5ec::2' };
    const { clock, dialer, client, lines } = several([a, b1, b2]);
    client.start();
    expect(dialer.last.target).toEqual(a);
    dialer.last.events.open();
    dialer.last.receive({ type: 'welcome', protocol: 1, instance_id: 'ecs-1', desired_revision: 3 });
    dialer.last.close(1006, ''); // the replica died
    await clock.advance(50);
    expect(dialer.last.target).toEqual(b1);
    expect(dialer.last.messages[0]).toBeUndefined(); // not open yet: hello follows open
    dialer.last.events.close(1006, ''); // cannot connect either: on to the next, with a longer backoff
    await clock.advance(100);
    expect(dialer.last.target).toEqual(b2);
    dialer.last.events.close(1006, '');
    await clock.advance(200);
    expect(dialer.sockets.map((s) => s.target)).toEqual([a, b1, b2, a]);
    dialer.last.events.open();
    expect(dialer.last.messages[0]).toMatchObject({ type: 'hello', applied_revision: 3 });
    const switches = lines.filter((l) => l.event === 'controller_switch');
    expect(switches.map((l) => [l.from, l.to, l.retryInMs])).toEqual([
      ['wss://ctl-a.test:8443', 'wss://ctl.test:8443 (198.18.0.2)', 50],
      ['wss://ctl.test:8443 (198.18.0.2)', 'wss://ctl.test:8443 (fd00:5ec::2)', 100],
      ['wss://ctl.test:8443 (fd00:5ec::2)', 'wss://ctl-a.test:8443', 200],
    ]);
    expect(switches[0]!.reason).toMatch(/connection closed \(1006/);
    client.stop();
  });

  it('waits out the Retry-After of a refused upgrade, jittered up to twice as long, then tries the next controller', async () => {
    const { clock, dialer, client, lines } = several([{ url: 'ws://198.18.0.1:8080' }, { url: 'ws://198.18.0.2:8080' }], 0.25);
    client.start();
    dialer.last.events.error(new UpgradeRefused(503, 2000));
    dialer.last.events.close(1006, '');
    // backoff 50 ms, but the replica asked for 2 s: 2 s * (1 + 0.25)
    await clock.advance(2499);
    expect(dialer.sockets.length).toBe(1);
    await clock.advance(1);
    expect(dialer.sockets.length).toBe(2);
    expect(dialer.last.target).toEqual({ url: 'ws://198.18.0.2:8080' });
    expect(lines.find((l) => l.event === 'connect_error')).toMatchObject({ target: 'ws://198.18.0.1:8080', msg: 'control channel error: controller answered HTTP 503 (retry after 2 s)' });
    // the next failure without one is back to the plain backoff
    dialer.last.events.close(1006, '');
    await clock.advance(reconnectDelay(1, 100, 30_000, 0.25));
    expect(dialer.sockets.length).toBe(3);
    client.stop();
  });
});

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

  it('reconnects with exponential backoff, full jitter above half the initial delay, and a cap', async () => {
    // full jitter (issue 16: agents of a dead replica spread out): anywhere up to the exponential bound, never under half the initial delay
    expect([0, 1, 2, 3].map((a) => reconnectDelay(a, 100, 30_000, 1))).toEqual([100, 200, 400, 800]);
    expect([0, 1, 2, 3].map((a) => reconnectDelay(a, 100, 30_000, 0.5))).toEqual([50, 100, 200, 400]);
    expect([0, 1, 2, 3].map((a) => reconnectDelay(a, 100, 30_000, 0))).toEqual([50, 50, 50, 50]);
    expect(reconnectDelay(20, 100, 30_000, 0.999)).toBeLessThanOrEqual(30_000);
    expect(reconnectDelay(20, 100, 30_000, 0.999)).toBeGreaterThan(29_000);
    expect(reconnectDelay(20, 100, 30_000, 0)).toBe(50);
    const { clock, dialer, client } = setup(0.5);
    client.start();
    dialer.last.events.close(1006, ''); // attempt 0 -> 50 ms
    await clock.advance(49);
    expect(dialer.sockets.length).toBe(1);
    await clock.advance(1);
    expect(dialer.sockets.length).toBe(2);
    dialer.last.events.close(1006, ''); // 100 ms
    await clock.advance(99);
    expect(dialer.sockets.length).toBe(2);
    await clock.advance(1);
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
