/**
 * Controller replicas (issue 16): two controllers (two hubs, two API apps) in
 * this process over ONE store and one change-feed bus, as replicas share one
 * database; agents are real WebSocket clients on 127.0.0.1. Time is a
 * FakeClock: heartbeats fire only when a test advances it. Waits for frames
 * are bounded (real sockets), never timing assertions.
 */
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import WebSocket from 'ws';
import { FakeClock } from '../../src/lib/clock.js';
import { silentLogger } from '../../src/lib/logger.js';
import { MemoryFeedBus, type ChangeFeed } from '../../src/controller/change-feed.js';
import { createController, type Controller, type ControllerAddress } from '../../src/controller/controller.js';
import { parseControllerConfig } from '../../src/controller/config.js';
import { MemoryStore } from '../../src/controller/store/memory.js';
import { PROTOCOL_VERSION } from '../../src/protocol/messages.js';
import { ControllerClient } from '../../src/agent/controller-client.js';
import { wsDialer } from '../../src/agent/ws-dialer.js';
import { captureLogs } from '../helpers/log-capture.js';
import { SecgroupError } from '../../src/lib/errors.js';
import { Wire, waitFor, wsAgent } from '../helpers/agent-wire.js';
import { ADMIN, countingRandom, rule } from './controller-helpers.js';

const P = '/v3/proj-a';

let clock: FakeClock;
let store: MemoryStore;
let bus: MemoryFeedBus;
let replicas: { ctl: Controller; addr: ControllerAddress; feed: ChangeFeed }[];

async function startReplica(name: string, agents: Record<string, unknown> = {}): Promise<{ ctl: Controller; addr: ControllerAddress; feed: ChangeFeed }> {
  const config = parseControllerConfig({
    listen: { host: '127.0.0.1', port: 0 },
    api: { tokens: [{ name: 'admin', token: ADMIN }] },
    agents: { heartbeat_interval_ms: 1000, hello_timeout_ms: 5000, rate_burst: 50, rate_per_second: 50, ...agents },
    metrics: { process_metrics: false },
  });
  // ids differ between replicas as random ones do (audit event ids are store-wide)
  const counting = countingRandom();
  const prefix = String(replicas.length).padStart(8, '0');
  const random = { ...counting, uuid: () => counting.uuid().replace(/^0{8}/, prefix) };
  const feed = bus.feed();
  const ctl = createController({ config, clock, store, feed, replicaId: name, logger: silentLogger(), random });
  return { ctl, addr: await ctl.start(), feed };
}

beforeEach(async () => {
  clock = new FakeClock(Date.UTC(2024, 4, 1, 12, 0, 0));
  store = new MemoryStore();
  bus = new MemoryFeedBus();
  replicas = [];
  replicas.push(await startReplica('replica-a'));
  replicas.push(await startReplica('replica-b'));
});

const running: { stop(): unknown }[] = [];

afterEach(async () => {
  for (const r of running.splice(0)) await r.stop();
  Wire.closeAll();
  store.unavailable = false;
  for (const r of replicas) await r.ctl.stop();
});

async function api(replica: number, method: 'GET' | 'POST' | 'PUT' | 'DELETE', url: string, payload?: object) {
  const r = await replicas[replica]!.ctl.app.inject({ method, url, headers: { 'x-auth-token': ADMIN }, ...(payload ? { payload } : {}) });
  return { status: r.statusCode, body: r.body ? JSON.parse(r.body) : null, headers: r.headers };
}

/** Group sg-web (tcp/80) and instance ecs-1 in it, created through replica 0; returns the instance token. */
async function seed(): Promise<string> {
  expect((await api(0, 'POST', `${P}/vpc/security-groups`, { security_group: { id: 'sg-web', name: 'web' } })).status).toBe(201);
  expect((await api(0, 'POST', `${P}/vpc/security-group-rules`, { security_group_rule: { security_group_id: 'sg-web', ...rule() } })).status).toBe(201);
  const i = await api(0, 'POST', `${P}/instances`, { instance: { id: 'ecs-1', addresses: ['198.18.0.10'], security_groups: ['sg-web'] } });
  expect(i.status).toBe(201);
  return i.body.token;
}

const addRule = (replica: number, port: number) => api(replica, 'POST', `${P}/vpc/security-group-rules`, { security_group_rule: { security_group_id: 'sg-web', ...rule({ multiport: String(port) }) } });

/** Lets frames in flight on localhost arrive (used before asserting that nothing more came). */
const drain = () => new Promise((r) => setTimeout(r, 150));

const desired = async () => (await api(0, 'GET', `${P}/instances/ecs-1/status`)).body.status.desired_revision as number;

/** The seed's agent, connected to replica B, with the first document; returns it and that revision. */
async function agentOnB(token: string): Promise<{ agent: Wire; first: number }> {
  const agent = await Wire.open(replicas[1]!.addr.agentUrl, token);
  agent.hello(null);
  const first = await desired();
  await agent.until(first);
  return { agent, first };
}

/** A change through A whose announcement is lost: B's agent does not get it. Returns its revision. */
async function lostChange(agent: Wire, first: number): Promise<number> {
  bus.dropNext(1);
  await addRule(0, 443);
  const missed = await desired();
  await drain();
  expect(agent.pushed).toEqual([first]);
  return missed;
}

describe('controller replicas over one store', () => {
  it('a rule change through replica A reaches the agent connected to replica B; its ack and presence show through A', async () => {
    const { agent, first } = await agentOnB(await seed());
    const r = await addRule(0, 443);
    expect(r.status).toBe(201);
    const next = await desired();
    expect(next).toBeGreaterThan(first);
    expect(await agent.until(next)).toEqual([first, next]);
    // written by B (the ack, where the agent is), read through A
    await waitFor('the ack through A', async () => (await api(0, 'GET', `${P}/instances/ecs-1/status`)).body.status.applied_revision === next);
    expect((await api(0, 'GET', `${P}/instances/ecs-1/status`)).body.status).toMatchObject({ connected: true, in_sync: true, agent: { version: '0.1.0' } });
    // B refreshes it every heartbeat; without that, A stops believing it after three
    clock.advance(1000);
    expect((await api(0, 'GET', `${P}/instances/ecs-1/status`)).body.status.connected).toBe(true);
    agent.ws.close();
    await agent.closed;
    await waitFor('the disconnect through A', async () => (await api(0, 'GET', `${P}/instances/ecs-1/status`)).body.status.connected === false);
  });

  it('a lost notification is caught up on the next resync hint, and a later change goes straight through', async () => {
    const { agent, first } = await agentOnB(await seed());
    const missed = await lostChange(agent, first);
    expect(bus.dropped).toBe(1);
    bus.resync();
    expect(await agent.until(missed)).toEqual([first, missed]);
    await addRule(0, 8080);
    const later = await desired();
    expect(await agent.until(later)).toEqual([first, missed, later]);
  });

  it('a commit whose announcement was lost while its replica\'s feed was down reaches the other replica\'s agent when that feed is back', async () => {
    const { agent, first } = await agentOnB(await seed());
    // A's feed is down: its announcement is lost; B's feed never went down, so B gets no resync of its own
    const missed = await lostChange(agent, first);
    // A's feed reconnects: A announces its newest revision again, and B catches up
    bus.resync(replicas[0]!.feed);
    expect(await agent.until(missed)).toEqual([first, missed]);
  });

  it('a change to many agents on replica B is read there in one getPolicies for all of them, not one read per agent, and reaches every one', async () => {
    await seed();
    const agents: { agent: Wire; id: string; first: number }[] = [];
    const tokens: [string, string][] = [];
    for (let k = 0; k < 6; k++) {
      const id = `ecs-many-${k}`;
      tokens.push([id, (await api(0, 'POST', `${P}/instances`, { instance: { id, addresses: [`198.18.1.${k + 1}`], security_groups: ['sg-web'] } })).body.token]);
    }
    for (const [id, token] of tokens) {
      const agent = await Wire.open(replicas[1]!.addr.agentUrl, token);
      agent.hello(null, id);
      const first = (await api(0, 'GET', `${P}/instances/${id}/status`)).body.status.desired_revision as number;
      await agent.until(first);
      agents.push({ agent, id, first });
    }
    const single = vi.spyOn(store, 'getPolicy');
    const many = vi.spyOn(store, 'getPolicies');
    expect((await addRule(0, 443)).status).toBe(201);
    for (const { agent, id, first } of agents) {
      const next = (await api(0, 'GET', `${P}/instances/${id}/status`)).body.status.desired_revision as number;
      expect(await agent.until(next)).toEqual([first, next]);
    }
    expect(single).not.toHaveBeenCalled();
    expect(many).toHaveBeenCalledTimes(1);
    expect([...many.mock.calls[0]![1]].sort()).toEqual(agents.map((a) => a.id).sort());
  });

  it('a document that replica B fails to read after a hint is read again later, though its watermark moved past it', async () => {
    const { agent, first } = await agentOnB(await seed());
    const read = store.getPolicies.bind(store);
    let failures = 2;
    // a fake fault in the shared store: the next two document reads fail (as a pool wait that timed out)
    store.getPolicies = async (projectId, instanceIds) => {
      if (failures > 0) {
        failures--;
        throw new SecgroupError('STORE_UNAVAILABLE', 'timeout exceeded when trying to connect');
      }
      return read(projectId, instanceIds);
    };
    expect((await addRule(0, 443)).status).toBe(201);
    const next = await desired();
    await waitFor('the first failed read', () => failures === 1);
    await drain();
    expect(agent.pushed).toEqual([first]);
    clock.advance(500);
    await waitFor('the second failed read', () => failures === 0);
    clock.advance(1000);
    expect(await agent.until(next)).toEqual([first, next]);
    store.getPolicies = read;
  });

  it('never pushes a revision the agent has: hints about older changes, resyncs and a move between replicas send nothing', async () => {
    const token = await seed();
    // every change before the agent connects is announced to nobody: B's watermark stays behind them
    bus.dropNext(100);
    await addRule(0, 443);
    await addRule(0, 8080);
    const current = await desired();
    const agent = await Wire.open(replicas[1]!.addr.agentUrl, token);
    agent.hello(null);
    expect(await agent.until(current)).toEqual([current]);
    // B catches up on every policy past its old watermark: the agent has them all
    await replicas[1]!.ctl.hub.catchUpNow();
    await drain();
    expect(agent.pushed).toEqual([current]);
    // the agent moves to A (whose watermark is behind too) saying what it has: a resync hint sends nothing there either
    agent.ws.close();
    await agent.closed;
    const moved = await Wire.open(replicas[0]!.addr.agentUrl, token);
    moved.hello(current);
    await waitFor('welcome from A', () => moved.frames.some((m) => m.type === 'welcome'));
    bus.resync();
    await replicas[0]!.ctl.hub.catchUpNow();
    await drain();
    expect(moved.pushed).toEqual([]);
    // and the next change through B reaches it on A, newer than what it has
    bus.dropNext(0);
    await addRule(1, 9090);
    const next = await desired();
    expect(next).toBeGreaterThan(current);
    expect(await moved.until(next)).toEqual([next]);
  });
});

describe('a replica whose store is unavailable', () => {
  it('answers the API with 503 SYS.0503 and /readyz with 503, keeps connected agents, refuses upgrades and hellos it cannot serve, and recovers', async () => {
    const token = await seed();
    expect((await api(1, 'GET', '/readyz')).status).toBe(200);
    const { agent, first } = await agentOnB(token);
    // another instance's connection, upgraded before the database goes away
    const other = await api(1, 'POST', `${P}/instances`, { instance: { id: 'ecs-2', addresses: ['198.18.0.11'], security_groups: ['default'] } });
    const late = await Wire.open(replicas[1]!.addr.agentUrl, other.body.token);

    store.unavailable = true;
    const ready = await api(1, 'GET', '/readyz');
    expect(ready.status).toBe(503);
    expect(ready.body).toMatchObject({ status: 'not_ready', error_code: 'SYS.0503' });
    expect(ready.body.error_msg).toMatch(/database is unavailable/);
    for (const [method, url, body] of [
      ['GET', `${P}/vpc/security-groups`],
      ['POST', `${P}/vpc/security-group-rules`, { security_group_rule: { security_group_id: 'sg-web', ...rule({ multiport: '22' }) } }],
      ['GET', `${P}/instances/ecs-1/status`],
    ] as const) {
      const r = await api(1, method, url, body);
      expect(r.status, `${method} ${url}`).toBe(503);
      expect(r.body).toMatchObject({ error_code: 'SYS.0503' });
      expect(r.body.error_msg).toMatch(/database is unavailable, nothing was changed; retry later/);
      expect(r.headers['retry-after']).toBe('5');
    }
    // a new upgrade: 503 with Retry-After
    const refused = await new Promise<{ status: number; retryAfter: string | undefined }>((resolve) => {
      const ws = new WebSocket(replicas[1]!.addr.agentUrl, { headers: { authorization: `Bearer ${token}` } });
      ws.on('unexpected-response', (_req, res) => {
        resolve({ status: res.statusCode ?? 0, retryAfter: res.headers['retry-after'] });
        ws.terminate();
      });
      ws.on('error', () => undefined);
    });
    expect(refused).toEqual({ status: 503, retryAfter: '5' });
    // a hello on an upgraded connection: an error frame, then close 1013 with its reason
    late.hello(null, 'ecs-2');
    expect(await late.closed).toEqual({ code: 1013, reason: 'controller database unavailable' });
    expect(late.frames).toEqual([{ type: 'error', error: { code: 'STORE_UNAVAILABLE', message: expect.stringMatching(/database is unavailable/) } }]);
    // the connected agent stays (fail-static): its ack cannot be stored now (held, agent-state-buffer.ts), the connection is kept through heartbeats
    agent.ws.send(JSON.stringify({ type: 'ack', revision: first, status: 'applied' }));
    clock.advance(1000);
    await drain();
    expect(agent.ws.readyState).toBe(WebSocket.OPEN);
    expect(replicas[1]!.ctl.hub.isConnected('proj-a', 'ecs-1')).toBe(true);

    store.unavailable = false;
    expect((await api(1, 'GET', '/readyz')).status).toBe(200);
    await addRule(1, 443);
    const next = await desired();
    expect(await agent.until(next)).toEqual([first, next]);
  });
});

describe('agents with several controllers', () => {
  it('a replica stops: its agent moves to the other (controller_switch), keeps its policy meanwhile and acks there', async () => {
    const token = await seed();
    const log = captureLogs('info');
    const urls = replicas.map((r) => r.addr.url.replace(/^http/, 'ws'));
    const agent = wsAgent(urls, token, log.logger);
    running.push(agent);
    await agent.start();
    const first = await desired();
    const status = async () => (await api(1, 'GET', `${P}/instances/ecs-1/status`)).body.status;
    await waitFor('applied through replica A', async () => (await status()).applied_revision === first);
    expect(replicas[0]!.ctl.hub.isConnected('proj-a', 'ecs-1')).toBe(true);

    await replicas[0]!.ctl.stop();
    // the policy in force stays while the agent moves
    expect(agent.status().appliedRevision).toBe(first);
    expect(await addRule(1, 443)).toMatchObject({ status: 201 });
    const next = (await status()).desired_revision as number;
    await waitFor('acked through replica B', async () => (await status()).applied_revision === next);
    expect(replicas[1]!.ctl.hub.isConnected('proj-a', 'ecs-1')).toBe(true);
    expect(await status()).toMatchObject({ connected: true, in_sync: true });
    expect(log.lines.find((l) => l.event === 'controller_switch')).toMatchObject({ from: urls[0], to: urls[1] });
  });

  it('a reconnection storm: every agent gets in, never faster than agents.accept_rate_per_s (the rest told to retry later)', async () => {
    const storm = await startReplica('replica-c', { accept_rate_per_s: 5 });
    replicas.push(storm);
    await seed();
    const tokens: string[] = [];
    for (let i = 0; i < 16; i++) {
      const r = await api(0, 'POST', `${P}/instances`, { instance: { id: `vm-${i}`, addresses: [`198.18.1.${i}`], security_groups: ['default'] } });
      tokens.push(r.body.token);
    }
    const start = clock.now();
    tokens.forEach((token, i) => {
      const client = new ControllerClient({
        dial: wsDialer({ url: storm.addr.agentUrl, token: () => token, maxPayload: 1 << 20, handshakeTimeoutMs: 2000 }),
        clock,
        logger: silentLogger(),
        random: () => (i + 0.5) / tokens.length,
        hello: () => ({ type: 'hello', protocol: PROTOCOL_VERSION, instance_id: `vm-${i}`, agent_version: '0.1.0', applied_revision: null }),
        onPolicy: () => undefined,
        reconnectInitialMs: 100,
        reconnectMaxMs: 5000,
      });
      running.push(client);
      client.start();
    });
    // controller time moves in 100 ms steps; real time only lets the sockets work
    for (let step = 0; step < 200 && storm.ctl.hub.connectedCount < tokens.length; step++) {
      await new Promise((r) => setTimeout(r, 15));
      await clock.advance(100);
    }
    expect(storm.ctl.hub.connectedCount).toBe(tokens.length);
    await storm.ctl.audit.idle();
    const accepted = (await store.listAuditEvents('proj-a', { operation: ['AgentConnected'] })).map((e) => Date.parse(e.time) - start).sort((a, b) => a - b);
    expect(accepted).toHaveLength(tokens.length);
    // a burst of one second's worth, then at most 5 per second of controller time
    accepted.forEach((at, n) => expect(n + 1, `connection ${n + 1} at ${at} ms`).toBeLessThanOrEqual(5 + Math.floor((5 * at) / 1000)));
    const refused = await storm.ctl.metrics.connectionsRejected.get();
    expect(refused.values.find((v) => v.labels.reason === 'accept_rate')?.value).toBeGreaterThan(0);
  });
});
