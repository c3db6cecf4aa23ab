/* eslint-disable @typescript-eslint/no-explicit-any -- response bodies are untyped JSON, checked by the assertions */
/**
 * AK/SK authentication against signatures made by the official Huawei SDK's
 * signer (huaweicloud-sdk-core AKSKSigner), sent through the API with inject.
 */
import { stringify } from 'node:querystring';
import { describe, expect, it } from 'vitest';
import { AKSKSigner } from '@huaweicloud/huaweicloud-sdk-core/auth/AKSKSigner.js';
import { BasicCredentials } from '@huaweicloud/huaweicloud-sdk-core/auth/BasicCredentials.js';
import { canonicalQuery, canonicalUri, checkSignedHeaders, verifyPayload, type AccessKey } from '../../src/controller/api/aksk.js';
import { ADMIN, call, makeApi, rule } from './controller-helpers.js';

const KEYS: AccessKey[] = [
  { name: 'ops', access_key: 'AKOPS0123456789', secret_key: 'sk-ops-0123456789abcdef', projects: ['*'] },
  { name: 'team-a', access_key: 'AKTEAMA012345678', secret_key: 'sk-team-a-0123456789', projects: ['proj-a'] },
];
const HOST = 'api.test:8443';
const NOW_DATE = '20240501T120000Z'; // makeApi's clock

interface Signed {
  method: 'GET' | 'POST' | 'PUT' | 'DELETE';
  url: string;
  headers: Record<string, string>;
  payload?: string;
}

/** Signs as the SDK does: headers/query/data go through AKSKSigner.sign unchanged. */
function sign(
  method: Signed['method'],
  path: string,
  o: { query?: Record<string, string | string[]>; data?: unknown; headers?: Record<string, string>; ak?: string; sk?: string; date?: string } = {},
): Signed {
  const cred = new BasicCredentials().withAk(o.ak ?? 'AKOPS0123456789').withSk(o.sk ?? 'sk-ops-0123456789abcdef');
  const project = /^\/v3\/([^/]+)/.exec(path)?.[1] ?? '';
  const headers = { 'X-Sdk-Date': o.date ?? NOW_DATE, 'content-type': 'application/json', 'X-Project-Id': project, ...o.headers };
  const signed = AKSKSigner.sign({ endpoint: `http://${HOST}${path}`, method, headers, queryParams: o.query ?? {}, data: o.data } as any, cred) as Record<string, string>;
  const qs = o.query ? stringify(o.query) : '';
  return { method, url: qs ? `${path}?${qs}` : path, headers: signed, ...(o.data === undefined ? {} : { payload: JSON.stringify(o.data) }) };
}

async function send(app: ReturnType<typeof makeApi>['app'], s: Signed): Promise<{ status: number; body: any }> {
  const r = await app.inject({ method: s.method, url: s.url, headers: s.headers, ...(s.payload === undefined ? {} : { payload: s.payload }) });
  return { status: r.statusCode, body: r.body ? JSON.parse(r.body) : null };
}

const B = '/v3/proj-a';
const GROUP = { security_group: { id: 'sg-web', name: 'web' } };

async function withGroup() {
  const t = makeApi({ accessKeys: KEYS });
  expect((await call(t.app, 'POST', `${B}/vpc/security-groups`, GROUP)).status).toBe(201);
  return t;
}

function expectRefused(r: { status: number; body: any }, status: number, code: string, msg?: RegExp) {
  expect(r.status).toBe(status);
  expect(r.body).toMatchObject({ error_code: code });
  expect(typeof r.body.request_id).toBe('string');
  if (msg) expect(r.body.error_msg).toMatch(msg);
}

describe('AK/SK signatures of the official SDK signer are accepted', () => {
  it('POST with a JSON body creates the group', async () => {
    const t = makeApi({ accessKeys: KEYS });
    const r = await send(t.app, sign('POST', `${B}/vpc/security-groups`, { data: GROUP }));
    expect(r.status).toBe(201);
    expect(r.body.security_group.id).toBe('sg-web');
  });

  it('GET with a multi-valued query filter (?id=a&id=b) and an unknown parameter', async () => {
    const t = await withGroup();
    await call(t.app, 'POST', `${B}/vpc/security-groups`, { security_group: { id: 'sg-db', name: 'db' } });
    const r = await send(t.app, sign('GET', `${B}/vpc/security-groups`, { query: { id: ['sg-web', 'sg-db'], not_a_filter: 'x' } }));
    expect(r.status).toBe(200);
    expect(r.body.security_groups.map((g: any) => g.id).sort()).toEqual(['sg-db', 'sg-web']);
  });

  it('GET with unicode and special characters in query values', async () => {
    const t = await withGroup();
    const created = await call(t.app, 'POST', `${B}/vpc/security-groups`, { security_group: { id: 'sg-u', name: 'u', description: 'wéb ü+x&y=z/~*😀' } });
    expect(created.status).toBe(201);
    const r = await send(t.app, sign('GET', `${B}/vpc/security-groups`, { query: { description: 'wéb ü+x&y=z/~*😀' } }));
    expect(r.status).toBe(200);
    expect(r.body.security_groups.map((g: any) => g.id)).toEqual(['sg-u']);
  });

  it('PUT updates the group', async () => {
    const t = await withGroup();
    const r = await send(t.app, sign('PUT', `${B}/vpc/security-groups/sg-web`, { data: { security_group: { name: 'renamed' } } }));
    expect(r.status).toBe(200);
    expect(r.body.security_group.name).toBe('renamed');
  });

  it('DELETE with Content-Type application/json and no body deletes (as the SDKs send it)', async () => {
    const t = await withGroup();
    const r = await send(t.app, sign('DELETE', `${B}/vpc/security-groups/sg-web`));
    expect(r.status).toBe(204);
    expect((await call(t.app, 'GET', `${B}/vpc/security-groups/sg-web`)).status).toBe(404);
  });

  it('a rule is created with a signed POST, and the actor of the audit event is the key name', async () => {
    const t = await withGroup();
    const r = await send(t.app, sign('POST', `${B}/vpc/security-group-rules`, { data: { security_group_rule: { security_group_id: 'sg-web', ...rule() } } }));
    expect(r.status).toBe(201);
    await t.audit.idle();
    const events = await t.store.listAuditEvents('proj-a', {} as any);
    const created = events.find((e) => e.operation === 'CreateSecurityGroupRule');
    expect(created).toMatchObject({ actor: 'ops', status: 201 });
    expect(JSON.stringify(events)).not.toContain('sk-ops-0123456789abcdef');
  });

  it('a key scoped to proj-a works in proj-a', async () => {
    const t = await withGroup();
    const r = await send(t.app, sign('GET', `${B}/vpc/security-groups/sg-web`, { ak: 'AKTEAMA012345678', sk: 'sk-team-a-0123456789' }));
    expect(r.status).toBe(200);
  });

  it('tokens keep working next to access keys', async () => {
    const t = await withGroup();
    expect((await call(t.app, 'GET', `${B}/vpc/security-groups/sg-web`, undefined, { 'x-auth-token': ADMIN })).status).toBe(200);
  });
});

describe('AK/SK refusals', () => {
  it('an unknown access key: 401 APIG.0301', async () => {
    const t = await withGroup();
    expectRefused(await send(t.app, sign('GET', `${B}/vpc/security-groups`, { ak: 'AKUNKNOWN0000000' })), 401, 'APIG.0301', /unknown access key/);
  });

  it('a wrong secret: 401 APIG.0301', async () => {
    const t = await withGroup();
    expectRefused(await send(t.app, sign('GET', `${B}/vpc/security-groups`, { sk: 'wrong-secret-000000' })), 401, 'APIG.0301', /signature/);
  });

  it('a stale date (16 minutes old) and a future date (16 minutes ahead): 401 APIG.0301, 15 minutes off still passes', async () => {
    const t = await withGroup();
    expectRefused(await send(t.app, sign('GET', `${B}/vpc/security-groups`, { date: '20240501T114400Z' })), 401, 'APIG.0301', /expired/);
    expectRefused(await send(t.app, sign('GET', `${B}/vpc/security-groups`, { date: '20240501T121600Z' })), 401, 'APIG.0301', /expired/);
    expect((await send(t.app, sign('GET', `${B}/vpc/security-groups`, { date: '20240501T114500Z' }))).status).toBe(200);
  });

  it('a missing or malformed X-Sdk-Date: 401 APIG.0301', async () => {
    const t = await withGroup();
    const s = sign('GET', `${B}/vpc/security-groups`);
    const { 'X-Sdk-Date': _date, ...noDate } = s.headers;
    expectRefused(await send(t.app, { ...s, headers: noDate }), 401, 'APIG.0301', /x-sdk-date/i);
    expectRefused(await send(t.app, { ...s, headers: { ...s.headers, 'X-Sdk-Date': '2024-05-01T12:00:00Z' } }), 401, 'APIG.0301', /X-Sdk-Date/);
  });

  it('a tampered body (same length) is refused before it is parsed: 401 APIG.0301, nothing created', async () => {
    const t = makeApi({ accessKeys: KEYS });
    const s = sign('POST', `${B}/vpc/security-groups`, { data: GROUP });
    expectRefused(await send(t.app, { ...s, payload: s.payload!.replace('sg-web', 'sg-bad') }), 401, 'APIG.0301', /signature/);
    // not even validated: an invalid body gets the 401, not a 400
    expectRefused(await send(t.app, { ...s, payload: '{"not json' }), 401, 'APIG.0301');
    expect((await call(t.app, 'GET', `${B}/vpc/security-groups/sg-bad`)).status).toBe(404);
  });

  it('X-Sdk-Content-Sha256 that is not the body hash, and UNSIGNED-PAYLOAD: 401 APIG.0301', async () => {
    const t = makeApi({ accessKeys: KEYS });
    const wrong = sign('POST', `${B}/vpc/security-groups`, { data: GROUP, headers: { 'X-Sdk-Content-Sha256': 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855' } });
    expectRefused(await send(t.app, wrong), 401, 'APIG.0301', /X-Sdk-Content-Sha256/);
    const unsigned = sign('POST', `${B}/vpc/security-groups`, { data: GROUP, headers: { 'X-Sdk-Content-Sha256': 'UNSIGNED-PAYLOAD' } });
    expectRefused(await send(t.app, unsigned), 401, 'APIG.0301', /UNSIGNED-PAYLOAD/);
  });

  it('a tampered query and a tampered path: 401 APIG.0301', async () => {
    const t = await withGroup();
    const q = sign('GET', `${B}/vpc/security-groups`, { query: { id: 'sg-web' } });
    expectRefused(await send(t.app, { ...q, url: `${B}/vpc/security-groups?id=sg-db` }), 401, 'APIG.0301');
    const p = sign('DELETE', `${B}/vpc/security-groups/sg-web`);
    expectRefused(await send(t.app, { ...p, url: `${B}/vpc/security-groups/default` }), 401, 'APIG.0301');
    expect((await call(t.app, 'GET', `${B}/vpc/security-groups/sg-web`)).status).toBe(200);
  });

  it('X-Project-Id of another project: 403 APIG.0302', async () => {
    const t = await withGroup();
    expectRefused(await send(t.app, sign('GET', `${B}/vpc/security-groups`, { headers: { 'X-Project-Id': 'proj-b' } })), 403, 'APIG.0302', /X-Project-Id/);
  });

  it('a project the key may not use: 403 APIG.0302', async () => {
    const t = await withGroup();
    const s = sign('GET', '/v3/proj-b/vpc/security-groups', { ak: 'AKTEAMA012345678', sk: 'sk-team-a-0123456789' });
    expectRefused(await send(t.app, s), 403, 'APIG.0302', /team-a.*proj-b/);
  });

  it('SignedHeaders without host or x-sdk-date: 401 APIG.0301', async () => {
    const t = await withGroup();
    const s = sign('GET', `${B}/vpc/security-groups`);
    for (const drop of ['host;', ';x-sdk-date']) {
      const auth = s.headers.Authorization!.replace(drop, '');
      expectRefused(await send(t.app, { ...s, headers: { ...s.headers, Authorization: auth } }), 401, 'APIG.0301', /SignedHeaders must include/);
    }
  });

  it('failed signatures count against the failed-authentication budget (429 after the burst)', async () => {
    const t = await withGroup();
    const bad = sign('GET', `${B}/vpc/security-groups`, { sk: 'wrong-secret-000000' });
    const statuses: number[] = [];
    for (let i = 0; i < 21; i++) statuses.push((await send(t.app, bad)).status);
    expect(statuses.slice(0, 20).every((s) => s === 401)).toBe(true);
    expect(statuses[20]).toBe(429);
  });

  it('a signed body over api.max_body_bytes is refused with 413 before its signature is computed', async () => {
    const t = makeApi({ accessKeys: KEYS });
    const big = { security_group: { id: 'sg-big', name: 'big', description: 'x'.repeat(70 * 1024) } };
    const r = await send(t.app, sign('POST', `${B}/vpc/security-groups`, { data: big }));
    expectRefused(r, 413, 'SG.0010', /larger than 65536 bytes/);
  });

  it('a failed signed write is audited with actor anonymous', async () => {
    const t = makeApi({ accessKeys: KEYS });
    const s = sign('POST', `${B}/vpc/security-groups`, { data: GROUP, sk: 'wrong-secret-000000' });
    expect((await send(t.app, s)).status).toBe(401);
    await t.audit.idle();
    const events = await t.store.listAuditEvents('proj-a', {} as any);
    expect(events[0]).toMatchObject({ actor: 'anonymous', status: 401, error_code: 'APIG.0301' });
  });
});

/** the signer's canonicalisation helpers (protected in its typings) */
const signer = AKSKSigner as unknown as { CanonicalURI(p: string): string; CanonicalQueryString(r: { queryParams: object }): string };

describe('canonical forms (as AKSKSigner)', () => {
  it('URI: raw segments encoded again, ending in /', () => {
    expect(canonicalUri('/v3/p/a%20b/x:y')).toBe(signer.CanonicalURI('/v3/p/a%20b/x:y'));
    expect(canonicalUri('/v3/p/a%20b/x:y')).toBe('/v3/p/a%2520b/x%3Ay/');
  });

  it('query: decoded, sorted keys and values, encoded', () => {
    const params = { b: ['z', 'a'], a: 'é ~*!', 'k k': '' };
    expect(canonicalQuery(stringify(params))).toBe(signer.CanonicalQueryString({ queryParams: structuredClone(params) }));
  });

  it('the pure verifier accepts the signer output and names the key', () => {
    const s = sign('PUT', `${B}/vpc/security-groups/sg-web`, { data: { security_group: { name: 'n' } } });
    const headers = Object.fromEntries(Object.entries(s.headers).map(([k, v]) => [k.toLowerCase(), v]));
    const pending = checkSignedHeaders({ method: 'PUT', url: s.url, headers, project: 'proj-a' }, KEYS, Date.UTC(2024, 4, 1, 12, 0, 0));
    expect(verifyPayload(pending, Buffer.from(s.payload!)).name).toBe('ops');
    expect(() => verifyPayload(pending, Buffer.from(s.payload!.replace('"n"', '"m"')))).toThrow(/signature/);
  });
});

describe('HTTP surface the SDKs need (token auth)', () => {
  it('DELETE with a Content-Type and no body is fine, whatever the type', async () => {
    const t = await withGroup();
    await call(t.app, 'POST', `${B}/vpc/security-groups`, { security_group: { id: 'sg-db', name: 'db' } });
    const json = await t.app.inject({ method: 'DELETE', url: `${B}/vpc/security-groups/sg-web`, headers: { 'x-auth-token': ADMIN, 'content-type': 'application/json' } });
    expect(json.statusCode).toBe(204);
    const text = await t.app.inject({ method: 'DELETE', url: `${B}/vpc/security-groups/sg-db`, headers: { 'x-auth-token': ADMIN, 'content-type': 'text/plain', 'content-length': '0' } });
    expect(text.statusCode).toBe(204);
  });

  it('GET with a Content-Type and no body is fine', async () => {
    const t = await withGroup();
    const r = await t.app.inject({ method: 'GET', url: `${B}/vpc/security-groups/sg-web`, headers: { 'x-auth-token': ADMIN, 'content-type': 'application/xml' } });
    expect(r.statusCode).toBe(200);
  });

  it('an unsigned DELETE gets 401 before anything else', async () => {
    const t = await withGroup();
    const r = await t.app.inject({ method: 'DELETE', url: `${B}/vpc/security-groups/sg-web`, headers: { 'content-type': 'application/json' } });
    expect(r.statusCode).toBe(401);
  });

  it('a POST with a JSON Content-Type and no body is still a 400', async () => {
    const t = makeApi({ accessKeys: KEYS });
    const r = await t.app.inject({ method: 'POST', url: `${B}/vpc/security-groups`, headers: { 'x-auth-token': ADMIN, 'content-type': 'application/json' } });
    expect(r.statusCode).toBe(400);
  });

  it('an unknown query parameter is ignored; repeated filters select any of their values', async () => {
    const t = await withGroup();
    await call(t.app, 'POST', `${B}/vpc/security-groups`, { security_group: { id: 'sg-db', name: 'db' } });
    const r = await call(t.app, 'GET', `${B}/vpc/security-groups?id=sg-web&id=sg-db&enterprise_project_id=all_granted_eps&bogus=1`);
    expect(r.status).toBe(200);
    expect(r.body.security_groups.map((g: any) => g.id).sort()).toEqual(['sg-db', 'sg-web']);
  });
});
