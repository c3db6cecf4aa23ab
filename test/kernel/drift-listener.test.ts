/**
 * Drift noticed by our own listener (native/secgroup-nftwatch.c via
 * nft/nftwatch.ts): the real agent in a network namespace, with a remote
 * group of 10k members, repairs every way of changing its table by hand
 * that the listener reports (the periodic check is set to once a year), also
 * a change made right after its own full reload; the listener said `ready`
 * itself and runs through all of it, one session, where `nft monitor` dies
 * on our full reloads.
 */
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ruleChainName } from '../../src/nft/compile.js';
import { counterKey } from '../../src/nft/counters.js';
import { counterObjectName } from '../../src/nft/names.js';
import { AgentLab, CLIENT_ADDR, kernelSkipReason, type AgentProcess, type Peer } from '../helpers/agent-lab.js';
import { PEERS_SET, TAMPERS, driftAgentConfig, driftLabPolicy } from '../helpers/drift-lab.js';
import { withoutFlowGeneration } from '../helpers/nft-dump.js';

const skip = kernelSkipReason();
const MEMBERS = 10_000;
/** 10k members from 198.19.0.0/16 besides the client */
const members = [CLIENT_ADDR, ...Array.from({ length: MEMBERS - 1 }, (_, i) => `198.19.${i >> 8}.${i & 255}`)];
/** the counter object of rule r-tcp (tcp 8000 from the client), which no tamper touches */
const TCP_COUNTER = counterObjectName(counterKey(ruleChainName('sg-lab', 'r-tcp'), 'sg-lab/r-tcp'));


describe.skipIf(skip !== null)(`drift repaired through secgroup-nftwatch at ${MEMBERS} members${skip ? ` (skipped: ${skip})` : ''}`, () => {
  let lab: AgentLab;
  let peer: Peer;
  let agent: AgentProcess;
  let original = '';
  let revision = 1;
  const latencies: Record<string, number> = {};

  const listing = async () => withoutFlowGeneration(String((await lab.nft(['list', 'table', 'inet', 'secgroup'], { reject: false })).stdout).replace(/packets \d+ bytes \d+/g, 'packets N bytes N'));
  /** without the table's comment: an in-place reload keeps the old one, a repair's replacement writes the new one */
  const rules = async () => (await listing()).replace(/^\tcomment .*\n/m, '');
  const tcpPackets = async () => Number(/packets (\d+)/.exec(String((await lab.nft(['list', 'counter', 'inet', 'secgroup', TCP_COUNTER])).stdout))?.[1]);
  const verdicts = async (ports: number[]) => Object.fromEntries(await Promise.all(ports.map(async (p) => [p, await peer.canConnect(p)] as const)));
  const sessions = () => ({ started: agent.lines.filter((l) => l.event === 'drift_monitor_started').length, exited: agent.lines.filter((l) => l.event === 'drift_monitor_exited').length });

  beforeAll(async () => {
    lab = await AgentLab.create('dlis');
    const listener = await lab.buildListener();
    await lab.startListeners([8000, 8001, 8002]);
    peer = await lab.startPeer();
    const config = await lab.writeConfig(driftAgentConfig(lab.dir, listener));
    agent = lab.startAgent(config);
    await peer.waitFor((l) => l.event === 'message' && (l.message as { type: string }).type === 'hello', 30_000, 0, 'hello');
    await peer.request({ cmd: 'policy', policy: driftLabPolicy(revision, { members, prefixRules: true }) });
    await peer.waitForAck(revision, 'applied');
    // the flow mark's sweep and arming follow the ack in the background (reconciler.ts startArming): the table settles then
    await agent.waitFor((l) => l.event === 'flow_mark_armed' || l.event === 'flow_mark_unarmed', 30_000, 0, 'the flow mark armed after the first apply');
    // the listener said ready itself (no probe) and its one full check ran
    await agent.waitFor((l) => l.event === 'drift_monitor_ready' && l.announced === true, 30_000, 0, 'listener ready');
    original = await listing();
    expect(original).toContain(`set ${PEERS_SET}`);
    expect(await verdicts([8000, 8001, 8002])).toEqual({ 8000: true, 8001: true, 8002: false });
  }, 120_000);

  afterAll(async () => {
    console.log(`tamper -> drift_repaired line at ${MEMBERS} members (ms, wall, machine shared): ${JSON.stringify(latencies)}`);
    await lab?.destroy();
  });

  it.each(TAMPERS)('repairs: %s (kind %s), reported by the listener, restoring only what changed', async (what, kind, args) => {
    const from = agent.lines.length;
    const counted = await tcpPackets();
    const t0 = performance.now();
    await lab.nft([...args]);
    const line = await agent.waitFor((l) => l.event === 'drift_repaired', 30_000, from, `drift_repaired after: ${what}`);
    latencies[what] = Math.round(performance.now() - t0);
    // only rules and elements of ours changed: only those chains and sets restored (no compile, no counter read);
    // a deleted table is recreated from the applied state (no compile; its counters went with it)
    expect(line).toMatchObject({ via: 'monitor', drift: kind, revision, detail: expect.stringContaining('inet secgroup'), repair: what === 'table deleted' ? 'recreate' : 'restore' });
    expect(await listing()).toBe(original);
    // the rule no tamper touched kept counting (a counter that restarted would be below what it counted before)
    if (what === 'table deleted') expect(await tcpPackets()).toBe(0);
    else expect(await tcpPackets()).toBeGreaterThanOrEqual(counted);
    expect(counted).toBeGreaterThan(0);
    // the member removed: the listener reported its key, so exactly that one is added back; the set flushed: all of them
    const restored = agent.lines.slice(from).find((l) => l.event === 'drift_restore');
    if (what === 'element removed') expect(restored).toMatchObject({ added: 1 });
    if (what === 'set flushed') expect(restored).toMatchObject({ added: MEMBERS });
    expect(await verdicts([8000, 8001, 8002])).toEqual({ 8000: true, 8001: true, 8002: false });
    expect(agent.lines.slice(from).filter((l) => l.event === 'drift' && l.via !== 'monitor')).toEqual([]);
  });

  it.each([
    ['an interval map with concatenated keys', 'in4_l0_ports_ree', '198.18.0.0/15 . tcp . 2003'],
    ['a verdict map', 'in4_l0_ports_eee', `${CLIENT_ADDR} . tcp . 8000`],
  ])('repairs an element removed from %s by flushing and refilling only that map', async (_what, map, element) => {
    const from = agent.lines.length;
    const counted = await tcpPackets();
    await lab.nft(['delete', 'element', 'inet', 'secgroup', map, `{ ${element} }`]);
    const line = await agent.waitFor((l) => l.event === 'drift_repaired', 30_000, from, `drift_repaired after an element removed from ${map}`);
    expect(line).toMatchObject({ via: 'monitor', drift: 'modified', repair: 'restore' });
    expect(await listing()).toBe(original);
    expect(await tcpPackets()).toBeGreaterThanOrEqual(counted);
    expect(await verdicts([8000, 8001, 8002])).toEqual({ 8000: true, 8001: true, 8002: false });
  });

  it('repairs a change made right after its own full reload, reported by the same listener', async () => {
    const from = agent.lines.length;
    revision = 2;
    await peer.request({ cmd: 'policy', policy: driftLabPolicy(revision, { members, ports: '8000,8003', prefixRules: true }) });
    await peer.waitForAck(revision, 'applied');
    const reloaded = await rules();
    expect(reloaded).toContain('8003');
    const t0 = performance.now();
    await lab.nft(['flush', 'chain', 'inet', 'secgroup', 'input']);
    const line = await agent.waitFor((l) => l.event === 'drift_repaired', 30_000, from, 'drift_repaired after a change right after our reload');
    latencies['chain flushed right after our own full reload'] = Math.round(performance.now() - t0);
    expect(line).toMatchObject({ via: 'monitor', drift: 'structure', revision });
    expect(await rules()).toBe(reloaded);
    expect(await verdicts([8000, 8001, 8002])).toEqual({ 8000: true, 8001: true, 8002: false });
  });

  it('follows through its own full reloads at 10k members with one listener session, where nft monitor dies', async () => {
    // nft 1.0.6's monitor beside it, for comparison (it loads the 10k members before it subscribes)
    const monitor = execa('ip', ['netns', 'exec', lab.host, 'nft', 'monitor'], { reject: false, buffer: false, stdout: 'ignore', stderr: 'ignore' });
    try {
      await new Promise((r) => setTimeout(r, 3000));
      const from = agent.lines.length;
      revision = 3;
      await peer.request({ cmd: 'policy', policy: driftLabPolicy(revision, { members, ports: '8000,8004', prefixRules: true }) });
      await peer.waitForAck(revision, 'applied');
      const exit = await Promise.race([monitor, new Promise<null>((r) => setTimeout(() => r(null), 5000))]);
      expect(exit?.signal ?? 'still running').toBe('SIGSEGV');
      expect(agent.lines.slice(from).filter((l) => l.event === 'apply').map((l) => l.kind)).toEqual(['full']);
      // and a change after it is still reported by the same session
      await lab.nft(['insert', 'rule', 'inet', 'secgroup', 'input', 'tcp', 'dport', '8002', 'accept']);
      await agent.waitFor((l) => l.event === 'drift_repaired', 30_000, from, 'drift_repaired');
      expect(sessions()).toEqual({ started: 1, exited: 0 });
      expect(agent.lines.filter((l) => l.event === 'drift_listener_unavailable')).toEqual([]);
    } finally {
      monitor.kill('SIGKILL');
      await monitor.catch(() => undefined);
    }
  });
});
