/* eslint-disable @typescript-eslint/no-explicit-any -- event payloads are untyped JSON, checked by the assertions */
/**
 * `GET /v3/{project_id}/events`: server-sent events for the console, read
 * over a real socket on 127.0.0.1 from a started controller (in-process,
 * FakeClock: heartbeats and the stream lifetime fire only when a test
 * advances it) with a WebSocket agent speaking the protocol by hand.
 */
import { describe, expect, it, beforeEach, afterEach } from 'vitest';
import { request, type IncomingMessage } from 'node:http';
import WebSocket from 'ws';
import { FakeClock } from '../../src/lib/clock.js';
import { silentLogger } from '../../src/lib/logger.js';
import { createController, type Controller, type ControllerAddress } from '../../src/controller/controller.js';
import { parseControllerConfig } from '../../src/controller/config.js';
import { MemoryStore } from '../../src/controller/store/memory.js';
import { ProjectEvents } from '../../src/controller/events.js';
import { createMetrics } from '../../src/controller/metrics.js';
import { PROTOCOL_VERSION } from '../../src/protocol/messages.js';
import { SseParser, type SseEvent } from '../../console/src/logic.js';
import { ADMIN, countingRandom, makeApi } from './controller-helpers.js';

const P = '/v3/proj-a';
let clock: FakeClock;
let ctl: Controller;
let addr: ControllerAddress;

beforeEach(async () => {
  clock = new FakeClock(Date.UTC(2024, 4, 1, 12, 0, 0));
  const config = parseControllerConfig({
    listen: { host: '127.0.0.1', port: 0 },
    api: { tokens: [{ name: 'admin', token: ADMIN }, { name: 'other', token: 'other-token-0123456789', projects: ['proj-b'] }] },
    metrics: { process_metrics: false },
  });
  ctl = createController({ config, clock, store: new MemoryStore(), logger: silentLogger(), random: countingRandom() });
  addr = await ctl.start();
});

afterEach(async () => {
  await ctl.stop();
});

/** An open event stream: parsed events and comments as they arrive. */
class Stream {
  readonly events: SseEvent[] = [];
  raw = '';
  ended = false;
  private readonly parser = new SseParser();
  constructor(readonly res: IncomingMessage) {
    res.setEncoding('utf8');
    res.on('data', (chunk: string) => {
      this.raw += chunk;
      this.events.push(...this.parser.push(chunk));
    });
    res.on('close', () => (this.ended = true));
  }
  async next(type: string, match: (d: any) => boolean = () => true): Promise<any> {
    let seen = 0;
    for (let waited = 0; waited < 5000; waited += 10) {
      for (; seen < this.events.length; seen++) {
        const e = this.events[seen]!;
        if (e.event === type && match(JSON.parse(e.data))) {
          this.events.splice(0, seen + 1);
          return JSON.parse(e.data);
        }
      }
      await new Promise((r) => setTimeout(r, 10));
    }
    throw new Error(`no ${type} event within 5 s; got ${JSON.stringify(this.events)}`);
  }
}

function open(path: string, headers: Record<string, string> = { 'x-auth-token': ADMIN }): Promise<{ res: IncomingMessage; stream: Stream }> {
  return new Promise((resolve, reject) => {
    const req = request(`${addr.url}${path}`, { headers }, (res) => resolve({ res, stream: new Stream(res) }));
    req.on('error', reject);
    req.end();
  });
}

async function until(cond: () => boolean): Promise<void> {
  for (let waited = 0; !cond(); waited += 10) {
    if (waited > 5000) throw new Error('condition not reached within 5 s');
    await new Promise((r) => setTimeout(r, 10));
  }
}

async function api(method: 'POST' | 'PUT' | 'DELETE' | 'GET', url: string, payload?: object) {
  const r = await ctl.app.inject({ method, url, headers: { 'x-auth-token': ADMIN }, ...(payload ? { payload } : {}) });
  return { status: r.statusCode, body: r.body ? JSON.parse(r.body) : null };
}

describe('event stream', () => {
  it('is text/event-stream behind the project auth: no token 401, another project 403, in the Huawei error shape', async () => {
    const none = await open(`${P}/events`, {});
    expect(none.res.statusCode).toBe(401);
    await until(() => none.stream.ended);
    expect(JSON.parse(none.stream.raw)).toMatchObject({ error_code: 'SG.0002' });
    const other = await open(`${P}/events`, { 'x-auth-token': 'other-token-0123456789' });
    expect(other.res.statusCode).toBe(403);
    const ok = await open(`${P}/events`);
    expect(ok.res.statusCode).toBe(200);
    expect(ok.res.headers['content-type']).toBe('text/event-stream; charset=utf-8');
    expect(ok.res.headers['cache-control']).toBe('no-store');
    ok.res.destroy();
  });

  it('answers a bad project id, another method and a missing token in the API error shape, before any stream opens', async () => {
    const bad = await ctl.app.inject({ method: 'GET', url: '/v3/%F0%9F%94%A5%20x/events', headers: { 'x-auth-token': ADMIN } });
    expect(bad.statusCode).toBe(400);
    expect(Object.keys(bad.json()).sort()).toEqual(['error_code', 'error_msg', 'request_id']);
    const post = await ctl.app.inject({ method: 'POST', url: `${P}/events`, headers: { 'x-auth-token': ADMIN }, payload: {} });
    expect([post.statusCode, post.headers.allow]).toEqual([405, 'GET, HEAD']);
    expect((await ctl.app.inject({ method: 'GET', url: `${P}/events` })).json()).toMatchObject({ error_code: 'SG.0002' });
  });

  it('carries API writes as change events, only to streams of that project', async () => {
    const a = await open(`${P}/events`);
    const b = await open('/v3/proj-b/events');
    await until(() => a.stream.raw.includes('stream open') && b.stream.raw.includes('stream open'));
    expect((await api('POST', `${P}/vpc/security-groups`, { security_group: { id: 'sg-web', name: 'web' } })).status).toBe(201);
    expect(await a.stream.next('change')).toEqual({ resource_type: 'security_group', operation: 'CreateSecurityGroup', resource_ids: ['sg-web'] });
    // refused writes and dry runs change nothing: no event
    expect((await api('POST', `${P}/vpc/security-groups`, { security_group: { id: 'sg-web', name: 'again' } })).status).toBe(409);
    expect((await api('POST', `${P}/vpc/security-groups`, { security_group: { id: 'sg-x', name: 'x' }, dry_run: true })).status).toBe(202);
    expect((await api('DELETE', `${P}/vpc/security-groups/sg-web`)).status).toBe(204);
    expect(await a.stream.next('change')).toEqual({ resource_type: 'security_group', operation: 'DeleteSecurityGroup', resource_ids: ['sg-web'] });
    expect(a.stream.events).toEqual([]);
    expect(b.stream.events).toEqual([]);
    a.res.destroy();
    b.res.destroy();
  });

  it('follows an agent: instance events on connect, ack and disconnect, a ports event on a port report', async () => {
    const created = await api('POST', `${P}/instances`, { instance: { id: 'ecs-1', addresses: ['198.18.0.10'], security_groups: ['default'] } });
    const desired = (await api('GET', `${P}/instances/ecs-1/status`)).body.status.desired_revision;
    const { res, stream } = await open(`${P}/events`);
    const ws = new WebSocket(addr.agentUrl, { headers: { authorization: `Bearer ${created.body.token}` } });
    await new Promise((r) => ws.once('open', r));
    ws.send(JSON.stringify({ type: 'hello', protocol: PROTOCOL_VERSION, instance_id: 'ecs-1', agent_version: '0.1.0', applied_revision: null }));
    expect(await stream.next('instance')).toEqual({ instance_id: 'ecs-1', desired_revision: desired, applied_revision: null, connected: true, last_error: null });
    ws.send(JSON.stringify({ type: 'ack', revision: desired, status: 'failed', error: { code: 'NFT_FAILED', message: 'nft: syntax error' } }));
    expect(await stream.next('instance')).toMatchObject({ applied_revision: null, last_error: { revision: desired, code: 'NFT_FAILED' } });
    ws.send(JSON.stringify({ type: 'ack', revision: desired, status: 'applied' }));
    expect(await stream.next('instance', (d) => d.applied_revision === desired)).toMatchObject({ connected: true });
    ws.send(JSON.stringify({ type: 'ports', report: { revision: desired, source: 'ss', generated_at: '2024-05-01T12:00:00.000Z', entries: [] } }));
    expect(await stream.next('ports')).toEqual({ instance_id: 'ecs-1' });
    // a revision never handed out is an error of the instance (REVISION_AHEAD), published like a failed ack
    ws.send(JSON.stringify({ type: 'ack', revision: desired + 1000, status: 'applied' }));
    expect(await stream.next('instance', (d) => d.last_error !== null && d.last_error.code === 'REVISION_AHEAD')).toMatchObject({ applied_revision: desired });
    ws.close();
    expect(await stream.next('instance', (d) => d.connected === false)).toMatchObject({ instance_id: 'ecs-1', applied_revision: desired });
    res.destroy();
  });

  it('sends a heartbeat comment every 15 s and closes the stream when its lifetime (the auth window, 15 min) ends', async () => {
    const { stream } = await open(`${P}/events`);
    await until(() => stream.raw.includes('stream open'));
    clock.advance(15_000);
    await until(() => stream.raw.includes(': heartbeat'));
    clock.advance(15 * 60_000);
    await until(() => stream.ended);
    const metrics = await (await fetch(`${addr.url}/metrics`)).text();
    expect(metrics).toMatch(/secgroup_controller_event_streams_closed_total\{reason="auth_expired"\} 1/);
    expect(metrics).toMatch(/secgroup_controller_events_sent_total\{type="heartbeat"\} [1-9]/);
    expect(metrics).toMatch(/secgroup_controller_event_streams 0/);
  });

  it('counts open streams and closes them all when the controller stops', async () => {
    const s1 = await open(`${P}/events`);
    const s2 = await open(`${P}/events`);
    await until(() => s1.stream.raw.length > 0 && s2.stream.raw.length > 0);
    expect(await (await fetch(`${addr.url}/metrics`)).text()).toMatch(/secgroup_controller_event_streams 2/);
    await ctl.stop();
    await until(() => s1.stream.ended && s2.stream.ended);
  });
});

describe('event stream of a client that does not read', () => {
  it('is closed once more than the per-connection bound is unsent, instead of buffering', async () => {
    const events = new ProjectEvents();
    const metrics = createMetrics({ defaultMetrics: false });
    const { app } = makeApi({ extra: { events, metrics, eventStream: { maxBufferedBytes: 64 * 1024 } } });
    await app.listen({ host: '127.0.0.1', port: 0 });
    try {
      const port = (app.server.address() as { port: number }).port;
      const res = await new Promise<IncomingMessage>((resolve) => request(`http://127.0.0.1:${port}${P}/events`, { headers: { 'x-auth-token': ADMIN } }, resolve).end());
      res.pause();
      let closed = false;
      res.on('close', () => (closed = true));
      res.on('error', () => (closed = true));
      const big = { resource_type: 'security_group_rule', operation: 'BatchCreateSecurityGroupRules', resource_ids: Array.from({ length: 500 }, (_, i) => `rule-${i}-${'x'.repeat(40)}`) };
      // ~25 KB per event, 2000 events: far beyond what the sockets of both ends hold
      for (let i = 0; i < 2000 && events.watched('proj-a'); i++) events.publish('proj-a', { type: 'change', data: big });
      expect(events.watched('proj-a')).toBe(false);
      await until(() => closed);
      expect(await metrics.registry.getSingleMetricAsString('secgroup_controller_event_streams_closed_total')).toMatch(/reason="slow"\} 1/);
    } finally {
      await app.close();
    }
  });
});
