/**
 * The sync planner decides, before nft is touched, what one sync does:
 * nothing, element updates (from a member delta or from a compile), or a
 * full reload, and a full reload whenever a full sync is needed.
 */
import { describe, expect, it } from 'vitest';
import { compilePolicy } from '../../../src/nft/compile.js';
import { DEFAULT_PLATFORM } from '../../../src/policy/platform.js';
import { planSync, type AppliedBase } from '../../../src/agent/sync-plan.js';
import { policy } from './fixtures.js';

const TABLE = 'secgroup';

function applied(revision: number, opts: Parameters<typeof policy>[1] = {}): AppliedBase {
  const compiled = compilePolicy(policy(revision, opts), { table: TABLE, platform: DEFAULT_PLATFORM });
  return { revision, compiled, tableComment: 'applied comment', fingerprint: 'applied fingerprint' };
}

const base = { table: TABLE, platform: DEFAULT_PLATFORM, incremental: true, needFullSync: false };

describe('sync planner', () => {
  it('plans a full reload of the compiled table when nothing is applied yet', () => {
    const p = planSync({ ...base, policy: policy(1), change: null, applied: null });
    expect(p.kind).toBe('full');
    if (p.kind !== 'full') return;
    expect(p.tx.ops.map((o) => o.op)).toEqual(['replace-table']);
    expect(p.tableComment).toBe(p.compiled.table.comment ?? null);
    expect(p.tableComment).toMatch(/revision=1/);
  });

  it('plans nothing when the new revision compiles to the applied ruleset, keeping the applied comment and fingerprint', () => {
    const p = planSync({ ...base, policy: policy(2), change: null, applied: applied(1) });
    expect(p).toMatchObject({ kind: 'noop', tableComment: 'applied comment', fingerprint: 'applied fingerprint' });
  });

  it('plans element updates in one transaction when only map elements change', () => {
    const p = planSync({ ...base, policy: policy(2, { office: ['198.18.6.0/25'] }), change: null, applied: applied(1) });
    expect(p).toMatchObject({ kind: 'incremental', via: 'elements', tableComment: 'applied comment' });
    if (p.kind !== 'incremental') return;
    expect(p.tx).toMatchObject({ family: 'inet', table: TABLE });
    expect(new Set(p.tx.ops.map((o) => o.op))).toEqual(new Set(['update-elements', 'set-marker']));
    expect(p.added + p.removed).toBeGreaterThan(0);
  });

  it('plans a full reload when rules change', () => {
    expect(planSync({ ...base, policy: policy(2, { extraRule: true }), change: null, applied: applied(1) }).kind).toBe('full');
  });

  it('plans a full reload of the applied table in place over it (counters kept, the applied comment stays); a replacement when a full sync is needed', () => {
    const prev = applied(1);
    const p = planSync({ ...base, policy: policy(2, { extraRule: true }), change: null, applied: prev });
    expect(p).toMatchObject({ kind: 'full', inPlace: true, tableComment: 'applied comment' });
    if (p.kind !== 'full') return;
    expect(p.tx.ops).toEqual([{ op: 'replace-table', table: p.compiled.table, previous: prev.compiled.table }]);
    const forced = planSync({ ...base, policy: policy(2, { extraRule: true }), change: null, applied: prev, needFullSync: true });
    expect(forced).toMatchObject({ kind: 'full', tableComment: forced.compiled.table.comment });
    expect(forced.kind === 'full' && (forced.inPlace ?? false)).toBe(false);
    expect(forced.kind === 'full' && forced.tx.ops).toEqual([{ op: 'replace-table', table: forced.compiled.table }]);
  });

  it('plans a member delta on the applied revision as element updates of the applied table, without compiling', () => {
    const prev = applied(1);
    const change = { base: 1, groups: { web: { add: ['198.18.0.30'], remove: [] } } };
    const p = planSync({ ...base, policy: policy(2, { members: ['198.18.0.10', '198.18.0.12', '198.18.0.30'] }), change, applied: prev });
    expect(p).toMatchObject({ kind: 'incremental', via: 'membership', added: 1, removed: 0, tableComment: 'applied comment' });
    if (p.kind !== 'incremental') return;
    expect(p.tx.ops.map((o) => o.op)).toEqual(['update-elements', 'set-marker']);
  });

  it('compiles a member delta whose base is not the applied revision, and says why the fast path was not taken when it could not be', () => {
    const members = ['198.18.0.10', '198.18.0.30'];
    const other = planSync({ ...base, policy: policy(3, { members }), change: { base: 2, groups: { web: { add: ['198.18.0.30'], remove: ['198.18.0.12'] } } }, applied: applied(1) });
    expect(other).toMatchObject({ kind: 'incremental', via: 'elements' });
    const both = planSync({ ...base, policy: policy(2, { members }), change: { base: 1, groups: { web: { add: ['198.18.0.30'], remove: ['198.18.0.30'] } } }, applied: applied(1) });
    expect(both).toMatchObject({ kind: 'incremental', via: 'elements', membershipFull: expect.stringContaining('both added to and removed from') });
  });

  it('plans a full reload whenever a full sync is needed (after a failure or a drift), even for an unchanged ruleset or a member delta', () => {
    const full = { ...base, needFullSync: true };
    expect(planSync({ ...full, policy: policy(2), change: null, applied: applied(1) }).kind).toBe('full');
    expect(planSync({ ...full, policy: policy(2, { office: ['198.18.6.0/25'] }), change: null, applied: applied(1) }).kind).toBe('full');
    const change = { base: 1, groups: { web: { add: ['198.18.0.30'], remove: [] } } };
    expect(planSync({ ...full, policy: policy(2, { members: ['198.18.0.10', '198.18.0.12', '198.18.0.30'] }), change, applied: applied(1) }).kind).toBe('full');
  });

  it('with incremental updates off: nothing for an unchanged ruleset, else a full reload', () => {
    const off = { ...base, incremental: false };
    expect(planSync({ ...off, policy: policy(2), change: null, applied: applied(1) }).kind).toBe('noop');
    expect(planSync({ ...off, policy: policy(2, { office: ['198.18.6.0/25'] }), change: null, applied: applied(1) }).kind).toBe('full');
    const change = { base: 1, groups: { web: { add: ['198.18.0.30'], remove: [] } } };
    expect(planSync({ ...off, policy: policy(2, { members: ['198.18.0.10', '198.18.0.12', '198.18.0.30'] }), change, applied: applied(1) }).kind).toBe('full');
  });
});
