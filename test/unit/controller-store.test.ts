import { describe, expect, it, beforeEach, afterEach, vi } from 'vitest';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Database } from '../../src/controller/store/sqlite-driver.js';
import { MIGRATIONS, openSqliteStore } from '../../src/controller/store/sqlite.js';
import { MemoryStore } from '../../src/controller/store/memory.js';
import { openPostgresStore } from '../../src/controller/store/postgres.js';
import { usePostgres, type PgCluster } from '../helpers/postgres.js';
import { captureLogs } from '../helpers/log-capture.js';
import { AuditMarkerNotFound, EMPTY_AGENT_STATE, auditEventMatches, type AuditEvent, type AuditFilter, type AuditPage, type Store } from '../../src/controller/store/store.js';
import { createProjectOps, DEFAULT_QUOTAS } from '../../src/controller/domain.js';
import { checkInvariants } from '../../src/controller/invariants.js';
import { compileInstanceBody, indexProject, policyDigestOfBody } from '../../src/controller/policy-documents.js';
import { isSecgroupError } from '../../src/lib/errors.js';
import type { Logger } from '../../src/lib/logger.js';
import { MAX_REVISION } from '../../src/protocol/messages.js';
import type { Op, ProjectSnapshot } from '../../src/controller/model.js';
import { call, makeApi, rule } from './controller-helpers.js';

const WRITER = fileURLToPath(new URL('./fixtures/controller-writer.ts', import.meta.url));
const NOW = '2024-05-01T12:00:00Z';

let dir: string;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'sg-store-'));
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

const commit = (s: Store, project: string, ops: Op[]) => s.mutate(project, () => ({ ops, value: null }));

/** Every stored document matches what the stored state compiles to: no change was half-applied. */
function expectConsistent(snap: ProjectSnapshot): void {
  expect(checkInvariants(snap, { ...DEFAULT_QUOTAS, rules_per_group: 1e6 })).toEqual([]);
  const ix = indexProject(snap);
  for (const i of snap.instances) expect(i.policy_hash, i.id).toBe(policyDigestOfBody(compileInstanceBody(ix, i)));
}

// the PostgreSQL cases create a database each, on a machine the whole unit suite loads: more than the default 5 s
vi.setConfig({ testTimeout: 30_000 });

/** PostgreSQL: a throwaway cluster for the file (test/helpers/postgres.ts), a new database per store. */
let cluster: (() => PgCluster) | null = null;
const openPostgres = async () => openPostgresStore({ url: await cluster!().createDatabase() });

describe.each([
  ['sqlite', () => openSqliteStore(':memory:')],
  ['memory', () => new MemoryStore()],
  ['postgres', openPostgres],
] as [string, () => Store | Promise<Store>][])('Store contract (%s)', (name, open) => {
  if (name === 'postgres') cluster = usePostgres();
  it('creates a project on its first commit; a change that throws writes nothing', async () => {
    const s = await open();
    expect(await s.loadProject('p')).toBeNull();
    const r = await s.mutate('p', (cur) => ({ ops: createProjectOps(NOW), value: cur }));
    expect(r).toMatchObject({ value: null, version: 1 });
    expect((await s.loadProject('p'))!.groups.map((g) => g.id)).toEqual(['default']);
    await expect(
      s.mutate('p', () => {
        throw new Error('no');
      }),
    ).rejects.toThrow('no');
    const seen = await s.mutate('p', (cur) => ({ ops: [{ op: 'deleteRule', id: 'default-in-v4' }], value: cur!.rules.length }));
    expect(seen).toMatchObject({ value: 4, version: 2 });
    expect((await s.loadProject('p'))!.rules).toHaveLength(3);
    await s.close();
  });

  it('keeps the complete v3 shapes: rule enabled, group and address group tags and enterprise project, address group capacity and remarks', async () => {
    const s = await open();
    const tags = [{ key: 'env', value: 'prod' }, { key: 'team', value: '' }];
    const aRule = createProjectOps(NOW).flatMap((o) => (o.op === 'putRule' ? [o.rule] : []))[0]!;
    await commit(s, 'p', [
      ...createProjectOps(NOW),
      { op: 'putGroup', group: { id: 'g', name: 'g', description: '', enterprise_project_id: '0f0e0d0c-0b0a-4909-8807-060504030201', tags, created_at: NOW, updated_at: NOW } },
      { op: 'putRule', rule: { ...aRule, id: 'off', security_group_id: 'g', enabled: false } },
      {
        op: 'putAddressGroup',
        addressGroup: { id: 'ag', name: 'ag', description: '', ip_version: 4, ip_set: ['198.18.0.0/24'], ip_remarks: { '198.18.0.0/24': 'lab' }, max_capacity: 7, enterprise_project_id: '0', tags, created_at: NOW, updated_at: NOW },
      },
    ]);
    const snap = (await s.loadProject('p'))!;
    expect(snap.groups.find((g) => g.id === 'g')).toMatchObject({ enterprise_project_id: '0f0e0d0c-0b0a-4909-8807-060504030201', tags });
    expect(snap.groups.find((g) => g.id === 'default')).toMatchObject({ enterprise_project_id: '0', tags: [] });
    expect(snap.rules.find((r) => r.id === 'off')!.enabled).toBe(false);
    expect(snap.rules.find((r) => r.id === 'default-in-v4')!.enabled).toBe(true);
    expect(snap.addressGroups[0]).toMatchObject({ ip_remarks: { '198.18.0.0/24': 'lab' }, max_capacity: 7, enterprise_project_id: '0', tags });
    await s.close();
  });

  it('assigns revisions that grow over every setPolicy, and keeps tokens and agent state per instance', async () => {
    const s = await open();
    const inst = { id: 'i1', name: '', addresses: [], security_groups: ['default'], created_at: NOW, updated_at: NOW };
    const r1 = await commit(s, 'p', [
      ...createProjectOps(NOW),
      { op: 'putInstance', instance: inst },
      { op: 'setToken', instanceId: 'i1', tokenHash: 'aa' },
      { op: 'setPolicy', instanceId: 'i1', body: '{"a":1}', hash: 'h1' },
    ]);
    const r2 = await commit(s, 'p', [{ op: 'setPolicy', instanceId: 'i1', body: '{"a":2}', hash: 'h2' }]);
    const rev1 = r1.revisions.get('i1')!;
    const rev2 = r2.revisions.get('i1')!;
    expect(rev2).toBeGreaterThan(rev1);
    expect(await s.getPolicy('p', 'i1')).toEqual({ revision: rev2, body: '{"a":2}' });
    expect(await s.findTokenOwner('aa')).toEqual({ projectId: 'p', instanceId: 'i1', tokenHash: 'aa' });
    // an update returns what the state held before it (null: no such instance, nothing written)
    expect(await s.updateAgentState('p', 'i1', { applied_revision: 5, hostname: 'h' })).toEqual({ applied_revision: null });
    expect(await s.getAgentState('p', 'i1')).toMatchObject({ applied_revision: 5, hostname: 'h', last_ack: null });
    expect(await s.updateAgentState('p', 'nope', { applied_revision: 5 })).toBeNull();
    await commit(s, 'p', [{ op: 'deleteInstance', id: 'i1' }]);
    expect(await s.findTokenOwner('aa')).toBeNull();
    expect(await s.getAgentState('p', 'i1')).toBeNull();
    expect(await s.getPolicy('p', 'i1')).toBeNull();
    await s.close();
  });

  it('an agent-state update returns the applied revision the state held right before it, updates of one instance in call order', async () => {
    const s = await open();
    await commit(s, 'p', [...createProjectOps(NOW), { op: 'putInstance', instance: { id: 'i1', name: '', addresses: [], security_groups: ['default'], created_at: NOW, updated_at: NOW } }]);
    // issued together: where the store batches them (SQLite, PostgreSQL), each still sees the ones before it
    const found = await Promise.all([
      s.updateAgentState('p', 'i1', { applied_revision: 1 }),
      s.updateAgentState('p', 'i1', { hostname: 'h' }),
      s.updateAgentState('p', 'i1', { applied_revision: 2 }),
      s.updateAgentState('p', 'i1', { applied_revision: null }),
      s.updateAgentState('p', 'nope', { applied_revision: 3 }),
    ]);
    expect(found).toEqual([{ applied_revision: null }, { applied_revision: 1 }, { applied_revision: 1 }, { applied_revision: 2 }, null]);
    expect(await s.updateAgentState('p', 'i1', { applied_revision: 7 })).toEqual({ applied_revision: null });
    expect(await s.updateAgentState('p', 'i1', { hostname: 'h2' })).toEqual({ applied_revision: 7 });
    expect(await s.getAgentState('p', 'i1')).toMatchObject({ applied_revision: 7, hostname: 'h2' });
    await s.close();
  });

  it('reads several instances\' documents in one call, each as getPolicy reads it; unknown instances and those without a document are absent', async () => {
    const s = await open();
    const inst = (id: string) => ({ op: 'putInstance' as const, instance: { id, name: '', addresses: [], security_groups: ['default'], created_at: NOW, updated_at: NOW } });
    const tail = '"security_groups":[],"address_groups":[],"group_members":{"g":["198.18.0.1"]}}';
    const parts = (instance: string) => ({ instance, shared: tail, sharedHash: 'tail-1', members: '{"g":["198.18.0.1"]}' });
    await commit(s, 'p', [
      ...createProjectOps(NOW),
      inst('a'),
      inst('b'),
      inst('c'),
      inst('none'),
      { op: 'setPolicy', instanceId: 'a', body: `{"instance":"a",${tail}`, hash: 'ha', parts: parts('{"instance":"a",') },
      { op: 'setPolicy', instanceId: 'b', body: `{"instance":"b",${tail}`, hash: 'hb', parts: parts('{"instance":"b",') },
      { op: 'setPolicy', instanceId: 'c', body: '{"whole":1}', hash: 'hc' },
    ]);
    await commit(s, 'q', [...createProjectOps(NOW), inst('a'), { op: 'setPolicy', instanceId: 'a', body: '{"other":1}', hash: 'hq' }]);
    const got = await s.getPolicies('p', ['a', 'b', 'c', 'none', 'unknown']);
    expect([...got.keys()].sort()).toEqual(['a', 'b', 'c']);
    for (const id of ['a', 'b', 'c']) expect({ revision: got.get(id)!.revision, body: got.get(id)!.body }).toEqual(await s.getPolicy('p', id));
    expect((await s.getPolicies('p', [])).size).toBe(0);
    await s.close();
  });

  it('lists the agent states of one project\'s instances in one read', async () => {
    const s = await open();
    const inst = (id: string) => ({ op: 'putInstance' as const, instance: { id, name: '', addresses: [], security_groups: ['default'], created_at: NOW, updated_at: NOW } });
    await commit(s, 'p', [...createProjectOps(NOW), inst('a'), inst('b')]);
    await commit(s, 'q', [...createProjectOps(NOW), inst('a')]);
    await s.updateAgentState('p', 'b', { ports_received_at: NOW, hostname: 'hb' });
    await s.updateAgentState('q', 'a', { hostname: 'other project' });
    const states = await s.listAgentStates('p');
    expect([...states.keys()].sort()).toEqual(['a', 'b']);
    expect(states.get('a')).toEqual(EMPTY_AGENT_STATE);
    expect(states.get('b')).toEqual({ ...EMPTY_AGENT_STATE, ports_received_at: NOW, hostname: 'hb' });
    expect((await s.listAgentStates('nope')).size).toBe(0);
    await s.close();
  });

  it('answers ping, tells the revision counter, and lists current policies changed since a revision, ascending and bounded', async () => {
    const s = await open();
    await s.ping();
    expect(await s.revisionCounter()).toBe(0);
    const inst = (id: string) => ({ id, name: '', addresses: [], security_groups: ['default'], created_at: NOW, updated_at: NOW });
    const set = (instanceId: string, n: number): Op => ({ op: 'setPolicy', instanceId, body: `{"${instanceId}":${n}}`, hash: `h${instanceId}${n}` });
    await commit(s, 'p', [...createProjectOps(NOW), { op: 'putInstance', instance: inst('a') }, { op: 'putInstance', instance: inst('b') }, set('a', 1), set('b', 1)]);
    await commit(s, 'q', [...createProjectOps(NOW), { op: 'putInstance', instance: inst('c') }, set('c', 1)]);
    await commit(s, 'p', [set('a', 2)]);
    expect(await s.revisionCounter()).toBe(4);
    // a's first document (1) is no longer current: only its newest revision is listed
    expect(await s.policiesChangedSince(0, 10)).toEqual([
      { projectId: 'p', instanceId: 'b', revision: 2 },
      { projectId: 'q', instanceId: 'c', revision: 3 },
      { projectId: 'p', instanceId: 'a', revision: 4 },
    ]);
    expect(await s.policiesChangedSince(2, 1)).toEqual([{ projectId: 'q', instanceId: 'c', revision: 3 }]);
    expect(await s.policiesChangedSince(4, 10)).toEqual([]);
    await commit(s, 'p', [{ op: 'deleteInstance', id: 'b' }]);
    expect((await s.policiesChangedSince(0, 10)).map((c) => c.instanceId)).toEqual(['c', 'a']);
    await s.close();
  });

  it('keeps audit events per project, newest first, filtered as auditEventMatches says, and prunes them by time', async () => {
    const s = await open();
    const ev = (id: string, time: string, over: Partial<AuditEvent> = {}): AuditEvent => ({
      id, time, actor: 'admin', project_id: 'p', operation: 'CreateSecurityGroup', resource_type: 'security_group', resource_ids: [],
      request_id: `req-${id}`, status: 201, error_code: null, source_ip: '127.0.0.1', user_agent: 'ua', detail: null, ...over,
    });
    const all = [
      ev('e1', '2024-05-01T10:00:00.000Z', { resource_ids: ['sg-a'] }),
      ev('e2', '2024-05-01T11:00:00.000Z', { status: 400, error_code: 'SG.0001', actor: 'anonymous' }),
      ev('e3', '2024-05-01T11:00:00.000Z', { operation: 'DeleteSecurityGroup', resource_ids: ['sg-a', 'sg-b'], status: 204 }),
      ev('e4', '2024-05-01T12:00:00.000Z', { project_id: 'q' }),
      ev('e5', '2024-05-01T09:00:00.000Z', { project_id: null, actor: 'anonymous', operation: 'AgentRefused', status: 401 }),
    ];
    for (const e of all) await s.appendAuditEvent(e);
    await expect(s.appendAuditEvent(all[0]!)).rejects.toThrow();
    const ids = async (f: AuditFilter, page?: AuditPage) => (await s.listAuditEvents('p', f, page)).map((e) => e.id);
    // equal times: the later appended first
    expect(await ids({})).toEqual(['e3', 'e2', 'e1']);
    expect((await s.listAuditEvents('p', {}))[2]).toEqual(all[0]);
    const filters: AuditFilter[] = [
      { operation: ['DeleteSecurityGroup'] },
      { actor: ['anonymous'] },
      { resource_id: ['sg-a'] },
      { resource_id: ['sg-b', 'nope'] },
      { status: [400, 204] },
      { result: 'success' },
      { result: 'failure' },
      { from: '2024-05-01T11:00:00.000Z' },
      { to: '2024-05-01T11:00:00.000Z' },
      { request_id: ['req-e1'] },
      { operation: ['CreateSecurityGroup'], result: 'success' },
      { operation: [] },
    ];
    for (const f of filters) {
      const expected = all.filter((e) => e.project_id === 'p' && auditEventMatches(e, f)).map((e) => e.id).sort();
      expect((await ids(f)).sort(), JSON.stringify(f)).toEqual(expected);
    }
    expect(await ids({ result: 'failure' })).toEqual(['e2']);
    // keyset pages: after a marker (which need not pass the filters), at most `limit`
    expect(await ids({}, { limit: 2 })).toEqual(['e3', 'e2']);
    expect(await ids({}, { after: 'e3' })).toEqual(['e2', 'e1']);
    expect(await ids({}, { after: 'e2', limit: 1 })).toEqual(['e1']);
    expect(await ids({}, { after: 'e1' })).toEqual([]);
    expect(await ids({ result: 'success' }, { after: 'e2' })).toEqual(['e1']);
    expect(await ids({ result: 'failure' }, { after: 'e3' })).toEqual(['e2']);
    // a marker of another project, or none at all, is refused
    await expect(ids({}, { after: 'e4' })).rejects.toBeInstanceOf(AuditMarkerNotFound);
    await expect(ids({}, { after: 'nope' })).rejects.toBeInstanceOf(AuditMarkerNotFound);
    expect(await s.pruneAuditEvents('2024-05-01T11:00:00.000Z')).toBe(2);
    expect(await ids({})).toEqual(['e3', 'e2']);
    expect(await s.listAuditEvents('q', {})).toHaveLength(1);
    // appends not awaited one by one (SQLite batches them) all land, in order; a duplicate fails alone
    const burst = ['b1', 'b2', 'e3', 'b3'].map((id) => s.appendAuditEvent(ev(id, '2024-05-02T00:00:00.000Z')));
    const settled = await Promise.allSettled(burst);
    expect(settled.map((r) => r.status)).toEqual(['fulfilled', 'fulfilled', 'rejected', 'fulfilled']);
    expect(await ids({ from: '2024-05-02T00:00:00.000Z' })).toEqual(['b3', 'b2', 'b1']);
    await s.close();
  });
});

const capture = () => captureLogs();

const POISON = 9007199254740993n; // 2^53 + 1: what the old counter reached after a hello with applied_revision 2^53 - 1 and one more commit

/**
 * Two projects as the old revision-poisoning bug left them: instance p/a raised to 2^53, q/b to 2^50 (an agent that
 * applied a huge but still exact revision), p/c untouched; the counter past 2^53. `poison` edits what was committed
 * (SQLite: the file, memory: a dump) and gives back the reopened store.
 */
async function poisonedStore(kind: 'sqlite' | 'memory', logger: Logger): Promise<Store> {
  const file = join(dir, 'poisoned.db');
  const s = kind === 'sqlite' ? openSqliteStore(file) : new MemoryStore();
  const inst = (id: string) => ({ id, name: '', addresses: [], security_groups: ['default'], created_at: NOW, updated_at: NOW });
  await commit(s, 'p', [...createProjectOps(NOW), { op: 'putInstance', instance: inst('a') }, { op: 'putInstance', instance: inst('c') }]);
  await commit(s, 'q', [...createProjectOps(NOW), { op: 'putInstance', instance: inst('b') }]);
  await commit(s, 'p', [{ op: 'setPolicy', instanceId: 'c', body: '{"c":1}', hash: 'hc' }]); // 1
  await commit(s, 'p', [{ op: 'setPolicy', instanceId: 'a', body: '{"a":1}', hash: 'ha' }]); // 2
  await commit(s, 'q', [{ op: 'setPolicy', instanceId: 'b', body: '{"b":1}', hash: 'hb' }]); // 3
  await s.updateAgentState('p', 'a', { applied_revision: 2 ** 53 });
  await s.updateAgentState('p', 'c', { applied_revision: 1 });
  if (s instanceof MemoryStore) {
    const d = s.dump();
    d.counter = Number(POISON); // rounds to 2^53: as close as a number gets
    d.projects = d.projects.map((p) => ({ ...p, instances: p.instances.map((i) => (i.id === 'a' ? { ...i, revision: 2 ** 53 } : i.id === 'b' ? { ...i, revision: 2 ** 50 } : i)) }));
    return MemoryStore.open(d, logger);
  }
  await s.close();
  const raw = new Database(file);
  raw.prepare("UPDATE meta SET value = ? WHERE key = 'revision_counter'").run(POISON);
  raw.prepare("UPDATE instances SET revision = ? WHERE id = 'a'").run(2n ** 53n);
  raw.prepare("UPDATE instances SET revision = ? WHERE id = 'b'").run(2n ** 50n);
  raw.close();
  return openSqliteStore(file, { logger });
}

describe.each(['sqlite', 'memory'] as const)('revision repair on open (%s)', (kind) => {
  it('renumbers policies above MAX_REVISION after the others in their order, continues the counter after them, and logs it once', async () => {
    const { logger, lines } = capture();
    const s = await poisonedStore(kind, logger);
    // c kept its revision (its agent sees no change); b (2^50) before a (2^53), right after it
    expect((await s.getPolicy('p', 'c'))!.revision).toBe(1);
    expect(await s.getPolicy('q', 'b')).toEqual({ revision: 2, body: '{"b":1}' });
    expect(await s.getPolicy('p', 'a')).toEqual({ revision: 3, body: '{"a":1}' });
    expect((await s.loadProject('p'))!.instances.map((i) => [i.id, i.revision])).toEqual([['a', 3], ['c', 1]]);
    // an applied revision above the bound is unknown now; a sane one stays
    expect((await s.getAgentState('p', 'a'))!.applied_revision).toBeNull();
    expect((await s.getAgentState('p', 'c'))!.applied_revision).toBe(1);
    const repaired = lines.filter((l) => l.event === 'revision_counter_repaired');
    expect(repaired).toHaveLength(1);
    expect(repaired[0]).toMatchObject({
      level: 50,
      old_counter: kind === 'sqlite' ? POISON.toString() : (2n ** 53n).toString(),
      new_counter: 3,
      renumbered: 2,
      instances: [
        { projectId: 'q', instanceId: 'b', from: (2n ** 50n).toString(), to: 2 },
        { projectId: 'p', instanceId: 'a', from: (2n ** 53n).toString(), to: 3 },
      ],
    });
    // the counter goes on by one per document
    const r = await commit(s, 'q', [{ op: 'setPolicy', instanceId: 'b', body: '{"b":2}', hash: 'hb2' }]);
    expect(r.revisions.get('b')).toBe(4);
    if (kind === 'sqlite') {
      await s.close();
      // repaired for good: reopening finds nothing to repair
      const again = capture();
      const s2 = openSqliteStore(join(dir, 'poisoned.db'), { logger: again.logger });
      expect(again.lines.filter((l) => l.event === 'revision_counter_repaired')).toEqual([]);
      expect((await s2.getPolicy('q', 'b'))!.revision).toBe(4);
      await s2.close();
    } else await s.close();
  });

  it('hands out no revision past MAX_REVISION: the commit fails with REVISION_EXHAUSTED and writes nothing', async () => {
    const file = join(dir, 'full.db');
    let s: Store = kind === 'sqlite' ? openSqliteStore(file) : new MemoryStore();
    const inst = { id: 'i', name: '', addresses: [], security_groups: ['default'], created_at: NOW, updated_at: NOW };
    await commit(s, 'p', [...createProjectOps(NOW), { op: 'putInstance', instance: inst }, { op: 'setPolicy', instanceId: 'i', body: '{"i":1}', hash: 'h1' }]);
    // the counter at the bound (no repair: it is not above it)
    if (s instanceof MemoryStore) s = MemoryStore.open({ ...s.dump(), counter: MAX_REVISION - 1 });
    else {
      await s.close();
      const raw = new Database(file);
      raw.prepare("UPDATE meta SET value = ? WHERE key = 'revision_counter'").run(MAX_REVISION - 1);
      raw.close();
      s = openSqliteStore(file);
    }
    expect((await commit(s, 'p', [{ op: 'setPolicy', instanceId: 'i', body: '{"i":2}', hash: 'h2' }])).revisions.get('i')).toBe(MAX_REVISION);
    const err = await commit(s, 'p', [{ op: 'putGroup', group: { id: 'g2', name: 'g2', description: '', enterprise_project_id: '0', tags: [], created_at: NOW, updated_at: NOW } }, { op: 'setPolicy', instanceId: 'i', body: '{"i":3}', hash: 'h3' }]).catch((e: unknown) => e);
    expect(isSecgroupError(err, 'REVISION_EXHAUSTED')).toBe(true);
    expect((err as Error).message).toMatch(/reached its bound 281474976710656/);
    expect(await s.getPolicy('p', 'i')).toEqual({ revision: MAX_REVISION, body: '{"i":2}' });
    expect((await s.loadProject('p'))!.groups.map((g) => g.id)).toEqual(['default']);
    await s.close();
  });
});

describe('SQLite store', () => {
  it('migrates a new file to the current schema and reopens it without migrating again', async () => {
    const file = join(dir, 'c.db');
    const s = openSqliteStore(file);
    await commit(s, 'p', createProjectOps(NOW));
    await s.close();
    const raw = new Database(file);
    expect(raw.pragma('user_version', { simple: true })).toBe(MIGRATIONS.length);
    expect(raw.pragma('journal_mode', { simple: true })).toBe('wal');
    raw.close();
    const again = openSqliteStore(file);
    expect((await again.loadProject('p'))!.version).toBe(1);
    await again.close();
  });

  it('migration 4 gives rows written before it Huawei\'s defaults: enabled rules, enterprise project "0", no tags, max_capacity 20, no remarks', async () => {
    const file = join(dir, 'v3.db');
    const raw = new Database(file);
    for (const m of MIGRATIONS.slice(0, 3)) m(raw);
    raw.pragma('user_version = 3');
    raw.exec(`INSERT INTO projects (id, version) VALUES ('p', 1);
      INSERT INTO security_groups (project_id, id, name, description, created_at, updated_at) VALUES ('p', 'g', 'g', '', '${NOW}', '${NOW}');
      INSERT INTO rules (project_id, id, security_group_id, direction, priority, action, ethertype, description, created_at) VALUES ('p', 'r', 'g', 'ingress', 1, 'allow', 'IPv4', '', '${NOW}');
      INSERT INTO address_groups (project_id, id, name, description, ip_version, ip_set, created_at, updated_at) VALUES ('p', 'ag', 'ag', '', 4, '["198.18.0.1/32"]', '${NOW}', '${NOW}');`);
    raw.close();
    const s = openSqliteStore(file);
    const snap = (await s.loadProject('p'))!;
    expect(snap.rules[0]!.enabled).toBe(true);
    expect(snap.groups[0]).toMatchObject({ enterprise_project_id: '0', tags: [] });
    expect(snap.addressGroups[0]).toMatchObject({ ip_set: ['198.18.0.1/32'], ip_remarks: {}, max_capacity: 20, enterprise_project_id: '0', tags: [] });
    await s.close();
  });

  it('keeps a shared document tail once per project, gives back whole bodies, drops tails no document uses, and reads v1 rows', async () => {
    const file = join(dir, 'tails.db');
    // a database of schema version 1 with a document stored whole (before tails were shared)
    const v1 = new Database(file);
    MIGRATIONS[0]!(v1);
    v1.pragma('user_version = 1');
    v1.close();
    const s1 = openSqliteStore(file);
    const inst = (id: string) => ({ id, name: '', addresses: [], security_groups: ['default'], created_at: NOW, updated_at: NOW });
    await commit(s1, 'p', [...createProjectOps(NOW), { op: 'putInstance', instance: inst('old') }]);
    await s1.close();
    const legacy = new Database(file);
    legacy.prepare("UPDATE instances SET revision = 7, policy_hash = 'h', policy_body = '{\"whole\":1}' WHERE id = 'old'").run();
    legacy.close();

    const s = openSqliteStore(file);
    expect(await s.getPolicy('p', 'old')).toEqual({ revision: 7, body: '{"whole":1}' });
    const tail = { text: '"shared":[1,2,3]}', hash: 't1' };
    const parts = (instance: string, t: { text: string; hash: string }) => ({ instance, shared: t.text, sharedHash: t.hash, members: '[]' });
    const r = await commit(s, 'p', [
      { op: 'putInstance', instance: inst('a') },
      { op: 'putInstance', instance: inst('b') },
      { op: 'setPolicy', instanceId: 'a', body: `{"i":"a",${tail.text}`, hash: 'ha', parts: parts('{"i":"a",', tail) },
      { op: 'setPolicy', instanceId: 'b', body: `{"i":"b",${tail.text}`, hash: 'hb', parts: parts('{"i":"b",', tail) },
    ]);
    expect(await s.getPolicy('p', 'a')).toEqual({ revision: r.revisions.get('a'), body: '{"i":"a","shared":[1,2,3]}' });
    expect(await s.getPolicy('p', 'b')).toEqual({ revision: r.revisions.get('b'), body: '{"i":"b","shared":[1,2,3]}' });
    const tail2 = { text: '"shared":[4]}', hash: 't2' };
    await commit(s, 'p', [{ op: 'setPolicy', instanceId: 'a', body: `{"i":"a",${tail2.text}`, hash: 'ha2', parts: parts('{"i":"a",', tail2) }]);
    const count = () => {
      const db = new Database(file, { readonly: true });
      const rows = db.prepare('SELECT hash FROM policy_tails ORDER BY hash').all();
      db.close();
      return rows;
    };
    expect(count()).toEqual([{ hash: 't1' }, { hash: 't2' }]);
    await commit(s, 'p', [{ op: 'deleteInstance', id: 'b' }]);
    expect(count()).toEqual([{ hash: 't2' }]);
    expect(await s.getPolicy('p', 'a')).toEqual({ revision: expect.any(Number), body: '{"i":"a","shared":[4]}' });
    // parts that do not add up to the body are not used: the body is stored whole
    await commit(s, 'p', [{ op: 'setPolicy', instanceId: 'a', body: '{"i":"a","x":1}', hash: 'ha3', parts: parts('{"i":"a",', tail2) }]);
    expect((await s.getPolicy('p', 'a'))!.body).toBe('{"i":"a","x":1}');
    expect(count()).toEqual([]);
    await s.close();
  });

  it('refuses a database written by a newer program', () => {
    const file = join(dir, 'new.db');
    const raw = new Database(file);
    raw.pragma(`user_version = ${MIGRATIONS.length + 1}`);
    raw.close();
    let err: unknown;
    try {
      openSqliteStore(file);
    } catch (e) {
      err = e;
    }
    expect(isSecgroupError(err, 'STATE_IO')).toBe(true);
    expect((err as Error).message).toMatch(/newer than this program/);
  });

  it('a failing op rolls the whole commit back', async () => {
    const s = openSqliteStore(':memory:');
    await commit(s, 'p', createProjectOps(NOW));
    // a rule in a group that does not exist violates the foreign key: nothing of the commit may remain
    await expect(
      commit(s, 'p', [
        { op: 'putGroup', group: { id: 'g2', name: 'g2', description: '', enterprise_project_id: '0', tags: [], created_at: NOW, updated_at: NOW } },
        { op: 'putRule', rule: { ...(await s.loadProject('p'))!.rules[0]!, id: 'orphan', security_group_id: 'missing' } },
      ]),
    ).rejects.toThrow();
    const snap = (await s.loadProject('p'))!;
    expect(snap.version).toBe(1);
    expect(snap.groups.map((g) => g.id)).toEqual(['default']);
    await s.close();
  });

  it('concurrent API writers in one process: every request succeeds exactly once', async () => {
    const t = makeApi({ sqlite: true });
    await call(t.app, 'POST', '/v3/p/vpc/security-groups', { security_group: { id: 'sg', name: 'sg' } });
    const results = await Promise.all(
      Array.from({ length: 40 }, (_, i) =>
        i % 2 === 0
          ? call(t.app, 'POST', '/v3/p/vpc/security-group-rules', { security_group_rule: { security_group_id: 'sg', ...rule({ multiport: String(i + 1) }) } })
          : call(t.app, 'POST', '/v3/p/instances', { instance: { id: `i${i}`, addresses: [`198.18.1.${i}`], security_groups: ['sg'] } }),
      ),
    );
    expect(results.map((r) => r.status)).toEqual(Array(40).fill(201));
    const snap = (await t.store.loadProject('p'))!;
    // protocol set: not the group's two default ingress rules (Huawei's defaults)
    expect(snap.rules.filter((r) => r.security_group_id === 'sg' && r.direction === 'ingress' && r.protocol !== null)).toHaveLength(20);
    expect(snap.instances).toHaveLength(20);
    expectConsistent(snap);
  });
});

function startWriter(file: string, project: string, prefix: string, count: number): { child: ChildProcess; acks: number[]; done: Promise<number | null>; ready: Promise<void> } {
  const child = spawn(process.execPath, ['--import', 'tsx', WRITER, file, project, prefix, String(count)], { stdio: ['ignore', 'pipe', 'pipe'] });
  const acks: number[] = [];
  let stderr = '';
  let onReady!: () => void;
  const ready = new Promise<void>((r) => (onReady = r));
  let buf = '';
  child.stdout!.on('data', (d: Buffer) => {
    buf += d.toString();
    let nl: number;
    while ((nl = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, nl);
      buf = buf.slice(nl + 1);
      if (line === 'ready') onReady();
      const m = /^ack (\d+)$/.exec(line);
      if (m) acks.push(Number(m[1]));
    }
  });
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  const done = new Promise<number | null>((resolve) =>
    child.on('exit', (code) => {
      if (code !== 0 && code !== null) console.error(stderr);
      resolve(code);
    }),
  );
  return { child, acks, done, ready };
}

describe('SQLite store under other processes', () => {
  it('concurrent writer processes on one project: every acknowledged write is there, invariants hold', async () => {
    const file = join(dir, 'c.db');
    openSqliteStore(file).close();
    const writers = ['a', 'b', 'c'].map((p) => startWriter(file, 'shared', p, 12));
    expect(await Promise.all(writers.map((w) => w.done))).toEqual([0, 0, 0]);
    // 3 x 12 x 2 transactions, serialised by the write lock, none retried or lost
    const s = openSqliteStore(file);
    const snap = (await s.loadProject('shared'))!;
    for (const w of writers) expect(w.acks).toHaveLength(12);
    expect(snap.instances).toHaveLength(36);
    // protocol set: not the groups' default ingress rules (Huawei's defaults)
    expect(snap.rules.filter((r) => r.direction === 'ingress' && r.security_group_id !== 'default' && r.protocol !== null)).toHaveLength(36);
    expectConsistent(snap);
    await s.close();
  }, 120_000);

  it('kill -9 during a write loop loses no acknowledged write and leaves no half-applied change (3 crashes)', async () => {
    const file = join(dir, 'c.db');
    const acked: string[] = [];
    for (const round of [1, 2, 3]) {
      const w = startWriter(file, 'crash', `k${round}`, 0);
      await w.ready;
      await new Promise<void>((resolve) => {
        const check = setInterval(() => {
          if (w.acks.length >= 5 * round) {
            clearInterval(check);
            // land the kill at an arbitrary point of the next transactions
            setTimeout(resolve, Math.floor(Math.random() * 40));
          }
        }, 2);
      });
      w.child.kill('SIGKILL');
      await w.done;
      acked.push(...w.acks.map((n) => `k${round}-${n}`));
      const s = openSqliteStore(file);
      const snap = (await s.loadProject('crash'))!;
      const instances = new Set(snap.instances.map((i) => i.id));
      const rules = new Set(snap.rules.map((r) => r.id));
      for (const id of acked) {
        expect(instances.has(id), `instance ${id}`).toBe(true);
        expect(rules.has(id.replace('-', '-r')), `rule of ${id}`).toBe(true);
      }
      expectConsistent(snap);
      await s.close();
    }
    expect(acked.length).toBeGreaterThanOrEqual(30);
    // the database is usable after the crashes
    const s = openSqliteStore(file);
    const t = makeApi({ store: s });
    expect((await call(t.app, 'POST', '/v3/crash/instances', { instance: { id: 'after', security_groups: ['sg-k1'] } })).status).toBe(201);
    expectConsistent((await s.loadProject('crash'))!);
    await s.close();
  }, 120_000);
});
