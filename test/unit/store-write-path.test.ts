import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SnapshotCache, committedSnapshot } from '../../src/controller/store/snapshot-cache.js';
import { MIGRATIONS, SqliteStore, openSqliteStore } from '../../src/controller/store/sqlite.js';
import { Database } from '../../src/controller/store/sqlite-driver.js';
import { createProjectOps, createRules, ruleCreate, DEFAULT_QUOTAS, type MutationContext } from '../../src/controller/domain.js';
import { emptySnapshot, type Op, type ProjectSnapshot } from '../../src/controller/model.js';
import type { Store } from '../../src/controller/store/store.js';
import { ApiError } from '../../src/controller/errors.js';

const NOW = '2024-05-01T12:00:00Z';
const inst = (id: string, groups = ['default']) => ({ id, name: id, addresses: ['198.18.0.1'], security_groups: groups, created_at: NOW, updated_at: NOW });
const commit = (s: Store, project: string, ops: Op[]) => s.mutate(project, () => ({ ops, value: null }));
let n = 0;
const ctx: MutationContext = { now: NOW, newId: () => `id-${++n}`, newToken: () => ({ token: 't', hash: 'h' }), quotas: DEFAULT_QUOTAS };
const tcp = (port: number) => ruleCreate('default', { direction: 'ingress', ethertype: 'IPv4', protocol: 'tcp', multiport: String(port), priority: 1, action: 'allow' });

let dir: string;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'sg-snapcache-'));
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

describe('SnapshotCache', () => {
  const snap = (version: number): ProjectSnapshot => ({ ...emptySnapshot('p'), version });

  it('reuses a snapshot only at the version it was built at, and loads at any other', () => {
    const c = new SnapshotCache();
    let loads = 0;
    const load = (v: number) => () => (loads++, snap(v));
    const first = c.at('p', 3, load(3));
    expect(c.at('p', 3, load(3))).toBe(first);
    expect(loads).toBe(1);
    expect(c.at('p', 4, load(4))!.version).toBe(4);
    expect(loads).toBe(2);
    expect(c.at('p', null, load(4))).toBeNull();
    expect(c.get('p', 4)).toBeUndefined();
  });

  it('does not keep a loaded snapshot whose version is not the one read (a writer came in between)', () => {
    const c = new SnapshotCache();
    c.at('p', 3, () => snap(4));
    expect(c.get('p', 3)).toBeUndefined();
    expect(c.get('p', 4)).toBeUndefined();
  });

  it('after a commit holds the applied ops with the new version, the handed-out revisions and the documents\' hashes', () => {
    const c = new SnapshotCache();
    const ops: Op[] = [...createProjectOps(NOW), { op: 'putInstance', instance: inst('a') }, { op: 'putInstance', instance: inst('b') }, { op: 'setPolicy', instanceId: 'a', body: '{}', hash: 'ha' }];
    const next = c.commit('p', null, ops, 1, new Map([['a', 7]]));
    expect(c.get('p', 1)).toBe(next);
    expect(next.instances.map((i) => [i.id, i.revision, i.policy_hash])).toEqual([
      ['a', 7, 'ha'],
      ['b', null, null],
    ]);
    expect(committedSnapshot('p', next, [{ op: 'deleteInstance', id: 'a' }], 2, new Map()).instances.map((i) => i.id)).toEqual(['b']);
  });

  it('keeps at most maxProjects, dropping the least recently used', () => {
    const c = new SnapshotCache(2);
    for (const p of ['p', 'q']) c.put({ ...emptySnapshot(p), version: 1 });
    c.at('p', 1, () => null);
    c.put({ ...emptySnapshot('r'), version: 1 });
    expect([c.get('p', 1), c.get('q', 1), c.get('r', 1)].map((x) => x !== undefined)).toEqual([true, false, true]);
  });
});

describe('SQLite store with the snapshot cache', () => {
  it('reads an unchanged project from the cache, and after a commit holds exactly what a fresh store loads from the file', async () => {
    const file = join(dir, 'c.db');
    const s = openSqliteStore(file);
    await commit(s, 'p', [...createProjectOps(NOW), { op: 'putInstance', instance: inst('a') }, { op: 'putInstance', instance: inst('b') }]);
    const r = await commit(s, 'p', [{ op: 'setPolicy', instanceId: 'b', body: '{"b":1}', hash: 'hb' }, { op: 'deleteRule', id: 'default-out-v6' }]);
    const cached = await s.loadProject('p');
    expect(await s.loadProject('p')).toBe(cached);
    expect(cached!.instances.find((i) => i.id === 'b')!.revision).toBe(r.revisions.get('b'));
    const fresh = openSqliteStore(file);
    expect(cached).toEqual(await fresh.loadProject('p'));
    await fresh.close();
    await s.close();
  });

  it('two stores on one file: each sees the other\'s commits (the version check), so no write is lost or duplicated', async () => {
    const file = join(dir, 'two.db');
    const a = openSqliteStore(file);
    const b = openSqliteStore(file);
    await commit(a, 'p', [...createProjectOps(NOW), { op: 'putInstance', instance: inst('i') }]);
    await a.loadProject('p'); // a caches version 1
    await b.mutate('p', (cur) => ({ ...createRules(cur!, 'default', [tcp(22)], ['r'], ctx), value: null }));
    const rb = await commit(b, 'p', [{ op: 'setPolicy', instanceId: 'i', body: '{"i":1}', hash: 'h1' }]);
    // a's cached snapshot is stale: its next write must see b's rule (409 for the same rule) and b's revision
    const dup = await a.mutate('p', (cur) => ({ ...createRules(cur!, 'default', [tcp(22)], ['r'], ctx), value: null })).catch((e: unknown) => e);
    expect(dup).toBeInstanceOf(ApiError);
    expect((dup as ApiError).kind).toBe('duplicate');
    const ra = await a.mutate('p', (cur) => {
      expect(cur!.instances[0]!.revision).toBe(rb.revisions.get('i'));
      return { ops: [{ op: 'setPolicy', instanceId: 'i', body: '{"i":2}', hash: 'h2' }], value: null };
    });
    expect(ra.revisions.get('i')).toBeGreaterThan(rb.revisions.get('i')!);
    expect(ra.version).toBe(4);
    for (const s of [a, b]) {
      const snap = (await s.loadProject('p'))!;
      expect(snap.version).toBe(4);
      expect(snap.rules.filter((x) => x.multiport === '22')).toHaveLength(1);
      expect(snap.instances[0]).toMatchObject({ revision: ra.revisions.get('i'), policy_hash: 'h2' });
    }
    await a.close();
    await b.close();
  });

  it('a commit that fails leaves the cache at the committed state', async () => {
    const s = openSqliteStore(join(dir, 'f.db'));
    await commit(s, 'p', createProjectOps(NOW));
    const before = await s.loadProject('p');
    const orphan: Op = { op: 'putRule', rule: { ...before!.rules[0]!, id: 'orphan', security_group_id: 'missing' } };
    await expect(commit(s, 'p', [{ op: 'deleteRule', id: 'default-in-v4' }, orphan])).rejects.toThrow();
    const after = (await s.loadProject('p'))!;
    expect(after.version).toBe(1);
    expect(after.rules.map((r) => r.id)).toEqual(before!.rules.map((r) => r.id));
    await s.close();
  });
});

describe('SQLite store: group commit', () => {
  const open = () => {
    const db = new Database(join(dir, 'g.db'));
    db.pragma('journal_mode = WAL');
    db.pragma('foreign_keys = ON');
    MIGRATIONS.forEach((m, v) => {
      m(db);
      db.pragma(`user_version = ${v + 1}`);
    });
    const transactions = { count: 0 };
    const tx = db.transaction.bind(db);
    db.transaction = ((fn: () => unknown) => {
      transactions.count++;
      return tx(fn);
    }) as typeof db.transaction;
    return { store: new SqliteStore(db), transactions };
  };

  it('commits mutations that arrive together in one transaction, each on the state of the ones before it; one that throws is undone alone', async () => {
    const { store: s, transactions } = open();
    await commit(s, 'p', [...createProjectOps(NOW), { op: 'putInstance', instance: inst('i') }]);
    transactions.count = 0;
    const seen: number[] = [];
    const writes = [22, 23, 22, 24].map((port) =>
      s.mutate('p', (cur) => {
        seen.push(cur!.rules.length);
        const m = createRules(cur!, 'default', [tcp(port)], ['r'], ctx);
        return { ops: [...m.ops, { op: 'setPolicy', instanceId: 'i', body: `{"p":${port}}`, hash: `h${port}` }], value: port };
      }),
    );
    const results = await Promise.allSettled(writes);
    expect(transactions.count).toBe(1);
    expect(seen).toEqual([4, 5, 6, 6]);
    expect(results.map((r) => r.status)).toEqual(['fulfilled', 'fulfilled', 'rejected', 'fulfilled']);
    expect(((results[2] as PromiseRejectedResult).reason as ApiError).kind).toBe('duplicate');
    const ok = results.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : []));
    expect(ok.map((r) => r.version)).toEqual([2, 3, 4]);
    // the undone mutation's revision was undone with it: revisions stay consecutive and growing
    expect(ok.map((r) => r.revisions.get('i'))).toEqual([1, 2, 3]);
    const snap = (await s.loadProject('p'))!;
    expect(snap.rules.map((r) => r.multiport).filter(Boolean)).toEqual(['22', '23', '24']);
    expect(snap.instances[0]).toMatchObject({ revision: 3, policy_hash: 'h24' });
    const fresh = openSqliteStore(join(dir, 'g.db'));
    expect(await fresh.loadProject('p')).toEqual(snap);
    await fresh.close();
    await s.close();
  });

  it('a write that fails at the database rejects only its own caller', async () => {
    const { store: s } = open();
    await commit(s, 'p', createProjectOps(NOW));
    const rule0 = (await s.loadProject('p'))!.rules[0]!;
    const results = await Promise.allSettled([
      commit(s, 'p', [{ op: 'deleteRule', id: 'default-out-v6' }]),
      commit(s, 'p', [{ op: 'deleteRule', id: 'default-in-v4' }, { op: 'putRule', rule: { ...rule0, id: 'orphan', security_group_id: 'missing' } }]),
      commit(s, 'q', createProjectOps(NOW)),
    ]);
    expect(results.map((r) => r.status)).toEqual(['fulfilled', 'rejected', 'fulfilled']);
    expect((await s.loadProject('p'))!.rules.map((r) => r.id)).toEqual(['default-in-v4', 'default-in-v6', 'default-out-v4']);
    expect((await s.loadProject('q'))!.version).toBe(1);
    await s.close();
  });
});
