/* eslint-disable @typescript-eslint/no-explicit-any -- response bodies are untyped JSON, checked by the assertions */
/**
 * Unauthenticated resource exhaustion against a real controller on
 * 127.0.0.1 (issue 12): slow clients are dropped after the configured
 * timeouts, agents' WebSocket connections are not, connections per source
 * are bounded, failed authentications are rate limited (429 in the API's
 * shape), and an unauthenticated request never gets its body read.
 * Timeouts are configured small so each case runs in about a second.
 */
import { afterEach, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import { PROTOCOL_VERSION } from '../../src/protocol/messages.js';
import { ADMIN, RawClient, expectShape, httpCall, startController, type Running } from './helpers.js';

let run: Running | null = null;
const clients: RawClient[] = [];
const sockets: WebSocket[] = [];
afterEach(async () => {
  for (const c of clients.splice(0)) c.destroy();
  for (const ws of sockets.splice(0)) ws.terminate();
  await run?.stop();
  run = null;
});

async function open(localAddress = '127.0.0.1'): Promise<RawClient> {
  const c = await RawClient.open(run!.address.port, localAddress);
  clients.push(c);
  return c;
}

/** An instance in proj-a; returns its agent token. */
async function agentToken(id = 'ecs-1'): Promise<string> {
  const r = await run!.controller.app.inject({
    method: 'POST',
    url: '/v3/proj-a/instances',
    headers: { 'x-auth-token': ADMIN },
    payload: { instance: { id, name: id, addresses: ['198.18.0.10'], security_groups: ['default'] } },
  });
  expect(r.statusCode).toBe(201);
  return JSON.parse(r.body).token as string;
}

function connectAgent(token: string, localAddress = '127.0.0.1'): Promise<WebSocket> {
  const ws = new WebSocket(run!.address.agentUrl, { headers: { authorization: `Bearer ${token}` }, localAddress });
  sockets.push(ws);
  return new Promise((resolve, reject) => {
    ws.once('open', () => resolve(ws));
    ws.once('error', reject);
    ws.once('unexpected-response', (_req, res) => reject(new Error(`upgrade refused: ${res.statusCode}`)));
  });
}

/** Status of a refused upgrade. */
function refusedUpgrade(token: string, localAddress = '127.0.0.1'): Promise<{ status: number; retryAfter?: string; body: any }> {
  const ws = new WebSocket(run!.address.agentUrl, { headers: { authorization: `Bearer ${token}` }, localAddress });
  sockets.push(ws);
  return new Promise((resolve, reject) => {
    ws.once('open', () => reject(new Error('the upgrade was accepted')));
    ws.once('error', () => {});
    ws.once('unexpected-response', (_req, res) => {
      let text = '';
      res.on('data', (d: Buffer) => (text += d.toString()));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, retryAfter: res.headers['retry-after'] as string | undefined, body: JSON.parse(text) }));
    });
  });
}

const metric = async (name: string): Promise<string> => (await run!.controller.app.inject({ method: 'GET', url: '/metrics' })).body.split('\n').filter((l) => l.startsWith(name)).join('\n');

describe('unauthenticated requests never have their body read', () => {
  it('a POST without a token announcing 900 kB is answered 401 after its headers, and the connection is closed', async () => {
    run = await startController();
    const c = await open();
    c.write('POST /v3/proj-a/vpc/security-groups HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 900000\r\n\r\n{"security_group":');
    await c.closed;
    const r = c.response();
    expect(r.status).toBe(401);
    expect(r.headers.connection).toBe('close');
    expect(expectShape(r.body).error_code).toBe('SG.0002');
  });

  it('a POST with a wrong token is answered 401 without its body, a wrongly scoped one 403', async () => {
    run = await startController();
    for (const [token, status] of [['wrong-token-0123456789', 401], ['scoped-token-0123456789', 403]] as const) {
      const c = await open();
      c.write(`POST /v3/proj-b/vpc/security-groups HTTP/1.1\r\nHost: x\r\nX-Auth-Token: ${token}\r\nContent-Type: application/json\r\nContent-Length: 900000\r\n\r\n`);
      await c.closed;
      expect(c.response().status).toBe(status);
    }
  });
});

describe('timeouts', () => {
  const small = { headers_timeout_ms: 600, request_timeout_ms: 1200, keep_alive_timeout_ms: 500 };

  it('slowloris headers (one byte every 200 ms) are dropped with 408 in the API shape', async () => {
    run = await startController(small);
    const c = await open();
    c.write('GET /healthz HTTP/1.1\r\nHost: x\r\n');
    void c.trickle('X-Slow: ' + 'a'.repeat(100), 200);
    await c.closed;
    const r = c.response();
    expect(r.status).toBe(408);
    expect(expectShape(r.body).error_code).toBe('SG.0016');
    expect(run.logs.some((l) => l.event === 'client_error' && l.status === 408)).toBe(true);
    expect(await metric('secgroup_controller_http_client_errors_total')).toContain('status="408"} 1');
  });

  it('an authenticated body sent one byte every 200 ms is dropped with 408 after the request timeout', async () => {
    run = await startController(small);
    const c = await open();
    c.write(`POST /v3/proj-a/vpc/security-groups HTTP/1.1\r\nHost: x\r\nX-Auth-Token: ${ADMIN}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n`);
    void c.trickle('{'.repeat(100), 200);
    await c.closed;
    const r = c.response();
    expect(r.status).toBe(408);
    expect(expectShape(r.body).error_code).toBe('SG.0016');
  });

  it('a connection that sends nothing, and an idle keep-alive connection, are closed', async () => {
    run = await startController(small);
    const silent = await open();
    const idle = await open();
    idle.write('GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n');
    await Promise.all([silent.closed, idle.closed]);
    expect(idle.response().status).toBe(200);
  });

  it("an agent's WebSocket connection outlives every HTTP timeout", async () => {
    run = await startController(small);
    const ws = await connectAgent(await agentToken());
    const frames: any[] = [];
    ws.on('message', (d) => frames.push(JSON.parse(String(d))));
    ws.send(JSON.stringify({ type: 'hello', protocol: PROTOCOL_VERSION, instance_id: 'ecs-1', agent_version: 'test', applied_revision: null }));
    await new Promise((r) => setTimeout(r, 3 * small.request_timeout_ms));
    expect(ws.readyState).toBe(WebSocket.OPEN);
    const pong = new Promise((resolve) => ws.once('pong', resolve));
    ws.ping();
    await pong;
    expect(frames[0]?.type).toBe('welcome');
    expect(run.controller.hub.isConnected('proj-a', 'ecs-1')).toBe(true);
  });
});

describe('connections per source address', () => {
  it('the connection over the limit is closed on accept; other sources and WebSockets are counted apart', async () => {
    run = await startController({ max_connections_per_source: 3 });
    await connectAgent(await agentToken());
    const held = [await open(), await open()];
    const excess = await open();
    await excess.closed;
    expect(excess.data).toBe('');
    // another source is not affected
    expect((await httpCall(run.address.port, { path: '/healthz', localAddress: '127.0.0.2' })).status).toBe(200);
    // a closed connection frees its place (closed by the server, so it has counted it out when we see it closed)
    held[0]!.write('GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n');
    await held[0]!.closed;
    const again = await open();
    again.write('GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n');
    await again.closed;
    expect(again.response().status).toBe(200);
    expect(await metric('secgroup_controller_connections_rejected_total')).toContain('reason="per_source"} 1');
    expect(run.logs.filter((l) => l.event === 'connection_rejected')).toEqual([
      expect.objectContaining({ level: 40, source: '127.0.0.1', reason: 'per_source', limit: 3 }),
    ]);
  });
});

describe('connections in total', () => {
  it('over http.max_connections a connection from any source is closed on accept', async () => {
    run = await startController({ max_connections: 2, max_connections_per_source: 2 });
    await open();
    await open('127.0.0.2');
    const excess = await open('127.0.0.3');
    await excess.closed;
    expect(excess.data).toBe('');
    expect(await metric('secgroup_controller_connections_rejected_total')).toContain('reason="total"} 1');
    expect(run.logs.filter((l) => l.event === 'connection_rejected')).toEqual([expect.objectContaining({ source: '127.0.0.3', reason: 'total', limit: 2 })]);
  });
});

describe('failed authentications per source address', () => {
  it('over the budget: 429 with Retry-After in the API shape, also for a valid token, until the bucket refills', async () => {
    run = await startController({ auth_failure_burst: 3, auth_failures_per_minute: 6 });
    const port = run.address.port;
    const bad = { 'x-auth-token': 'wrong-token-0123456789' };
    for (let i = 0; i < 3; i++) expect((await httpCall(port, { path: '/v3/proj-a/vpc/security-groups', headers: bad })).status).toBe(401);
    const limited = await httpCall(port, { path: '/v3/proj-a/vpc/security-groups', headers: bad });
    expect(limited.status).toBe(429);
    expect(limited.headers['retry-after']).toBe('10');
    expect(expectShape(limited.body).error_code).toBe('SG.0011');
    // the token is not even looked at
    expect((await httpCall(port, { path: '/v3/proj-a/vpc/security-groups', headers: { 'x-auth-token': ADMIN } })).status).toBe(429);
    // agents' upgrades share the budget
    const up = await refusedUpgrade('sgi_not-a-token');
    expect(up.status).toBe(429);
    expect(up.retryAfter).toBe('10');
    expect(up.body.error_code).toBe('SG.0011');
    // public endpoints and other sources are not limited
    expect((await httpCall(port, { path: '/healthz' })).status).toBe(200);
    expect((await httpCall(port, { path: '/v3/proj-a/vpc/security-groups', headers: { 'x-auth-token': ADMIN }, localAddress: '127.0.0.2' })).status).toBe(200);
    await run.clock.advance(10_000);
    expect((await httpCall(port, { path: '/v3/proj-a/vpc/security-groups', headers: { 'x-auth-token': ADMIN } })).status).toBe(200);
    expect(await metric('secgroup_controller_auth_rate_limited_total')).toMatch(/endpoint="api"\} 2[\s\S]*endpoint="agent"\} 1|endpoint="agent"\} 1[\s\S]*endpoint="api"\} 2/);
    // one warning per source and episode (until the source may try again), whichever endpoint it hit
    const logged = run.logs.filter((l) => l.event === 'auth_rate_limited');
    expect(logged.map((l) => [l.level, l.endpoint, l.source, l.retry_after_s])).toEqual([[40, 'api', '127.0.0.1', 10]]);
  });

  it('failed agent upgrades take from the budget: the upgrade over it is 429', async () => {
    run = await startController({ auth_failure_burst: 2, auth_failures_per_minute: 60 });
    const token = await agentToken();
    expect((await refusedUpgrade('sgi_not-a-token')).status).toBe(401);
    expect((await refusedUpgrade('sgi_not-a-token')).status).toBe(401);
    expect((await refusedUpgrade(token)).status).toBe(429);
    expect(await connectAgent(token, '127.0.0.3')).toBeInstanceOf(WebSocket);
    await run.clock.advance(1000);
    expect(await connectAgent(token)).toBeInstanceOf(WebSocket);
  });
});
