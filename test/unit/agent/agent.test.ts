import { describe, expect, it } from 'vitest';
import { FakeClock } from '../../../src/lib/clock.js';
import { SecgroupError } from '../../../src/lib/errors.js';
import { createLogger, silentLogger, type Logger } from '../../../src/lib/logger.js';
import { Writable } from 'node:stream';
import { ManualScheduler } from '../../../src/lib/scheduler.js';
import { FakeNft } from '../../../src/nft/fake.js';
import { FakeNftMonitor } from '../../../src/nft/monitor.js';
import { compilePolicy } from '../../../src/nft/compile.js';
import { formatIp } from '../../../src/policy/address.js';
import type { AddressSet } from '../../../src/policy/address-set.js';
import { packedMembers } from '../../../src/policy/packed-members.js';
import { renderTable } from '../../../src/nft/render.js';
import { ackFor, createAgent, PERSIST_COALESCE_MS, resolveControllerEndpoint, type Resolver } from '../../../src/agent/agent.js';
import { compiledRules, PORTS_AFTER_ELEMENTS_MS } from '../../../src/agent/port-reporter.js';
import { resolveConfig } from '../../../src/agent/config.js';
import { FakeDialer } from '../../../src/agent/controller-client.js';
import { FakePortProbe } from '../../../src/probe/fake.js';
import { MemoryStateStore } from '../../../src/agent/state-store.js';
import { ackSchema, type AckMessage } from '../../../src/protocol/messages.js';
import { policy } from './fixtures.js';
import { dumpBlock, dumpBlocks, generationMarker, tableComment } from '../../helpers/nft-dump.js';
import { captureLogs } from '../../helpers/log-capture.js';

const resolver: Resolver = { resolve: async (host) => (host === 'ctl.test' ? ['198.18.0.1', 'fd00:5ec::1'] : []) };

function setup(opts: { store?: MemoryStateStore; controller?: boolean; url?: string; urls?: string[]; logger?: Logger; monitor?: FakeNftMonitor; driftMonitor?: boolean } = {}) {
  const nft = new FakeNft();
  const clock = new FakeClock();
  const store = opts.store ?? new MemoryStateStore();
  const dialer = new FakeDialer();
  const scheduler = new ManualScheduler();
  const probe = new FakePortProbe();
  const config = resolveConfig(
    { instance_id: 'ecs-1', http_listen: null, ...(opts.driftMonitor === false ? { drift_monitor: false } : {}), ...(opts.controller === false ? {} : { controller: { ...(opts.urls ? { urls: opts.urls } : { url: opts.url ?? 'ws://198.18.0.1:8080' }), token: 't' } }) },
    {},
  );
  const agent = createAgent({ config, nft, store, clock, logger: opts.logger ?? silentLogger(), scheduler, resolver, dialer: opts.controller === false ? null : dialer.dial, portProbe: probe, random: () => 0.5, nftMonitor: opts.monitor ?? null });
  return { nft, clock, store, dialer, scheduler, agent, probe };
}

const acks = (msgs: { type: string }[]) => msgs.filter((m): m is AckMessage => m.type === 'ack');
const settle = () => new Promise((r) => setImmediate(r));

describe('agent', () => {
  it('applies the last known good policy before contacting the controller (fail-static boot)', async () => {
    const store = new MemoryStateStore(policy(7));
    const { nft, dialer, agent } = setup({ store });
    const started = agent.start();
    await started;
    expect(tableComment(nft.dump())).toContain('revision=7');
    const applyIndex = nft.calls.findIndex((c) => c.method === 'apply');
    expect(applyIndex).toBeGreaterThan(0);
    expect(dialer.sockets.length).toBe(1);
    dialer.last.events.open();
    expect(dialer.last.messages[0]).toMatchObject({ type: 'hello', instance_id: 'ecs-1', applied_revision: 7, protocol: 1 });
    expect(agent.status().ready).toBe(true);
    await agent.stop();
  });

  it('boots without reading counters when its start-up probe found no table, and carries them when it found one', async () => {
    const fresh = setup({ store: new MemoryStateStore(policy(7)) });
    await fresh.agent.start();
    expect(fresh.nft.count('readRuleCounters')).toBe(0);
    expect(tableComment(fresh.nft.dump())).toContain('revision=7');
    await fresh.agent.stop();

    // a restart over the table the last run left: its counts are read and carried
    const restart = setup({ store: new MemoryStateStore(policy(7)) });
    await restart.nft.apply({ family: 'inet', table: 'secgroup', ops: [{ op: 'replace-table', table: compilePolicy(policy(6)).table }] });
    const counted = compilePolicy(policy(6)).rules[0]!.chain;
    restart.nft.setCounter(counted, 5, 500);
    await restart.agent.start();
    expect(restart.nft.count('readRuleCounters')).toBe(1);
    expect((await restart.nft.readCounters())!.get(counted)).toEqual({ packets: 5, bytes: 500 });
    await restart.agent.stop();
  });

  it('keeps a corrupt state file aside, reports it, and applies nothing in its place', async () => {
    const store = new MemoryStateStore();
    store.text = '{"format":1,"policy":{"revision":"x"';
    const { nft, agent } = setup({ store });
    await agent.start();
    expect(store.movedAside.length).toBe(1);
    expect(nft.count('apply')).toBe(0);
    expect(agent.status().ready).toBe(false);
    expect(await agent.metrics.registry.getSingleMetricAsString('secgroup_state_errors_total')).toContain('code="STATE_CORRUPT"} 1');
    await agent.stop();
  });

  it('refuses to start without usable nft, with the probe error', async () => {
    const { nft, agent } = setup();
    nft.failNext('probe', new SecgroupError('NFT_PERMISSION', 'permission denied - needs CAP_NET_ADMIN'));
    await expect(agent.start()).rejects.toMatchObject({ code: 'NFT_PERMISSION' });
  });

  it('applies a policy snapshot from the controller and acks it with its duration', async () => {
    const { nft, dialer, agent, store } = setup();
    await agent.start();
    const s = dialer.last;
    s.events.open();
    s.receive({ type: 'welcome', protocol: 1, instance_id: 'ecs-1', desired_revision: 3 });
    s.receive({ type: 'policy', policy: policy(3) });
    await agent.reconciler.idle();
    await settle();
    expect(tableComment(nft.dump())).toContain('revision=3');
    expect(store.policy?.revision).toBe(3);
    expect(acks(s.messages)).toEqual([expect.objectContaining({ revision: 3, status: 'applied', duration_ms: expect.any(Number), digest: expect.any(String) })]);
    expect(s.messages.some((m) => m.type === 'ports')).toBe(true);
    await agent.stop();
  });

  it('applies a membership delta as element updates (no full compile, no reload), acks it and persists the new document', async () => {
    const { nft, dialer, agent, store, clock } = setup();
    await agent.start();
    const s = dialer.last;
    s.events.open();
    s.receive({ type: 'policy', policy: policy(3) });
    await agent.reconciler.idle();
    const applies = nft.count('apply');
    s.receive({ type: 'policy_delta', base_revision: 3, revision: 4, group_members: { web: { add: ['198.18.0.30'], remove: ['198.18.0.12'] } } });
    await agent.reconciler.idle();
    await settle();
    expect(nft.count('apply')).toBe(applies + 1);
    const tx = nft.calls.filter((c) => c.method === 'apply').at(-1)!.tx!;
    // the element updates, the marker, and the flow mark's next generation (two tiny chains without counters: nft/flow-mark.ts)
    expect(tx.ops.map((o) => (o.op === 'restore-chain' ? `restore-chain ${o.chain.name}` : o.op))).toEqual(['update-elements', 'set-marker', 'restore-chain flow_known', 'restore-chain flow_allow']);
    expect(generationMarker(nft.dump())).toContain('revision=4');
    expect(acks(s.messages).at(-1)).toMatchObject({ revision: 4, status: 'applied' });
    // written as last known good within PERSIST_COALESCE_MS (30 s; before: 5 s) of the last write (member deltas coalesce their writes)
    expect(store.policy?.revision).toBe(3);
    await clock.advance(29_000);
    await settle();
    expect(store.policy?.revision).toBe(3);
    await clock.advance(PERSIST_COALESCE_MS - 29_000);
    await settle();
    expect(store.policy?.revision).toBe(4);
    expect(store.policy?.group_members.web).toEqual(['198.18.0.10', '198.18.0.30']);
    expect(agent.reconciler.state?.kind).toBe('incremental');
    // the table holds what a full compile of revision 4 gives
    const full = compilePolicy(policy(4, { members: ['198.18.0.10', '198.18.0.30'] }));
    const elements = (dump: string) => dumpBlocks(dump).filter((b) => b.name.startsWith('in4')).reduce((n, b) => n + b.elements.length, 0);
    expect(elements(nft.dump())).toBe(elements(renderTable(full.table, { listing: true })));
    await agent.stop();
  });

  it('holds a big remote group packed as the frame arrives, through deltas and the last known good, with the table the strings give', async () => {
    const { nft, dialer, agent, store, clock } = setup();
    await agent.start();
    const s = dialer.last;
    s.events.open();
    // 2000 members in the controller's canonical text and order (198.18.0.10 and .12 among them, as policy() has)
    const members = Array.from({ length: 2000 }, (_, i) => formatIp(4, BigInt((198 << 24) + (18 << 16) + 10 + 2 * i)));
    s.receive({ type: 'policy', policy: policy(3, { members }) });
    await agent.reconciler.idle();
    const held = agent.reconciler.newestPolicy!;
    expect(packedMembers(held.group_members, 'web')?.v4.length).toBe(2000);
    s.receive({ type: 'policy_delta', base_revision: 3, revision: 4, group_members: { web: { add: ['198.18.200.1'], remove: ['198.18.0.12'] } } });
    await agent.reconciler.idle();
    expect(acks(s.messages).map((a) => [a.revision, a.status])).toEqual([
      [3, 'applied'],
      [4, 'applied'],
    ]);
    expect(agent.reconciler.state?.kind).toBe('incremental');
    const next = [...members.filter((m) => m !== '198.18.0.12'), '198.18.200.1'];
    // the document after the delta: still packed, and read as strings it is the controller's revision 4
    expect(packedMembers(agent.reconciler.newestPolicy!.group_members, 'web')?.v4.length).toBe(2000);
    expect(JSON.stringify(agent.reconciler.newestPolicy)).toBe(JSON.stringify(policy(4, { members: next })));
    const full = compilePolicy(policy(4, { members: next }));
    const elements = (dump: string) => dumpBlocks(dump).filter((b) => b.name.startsWith('in4')).reduce((n, b) => n + b.elements.length, 0);
    expect(elements(nft.dump())).toBe(elements(renderTable(full.table, { listing: true })));
    // the last known good: written from the packed words, read back packed
    await clock.advance(PERSIST_COALESCE_MS);
    await settle();
    expect(store.policy?.revision).toBe(4);
    expect(packedMembers(store.policy!.group_members, 'web')).toBeDefined();
    expect(store.policy?.group_members.web).toEqual(next);
    await agent.stop();
  });

  it('asks for the full policy (resync) when a delta does not start from its newest document', async () => {
    const { nft, dialer, agent } = setup();
    await agent.start();
    const s = dialer.last;
    s.events.open();
    s.receive({ type: 'policy_delta', base_revision: 3, revision: 4, group_members: { web: { add: ['198.18.0.30'], remove: [] } } });
    expect(s.messages.at(-1)).toMatchObject({ type: 'resync', have_revision: null });
    s.receive({ type: 'policy', policy: policy(3) });
    await agent.reconciler.idle();
    s.receive({ type: 'policy_delta', base_revision: 2, revision: 4, group_members: { web: { add: ['198.18.0.30'], remove: [] } } });
    expect(s.messages.at(-1)).toMatchObject({ type: 'resync', have_revision: 3, reason: expect.stringContaining('revision 2') });
    s.receive({ type: 'policy_delta', base_revision: 3, revision: 4, group_members: { nope: { add: ['198.18.0.30'], remove: [] } } });
    expect(s.messages.at(-1)).toMatchObject({ type: 'resync', have_revision: 3, reason: expect.stringContaining('nope') });
    s.receive({ type: 'policy_delta', base_revision: 3, revision: 4, group_members: { web: { add: ['not-an-ip'], remove: [] } } });
    expect(s.messages.at(-1)).toMatchObject({ type: 'ack', revision: 4, status: 'rejected', error: { code: 'POLICY_INVALID' } });
    await agent.reconciler.idle();
    expect(generationMarker(nft.dump())).toContain('revision=3');
    await agent.stop();
  });

  it('falls back to a full compile when a delta cannot be element updates (merged range), with the same result', async () => {
    const { nft, dialer, agent } = setup();
    await agent.start();
    const s = dialer.last;
    s.events.open();
    s.receive({ type: 'policy', policy: policy(3) });
    await agent.reconciler.idle();
    // 198.18.0.11 joins 198.18.0.10 and .12 into one range: the maps change shape
    s.receive({ type: 'policy_delta', base_revision: 3, revision: 4, group_members: { web: { add: ['198.18.0.11'], remove: [] } } });
    await agent.reconciler.idle();
    await settle();
    expect(acks(s.messages).at(-1)).toMatchObject({ revision: 4, status: 'applied' });
    const full = compilePolicy(policy(4, { members: ['198.18.0.10', '198.18.0.11', '198.18.0.12'] }));
    const maps = (dump: string) => dumpBlocks(dump).filter((b) => b.kind !== 'chain' && b.name !== 'sg_generation').map((b) => b.name).sort();
    expect(maps(nft.dump())).toEqual(maps(renderTable(full.table, { listing: true })));
    await agent.stop();
  });

  it('acks every change of a burst but sends the port report at most once a second', async () => {
    const { dialer, agent, clock } = setup();
    await agent.start();
    const s = dialer.last;
    s.events.open();
    for (let rev = 3; rev <= 8; rev++) {
      s.receive({ type: 'policy', policy: policy(rev, { httpPort: String(8000 + rev) }) });
      await agent.reconciler.idle();
      await settle();
    }
    const ports = () => s.messages.filter((m) => m.type === 'ports').length;
    expect(acks(s.messages).filter((a) => a.status === 'applied').length).toBe(6);
    expect(ports()).toBe(1);
    await clock.advance(1000);
    await settle();
    expect(ports()).toBe(2); // the trailing report, after the burst
    await clock.advance(5000);
    await settle();
    expect(ports()).toBe(2);
    await agent.stop();
  });

  /**
   * An agent connected to a live controller (it answers every ping: over 30 s the connection would be dropped as
   * dead otherwise), revision 3 applied and its port report sent (with `entries` as the probe's answer): the
   * reports read so far.
   */
  async function reportedRevision3(entries?: FakePortProbe['entries']) {
    const { dialer, agent, clock, probe } = setup();
    await agent.start();
    const s = dialer.last;
    s.ping = () => void queueMicrotask(() => s.events.pong());
    if (entries) probe.entries = entries;
    s.events.open();
    s.receive({ type: 'policy', policy: policy(3) });
    await agent.reconciler.idle();
    await clock.advance(2000);
    await settle();
    return { agent, clock, probe, s, reads: probe.calls.length };
  }

  it('reports ports after a rule change at once, after member deltas at most once every 30 s', async () => {
    const { agent, clock, probe, s, reads } = await reportedRevision3();
    s.receive({ type: 'policy_delta', base_revision: 3, revision: 4, group_members: { web: { add: ['198.18.0.30'], remove: [] } } });
    await agent.reconciler.idle();
    await clock.advance(2000);
    await settle();
    expect(acks(s.messages).at(-1)).toMatchObject({ revision: 4, status: 'applied' });
    expect(agent.reconciler.state?.kind).toBe('incremental');
    expect(probe.calls.length).toBe(reads);
    s.receive({ type: 'policy_delta', base_revision: 4, revision: 5, group_members: { web: { add: [], remove: ['198.18.0.30'] } } });
    await agent.reconciler.idle();
    expect(PORTS_AFTER_ELEMENTS_MS).toBe(30_000);
    // the last report went out at 1 s (after revision 3), it is 4 s now: nothing at 30 s (29 s after it; before: due at 11 s)
    await clock.advance(PORTS_AFTER_ELEMENTS_MS - 4000);
    await settle();
    expect(probe.calls.length).toBe(reads);
    await clock.advance(1000);
    await settle();
    // one trailing report for both deltas, 30 s after the last report, of the newest revision
    expect(probe.calls.slice(reads)).toEqual([{ revision: 5 }]);
    // rated with the compiled rules (kept current by the membership fast path), not by normalising the document again
    expect(probe.lastRules).toBeDefined();
    expect(probe.lastRules).toEqual(compiledRules(agent.reconciler.state!.compiled));
    expect([...(probe.lastRules!.find((r) => r.ruleId === 'r-http')!.peers as AddressSet)].map((x) => formatIp(4, x))).toEqual(['198.18.0.10', '198.18.0.12']);
    s.receive({ type: 'policy_delta', base_revision: 5, revision: 6, group_members: { web: { add: ['198.18.0.31'], remove: [] } } });
    await agent.reconciler.idle();
    await settle();
    // a rule change does not wait for the member report due in 30 s
    s.receive({ type: 'policy', policy: policy(7, { httpPort: '81' }) });
    await agent.reconciler.idle();
    await clock.advance(1000);
    await settle();
    expect(probe.calls.slice(reads)).toEqual([{ revision: 5 }, { revision: 7 }]);
    await clock.advance(20_000);
    await settle();
    expect(probe.calls.length).toBe(reads + 2);
    await agent.stop();
  });

  it('reports at once (within a second) a member delta that can change a listening port, or that empties a group', async () => {
    // a web server listens on tcp/80, which rule r-http opens to the members of group web
    const { agent, clock, probe, s, reads } = await reportedRevision3([
      { protocol: 'tcp', port: 80, family: 4, status: 'open', listeners: [{ address: '0.0.0.0', process: 'web' }], allowed_by: [{ group_id: 'sg-web', rule_id: 'r-http', peers: 'group web' }], denied_by: [] },
    ]);
    s.receive({ type: 'policy_delta', base_revision: 3, revision: 4, group_members: { web: { add: ['198.18.0.30'], remove: [] } } });
    await agent.reconciler.idle();
    expect(agent.reconciler.state?.kind).toBe('incremental');
    await clock.advance(1000);
    await settle();
    // before: the next report 30 s after the last one (PORTS_AFTER_ELEMENTS_MS)
    expect(probe.calls.slice(reads)).toEqual([{ revision: 4 }]);
    expect(s.messages.filter((m) => m.type === 'ports').at(-1)).toMatchObject({ report: { revision: 4 } });

    // the web server stops; the periodic report (ports_interval_ms, 60 s) shows nothing listening
    probe.entries = [];
    await clock.advance(60_000);
    await settle();
    const before = probe.calls.length;
    expect(s.messages.filter((m) => m.type === 'ports').at(-1)).toMatchObject({ report: { revision: 4, entries: [] } });
    s.receive({ type: 'policy_delta', base_revision: 4, revision: 5, group_members: { web: { add: ['198.18.0.31'], remove: [] } } });
    await agent.reconciler.idle();
    await clock.advance(1000);
    await settle();
    // nothing listens on a port of the group's rules and the group stays non-empty: coalesced
    expect(probe.calls.length).toBe(before);
    s.receive({ type: 'policy_delta', base_revision: 5, revision: 6, group_members: { web: { add: [], remove: ['198.18.0.10', '198.18.0.12', '198.18.0.30', '198.18.0.31'] } } });
    await agent.reconciler.idle();
    await clock.advance(1000);
    await settle();
    // the group's last members leave: rule r-http no longer lets anyone in (a not-listening entry goes)
    expect(probe.calls.slice(before)).toEqual([{ revision: 6 }]);
    await agent.stop();
  });

  it('sends one port report at a time, so a slow read cannot land after a newer revision, and logs the slow one', async () => {
    const logs = captureLogs('info');
    const { dialer, agent, clock, probe } = setup({ logger: logs.logger });
    await agent.start();
    const s = dialer.last;
    // the socket read of the report asked for on connect hangs until released
    let release: () => void = () => undefined;
    const real = probe.report.bind(probe);
    let reads = 0;
    probe.report = async (p, revision, rules) => {
      if (reads++ === 0) await new Promise<void>((r) => (release = r));
      return real(p, revision, rules);
    };
    s.events.open();
    await settle();
    s.receive({ type: 'policy', policy: policy(3) });
    await agent.reconciler.idle();
    await clock.advance(6000);
    await settle();
    release();
    for (let i = 0; i < 5; i++) await settle();
    // the report of revision 3 follows the one on its way (no policy yet), never overtakes it
    expect(s.messages.filter((m) => m.type === 'ports').map((m) => (m as { report: { revision: number | null } }).report.revision)).toEqual([null, 3]);
    // the read that took 6 s is in the log (PORTS_SLOW_MS: 5 s)
    expect(logs.lines.filter((l) => l.event === 'ports_slow')).toMatchObject([{ level: 40, revision: null, source: 'proc', durationMs: 6000 }]);
    await agent.stop();
  });

  it('rejects an invalid policy with an error ack and keeps the previous ruleset', async () => {
    const { nft, dialer, agent } = setup();
    await agent.start();
    const s = dialer.last;
    s.events.open();
    s.receive({ type: 'policy', policy: policy(1) });
    await agent.reconciler.idle();
    const applies = nft.count('apply');
    const bad = JSON.parse(JSON.stringify(policy(2))) as Record<string, unknown> & { security_groups: { rules: Record<string, unknown>[] }[] };
    bad.security_groups[0]!.rules[0]!.multiport = '99999';
    s.receive({ type: 'policy', policy: bad });
    await agent.reconciler.idle();
    expect(nft.count('apply')).toBe(applies);
    expect(tableComment(nft.dump())).toContain('revision=1');
    const rejected = acks(s.messages).find((a) => a.revision === 2);
    expect(rejected).toMatchObject({ status: 'rejected', error: { code: 'POLICY_INVALID' } });
    expect(rejected!.error!.message).toContain('multiport');
    await agent.stop();
  });

  it('acks a failed apply with the nft error, then applied after the retry', async () => {
    const { nft, clock, dialer, agent } = setup();
    await agent.start();
    const s = dialer.last;
    s.events.open();
    nft.failNext('apply', new SecgroupError('NFT_FAILED', 'nft -f failed: Could not process rule: No buffer space available'));
    s.receive({ type: 'policy', policy: policy(4) });
    await agent.reconciler.idle();
    await settle();
    expect(acks(s.messages).at(-1)).toMatchObject({ revision: 4, status: 'failed', error: { code: 'NFT_FAILED' } });
    await clock.advance(1000);
    expect(acks(s.messages).at(-1)).toMatchObject({ revision: 4, status: 'applied' });
    await agent.stop();
  });

  it('acks an older revision as stale without applying it', async () => {
    const store = new MemoryStateStore(policy(9));
    const { nft, dialer, agent } = setup({ store });
    await agent.start();
    const s = dialer.last;
    s.events.open();
    const applies = nft.count('apply');
    s.receive({ type: 'policy', policy: policy(8, { httpPort: '81' }) });
    await settle();
    expect(nft.count('apply')).toBe(applies);
    expect(acks(s.messages).at(-1)).toMatchObject({ revision: 8, status: 'failed', error: { code: 'STALE_REVISION' } });
    await agent.stop();
  });

  it('accepts the controller\'s lower revision after a welcome that says so (restored database), on that connection only', async () => {
    const lines: Record<string, unknown>[] = [];
    const sink = new Writable({
      write(chunk: Buffer, _enc, cb) {
        for (const l of chunk.toString().split('\n')) if (l.trim()) lines.push(JSON.parse(l) as Record<string, unknown>);
        cb();
      },
    });
    const huge = 2 ** 50;
    const store = new MemoryStateStore(policy(huge));
    const { nft, dialer, agent } = setup({ store, logger: createLogger({ level: 'info', destination: sink }) });
    await agent.start();
    const s = dialer.last;
    s.events.open();
    expect(s.messages[0]).toMatchObject({ type: 'hello', applied_revision: huge });
    s.receive({ type: 'welcome', protocol: 1, instance_id: 'ecs-1', desired_revision: 3 });
    expect(lines.filter((l) => l.event === 'controller_behind')).toEqual([
      expect.objectContaining({ level: 40, desired: 3, ours: huge, msg: `controller's revision 3 is behind ours ${huge} (database restored?): accepting the controller's policy` }),
    ]);
    // only the welcome's revision itself: another older one is still stale
    s.receive({ type: 'policy', policy: policy(2, { httpPort: '81' }) });
    await settle();
    expect(acks(s.messages).at(-1)).toMatchObject({ revision: 2, status: 'failed', error: { code: 'STALE_REVISION' } });
    s.receive({ type: 'policy', policy: policy(3, { httpPort: '81' }) });
    await agent.reconciler.idle();
    await settle();
    expect(nft.state?.marker).toContain('revision=3');
    expect(store.policy?.revision).toBe(3);
    expect(acks(s.messages).at(-1)).toMatchObject({ revision: 3, status: 'applied' });
    // newer ones after it as usual, stale pushes still refused
    s.receive({ type: 'policy', policy: policy(4) });
    await agent.reconciler.idle();
    await settle();
    expect(acks(s.messages).at(-1)).toMatchObject({ revision: 4, status: 'applied' });
    s.receive({ type: 'policy', policy: policy(3, { httpPort: '81' }) });
    await settle();
    expect(acks(s.messages).at(-1)).toMatchObject({ revision: 3, status: 'failed', error: { code: 'STALE_REVISION' } });
    expect(nft.state?.marker).toContain('revision=4');
    await agent.stop();
  });

  it('without that welcome, or on a later connection, an older policy stays stale', async () => {
    const store = new MemoryStateStore(policy(9));
    const { nft, dialer, clock, agent } = setup({ store });
    await agent.start();
    const first = dialer.last;
    first.events.open();
    first.receive({ type: 'welcome', protocol: 1, instance_id: 'ecs-1', desired_revision: 3 });
    first.close(1006, 'gone');
    await clock.advance(60_000);
    const second = dialer.last;
    expect(second).not.toBe(first);
    second.events.open();
    // the allowance belonged to the first connection; this one's welcome says the controller is not behind
    second.receive({ type: 'welcome', protocol: 1, instance_id: 'ecs-1', desired_revision: 9 });
    second.receive({ type: 'policy', policy: policy(3, { httpPort: '81' }) });
    await settle();
    expect(acks(second.messages).at(-1)).toMatchObject({ revision: 3, status: 'failed', error: { code: 'STALE_REVISION' } });
    expect(nft.state?.marker).toContain('revision=9');
    await agent.stop();
  });

  it('acks fit the protocol\'s bounds: a duration past a day is sent as a day', () => {
    const ack = ackFor({ status: 'applied', revision: 3, kind: 'full', durationMs: 1e12, digest: '0123456789abcdef', source: 'controller' });
    expect(ack.duration_ms).toBe(86_400_000);
    expect(ackSchema.parse(ack)).toEqual(ack);
  });

  it('repairs drift on its schedule', async () => {
    const { nft, scheduler, agent, store } = setup({ store: new MemoryStateStore(policy(1)) });
    await agent.start();
    nft.flushTable();
    await scheduler.fire();
    expect(dumpBlock(nft.dump(), 'input').rules.length).toBeGreaterThan(0);
    expect(await agent.metrics.registry.getSingleMetricAsString('secgroup_drift_repairs_total')).toContain('kind="structure"} 1');
    expect(store.saves).toBe(0);
    await agent.stop();
  });

  it('follows nft monitor: a hand edit it reports is repaired before any periodic check, and the monitor stops with the agent', async () => {
    const monitor = new FakeNftMonitor();
    const { nft, clock, scheduler, agent } = setup({ store: new MemoryStateStore(policy(1)), monitor });
    await agent.start();
    expect(monitor.running).toBe(1);
    await clock.advance(500);
    nft.flushTable();
    monitor.emit({ structural: true, sample: ['delete rule inet secgroup input handle 4'] });
    await agent.reconciler.idle();
    await new Promise((r) => setImmediate(r));
    expect(dumpBlock(nft.dump(), 'input').rules.length).toBeGreaterThan(0);
    expect(await agent.metrics.registry.getSingleMetricAsString('secgroup_drift_repairs_total')).toContain('kind="structure"} 1');
    // the repair was a full reload: the restarted monitor covers the table once it reported the agent's probe
    await clock.advance(250);
    monitor.emit({ markers: [agent.reconciler.state!.compiled.table.marker!] });
    await agent.reconciler.idle();
    await new Promise((r) => setImmediate(r));
    // the periodic check reads only the generation marker while the monitor covers the table
    const tableReads = nft.count('readTable');
    await scheduler.fire();
    expect(nft.count('readTable')).toBe(tableReads);
    await agent.stop();
    expect(monitor.running).toBe(0);
  });

  it('does not follow nft monitor with drift_monitor: false (the periodic check reads the whole table)', async () => {
    const monitor = new FakeNftMonitor();
    const { nft, scheduler, agent } = setup({ store: new MemoryStateStore(policy(1)), monitor, driftMonitor: false });
    await agent.start();
    expect(monitor.started).toBe(0);
    const tableReads = nft.count('readTable');
    await scheduler.fire();
    expect(nft.count('readTable')).toBe(tableReads + 1);
    await agent.stop();
  });

  it('allows its own control channel: egress to the controller address and port', async () => {
    const { nft, agent } = setup({ store: new MemoryStateStore(policy(1)) });
    await agent.start();
    const out = dumpBlock(nft.dump(), 'output').rules;
    expect(out.filter((l) => l.endsWith(' comment "platform: controller channel"')).length).toBe(1);
    expect(out.some((l) => l.endsWith(' comment "platform: DNS for the controller name"'))).toBe(false);
    await agent.stop();
  });

  it('resolves a controller name and allows DNS', async () => {
    expect(await resolveControllerEndpoint('wss://ctl.test:8443', resolver)).toEqual({ addresses: ['198.18.0.1', 'fd00:5ec::1'], port: 8443, dns: true });
    expect(await resolveControllerEndpoint('wss://[fd00:5ec::1]', resolver)).toEqual({ addresses: ['fd00:5ec::1'], port: 443, dns: false });
    const { nft, agent } = setup({ store: new MemoryStateStore(policy(1)), url: 'wss://ctl.test:8443' });
    await agent.start();
    const out = dumpBlock(nft.dump(), 'output').rules;
    expect(out.filter((l) => l.endsWith(' comment "platform: controller channel"')).length).toBe(2);
    expect(out.some((l) => l.endsWith(' comment "platform: DNS for the controller name"'))).toBe(true);
    await agent.stop();
  });

  it('with several controllers: dials each address of a name in turn, lets out every controller (other ports too), and keeps its policy while it moves', async () => {
    const { nft, dialer, clock, agent } = setup({ store: new MemoryStateStore(policy(1)), urls: ['wss://ctl.test:8443', 'wss://198.18.0.9:9443'] });
    await agent.start();
    const out = dumpBlock(nft.dump(), 'output').rules.filter((l) => l.endsWith(' comment "platform: controller channel"'));
    expect(out).toHaveLength(3);
    expect(out.find((l) => l.includes('198.18.0.1') && l.includes('dport 8443'))).toBeDefined();
    expect(out.find((l) => l.includes('fd00:5ec::1') && l.includes('dport 8443'))).toBeDefined();
    expect(out.find((l) => l.includes('198.18.0.9') && l.includes('dport 9443'))).toBeDefined();
    const applies = nft.count('apply');
    for (let i = 0; i < 4; i++) {
      dialer.last.events.close(1006, '');
      await clock.advance(60_000);
    }
    expect(dialer.sockets.map((x) => x.target)).toEqual([
      { url: 'wss://ctl.test:8443', address: '198.18.0.1' },
      { url: 'wss://ctl.test:8443', address: 'fd00:5ec::1' },
      { url: 'wss://198.18.0.9:9443' },
      { url: 'wss://ctl.test:8443', address: '198.18.0.1' },
      { url: 'wss://ctl.test:8443', address: 'fd00:5ec::1' },
    ]);
    // fail-static: no controller reachable, the policy in force stays
    expect(nft.count('apply')).toBe(applies);
    expect(tableComment(nft.dump())).toContain('revision=1');
    await agent.stop();
  });

  it('reports readiness and metrics over HTTP', async () => {
    const nft = new FakeNft();
    const config = resolveConfig({ instance_id: 'ecs-1', http_listen: '127.0.0.1:0' }, {});
    const agent = createAgent({ config, nft, store: new MemoryStateStore(), clock: new FakeClock(), logger: silentLogger(), scheduler: new ManualScheduler(), resolver, dialer: null });
    await agent.start();
    const { port } = agent.httpAddress()!;
    const get = async (p: string) => {
      const r = await fetch(`http://127.0.0.1:${port}${p}`);
      return { status: r.status, body: await r.text() };
    };
    expect((await get('/healthz')).status).toBe(200);
    expect((await get('/readyz')).status).toBe(503);
    await agent.reconciler.submit(policy(2), 'local');
    expect((await get('/readyz')).status).toBe(200);
    const m = await get('/metrics');
    expect(m.body).toContain('secgroup_applied_revision 2');
    expect(m.body).toContain('secgroup_controller_connected 0');
    expect(m.body).toContain('secgroup_rule_packets_total{group="sg-web",rule="r-http",direction="ingress"} 0');
    expect((await get('/nope')).status).toBe(404);
    await agent.stop();
  });

  it('stops cleanly and leaves the rules in place', async () => {
    const { nft, dialer, agent } = setup({ store: new MemoryStateStore(policy(1)) });
    await agent.start();
    dialer.last.events.open();
    await agent.stop();
    expect(dialer.last.closed).toMatchObject({ code: 1000 });
    expect(tableComment(nft.dump())).toContain('revision=1');
    expect(nft.calls.some((c) => c.tx?.ops.some((op) => op.op === 'delete-table'))).toBe(false);
  });
});

describe('agent with a flapping controller', () => {
  it('reads the ports at most once a second however often the connection comes back, and still reports on a connection that stays', async () => {
    const { clock, dialer, agent, probe } = setup();
    await agent.start();
    for (let i = 0; i < 50; i++) {
      dialer.last.events.open();
      dialer.last.receive({ type: 'welcome', protocol: 1, instance_id: 'ecs-1', desired_revision: null });
      dialer.last.events.close(1011, 'flap');
      await clock.advance(400); // the reconnect delay after a welcome: 375 ms (500 ms initial, equal jitter at 0.5)
    }
    const elapsed = 50 * 400;
    expect(dialer.sockets.length).toBe(51);
    expect(probe.calls.length).toBeLessThanOrEqual(elapsed / 1000 + 1);
    // a connection that stays gets its report within a second
    const before = probe.calls.length;
    await clock.advance(60_000);
    dialer.last.events.open();
    await clock.advance(1000);
    expect(probe.calls.length).toBe(before + 1);
    expect(dialer.last.messages.some((m) => m.type === 'ports')).toBe(true);
    await agent.stop();
  });
});
