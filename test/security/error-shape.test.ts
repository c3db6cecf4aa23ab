/* eslint-disable @typescript-eslint/no-explicit-any -- response bodies are untyped JSON, checked by the assertions */
/**
 * One error shape for everything the API answers (issue 12): the framework's
 * own errors (routing, URL decoding, content types, body parsing) and Node's
 * parser errors come as `{"request_id","error_code","error_msg"}` with an
 * `X-Request-Id`, like the API's. And the body parser never runs for a
 * request that fails authentication or scoping.
 */
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ADMIN, SCOPED, makeApi, type TestApi } from '../unit/controller-helpers.js';
import { RawClient, expectShape, startController, type Running } from './helpers.js';

const A = '/v3/proj-a';

let t: TestApi;
beforeEach(() => {
  t = makeApi();
});

async function inject(opts: { method?: string; url: string; headers?: Record<string, string>; payload?: string }): Promise<{ status: number; headers: Record<string, any>; body: any }> {
  const r = await t.app.inject({ method: (opts.method ?? 'GET') as 'GET', url: opts.url, headers: opts.headers ?? {}, ...(opts.payload === undefined ? {} : { payload: opts.payload }) });
  const body = JSON.parse(r.body);
  expectShape(body);
  expect(r.headers['x-request-id']).toBe(body.request_id);
  return { status: r.statusCode, headers: r.headers, body };
}

describe('framework errors in the API shape', () => {
  const json = { 'x-auth-token': ADMIN, 'content-type': 'application/json' };

  it('404 for an unknown route, 405 with Allow for a known path with another method', async () => {
    expect((await inject({ url: '/nothing' })).body.error_code).toBe('APIG.0101');
    expect((await inject({ url: `${A}/vpc/nothing`, headers: json })).body.error_code).toBe('APIG.0101');
    const r = await inject({ method: 'PATCH', url: `${A}/vpc/security-groups/sg-1`, headers: json, payload: '{}' });
    expect(r.status).toBe(405);
    expect(r.body.error_code).toBe('SG.0012');
    expect(r.headers.allow).toBe('DELETE, GET, HEAD, PUT');
    expect((await inject({ method: 'DELETE', url: '/healthz' })).headers.allow).toBe('GET, HEAD');
  });

  it('414 for a path parameter longer than any id', async () => {
    const r = await inject({ url: `${A}/vpc/security-groups/${'x'.repeat(300)}`, headers: json });
    expect(r.status).toBe(414);
    expect(r.body.error_code).toBe('SG.0014');
  });

  it('400 for malformed percent-encoding', async () => {
    const r = await inject({ url: `${A}/vpc/security-groups/%zz`, headers: json });
    expect(r.status).toBe(400);
    expect(r.body.error_code).toBe('SG.0001');
    expect(r.body.error_msg).toMatch(/percent-encoding/);
  });

  it('400 for bad JSON, 415 for a body that is not JSON, 413 for a body over the limit', async () => {
    const bad = await inject({ method: 'POST', url: `${A}/vpc/security-groups`, headers: json, payload: '{"security_group":' });
    expect([bad.status, bad.body.error_code]).toEqual([400, 'SG.0001']);
    const text = await inject({ method: 'POST', url: `${A}/vpc/security-groups`, headers: { ...json, 'content-type': 'application/xml' }, payload: '<security_group/>' });
    expect([text.status, text.body.error_code]).toEqual([415, 'SG.0013']);
    const big = await inject({ method: 'POST', url: `${A}/vpc/security-groups`, headers: json, payload: JSON.stringify({ security_group: { name: 'x'.repeat(70 * 1024) } }) });
    expect([big.status, big.body.error_code]).toEqual([413, 'SG.0010']);
  });
});

describe('the body parser never runs before authentication', () => {
  it('401 (no token, wrong token), 403 (other project) and 429 leave the body unparsed; an admin token gets it parsed', async () => {
    const parsed: string[] = [];
    t.app.addContentTypeParser('application/x-probe', { parseAs: 'string' }, (_req, body, done) => {
      parsed.push(String(body));
      done(null, JSON.parse(String(body)));
    });
    const post = (headers: Record<string, string>, url = `${A}/vpc/security-groups`) =>
      inject({ method: 'POST', url, headers: { 'content-type': 'application/x-probe', ...headers }, payload: '{"security_group":{"name":"x"}}' });
    expect((await post({})).status).toBe(401);
    expect((await post({ 'x-auth-token': 'wrong-token-0123456789' })).status).toBe(401);
    expect((await post({ 'x-auth-token': SCOPED }, '/v3/proj-b/vpc/security-groups')).status).toBe(403);
    for (let i = 0; i < 18; i++) await post({});
    expect((await post({})).status).toBe(429);
    expect(parsed).toEqual([]);
    const ok = await t.app.inject({ method: 'POST', url: `${A}/vpc/security-groups`, headers: { 'content-type': 'application/x-probe', 'x-auth-token': ADMIN }, remoteAddress: '127.0.0.9', payload: '{"security_group":{"name":"x"}}' });
    expect(ok.statusCode).toBe(201);
    expect(parsed).toHaveLength(1);
  });
});

describe("Node's parser errors on a real connection", () => {
  let run: Running;
  beforeEach(async () => {
    run = await startController();
  });
  afterEach(async () => {
    await run.stop();
  });

  it('431 for headers over the limit', async () => {
    const c = await RawClient.open(run.address.port);
    c.write(`GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ${'a'.repeat(20_000)}\r\n\r\n`);
    await c.closed;
    const r = c.response();
    expect(r.status).toBe(431);
    expect(expectShape(r.body).error_code).toBe('SG.0015');
    expect(r.headers['x-request-id']).toBe(r.body.request_id);
  });

  it('431 to a HEAD request has no body (found by scripts/security/fuzz.ts: a body there is read as the start of a next answer)', async () => {
    const c = await RawClient.open(run.address.port);
    c.write(`HEAD /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ${'a'.repeat(20_000)}\r\n\r\n`);
    await c.closed;
    const [head, after] = c.data.split('\r\n\r\n');
    expect(head).toMatch(/^HTTP\/1\.1 431 /);
    expect(head).toMatch(/\r\nX-Request-Id: [0-9a-f]{32}\r\n/);
    expect(after).toBe('');
  });

  it('400 for a malformed request line', async () => {
    const c = await RawClient.open(run.address.port);
    c.write('GET /healthz HTTP/9\r\n\r\n');
    await c.closed;
    const r = c.response();
    expect(r.status).toBe(400);
    expect(expectShape(r.body).error_code).toBe('SG.0001');
  });
});
