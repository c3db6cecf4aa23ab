import { DEFAULT_PLATFORM } from '../../../src/policy/platform.js';
import { Writable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { FakeClock } from '../../../src/lib/clock.js';
import { createLogger } from '../../../src/lib/logger.js';
import { FakeNft } from '../../../src/nft/fake.js';
import { FakeNftMonitor } from '../../../src/nft/monitor.js';
import { memberSetName } from '../../../src/nft/compile.js';
import type { NftTransaction } from '../../../src/nft/transaction.js';
import { AgentMetrics } from '../../../src/agent/metrics.js';
import { Reconciler } from '../../../src/agent/reconciler.js';
import { DriftMonitor, mergeDrifts } from '../../../src/agent/drift-monitor.js';
import { MemoryStateStore } from '../../../src/agent/state-store.js';
import { policy } from './fixtures.js';
import { tableComment } from '../../helpers/nft-dump.js';

/** The flow mark off: these tests are about element updates and repairs; the flow mark's own are in reconciler-flow-mark.test.ts. */
const PLATFORM = { ...DEFAULT_PLATFORM, flowMarkMask: 0 };

/** The kernel's side of `nft monitor`: every transaction applied reaches the sessions that follow, with its generation markers (ours too). */
class MonitoredNft extends FakeNft {
  constructor(private readonly monitor: FakeNftMonitor) {
    super();
  }

  override async apply(tx: NftTransaction): Promise<void> {
    await super.apply(tx);
    const markers = tx.ops.flatMap((o) => (o.op === 'set-marker' ? [o.text] : o.op === 'replace-table' && o.table.marker !== undefined ? [o.table.marker] : []));
    this.monitor.emit({ markers, structural: tx.ops.some((o) => o.op === 'replace-table') });
  }
}

function setup(monitor = new FakeNftMonitor()) {
  const nft = new MonitoredNft(monitor);
  const clock = new FakeClock();
  const metrics = new AgentMetrics();
  const lines: Record<string, unknown>[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      for (const l of chunk.toString().split('\n')) if (l.trim()) lines.push(JSON.parse(l) as Record<string, unknown>);
      cb();
    },
  });
  const logger = createLogger({ level: 'debug', destination: sink });
  const r = new Reconciler({ nft, store: new MemoryStateStore(), clock, logger, metrics, platform: PLATFORM, checkBeforeApply: false });
  const dm = new DriftMonitor({ monitor, target: r, clock, logger, metrics, restartInitialMs: 1000, restartMaxMs: 8000, probeInitialMs: 250, probeMaxMs: 1000 });
  const events = (name: string) => lines.filter((l) => l.event === name);
  const reads = () => ({ table: nft.count('readTable'), marker: nft.count('readMarker') });
  return { nft, clock, metrics, r, monitor, dm, events, reads };
}

const revisionOf = (nft: FakeNft) => /revision=(\d+)/.exec(tableComment(nft.dump()) ?? '')?.[1] ?? null;

describe('drift monitor', () => {
  it('repairs a change it did not make as soon as the monitor reports it, with one drift_repaired line', async () => {
    const { nft, clock, r, monitor, dm, events } = setup();
    dm.start();
    await r.submit(policy(1), 'controller');
    await clock.advance(500);
    nft.deleteTable();
    monitor.emit({ tableDeleted: true, structural: true, sample: ['delete table inet secgroup'], by: '42 (nft)' });
    await r.idle();
    await dm.stop();
    expect(revisionOf(nft)).toBe('1');
    expect(events('drift_repaired')).toEqual([
      expect.objectContaining({ via: 'monitor', drift: 'missing', revision: 1, detail: expect.stringContaining('by process 42 (nft): delete table inet secgroup') }),
    ]);
  });

  it.each([
    ['a flushed chain', 'structure', { structural: true, sample: ['delete rule inet secgroup input handle 4'] }],
    ['a removed element', 'modified', { sample: ['delete element inet secgroup s4 { 198.18.1.1 }'] }],
  ] as const)('reports %s as kind %s', async (_what, kind, batch) => {
    const { nft, clock, r, monitor, dm, events, metrics } = setup();
    dm.start();
    await r.submit(policy(1), 'controller');
    await clock.advance(500);
    const applies = nft.count('apply');
    monitor.emit({ ...batch, sample: [...batch.sample] });
    await dm.idle();
    await dm.stop();
    expect(nft.count('apply')).toBe(applies + 1);
    expect(nft.calls.at(-2)?.tx?.ops.map((o) => o.op)).toEqual(['replace-table']);
    expect(events('drift_repaired')).toEqual([expect.objectContaining({ via: 'monitor', drift: kind })]);
    expect(await metrics.registry.getSingleMetricAsString('secgroup_drift_repairs_total')).toContain(`kind="${kind}"} 1`);
  });

  it('ignores the transactions the agent sent itself (they carry its generation marker)', async () => {
    const { nft, clock, r, monitor, dm, events } = setup();
    dm.start();
    await r.submit(policy(1), 'controller');
    const first = r.state!.compiled.table.marker!;
    await r.submit(policy(2, { members: ['198.18.0.30'] }), 'controller'); // element update: a new marker
    const second = r.state!.compiled.table.marker!;
    expect(second).not.toBe(first);
    // reported late, after the next transaction was sent: still ours
    for (const marker of [first, second]) monitor.emit({ markers: [marker], lines: 3, structural: true });
    const applies = nft.count('apply');
    await clock.advance(500);
    await dm.stop();
    expect(nft.count('apply')).toBe(applies);
    expect(events('drift')).toEqual([]);
  });

  it('treats a transaction with somebody else\'s marker as foreign', async () => {
    const { nft, clock, r, monitor, dm } = setup();
    dm.start();
    await r.submit(policy(1), 'controller');
    await clock.advance(500);
    const applies = nft.count('apply');
    monitor.emit({ markers: ['secgroup digest=0 revision=0 instance=other'], structural: true });
    await dm.stop();
    expect(nft.count('apply')).toBe(applies + 1);
  });

  it('repairs once more for changes seen while a repair runs, not once per change', async () => {
    const { nft, clock, r, monitor, dm } = setup();
    dm.start();
    await r.submit(policy(1), 'controller');
    await clock.advance(500);
    const applies = nft.count('apply');
    // held in the repair's verify (after the reload, the monitor follows again)
    const release = nft.hold('readMarker');
    monitor.emit({ structural: true });
    await new Promise((res) => setImmediate(res));
    for (let i = 0; i < 5; i++) monitor.emit({ structural: true });
    release();
    await dm.idle();
    await dm.stop();
    expect(nft.count('apply')).toBe(applies + 2);
  });

  it('reads only the generation marker on its period while the monitor covers the table, the whole table otherwise', async () => {
    const { nft, clock, r, monitor, dm, reads } = setup();
    dm.start();
    await r.submit(policy(1), 'controller');
    expect(dm.watching).toBe(false);
    await clock.advance(500); // settled: one full check closes the gap before the monitor subscribed
    expect(reads().table).toBe(1);
    expect(dm.watching).toBe(true);
    let before = reads();
    expect(await dm.periodicCheck()).toBeNull();
    expect(reads()).toEqual({ table: before.table, marker: before.marker + 1 });
    // the cheap check still sees a table deleted behind a monitor that did not report it
    nft.deleteTable();
    expect(await dm.periodicCheck()).toMatchObject({ kind: 'missing' });
    expect(revisionOf(nft)).toBe('1');
    // the monitor dies: full checks until it is back and settled
    monitor.exit();
    expect(dm.watching).toBe(false);
    before = reads();
    await dm.periodicCheck();
    expect(reads().table).toBe(before.table + 1);
    await dm.stop();
  });

  it('skips the marker read-back after an element-only update while it covers the table, reads it back when it does not', async () => {
    const { r, clock, monitor, dm, reads } = setup();
    dm.start();
    await r.submit(policy(1), 'controller');
    await clock.advance(500);
    expect(dm.watching).toBe(true);
    let before = reads();
    expect(await r.submit(policy(2, { members: ['198.18.0.30'] }), 'controller')).toMatchObject({ status: 'applied', kind: 'incremental' });
    expect(reads()).toEqual(before);
    monitor.exit();
    expect(dm.watching).toBe(false);
    before = reads();
    expect(await r.submit(policy(3, { members: ['198.18.0.31'] }), 'controller')).toMatchObject({ status: 'applied', kind: 'incremental' });
    expect(reads()).toEqual({ table: before.table, marker: before.marker + 1 });
    await dm.stop();
  });

  it('restarts a monitor that died, with backoff, and stops it with the agent', async () => {
    const { clock, r, monitor, dm, events, metrics } = setup();
    dm.start();
    await r.submit(policy(1), 'controller');
    const n = monitor.started;
    monitor.exit('nft monitor exited (code 1): boom');
    expect(events('drift_monitor_exited')).toEqual([expect.objectContaining({ reason: 'nft monitor exited (code 1): boom', retryInMs: 1000 })]);
    await clock.advance(999);
    expect(monitor.started).toBe(n);
    await clock.advance(1);
    expect(monitor.started).toBe(n + 1);
    monitor.exit();
    await clock.advance(1999);
    expect(monitor.started).toBe(n + 1);
    await clock.advance(1);
    expect(monitor.started).toBe(n + 2);
    expect(await metrics.registry.getSingleMetricAsString('secgroup_drift_monitor_restarts_total')).toContain('secgroup_drift_monitor_restarts_total 2');
    expect(monitor.running).toBe(1);
    await dm.stop();
    expect(monitor.running).toBe(0);
    await clock.advance(60_000);
    expect(monitor.started).toBe(n + 2);
    expect(clock.timers).toBe(0);
  });

  it('reads the whole table back when the monitor lost events', async () => {
    const { clock, r, monitor, dm, reads } = setup();
    dm.start();
    await r.submit(policy(1), 'controller');
    await clock.advance(500);
    const before = reads().table;
    monitor.lost();
    await r.idle();
    await new Promise((res) => setImmediate(res));
    expect(reads().table).toBe(before + 1);
    await dm.stop();
  });

  it('is not running while its own full reload goes to nft (nft 1.0.6 monitor crashes on it), and follows again right after', async () => {
    const { nft, clock, r, monitor, dm, events } = setup();
    dm.start();
    await r.submit(policy(1), 'controller');
    await clock.advance(500);
    const release = nft.hold('apply');
    const done = r.submit(policy(2, { httpPort: '81' }), 'controller'); // a rule changes: full reload
    await new Promise((res) => setImmediate(res));
    expect(nft.calls.at(-1)?.tx?.ops.map((o) => o.op)).toEqual(['replace-table']);
    expect(monitor.running).toBe(0);
    release();
    expect(await done).toMatchObject({ status: 'applied', kind: 'full' });
    expect(monitor.running).toBe(1);
    expect(events('drift_monitor_exited')).toEqual([]);
    // a member delta is not a full reload: no pause
    const started = monitor.started;
    expect(await r.submit(policy(3, { httpPort: '81', members: ['198.18.0.10', '198.18.0.12', '198.18.0.30'] }), 'controller', { base: 2, groups: { web: { add: ['198.18.0.30'], remove: [] } } })).toMatchObject({ status: 'applied', kind: 'incremental' });
    expect(monitor.started).toBe(started);
    await dm.stop();
  });

  it('after its own full reload, covers the table again only once the new monitor reported a probe and a full check ran: a change made before it subscribed is repaired', async () => {
    const { nft, clock, r, monitor, dm, reads, events } = setup();
    dm.start();
    await r.submit(policy(1), 'controller');
    await clock.advance(500);
    expect(dm.watching).toBe(true);
    expect(await r.submit(policy(2, { httpPort: '81' }), 'controller')).toMatchObject({ status: 'applied', kind: 'full' });
    // a new `nft monitor` runs but has not subscribed yet (it loads its cache first): nothing it would report
    expect(dm.watching).toBe(false);
    // (the table's comment: an in-place reload keeps the old one, the repair's replacement writes the new one)
    const rules = () => nft.dump().replace(/^\tcomment .*\n/m, '');
    const applied = rules();
    nft.flushTable();
    const tableReads = reads().table;
    const probes = nft.calls.filter((c) => c.tx?.ops.every((o) => o.op === 'set-marker')).length;
    await clock.advance(250); // the probe: the monitor reports it, so it has subscribed
    await dm.idle();
    await r.idle();
    expect(nft.calls.filter((c) => c.tx?.ops.every((o) => o.op === 'set-marker')).length).toBe(probes + 1);
    expect(reads().table).toBeGreaterThan(tableReads);
    expect(events('drift_repaired')).toEqual([expect.objectContaining({ via: 'check', drift: 'structure', revision: 2 })]);
    expect(rules()).toBe(applied);
    // the repair was a full reload too: covered again after the next monitor's probe
    expect(dm.watching).toBe(false);
    await clock.advance(250);
    await r.idle();
    await dm.idle();
    expect(dm.watching).toBe(true);
    expect(monitor.running).toBe(1);
    await dm.stop();
  });

  it('with a source that says ready itself (our own listener): covered after one full check, no probe, and not stopped around its own full reloads', async () => {
    const { nft, clock, r, monitor, dm, events, reads } = setup(new FakeNftMonitor({ announces: true }));
    const probes = () => nft.calls.filter((c) => c.tx?.ops.every((o) => o.op === 'set-marker')).length;
    await r.submit(policy(1), 'controller');
    const tableReads = reads().table;
    dm.start();
    await new Promise((res) => setImmediate(res));
    await r.idle();
    expect(dm.watching).toBe(true);
    expect(reads().table).toBe(tableReads + 1);
    expect(events('drift_monitor_ready')).toEqual([expect.objectContaining({ announced: true })]);
    const release = nft.hold('apply');
    const done = r.submit(policy(2, { httpPort: '81' }), 'controller'); // a rule changes: full reload
    await new Promise((res) => setImmediate(res));
    expect(nft.calls.at(-1)?.tx?.ops.map((o) => o.op)).toEqual(['replace-table']);
    expect(monitor.running).toBe(1);
    release();
    expect(await done).toMatchObject({ status: 'applied', kind: 'full' });
    expect(dm.watching).toBe(true);
    // a change right after our own reload: reported and repaired by the monitor at once
    const rules = () => nft.dump().replace(/^\tcomment .*\n/m, '');
    const applied = rules();
    nft.flushTable();
    monitor.emit({ structural: true, sample: ['delete rule inet secgroup input (3 messages)'], by: '77 (nft)' });
    await dm.idle();
    await r.idle();
    expect(events('drift_repaired')).toEqual([expect.objectContaining({ via: 'monitor', drift: 'structure', revision: 2 })]);
    expect(rules()).toBe(applied);
    await clock.advance(10_000);
    expect([probes(), monitor.started, monitor.running, dm.watching]).toEqual([0, 1, 1, true]);
    await dm.stop();
  });

  it('keeps probing a monitor that reports nothing (doubling the gap), and restarts it after the ready timeout', async () => {
    const { nft, clock, r, monitor, dm } = setup();
    dm.start();
    await r.submit(policy(1), 'controller');
    await clock.advance(500);
    // a monitor that never reports: probes at 250, +500, +1000, +1000 ...
    monitor.exit();
    const silent = new FakeNftMonitor();
    const dm2 = new DriftMonitor({ monitor: silent, target: r, clock, logger: createLogger({ level: 'silent' }), metrics: new AgentMetrics(), probeInitialMs: 250, probeMaxMs: 1000, readyTimeoutMs: 5000, restartInitialMs: 1000 });
    await dm.stop();
    dm2.start();
    const probes = () => nft.calls.filter((c) => c.tx?.ops.every((o) => o.op === 'set-marker')).length;
    const p0 = probes();
    await clock.advance(250);
    await r.idle();
    expect(probes()).toBe(p0 + 1);
    await clock.advance(500);
    await r.idle();
    expect(probes()).toBe(p0 + 2);
    expect(dm2.watching).toBe(false);
    for (let i = 0; i < 5; i++) {
      await clock.advance(1000);
      await r.idle();
    }
    expect(silent.started).toBe(1);
    expect(silent.running).toBe(0); // stopped after 5 s of probes without an event
    await clock.advance(1000);
    expect(silent.started).toBe(2);
    await dm2.stop();
  });

  it('reads the whole table back after a transaction nft printed nothing of', async () => {
    const { nft, clock, r, monitor, dm, reads } = setup();
    dm.start();
    await r.submit(policy(1), 'controller');
    await clock.advance(500);
    const before = reads().table;
    const applies = nft.count('apply');
    monitor.unknown(7);
    await dm.idle();
    expect(reads().table).toBe(before + 1);
    expect(nft.count('apply')).toBe(applies); // nothing changed in ours
    await dm.stop();
  });
  describe('repairs that cost what drifted', () => {
    const WEB = memberSetName(4, 'web');
    const opsOfApplies = (nft: FakeNft, from: number) => nft.calls.slice(from).flatMap((c) => (c.method === 'apply' ? [c.tx!.ops.map((o) => (o.op === 'replace-table' && o.previous ? 'reload-in-place' : o.op))] : []));

    it('merges what two drifts touched; the removed keys of a set stay known only if each drift that touched it knew them', () => {
      const d = (sets: string[], keys: [string, string[]][], chains: string[] = []) => ({ kind: 'modified' as const, detail: 'd', inPlace: true as const, scope: { chains, sets, setsAddedTo: [], removedKeys: new Map(keys) } });
      expect(mergeDrifts(d(['s'], [['s', ['01']]]), d(['s', 't'], [['s', ['02']], ['t', ['03']]], ['input'])).scope).toEqual({
        chains: ['input'],
        sets: ['s', 't'],
        setsAddedTo: [],
        removedKeys: new Map([['s', ['01', '02']], ['t', ['03']]]),
      });
      expect(mergeDrifts(d(['s'], [['s', ['01']]]), d(['s'], [])).scope!.removedKeys).toEqual(new Map());
      expect(mergeDrifts(d(['s'], []), { kind: 'structure', detail: 'a chain added' })).toEqual({ kind: 'structure', detail: 'd; then a chain added' });
      expect(mergeDrifts(d(['s'], []), { kind: 'missing', detail: 'deleted', tableDeleted: true })).toMatchObject({ kind: 'missing', tableDeleted: true });
    });

    it('restores only the chain whose rules a foreign change touched, and logs how', async () => {
      const { nft, clock, r, monitor, dm, events } = setup();
      dm.start();
      await r.submit(policy(1), 'controller');
      await clock.advance(500);
      const before = nft.dump();
      const from = nft.calls.length;
      nft.state!.chains.find((c) => c.name === 'input')!.rules = [];
      monitor.emit({ structural: true, contentOnly: true, rulesOf: ['input'], sample: ['delete rule inet secgroup input handle 4'] });
      await dm.idle();
      await dm.stop();
      expect(opsOfApplies(nft, from)).toEqual([['restore-chain', 'set-marker']]);
      expect(nft.dump()).toBe(before);
      expect(events('drift_repaired')).toEqual([expect.objectContaining({ via: 'monitor', drift: 'structure', repair: 'restore', inPlace: false })]);
    });

    it('recreates the table the monitor saw deleted, with no counter read', async () => {
      const { nft, clock, r, monitor, dm, events } = setup();
      dm.start();
      await r.submit(policy(1), 'controller');
      await clock.advance(500);
      const before = nft.dump();
      const reads = nft.count('readRuleCounters');
      nft.deleteTable();
      monitor.emit({ tableDeleted: true, structural: true, rulesOf: ['input'] });
      await dm.idle();
      await dm.stop();
      expect(nft.dump()).toBe(before);
      expect(nft.count('readRuleCounters')).toBe(reads);
      expect(events('drift_repaired')).toEqual([expect.objectContaining({ drift: 'missing', repair: 'recreate' })]);
    });

    it('changes seen while a repair runs are restored by one more repair that covers all of them', async () => {
      const { nft, clock, r, monitor, dm } = setup();
      dm.start();
      await r.submit(policy(1), 'controller');
      await clock.advance(500);
      const before = nft.dump();
      const from = nft.calls.length;
      const release = nft.hold('readMarker'); // the first repair's verify
      nft.state!.chains.find((c) => c.name === 'input')!.rules = [];
      monitor.emit({ structural: true, contentOnly: true, rulesOf: ['input'] });
      await new Promise((res) => setImmediate(res));
      nft.state!.chains.find((c) => c.name === 'output')!.rules = [];
      monitor.emit({ structural: true, contentOnly: true, rulesOf: ['output'] });
      nft.state!.maps.find((m) => m.name === WEB)!.elements = [];
      monitor.emit({ contentOnly: true, elementsOf: [WEB] });
      release();
      await dm.idle();
      await dm.stop();
      expect(opsOfApplies(nft, from)).toEqual([
        ['restore-chain', 'set-marker'],
        ['restore-elements', 'restore-chain', 'set-marker'],
      ]);
      expect(nft.dump()).toBe(before);
    });

    it('a change seen while a full check waits is repaired whole (in place), not only what it touched', async () => {
      const { nft, clock, r, monitor, dm } = setup();
      dm.start();
      await r.submit(policy(1), 'controller');
      await clock.advance(500);
      const from = nft.calls.length;
      const release = nft.hold('readMarker');
      monitor.emit({ structural: true, contentOnly: true, rulesOf: ['input'] });
      await new Promise((res) => setImmediate(res));
      monitor.unknown(); // a transaction nothing was printed of: a full check waits
      monitor.emit({ contentOnly: true, elementsOf: [WEB] });
      release();
      await dm.idle();
      await dm.stop();
      expect(opsOfApplies(nft, from)).toEqual([['restore-chain', 'set-marker'], ['reload-in-place']]);
    });
  });
});
