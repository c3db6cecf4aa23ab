/**
 * The PostgreSQL store's change log (src/controller/store/change-log.ts):
 * a replica whose cached snapshot is behind (another replica committed)
 * brings it forward by the commits' logged ops instead of reloading the
 * project, and the result equals a fresh load; too far behind, or with
 * entries pruned, it reloads. Two stores (two pools) over one database of a
 * throwaway cluster (test/helpers/postgres.ts) are two replicas.
 */
import { describe, expect, it, vi } from 'vitest';
import fc from 'fast-check';
import pg from 'pg';
import { openPostgresStore, type PostgresStore } from '../../src/controller/store/postgres.js';
import { CHANGE_LOG_KEEP, changeEntry, loggedOps, replayChanges } from '../../src/controller/store/change-log.js';
import { applyOps, emptySnapshot, type Op, type ProjectSnapshot, type RuleRow } from '../../src/controller/model.js';
import { createProjectOps } from '../../src/controller/domain.js';
import { captureLogs } from '../helpers/log-capture.js';
import { usePostgres } from '../helpers/postgres.js';

const NOW = '2024-05-01T12:00:00Z';
vi.setConfig({ testTimeout: 120_000 });
const cluster = usePostgres();

const inst = (id: string, groups: string[]) => ({ id, name: id, addresses: [`198.18.0.${id.length}`], security_groups: groups, created_at: NOW, updated_at: NOW });
const group = (id: string) => ({ id, name: id, description: '', enterprise_project_id: '0', tags: [{ key: 'k', value: id }], created_at: NOW, updated_at: NOW });
const rule = (id: string, gid: string, port: number): RuleRow => ({
  id, security_group_id: gid, direction: 'ingress', priority: 1 + (port % 100), action: port % 2 ? 'allow' : 'deny', ethertype: 'IPv4', protocol: 'tcp', multiport: String(port),
  icmp_type: null, icmp_code: null, remote_ip_prefix: '198.18.0.0/15', remote_group_id: null, remote_address_group_id: null, description: `r${port}`, enabled: port % 3 !== 0, created_at: NOW,
});
const addressGroup = (id: string, n: number) => ({ id, name: id, description: '', ip_version: 4 as const, ip_set: [`198.18.${n}.0/24`], ip_remarks: { [`198.18.${n}.0/24`]: 'r' }, max_capacity: 20, enterprise_project_id: '0', tags: [], created_at: NOW, updated_at: NOW });

/** One random write, as ops valid on `cur` (so the database accepts them): `kind` picks the op, `n` the id. */
function opsFor(cur: ProjectSnapshot, kind: number, n: number, step: number): Op[] {
  const groups = cur.groups.map((g) => g.id);
  const g = groups[n % groups.length]!;
  switch (kind) {
    case 0:
      return [{ op: 'putGroup', group: group(`sg${n % 4}`) }];
    case 1:
      return [{ op: 'putRule', rule: rule(`r${n % 12}`, g, step) }, { op: 'putRule', rule: rule(`r${step}-x`, g, step + 1) }];
    case 2:
      return cur.rules.length ? [{ op: 'deleteRule', id: cur.rules[n % cur.rules.length]!.id }] : [];
    case 3:
      return g === 'default' || cur.instances.some((i) => i.security_groups.includes(g)) ? [] : [{ op: 'deleteGroup', id: g }];
    case 4:
      return [{ op: 'putInstance', instance: inst(`i${n % 5}`, [g]) }];
    case 5:
      return cur.instances.length ? [{ op: 'deleteInstance', id: cur.instances[n % cur.instances.length]!.id }] : [];
    case 6:
      return cur.instances.map((i): Op => ({ op: 'setPolicy', instanceId: i.id, body: `{"i":"${i.id}","s":${step}}`, hash: `h${step}-${i.id}` }));
    case 7:
      return [{ op: 'putAddressGroup', addressGroup: addressGroup(`ag${n % 3}`, step % 250) }];
    default:
      return cur.addressGroups.length ? [{ op: 'deleteAddressGroup', id: cur.addressGroups[n % cur.addressGroups.length]!.id }] : [];
  }
}

async function sql(url: string, text: string, params: unknown[] = []): Promise<pg.QueryResultRow[]> {
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  try {
    return (await c.query(text, params)).rows;
  } finally {
    await c.end();
  }
}

const events = (lines: Record<string, unknown>[], event: string) => lines.filter((l) => l.event === event);

describe('change log entries (pure)', () => {
  it('keep what a snapshot holds (no document, no token) and replay only an unbroken run of versions', () => {
    const ops: Op[] = [...createProjectOps(NOW), { op: 'putInstance', instance: inst('i', ['default']) }, { op: 'setToken', instanceId: 'i', tokenHash: 'secret-hash' }, { op: 'setPolicy', instanceId: 'i', body: '{"big":1}', hash: 'h' }];
    expect(loggedOps(ops).map((o) => o.op)).toEqual(['putGroup', 'putRule', 'putRule', 'putRule', 'putRule', 'putInstance', 'setPolicy']);
    expect(JSON.stringify(loggedOps(ops))).not.toMatch(/secret-hash|big/);
    const base = { ...applyOps(emptySnapshot('p'), ops.slice(0, 5)), version: 1 };
    const e2 = changeEntry(2, ops.slice(5), new Map([['i', 7]]));
    const e3 = changeEntry(3, [{ op: 'deleteRule', id: 'default-in-v4' }], new Map());
    const at3 = replayChanges(base, 3, [e2, e3])!;
    expect(at3.version).toBe(3);
    expect(at3.instances).toEqual([{ ...inst('i', ['default']), revision: 7, policy_hash: 'h' }]);
    expect(at3.rules.map((r) => r.id)).toEqual(['default-in-v6', 'default-out-v4', 'default-out-v6']);
    expect(replayChanges(base, 3, [e3]), 'a version missing').toBeNull();
    expect(replayChanges(base, 3, [e2, { ...e3, version: 4 }]), 'not the versions asked').toBeNull();
    expect(replayChanges(base, 1, []), 'not behind').toBeNull();
  });
});

describe('PostgreSQL store: replicas catch up by the change log', () => {
  it('random writes through two replicas: each one\'s snapshot, caught up by the log (never reloaded), equals a fresh load', async () => {
    const url = await cluster().createDatabase();
    const la = captureLogs('debug');
    const lb = captureLogs('debug');
    const a = await openPostgresStore({ url, logger: la.logger });
    const b = await openPostgresStore({ url, logger: lb.logger });
    let run = 0;
    try {
      await fc.assert(
        fc.asyncProperty(fc.array(fc.tuple(fc.boolean(), fc.integer({ min: 0, max: 8 }), fc.nat(50)), { minLength: 1, maxLength: 12 }), async (writes) => {
          const project = `p${run++}`;
          await a.mutate(project, () => ({ ops: createProjectOps(NOW), value: null }));
          await b.loadProject(project);
          for (const [k, [onA, kind, n]] of writes.entries()) {
            await (onA ? a : b).mutate(project, (cur) => ({ ops: opsFor(cur!, kind, n, k + 2), value: null }));
          }
          const fresh = await openPostgresStore({ url, poolSize: 1 });
          try {
            const want = await fresh.loadProject(project);
            expect(await a.loadProject(project)).toEqual(want);
            expect(await b.loadProject(project)).toEqual(want);
          } finally {
            await fresh.close();
          }
        }),
        { numRuns: 25, seed: 1605 },
      );
    } finally {
      await a.close();
      await b.close();
    }
    const caught = [...events(la.lines, 'snapshot_caught_up'), ...events(lb.lines, 'snapshot_caught_up')];
    expect(caught.length).toBeGreaterThan(25);
    expect([...events(la.lines, 'snapshot_reload'), ...events(lb.lines, 'snapshot_reload')]).toEqual([]);
  });

  it('a replica too far behind, or finding entries pruned, reloads the project (and gets it right); the log keeps a bounded number of versions', async () => {
    const url = await cluster().createDatabase();
    const lb = captureLogs('debug');
    const a = await openPostgresStore({ url });
    const b = await openPostgresStore({ url, logger: lb.logger });
    try {
      await a.mutate('p', () => ({ ops: createProjectOps(NOW), value: null }));
      await b.loadProject('p');
      const put = (s: PostgresStore, k: number) => s.mutate('p', () => ({ ops: [{ op: 'putRule', rule: rule(`r${k}`, 'default', k) }], value: null }));
      for (let k = 0; k < CHANGE_LOG_KEEP + 20; k++) await put(a, k);
      const want = (await a.loadProject('p'))!;
      expect(await b.loadProject('p')).toEqual(want);
      expect(events(lb.lines, 'snapshot_reload')).toEqual([expect.objectContaining({ reason: 'too_far_behind', behind: CHANGE_LOG_KEEP + 20 })]);
      const kept = Number((await sql(url, "SELECT count(*) AS n FROM project_changes WHERE project_id = 'p'"))[0]!.n);
      expect(kept).toBeGreaterThanOrEqual(CHANGE_LOG_KEEP);
      expect(kept).toBeLessThanOrEqual(CHANGE_LOG_KEEP + 16);

      // a gap in the log (as a prune racing a lagging reader leaves): reloaded, never a snapshot missing a commit
      await put(a, 1000);
      await put(a, 1001);
      await sql(url, "DELETE FROM project_changes WHERE project_id = 'p' AND version = (SELECT version - 1 FROM projects WHERE id = 'p')");
      await put(b, 1002);
      expect(events(lb.lines, 'snapshot_reload').at(-1)).toMatchObject({ reason: 'log_pruned', behind: 2 });
      expect(await b.loadProject('p')).toEqual(await a.loadProject('p'));
      expect((await b.loadProject('p'))!.rules.map((r) => r.id).slice(-3)).toEqual(['r1000', 'r1001', 'r1002']);
    } finally {
      await a.close();
      await b.close();
    }
  });
});
