/**
 * The flow mark as the reconciler runs it (src/nft/flow-mark.ts): a new
 * generation with every transaction, an epoch's first apply unarmed, the
 * conntrack marks cleared, then flow_known armed in a transaction of its own;
 * a new epoch before the field wraps; without conntrack the table stays
 * unarmed (and says why). The kernel side is test/kernel/flow-mark.test.ts.
 */
import { describe, expect, it } from 'vitest';
import { FakeClock } from '../../../src/lib/clock.js';
import { FakeNft } from '../../../src/nft/fake.js';
import type { ClearResult, FlowMarkClearer } from '../../../src/nft/conntrack.js';
import { ruleChainName } from '../../../src/nft/compile.js';
import { AgentMetrics } from '../../../src/agent/metrics.js';
import { Reconciler } from '../../../src/agent/reconciler.js';
import { MemoryStateStore } from '../../../src/agent/state-store.js';
import { DEFAULT_PLATFORM } from '../../../src/policy/platform.js';
import { captureLogs } from '../../helpers/log-capture.js';
import { dumpBlock } from '../../helpers/nft-dump.js';
import { policy } from './fixtures.js';

class FakeClearer implements FlowMarkClearer {
  readonly calls: number[] = [];
  constructor(public result: ClearResult = { ok: true, updated: 3 }) {}
  clear(mask: number): Promise<ClearResult> {
    this.calls.push(mask);
    return Promise.resolve(this.result);
  }
}

function setup(opts: { clearer?: FakeClearer | null; mask?: number } = {}) {
  const nft = new FakeNft();
  const metrics = new AgentMetrics();
  const clearer = opts.clearer === undefined ? new FakeClearer() : opts.clearer;
  const { logger, lines } = captureLogs('debug');
  const clock = new FakeClock();
  const r = new Reconciler({
    nft,
    store: new MemoryStateStore(),
    clock,
    logger,
    metrics,
    platform: { ...DEFAULT_PLATFORM, flowMarkMask: opts.mask ?? DEFAULT_PLATFORM.flowMarkMask },
    checkBeforeApply: false,
    ...(clearer ? { flowMarks: clearer } : {}),
  });
  // a sync and what follows its ack (the sweep and arming of a new epoch, in the background: reconciler.ts startArming; idle() waits for them)
  const submit = async (...args: Parameters<Reconciler['submit']>) => {
    const o = await r.submit(...args);
    await r.idle();
    return o;
  };
  return { nft, r, clearer, lines, metrics, clock, submit };
}

/** The secgroup_flow_mark_armed gauge. */
async function armedGauge(metrics: AgentMetrics): Promise<number> {
  return (await metrics.flowMarkArmed.get()).values[0]!.value;
}

/** The rule lines of one chain of the fake kernel's table. */
function chainLines(nft: FakeNft, name: string): string[] {
  return dumpBlock(nft.dump(), name).rules;
}

const applies = (nft: FakeNft) => nft.calls.filter((c) => c.method === 'apply').map((c) => c.tx!);
const opNames = (tx: { ops: { op: string; chain?: { name: string } }[] }) => tx.ops.map((o) => (o.op === 'restore-chain' ? `restore-chain ${o.chain!.name}` : o.op));

describe('reconciler: the flow mark', () => {
  it('starts an epoch unarmed, clears the marks, then arms flow_known in a transaction of its own with the marker', async () => {
    const { nft, r, clearer, lines, metrics, submit } = setup();
    expect(await armedGauge(metrics)).toBe(-1);
    expect(await submit(policy(1), 'controller')).toMatchObject({ status: 'applied', kind: 'full' });
    expect(await armedGauge(metrics)).toBe(1);
    const txs = applies(nft);
    expect(txs).toHaveLength(2);
    // the full reload: generation 1, flow_known empty
    const full = txs[0]!.ops[0]!;
    expect(full.op).toBe('replace-table');
    // then the clear, then the arming transaction
    expect(clearer!.calls).toEqual([0xffff0000]);
    // the arming turns both chains on at once (until then flow_allow kept the field at 0: see the test without conntrack)
    expect(opNames(txs[1]!)).toEqual(['restore-chain flow_known', 'restore-chain flow_allow', 'set-marker']);
    expect(chainLines(nft, 'flow_known')).toEqual(['ct mark and 0xffff0000 == 0x00010000 accept comment "flow mark: allowed under generation 1"']);
    expect(chainLines(nft, 'flow_allow')).toEqual(['ct mark set ct mark and 0x0000ffff or 0x00010000 accept comment "flow mark: generation 1"']);
    expect(r.flowMark).toEqual({ mask: 0xffff0000, generation: 1, armed: true, reason: null });
    expect(lines.find((l) => l.event === 'flow_mark_armed')).toMatchObject({ generation: 1, cleared: 3, mask: '0xffff0000' });
    // the drift check finds the table as applied (the fingerprint was taken after the arming)
    expect(await r.checkDrift()).toBeNull();
  });

  it('acks the epoch\'s first sync before the sweep, and syncs while it runs do not wait for it: the arming follows with the generation then applied', async () => {
    let release!: () => void;
    const slow: FlowMarkClearer & { calls: number } = {
      calls: 0,
      clear() {
        this.calls++;
        return new Promise<ClearResult>((resolve) => (release = () => resolve({ ok: true, updated: 7 })));
      },
    };
    const { nft, r, lines } = setup({ clearer: slow as unknown as FakeClearer });
    expect(await r.submit(policy(1), 'controller')).toMatchObject({ status: 'applied', kind: 'full' });
    // acked before the sweep; the sweep starts after it and runs while the table is enforced, unarmed
    for (let i = 0; i < 100 && slow.calls === 0; i++) await new Promise((resolve) => setImmediate(resolve));
    expect(slow.calls).toBe(1);
    expect(r.flowMark).toMatchObject({ generation: 1, armed: false });
    expect(chainLines(nft, 'flow_known')).toEqual([]);
    // syncs submitted meanwhile are applied while the sweep runs (a sweep takes ~0.8 s at 200k marked connections), still unarmed
    expect(await r.submit(policy(2, { httpPort: '8080' }), 'controller')).toMatchObject({ status: 'applied' });
    expect(await r.submit(policy(3, { httpPort: '8081' }), 'controller')).toMatchObject({ status: 'applied' });
    expect(r.flowMark).toMatchObject({ generation: 3, armed: false });
    expect(chainLines(nft, 'flow_known')).toEqual([]);
    expect(chainLines(nft, 'flow_allow')).toEqual(['ct mark set ct mark and 0x0000ffff or 0x00000000 accept comment "flow mark: not armed, kept at 0 (generation 3)"']);
    expect(applies(nft)).toHaveLength(3);
    // no second sweep while one is under way
    expect(slow.calls).toBe(1);
    release();
    await r.idle();
    // the arming: the table applied by then, with its generation
    expect(r.flowMark).toMatchObject({ generation: 3, armed: true });
    expect(applies(nft)).toHaveLength(4);
    expect(opNames(applies(nft)[3]!)).toEqual(['restore-chain flow_known', 'restore-chain flow_allow', 'set-marker']);
    expect(chainLines(nft, 'flow_known')).toEqual(['ct mark and 0xffff0000 == 0x00030000 accept comment "flow mark: allowed under generation 3"']);
    expect(lines.find((l) => l.event === 'flow_mark_armed')).toMatchObject({ generation: 3, cleared: 7 });
    expect(await r.checkDrift()).toBeNull();
  });

  it('a sweep that ends after a new epoch started does not arm it: the new epoch sweeps again, then arms', async () => {
    const releases: (() => void)[] = [];
    const slow: FlowMarkClearer & { calls: number[] } = {
      calls: [],
      clear(mask: number) {
        this.calls.push(mask);
        return new Promise<ClearResult>((resolve) => releases.push(() => resolve({ ok: true, updated: 1 })));
      },
    };
    const { nft, r } = setup({ clearer: slow as unknown as FakeClearer, mask: 0xff000000 });
    await r.submit(policy(1), 'controller');
    for (let i = 0; i < 100 && slow.calls.length === 0; i++) await new Promise((resolve) => setImmediate(resolve));
    expect(slow.calls).toHaveLength(1);
    // an 8-bit field wraps after 255 generations: the next epoch starts while the first sweep still runs
    for (let rev = 2; rev <= 256; rev++) await r.submit(policy(rev, { httpPort: String(1000 + (rev % 2)) }), 'controller');
    expect(r.flowMark).toMatchObject({ generation: 1, armed: false });
    releases[0]!();
    for (let i = 0; i < 100 && slow.calls.length < 2; i++) await new Promise((resolve) => setImmediate(resolve));
    // the first sweep armed nothing (its epoch is over); the new epoch's own sweep started after it
    expect(slow.calls).toHaveLength(2);
    expect(r.flowMark).toMatchObject({ generation: 1, armed: false });
    expect(chainLines(nft, 'flow_known')).toEqual([]);
    releases[1]!();
    await r.idle();
    expect(r.flowMark).toMatchObject({ generation: 1, armed: true });
  });

  it('gives every later transaction that can deny an allowed connection the next generation, counters untouched; a member joining an allow rule\'s group keeps it', async () => {
    const { nft, r, clearer, submit } = setup();
    await submit(policy(1), 'controller');
    await submit(policy(2, { httpPort: '8080' }), 'controller');
    expect(r.flowMark).toMatchObject({ generation: 2, armed: true });
    expect(chainLines(nft, 'flow_known')).toEqual(['ct mark and 0xffff0000 == 0x00020000 accept comment "flow mark: allowed under generation 2"']);
    const http = ruleChainName('sg-web', 'r-http');
    nft.setCounter(http, 40, 4000);
    // a member joins the group of an ingress allow rule: every connection allowed now stays allowed, the generation stays
    let before = applies(nft).length;
    expect(await submit(policy(3, { httpPort: '8080', members: ['198.18.0.10', '198.18.0.12', '198.18.0.30'] }), 'controller', { base: 2, groups: { web: { add: ['198.18.0.30'], remove: [] } } })).toMatchObject({
      status: 'applied',
      kind: 'incremental',
    });
    let delta = applies(nft).slice(before);
    expect(delta).toHaveLength(1);
    expect(opNames(delta[0]!)).toEqual(['update-elements', 'set-marker']);
    expect(r.flowMark).toMatchObject({ generation: 2, armed: true });
    expect(chainLines(nft, 'flow_allow')).toEqual(['ct mark set ct mark and 0x0000ffff or 0x00020000 accept comment "flow mark: generation 2"']);
    // the member leaves: its connections must be matched again, a new generation with the two chains restored
    before = applies(nft).length;
    expect(await submit(policy(4, { httpPort: '8080' }), 'controller', { base: 3, groups: { web: { add: [], remove: ['198.18.0.30'] } } })).toMatchObject({ status: 'applied', kind: 'incremental' });
    delta = applies(nft).slice(before);
    expect(delta).toHaveLength(1);
    expect(opNames(delta[0]!)).toEqual(['update-elements', 'set-marker', 'restore-chain flow_known', 'restore-chain flow_allow']);
    expect(r.flowMark).toMatchObject({ generation: 3, armed: true });
    expect(chainLines(nft, 'flow_allow')).toEqual(['ct mark set ct mark and 0x0000ffff or 0x00030000 accept comment "flow mark: generation 3"']);
    expect((await nft.readCounters())!.get(http)).toEqual({ packets: 40, bytes: 4000 });
    // a whole document whose only change is members joining (and an entry added to the address group of an allow rule):
    // element updates (the flow chains' rules are the agent's, not the policy's) that widen only, the generation kept
    const more = ['198.18.0.10', '198.18.0.12', '198.18.0.30', '198.18.0.31'];
    before = applies(nft).length;
    expect(await submit(policy(5, { httpPort: '8080', members: more, office: ['198.18.5.0/24', '198.18.8.0/24'] }), 'controller')).toMatchObject({ status: 'applied', kind: 'incremental' });
    delta = applies(nft).slice(before);
    expect(delta.map(opNames)).toEqual([['update-elements', 'update-elements', 'set-marker']]);
    expect(r.flowMark).toMatchObject({ generation: 3, armed: true });
    expect(chainLines(nft, 'flow_known')).toEqual(['ct mark and 0xffff0000 == 0x00030000 accept comment "flow mark: allowed under generation 3"']);
    expect(await r.checkDrift()).toBeNull();
    // a whole document where a member leaves: a new generation
    expect(await submit(policy(6, { httpPort: '8080', members: more.slice(0, 3), office: ['198.18.5.0/24', '198.18.8.0/24'] }), 'controller')).toMatchObject({ status: 'applied', kind: 'incremental' });
    expect(opNames(applies(nft).at(-1)!)).toEqual(['update-elements', 'set-marker', 'restore-chain flow_known', 'restore-chain flow_allow']);
    expect(r.flowMark).toMatchObject({ generation: 4, armed: true });
    // and one where the address group of the allow rule loses an entry: a new generation
    expect(await submit(policy(7, { httpPort: '8080', members: more.slice(0, 3) }), 'controller')).toMatchObject({ status: 'applied', kind: 'incremental' });
    expect(opNames(applies(nft).at(-1)!)).toEqual(['update-elements', 'set-marker', 'restore-chain flow_known', 'restore-chain flow_allow']);
    expect(r.flowMark).toMatchObject({ generation: 5, armed: true });
    expect((await nft.readCounters())!.get(http)).toEqual({ packets: 40, bytes: 4000 });
    // one clear for the whole epoch
    expect(clearer!.calls).toHaveLength(1);
    // a rule chain's allow goes through flow_allow
    expect(chainLines(nft, http)[0]).toMatch(/jump flow_allow/);
    expect(await r.checkDrift()).toBeNull();
  });

  it('a drift repair gets a new generation too (a connection marked under the tampered table is matched again)', async () => {
    const { nft, r, submit } = setup();
    await submit(policy(1), 'controller');
    nft.flushTable();
    const d = await r.checkDrift();
    expect(d).not.toBeNull();
    expect(r.flowMark).toMatchObject({ generation: 2, armed: true });
    expect(chainLines(nft, 'flow_known')).toEqual(['ct mark and 0xffff0000 == 0x00020000 accept comment "flow mark: allowed under generation 2"']);
    expect(await r.checkDrift()).toBeNull();
  });

  it('starts a new epoch before the field wraps: generation 1 unarmed, the marks cleared again, then armed', async () => {
    const { nft, r, clearer, submit } = setup({ mask: 0xff000000 });
    for (let rev = 1; rev <= 255; rev++) await submit(policy(rev, { httpPort: String(1000 + (rev % 2)) }), 'controller');
    expect(r.flowMark).toMatchObject({ mask: 0xff000000, generation: 255, armed: true });
    expect(chainLines(nft, 'flow_known')).toEqual(['ct mark and 0xff000000 == 0xff000000 accept comment "flow mark: allowed under generation 255"']);
    expect(clearer!.calls).toHaveLength(1);
    const before = applies(nft).length;
    await submit(policy(256, { httpPort: '2000' }), 'controller');
    expect(clearer!.calls).toHaveLength(2);
    const txs = applies(nft).slice(before);
    expect(txs).toHaveLength(2);
    expect(opNames(txs[1]!)).toEqual(['restore-chain flow_known', 'restore-chain flow_allow', 'set-marker']);
    expect(r.flowMark).toMatchObject({ generation: 1, armed: true });
    expect(chainLines(nft, 'flow_allow')).toEqual(['ct mark set ct mark and 0x00ffffff or 0x01000000 accept comment "flow mark: generation 1"']);
  });

  it('without conntrack(8): stays unarmed, says why once, and does not try again', async () => {
    const clearer = new FakeClearer({ ok: false, missing: true, reason: 'conntrack not found (install conntrack: apt-get install conntrack)' });
    const { nft, r, lines, metrics, submit } = setup({ clearer });
    await submit(policy(1), 'controller');
    await submit(policy(2, { httpPort: '81' }), 'controller');
    expect(await armedGauge(metrics)).toBe(0);
    expect(clearer.calls).toHaveLength(1);
    expect(applies(nft)).toHaveLength(2);
    expect(chainLines(nft, 'flow_known')).toEqual([]);
    // unarmed, nothing is marked: the field is kept at 0
    expect(chainLines(nft, 'flow_allow')).toEqual(['ct mark set ct mark and 0x0000ffff or 0x00000000 accept comment "flow mark: not armed, kept at 0 (generation 2)"']);
    expect(r.flowMark).toEqual({ mask: 0xffff0000, generation: 2, armed: false, reason: 'conntrack not found (install conntrack: apt-get install conntrack)' });
    expect(lines.filter((l) => l.event === 'flow_mark_unarmed')).toHaveLength(1);
    expect(String(lines.find((l) => l.event === 'flow_mark_unarmed')!.msg)).toMatch(/matched against the rules every time/);
  });

  it('a sweep that fails is tried again with the first sync after a backoff (1 min, doubling; it dumps the whole conntrack table), which then arms', async () => {
    const clearer = new FakeClearer({ ok: false, missing: false, reason: 'conntrack -U -f ipv4 failed (exit 1): Operation failed: No buffer space available' });
    const { nft, r, clock, lines, submit } = setup({ clearer });
    await submit(policy(1), 'controller');
    expect(r.flowMark).toMatchObject({ armed: false, reason: /No buffer space/ });
    expect(lines.find((l) => l.event === 'flow_mark_unarmed')).toMatchObject({ retryInMs: 60_000 });
    // syncs within the backoff do not sweep
    await submit(policy(2, { httpPort: '81' }), 'controller');
    expect(clearer.calls).toHaveLength(1);
    await clock.advance(60_000);
    await submit(policy(3, { httpPort: '82' }), 'controller');
    expect(clearer.calls).toHaveLength(2);
    // failed again: the next wait is twice as long
    await clock.advance(60_000);
    await submit(policy(4, { httpPort: '83' }), 'controller');
    expect(clearer.calls).toHaveLength(2);
    await clock.advance(60_000);
    clearer.result = { ok: true, updated: 0 };
    await submit(policy(5, { httpPort: '84' }), 'controller');
    expect(clearer.calls).toHaveLength(3);
    expect(r.flowMark).toEqual({ mask: 0xffff0000, generation: 5, armed: true, reason: null });
    expect(chainLines(nft, 'flow_known')).toEqual(['ct mark and 0xffff0000 == 0x00050000 accept comment "flow mark: allowed under generation 5"']);
  });

  it('with no clearer (or mask 0) nothing is armed; mask 0 renders no flow chain at all', async () => {
    const none = setup({ clearer: null });
    await none.submit(policy(1), 'controller');
    expect(none.r.flowMark).toMatchObject({ generation: 1, armed: false, reason: null });
    expect(chainLines(none.nft, 'flow_known')).toEqual([]);
    const off = setup({ mask: 0 });
    await off.submit(policy(1), 'controller');
    expect(off.r.flowMark).toEqual({ mask: 0, generation: 0, armed: false, reason: null });
    expect(off.clearer!.calls).toEqual([]);
    expect(off.nft.dump()).not.toContain('flow_');
  });
});
