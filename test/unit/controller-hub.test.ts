/* eslint-disable @typescript-eslint/no-explicit-any -- frames and bodies are untyped JSON, checked by the assertions */
/**
 * The agent hub with real WebSocket clients on 127.0.0.1 against a started
 * controller (in-process); time is a FakeClock, so heartbeats and the hello
 * timeout fire only when a test advances it.
 */
import { describe, expect, it, beforeEach, afterEach } from 'vitest';
import WebSocket from 'ws';
import { FakeClock } from '../../src/lib/clock.js';
import { silentLogger } from '../../src/lib/logger.js';
import { createController, type Controller, type ControllerAddress } from '../../src/controller/controller.js';
import { parseControllerConfig } from '../../src/controller/config.js';
import { openSqliteStore } from '../../src/controller/store/sqlite.js';
import { MemoryStore } from '../../src/controller/store/memory.js';
import type { AuditEvent, Store } from '../../src/controller/store/store.js';
import { PROTOCOL_VERSION, controllerMessageSchema, policyDeltaSchema, welcomeSchema } from '../../src/protocol/messages.js';
import { applyPolicyDelta } from '../../src/protocol/delta.js';
import { parsePolicy } from '../../src/policy/schema.js';
import { ADMIN, countingRandom, rule } from './controller-helpers.js';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { Database } from '../../src/controller/store/sqlite-driver.js';
import { createLogger } from '../../src/lib/logger.js';
import { ManualScheduler } from '../../src/lib/scheduler.js';
import { FakeNft } from '../../src/nft/fake.js';
import { createAgent } from '../../src/agent/agent.js';
import { resolveConfig } from '../../src/agent/config.js';
import { MemoryStateStore } from '../../src/agent/state-store.js';
import { wsDialer } from '../../src/agent/ws-dialer.js';

const A = '/v3/proj-a';
const H = { 'x-auth-token': ADMIN };

let clock: FakeClock;
let store: Store;
let ctl: Controller;
let addr: ControllerAddress;

async function startController(agents: Record<string, unknown> = {}): Promise<void> {
  const config = parseControllerConfig({
    listen: { host: '127.0.0.1', port: 0 },
    api: { tokens: [{ name: 'admin', token: ADMIN }] },
    agents: { heartbeat_interval_ms: 1000, hello_timeout_ms: 500, max_message_bytes: 8192, rate_burst: 10, rate_per_second: 1, ...agents },
    metrics: { process_metrics: false },
  });
  ctl = createController({ config, clock, store, logger: silentLogger(), random: countingRandom() });
  addr = await ctl.start();
}

beforeEach(async () => {
  clock = new FakeClock(Date.UTC(2024, 4, 1, 12, 0, 0));
  store = openSqliteStore(':memory:');
  await startController();
});

afterEach(async () => {
  await ctl.stop();
  await store.close();
});

async function api(method: 'GET' | 'POST' | 'PUT' | 'DELETE', url: string, payload?: object) {
  const r = await ctl.app.inject({ method, url, headers: H, ...(payload ? { payload } : {}) });
  return { status: r.statusCode, text: r.body, body: r.body ? JSON.parse(r.body) : null };
}

async function createInstance(id: string, groups: string[], addresses: string[]): Promise<string> {
  const r = await api('POST', `${A}/instances`, { instance: { id, addresses, security_groups: groups } });
  expect(r.status).toBe(201);
  return r.body.token;
}

/** Waits (real time, up to 10 s) until `cond` holds. */
async function waitUntil(cond: () => boolean): Promise<void> {
  for (let waited = 0; !cond(); waited += 20) {
    if (waited > 10_000) throw new Error('condition not reached within 10 s');
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** A test agent: collects frames (raw and parsed) and close events. */
class Agent {
  readonly frames: string[] = [];
  private waiters: (() => void)[] = [];
  private read = 0;
  readonly closed: Promise<{ code: number; reason: string }>;
  readonly opened: Promise<void>;

  constructor(
    readonly ws: WebSocket,
  ) {
    ws.on('message', (d, isBinary) => {
      // the protocol uses text frames only
      this.frames.push(isBinary ? `BINARY FRAME: ${d.toString()}` : d.toString());
      for (const w of this.waiters.splice(0)) w();
    });
    this.closed = new Promise((resolve) => ws.on('close', (code, reason) => resolve({ code, reason: reason.toString() })));
    this.opened = new Promise((resolve, reject) => {
      ws.on('open', () => resolve());
      ws.on('error', reject);
    });
  }

  static async connect(token: string, opts: WebSocket.ClientOptions = {}): Promise<Agent> {
    const a = new Agent(new WebSocket(addr.agentUrl, { headers: { authorization: `Bearer ${token}` }, ...opts }));
    await a.opened;
    return a;
  }

  /** The next frame not yet consumed (raw text). */
  async nextRaw(timeoutMs = 2000): Promise<string> {
    const deadline = Date.now() + timeoutMs;
    while (this.read >= this.frames.length) {
      if (Date.now() > deadline) throw new Error(`no frame within ${timeoutMs} ms (got ${this.frames.length})`);
      await new Promise<void>((r) => {
        this.waiters.push(r);
        setTimeout(r, 20);
      });
    }
    return this.frames[this.read++]!;
  }

  async next(): Promise<any> {
    const raw = await this.nextRaw();
    const msg = JSON.parse(raw);
    expect(controllerMessageSchema.safeParse(msg).success, raw).toBe(true);
    return msg;
  }

  send(msg: unknown): void {
    this.ws.send(typeof msg === 'string' ? msg : JSON.stringify(msg));
  }

  hello(instanceId: string, applied: number | null = null): void {
    this.send({ type: 'hello', protocol: PROTOCOL_VERSION, instance_id: instanceId, agent_version: '0.1.0', applied_revision: applied, hostname: `host-${instanceId}` });
  }

  /** hello, then welcome (+ policy when behind); returns the policy frame's document text, if any */
  async handshake(instanceId: string, applied: number | null = null): Promise<{ welcome: any; policyText: string | null }> {
    this.hello(instanceId, applied);
    const welcome = await this.next();
    expect(welcomeSchema.parse(welcome)).toEqual(welcome);
    if (welcome.desired_revision !== null && applied !== welcome.desired_revision) {
      const raw = await this.nextRaw();
      expect(raw.startsWith('{"type":"policy","policy":')).toBe(true);
      return { welcome, policyText: raw.slice('{"type":"policy","policy":'.length, -1) };
    }
    return { welcome, policyText: null };
  }

  /** Proves nothing else is queued: a duplicate hello must be answered by an error, which arrives after anything sent before. */
  async expectNothingPending(instanceId: string): Promise<void> {
    this.hello(instanceId);
    const m = await this.next();
    expect(m).toMatchObject({ type: 'error', error: { code: 'PROTOCOL' } });
    expect(m.error.message).toMatch(/hello was already received/);
  }

  close(): void {
    this.ws.close();
  }
}

function rejectedStatus(token: string | null, path = '/v1/agent'): Promise<number> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(addr.agentUrl.replace('/v1/agent', path), token ? { headers: { authorization: `Bearer ${token}` } } : {});
    ws.on('unexpected-response', (_req, res) => {
      resolve(res.statusCode ?? 0);
      ws.terminate();
    });
    ws.on('open', () => reject(new Error('the upgrade was accepted')));
    ws.on('error', () => undefined);
  });
}

async function seedWeb(): Promise<string> {
  await api('POST', `${A}/vpc/security-groups`, { security_group: { id: 'sg-web', name: 'web' } });
  await api('POST', `${A}/vpc/security-group-rules`, { security_group_rule: { security_group_id: 'sg-web', ...rule() } });
  return createInstance('ecs-web-1', ['sg-web', 'default'], ['198.18.0.10']);
}

describe('agent hub', () => {
  it('refuses the upgrade without a token, with an unknown token, and on other paths', async () => {
    const token = await seedWeb();
    expect(await rejectedStatus(null)).toBe(401);
    expect(await rejectedStatus('sgi_not_a_token')).toBe(401);
    expect(await rejectedStatus(ADMIN)).toBe(401);
    expect(await rejectedStatus(token, '/v1/other')).toBe(404);
  });

  it('hello -> welcome and the policy, byte-identical to GET .../policy', async () => {
    const token = await seedWeb();
    const agent = await Agent.connect(token);
    const { welcome, policyText } = await agent.handshake('ecs-web-1');
    const http = await api('GET', `${A}/instances/ecs-web-1/policy`);
    expect(welcome).toEqual({ type: 'welcome', protocol: PROTOCOL_VERSION, instance_id: 'ecs-web-1', desired_revision: JSON.parse(http.text).revision });
    expect(policyText).toBe(http.text);
    expect(parsePolicy(JSON.parse(policyText!)).instance.id).toBe('ecs-web-1');
    expect((await api('GET', `${A}/instances/ecs-web-1/status`)).body.status).toMatchObject({ connected: true, agent: { version: '0.1.0', hostname: 'host-ecs-web-1' } });
    agent.close();
  });

  /** ecs-web-1's agent connected, acked the desired revision and went away: its token and that revision. */
  async function ackedAndGone(): Promise<{ token: string; desired: number }> {
    const token = await seedWeb();
    const desired = (await api('GET', `${A}/instances/ecs-web-1/status`)).body.status.desired_revision;
    const first = await Agent.connect(token);
    await first.handshake('ecs-web-1');
    first.send({ type: 'ack', revision: desired, status: 'applied' });
    await first.expectNothingPending('ecs-web-1');
    first.close();
    await first.closed;
    return { token, desired };
  }

  it('sends no policy when the agent already applied the desired revision (and acked it)', async () => {
    const { token, desired } = await ackedAndGone();
    const agent = await Agent.connect(token);
    const { policyText } = await agent.handshake('ecs-web-1', desired);
    expect(policyText).toBeNull();
    await agent.expectNothingPending('ecs-web-1');
    agent.close();
  });

  it('a reconnecting agent costs one agent-state write and no read: the write returns the applied revision it found', async () => {
    const { token, desired } = await ackedAndGone();
    // the first connection's goodbye (last_seen, connected_to) is written before the count starts
    while ((await store.getAgentState('proj-a', 'ecs-web-1'))?.connected_to !== null) await new Promise((r) => setTimeout(r, 10));
    const calls: string[] = [];
    const read = store.getAgentState.bind(store);
    const write = store.updateAgentState.bind(store);
    store.getAgentState = (p, i) => (calls.push('read'), read(p, i));
    store.updateAgentState = (p, i, patch) => (calls.push('write'), write(p, i, patch));
    const agent = await Agent.connect(token);
    expect((await agent.handshake('ecs-web-1', desired)).policyText).toBeNull();
    expect(calls).toEqual(['write']);
    agent.close();
  });

  it('after a restore of an older backup, an agent reporting a revision number handed out again for another document gets that document', async () => {
    // the memory store stands for the database: dump() is the backup, MemoryStore.open(dump) the restore
    await ctl.stop();
    await store.close();
    const db = new MemoryStore();
    store = db;
    await startController();
    const token = await seedWeb();
    const agent = await Agent.connect(token);
    const { welcome } = await agent.handshake('ecs-web-1');
    agent.send({ type: 'ack', revision: welcome.desired_revision, status: 'applied' });
    await agent.expectNothingPending('ecs-web-1');
    const backup = db.dump();
    // after the backup: a change the agent applies (revision r, rule :443)
    await api('POST', `${A}/vpc/security-group-rules`, { security_group_rule: { security_group_id: 'sg-web', ...rule({ multiport: '443' }) } });
    const pushed = JSON.parse(await agent.nextRaw());
    const r = pushed.policy?.revision ?? pushed.revision;
    agent.send({ type: 'ack', revision: r, status: 'applied' });
    await agent.expectNothingPending('ecs-web-1');
    agent.close();
    await agent.closed;

    // restored: the counter is back before r, and the next change (rule :8080) gets r again
    await ctl.stop();
    store = MemoryStore.open(backup);
    await startController();
    await api('POST', `${A}/vpc/security-group-rules`, { security_group_rule: { security_group_id: 'sg-web', ...rule({ multiport: '8080' }) } });
    const current = await api('GET', `${A}/instances/ecs-web-1/policy`);
    expect(JSON.parse(current.text).revision).toBe(r);
    const back = await Agent.connect(token);
    back.hello('ecs-web-1', r);
    expect(await back.next()).toMatchObject({ type: 'welcome', desired_revision: r });
    // the document of revision r as the controller has it now, not the agent's :443 one
    expect(await back.nextRaw()).toBe(`{"type":"policy","policy":${current.text}}`);
    back.close();
  });

  it('an agent ahead of the controller (restored database, or a lie) gets the current document at its own revision, never a raised one', async () => {
    const token = await seedWeb();
    const desired = (await api('GET', `${A}/instances/ecs-web-1/status`)).body.status.desired_revision;
    const agent = await Agent.connect(token);
    const { welcome, policyText } = await agent.handshake('ecs-web-1', 1000);
    expect(welcome.desired_revision).toBe(desired);
    expect(JSON.parse(policyText!).revision).toBe(desired);
    expect((await api('GET', `${A}/instances/ecs-web-1/policy`)).text).toBe(policyText);
    const st = (await api('GET', `${A}/instances/ecs-web-1/status`)).body.status;
    expect(st).toMatchObject({ desired_revision: desired, applied_revision: null, in_sync: false, last_error: { revision: desired, code: 'REVISION_AHEAD' } });
    expect(st.last_error.message).toMatch(/reported revision 1000 in its hello, but the controller handed out at most revision \d+/);
    // the agent accepts the controller's revision and acks it: in sync again
    agent.send({ type: 'ack', revision: desired, status: 'applied' });
    await agent.expectNothingPending('ecs-web-1');
    expect((await api('GET', `${A}/instances/ecs-web-1/status`)).body.status).toMatchObject({ applied_revision: desired, in_sync: true });
    agent.close();
  });

  it('records acks (applied and failed) and port reports', async () => {
    const token = await seedWeb();
    const agent = await Agent.connect(token);
    const { welcome } = await agent.handshake('ecs-web-1');
    const rev = welcome.desired_revision;
    agent.send({ type: 'ack', revision: rev, status: 'failed', duration_ms: 12, error: { code: 'NFT_FAILED', message: 'nft: syntax error' } });
    agent.send({ type: 'ack', revision: rev, status: 'applied', duration_ms: 8, digest: 'abc' });
    const report = {
      revision: rev,
      source: 'ss',
      generated_at: '2024-05-01T12:00:00Z',
      entries: [
        {
          protocol: 'tcp',
          port: 80,
          family: 4,
          status: 'open',
          listeners: [{ address: '0.0.0.0', process: 'nginx' }],
          allowed_by: [{ group_id: 'sg-web', rule_id: 'r-http', peers: '0.0.0.0/0' }],
          denied_by: [],
        },
        { protocol: 'tcp', port: 5432, family: null, status: 'local-only', listeners: [{ address: '127.0.0.1', process: null }], allowed_by: [], denied_by: [] },
      ],
    };
    agent.send({ type: 'ports', report });
    await agent.expectNothingPending('ecs-web-1');
    const st = (await api('GET', `${A}/instances/ecs-web-1/status`)).body.status;
    expect(st).toMatchObject({
      desired_revision: rev,
      applied_revision: rev,
      in_sync: true,
      connected: true,
      last_ack: { revision: rev, status: 'applied', duration_ms: 8, digest: 'abc', error: null, at: '2024-05-01T12:00:00Z' },
      last_error: { revision: rev, code: 'NFT_FAILED', message: 'nft: syntax error' },
    });
    const ports = (await api('GET', `${A}/instances/ecs-web-1/ports`)).body;
    expect(ports).toMatchObject({ instance_id: 'ecs-web-1', received_at: '2024-05-01T12:00:00Z', report });
    const metrics = (await ctl.app.inject({ method: 'GET', url: '/metrics' })).body;
    expect(metrics).toMatch(/secgroup_controller_acks_total\{status="applied"\} 1/);
    expect(metrics).toMatch(/secgroup_controller_acks_total\{status="failed"\} 1/);
    expect(metrics).toMatch(/secgroup_controller_agents_connected 1/);
    expect(metrics).toMatch(/secgroup_controller_policy_pushes_total\{reason="hello"\} 1/);
    agent.close();
  });

  it('a new connection replaces the old one', async () => {
    const token = await seedWeb();
    const first = await Agent.connect(token);
    await first.handshake('ecs-web-1');
    const second = await Agent.connect(token);
    expect(await first.closed).toEqual({ code: 4000, reason: 'replaced by a newer connection' });
    await second.handshake('ecs-web-1');
    expect((await api('GET', `${A}/instances/ecs-web-1/status`)).body.status.connected).toBe(true);
    expect(ctl.hub.connectedCount).toBe(1);
    second.close();
  });

  it('a token for instance X can never act as instance Y', async () => {
    await seedWeb();
    const tokenX = await createInstance('ecs-x', ['default'], ['198.18.0.50']);
    const agent = await Agent.connect(tokenX);
    agent.hello('ecs-web-1');
    expect(await agent.next()).toMatchObject({ type: 'error', error: { code: 'FORBIDDEN' } });
    expect((await agent.closed).code).toBe(1008);
    expect((await api('GET', `${A}/instances/ecs-web-1/status`)).body.status).toMatchObject({ connected: false, agent: { version: null } });
    // and its own acks land on X only
    const again = await Agent.connect(tokenX);
    const { welcome } = await again.handshake('ecs-x');
    again.send({ type: 'ack', revision: welcome.desired_revision, status: 'applied' });
    await again.expectNothingPending('ecs-x');
    expect((await api('GET', `${A}/instances/ecs-x/status`)).body.status.applied_revision).toBe(welcome.desired_revision);
    expect((await api('GET', `${A}/instances/ecs-web-1/status`)).body.status.applied_revision).toBeNull();
    again.close();
  });

  it('a token of another project cannot reach this project\'s instances', async () => {
    await seedWeb();
    const other = await ctl.app.inject({ method: 'POST', url: '/v3/proj-b/instances', headers: H, payload: { instance: { id: 'ecs-web-1' } } });
    const tokenB = other.json().token as string;
    const agent = await Agent.connect(tokenB);
    const { policyText } = await agent.handshake('ecs-web-1');
    expect(JSON.parse(policyText!).group_members.default).toEqual([]);
    expect((await api('GET', `${A}/instances/ecs-web-1/status`)).body.status.connected).toBe(false);
    agent.close();
  });

  it('pushes a change only to the agents of affected instances', async () => {
    const tokenWeb = await seedWeb();
    await api('POST', `${A}/vpc/security-groups`, { security_group: { id: 'sg-db', name: 'db' } });
    const tokenDb = await createInstance('db1', ['sg-db'], ['198.18.0.30']);
    const web = await Agent.connect(tokenWeb);
    const db = await Agent.connect(tokenDb);
    const w0 = await web.handshake('ecs-web-1');
    await db.handshake('db1');
    await api('POST', `${A}/vpc/security-group-rules`, { security_group_rule: { security_group_id: 'sg-web', ...rule({ multiport: '443' }) } });
    const pushed = await web.nextRaw();
    const doc = JSON.parse(pushed).policy;
    expect(doc.revision).toBeGreaterThan(w0.welcome.desired_revision);
    expect(doc.security_groups[0].rules.map((r: any) => r.multiport).filter(Boolean)).toEqual(['80', '443']);
    expect(pushed).toBe(`{"type":"policy","policy":${(await api('GET', `${A}/instances/ecs-web-1/policy`)).text}}`);
    await db.expectNothingPending('db1');
    await web.expectNothingPending('ecs-web-1');
    expect((await ctl.app.inject({ method: 'GET', url: '/metrics' })).body).toMatch(/secgroup_controller_policy_pushes_total\{reason="change"\} 1/);
    web.close();
    db.close();
  });

  it('rotating the token closes the connection and the old token stops working; deleting the instance closes it too', async () => {
    const token = await seedWeb();
    const agent = await Agent.connect(token);
    await agent.handshake('ecs-web-1');
    const rotated = await api('POST', `${A}/instances/ecs-web-1/rotate-token`);
    expect(await agent.closed).toEqual({ code: 4001, reason: 'token rotated' });
    expect(await rejectedStatus(token)).toBe(401);
    const again = await Agent.connect(rotated.body.token);
    await again.handshake('ecs-web-1');
    await api('DELETE', `${A}/instances/ecs-web-1`);
    expect((await again.closed).code).toBe(4002);
    expect(await rejectedStatus(rotated.body.token)).toBe(401);
  });

  it('records agent connects, disconnects (with the close code), refused tokens and token rotations in the audit trail, never a token', async () => {
    const appended: AuditEvent[] = [];
    const append = store.appendAuditEvent.bind(store);
    store.appendAuditEvent = (e) => (appended.push(e), append(e));
    const token = await seedWeb();
    const agent = await Agent.connect(token, { headers: { authorization: `Bearer ${token}`, 'user-agent': 'secgroup-agent/test' } });
    await agent.handshake('ecs-web-1');
    const rotated = await api('POST', `${A}/instances/ecs-web-1/rotate-token`);
    expect((await agent.closed).code).toBe(4001);
    expect(await rejectedStatus(token)).toBe(401);
    expect(await rejectedStatus(null)).toBe(401);
    // the server sees the close after the client: wait for its event (bounded)
    for (let i = 0; i < 100 && !appended.some((e) => e.operation === 'AgentDisconnected'); i++) await new Promise((r) => setTimeout(r, 10));
    await ctl.audit.idle();
    const list = await api('GET', `${A}/audit-events?resource_id=ecs-web-1`);
    expect(list.body.audit_events.map((e: any) => [e.operation, e.actor, e.status, e.detail])).toEqual([
      ['AgentDisconnected', 'agent:ecs-web-1', 200, 'close code 4001'],
      ['RotateInstanceToken', 'admin', 200, null],
      ['AgentConnected', 'agent:ecs-web-1', 101, null],
      ['CreateInstance', 'admin', 201, null],
    ]);
    expect(list.body.audit_events[2]).toMatchObject({ project_id: 'proj-a', resource_type: 'instance', source_ip: '127.0.0.1', user_agent: 'secgroup-agent/test', request_id: null });
    const refused = appended.filter((e) => e.operation === 'AgentRefused');
    expect(refused.map((e) => [e.actor, e.project_id, e.status, e.error_code, e.detail])).toEqual([
      ['anonymous', null, 401, 'SG.0002', 'unknown instance token'],
      ['anonymous', null, 401, 'SG.0002', 'missing token'],
    ]);
    expect(JSON.stringify(appended)).not.toContain(token);
    expect(JSON.stringify(appended)).not.toContain(rotated.body.token);
  });

  it('protocol errors: first frame not a hello, wrong protocol version, invalid frames after hello', async () => {
    const token = await seedWeb();
    const a = await Agent.connect(token);
    a.send({ type: 'ack', revision: 1, status: 'applied' });
    expect(await a.next()).toMatchObject({ type: 'error', error: { code: 'PROTOCOL' } });
    expect((await a.closed).code).toBe(1008);

    const b = await Agent.connect(token);
    b.send({ type: 'hello', protocol: 99, instance_id: 'ecs-web-1', agent_version: 'x', applied_revision: null });
    expect((await b.next()).error.message).toMatch(/protocol version 99 is not supported/);
    expect((await b.closed).code).toBe(1008);

    const c = await Agent.connect(token);
    await c.handshake('ecs-web-1');
    c.send('not json');
    expect((await c.next()).error.message).toMatch(/not JSON/);
    c.send({ type: 'ack', revision: -1, status: 'applied' });
    expect((await c.next()).error.message).toMatch(/revision/);
    c.send({ type: 'ack', revision: 1, status: 'applied', extra: true });
    expect((await c.next()).type).toBe('error');
    c.ws.send(Buffer.from([1, 2, 3]), { binary: true });
    expect((await c.next()).error.message).toMatch(/binary/);
    await c.expectNothingPending('ecs-web-1');
    expect(c.ws.readyState).toBe(WebSocket.OPEN);
    c.close();
  });

  it('bounds frame size and rate', async () => {
    const token = await seedWeb();
    const big = await Agent.connect(token);
    await big.handshake('ecs-web-1');
    big.send('x'.repeat(9000));
    expect((await big.closed).code).toBe(1009);

    const fast = await Agent.connect(token);
    await fast.handshake('ecs-web-1');
    // burst 10 (hello was 1), no refill: the FakeClock does not move
    for (let i = 0; i < 12; i++) fast.send({ type: 'ack', revision: 1, status: 'applied' });
    expect((await fast.closed).code).toBe(1008);
    expect(fast.frames.some((f) => /frames in a burst/.test(f))).toBe(true);
  });

  it('drops an agent that stops reading once more than agents.max_unsent_bytes wait for it, instead of queueing every document (resyncs) in the controller', async () => {
    await ctl.stop();
    const config = parseControllerConfig({
      listen: { host: '127.0.0.1', port: 0 },
      api: { tokens: [{ name: 'admin', token: ADMIN }] },
      agents: { heartbeat_interval_ms: 1000, hello_timeout_ms: 500, max_message_bytes: 8192, rate_burst: 400, rate_per_second: 1, max_unsent_bytes: 1024 * 1024 },
      quotas: { entries_per_address_group: 20_000 },
      metrics: { process_metrics: false },
    });
    ctl = createController({ config, clock, store, logger: silentLogger(), random: countingRandom() });
    addr = await ctl.start();
    // a document of about 400 kB: 20 000 members of an address group
    const ipSet = Array.from({ length: 20_000 }, (_, i) => `198.${18 + (i >> 16)}.${(i >> 8) & 255}.${i & 255}/32`);
    expect((await api('POST', `${A}/vpc/address-groups`, { address_group: { id: 'ag-big', name: 'big', ip_version: 4, ip_set: ipSet } })).status).toBe(201);
    expect((await api('POST', `${A}/vpc/security-groups`, { security_group: { id: 'sg-big', name: 'big' } })).status).toBe(201);
    const r = { security_group_id: 'sg-big', ...rule({ remote_ip_prefix: undefined, remote_address_group_id: 'ag-big' }) };
    expect((await api('POST', `${A}/vpc/security-group-rules`, { security_group_rule: r })).status).toBe(201);
    const token = await createInstance('ecs-big', ['sg-big'], ['198.18.0.10']);
    const slow = await Agent.connect(token);
    const { welcome } = await slow.handshake('ecs-big');
    (slow.ws as any)._socket.pause(); // stops reading: documents fill the kernel's buffers, then the controller's
    for (let i = 0; i < 300 && slow.ws.readyState === WebSocket.OPEN; i++) {
      slow.send({ type: 'resync', have_revision: welcome.desired_revision, reason: 'test' });
      await new Promise((res) => setTimeout(res, 5));
    }
    await waitUntil(() => !ctl.hub.isConnected('proj-a', 'ecs-big'));
    // the heartbeat had no part in it: the FakeClock did not move
    expect(clock.now()).toBe(Date.UTC(2024, 4, 1, 12, 0, 0));
    const metrics = await ctl.app.inject({ method: 'GET', url: '/metrics', headers: H });
    expect(metrics.body).toMatch(/secgroup_controller_agent_messages_rejected_total\{reason="not_reading"\} 1/);
    // it comes back and gets the current document
    const again = await Agent.connect(token);
    expect((await again.handshake('ecs-big')).policyText).not.toBeNull();
    again.close();
  });

  it('lets an agent ack every document it is sent, however many come in a burst (acks do not draw on the rate limit)', async () => {
    const token = await seedWeb();
    const agent = await Agent.connect(token);
    await agent.handshake('ecs-web-1');
    // burst 10, no refill (the FakeClock does not move): 15 changes, each acked
    for (let i = 0; i < 15; i++) {
      await api('POST', `${A}/vpc/security-group-rules`, { security_group_rule: { security_group_id: 'sg-web', ...rule({ multiport: String(3000 + i) }) } });
      const m = JSON.parse(await agent.nextRaw()) as { type: string; policy?: { revision: number } };
      expect(m.type).toBe('policy');
      agent.send({ type: 'ack', revision: m.policy!.revision, status: 'applied', duration_ms: 1 });
    }
    await agent.expectNothingPending('ecs-web-1');
    expect(agent.ws.readyState).toBe(WebSocket.OPEN);
    // frames that answer nothing still do
    for (let i = 0; i < 12; i++) agent.send({ type: 'ack', revision: 1, status: 'applied' });
    expect((await agent.closed).code).toBe(1008);
  });

  it('closes connections that send no hello in time, and agents that stop answering pings', async () => {
    const token = await seedWeb();
    const silent = await Agent.connect(token);
    await clock.advance(600);
    expect((await silent.closed).code).toBe(1008);

    const dead = await Agent.connect(token, { autoPong: false });
    await dead.handshake('ecs-web-1');
    await clock.advance(1000); // ping
    await new Promise((r) => setTimeout(r, 50));
    expect(dead.ws.readyState).toBe(WebSocket.OPEN);
    await clock.advance(1000); // no pong since: terminated
    expect((await dead.closed).code).toBe(1006);

    const alive = await Agent.connect(token);
    await alive.handshake('ecs-web-1');
    for (let i = 0; i < 3; i++) {
      await clock.advance(1000);
      await new Promise((r) => setTimeout(r, 30));
    }
    expect(alive.ws.readyState).toBe(WebSocket.OPEN);
    alive.close();
  });

  describe('membership deltas', () => {
    const policyOf = async (id: string) => (await api('GET', `${A}/instances/${id}/policy`)).text;
    const metrics = async () => (await ctl.app.inject({ method: 'GET', url: '/metrics' })).body;

    it('a membership change is sent as a policy_delta that turns the previous document into the new one, byte for byte', async () => {
      const token = await seedWeb();
      const agent = await Agent.connect(token);
      const { policyText } = await agent.handshake('ecs-web-1');
      let prev = policyText!;
      // the default group references itself: a new member of default changes only ecs-web-1's member list
      await createInstance('ecs-web-2', ['default'], ['198.18.0.9', 'fd00:5ec::9']);
      const raw = await agent.nextRaw();
      const delta = policyDeltaSchema.parse(JSON.parse(raw));
      expect(delta).toEqual({
        type: 'policy_delta',
        base_revision: JSON.parse(prev).revision,
        revision: JSON.parse(await policyOf('ecs-web-1')).revision,
        group_members: { default: { add: ['198.18.0.9', 'fd00:5ec::9'], remove: [] } },
      });
      let applied = applyPolicyDelta(JSON.parse(prev), delta);
      expect(JSON.stringify(applied)).toBe(await policyOf('ecs-web-1'));
      agent.send({ type: 'ack', revision: delta.revision, status: 'applied', duration_ms: 1 });
      prev = JSON.stringify(applied);

      // chained against the delta's revision: an address change (one added, one removed) and a removal
      await api('PUT', `${A}/instances/ecs-web-2`, { instance: { addresses: ['198.18.0.200'] } });
      const d2 = policyDeltaSchema.parse(JSON.parse(await agent.nextRaw()));
      expect(d2.base_revision).toBe(delta.revision);
      expect(d2.group_members).toEqual({ default: { add: ['198.18.0.200'], remove: ['198.18.0.9', 'fd00:5ec::9'] } });
      applied = applyPolicyDelta(JSON.parse(prev), d2);
      expect(JSON.stringify(applied)).toBe(await policyOf('ecs-web-1'));
      prev = JSON.stringify(applied);
      await api('DELETE', `${A}/instances/ecs-web-2`);
      const d3 = policyDeltaSchema.parse(JSON.parse(await agent.nextRaw()));
      expect(JSON.stringify(applyPolicyDelta(JSON.parse(prev), d3))).toBe(await policyOf('ecs-web-1'));
      await agent.expectNothingPending('ecs-web-1');

      const st = (await api('GET', `${A}/instances/ecs-web-1/status`)).body.status;
      expect(st).toMatchObject({ applied_revision: delta.revision, last_ack: { revision: delta.revision, status: 'applied' } });
      expect(await metrics()).toMatch(/secgroup_controller_policy_deltas_total 3/);
      expect(await metrics()).toMatch(/secgroup_controller_policy_pushes_total\{reason="change"\} 3/);
      agent.close();
    });

    it('a rule change is sent in full', async () => {
      const token = await seedWeb();
      const agent = await Agent.connect(token);
      await agent.handshake('ecs-web-1');
      await createInstance('ecs-web-2', ['default'], ['198.18.0.9']);
      expect(JSON.parse(await agent.nextRaw()).type).toBe('policy_delta');
      await api('POST', `${A}/vpc/security-group-rules`, { security_group_rule: { security_group_id: 'sg-web', ...rule({ multiport: '443' }) } });
      expect(await agent.nextRaw()).toBe(`{"type":"policy","policy":${await policyOf('ecs-web-1')}}`);
      // a new referenced group (a group_members entry appears) is not a delta either
      await api('POST', `${A}/vpc/security-groups`, { security_group: { id: 'sg-db', name: 'db' } });
      await api('POST', `${A}/vpc/security-group-rules`, { security_group_rule: { security_group_id: 'sg-web', ...rule({ multiport: '5432', remote_ip_prefix: null, remote_group_id: 'sg-db' }) } });
      expect(await agent.nextRaw()).toBe(`{"type":"policy","policy":${await policyOf('ecs-web-1')}}`);
      // and after a full document, a membership change is a delta against it
      await createInstance('db1', ['sg-db'], ['198.18.0.30']);
      const d = policyDeltaSchema.parse(JSON.parse(await agent.nextRaw()));
      expect(d.group_members).toEqual({ 'sg-db': { add: ['198.18.0.30'], remove: [] } });
      await agent.expectNothingPending('ecs-web-1');
      expect(await metrics()).toMatch(/secgroup_controller_policy_deltas_total 2/);
      agent.close();
    });

    it('answers resync with the full current document', async () => {
      const token = await seedWeb();
      const agent = await Agent.connect(token);
      await agent.handshake('ecs-web-1');
      await createInstance('ecs-web-2', ['default'], ['198.18.0.9']);
      const delta = JSON.parse(await agent.nextRaw());
      expect(delta.type).toBe('policy_delta');
      agent.send({ type: 'resync', have_revision: delta.base_revision - 1, reason: 'the base revision is not here' });
      expect(await agent.nextRaw()).toBe(`{"type":"policy","policy":${await policyOf('ecs-web-1')}}`);
      expect(JSON.parse(await policyOf('ecs-web-1')).revision).toBe(delta.revision);
      // a resync before anything changed gets the same full document again
      agent.send({ type: 'resync', have_revision: null, reason: 'state lost' });
      expect(await agent.nextRaw()).toBe(`{"type":"policy","policy":${await policyOf('ecs-web-1')}}`);
      await agent.expectNothingPending('ecs-web-1');
      expect(await metrics()).toMatch(/secgroup_controller_policy_pushes_total\{reason="resync"\} 2/);
      agent.close();
    });

    it('a new revision of the same document (read from the store, not handed over) is sent in full', async () => {
      const token = await seedWeb();
      const agent = await Agent.connect(token);
      const { welcome } = await agent.handshake('ecs-web-1');
      // the same document committed again (a new revision, nothing else changed)
      const same = await store.getPolicy('proj-a', 'ecs-web-1');
      const hash = (await store.loadProject('proj-a'))!.instances.find((i) => i.id === 'ecs-web-1')!.policy_hash!;
      const committed = await store.mutate('proj-a', () => ({ ops: [{ op: 'setPolicy', instanceId: 'ecs-web-1', body: same!.body, hash }], value: null }));
      const raised = { revision: committed.revisions.get('ecs-web-1')! };
      expect(raised.revision).toBeGreaterThan(welcome.desired_revision);
      ctl.hub.notify('proj-a', ['ecs-web-1']);
      expect(await agent.nextRaw()).toBe(`{"type":"policy","policy":${await policyOf('ecs-web-1')}}`);
      expect(JSON.parse(await policyOf('ecs-web-1')).revision).toBe(raised.revision);
      // and deltas continue against it
      await createInstance('ecs-web-2', ['default'], ['198.18.0.9']);
      expect(policyDeltaSchema.parse(JSON.parse(await agent.nextRaw())).base_revision).toBe(raised.revision);
      await agent.expectNothingPending('ecs-web-1');
      agent.close();
    });

    it('with agents.deltas false every change is sent in full', async () => {
      await ctl.stop();
      await startController({ deltas: false });
      const token = await seedWeb();
      const agent = await Agent.connect(token);
      await agent.handshake('ecs-web-1');
      await createInstance('ecs-web-2', ['default'], ['198.18.0.9']);
      expect(await agent.nextRaw()).toBe(`{"type":"policy","policy":${await policyOf('ecs-web-1')}}`);
      await api('PUT', `${A}/instances/ecs-web-2`, { instance: { addresses: ['198.18.0.200'] } });
      expect(await agent.nextRaw()).toBe(`{"type":"policy","policy":${await policyOf('ecs-web-1')}}`);
      await agent.expectNothingPending('ecs-web-1');
      expect(await metrics()).toMatch(/secgroup_controller_policy_deltas_total 0/);
      agent.close();
    });
  });

  describe('revisions no agent can poison (issue 12)', () => {
    const B = '/v3/proj-b';
    const status = async (base: string, id: string) => (await api('GET', `${base}/instances/${id}/status`)).body.status;

    /** an honest agent: takes every policy it is sent and acks it */
    async function honest(token: string, id: string): Promise<Agent> {
      const a = await Agent.connect(token);
      const { welcome } = await a.handshake(id);
      a.send({ type: 'ack', revision: welcome.desired_revision, status: 'applied' });
      return a;
    }

    it('replays the attack: a hello with applied_revision 2^53-1 moves no revision of any other instance or project; only the attacker\'s instance shows REVISION_AHEAD', async () => {
      const attackerToken = await seedWeb();
      const web2 = await createInstance('ecs-web-2', ['sg-web', 'default'], ['198.18.0.11']);
      const b1 = (await api('POST', `${B}/instances`, { instance: { id: 'ecs-b1', addresses: ['198.18.1.1'], security_groups: ['default'] } })).body.token;
      const b2 = (await api('POST', `${B}/instances`, { instance: { id: 'ecs-b2', addresses: ['198.18.1.2'], security_groups: ['default'] } })).body.token;
      const agents = { 'ecs-web-2': await honest(web2, 'ecs-web-2'), 'ecs-b1': await honest(b1, 'ecs-b1'), 'ecs-b2': await honest(b2, 'ecs-b2') };
      const before = Math.max(...(await Promise.all([status(A, 'ecs-web-1'), status(A, 'ecs-web-2'), status(B, 'ecs-b1'), status(B, 'ecs-b2')])).map((st) => st.desired_revision));

      const attacker = await Agent.connect(attackerToken);
      const { welcome, policyText } = await attacker.handshake('ecs-web-1', Number.MAX_SAFE_INTEGER);
      expect(welcome.desired_revision).toBeLessThanOrEqual(before);
      expect(JSON.parse(policyText!).revision).toBe(welcome.desired_revision);
      // its acks of revisions never handed out are not trusted either
      attacker.send({ type: 'ack', revision: Number.MAX_SAFE_INTEGER, status: 'applied' });
      attacker.send({ type: 'ack', revision: welcome.desired_revision + 1, status: 'applied' });
      // a number past 2^53-1 is not a revision at all
      attacker.send(`{"type":"ack","revision":9007199254740993,"status":"applied"}`);
      const refused = await attacker.next();
      expect(refused).toMatchObject({ type: 'error', error: { code: 'PROTOCOL' } });
      expect(refused.error.message).toMatch(/revision: a revision is an integer from 0 to 9007199254740991/);

      // a rule change in each project
      expect((await api('POST', `${A}/vpc/security-group-rules`, { security_group_rule: { security_group_id: 'sg-web', ...rule({ multiport: '443' }) } })).status).toBe(201);
      expect((await api('POST', `${B}/vpc/security-group-rules`, { security_group_rule: { security_group_id: 'default', ...rule({ multiport: '22' }) } })).status).toBe(201);
      for (const [id, a] of Object.entries(agents)) {
        const raw = await a.nextRaw();
        expect(raw.startsWith('{"type":"policy","policy":'), id).toBe(true);
        const revision = JSON.parse(raw).policy.revision as number;
        // the next revisions of the one counter: small, right after those before the attack
        expect(revision, id).toBeGreaterThan(before);
        expect(revision, id).toBeLessThanOrEqual(before + 4);
        a.send({ type: 'ack', revision, status: 'applied' });
        await a.expectNothingPending(id);
        const st = await status(id.startsWith('ecs-b') ? B : A, id);
        expect(st, id).toMatchObject({ desired_revision: revision, applied_revision: revision, in_sync: true, last_error: null });
      }
      // the attacker's own instance got its new document with a small revision too, and shows what happened
      const own = JSON.parse(await attacker.nextRaw());
      expect(own.policy.revision).toBeGreaterThan(before);
      expect(own.policy.revision).toBeLessThanOrEqual(before + 4);
      await attacker.expectNothingPending('ecs-web-1');
      const st = await status(A, 'ecs-web-1');
      expect(st).toMatchObject({ desired_revision: own.policy.revision, applied_revision: null, in_sync: false, last_ack: null, last_error: { code: 'REVISION_AHEAD' } });
      expect(st.last_error.message).toMatch(/reported revision \d+ in its ack/);
      // the counter is unaffected: a new instance in another project continues right after
      await api('POST', `${B}/instances`, { instance: { id: 'ecs-b3', addresses: ['198.18.1.3'], security_groups: ['default'] } });
      expect((await status(B, 'ecs-b3')).desired_revision).toBeLessThanOrEqual(before + 10);
      attacker.close();
      for (const a of Object.values(agents)) a.close();
    });

    it('end to end: a database poisoned by the old bug is repaired on open, and an agent that applied a poisoned revision converges on the controller\'s', async () => {
      const dir = mkdtempSync(join(tmpdir(), 'sg-poison-'));
      try {
        const file = join(dir, 'controller.db');
        await ctl.stop();
        await store.close();
        store = openSqliteStore(file);
        await startController();
        const token = await seedWeb();
        const handed = JSON.parse((await api('GET', `${A}/instances/ecs-web-1/policy`)).text);
        await ctl.stop();
        await store.close();
        // what the old bug left: a hello with applied_revision 2^50 - 1 raised the counter and this instance to 2^50,
        // and the agent applied that document
        const huge = 2 ** 50;
        const raw = new Database(file);
        raw.prepare("UPDATE meta SET value = ? WHERE key = 'revision_counter'").run(huge);
        raw.prepare("UPDATE instances SET revision = ? WHERE id = 'ecs-web-1'").run(huge);
        raw.close();
        const lines: Record<string, unknown>[] = [];
        const sink = new Writable({
          write(chunk: Buffer, _enc, cb) {
            for (const l of chunk.toString().split('\n')) if (l.trim()) lines.push(JSON.parse(l) as Record<string, unknown>);
            cb();
          },
        });
        const logger = createLogger({ level: 'info', destination: sink });
        store = openSqliteStore(file, { logger });
        expect(lines.filter((l) => l.event === 'revision_counter_repaired')).toEqual([expect.objectContaining({ level: 50, old_counter: String(huge), new_counter: handed.revision })]);
        await startController();
        const desired = (await api('GET', `${A}/instances/ecs-web-1/status`)).body.status.desired_revision;
        expect(desired).toBe(handed.revision);

        const nft = new FakeNft();
        const lkg = new MemoryStateStore(parsePolicy({ ...handed, revision: huge }));
        const agent = createAgent({
          config: resolveConfig({ instance_id: 'ecs-web-1', http_listen: null, controller: { url: addr.agentUrl, token } }, {}),
          nft,
          store: lkg,
          clock,
          logger,
          scheduler: new ManualScheduler(),
          resolver: { resolve: async () => [] },
          dialer: wsDialer({ url: addr.agentUrl, token: () => token, maxPayload: 8192, handshakeTimeoutMs: 2000 }),
        });
        await agent.start();
        expect(agent.status().appliedRevision).toBe(huge);
        const status = async () => (await api('GET', `${A}/instances/ecs-web-1/status`)).body.status;
        const until = async (what: string, ok: () => Promise<boolean>) => {
          // a bounded wait (real sockets), not a timing assertion
          for (let i = 0; i < 1000 && !(await ok()); i++) await new Promise((r) => setTimeout(r, 10));
          expect(await ok(), what).toBe(true);
        };
        await until('the agent applied the controller\'s revision', async () => (await status()).in_sync === true);
        expect(agent.status().appliedRevision).toBe(desired);
        expect(lkg.policy?.revision).toBe(desired);
        expect(nft.state?.comment).toContain(`revision=${desired}`);
        expect(lines.filter((l) => l.event === 'controller_behind')).toEqual([expect.objectContaining({ desired, ours: huge })]);
        // the controller saw the agent ahead (its hello) and recorded it on this instance
        expect((await status()).last_error).toMatchObject({ code: 'REVISION_AHEAD', revision: desired });
        // and the next change, small and after it, is applied as usual
        await api('POST', `${A}/vpc/security-group-rules`, { security_group_rule: { security_group_id: 'sg-web', ...rule({ multiport: '443' }) } });
        await until('the agent applied the next revision', async () => {
          const st = await status();
          return st.in_sync === true && st.applied_revision === desired + 1;
        });
        expect(agent.status().appliedRevision).toBe(desired + 1);
        await agent.stop();
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    }, 30_000);

    it('an ack is bounded by the stored revision; a stream of bogus acks costs one store read, not one each', async () => {
      const token = await seedWeb();
      const agent = await Agent.connect(token);
      await agent.handshake('ecs-web-1');
      let reads = 0;
      const getPolicy = store.getPolicy.bind(store);
      store.getPolicy = (p, i) => (reads++, getPolicy(p, i));
      // a revision committed (in the store, not pushed on this connection yet) was handed out: the store is the bound
      const same = await getPolicy('proj-a', 'ecs-web-1');
      const hash = (await store.loadProject('proj-a'))!.instances.find((i) => i.id === 'ecs-web-1')!.policy_hash!;
      const next = (await store.mutate('proj-a', () => ({ ops: [{ op: 'setPolicy', instanceId: 'ecs-web-1', body: same!.body, hash }], value: null }))).revisions.get('ecs-web-1')!;
      agent.send({ type: 'ack', revision: next, status: 'applied' });
      await agent.expectNothingPending('ecs-web-1');
      expect(reads).toBe(1);
      expect(await status(A, 'ecs-web-1')).toMatchObject({ applied_revision: next, in_sync: true, last_ack: { revision: next, status: 'applied' }, last_error: null });
      for (let i = 1; i <= 5; i++) agent.send({ type: 'ack', revision: next + i, status: 'applied' });
      await agent.expectNothingPending('ecs-web-1');
      expect(reads).toBe(2);
      expect(await status(A, 'ecs-web-1')).toMatchObject({ applied_revision: next, last_ack: { revision: next }, last_error: { code: 'REVISION_AHEAD', revision: next } });
      agent.close();
    });

    it('a port report against a revision never handed out is refused and not stored', async () => {
      const token = await seedWeb();
      const agent = await Agent.connect(token);
      const { welcome } = await agent.handshake('ecs-web-1');
      agent.send({ type: 'ports', report: { revision: welcome.desired_revision + 5, source: 'ss', generated_at: '2024-05-01T12:00:00Z', entries: [] } });
      const m = await agent.next();
      expect(m).toMatchObject({ type: 'error', error: { code: 'PROTOCOL' } });
      expect(m.error.message).toMatch(/never handed out/);
      expect((await api('GET', `${A}/instances/ecs-web-1/ports`)).body.report).toBeNull();
      expect((await status(A, 'ecs-web-1')).last_error).toMatchObject({ code: 'REVISION_AHEAD', revision: welcome.desired_revision });
      agent.send({ type: 'ports', report: { revision: welcome.desired_revision, source: 'ss', generated_at: '2024-05-01T12:00:00Z', entries: [] } });
      await agent.expectNothingPending('ecs-web-1');
      expect((await api('GET', `${A}/instances/ecs-web-1/ports`)).body.report).toMatchObject({ revision: welcome.desired_revision });
      agent.close();
    });

    it('refuses a hello whose values are out of bounds, naming the field', async () => {
      const token = await seedWeb();
      const cases: [Record<string, unknown>, RegExp][] = [
        [{ applied_revision: 2 ** 53 }, /applied_revision: a revision is an integer from 0 to 9007199254740991/],
        [{ applied_revision: -1 }, /applied_revision: a revision is never negative/],
        [{ hostname: 'web\u001b[31m' }, /hostname: must not contain control characters/],
        [{ agent_version: 'x'.repeat(65) }, /agent_version: Too big/],
        [{ instance_id: 'x'.repeat(65) }, /instance_id: Too big/],
      ];
      for (const [over, expected] of cases) {
        const a = await Agent.connect(token);
        a.send({ type: 'hello', protocol: PROTOCOL_VERSION, instance_id: 'ecs-web-1', agent_version: '0.1.0', applied_revision: null, ...over });
        const m = await a.next();
        expect(m.error.message, JSON.stringify(over)).toMatch(expected);
        expect((await a.closed).code).toBe(1008);
      }
      expect((await status(A, 'ecs-web-1')).agent).toEqual({ version: null, hostname: null });
    });
  });

  it('stop() closes agent connections with 1001', async () => {
    const token = await seedWeb();
    const agent = await Agent.connect(token);
    await agent.handshake('ecs-web-1');
    await ctl.stop();
    expect((await agent.closed).code).toBe(1001);
  });
});
