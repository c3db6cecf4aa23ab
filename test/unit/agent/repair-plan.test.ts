/**
 * Drift repairs that cost what drifted (src/agent/repair-plan.ts): which
 * transaction each drift the monitor saw gets, what it renders to, and the
 * reconciler carrying it out over the fake (the table afterwards is what a
 * full reload gives, untouched rules keep their counts, nothing compiled).
 */
import { DEFAULT_PLATFORM } from '../../../src/policy/platform.js';
import { describe, expect, it } from 'vitest';
import { AgentMetrics } from '../../../src/agent/metrics.js';
import { pausesMonitor, planRepair, repairHow } from '../../../src/agent/repair-plan.js';
import { Reconciler } from '../../../src/agent/reconciler.js';
import { MemoryStateStore } from '../../../src/agent/state-store.js';
import type { AppliedBase } from '../../../src/agent/sync-plan.js';
import { FakeClock } from '../../../src/lib/clock.js';
import { silentLogger } from '../../../src/lib/logger.js';
import { compilePolicy, memberSetName, ruleChainName } from '../../../src/nft/compile.js';
import { FakeNft } from '../../../src/nft/fake.js';
import { MARKER_SET } from '../../../src/nft/model.js';
import type { Drift } from '../../../src/nft/readback.js';
import { renderTable, renderTransaction } from '../../../src/nft/render.js';
import { nftMissingObject } from '../../../src/nft/runner.js';
import { AddressSet } from '../../../src/policy/address-set.js';
import { policy } from './fixtures.js';

/** The flow mark off: these tests are about element updates and repairs; the flow mark's own are in reconciler-flow-mark.test.ts. */
const PLATFORM = { ...DEFAULT_PLATFORM, flowMarkMask: 0 };

const WEB = memberSetName(4, 'web');
const compiled = compilePolicy(policy(1), { table: 'secgroup', platform: PLATFORM });
const applied: AppliedBase = { revision: 1, compiled, tableComment: 'applied comment', fingerprint: '' };
const seen = (chains: string[], sets: string[], setsAddedTo: string[] = []): Drift => ({ kind: 'structure', detail: 'seen', inPlace: true, scope: { chains, sets, setsAddedTo } });

describe('drift repair planning', () => {
  it('a chain flushed or a rule inserted: only that chain flushed and its rules added again, then the marker', () => {
    const r = planRepair(applied, seen(['input'], ['__set0']))!;
    expect(repairHow(r)).toBe('restore');
    expect(r).toMatchObject({ kind: 'incremental', via: 'restore', tableComment: 'applied comment' });
    expect(r.compiled).toBe(compiled); // nothing compiled
    const input = compiled.table.chains.find((c) => c.name === 'input')!;
    expect(r.kind === 'incremental' && r.tx.ops).toEqual([
      { op: 'restore-chain', family: 'inet', table: 'secgroup', chain: input },
      { op: 'set-marker', family: 'inet', table: 'secgroup', text: compiled.table.marker },
    ]);
    const script = renderTransaction(r.kind === 'incremental' ? r.tx : { family: 'inet', table: 'secgroup', ops: [] });
    const lines = script.split('\n');
    expect(lines[0]).toBe('flush chain inet secgroup input');
    expect(lines.filter((l) => l.startsWith('add rule inet secgroup input '))).toHaveLength(input.rules.length);
    // the rules count into the counter objects that stayed (no new counter declared, none deleted)
    expect(script).toMatch(/add rule inet secgroup input .*counter name "c_[0-9a-f]+"/);
    expect(script).not.toMatch(/^(add |delete )?counter /m);
    expect(script).not.toMatch(/flush table|delete (chain|set|map|table)/);
  });

  it('a member removed: every member added again without a flush; a set that gained elements: flushed and refilled', () => {
    const removed = planRepair(applied, { ...seen([], [WEB]), kind: 'modified' })!;
    expect(repairHow(removed)).toBe('restore');
    const tx = removed.kind === 'incremental' ? removed.tx : null;
    expect(tx?.ops[0]).toMatchObject({ op: 'restore-elements', map: { name: WEB }, addOnly: true });
    const script = renderTransaction(tx!);
    expect(script).not.toContain(`flush set inet secgroup ${WEB}`);
    expect(script).toContain(`add element inet secgroup ${WEB} {\n\t\t\t198.18.0.10,\n\t\t\t198.18.0.12\n}`);
    const added = planRepair(applied, { ...seen([], [WEB], [WEB]), kind: 'modified' })!;
    const ops = added.kind === 'incremental' ? added.tx.ops : [];
    expect(ops[0]).toMatchObject({ op: 'restore-elements', map: { name: WEB } });
    expect(ops[0]).not.toHaveProperty('addOnly');
    expect(renderTransaction({ family: 'inet', table: 'secgroup', ops })).toMatch(new RegExp(`^flush set inet secgroup ${WEB}\nadd element inet secgroup ${WEB} \\{`));
  });

  it('members removed whose keys the listener reported: exactly those added back; a key that is not a member of ours: every member', () => {
    // 198.18.0.12 as the kernel holds it
    const exact = planRepair(applied, { ...seen([], [WEB]), scope: { chains: [], sets: [WEB], setsAddedTo: [], removedKeys: new Map([[WEB, ['c612000c']]]) } })!;
    const ops = exact.kind === 'incremental' ? exact.tx.ops : [];
    expect(ops[0]).toMatchObject({ op: 'update-elements', map: WEB, remove: [], add: [{ key: [{ kind: 'addr', family: 4, lo: 0xc612000cn, hi: 0xc612000cn }] }] });
    expect(renderTransaction({ family: 'inet', table: 'secgroup', ops })).toContain(`add element inet secgroup ${WEB} { 198.18.0.12 }`);
    for (const keys of [['c6120063'], ['c612000c00']]) {
      const r = planRepair(applied, { ...seen([], [WEB]), scope: { chains: [], sets: [WEB], setsAddedTo: [], removedKeys: new Map([[WEB, keys]]) } })!;
      expect(r.kind === 'incremental' && r.tx.ops[0]).toMatchObject({ op: 'restore-elements', addOnly: true });
    }
  });

  it('a verdict map that only lost elements is flushed and refilled (an element held again must not be judged a clash)', () => {
    const vmap = compiled.table.maps.find((m) => !m.set)!;
    const r = planRepair(applied, { ...seen([], [vmap.name]), kind: 'modified' })!;
    const op = r.kind === 'incremental' ? r.tx.ops[0] : undefined;
    expect(op).toMatchObject({ op: 'restore-elements', map: { name: vmap.name } });
    expect(op).not.toHaveProperty('addOnly');
  });

  it('pauses nft monitor (the fallback) around a restore that refills an interval map with concatenated keys, as around a full reload (nft 1.0.6 dies of SIGSEGV on it)', () => {
    const concat = compiled.table.maps.find((m) => m.interval && m.keyType.length > 1)!;
    expect(concat).toBeDefined();
    expect(pausesMonitor(planRepair(applied, { ...seen([], [concat.name]), kind: 'modified' })!)).toBe(true);
    expect(pausesMonitor(planRepair(applied, seen(['input'], [WEB]))!)).toBe(false);
    expect(pausesMonitor(planRepair(applied, { kind: 'missing', detail: 'deleted', tableDeleted: true })!)).toBe(true);
  });

  it('the generation marker changed by hand: only the marker set again', () => {
    const r = planRepair(applied, seen([], [MARKER_SET], [MARKER_SET]))!;
    expect(repairHow(r)).toBe('restore');
    expect(r.kind === 'incremental' && r.tx.ops).toEqual([{ op: 'set-marker', family: 'inet', table: 'secgroup', text: compiled.table.marker }]);
  });

  it('the table deleted: the applied table recreated as a replacement, no compile and no counts to carry', () => {
    const r = planRepair(applied, { kind: 'missing', detail: 'deleted', tableDeleted: true })!;
    expect(repairHow(r)).toBe('recreate');
    expect(r).toMatchObject({ kind: 'full', fresh: true, tableComment: compiled.table.comment });
    expect(r.compiled).toBe(compiled);
    expect(r.kind === 'full' && r.inPlace).toBeFalsy();
    expect(r.kind === 'full' && r.tx.ops).toEqual([{ op: 'replace-table', table: compiled.table }]);
  });

  it('what the drift cannot prove keeps the reload in place, or (not content only) the replacement', () => {
    const inPlace = (d: Drift) => {
      const plan = planRepair(applied, d);
      return plan && repairHow(plan);
    };
    expect(inPlace({ kind: 'structure', detail: 'no scope', inPlace: true })).toBe('in-place');
    expect(inPlace(seen(['not_ours'], []))).toBe('in-place');
    expect(inPlace(seen([], ['foreign_set']))).toBe('in-place');
    expect(inPlace(seen([], ['__set3']))).toBe('in-place'); // an anonymous set's elements without its rule
    expect(inPlace(seen([], []))).toBe('in-place');
    expect(repairHow(planRepair({ ...applied, compiled: { ...compiled, table: { ...compiled.table, marker: undefined } } }, seen(['input'], []))!)).toBe('in-place');
    expect(planRepair(applied, { kind: 'structure', detail: 'a chain added' })).toBeNull();
  });
});

function setup() {
  const nft = new FakeNft();
  let bursts = 0;
  const r = new Reconciler({
    nft,
    store: new MemoryStateStore(),
    clock: new FakeClock(),
    logger: silentLogger(),
    metrics: new AgentMetrics(),
    platform: PLATFORM,
    heapBurst: () => {
      bursts++;
      return () => undefined;
    },
  });
  return { nft, r, bursts: () => bursts };
}

describe('drift repairs by the reconciler', () => {
  const fresh = renderTable(compilePolicy(policy(1), { table: 'secgroup', platform: PLATFORM }).table, { listing: true });
  const http = ruleChainName('sg-web', 'r-http');

  it('restores a flushed chain and a removed member in one small transaction; the other rules keep their counts', async () => {
    const { nft, r, bursts } = setup();
    await r.submit(policy(1), 'controller');
    await r.idle();
    nft.setCounter(http, 7, 700);
    nft.state!.chains.find((c) => c.name === 'input')!.rules = [];
    (nft.state!.maps.find((m) => m.name === WEB)!.elements as AddressSet).delete(AddressSet.fromValidTexts(4, ['198.18.0.12']).at(0));
    const before = { reads: nft.count('readRuleCounters'), bursts: bursts(), compiled: r.state!.compiled, calls: nft.calls.length };
    await r.repairDrift({ kind: 'structure', detail: 'flushed and removed', inPlace: true, scope: { chains: ['input'], sets: [WEB], setsAddedTo: [] } });
    const applies = nft.calls.slice(before.calls).filter((c) => c.method === 'apply');
    expect(applies.map((c) => c.tx!.ops.map((o) => o.op))).toEqual([['restore-elements', 'restore-chain', 'set-marker']]);
    // verified: the marker read after it
    expect(nft.calls.at(-1)!.method).toBe('readMarker');
    expect(nft.dump()).toBe(fresh);
    expect(nft.count('readRuleCounters')).toBe(before.reads);
    expect(bursts()).toBe(before.bursts);
    expect(r.state!.compiled).toBe(before.compiled);
    expect((await nft.readCounters())!.get(http)).toEqual({ packets: 7, bytes: 700 });
    expect(await r.checkDrift()).toBeNull();
  });

  it('recreates a deleted table without compiling or reading counters', async () => {
    const { nft, r, bursts } = setup();
    await r.submit(policy(1), 'controller');
    await r.idle();
    nft.deleteTable();
    const before = { reads: nft.count('readRuleCounters'), bursts: bursts(), calls: nft.calls.length };
    await r.repairDrift({ kind: 'missing', detail: 'deleted', tableDeleted: true });
    const applies = nft.calls.slice(before.calls).filter((c) => c.method === 'apply');
    expect(applies).toHaveLength(1);
    expect(applies[0]!.tx!.ops).toEqual([{ op: 'replace-table', table: r.state!.compiled.table }]);
    expect(nft.count('readRuleCounters')).toBe(before.reads);
    expect(bursts()).toBe(before.bursts);
    expect(nft.dump()).toBe(fresh);
    expect(await r.checkDrift()).toBeNull();
  });

  it('a restore refused by nft (a chain of ours gone after all) falls back to the reload in place', async () => {
    const { nft, r } = setup();
    await r.submit(policy(1), 'controller');
    await r.idle();
    nft.state!.chains.find((c) => c.name === 'input')!.rules = [];
    nft.failNext('apply', nftMissingObject('nft -f', 'chain input'));
    const before = nft.calls.length;
    await r.repairDrift({ kind: 'structure', detail: 'flushed', inPlace: true, scope: { chains: ['input'], sets: [], setsAddedTo: [] } });
    const ops = nft.calls.slice(before).filter((c) => c.method === 'apply').map((c) => c.tx!.ops[0]!);
    expect(ops.map((o) => o.op)).toEqual(['restore-chain', 'replace-table']);
    expect(ops[1]!.op === 'replace-table' && ops[1]!.previous).toBeDefined();
    expect(nft.dump()).toBe(fresh);
  });

  it('a repair after a failed sync replaces the table after a compile, whatever the monitor saw', async () => {
    const { nft, r, bursts } = setup();
    await r.submit(policy(1), 'controller');
    await r.idle();
    nft.failNext('apply');
    await r.submit(policy(2, { httpPort: '81' }), 'controller');
    nft.deleteTable();
    const compiles = bursts();
    await r.repairDrift({ kind: 'missing', detail: 'deleted', tableDeleted: true });
    expect(bursts()).toBe(compiles + 1);
    expect(nft.dump()).toBe(fresh);
  });
});
