/**
 * The PostgreSQL store beyond the shared contract (controller-store.test.ts):
 * migrations when replicas start at once, races between two replicas (two
 * PostgresStore instances = two controller processes over one database), the
 * shared document tails, rollback, and a database out of reach. A real
 * throwaway cluster (test/helpers/postgres.ts).
 */
import { describe, expect, it, vi } from 'vitest';
import pg from 'pg';
import { openPostgresStore, postgresClientConfig, type PostgresStore } from '../../src/controller/store/postgres.js';
import { createPostgresFeed } from '../../src/controller/store/postgres-feed.js';
import type { FeedHint } from '../../src/controller/change-feed.js';
import { systemClock } from '../../src/lib/clock.js';
import { MIGRATIONS } from '../../src/controller/store/postgres-schema.js';
import type { Store } from '../../src/controller/store/store.js';
import type { Op } from '../../src/controller/model.js';
import { createProjectOps } from '../../src/controller/domain.js';
import { cryptoRandom } from '../../src/controller/tokens.js';
import { isSecgroupError } from '../../src/lib/errors.js';
import { captureLogs } from '../helpers/log-capture.js';
import { parseControllerConfig } from '../../src/controller/config.js';
import { createController } from '../../src/controller/controller.js';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { usePostgres } from '../helpers/postgres.js';
import { call, makeApi, rule, seed } from './controller-helpers.js';
import { openSqliteStore } from '../../src/controller/store/sqlite.js';
import { hashToken } from '../../src/controller/tokens.js';
import { runCli } from '../helpers/cli.js';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';

const NOW = '2024-05-01T12:00:00Z';
// a real server, restarted by some tests, on a machine the whole unit suite loads: more than the default 5 s
vi.setConfig({ testTimeout: 60_000 });
const cluster = usePostgres();

const commit = (s: Store, project: string, ops: Op[]) => s.mutate(project, () => ({ ops, value: null }));
const inst = (id: string) => ({ id, name: '', addresses: [], security_groups: ['default'], created_at: NOW, updated_at: NOW });

async function sql<T extends pg.QueryResultRow>(url: string, text: string, params: unknown[] = []): Promise<T[]> {
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  try {
    return (await c.query<T>(text, params)).rows;
  } finally {
    await c.end();
  }
}

/** Two replicas: two stores (two pools) over one new database. */
async function twoReplicas(): Promise<{ url: string; a: PostgresStore; b: PostgresStore }> {
  const url = await cluster().createDatabase();
  return { url, a: await openPostgresStore({ url }), b: await openPostgresStore({ url }) };
}

describe('PostgreSQL store: migrations', () => {
  it('4 replicas opening a fresh database at once migrate it exactly once, and reopen it without migrating', async () => {
    const url = await cluster().createDatabase();
    const logs = [0, 1, 2, 3].map(() => captureLogs('info'));
    const stores = await Promise.all(logs.map((l) => openPostgresStore({ url, logger: l.logger })));
    expect(logs.flatMap((l) => l.lines.filter((x) => x.event === 'store_migrated'))).toEqual([expect.objectContaining({ from: 0, to: MIGRATIONS.length })]);
    expect(await sql(url, 'SELECT version FROM secgroup_schema')).toEqual([{ version: MIGRATIONS.length }]);
    expect(await sql(url, 'SELECT key, value FROM meta')).toEqual([{ key: 'revision_counter', value: '0' }]);
    // all four work on the one schema
    await commit(stores[0]!, 'p', createProjectOps(NOW));
    for (const s of stores) expect((await s.loadProject('p'))!.version).toBe(1);
    await Promise.all(stores.map((s) => s.close()));
    const again = captureLogs('info');
    const s = await openPostgresStore({ url, logger: again.logger });
    expect(again.lines.filter((x) => x.event === 'store_migrated')).toEqual([]);
    await s.close();
  });

  it('refuses a database written by a newer program (STATE_IO)', async () => {
    const url = await cluster().createDatabase();
    await (await openPostgresStore({ url })).close();
    await sql(url, 'UPDATE secgroup_schema SET version = $1', [MIGRATIONS.length + 1]);
    const err = await openPostgresStore({ url }).catch((e: unknown) => e);
    expect(isSecgroupError(err, 'STATE_IO')).toBe(true);
    expect((err as Error).message).toMatch(/newer than this program/);
  });
});

describe('PostgreSQL store: two replicas racing', () => {
  it('the same rule created at the same moment through two replicas: exactly one 201 and one 409, every time', async () => {
    const { a, b } = await twoReplicas();
    const ra = makeApi({ store: a, random: cryptoRandom });
    const rb = makeApi({ store: b, random: cryptoRandom });
    expect((await call(ra.app, 'POST', '/v3/p/vpc/security-groups', { security_group: { id: 'sg', name: 'sg' } })).status).toBe(201);
    for (let port = 1; port <= 12; port++) {
      const body = { security_group_rule: { security_group_id: 'sg', ...rule({ multiport: String(port) }) } };
      const both = await Promise.all([call(ra.app, 'POST', '/v3/p/vpc/security-group-rules', body), call(rb.app, 'POST', '/v3/p/vpc/security-group-rules', body)]);
      expect(both.map((r) => r.status).sort(), `port ${port}`).toEqual([201, 409]);
    }
    const snap = (await a.loadProject('p'))!;
    expect(snap.rules.filter((r) => r.security_group_id === 'sg' && r.protocol === 'tcp')).toHaveLength(12);
    await a.close();
    await b.close();
  });

  it('a quota holds under concurrent creates through both replicas: exactly Q rules, the others refused with the quota error', async () => {
    const { a, b } = await twoReplicas();
    const Q = 10;
    const ra = makeApi({ store: a, random: cryptoRandom, quotas: { rules_per_group: Q } });
    const rb = makeApi({ store: b, random: cryptoRandom, quotas: { rules_per_group: Q } });
    expect((await call(ra.app, 'POST', '/v3/p/vpc/security-groups', { security_group: { id: 'sg', name: 'sg' } })).status).toBe(201);
    const seeded = (await a.loadProject('p'))!.rules.filter((r) => r.security_group_id === 'sg').length;
    const results = await Promise.all(
      Array.from({ length: 24 }, (_, i) =>
        call(i % 2 ? ra.app : rb.app, 'POST', '/v3/p/vpc/security-group-rules', { security_group_rule: { security_group_id: 'sg', ...rule({ multiport: String(1000 + i) }) } }),
      ),
    );
    expect(results.filter((r) => r.status === 201)).toHaveLength(Q - seeded);
    expect(results.filter((r) => r.status !== 201).map((r) => [r.status, r.body.error_code])).toEqual(Array(24 - (Q - seeded)).fill([409, 'VPC.9905']));
    expect((await b.loadProject('p'))!.rules.filter((r) => r.security_group_id === 'sg')).toHaveLength(Q);
    await a.close();
    await b.close();
  });

  it('revisions over 2 replicas x many concurrent commits: never handed out twice, per instance only growing, the counter at the last', async () => {
    const { a, b } = await twoReplicas();
    const projects = ['p', 'q', 'r'];
    for (const p of projects) await commit(a, p, [...createProjectOps(NOW), ...['i1', 'i2'].map((id): Op => ({ op: 'putInstance', instance: inst(id) }))]);
    const set = (id: string, n: number): Op => ({ op: 'setPolicy', instanceId: id, body: `{"n":${n}}`, hash: `h${n}` });
    const results = await Promise.all(
      Array.from({ length: 90 }, async (_, n) => {
        const project = projects[n % 3]!;
        const ops = n % 2 ? [set('i1', n), set('i2', n)] : [set(n % 4 ? 'i1' : 'i2', n)];
        return { project, ...(await commit(n % 2 ? a : b, project, ops)) };
      }),
    );
    const all = results.flatMap((r) => [...r.revisions.values()]);
    expect(new Set(all).size).toBe(all.length);
    expect(all.sort((x, y) => x - y)).toEqual(Array.from({ length: all.length }, (_, i) => i + 1));
    expect(await a.revisionCounter()).toBe(all.length);
    for (const p of projects) {
      // in commit order (the project's version), each instance's revisions only grow
      const ordered = results.filter((r) => r.project === p).sort((x, y) => x.version - y.version);
      expect(ordered.map((r) => r.version)).toEqual(Array.from({ length: 30 }, (_, i) => i + 2));
      for (const id of ['i1', 'i2']) {
        const revs = ordered.flatMap((r) => (r.revisions.has(id) ? [r.revisions.get(id)!] : []));
        expect(revs, `${p}/${id}`).toEqual([...revs].sort((x, y) => x - y));
        expect((await b.getPolicy(p, id))!.revision).toBe(revs.at(-1));
      }
    }
    await a.close();
    await b.close();
  });

  it('agent state written through one replica is read through the other; a batch of updates keeps each caller\'s order', async () => {
    const { a, b } = await twoReplicas();
    await commit(a, 'p', [...createProjectOps(NOW), { op: 'putInstance', instance: inst('i1') }, { op: 'putInstance', instance: inst('i2') }]);
    const written = await Promise.all([
      a.updateAgentState('p', 'i1', { applied_revision: 1, hostname: 'h1' }),
      a.updateAgentState('p', 'i1', { applied_revision: 2 }),
      a.updateAgentState('p', 'i2', { agent_version: 'v' }),
      a.updateAgentState('p', 'nope', { applied_revision: 3 }),
    ]);
    // each found what the calls before it left (null: no such instance, nothing written)
    expect(written).toEqual([{ applied_revision: null }, { applied_revision: 1 }, { applied_revision: null }, null]);
    expect(await b.getAgentState('p', 'i1')).toMatchObject({ applied_revision: 2, hostname: 'h1', last_ack: null });
    expect(await b.getAgentState('p', 'i2')).toMatchObject({ agent_version: 'v', applied_revision: null });
    await a.close();
    await b.close();
  });
});

describe('PostgreSQL store: documents and transactions', () => {
  it('keeps a shared document tail once per project, gives back whole bodies and drops tails no document uses', async () => {
    const url = await cluster().createDatabase();
    const s = await openPostgresStore({ url });
    const parts = (instance: string, text: string, hash: string) => ({ instance, shared: text, sharedHash: hash, members: '[]' });
    const t1 = '"shared":[1,2,3]}';
    const r = await commit(s, 'p', [
      ...createProjectOps(NOW),
      { op: 'putInstance', instance: inst('a') },
      { op: 'putInstance', instance: inst('b') },
      { op: 'setPolicy', instanceId: 'a', body: `{"i":"a",${t1}`, hash: 'ha', parts: parts('{"i":"a",', t1, 't1') },
      { op: 'setPolicy', instanceId: 'b', body: `{"i":"b",${t1}`, hash: 'hb', parts: parts('{"i":"b",', t1, 't1') },
    ]);
    expect(await s.getPolicy('p', 'a')).toEqual({ revision: r.revisions.get('a'), body: '{"i":"a","shared":[1,2,3]}' });
    expect(await s.getPolicy('p', 'b')).toEqual({ revision: r.revisions.get('b'), body: '{"i":"b","shared":[1,2,3]}' });
    const tails = () => sql(url, 'SELECT hash FROM policy_tails ORDER BY hash');
    expect(await tails()).toEqual([{ hash: 't1' }]);
    await commit(s, 'p', [{ op: 'setPolicy', instanceId: 'a', body: '{"i":"a","x":1}', hash: 'ha2', parts: parts('{"i":"a",', t1, 't1') }]);
    // parts that do not add up to the body are not used: the body is stored whole
    expect((await s.getPolicy('p', 'a'))!.body).toBe('{"i":"a","x":1}');
    expect(await tails()).toEqual([{ hash: 't1' }]);
    await commit(s, 'p', [{ op: 'deleteInstance', id: 'b' }]);
    expect(await tails()).toEqual([]);
    await s.close();
  });

  it('reads many documents with one shared tail in two queries, as one string with its parts (the hub encodes it once)', async () => {
    const url = await cluster().createDatabase();
    const s = await openPostgresStore({ url });
    const members = '{"g":["198.18.0.1"]}';
    const tail = `"security_groups":[],"address_groups":[],"group_members":${members}}`;
    const ids = Array.from({ length: 50 }, (_, k) => `i${k}`);
    await commit(s, 'p', [
      ...createProjectOps(NOW),
      ...ids.map((id) => ({ op: 'putInstance' as const, instance: inst(id) })),
      ...ids.map((id) => ({ op: 'setPolicy' as const, instanceId: id, body: `{"instance":"${id}",${tail}`, hash: `h-${id}`, parts: { instance: `{"instance":"${id}",`, shared: tail, sharedHash: 't', members } })),
    ]);
    const queries = vi.spyOn(pg.Pool.prototype, 'query');
    const got = await s.getPolicies('p', ids);
    expect(queries).toHaveBeenCalledTimes(2);
    queries.mockRestore();
    expect(got.size).toBe(50);
    const shared = got.get('i0')!.parts!.shared;
    for (const id of ids) {
      const p = got.get(id)!;
      expect(p.parts).toEqual({ instance: `{"instance":"${id}",`, shared: tail, sharedHash: 't', members });
      // one string for all of them, not 50 copies
      expect(Object.is(p.parts!.shared, shared)).toBe(true);
      expect(p.body).toBe(`{"instance":"${id}",${tail}`);
    }
    await s.close();
  });

  it('a failing op rolls the whole commit back, and so does REVISION_EXHAUSTED', async () => {
    const url = await cluster().createDatabase();
    const s = await openPostgresStore({ url });
    await commit(s, 'p', [...createProjectOps(NOW), { op: 'putInstance', instance: inst('i') }]);
    const group = { id: 'g2', name: 'g2', description: '', enterprise_project_id: '0', tags: [], created_at: NOW, updated_at: NOW };
    await expect(commit(s, 'p', [{ op: 'putGroup', group }, { op: 'putRule', rule: { ...(await s.loadProject('p'))!.rules[0]!, id: 'orphan', security_group_id: 'missing' } }])).rejects.toThrow();
    await sql(url, "UPDATE meta SET value = $1 WHERE key = 'revision_counter'", [2 ** 48]);
    const err = await commit(s, 'p', [{ op: 'putGroup', group }, { op: 'setPolicy', instanceId: 'i', body: '{}', hash: 'h' }]).catch((e: unknown) => e);
    expect(isSecgroupError(err, 'REVISION_EXHAUSTED')).toBe(true);
    const snap = (await s.loadProject('p'))!;
    expect(snap.version).toBe(1);
    expect(snap.groups.map((g) => g.id)).toEqual(['default']);
    expect(await s.revisionCounter()).toBe(2 ** 48);
    await s.close();
  });

  it('rules put by one commit (a batch of rule creates) are stored in their order, a later put of one id winning, with every field as given', async () => {
    const { a, b } = await twoReplicas();
    await commit(a, 'p', createProjectOps(NOW));
    const base = (await a.loadProject('p'))!.rules[0]!;
    const r = (id: string, port: string, extra: Partial<typeof base> = {}) => ({ ...base, id, protocol: 'tcp', multiport: port, remote_group_id: null, remote_ip_prefix: '198.18.0.0/24', ...extra });
    const ops: Op[] = [
      { op: 'putRule', rule: r('r1', '1', { icmp_type: null, description: 'one', enabled: false }) },
      { op: 'putRule', rule: r('r2', '2', { protocol: 'icmp', multiport: null, icmp_type: 8, icmp_code: 0, priority: 7 }) },
      { op: 'putRule', rule: r('r1', '11', { description: 'one again' }) },
      { op: 'putRule', rule: r('r3', '3', { ethertype: 'IPv6', remote_ip_prefix: 'fd00:5ec::/64', direction: 'egress', action: 'deny' }) },
    ];
    await commit(a, 'p', ops);
    // read through the other replica: from the database, not from a's cache
    const rules = (await b.loadProject('p'))!.rules.filter((x) => x.id.startsWith('r'));
    expect(rules).toEqual([ops[2], ops[1], ops[3]].map((o) => (o as Extract<Op, { op: 'putRule' }>).rule));
    await a.close();
    await b.close();
  });
});

describe('controller on store.driver postgres', () => {
  const PASSWORD = 'pw-Zq8-never-logged';

  it('starts on the configured database with the password from the environment or a file, and never logs it, also when the connection fails', async () => {
    const admin = cluster().url();
    // a role that must log in with its password (the cluster trusts its other users)
    await sql(admin, `CREATE ROLE sgpw LOGIN PASSWORD '${PASSWORD}'`);
    const dbUrl = await cluster().createDatabase();
    const db = new URL(dbUrl).pathname.slice(1);
    await sql(admin, `ALTER DATABASE ${db} OWNER TO sgpw`);
    const hba = join(cluster().dir, 'data', 'pg_hba.conf');
    writeFileSync(hba, `local all sgpw scram-sha-256\n${readFileSync(hba, 'utf8')}`);
    await sql(admin, 'SELECT pg_reload_conf()');
    const url = dbUrl.replace('postgres://postgres@', 'postgres://sgpw@');
    const config = (extra: Record<string, unknown> = {}) =>
      parseControllerConfig({ listen: { port: 0 }, api: { tokens: [{ name: 'admin', token: 'admin-token-0123456789' }] }, store: { driver: 'postgres', url, pool_size: 3, ...extra }, metrics: { process_metrics: false } });
    const run = async (cfg: ReturnType<typeof config>, env: Record<string, string>) => {
      const { logger, lines } = captureLogs('debug');
      const c = createController({ config: cfg, logger, env });
      const started = await c.start().then(
        () => null,
        (e: unknown) => e as Error,
      );
      if (!started) {
        const r = await fetch(`http://127.0.0.1:${(c.app.server.address() as { port: number }).port}/v3/p/vpc/security-groups`, { headers: { 'x-auth-token': 'admin-token-0123456789' } });
        expect(r.status).toBe(200);
      }
      await c.stop();
      const text = JSON.stringify(lines) + String(started?.message) + String((started?.cause as Error | undefined)?.message);
      expect(text).not.toContain(PASSWORD);
      return { error: started, lines };
    };
    const ok = await run(config(), { SECGROUP_STORE_PASSWORD: PASSWORD });
    expect(ok.error).toBeNull();
    expect(ok.lines.find((l) => l.event === 'store_open')).toMatchObject({ driver: 'postgres', database: db, pool_size: 3 });
    const pwFile = join(cluster().dir, 'store.pw');
    writeFileSync(pwFile, `${PASSWORD}\n`);
    expect((await run(config({ password_file: pwFile }), {})).error).toBeNull();
    // a wrong password: refused with a clear error, neither password in it
    const wrong = await run(config(), { SECGROUP_STORE_PASSWORD: 'wrong-pw-also-secret' });
    expect(isSecgroupError(wrong.error, 'STATE_IO')).toBe(true);
    expect(wrong.error!.message).toMatch(/password authentication failed for user "sgpw"/);
    expect(JSON.stringify(wrong.lines) + wrong.error!.message).not.toContain('wrong-pw-also-secret');
    // the server away: STORE_UNAVAILABLE
    await cluster().stop();
    try {
      const away = await run(config(), { SECGROUP_STORE_PASSWORD: PASSWORD });
      expect(isSecgroupError(away.error, 'STORE_UNAVAILABLE')).toBe(true);
    } finally {
      await cluster().start();
    }
  });
});

describe('secgroup controller migrate --from sqlite:FILE --to postgres://...', () => {
  it('copies everything into an empty database in one transaction, verifies and prints the counts; refuses a database that is not empty', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'sg-migrate-'));
    try {
      const file = join(dir, 'controller.db');
      const lite = openSqliteStore(file);
      const t = makeApi({ store: lite });
      const token = await seed(t.app, 'proj-a');
      await seed(t.app, 'proj-b');
      expect((await call(t.app, 'POST', '/v3/proj-a/vpc/address-groups', { address_group: { id: 'ag', name: 'office', ip_version: 4, ip_set: ['198.18.7.0/24'] } })).status).toBe(201);
      expect((await call(t.app, 'POST', '/v3/proj-a/vpc/security-group-rules', { security_group_rule: { security_group_id: 'sg-web', ...rule({ multiport: '22', remote_ip_prefix: null, remote_address_group_id: 'ag' }) } })).status).toBe(201);
      expect(await lite.updateAgentState('proj-a', 'ecs-web-1', { applied_revision: 1, hostname: 'web-1' })).not.toBeNull();
      await t.audit.idle();
      const before = {
        a: await lite.loadProject('proj-a'),
        b: await lite.loadProject('proj-b'),
        policy: await lite.getPolicy('proj-a', 'ecs-web-1'),
        owner: await lite.findTokenOwner(hashToken(token)),
        agent: await lite.getAgentState('proj-a', 'ecs-web-1'),
        audit: await lite.listAuditEvents('proj-a', {}),
        counter: await lite.revisionCounter(),
      };
      const auditOfB = (await lite.listAuditEvents('proj-b', {})).length;
      await lite.close();
      expect(before.audit.length).toBeGreaterThan(0);

      const url = await cluster().createDatabase();
      const r = await runCli(['controller', 'migrate', '--from', `sqlite:${file}`, '--to', url]);
      expect(r.stderr).toBe('');
      expect(r.code).toBe(0);
      const printed = Object.fromEntries([...r.stdout.matchAll(/^ {2}(\w+) +(\d+)$/gm)].map((m) => [m[1], Number(m[2])]));
      expect(printed).toEqual({
        projects: 2,
        security_groups: 4,
        rules: before.a!.rules.length + before.b!.rules.length,
        address_groups: 1,
        instances: 2,
        policy_tails: expect.any(Number),
        agent_state: 2,
        audit_events: before.audit.length + auditOfB,
        revision_counter: before.counter,
      });
      const p = await openPostgresStore({ url });
      expect({
        a: await p.loadProject('proj-a'),
        b: await p.loadProject('proj-b'),
        policy: await p.getPolicy('proj-a', 'ecs-web-1'),
        owner: await p.findTokenOwner(hashToken(token)),
        agent: await p.getAgentState('proj-a', 'ecs-web-1'),
        audit: await p.listAuditEvents('proj-a', {}),
        counter: await p.revisionCounter(),
      }).toEqual(before);
      // the copy goes on where the source stopped: the next revision follows the counter
      const next = await commit(p, 'proj-a', [{ op: 'setPolicy', instanceId: 'ecs-web-1', body: '{}', hash: 'h' }]);
      expect(next.revisions.get('ecs-web-1')).toBe(before.counter + 1);
      await p.close();

      const again = await runCli(['controller', 'migrate', '--from', `sqlite:${file}`, '--to', url]);
      expect(again.code).toBe(1);
      expect(again.stderr).toMatch(/the target database is not empty \(2 projects, \d+ audit events, revision counter \d+\)/);
      const bad = await runCli(['controller', 'migrate', '--from', file, '--to', url]);
      expect([bad.code, bad.stderr]).toEqual([2, expect.stringMatching(/--from must be sqlite:FILE/)]);
      const pw = await runCli(['controller', 'migrate', '--from', `sqlite:${file}`, '--to', 'postgres://u:hunter2-pw@db/x']);
      expect([pw.code, pw.stderr]).toEqual([2, expect.stringMatching(/must not contain a password/)]);
      expect(pw.stderr).not.toContain('hunter2-pw');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('PostgreSQL store: the database out of reach', () => {
  it('every method throws STORE_UNAVAILABLE while the server is down, and works again once it is back, without a reopen', async () => {
    const url = await cluster().createDatabase();
    const { logger, lines } = captureLogs('info');
    const s = await openPostgresStore({ url, logger, connectTimeoutMs: 2000 });
    await commit(s, 'p', [...createProjectOps(NOW), { op: 'putInstance', instance: inst('i') }]);
    await cluster().stop();
    try {
      const calls: [string, () => Promise<unknown>][] = [
        ['ping', () => s.ping()],
        ['loadProject', () => s.loadProject('p')],
        ['mutate', () => commit(s, 'p', [{ op: 'deleteInstance', id: 'i' }])],
        ['getPolicy', () => s.getPolicy('p', 'i')],
        ['findTokenOwner', () => s.findTokenOwner('x')],
        ['getAgentState', () => s.getAgentState('p', 'i')],
        ['updateAgentState', () => s.updateAgentState('p', 'i', { hostname: 'h' })],
        ['appendAuditEvent', () => s.appendAuditEvent({ id: 'e', time: NOW, actor: 'a', project_id: 'p', operation: 'X', resource_type: 'x', resource_ids: [], request_id: null, status: 200, error_code: null, source_ip: null, user_agent: null, detail: null })],
        ['listAuditEvents', () => s.listAuditEvents('p', {})],
        ['revisionCounter', () => s.revisionCounter()],
        ['policiesChangedSince', () => s.policiesChangedSince(0, 10)],
      ];
      for (const [name, fn] of calls) {
        const err = await fn().then(
          () => null,
          (e: unknown) => e,
        );
        expect(isSecgroupError(err, 'STORE_UNAVAILABLE'), `${name}: ${String(err)}`).toBe(true);
        expect((err as Error).cause, name).toBeInstanceOf(Error);
      }
    } finally {
      await cluster().start();
    }
    await s.ping();
    expect((await s.loadProject('p'))!.instances.map((i) => i.id)).toEqual(['i']);
    expect(await s.updateAgentState('p', 'i', { hostname: 'back' })).not.toBeNull();
    expect(lines.filter((l) => l.level === 60 || l.level === 50)).toEqual([]);
    await s.close();
  });
});

/** Resolves once `hints` holds one that passes `pred` (checked on every hint), or rejects after `ms`. */
function hinted(hints: FeedHint[], pred: (h: FeedHint) => boolean, ms = 20_000): Promise<void> {
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`no such hint within ${ms} ms; got ${JSON.stringify(hints)}`)), ms);
    const check = () => {
      if (hints.some(pred)) {
        clearTimeout(t);
        clearInterval(i);
        resolve();
      }
    };
    const i = setInterval(check, 10);
    check();
  });
}

describe('PostgreSQL change feed (LISTEN/NOTIFY)', () => {
  it('hints every replica of an announcement, emits resync after each (re)connect, and reconnects by itself after the server restarted', async () => {
    const url = await cluster().createDatabase();
    const logs = captureLogs('info');
    const open = () => {
      const hints: FeedHint[] = [];
      const feed = createPostgresFeed({ client: postgresClientConfig({ url }), clock: systemClock, logger: logs.logger, backoff: { initialMs: 50, maxMs: 400 } });
      feed.subscribe((h) => hints.push(h));
      return { feed, hints };
    };
    const a = open();
    const b = open();
    try {
      await hinted(a.hints, (h) => h.kind === 'resync');
      await hinted(b.hints, (h) => h.kind === 'resync');
      a.feed.announce(7);
      await hinted(b.hints, (h) => h.kind === 'revision' && h.revision === 7);
      await hinted(a.hints, (h) => h.kind === 'revision' && h.revision === 7);
      a.hints.length = 0;
      b.hints.length = 0;
      await cluster().stop();
      // announced while the server is away: lost, which is what the resync after the reconnect is for
      a.feed.announce(8);
      await cluster().start();
      await hinted(a.hints, (h) => h.kind === 'resync');
      await hinted(b.hints, (h) => h.kind === 'resync');
      expect(logs.lines.filter((l) => l.event === 'feed_connection_lost').length).toBeGreaterThanOrEqual(2);
      b.feed.announce(9);
      await hinted(a.hints, (h) => h.kind === 'revision' && h.revision === 9);
      expect(a.hints.filter((h) => h.kind === 'revision').map((h) => (h as { revision: number }).revision)).toEqual([9]);
    } finally {
      await a.feed.close();
      await b.feed.close();
    }
    // closed: no hint any more
    const c = open();
    await hinted(c.hints, (h) => h.kind === 'resync');
    c.feed.announce(10);
    await hinted(c.hints, (h) => h.kind === 'revision' && h.revision === 10);
    expect(a.hints.concat(b.hints).some((h) => h.kind === 'revision' && h.revision === 10)).toBe(false);
    await c.feed.close();
  });
});
