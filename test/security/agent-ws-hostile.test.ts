/* eslint-disable @typescript-eslint/no-explicit-any -- frames, bodies and log lines are untyped JSON, checked by the assertions */
/**
 * Hostile traffic on the agents' WebSocket endpoint of a real controller on
 * 127.0.0.1 (issue 12): bad tokens on the upgrade, frames that are not the
 * protocol, floods, oversized frames, port reports naming other instances, a
 * client that never reads, many connections with one token. Each case checks
 * the answer docs/protocol.md ("Hostile or broken agents") documents, and
 * that a healthy agent connected alongside still gets its policy updates and
 * the API still answers. Time is a FakeClock: the hello timeout, heartbeats
 * and the frame rate limit's refill move only when a test advances it.
 */
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import { PROTOCOL_VERSION } from '../../src/protocol/messages.js';
import { ADMIN, httpCall, startController, type Running } from './helpers.js';

/** hostile clients connect from their own loopback address, so their failed authentications do not limit the healthy agent or the API */
const HOSTILE_SOURCE = '127.0.0.9';
const AGENTS = { heartbeat_interval_ms: 1000, hello_timeout_ms: 500, max_message_bytes: 8192, rate_burst: 10, rate_per_second: 1 };
const HTTP = { auth_failure_burst: 3, auth_failures_per_minute: 6 };

/** A WebSocket client that records every frame it receives and how it was closed. */
class WsClient {
  readonly frames: any[] = [];
  private read = 0;
  readonly closed: Promise<{ code: number; reason: string }>;

  constructor(readonly ws: WebSocket) {
    ws.on('message', (d, isBinary) => this.frames.push(isBinary ? { binary: true } : JSON.parse(d.toString())));
    ws.on('error', () => {});
    this.closed = new Promise((resolve) => ws.on('close', (code, reason) => resolve({ code, reason: reason.toString() })));
  }

  static open(token: string, localAddress = '127.0.0.1'): Promise<WsClient> {
    const c = new WsClient(new WebSocket(run!.address.agentUrl, { headers: { authorization: `Bearer ${token}` }, localAddress }));
    clients.push(c);
    return new Promise((resolve, reject) => {
      c.ws.once('open', () => resolve(c));
      c.ws.once('unexpected-response', (_req, res) => reject(new Error(`upgrade refused: ${res.statusCode}`)));
    });
  }

  /** The next frame not yet consumed, waiting up to two seconds of real time. */
  async next(): Promise<any> {
    for (let waited = 0; this.read >= this.frames.length; waited += 10) {
      if (waited > 2000) throw new Error(`no frame within 2 s (received ${JSON.stringify(this.frames)})`);
      await new Promise((r) => setTimeout(r, 10));
    }
    return this.frames[this.read++];
  }

  send(msg: unknown): void {
    this.ws.send(typeof msg === 'string' ? msg : JSON.stringify(msg));
  }

  hello(instanceId: string): void {
    this.send({ type: 'hello', protocol: PROTOCOL_VERSION, instance_id: instanceId, agent_version: 'test', applied_revision: null });
  }

  /** hello, welcome and the first policy; returns the policy's revision */
  async handshake(instanceId: string): Promise<number> {
    this.hello(instanceId);
    expect(await this.next()).toMatchObject({ type: 'welcome', instance_id: instanceId });
    const p = await this.next();
    expect(p.type).toBe('policy');
    this.send({ type: 'ack', revision: p.policy.revision, status: 'applied', duration_ms: 1 });
    return p.policy.revision;
  }

  /** An error frame proves everything sent before it was handled: the hub answers a duplicate hello in order. */
  async expectOpenAndIdle(instanceId: string): Promise<void> {
    this.hello(instanceId);
    expect(await this.next()).toEqual({ type: 'error', error: { code: 'PROTOCOL', message: 'hello was already received on this connection' } });
    expect(this.ws.readyState).toBe(WebSocket.OPEN);
  }
}

let run: Running | null = null;
let clients: WsClient[] = [];
let tokens: Record<'ok' | 'bad' | 'other' | 'projB', string>;
let healthy: WsClient;
let port = 3000;

async function api(method: 'GET' | 'POST' | 'PUT' | 'DELETE', url: string, payload?: object): Promise<{ status: number; body: any }> {
  const r = await run!.controller.app.inject({ method, url, headers: { 'x-auth-token': ADMIN }, ...(payload ? { payload } : {}) });
  return { status: r.statusCode, body: r.body ? JSON.parse(r.body) : null };
}

async function instance(project: string, id: string, groups: string[], address: string): Promise<string> {
  const r = await api('POST', `/v3/${project}/instances`, { instance: { id, name: id, addresses: [address], security_groups: groups } });
  expect(r.status).toBe(201);
  return r.body.token as string;
}

beforeEach(async () => {
  run = await startController(HTTP, AGENTS);
  expect((await api('POST', '/v3/proj-a/vpc/security-groups', { security_group: { id: 'sg-ok', name: 'ok' } })).status).toBe(201);
  tokens = {
    ok: await instance('proj-a', 'ecs-ok', ['sg-ok'], '198.18.0.11'),
    bad: await instance('proj-a', 'ecs-bad', ['default'], '198.18.0.12'),
    other: await instance('proj-a', 'ecs-other', ['default'], '198.18.0.13'),
    projB: await instance('proj-b', 'ecs-b', ['default'], '198.18.0.14'),
  };
  healthy = await WsClient.open(tokens.ok);
  await healthy.handshake('ecs-ok');
});

afterEach(async () => {
  for (const c of clients) c.ws.terminate();
  clients = [];
  await run?.stop();
  run = null;
});

/** The healthy agent still gets a rule change pushed, and the API answers over TCP. */
async function expectHealthyServed(): Promise<void> {
  const rule = { security_group_id: 'sg-ok', direction: 'ingress', ethertype: 'IPv4', protocol: 'tcp', multiport: String(port++), remote_ip_prefix: '198.18.0.0/24' };
  const created = await api('POST', '/v3/proj-a/vpc/security-group-rules', { security_group_rule: rule });
  expect(created.status).toBe(201);
  const m = await healthy.next();
  expect(m.type).toBe('policy');
  const rules = m.policy.security_groups.flatMap((g: any) => g.rules.map((r: any) => r.id));
  expect(rules).toContain(created.body.security_group_rule.id);
  healthy.send({ type: 'ack', revision: m.policy.revision, status: 'applied', duration_ms: 1 });
  const list = await httpCall(run!.address.port, { path: '/v3/proj-a/instances/ecs-ok', headers: { 'x-auth-token': ADMIN } });
  expect(list.status).toBe(200);
  expect(healthy.ws.readyState).toBe(WebSocket.OPEN);
  expect(run!.controller.hub.isConnected('proj-a', 'ecs-ok')).toBe(true);
}

/** Status and body of a refused upgrade. */
function refusedUpgrade(headers: Record<string, string>, localAddress = HOSTILE_SOURCE): Promise<{ status: number; body: any }> {
  const ws = new WebSocket(run!.address.agentUrl, { headers, localAddress });
  ws.on('error', () => {});
  return new Promise((resolve, reject) => {
    ws.once('open', () => reject(new Error('the upgrade was accepted')));
    ws.once('unexpected-response', (_req, res) => {
      let text = '';
      res.on('data', (d: Buffer) => (text += d.toString()));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: JSON.parse(text) }));
    });
  });
}

const auditLines = (operation: string) => run!.logs.filter((l) => l.event === 'audit' && l.operation === operation);

describe('the upgrade', () => {
  it('no token, a wrong token and an API token are refused with 401, recorded as AgentRefused; then the source is rate limited', async () => {
    const refusals = [
      [{}, 'missing "Authorization: Bearer <instance token>"', 'missing token'],
      [{ authorization: 'Bearer sgi_wrong-token-0123456789' }, 'unknown instance token', 'unknown instance token'],
      // an API token (admin of every project) is not an instance token
      [{ authorization: `Bearer ${ADMIN}` }, 'unknown instance token', 'unknown instance token'],
    ] as const;
    for (const [headers, message] of refusals) {
      const r = await refusedUpgrade(headers);
      expect(r.status).toBe(401);
      expect(r.body).toEqual({ request_id: '', error_code: 'SG.0002', error_msg: message });
    }
    expect(auditLines('AgentRefused').map((l) => [l.actor, l.project_id, l.status, l.error_code, l.source_ip, l.detail])).toEqual(
      refusals.map(([, , detail]) => ['anonymous', null, 401, 'SG.0002', HOSTILE_SOURCE, detail]),
    );
    // over the budget (burst 3): 429 before the token is looked at, a valid one included
    const limited = await refusedUpgrade({ authorization: `Bearer ${tokens.bad}` });
    expect(limited.status).toBe(429);
    expect(limited.body.error_code).toBe('SG.0011');
    expect(run!.logs.filter((l) => l.event === 'auth_rate_limited').map((l) => [l.endpoint, l.source])).toEqual([['agent', HOSTILE_SOURCE]]);
    expect(run!.controller.hub.isConnected('proj-a', 'ecs-bad')).toBe(false);
    await expectHealthyServed();
  });

  it("another project's instance token reaches only its own instance: a hello naming this project's instance is refused (1008)", async () => {
    const c = await WsClient.open(tokens.projB, HOSTILE_SOURCE);
    c.hello('ecs-ok');
    const e = await c.next();
    expect(e).toMatchObject({ type: 'error', error: { code: 'FORBIDDEN' } });
    expect(e.error.message).toBe('this token belongs to instance "ecs-b", not "ecs-ok"');
    expect(await c.closed).toEqual({ code: 1008, reason: 'wrong_instance' });
    expect(run!.controller.hub.isConnected('proj-b', 'ecs-b')).toBe(false);
    await expectHealthyServed();
  });
});

describe('frames before hello close the connection with 1008', () => {
  const cases: [string, (c: WsClient) => void, string, RegExp][] = [
    ['not JSON', (c) => c.send('{"type":"hello",'), 'invalid', /^expected hello: /],
    ['an unknown message type', (c) => c.send({ type: 'shell', command: 'nft flush ruleset' }), 'invalid', /^expected hello: /],
    ['a hello of the wrong shape', (c) => c.send({ type: 'hello', protocol: '1', instance_id: ['ecs-bad'], agent_version: 1, applied_revision: -5 }), 'invalid', /^expected hello: /],
    ['a hello with extra fields', (c) => c.send({ type: 'hello', protocol: PROTOCOL_VERSION, instance_id: 'ecs-bad', agent_version: 'x', applied_revision: null, admin: true }), 'invalid', /^expected hello: /],
    ['an ack', (c) => c.send({ type: 'ack', revision: 1, status: 'applied' }), 'no_hello', /^the first frame must be a hello, got ack$/],
    ['a port report', (c) => c.send({ type: 'ports', report: { revision: null, source: 'ss', generated_at: '2024-05-01T12:00:00.000Z', entries: [] } }), 'no_hello', /got ports$/],
    ['JSON that is not an object', (c) => c.send('[1,2,3]'), 'invalid', /^expected hello: /],
  ];
  for (const [what, send, reason, message] of cases) {
    it(what, async () => {
      const c = await WsClient.open(tokens.bad, HOSTILE_SOURCE);
      send(c);
      const e = await c.next();
      expect(e.type).toBe('error');
      expect(e.error.code).toBe('PROTOCOL');
      expect(e.error.message).toMatch(message);
      expect(await c.closed).toEqual({ code: 1008, reason });
      expect(run!.controller.hub.isConnected('proj-a', 'ecs-bad')).toBe(false);
      await expectHealthyServed();
    });
  }

  it('a binary frame before hello is answered with an error and the connection closed at once (1008), as any other bad first frame', async () => {
    const c = await WsClient.open(tokens.bad, HOSTILE_SOURCE);
    c.ws.send(Buffer.from([0x7b, 0x00, 0xff]), { binary: true });
    expect(await c.next()).toEqual({ type: 'error', error: { code: 'PROTOCOL', message: 'expected hello: binary frames are not accepted; send JSON text' } });
    expect(await c.closed).toEqual({ code: 1008, reason: 'binary' });
    await expectHealthyServed();
  });
});

describe('bad frames after hello are answered with an error frame; the connection stays up', () => {
  it('not JSON, binary, unknown types, wrong shapes, a second hello', async () => {
    const c = await WsClient.open(tokens.bad, HOSTILE_SOURCE);
    await c.handshake('ecs-bad');
    const bad: [unknown, RegExp][] = [
      ['not json', /not JSON/],
      ['"just a string"', /./],
      [{ type: 'policy', policy: {} }, /./],
      [{ type: 'ack', revision: 1.5, status: 'applied' }, /revision/],
      [{ type: 'ack', revision: 1, status: 'applied', error: { code: 'X'.repeat(65), message: 'm' } }, /code/],
      [{ type: 'resync', have_revision: null, reason: 'r'.repeat(513) }, /reason/],
      [{ type: 'ports', report: { revision: 1, source: 'ss', generated_at: 'now', entries: [{ protocol: 'sctp', port: 70000 }] } }, /entries/],
    ];
    for (const [frame, message] of bad) {
      c.send(frame);
      const e = await c.next();
      expect(e.type, JSON.stringify(frame)).toBe('error');
      expect(e.error.code).toBe('PROTOCOL');
      expect(e.error.message).toMatch(message);
    }
    c.ws.send(Buffer.from('{"type":"ack"}'), { binary: true });
    expect((await c.next()).error.message).toMatch(/binary frames are not accepted/);
    // a second hello is refused, not re-handled (the document is not sent again)
    await c.expectOpenAndIdle('ecs-bad');
    expect(run!.logs.filter((l) => l.event === 'reject' && l.instance === 'ecs-bad').map((l) => l.reason)).toEqual([
      ...bad.map(() => 'invalid'),
      'binary',
      'duplicate_hello',
    ]);
    // the state the hub keeps for the instance is not changed by any of them
    const st = (await api('GET', '/v3/proj-a/instances/ecs-bad/ports')).body;
    expect(st.report).toBeNull();
    await expectHealthyServed();
  });
});

describe('size and rate', () => {
  it('a frame over agents.max_message_bytes closes the connection with 1009', async () => {
    const c = await WsClient.open(tokens.bad, HOSTILE_SOURCE);
    await c.handshake('ecs-bad');
    c.send({ type: 'resync', have_revision: null, reason: 'x'.repeat(AGENTS.max_message_bytes) });
    expect((await c.closed).code).toBe(1009);
    // ws closes an oversized frame's connection itself; the hub hears of it from the server socket's close, which on
    // Node 24 can come after the client has seen the close frame (on Node 20 it came first)
    await waitFor(() => !run!.controller.hub.isConnected('proj-a', 'ecs-bad'));
    expect(await metricLine('secgroup_controller_agent_messages_rejected_total', 'too_large')).toMatch(/ 1$/);
    await expectHealthyServed();
  });

  it('a flood of frames is closed with 1008 "rate" once the burst is spent', async () => {
    const c = await WsClient.open(tokens.bad, HOSTILE_SOURCE);
    await c.handshake('ecs-bad');
    // 1000 valid frames at once (the burst is 10 and the FakeClock does not refill it)
    for (let i = 0; i < 1000 && c.ws.readyState === WebSocket.OPEN; i++) c.send({ type: 'resync', have_revision: null, reason: 'flood' });
    expect(await c.closed).toEqual({ code: 1008, reason: 'rate' });
    const errors = c.frames.filter((f) => f.type === 'error');
    expect(errors.at(-1).error.message).toBe(`more than ${AGENTS.rate_burst} frames in a burst (limit ${AGENTS.rate_per_second}/s)`);
    // the frames within the burst were answered (resync: the full policy), the rest never handled
    expect(c.frames.filter((f) => f.type === 'policy').length).toBeLessThanOrEqual(AGENTS.rate_burst + 1);
    await expectHealthyServed();
  });
});

async function metricLine(name: string, reason: string): Promise<string> {
  const text = (await run!.controller.app.inject({ method: 'GET', url: '/metrics' })).body;
  return text.split('\n').find((l) => l.startsWith(name) && l.includes(`reason="${reason}"`)) ?? '';
}

describe("another instance's state", () => {
  it("a port report naming other instances' ports and rules, and another project's, changes only the sender's own report", async () => {
    const c = await WsClient.open(tokens.bad, HOSTILE_SOURCE);
    const revision = await c.handshake('ecs-bad');
    const groupBefore = (await api('GET', '/v3/proj-a/vpc/security-groups/sg-ok')).body.security_group;
    const ref = (group: string, rule: string) => ({ group_id: group, rule_id: rule, peers: '0.0.0.0/0' });
    const report = {
      revision,
      source: 'ss',
      generated_at: '2024-05-01T12:00:00Z',
      entries: [
        { protocol: 'tcp', port: 22, family: 4, status: 'open', listeners: [{ address: '198.18.0.11', process: 'sshd' }], allowed_by: [ref('sg-ok', 'r-of-ecs-ok')], denied_by: [] },
        { protocol: 'tcp', port: 443, family: null, status: 'blocked', listeners: [{ address: '198.18.0.14', process: null }], allowed_by: [], denied_by: [ref('proj-b-group', 'proj-b-rule')] },
      ],
    };
    c.send({ type: 'ports', report });
    await c.expectOpenAndIdle('ecs-bad');
    expect((await api('GET', '/v3/proj-a/instances/ecs-bad/ports')).body.report).toEqual(report);
    for (const [project, id] of [['proj-a', 'ecs-ok'], ['proj-a', 'ecs-other'], ['proj-b', 'ecs-b']]) {
      const r = await api('GET', `/v3/${project}/instances/${id}/ports`);
      expect(r.status).toBe(200);
      expect(r.body).toMatchObject({ instance_id: id, received_at: null, report: null });
    }
    // the rules it named are untouched
    expect((await api('GET', '/v3/proj-a/vpc/security-groups/sg-ok')).body.security_group).toEqual(groupBefore);
    await expectHealthyServed();
  });
});

describe('slow and duplicate clients', () => {
  it('a client that never reads is dropped by the heartbeat (1006 in the audit trail) while its pushes queue, and never holds others up', async () => {
    const c = await WsClient.open(tokens.bad, HOSTILE_SOURCE);
    await c.handshake('ecs-bad');
    // stop reading the TCP socket: pings stay unanswered, pushed documents pile up in the kernel and ws buffers
    (c.ws as any)._socket.pause();
    const big = { security_group: { id: 'sg-big', name: 'big', description: 'd'.repeat(255) } };
    expect((await api('POST', '/v3/proj-a/vpc/security-groups', big)).status).toBe(201);
    expect((await api('PUT', '/v3/proj-a/instances/ecs-bad', { instance: { security_groups: ['default', 'sg-big'] } })).status).toBe(200);
    for (let i = 0; i < 30; i++) {
      const r = { security_group_id: 'sg-big', direction: 'ingress', ethertype: 'IPv4', protocol: 'tcp', multiport: String(10_000 + i), remote_ip_prefix: '198.18.0.0/24', description: 'x'.repeat(255) };
      expect((await api('POST', '/v3/proj-a/vpc/security-group-rules', { security_group_rule: r })).status).toBe(201);
    }
    await expectHealthyServed();
    await run!.clock.advance(AGENTS.heartbeat_interval_ms); // ping
    await new Promise((r) => setTimeout(r, 50));
    expect(run!.controller.hub.isConnected('proj-a', 'ecs-bad')).toBe(true);
    await run!.clock.advance(AGENTS.heartbeat_interval_ms); // no pong: terminated
    await waitFor(() => !run!.controller.hub.isConnected('proj-a', 'ecs-bad'));
    await waitFor(() => auditLines('AgentDisconnected').some((l) => l.resource_ids[0] === 'ecs-bad'));
    expect(auditLines('AgentDisconnected').find((l) => l.resource_ids[0] === 'ecs-bad').detail).toBe('close code 1006');
    expect(run!.logs.some((l) => l.event === 'heartbeat' && l.instance === 'ecs-bad')).toBe(true);
    // the healthy agent answered its pings: still connected
    await expectHealthyServed();
  });

  it('many connections with one instance token: each new one replaces the previous (4000), the newest is served', async () => {
    const first = await WsClient.open(tokens.bad, HOSTILE_SOURCE);
    await first.handshake('ecs-bad');
    const all = await Promise.all(Array.from({ length: 20 }, () => WsClient.open(tokens.bad, HOSTILE_SOURCE)));
    const closes = await Promise.all([first, ...all.slice(0, -1)].map((c) => c.closed));
    expect(closes).toEqual(closes.map(() => ({ code: 4000, reason: 'replaced by a newer connection' })));
    const newest = all.at(-1)!;
    expect(newest.ws.readyState).toBe(WebSocket.OPEN);
    await newest.handshake('ecs-bad');
    expect(run!.controller.hub.isConnected('proj-a', 'ecs-bad')).toBe(true);
    // a change of its groups reaches the newest connection
    const r = { security_group_id: 'default', direction: 'ingress', ethertype: 'IPv4', protocol: 'tcp', multiport: '8080', remote_ip_prefix: '198.18.0.0/24' };
    expect((await api('POST', '/v3/proj-a/vpc/security-group-rules', { security_group_rule: r })).status).toBe(201);
    expect((await newest.next()).type).toBe('policy');
    expect(run!.logs.filter((l) => l.event === 'replace' && l.instance === 'ecs-bad')).toHaveLength(20);
    await expectHealthyServed();
  });
});

async function waitFor(cond: () => boolean): Promise<void> {
  for (let waited = 0; !cond(); waited += 10) {
    if (waited > 3000) throw new Error('condition not met within 3 s');
    await new Promise((r) => setTimeout(r, 10));
  }
}
