import { DEFAULT_PLATFORM } from '../../../src/policy/platform.js';
import type { BurstWork } from '../../../src/agent/footprint.js';
import { describe, expect, it } from 'vitest';
import { FakeClock } from '../../../src/lib/clock.js';
import { SecgroupError } from '../../../src/lib/errors.js';
import { silentLogger } from '../../../src/lib/logger.js';
import { FakeNft } from '../../../src/nft/fake.js';
import { compilePolicy, memberSetName, ruleChainName } from '../../../src/nft/compile.js';
import { counterKey } from '../../../src/nft/counters.js';
import type { Table } from '../../../src/nft/model.js';
import { nftMissingObject } from '../../../src/nft/runner.js';
import { renderTable } from '../../../src/nft/render.js';
import { AgentMetrics } from '../../../src/agent/metrics.js';
import { Reconciler, type SyncOutcome } from '../../../src/agent/reconciler.js';
import { MemoryStateStore } from '../../../src/agent/state-store.js';
import { applyPolicyDelta } from '../../../src/protocol/delta.js';
import { policy } from './fixtures.js';
import { dumpBlock, dumpBlocks, withoutGeneration } from '../../helpers/nft-dump.js';
import { golden } from '../../helpers/golden.js';

/** The flow mark off: these tests are about element updates and repairs; the flow mark's own are in reconciler-flow-mark.test.ts. */
const PLATFORM = { ...DEFAULT_PLATFORM, flowMarkMask: 0 };

function setup(opts: { incremental?: boolean; persistCoalesceMs?: number; heapBurst?: (work: BurstWork) => () => void } = {}) {
  const nft = new FakeNft();
  const clock = new FakeClock();
  const store = new MemoryStateStore();
  const metrics = new AgentMetrics();
  const outcomes: SyncOutcome[] = [];
  const r = new Reconciler({
    nft,
    store,
    clock,
    logger: silentLogger(),
    metrics,
    platform: PLATFORM,
    retryInitialMs: 1000,
    retryMaxMs: 8000,
    incremental: opts.incremental ?? true,
    ...(opts.persistCoalesceMs === undefined ? {} : { persistCoalesceMs: opts.persistCoalesceMs }),
    ...(opts.heapBurst ? { heapBurst: opts.heapBurst } : {}),
    onOutcome: (o) => outcomes.push(o),
  });
  return { nft, clock, store, metrics, outcomes, r };
}

/** The revision of the generation marker (a full reload in place keeps the table's comment; the marker always names the ruleset). */
const tableRevision = (nft: FakeNft) => /set sg_generation \{[^}]*revision=(\d+)/.exec(nft.dump())?.[1];
/** The whole table nft would list, up to its generation (comment and marker): what a fresh full compile of `p` gives. */
const listing = (t: Table) => withoutGeneration(renderTable(t, { listing: true }));

async function metric(metrics: AgentMetrics, name: string): Promise<string> {
  return (await metrics.registry.getSingleMetricAsString(name)).split('\n').filter((l) => !l.startsWith('#')).join('\n');
}

describe('reconciler', () => {
  it('applies a policy in one checked transaction, verifies it, persists it and reports it', async () => {
    const { nft, store, metrics, r } = setup();
    const o = await r.submit(policy(1), 'controller');
    expect(o).toMatchObject({ status: 'applied', revision: 1, kind: 'full' });
    // a full reload first reads the counters to carry (none: no table yet); its marker is read right after the ack
    expect(nft.calls.map((c) => c.method)).toEqual(['readRuleCounters', 'check', 'apply']);
    await r.idle();
    expect(nft.calls.map((c) => c.method)).toEqual(['readRuleCounters', 'check', 'apply', 'readMarker']);
    expect(nft.calls[2]!.tx!.ops.map((op) => op.op)).toEqual(['replace-table']);
    expect(tableRevision(nft)).toBe('1');
    expect(store.policy?.revision).toBe(1);
    expect(r.appliedRevision).toBe(1);
    expect(await metric(metrics, 'secgroup_applied_revision')).toBe('secgroup_applied_revision 1');
  });

  it('does not call nft when the same policy comes again', async () => {
    const { nft, r } = setup();
    await r.submit(policy(1), 'controller');
    await r.idle(); // the full reload's marker read follows its ack
    const calls = nft.calls.length;
    const o = await r.submit(policy(1), 'controller');
    expect(o).toMatchObject({ status: 'applied', revision: 1, kind: 'noop' });
    expect(nft.calls.length).toBe(calls);
  });

  it('records a new revision with an unchanged ruleset without calling nft, and persists it', async () => {
    const { nft, store, r } = setup();
    await r.submit(policy(1), 'controller');
    await r.idle(); // the full reload's marker read follows its ack
    const calls = nft.calls.length;
    expect(await r.submit(policy(2), 'controller')).toMatchObject({ status: 'applied', revision: 2, kind: 'noop' });
    expect(nft.calls.length).toBe(calls);
    expect(store.policy?.revision).toBe(2);
    expect(r.appliedRevision).toBe(2);
  });

  it('coalesces a burst submitted at once: only the newest revision is applied', async () => {
    const { nft, outcomes, r } = setup();
    const all = [1, 2, 3, 4, 5].map((n) => r.submit(policy(n, { httpPort: String(8000 + n) }), 'controller'));
    const results = await Promise.all(all);
    expect(results.slice(0, 4).map((o) => o.status)).toEqual(['superseded', 'superseded', 'superseded', 'superseded']);
    expect(results[4]).toMatchObject({ status: 'applied', revision: 5 });
    expect(nft.count('apply')).toBe(1);
    expect(tableRevision(nft)).toBe('5');
    expect(outcomes.map((o) => `${o.revision}:${o.status}`)).toEqual(['1:superseded', '2:superseded', '3:superseded', '4:superseded', '5:applied']);
  });

  it('coalesces revisions that arrive while an apply runs: the next sync takes only the newest', async () => {
    const { nft, r } = setup();
    const release = nft.hold('apply');
    const first = r.submit(policy(1), 'controller');
    await new Promise((res) => setImmediate(res));
    expect(nft.count('apply')).toBe(1);
    const later = [2, 3, 4].map((n) => r.submit(policy(n, { httpPort: String(8000 + n) }), 'controller'));
    release();
    expect(await first).toMatchObject({ status: 'applied', revision: 1 });
    const res = await Promise.all(later);
    expect(res.map((o) => o.status)).toEqual(['superseded', 'superseded', 'applied']);
    expect(nft.count('apply')).toBe(2);
    expect(tableRevision(nft)).toBe('4');
  });

  it('never applies a revision older than the applied one', async () => {
    const { nft, r } = setup();
    await r.submit(policy(5), 'controller');
    await r.idle(); // the full reload's marker read follows its ack
    const calls = nft.calls.length;
    expect(await r.submit(policy(4, { httpPort: '81' }), 'controller')).toMatchObject({ status: 'stale', revision: 4, current: 5 });
    expect(nft.calls.length).toBe(calls);
    expect(tableRevision(nft)).toBe('5');
  });

  it('an authoritative revision older than the applied one is applied, and ordering restarts from it', async () => {
    const { nft, store, r } = setup();
    const huge = 2 ** 50;
    await r.submit(policy(huge), 'controller');
    // the controller's policy after a restored database: revision 3, authoritative
    expect(await r.submit(policy(3, { httpPort: '81' }), 'controller', null, { authoritative: true })).toMatchObject({ status: 'applied', revision: 3, kind: 'full' });
    expect(tableRevision(nft)).toBe('3');
    await r.idle(); // written after the full reload's marker read
    expect(store.policy?.revision).toBe(3);
    // newer ones after it are accepted (although still older than the huge one), older ones are stale again
    expect(await r.submit(policy(4), 'controller')).toMatchObject({ status: 'applied', revision: 4 });
    expect(await r.submit(policy(2), 'controller')).toMatchObject({ status: 'stale', revision: 2, current: 4 });
    expect(r.appliedRevision).toBe(4);
  });

  it('an authoritative revision replaces a newer pending one, and a newer one queued after it is not stale', async () => {
    const { nft, r } = setup();
    await r.submit(policy(100), 'controller');
    nft.failNext('apply', new SecgroupError('NFT_FAILED', 'nft -f failed: boom'));
    expect(await r.submit(policy(101, { httpPort: '81' }), 'controller')).toMatchObject({ status: 'failed', revision: 101 });
    const back = r.submit(policy(3), 'controller', null, { authoritative: true });
    const next = r.submit(policy(4, { httpPort: '82' }), 'controller');
    expect(await back).toMatchObject({ status: 'superseded', revision: 3, by: 4 });
    expect(await next).toMatchObject({ status: 'applied', revision: 4 });
    expect(tableRevision(nft)).toBe('4');
  });

  it('keeps the previous ruleset when an apply fails, reports it once, and retries with exponential backoff', async () => {
    const { nft, clock, outcomes, metrics, store, r } = setup();
    await r.submit(policy(1), 'controller');
    for (let i = 0; i < 3; i++) nft.failNext('apply', new SecgroupError('NFT_FAILED', 'nft -f failed: boom'));
    const o = await r.submit(policy(2, { httpPort: '81' }), 'controller');
    expect(o).toMatchObject({ status: 'failed', revision: 2, retryInMs: 1000 });
    expect(tableRevision(nft)).toBe('1');
    expect(r.appliedRevision).toBe(1);
    expect(store.policy?.revision).toBe(1);
    const applies = () => nft.count('apply');
    expect(applies()).toBe(2);
    await clock.advance(999);
    expect(applies()).toBe(2);
    await clock.advance(1);
    expect(applies()).toBe(3); // retry 1 fails, next in 2 s
    await clock.advance(1999);
    expect(applies()).toBe(3);
    await clock.advance(1);
    expect(applies()).toBe(4); // retry 2 fails, next in 4 s
    await clock.advance(4000);
    expect(applies()).toBe(5); // retry 3 succeeds
    expect(tableRevision(nft)).toBe('2');
    expect(r.appliedRevision).toBe(2);
    expect(outcomes.filter((x) => x.revision === 2).map((x) => x.status)).toEqual(['failed', 'applied']);
    expect(await metric(metrics, 'secgroup_apply_failures_total')).toBe('secgroup_apply_failures_total{code="NFT_FAILED"} 3');
    await clock.advance(60_000);
    expect(applies()).toBe(5);
  });

  it('caps the backoff and resets it after a success', async () => {
    const { nft, clock, r } = setup();
    for (let i = 0; i < 6; i++) nft.failNext('check');
    await r.submit(policy(1), 'controller');
    // delays 1, 2, 4, 8, 8 s (cap 8 s) -> 5 retries within 23 s, the 6th try at 31 s succeeds
    await clock.advance(23_000);
    expect(nft.count('check')).toBe(6);
    await clock.advance(8000);
    expect(nft.count('check')).toBe(7);
    expect(r.appliedRevision).toBe(1);
    nft.failNext('check');
    await r.submit(policy(2, { httpPort: '81' }), 'controller');
    await clock.advance(1000);
    expect(r.appliedRevision).toBe(2);
  });

  it('applies a newer revision at once while a failed one waits for its retry', async () => {
    const { nft, r } = setup();
    nft.failNext('apply');
    expect(await r.submit(policy(1), 'controller')).toMatchObject({ status: 'failed' });
    expect(await r.submit(policy(2, { httpPort: '81' }), 'controller')).toMatchObject({ status: 'applied', revision: 2, kind: 'full' });
    expect(tableRevision(nft)).toBe('2');
  });

  it('makes the sync after a failure a full reload', async () => {
    const { nft, r } = setup();
    await r.submit(policy(1), 'controller');
    nft.failNext('apply');
    await r.submit(policy(2, { members: ['198.18.0.10', '198.18.0.14'] }), 'controller'); // incremental attempt fails -> full reload
    const ops = nft.calls.filter((c) => c.method === 'apply').map((c) => c.tx!.ops[0]!.op);
    expect(ops).toEqual(['replace-table', 'update-elements', 'replace-table']);
    expect(r.appliedRevision).toBe(2);
  });

  it('applies a membership or address-group change as element updates in one transaction, keeping counters', async () => {
    const { nft, r } = setup();
    await r.submit(policy(1), 'controller');
    const http = ruleChainName('sg-web', 'r-http');
    nft.setCounter(http, 10, 1000);
    const o = await r.submit(policy(2, { members: ['198.18.0.10', '198.18.0.20'], office: ['198.18.6.0/25'] }), 'controller');
    expect(o).toMatchObject({ status: 'applied', kind: 'incremental' });
    const tx = nft.calls.filter((c) => c.method === 'apply').at(-1)!.tx!;
    expect(tx.ops.slice(0, -1).every((op) => op.op === 'update-elements')).toBe(true);
    expect(tx.ops.at(-1)).toMatchObject({ op: 'set-marker', text: expect.stringContaining('revision=2') });
    expect(tx.ops.length).toBeGreaterThan(0);
    const rb = await nft.readTable();
    expect(rb!.chains.find((c) => c.name === http)!.rules[0]!.counter).toEqual({ packets: 10, bytes: 1000 });
    // members (the group's member set) and office prefixes (an interval map)
    const sets = dumpBlocks(nft.dump()).filter((b) => (b.kind === 'set' && b.name !== 'sg_generation') || b.name.includes('_ree'));
    expect(sets.map((b) => [b.name, b.elements.length])).toEqual([
      [memberSetName(4, 'web'), 2],
      ['in4_l0_ports_ree', 1],
    ]);
  });

  it('reloads the whole table when rules change', async () => {
    const { nft, r } = setup();
    await r.submit(policy(1), 'controller');
    expect(await r.submit(policy(2, { extraRule: true }), 'controller')).toMatchObject({ kind: 'full' });
    expect(dumpBlocks(nft.dump()).some((b) => b.kind === 'chain' && b.name === ruleChainName('sg-web', 'r-dns'))).toBe(true);
  });

  it('falls back to a full reload when the element update fails', async () => {
    const { nft, r } = setup();
    await r.submit(policy(1), 'controller');
    nft.failNext('check');
    expect(await r.submit(policy(2, { members: ['198.18.0.99'] }), 'controller')).toMatchObject({ status: 'applied', kind: 'full' });
    expect(tableRevision(nft)).toBe('2');
  });

  it('acknowledges a full reload once nft -f succeeded, and reads its marker right after, before the next sync', async () => {
    const { nft, r } = setup();
    const release = nft.hold('readMarker');
    expect(await r.submit(policy(1), 'controller')).toMatchObject({ status: 'applied', revision: 1, kind: 'full' });
    await new Promise((res) => setImmediate(res));
    expect(nft.count('readMarker')).toBe(1); // asked for after the ack, held by the fake
    const next = r.submit(policy(2, { httpPort: '81' }), 'controller');
    await new Promise((res) => setImmediate(res));
    expect(nft.count('apply')).toBe(1); // the next sync waits for the read
    release();
    expect(await next).toMatchObject({ status: 'applied', revision: 2, kind: 'full' });
    await r.idle();
    expect(nft.calls.map((c) => c.method)).toEqual(['readRuleCounters', 'check', 'apply', 'readMarker', 'check', 'apply', 'readMarker']);
  });

  it.each([
    ['a marker that is not the new one (nft exited 0 without applying)', (nft: FakeNft) => nft.setMarker('an older generation')],
    ['a marker read that fails', (nft: FakeNft) => nft.failNext('readMarker')],
  ] as const)('reports %s after the ack as a failure: the previous revision stays applied, the sync is retried', async (_what, breakIt) => {
    const { nft, clock, store, outcomes, r } = setup();
    await r.submit(policy(1), 'controller');
    await r.idle();
    const release = nft.hold('readMarker');
    expect(await r.submit(policy(2, { httpPort: '81' }), 'controller')).toMatchObject({ status: 'applied', revision: 2, kind: 'full' });
    breakIt(nft);
    release();
    await r.idle();
    expect(outcomes.map((o) => `${o.revision}:${o.status}`)).toEqual(['1:applied', '2:applied', '2:failed']);
    expect(outcomes.at(-1)).toMatchObject({ error: { code: expect.stringMatching(/^(VERIFY_FAILED|NFT_FAILED)$/) } });
    expect(r.appliedRevision).toBe(1);
    expect(store.policy?.revision).toBe(1);
    await clock.advance(1000);
    await r.idle();
    expect(r.appliedRevision).toBe(2);
    expect(tableRevision(nft)).toBe('2');
    expect(nft.calls.findLast((c) => c.method === 'apply')!.tx!.ops.map((op) => op.op)).toEqual(['replace-table']);
  });

  it('keeps enforcing when the state file cannot be written', async () => {
    const { store, metrics, r } = setup();
    store.failNextSave = new SecgroupError('STATE_IO', 'disk full');
    expect(await r.submit(policy(1), 'controller')).toMatchObject({ status: 'applied' });
    await r.idle(); // written after the outcome is reported
    expect(await metric(metrics, 'secgroup_state_errors_total')).toBe('secgroup_state_errors_total{code="STATE_IO"} 1');
  });

  it('writes the state file once per applied revision, before the next sync', async () => {
    const { store, r } = setup();
    expect(await r.submit(policy(1), 'controller')).toMatchObject({ status: 'applied' });
    await r.idle();
    expect(store.policy?.revision).toBe(1);
    await r.submit(policy(2), 'controller');
    await r.idle();
    expect(store.saves).toBe(2);
  });

  it('a stream of member deltas writes the last known good at most once per persistCoalesceMs; on disk is then the full document of the last delta', async () => {
    const { store, clock, r } = setup({ persistCoalesceMs: 5000 });
    let doc = policy(1);
    expect(await r.submit(doc, 'controller')).toMatchObject({ status: 'applied', kind: 'full' });
    await r.idle();
    expect(store.saves).toBe(1);
    const joiner = '198.18.0.99';
    // 20 deltas, one every 200 ms (4 s): the member joins, leaves, joins...
    for (let rev = 1; rev <= 20; rev++) {
      const group_members = { web: rev % 2 ? { add: [joiner], remove: [] } : { add: [], remove: [joiner] } };
      doc = applyPolicyDelta(doc, { base_revision: rev, revision: rev + 1, group_members });
      expect(await r.submit(doc, 'controller', { base: rev, groups: group_members })).toMatchObject({ status: 'applied', kind: 'incremental', revision: rev + 1 });
      await r.idle();
      await clock.advance(200);
    }
    // nothing written during the stream: the file holds revision 1, a complete good policy
    expect(store.saves).toBe(1);
    expect(store.policy?.revision).toBe(1);
    await clock.advance(1000);
    await r.idle();
    // one trailing write, 5 s after the last: exactly the document the deltas built (revision 21: joined 10 times, left 10 times)
    expect(store.saves).toBe(2);
    expect(store.policy).toEqual(doc);
    expect(store.policy).toEqual(policy(21));
    // a delta then a stop: the stop writes it at once
    const last = { web: { add: [joiner], remove: [] } };
    doc = applyPolicyDelta(doc, { base_revision: 21, revision: 22, group_members: last });
    await r.submit(doc, 'controller', { base: 21, groups: last });
    await r.stop();
    expect(store.saves).toBe(3);
    expect(store.policy).toEqual(policy(22, { members: ['198.18.0.10', '198.18.0.12', joiner] }));
  });

  it('in a burst, writes only what is applied last: a revision a newer one already waits behind is not written', async () => {
    const { nft, store, r } = setup();
    const release = nft.hold('apply');
    const first = r.submit(policy(1), 'controller');
    await Promise.resolve();
    const second = r.submit(policy(2, { httpPort: '81' }), 'controller');
    release();
    expect(await first).toMatchObject({ status: 'applied', revision: 1 });
    expect(await second).toMatchObject({ status: 'applied', revision: 2 });
    await r.idle();
    expect(store.saves).toBe(1);
    expect(store.policy?.revision).toBe(2);
  });

  it('when the newer revision of a burst fails, writes the one that is applied', async () => {
    const { nft, store, r } = setup();
    const releaseFirst = nft.hold('apply');
    const releaseSecond = nft.hold('apply');
    const first = r.submit(policy(1), 'controller');
    await Promise.resolve();
    const second = r.submit(policy(2, { httpPort: '81' }), 'controller');
    releaseFirst();
    expect(await first).toMatchObject({ status: 'applied', revision: 1 });
    nft.failNext('apply');
    releaseSecond();
    expect(await second).toMatchObject({ status: 'failed', revision: 2 });
    await r.idle();
    expect(store.saves).toBe(1);
    expect(store.policy?.revision).toBe(1);
    await r.stop();
  });

  it('compiles and applies a full sync inside one heap burst (footprint.ts), and a member delta outside any', async () => {
    const events: string[] = [];
    const { nft, r } = setup({
      heapBurst: (work) => {
        events.push(`start ${JSON.stringify(work)} (applies so far: ${nft.count('apply')})`);
        return () => events.push(`end (applies so far: ${nft.count('apply')})`);
      },
    });
    // the compile names the instance in the table's comment: recorded once per sync
    const compiling = (p: ReturnType<typeof policy>) =>
      new Proxy(p, {
        get: (target, key, receiver) => {
          if (key === 'instance' && events.at(-1) !== 'compile') events.push('compile');
          return Reflect.get(target, key, receiver);
        },
      });
    const first = policy(1);
    const rules = first.security_groups.reduce((n, g) => n + g.rules.length, 0);
    const addresses = Object.values(first.group_members).reduce((n, m) => n + m.length, 0) + first.address_groups.reduce((n, ag) => n + ag.ip_set.length, 0);
    expect(await r.submit(compiling(first), 'controller')).toMatchObject({ status: 'applied', kind: 'full' });
    // the burst knows what it compiles (footprint.ts burstMode)
    // (what reads the instance after the sync, the state written and the port report, comes after the burst)
    expect(events.slice(0, 3)).toEqual([`start ${JSON.stringify({ rules, members: addresses })} (applies so far: 0)`, 'compile', 'end (applies so far: 1)']);
    await r.idle();
    events.length = 0;
    const members = ['198.18.0.10', '198.18.0.12', '198.18.0.30'];
    expect(await r.submit(policy(2, { members }), 'controller', { base: 1, groups: { web: { add: ['198.18.0.30'], remove: [] } } })).toMatchObject({ status: 'applied', kind: 'incremental' });
    expect(events).toEqual([]);
  });

  it('does not rewrite the state file for a policy that came from it', async () => {
    const { store, r } = setup();
    await r.submit(policy(1), 'disk');
    expect(store.saves).toBe(0);
  });

  it('composes member deltas that queue up behind a running sync into one element update against the applied revision', async () => {
    const { nft, r } = setup();
    await r.submit(policy(1), 'controller');
    const release = nft.hold('apply');
    const p2 = r.submit(policy(2, { members: ['198.18.0.10', '198.18.0.12', '198.18.0.30'] }), 'controller', { base: 1, groups: { web: { add: ['198.18.0.30'], remove: [] } } });
    await new Promise((res) => setImmediate(res));
    // while 2 is being applied: 3 and 4 arrive as deltas, 4 on top of 3 (3 is superseded)
    const p3 = r.submit(policy(3, { members: ['198.18.0.10', '198.18.0.30'] }), 'controller', { base: 2, groups: { web: { add: [], remove: ['198.18.0.12'] } } });
    const p4 = r.submit(policy(4, { members: ['198.18.0.10', '198.18.0.30', '198.18.0.50'] }), 'controller', { base: 3, groups: { web: { add: ['198.18.0.50'], remove: [] } } });
    release();
    expect(await p2).toMatchObject({ status: 'applied', kind: 'incremental' });
    expect(await p3).toMatchObject({ status: 'superseded', by: 4 });
    expect(await p4).toMatchObject({ status: 'applied', kind: 'incremental' });
    const last = nft.calls.filter((c) => c.method === 'apply').at(-1)!.tx!;
    expect(last.ops.map((o) => o.op)).toEqual(['update-elements', 'set-marker']);
    const full = compilePolicy(policy(4, { members: ['198.18.0.10', '198.18.0.30', '198.18.0.50'] }), { platform: PLATFORM });
    expect(withoutGeneration(nft.dump())).toBe(listing(full.table));
    golden('reconciler-member-deltas.nft', nft.dump());
  });

  it('reloads in full when the element update of a member delta fails (the table stays right)', async () => {
    const { nft, r } = setup();
    await r.submit(policy(1), 'controller');
    nft.failNext('apply');
    const o = await r.submit(policy(2, { members: ['198.18.0.10', '198.18.0.30'] }), 'controller', { base: 1, groups: { web: { add: ['198.18.0.30'], remove: ['198.18.0.12'] } } });
    expect(o).toMatchObject({ status: 'applied', kind: 'full' });
    const full = compilePolicy(policy(2, { members: ['198.18.0.10', '198.18.0.30'] }), { platform: PLATFORM });
    expect(withoutGeneration(nft.dump())).toBe(listing(full.table));
    // and the next delta takes the fast path again from the fresh compile
    const o3 = await r.submit(policy(3, { members: ['198.18.0.10', '198.18.0.30', '198.18.0.50'] }), 'controller', { base: 2, groups: { web: { add: ['198.18.0.50'], remove: [] } } });
    expect(o3).toMatchObject({ status: 'applied', kind: 'incremental' });
    expect(withoutGeneration(nft.dump())).toBe(listing(compilePolicy(policy(3, { members: ['198.18.0.10', '198.18.0.30', '198.18.0.50'] }), { platform: PLATFORM }).table));
  });

  it('ignores a member delta whose base is not what is applied, and compiles in full', async () => {
    const { nft, r } = setup();
    await r.submit(policy(1), 'controller');
    const o = await r.submit(policy(3, { members: ['198.18.0.10', '198.18.0.30'] }), 'controller', { base: 2, groups: { web: { add: ['198.18.0.30'], remove: ['198.18.0.12'] } } });
    expect(o).toMatchObject({ status: 'applied' });
    const full = compilePolicy(policy(3, { members: ['198.18.0.10', '198.18.0.30'] }), { platform: PLATFORM });
    expect(withoutGeneration(nft.dump())).toBe(listing(full.table));
    expect(r.state!.compiled.digest).toBe(full.digest);
  });

  describe('drift', () => {
    it('finds nothing and calls no apply on an untouched table', async () => {
      const { nft, r } = setup();
      await r.submit(policy(1), 'controller');
      const applies = nft.count('apply');
      expect(await r.checkDrift()).toBeNull();
      expect(nft.count('apply')).toBe(applies);
    });

    it.each([
      ['deleted', (n: FakeNft): void => n.deleteTable(), 'missing', false],
      ['flushed', (n: FakeNft): void => n.flushTable(), 'structure', false],
      [
        'given a foreign generation marker',
        (n: FakeNft): void => {
          n.setMarker('secgroup digest=0 revision=0');
        },
        'comment',
        false,
      ],
      // the verify after an apply reads only the marker: the first drift check records the fingerprint
      ['edited by hand (same counts)', (n: FakeNft): void => n.tamper(), 'modified', true],
    ] as const)('re-applies a table that was %s and counts it', async (_what, breakIt, kind, baseline) => {
      const { nft, metrics, r } = setup();
      await r.submit(policy(1), 'controller');
      await r.idle(); // the full reload's marker read follows its ack
      if (baseline) expect(await r.checkDrift()).toBeNull();
      breakIt(nft);
      expect(await r.checkDrift()).toMatchObject({ kind });
      expect(tableRevision(nft)).toBe('1');
      expect(await r.checkDrift()).toBeNull();
      expect(await metric(metrics, 'secgroup_drift_repairs_total')).toBe(`secgroup_drift_repairs_total{kind="${kind}"} 1`);
    });

    it('repairs a change the monitor saw touch only rules and elements of ours in place: the applied table reloaded as it is, no compile, no counter read', async () => {
      let bursts = 0;
      const { nft, metrics, r } = setup({
        heapBurst: () => {
          bursts++;
          return () => undefined;
        },
      });
      await r.submit(policy(1), 'controller');
      await r.idle();
      nft.flushTable();
      const reads = nft.count('readRuleCounters');
      const compiles = bursts;
      await r.repairDrift({ kind: 'structure', detail: 'a chain flushed by hand', inPlace: true });
      const tx = nft.calls.filter((c) => c.method === 'apply').at(-1)!.tx!;
      expect(tx.ops).toEqual([expect.objectContaining({ op: 'replace-table', previous: expect.anything() })]);
      expect(nft.count('readRuleCounters')).toBe(reads);
      expect(bursts).toBe(compiles); // a full sync compiles inside a heap burst; this one compiled nothing
      expect(tableRevision(nft)).toBe('1');
      expect(await r.checkDrift()).toBeNull();
      expect(await metric(metrics, 'secgroup_drift_repairs_total')).toBe('secgroup_drift_repairs_total{kind="structure"} 1');
    });

    it('replaces the table when a repair in place finds an object of ours missing (the counts read first)', async () => {
      const { nft, r } = setup();
      await r.submit(policy(1), 'controller');
      await r.idle();
      nft.deleteTable();
      const reads = nft.count('readRuleCounters');
      const before = nft.calls.length;
      await r.repairDrift({ kind: 'modified', detail: 'said to be elements only', inPlace: true });
      // tried in place first (refused: the table is gone), then replaced
      const tried = nft.calls.slice(before).flatMap((c) => (c.tx ? [c.tx.ops[0]!] : []));
      expect(tried[0]!.op === 'replace-table' && tried[0]!.previous !== undefined).toBe(true);
      const last = tried.at(-1)!;
      expect(last.op === 'replace-table' && last.previous).toBeUndefined();
      expect(nft.count('readRuleCounters')).toBe(reads + 1);
      expect(tableRevision(nft)).toBe('1');
      expect(await r.checkDrift()).toBeNull();
    });

    it('a repair whose marker check after the ack fails is a failed repair, and the next one replaces the table', async () => {
      const { nft, metrics, r } = setup();
      await r.submit(policy(1), 'controller');
      await r.idle();
      nft.deleteTable();
      nft.failNext('readMarker'); // the repair's reload is applied, its marker read (after the ack) fails
      await r.repairDrift({ kind: 'missing', detail: 'table deleted' });
      expect(await metric(metrics, 'secgroup_apply_failures_total')).toBe('secgroup_apply_failures_total{code="NFT_FAILED"} 1');
      nft.flushTable();
      const before = nft.calls.length;
      // asked to reload in place, but the failed check forced the next sync full: a replacement
      await r.repairDrift({ kind: 'structure', detail: 'a chain flushed by hand', inPlace: true });
      const applied = nft.calls.slice(before).flatMap((c) => (c.method === 'apply' ? [c.tx!.ops[0]!] : []));
      expect(applied).toHaveLength(1);
      expect(applied[0]!.op === 'replace-table' && applied[0]!.previous).toBeUndefined();
      expect(await r.checkDrift()).toBeNull();
    });

    it('detects drift after an incremental update against the comment of the last full reload', async () => {
      const { nft, r } = setup();
      await r.submit(policy(1), 'controller');
      await r.submit(policy(2, { members: ['198.18.0.30'] }), 'controller');
      expect(await r.checkDrift()).toBeNull();
      nft.deleteTable();
      expect(await r.checkDrift()).toMatchObject({ kind: 'missing' });
      expect(dumpBlocks(nft.dump()).filter((b) => b.name.startsWith('in4_l0_ports_')).reduce((n, b) => n + b.elements.length, 0)).toBe(2); // 198.18.0.30 http + office ssh
    });
  });

  it('keeps per-rule packet counters monotonic across full reloads', async () => {
    const { nft, metrics, r } = setup();
    await r.submit(policy(1), 'controller');
    const http = ruleChainName('sg-web', 'r-http');
    nft.setCounter(http, 5, 500);
    await r.refreshCounters();
    nft.setCounter(http, 7, 700);
    await r.refreshCounters();
    await r.submit(policy(2, { extraRule: true }), 'controller'); // full reload: nft counters restart
    nft.setCounter(http, 3, 300);
    await r.refreshCounters();
    const text = await metric(metrics, 'secgroup_rule_packets_total');
    expect(text).toContain('secgroup_rule_packets_total{group="sg-web",rule="r-http",direction="ingress"} 10');
    expect(await metric(metrics, 'secgroup_rule_bytes_total')).toContain('rule="r-http",direction="ingress"} 1000');
  });

  it('on a replacement, asks for the counters to carry before it compiles (nft lists the table while the agent compiles)', async () => {
    const { nft, r } = setup();
    const seen: string[][] = [];
    // every read of the policy's groups before the apply (the compile's) records which nft calls were made by then
    const watched = new Proxy(policy(1), {
      get: (target, key, receiver) => {
        if (key === 'security_groups' && nft.count('apply') === 0) seen.push(nft.calls.map((c) => c.method));
        return Reflect.get(target, key, receiver);
      },
    });
    expect(await r.submit(watched, 'controller')).toMatchObject({ status: 'applied', kind: 'full' });
    expect(seen.length).toBeGreaterThan(0);
    for (const calls of seen) expect(calls).toEqual(['readRuleCounters']);
    await r.idle();
    expect(nft.calls.map((c) => c.method)).toEqual(['readRuleCounters', 'check', 'apply', 'readMarker']);
  });

  it('after noteTableAbsent (the start-up probe found no table), the first full apply reads no counters; later replacements read them again', async () => {
    const { nft, r } = setup();
    r.noteTableAbsent();
    expect(await r.submit(policy(1), 'controller')).toMatchObject({ status: 'applied', kind: 'full' });
    await r.idle();
    expect(nft.calls.map((c) => c.method)).toEqual(['check', 'apply', 'readMarker']);
    // the table deleted behind the agent's back: the repair replaces it, and asks for counts to carry as before
    nft.deleteTable();
    expect(await r.checkDrift()).not.toBeNull();
    expect(nft.count('readRuleCounters')).toBe(1);
    expect(tableRevision(nft)).toBe('1');
  });

  it('forgets what the start-up probe found once the drift monitor reports a change to our table before the first apply', async () => {
    const { nft, r } = setup();
    r.noteTableAbsent();
    await r.repairDrift({ kind: 'missing', detail: 'a change to our table: add table inet secgroup' });
    expect(await r.submit(policy(1), 'controller')).toMatchObject({ status: 'applied', kind: 'full' });
    expect(nft.count('readRuleCounters')).toBe(1);
  });

  it('keeps rule counters over a full reload in place, without reading them; the metrics count on from the last read', async () => {
    const { nft, metrics, r } = setup();
    await r.submit(policy(1), 'controller');
    const http = ruleChainName('sg-web', 'r-http');
    nft.setCounter(http, 7, 700);
    await r.refreshCounters();
    const reads = nft.count('readRuleCounters');
    expect(await r.submit(policy(2, { extraRule: true }), 'controller')).toMatchObject({ status: 'applied', kind: 'full' });
    const reload = nft.calls.findLast((c) => c.method === 'apply')!.tx!.ops[0]!;
    expect(reload.op === 'replace-table' && reload.previous?.chains.some((c) => c.name === http)).toBe(true);
    expect(nft.count('readRuleCounters')).toBe(reads);
    expect((await nft.readCounters())!.get(http)).toEqual({ packets: 7, bytes: 700 });
    expect((await nft.readCounters())!.get(ruleChainName('sg-web', 'r-dns'))).toEqual({ packets: 0, bytes: 0 });
    nft.setCounter(http, 9, 900);
    await r.refreshCounters();
    expect(await metric(metrics, 'secgroup_rule_packets_total')).toContain('secgroup_rule_packets_total{group="sg-web",rule="r-http",direction="ingress"} 9');
    expect(await metric(metrics, 'secgroup_rule_bytes_total')).toContain('rule="r-http",direction="ingress"} 900');
  });

  it('replaces the table when the reload in place finds an object missing, carrying the counters it reads first', async () => {
    const { nft, metrics, r } = setup();
    await r.submit(policy(1), 'controller');
    const http = ruleChainName('sg-web', 'r-http');
    nft.setCounter(http, 7, 700);
    await r.refreshCounters();
    nft.failNext('apply', nftMissingObject('nft -f', `chain ${http}`));
    expect(await r.submit(policy(2, { extraRule: true }), 'controller')).toMatchObject({ status: 'applied', kind: 'full' });
    const [inPlace, replaced] = nft.calls.filter((c) => c.method === 'apply').slice(-2).map((c) => c.tx!.ops[0]!);
    expect(inPlace!.op === 'replace-table' && inPlace!.previous !== undefined).toBe(true);
    expect(replaced!.op === 'replace-table' && replaced!.previous).toBeUndefined();
    expect(replaced!.op === 'replace-table' && replaced!.counters?.get(counterKey(http, 'sg-web/r-http'))).toEqual({ packets: 7, bytes: 700 });
    expect((await nft.readCounters())!.get(http)).toEqual({ packets: 7, bytes: 700 });
    expect((await nft.readCounters())!.get(ruleChainName('sg-web', 'r-dns'))).toEqual({ packets: 0, bytes: 0 });
    nft.setCounter(http, 9, 900);
    await r.refreshCounters();
    expect(await metric(metrics, 'secgroup_rule_packets_total')).toContain('secgroup_rule_packets_total{group="sg-web",rule="r-http",direction="ingress"} 9');
    expect(await metric(metrics, 'secgroup_rule_bytes_total')).toContain('rule="r-http",direction="ingress"} 900');
  });

  it('a full reload with no table to read (deleted by hand) or an unreadable one starts counters from zero, metrics still monotonic', async () => {
    const { nft, metrics, r } = setup();
    await r.submit(policy(1), 'controller');
    const http = ruleChainName('sg-web', 'r-http');
    nft.setCounter(http, 7, 700);
    await r.refreshCounters();
    nft.deleteTable();
    expect(await r.checkDrift()).toMatchObject({ kind: 'missing' });
    expect((await nft.readCounters())!.get(http)).toEqual({ packets: 0, bytes: 0 });
    nft.setCounter(http, 2, 200);
    await r.refreshCounters();
    expect(await metric(metrics, 'secgroup_rule_packets_total')).toContain('rule="r-http",direction="ingress"} 9');
    // the reload in place finds the table changed (an object missing): replaced, and its counters cannot be read
    nft.failNext('apply', nftMissingObject('nft -f', `chain ${http}`));
    nft.failNext('readRuleCounters');
    expect(await r.submit(policy(2, { extraRule: true }), 'controller')).toMatchObject({ status: 'applied', kind: 'full' });
    expect((await nft.readCounters())!.get(http)).toEqual({ packets: 0, bytes: 0 });
    nft.setCounter(http, 1, 100);
    await r.refreshCounters();
    expect(await metric(metrics, 'secgroup_rule_packets_total')).toContain('rule="r-http",direction="ingress"} 10');
  });

  it('re-applies when the platform options change', async () => {
    const { nft, r } = setup();
    await r.submit(policy(1), 'controller');
    r.setPlatform({ ...PLATFORM, controller: { addresses: ['198.18.0.1'], port: 8443, dns: false } });
    await r.idle();
    expect(dumpBlock(nft.dump(), 'output').rules.some((x) => x.endsWith(' comment "platform: controller channel"'))).toBe(true);
  });

  it('stops retrying on stop and leaves the ruleset in place', async () => {
    const { nft, clock, r } = setup();
    await r.submit(policy(1), 'controller');
    nft.failNext('apply');
    await r.submit(policy(2, { httpPort: '81' }), 'controller');
    await r.stop();
    await clock.advance(10_000);
    expect(tableRevision(nft)).toBe('1');
    expect(clock.timers).toBe(0);
  });
});

describe('reconciler drift while a newer revision keeps failing', () => {
  it('restores the applied ruleset and keeps retrying the newer one', async () => {
    const { nft, clock, r } = setup();
    await r.submit(policy(1), 'controller');
    nft.failNext('apply');
    expect(await r.submit(policy(2, { httpPort: '81' }), 'controller')).toMatchObject({ status: 'failed' });
    nft.deleteTable();
    expect(await r.checkDrift()).toMatchObject({ kind: 'missing' });
    expect(tableRevision(nft)).toBe('1');
    nft.failNext('apply');
    await clock.advance(1000); // retry 1 of revision 2: fails (second injected failure)
    expect(r.appliedRevision).toBe(1);
    await clock.advance(2000); // retry 2 works
    expect(r.appliedRevision).toBe(2);
    expect(tableRevision(nft)).toBe('2');
  });
});
