/**
 * The write path under concurrency (issue 16): writes to one project that
 * arrive together are committed in one transaction with one compile, so a
 * burst into a group an instance uses hands out one revision and makes one
 * push; each write still succeeds or fails alone. And `applyOps`'s id index,
 * shared by lists derived from one another, finds exactly what a plain scan
 * finds.
 */
import { describe, expect, it } from 'vitest';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FakeClock } from '../../src/lib/clock.js';
import { SecgroupError } from '../../src/lib/errors.js';
import { ControllerService } from '../../src/controller/service.js';
import { createInstance, createRules, ruleCreate, newRuleRow, DEFAULT_QUOTAS, type MutationContext } from '../../src/controller/domain.js';
import { ApiError } from '../../src/controller/errors.js';
import { applyOps, emptySnapshot, rulesByGroup, type Op, type ProjectSnapshot, type RuleRow } from '../../src/controller/model.js';
import { compileInstanceBody, indexProject } from '../../src/controller/policy-documents.js';
import { MemoryStore } from '../../src/controller/store/memory.js';
import { openSqliteStore } from '../../src/controller/store/sqlite.js';
import type { ChangeFn, MutateResult, Store } from '../../src/controller/store/store.js';
import { captureLogs } from '../helpers/log-capture.js';
import { createRng } from '../helpers/random-policy.js';
import { countingRandom } from './controller-helpers.js';

const tcp = (port: number, extra: { id?: string; description?: string } = {}) =>
  ruleCreate('default', { direction: 'ingress', ethertype: 'IPv4', protocol: 'tcp', multiport: String(port), priority: 1, action: 'allow', ...extra });

function service(store: Store, pushed: { instances: string[]; revisions: number[] }[] = []) {
  const logs = captureLogs('info');
  const svc = new ControllerService({
    store,
    clock: new FakeClock(Date.UTC(2024, 4, 1, 12)),
    logger: logs.logger,
    quotas: { ...DEFAULT_QUOTAS, rules_per_group: 1000 },
    random: countingRandom(),
    onPolicyChanged: (_p, instances, docs) => pushed.push({ instances, revisions: instances.map((id) => docs.get(id)!.revision) }),
  });
  return { svc, logs };
}

const addRule = (port: number, extra?: { id?: string; description?: string }) => (s: ProjectSnapshot, ctx: MutationContext) => createRules(s, 'default', [tcp(port, extra)], ['r'], ctx);

describe.each([
  ['memory', () => new MemoryStore()],
  ['sqlite', () => openSqliteStore(':memory:')],
] as const)('writes that arrive together (%s store)', (_name, open) => {
  it('20 rule creates into a group an instance uses: every one committed, one compile, one revision and one push of the document', async () => {
    const store = open();
    const pushed: { instances: string[]; revisions: number[] }[] = [];
    const { svc } = service(store, pushed);
    await svc.mutate('p', (s, ctx) => createInstance(s, { name: 'web', addresses: ['198.18.0.1'], security_groups: ['default'] }, ctx));
    pushed.length = 0;
    const created = await Promise.all(Array.from({ length: 20 }, (_, k) => svc.mutate('p', addRule(1000 + k))));
    expect(created.map((r) => r[0]!.multiport)).toEqual(Array.from({ length: 20 }, (_, k) => String(1000 + k)));
    expect(pushed).toHaveLength(1);
    const snap = (await store.loadProject('p'))!;
    const inst = snap.instances[0]!;
    expect(pushed[0]).toEqual({ instances: [inst.id], revisions: [inst.revision] });
    // the stored document is the full compile of the state after all 20
    expect((await store.getPolicy('p', inst.id))!.body).toBe(compileInstanceBody(indexProject(snap), inst));
    expect(snap.rules.filter((r) => r.multiport !== null && Number(r.multiport) >= 1000)).toHaveLength(20);
    await store.close();
  });

  it('each write of a batch runs on the state the ones before it left: of two creates of one rule id, exactly one succeeds', async () => {
    const store = open();
    const { svc } = service(store);
    await svc.read('p');
    const results = await Promise.allSettled([svc.mutate('p', addRule(22, { id: 'same' })), svc.mutate('p', addRule(23, { id: 'same' })), svc.mutate('p', addRule(24))]);
    expect(results.map((r) => r.status)).toEqual(['fulfilled', 'rejected', 'fulfilled']);
    expect(((results[1] as PromiseRejectedResult).reason as ApiError).kind).toBe('exists');
    const rules = (await store.loadProject('p'))!.rules;
    expect(rules.filter((r) => r.id === 'same').map((r) => r.multiport)).toEqual(['22']);
    expect(rules.some((r) => r.multiport === '24')).toBe(true);
    await store.close();
  });

  it('a batch whose writes all fail commits nothing (a project seen for the first time is not created)', async () => {
    const store = open();
    const { svc } = service(store);
    const fail = () => {
      throw new ApiError('invalid', 'no');
    };
    const results = await Promise.allSettled([svc.mutate('new', fail), svc.mutate('new', fail)]);
    expect(results.map((r) => r.status)).toEqual(['rejected', 'rejected']);
    expect(await store.loadProject('new')).toBeNull();
    await store.close();
  });
});

describe('the snapshot a batch leaves in the store\'s cache', () => {
  it('is exactly what a fresh store loads from the file (the service hands over the state it computed; the store does not apply the ops again)', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'sg-batch-'));
    try {
      const store = openSqliteStore(join(dir, 'c.db'));
      const { svc } = service(store);
      await svc.mutate('p', (s, ctx) => createInstance(s, { name: 'web', addresses: ['198.18.0.1'], security_groups: ['default'] }, ctx));
      await Promise.all([
        ...Array.from({ length: 8 }, (_, k) => svc.mutate('p', addRule(2000 + k))),
        svc.mutate('p', (s, ctx) => createInstance(s, { name: 'db', addresses: ['198.18.0.2'], security_groups: ['default'] }, ctx)),
      ]);
      const cached = await store.loadProject('p');
      const fresh = openSqliteStore(join(dir, 'c.db'));
      expect(cached).toEqual(await fresh.loadProject('p'));
      expect(cached!.instances.every((i) => i.revision !== null)).toBe(true);
      await fresh.close();
      await store.close();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

/** A memory store whose database refuses a rule described `poison` (as a constraint would): the whole transaction fails. */
class PoisonStore extends MemoryStore {
  calls = 0;
  override mutate<T>(projectId: string, change: ChangeFn<T>): Promise<MutateResult<T>> {
    this.calls++;
    return super.mutate(projectId, (cur) => {
      const r = change(cur);
      if (r.ops.some((o) => o.op === 'putRule' && o.rule.description === 'poison')) throw new Error('CHECK constraint failed');
      return r;
    });
  }
}

describe('a batch the store refuses as a whole', () => {
  it('is committed write by write, so only the bad write fails (warn line write_batch_split)', async () => {
    const store = new PoisonStore();
    const { svc, logs } = service(store);
    await svc.read('p');
    const results = await Promise.allSettled([svc.mutate('p', addRule(1)), svc.mutate('p', addRule(2, { description: 'poison' })), svc.mutate('p', addRule(3))]);
    expect(results.map((r) => r.status)).toEqual(['fulfilled', 'rejected', 'fulfilled']);
    expect(((results[1] as PromiseRejectedResult).reason as Error).message).toBe('CHECK constraint failed');
    expect((await store.loadProject('p'))!.rules.filter((r) => r.multiport !== null).map((r) => r.multiport).sort()).toEqual(['1', '3']);
    expect(logs.lines.filter((l) => l.event === 'write_batch_split')).toEqual([expect.objectContaining({ level: 40, project: 'p', writes: 3 })]);
  });

  it('is not run again when its outcome is unknown (STORE_UNAVAILABLE): every write gets that error', async () => {
    const store = new PoisonStore();
    const { svc } = service(store);
    await svc.read('p');
    const before = store.calls;
    store.unavailable = true;
    const results = await Promise.allSettled([svc.mutate('p', addRule(1)), svc.mutate('p', addRule(2)), svc.mutate('p', addRule(3))]);
    expect(results.map((r) => (r.status === 'rejected' ? (r.reason as SecgroupError).code : r.status))).toEqual(['STORE_UNAVAILABLE', 'STORE_UNAVAILABLE', 'STORE_UNAVAILABLE']);
    expect(store.calls - before).toBe(1);
  });
});

/** A memory store whose commits to project `slow` wait until `release` is called. */
class GatedStore extends MemoryStore {
  release!: () => void;
  private readonly gate = new Promise<void>((r) => (this.release = r));
  override async mutate<T>(projectId: string, change: ChangeFn<T>): Promise<MutateResult<T>> {
    if (projectId === 'slow') await this.gate;
    return super.mutate(projectId, change);
  }
}

describe('writes to different projects', () => {
  it('do not wait for each other: a project whose commit hangs holds back none of another project\'s writes', async () => {
    const store = new GatedStore();
    const { svc } = service(store);
    await svc.read('fast');
    const slow = svc.mutate('slow', addRule(1));
    await new Promise((r) => setImmediate(r));
    // before: one batcher for all projects, so this write waited for the slow project's commit (the test timed out)
    const fast = await Promise.all([svc.mutate('fast', addRule(2)), svc.mutate('fast', addRule(3))]);
    expect(fast.map((r) => r[0]!.multiport)).toEqual(['2', '3']);
    expect(svc.projectsWriting).toBe(1);
    store.release();
    expect((await slow)[0]!.multiport).toBe('1');
    expect((await store.loadProject('slow'))!.rules.some((r) => r.multiport === '1')).toBe(true);
    // a project's batcher goes away once its writes are done
    expect(svc.projectsWriting).toBe(0);
  });
});

describe('applyOps on lists derived from one another', () => {
  /** The reference: a plain scan for every op. */
  function reference(rows: readonly RuleRow[], ops: readonly Op[]): RuleRow[] {
    let out = [...rows];
    for (const o of ops) {
      if (o.op === 'putRule') {
        const i = out.findIndex((r) => r.id === o.rule.id);
        if (i < 0) out.push(o.rule);
        else out[i] = o.rule;
      } else if (o.op === 'deleteRule') out = out.filter((r) => r.id !== o.id);
    }
    return out;
  }

  it('finds exactly the rows a scan finds, in long lists branched many times (siblings adding different rows at the same place)', () => {
    const rng = createRng(7);
    const rule = (id: string, port: number): RuleRow => ({ ...ruleRow(id), multiport: String(port) });
    const ruleRow = (id: string): RuleRow => newRuleRow({ id, security_group_id: 'default', direction: 'ingress', ethertype: 'IPv4', protocol: 'tcp', multiport: '1', created_at: 'now' });
    const root: ProjectSnapshot = { ...emptySnapshot('p'), rules: Array.from({ length: 300 }, (_, k) => ruleRow(`r${k}`)) };
    const pool: ProjectSnapshot[] = [root];
    let next = 0;
    for (let step = 0; step < 400; step++) {
      const from = rng.pick(pool);
      const ops: Op[] = Array.from({ length: rng.int(1, 4) }, (): Op => {
        const existing = from.rules.length ? rng.pick(from.rules).id : 'none';
        const kind = rng.int(0, 9);
        if (kind < 5) return { op: 'putRule', rule: rule(`n${next++}`, step) };
        if (kind < 8) return { op: 'putRule', rule: rule(rng.bool(0.8) ? existing : `n${rng.int(0, Math.max(0, next - 1))}`, step) };
        return { op: 'deleteRule', id: rng.bool(0.8) ? existing : `n${rng.int(0, Math.max(0, next - 1))}` };
      });
      const got = applyOps(from, ops);
      expect(got.rules, `step ${step}`).toEqual(reference(from.rules, ops));
      pool.push(got);
    }
  });
});

describe('rulesByGroup handed on by applyOps', () => {
  it('equals a grouping of the derived list after random puts, same-group replacements, group moves and deletions', () => {
    const rng = createRng(11);
    const groups = ['g0', 'g1', 'g2', 'g3'];
    const row = (id: string, gid: string, port: number): RuleRow => ({
      id, security_group_id: gid, direction: 'ingress', priority: 1, action: 'allow', ethertype: 'IPv4', protocol: 'tcp', multiport: String(port),
      icmp_type: null, icmp_code: null, remote_ip_prefix: null, remote_group_id: null, remote_address_group_id: null, description: '', enabled: rng.bool(0.8), created_at: 'now',
    });
    const grouped = (rules: readonly RuleRow[]) => new Map(groups.map((g) => [g, rules.filter((r) => r.security_group_id === g)]));
    let snap: ProjectSnapshot = { ...emptySnapshot('p'), rules: Array.from({ length: 300 }, (_, k) => row(`r${k}`, rng.pick(groups), k)) };
    const pool = [snap];
    let next = 0;
    for (let step = 0; step < 300; step++) {
      snap = rng.pick(pool);
      rulesByGroup(snap.rules);
      const ops: Op[] = Array.from({ length: rng.int(1, 3) }, (): Op => {
        const old = rng.pick(snap.rules);
        const kind = rng.int(0, 9);
        if (kind < 5) return { op: 'putRule', rule: row(`n${next++}`, rng.pick(groups), step) };
        if (kind < 8) return { op: 'putRule', rule: row(old.id, kind === 7 ? rng.pick(groups) : old.security_group_id, step) };
        return { op: 'deleteRule', id: old.id };
      });
      const after = applyOps(snap, ops);
      const by = rulesByGroup(after.rules);
      for (const [g, list] of grouped(after.rules)) expect(by.get(g) ?? [], `step ${step} ${g}`).toEqual(list);
      expect(rulesByGroup(snap.rules).get('g0') ?? [], `step ${step}: the base's grouping is untouched`).toEqual(grouped(snap.rules).get('g0'));
      pool.push(after);
    }
  });
});
