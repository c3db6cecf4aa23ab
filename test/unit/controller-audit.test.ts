/* eslint-disable @typescript-eslint/no-explicit-any -- response bodies and log lines are untyped JSON, checked by the assertions */
/**
 * The audit trail of the HTTP API: every write, accepted or refused, becomes
 * one stored event and one `event: "audit"` log line; `GET
 * /v3/{project_id}/audit-events` lists them. Real store, fake clock, fastify
 * inject.
 */
import { describe, expect, it } from 'vitest';
import { Writable } from 'node:stream';
import { FakeClock } from '../../src/lib/clock.js';
import { createLogger, silentLogger } from '../../src/lib/logger.js';
import { ManualScheduler } from '../../src/lib/scheduler.js';
import { AuditRecorder, AUDIT_PRUNE_SCHEDULE } from '../../src/controller/audit.js';
import { MemoryStore } from '../../src/controller/store/memory.js';
import { createController } from '../../src/controller/controller.js';
import { parseControllerConfig } from '../../src/controller/config.js';
import type { AuditEvent } from '../../src/controller/store/store.js';
import { ADMIN, AUTH, SCOPED, call, countingRandom, makeApi, rule, seed } from './controller-helpers.js';

const A = '/v3/proj-a';
const UA = { 'user-agent': 'audit-test/1.0' };

/** A logger whose JSON lines the test can read. */
function captureLogger() {
  const lines: any[] = [];
  const text: string[] = [];
  const stream = new Writable({
    write(chunk: Buffer, _enc, cb) {
      for (const l of chunk.toString().split('\n').filter(Boolean)) {
        text.push(l);
        lines.push(JSON.parse(l));
      }
      cb();
    },
  });
  return { logger: createLogger({ level: 'info', destination: stream }), lines, text };
}

async function events(t: ReturnType<typeof makeApi>, project = 'proj-a'): Promise<AuditEvent[]> {
  await t.audit.idle();
  return t.store.listAuditEvents(project, {});
}

describe('audit events of API writes', () => {
  it('records an accepted create with actor, operation, ids, request id, status, source and user agent, and logs it', async () => {
    const log = captureLogger();
    const t = makeApi({ logger: log.logger });
    const r = await call(t.app, 'POST', `${A}/vpc/security-groups`, { security_group: { id: 'sg-web', name: 'web' } }, { ...AUTH, ...UA });
    expect(r.status).toBe(201);
    const [e, ...rest] = await events(t);
    expect(rest).toEqual([]);
    expect(e).toEqual({
      id: expect.any(String),
      time: '2024-05-01T12:00:00.000Z',
      actor: 'admin',
      project_id: 'proj-a',
      operation: 'CreateSecurityGroup',
      resource_type: 'security_group',
      resource_ids: ['sg-web'],
      request_id: r.body.request_id,
      status: 201,
      error_code: null,
      source_ip: '127.0.0.1',
      user_agent: 'audit-test/1.0',
      detail: null,
    });
    const lines = log.lines.filter((l) => l.event === 'audit');
    expect(lines).toHaveLength(1);
    // pino has its own `time`: the event's is `event_time` in the line
    const { time, ...fields } = e!;
    expect(lines[0]).toMatchObject({ ...fields, event_time: time });
    expect(lines[0].time).not.toBe(time);
  });

  it('records through the SQLite store as through the memory fake', async () => {
    const t = makeApi({ sqlite: true });
    const r = await call(t.app, 'POST', `${A}/vpc/address-groups`, { address_group: { id: 'ag-1', name: 'a', ip_version: 4, ip_set: ['198.18.0.1'] } });
    expect(r.status).toBe(201);
    expect((await call(t.app, 'DELETE', `${A}/vpc/address-groups/ag-1`)).status).toBe(204);
    await t.audit.idle();
    const l = await call(t.app, 'GET', `${A}/audit-events`);
    expect(l.body.audit_events.map((e: any) => [e.operation, e.resource_ids, e.status])).toEqual([
      ['DeleteAddressGroup', ['ag-1'], 204],
      ['CreateAddressGroup', ['ag-1'], 201],
    ]);
    await t.store.close();
  });

  it('records the id a create generated when the body named none, and every rule of a batch', async () => {
    const t = makeApi();
    const g = await call(t.app, 'POST', `${A}/vpc/security-groups`, { security_group: { name: 'anon' } });
    expect(g.status).toBe(201);
    const b = await call(t.app, 'POST', `${A}/vpc/security-groups/${g.body.security_group.id}/security-group-rules/batch-create`, {
      security_group_rules: [rule({ id: 'r-1' }), rule({ id: 'r-2', multiport: '443' })],
    });
    expect(b.status).toBe(201);
    const [batch, create] = await events(t);
    expect(create).toMatchObject({ operation: 'CreateSecurityGroup', resource_ids: [g.body.security_group.id] });
    expect(batch).toMatchObject({ operation: 'BatchCreateSecurityGroupRules', resource_type: 'security_group_rule', resource_ids: [g.body.security_group.id, 'r-1', 'r-2'] });
  });

  it('records a refused create (400) with its error code', async () => {
    const t = makeApi();
    await seed(t.app);
    const r = await call(t.app, 'POST', `${A}/vpc/security-group-rules`, { security_group_rule: { security_group_id: 'sg-web', ...rule({ protocol: 'icmp', ethertype: 'IPv6' }) } });
    expect(r.status).toBe(400);
    const [e] = await events(t);
    expect(e).toMatchObject({ actor: 'admin', operation: 'CreateSecurityGroupRule', status: 400, error_code: 'SG.0001', request_id: r.body.request_id, resource_ids: [] });
  });

  it('records a 401 with a wrong token as anonymous, and never stores or logs the token', async () => {
    const log = captureLogger();
    const t = makeApi({ logger: log.logger });
    const secret = 'wrong-token-d6f0c9a1b2e3';
    const r = await call(t.app, 'DELETE', `${A}/vpc/security-groups/sg-web`, undefined, { 'x-auth-token': secret });
    expect(r.status).toBe(401);
    const r2 = await call(t.app, 'POST', `${A}/instances`, { instance: { id: 'i' } }, { authorization: `Bearer ${secret}` });
    expect(r2.status).toBe(401);
    const es = await events(t);
    expect(es.map((e) => [e.actor, e.operation, e.status, e.error_code, e.resource_ids])).toEqual([
      ['anonymous', 'CreateInstance', 401, 'SG.0002', []],
      ['anonymous', 'DeleteSecurityGroup', 401, 'SG.0002', ['sg-web']],
    ]);
    expect(JSON.stringify(es)).not.toContain(secret);
    expect(log.text.join('\n')).not.toContain(secret);
    expect(log.lines.filter((l) => l.event === 'audit')).toHaveLength(2);
  });

  it('records a 403 for another project under that project, visible to a token allowed there, not to the refused one', async () => {
    const t = makeApi();
    const r = await call(t.app, 'POST', '/v3/proj-b/vpc/security-groups', { security_group: { id: 'sg-x', name: 'x' } }, { 'x-auth-token': SCOPED });
    expect(r.status).toBe(403);
    const [e] = await events(t, 'proj-b');
    expect(e).toMatchObject({ actor: 'scoped', project_id: 'proj-b', operation: 'CreateSecurityGroup', status: 403, error_code: 'SG.0003' });
    expect((await call(t.app, 'GET', '/v3/proj-b/audit-events', undefined, { 'x-auth-token': SCOPED })).status).toBe(403);
    expect((await call(t.app, 'GET', '/v3/proj-b/audit-events', undefined, { 'x-auth-token': 'nope-nope-nope-nope' })).status).toBe(401);
    const l = await call(t.app, 'GET', '/v3/proj-b/audit-events', undefined, { 'x-auth-token': ADMIN });
    expect(l.status).toBe(200);
    expect(l.body.audit_events.map((x: any) => x.request_id)).toEqual([r.body.request_id]);
    expect((await call(t.app, 'GET', `${A}/audit-events`)).body.audit_events).toEqual([]);
  });

  it('records a dry run as 202 SYS.0202, and 404/409 refusals; reads are not recorded', async () => {
    const t = makeApi();
    await seed(t.app);
    await t.audit.idle();
    const before = (await events(t)).length;
    expect((await call(t.app, 'POST', `${A}/vpc/security-groups`, { dry_run: true, security_group: { id: 'sg-dry', name: 'd' } })).status).toBe(202);
    expect((await call(t.app, 'DELETE', `${A}/vpc/security-group-rules/nope`)).status).toBe(404);
    expect((await call(t.app, 'DELETE', `${A}/vpc/security-groups/sg-web`)).status).toBe(409);
    expect((await call(t.app, 'POST', `${A}/vpc/no-such-thing`, {})).status).toBe(404);
    expect((await call(t.app, 'GET', `${A}/vpc/security-groups`)).status).toBe(200);
    const es = (await events(t)).slice(0, (await events(t)).length - before);
    expect(es.map((e) => [e.operation, e.resource_ids, e.status, e.error_code])).toEqual([
      ['Unknown', [], 404, 'APIG.0101'],
      ['DeleteSecurityGroup', ['sg-web'], 409, 'VPC.9902'],
      ['DeleteSecurityGroupRule', ['nope'], 404, 'VPC.9904'],
      ['CreateSecurityGroup', [], 202, 'SYS.0202'],
    ]);
  });

  it('names every write operation from the route table', async () => {
    const t = makeApi();
    const writes: [string, string][] = [
      ['POST', '/vpc/security-groups'],
      ['PUT', '/vpc/security-groups/x'],
      ['DELETE', '/vpc/security-groups/x'],
      ['POST', '/vpc/security-group-rules'],
      ['POST', '/vpc/security-groups/x/security-group-rules/batch-create'],
      ['DELETE', '/vpc/security-group-rules/x'],
      ['POST', '/vpc/address-groups'],
      ['PUT', '/vpc/address-groups/x'],
      ['DELETE', '/vpc/address-groups/x'],
      ['POST', '/instances'],
      ['PUT', '/instances/x'],
      ['DELETE', '/instances/x'],
      ['POST', '/instances/x/rotate-token'],
    ];
    for (const [m, u] of writes) await call(t.app, m as 'POST', `${A}${u}`, m === 'DELETE' ? undefined : {});
    const es = (await events(t)).reverse();
    expect(es.map((e) => `${e.operation} ${e.resource_type}`)).toEqual([
      'CreateSecurityGroup security_group',
      'UpdateSecurityGroup security_group',
      'DeleteSecurityGroup security_group',
      'CreateSecurityGroupRule security_group_rule',
      'BatchCreateSecurityGroupRules security_group_rule',
      'DeleteSecurityGroupRule security_group_rule',
      'CreateAddressGroup address_group',
      'UpdateAddressGroup address_group',
      'DeleteAddressGroup address_group',
      'CreateInstance instance',
      'UpdateInstance instance',
      'DeleteInstance instance',
      'RotateInstanceToken instance',
    ]);
  });

  it('records the instance id of a token rotation, never the token', async () => {
    const t = makeApi();
    await seed(t.app);
    const r = await call(t.app, 'POST', `${A}/instances/ecs-web-1/rotate-token`);
    expect(r.status).toBe(200);
    const es = await events(t);
    expect(es[0]).toMatchObject({ operation: 'RotateInstanceToken', resource_ids: ['ecs-web-1'], status: 200 });
    expect(es.find((e) => e.operation === 'CreateInstance')).toMatchObject({ resource_ids: ['ecs-web-1'] });
    expect(JSON.stringify(es)).not.toContain(r.body.token);
  });

  it('answers the request when storing the event fails, and logs the failure', async () => {
    const log = captureLogger();
    const store = new MemoryStore();
    store.appendAuditEvent = () => Promise.reject(new Error('disk full'));
    const t = makeApi({ store, logger: log.logger });
    expect((await call(t.app, 'POST', `${A}/vpc/security-groups`, { security_group: { id: 'sg-web', name: 'web' } })).status).toBe(201);
    await t.audit.idle();
    expect(log.lines.find((l) => l.event === 'audit_store_failed')).toMatchObject({ level: 50, operation: 'CreateSecurityGroup', status: 201 });
    expect(log.lines.find((l) => l.event === 'audit')).toMatchObject({ operation: 'CreateSecurityGroup' });
  });

  it('bounds the stored user agent', async () => {
    const t = makeApi();
    await call(t.app, 'DELETE', `${A}/vpc/security-groups/x`, undefined, { ...AUTH, 'user-agent': 'u'.repeat(5000) });
    const [e] = await events(t);
    expect(e!.user_agent).toBe('u'.repeat(256));
  });
});

describe('GET /v3/{project_id}/audit-events', () => {
  /** Six events at one-minute steps: 3 creates (201), a 400, a 404 by the scoped token, a delete (204). */
  async function history() {
    const t = makeApi();
    const ids: string[] = [];
    const step = async (m: 'POST' | 'DELETE', u: string, body?: unknown, h: Record<string, string> = AUTH) => {
      const r = await t.app.inject({ method: m, url: `${A}${u}`, headers: h, ...(body === undefined ? {} : { payload: body as object }) });
      ids.push(String(r.headers['x-request-id']));
      await t.clock.advance(60_000);
      return r;
    };
    await step('POST', '/vpc/security-groups', { security_group: { id: 'sg-1', name: 'a' } });
    await step('POST', '/vpc/security-groups', { security_group: { id: 'sg-2', name: 'b' } });
    await step('POST', '/vpc/security-groups', { security_group: { id: 'sg-3', name: 'c' } });
    await step('POST', '/vpc/security-groups', { security_group: { name: 5 } });
    await step('DELETE', '/vpc/security-groups/sg-9', undefined, { 'x-auth-token': SCOPED });
    await step('DELETE', '/vpc/security-groups/sg-2');
    await t.audit.idle();
    return { t, ids };
  }
  const list = async (t: ReturnType<typeof makeApi>, q: string) => {
    const r = await call(t.app, 'GET', `${A}/audit-events${q}`);
    expect(r.status, r.text).toBe(200);
    return r.body;
  };
  const ops = (b: any) => b.audit_events.map((e: any) => `${e.operation}:${e.status}`);

  it('lists newest first with request_id and page_info, in the same shape as the other lists', async () => {
    const { t, ids } = await history();
    const b = await list(t, '');
    expect(Object.keys(b)).toEqual(['request_id', 'audit_events', 'page_info']);
    expect(ops(b)).toEqual(['DeleteSecurityGroup:204', 'DeleteSecurityGroup:404', 'CreateSecurityGroup:400', 'CreateSecurityGroup:201', 'CreateSecurityGroup:201', 'CreateSecurityGroup:201']);
    expect(b.audit_events.map((e: any) => e.request_id)).toEqual([...ids].reverse());
    expect(b.page_info).toEqual({ previous_marker: b.audit_events[0].id, current_count: 6 });
    expect(Object.keys(b.audit_events[0])).toEqual([
      'id', 'time', 'actor', 'project_id', 'operation', 'resource_type', 'resource_ids', 'request_id', 'status', 'error_code', 'source_ip', 'user_agent', 'detail',
    ]);
  });

  it('filters by operation, actor, resource_id, status, result, time range and request_id', async () => {
    const { t, ids } = await history();
    expect(ops(await list(t, '?operation=DeleteSecurityGroup'))).toEqual(['DeleteSecurityGroup:204', 'DeleteSecurityGroup:404']);
    expect(ops(await list(t, '?actor=scoped'))).toEqual(['DeleteSecurityGroup:404']);
    expect(ops(await list(t, '?resource_id=sg-2'))).toEqual(['DeleteSecurityGroup:204', 'CreateSecurityGroup:201']);
    expect(ops(await list(t, '?status=400&status=404'))).toEqual(['DeleteSecurityGroup:404', 'CreateSecurityGroup:400']);
    expect(ops(await list(t, '?result=failure'))).toEqual(['DeleteSecurityGroup:404', 'CreateSecurityGroup:400']);
    expect((await list(t, '?result=success')).audit_events).toHaveLength(4);
    // from inclusive, to exclusive; times from the fake clock, one minute apart from 12:00
    expect((await list(t, '?from=2024-05-01T12:01:00Z&to=2024-05-01T12:03:00Z')).audit_events.map((e: any) => e.time)).toEqual([
      '2024-05-01T12:02:00.000Z',
      '2024-05-01T12:01:00.000Z',
    ]);
    expect((await list(t, `?request_id=${ids[2]}`)).audit_events.map((e: any) => e.resource_ids)).toEqual([['sg-3']]);
    expect(ops(await list(t, '?operation=CreateSecurityGroup&result=success&resource_id=sg-1'))).toEqual(['CreateSecurityGroup:201']);
  });

  it('pages with limit and marker (the marker need not match the filters) and refuses bad parameters with 400', async () => {
    const { t } = await history();
    const p1 = await list(t, '?limit=4');
    expect(p1.audit_events).toHaveLength(4);
    expect(p1.page_info).toEqual({ previous_marker: p1.audit_events[0].id, current_count: 4, next_marker: p1.audit_events[3].id });
    const p2 = await list(t, `?limit=4&marker=${p1.page_info.next_marker}`);
    expect(ops(p2)).toEqual(['CreateSecurityGroup:201', 'CreateSecurityGroup:201']);
    expect(p2.page_info).toEqual({ previous_marker: p2.audit_events[0].id, current_count: 2 });
    const all = (await list(t, '')).audit_events;
    // the marker is the 404 (a failure): the successes after it
    expect(ops(await list(t, `?result=success&marker=${all[1].id}`))).toEqual(['CreateSecurityGroup:201', 'CreateSecurityGroup:201', 'CreateSecurityGroup:201']);
    for (const q of ['?marker=nope', '?from=yesterday', '?result=maybe', '?status=abc', '?limit=2001']) {
      const r = await call(t.app, 'GET', `${A}/audit-events${q}`);
      expect([q, r.status, r.body.error_code]).toEqual([q, 400, 'SG.0001']);
    }
  });
});

describe('audit retention', () => {
  it('prunes events older than retention_days at start and on the scheduler, by the injected clock', async () => {
    const clock = new FakeClock(Date.UTC(2024, 0, 1));
    const store = new MemoryStore();
    const rec = new AuditRecorder({ store, clock, logger: silentLogger(), random: countingRandom(), retentionDays: 90 });
    const ev = (id: string, daysAgo: number): AuditEvent => ({
      id, time: new Date(clock.now() - daysAgo * 86_400_000).toISOString(), actor: 'admin', project_id: 'p', operation: 'DeleteSecurityGroup',
      resource_type: 'security_group', resource_ids: [], request_id: null, status: 204, error_code: null, source_ip: null, user_agent: null, detail: null,
    });
    await store.appendAuditEvent(ev('old', 91));
    await store.appendAuditEvent(ev('edge', 89));
    const scheduler = new ManualScheduler();
    await rec.startRetention(scheduler);
    expect(scheduler.jobs.map((j) => j.expression)).toEqual([AUDIT_PRUNE_SCHEDULE]);
    expect((await store.listAuditEvents('p', {})).map((e) => e.id)).toEqual(['edge']);
    rec.record({ actor: 'admin', project_id: 'p', operation: 'CreateSecurityGroup', resource_type: 'security_group', resource_ids: [], request_id: null, status: 201, error_code: null, source_ip: null, user_agent: null, detail: null });
    await rec.idle();
    await clock.advance(2 * 86_400_000);
    await scheduler.fire();
    expect((await store.listAuditEvents('p', {})).map((e) => e.operation)).toEqual(['CreateSecurityGroup']);
    await clock.advance(89 * 86_400_000);
    await scheduler.fire();
    expect(await store.listAuditEvents('p', {})).toEqual([]);
    rec.stop();
    expect(scheduler.jobs[0]!.stopped).toBe(true);
  });

  it('the controller prunes at start with audit.retention_days and stops the job on stop', async () => {
    const clock = new FakeClock(Date.UTC(2024, 0, 1));
    const store = new MemoryStore();
    const old = (id: string, days: number): AuditEvent => ({
      id, time: new Date(clock.now() - days * 86_400_000).toISOString(), actor: 'admin', project_id: 'p', operation: 'DeleteSecurityGroup',
      resource_type: 'security_group', resource_ids: [], request_id: null, status: 204, error_code: null, source_ip: null, user_agent: null, detail: null,
    });
    await store.appendAuditEvent(old('a', 8));
    await store.appendAuditEvent(old('b', 6));
    const scheduler = new ManualScheduler();
    const config = parseControllerConfig({ listen: { host: '127.0.0.1', port: 0 }, api: { tokens: [{ name: 'admin', token: ADMIN }] }, audit: { retention_days: 7 }, metrics: { process_metrics: false } });
    const ctl = createController({ config, clock, store, scheduler, logger: silentLogger(), random: countingRandom() });
    await ctl.start();
    try {
      expect((await store.listAuditEvents('p', {})).map((e) => e.id)).toEqual(['b']);
      expect(scheduler.jobs.map((j) => [j.expression, j.stopped])).toEqual([[AUDIT_PRUNE_SCHEDULE, false]]);
    } finally {
      await ctl.stop();
    }
    expect(scheduler.jobs[0]!.stopped).toBe(true);
  });
});
