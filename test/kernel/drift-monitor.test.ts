/**
 * Drift noticed as it happens (src/agent/drift-monitor.ts): the real agent
 * in a network namespace follows `nft monitor` (its listener, drift_listener,
 * is absent here: the fallback; test/kernel/drift-listener.test.ts has the
 * listener); every way of changing its
 * table by hand that matters is undone by the monitor, long before the
 * periodic check (set to once a year here), with one `drift_repaired` line
 * each. The table lists as before and real packets get the policy's verdicts.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AgentLab, CLIENT_ADDR, kernelSkipReason, type AgentProcess, type Peer } from '../helpers/agent-lab.js';
import { PEERS_SET, TAMPERS, driftAgentConfig, driftLabPolicy } from '../helpers/drift-lab.js';
import { withoutFlowGeneration } from '../helpers/nft-dump.js';

const skip = kernelSkipReason();
/** group `peers`: the client and two more */
const PEERS = [CLIENT_ADDR, '198.18.7.50', '198.18.7.51'];


describe.skipIf(skip !== null)(`drift monitor in a network namespace${skip ? ` (skipped: ${skip})` : ''}`, () => {
  let lab: AgentLab;
  let peer: Peer;
  let agent: AgentProcess;
  let original = '';
  const latencies: Record<string, number> = {};

  /** Our table as nft lists it, without counter values (in rules or named counter objects: they grow with the test's traffic and restart when a repair replaces the table). */
  const listing = async () => withoutFlowGeneration(String((await lab.nft(['list', 'table', 'inet', 'secgroup'], { reject: false })).stdout).replace(/packets \d+ bytes \d+/g, 'packets N bytes N'));
  const verdicts = async (ports: number[]) => Object.fromEntries(await Promise.all(ports.map(async (p) => [p, await peer.canConnect(p)] as const)));

  beforeAll(async () => {
    lab = await AgentLab.create('drift');
    await lab.startListeners([8000, 8001, 8002]);
    peer = await lab.startPeer();
    // the listener absent: the agent falls back to nft monitor
    const config = await lab.writeConfig(driftAgentConfig(lab.dir, `${lab.dir}/no-such-listener`));
    agent = lab.startAgent(config);
    await peer.waitFor((l) => l.event === 'message' && (l.message as { type: string }).type === 'hello', 30_000, 0, 'hello');
    await peer.request({ cmd: 'policy', policy: driftLabPolicy(1, { members: PEERS }) });
    await peer.waitForAck(1, 'applied');
    // the flow mark's sweep and arming follow the ack in the background (reconciler.ts startArming): the table settles then
    await agent.waitFor((l) => l.event === 'flow_mark_armed' || l.event === 'flow_mark_unarmed', 30_000, 0, 'the flow mark armed after the first apply');
    // the monitor's first full check (settleMs after it started) has run: it covers the table
    await agent.waitFor((l) => l.event === 'drift_monitor_started', 5000, 0, 'monitor started');
    await new Promise((r) => setTimeout(r, 1000));
    original = await listing();
    expect(original).toContain(`set ${PEERS_SET}`);
    expect(await verdicts([8000, 8001, 8002])).toEqual({ 8000: true, 8001: true, 8002: false });
  });

  afterAll(async () => {
    console.log(`tamper -> drift_repaired line (ms, wall, machine shared): ${JSON.stringify(latencies)}`);
    await lab?.destroy();
  });

  it('fell back to nft monitor with one warning line, the listener being absent', () => {
    expect(agent.lines.filter((l) => l.event === 'drift_listener_unavailable')).toEqual([
      expect.objectContaining({ level: 40, path: `${lab.dir}/no-such-listener`, reason: expect.stringContaining('secgroup-nftwatch') }),
    ]);
  });

  it.each(TAMPERS)('repairs: %s (kind %s), by the monitor', async (what, kind, args) => {
    const from = agent.lines.length;
    const t0 = performance.now();
    await lab.nft([...args]);
    const line = await agent.waitFor((l) => l.event === 'drift_repaired', 15_000, from, `drift_repaired after: ${what}`);
    latencies[what] = Math.round(performance.now() - t0);
    expect(line).toMatchObject({ via: 'monitor', drift: kind, revision: 1, detail: expect.stringContaining('secgroup') });
    expect(await listing()).toBe(original);
    expect(await verdicts([8000, 8001, 8002])).toEqual({ 8000: true, 8001: true, 8002: false });
    expect(agent.lines.slice(from).filter((l) => l.event === 'drift' && l.via !== 'monitor')).toEqual([]);
  });

  it('repairs one transaction that inserts a rule and removes a member', async () => {
    const from = agent.lines.length;
    await lab.nft(['-f', '-'], { input: `insert rule inet secgroup input tcp dport 8002 accept\ndelete element inet secgroup ${PEERS_SET} { ${CLIENT_ADDR} }\n` });
    await agent.waitFor((l) => l.event === 'drift_repaired', 15_000, from, 'drift_repaired');
    expect(await listing()).toBe(original);
    expect(await verdicts([8001, 8002])).toEqual({ 8001: true, 8002: false });
  });

  it('does not repair its own transactions: a member change and a full reload from the controller', async () => {
    const from = agent.lines.length;
    const p2 = driftLabPolicy(2, { members: PEERS });
    p2.group_members.peers.push('198.18.7.52');
    await peer.request({ cmd: 'policy', policy: p2 });
    await peer.waitForAck(2, 'applied');
    const p3 = driftLabPolicy(3, { members: PEERS });
    p3.security_groups[0]!.rules[0]!.multiport = '8000,8002';
    await peer.request({ cmd: 'policy', policy: p3 });
    await peer.waitForAck(3, 'applied');
    await new Promise((r) => setTimeout(r, 1500));
    expect(agent.lines.slice(from).filter((l) => l.event === 'drift' || l.event === 'drift_repaired')).toEqual([]);
    expect(await verdicts([8000, 8001, 8002])).toEqual({ 8000: true, 8001: true, 8002: true });
  });

  it('repairs a change made right after its own full reload, before the restarted monitor subscribed', async () => {
    // Another table with 60k elements: every `nft monitor` start loads them before it subscribes
    // (seconds, as our own table would at 100k members), which holds open the window this test tampers in.
    const other: string[] = [];
    for (let i = 0; i < 60_000; i++) other.push(`198.19.${i >> 8}.${i & 255}`);
    await lab.nft(['-f', '-'], { input: `add table inet sgt_other\nadd set inet sgt_other s { type ipv4_addr; elements = { ${other.join(', ')} } }\n` });
    try {
      const from = agent.lines.length;
      const p4 = driftLabPolicy(4, { members: PEERS });
      p4.security_groups[0]!.rules[0]!.multiport = '8000,8003';
      await peer.request({ cmd: 'policy', policy: p4 });
      await peer.waitForAck(4, 'applied');
      // (without the table's comment: the in-place reload keeps the old one, the repair's replacement writes the new one)
      const rules = async () => (await listing()).replace(/^\tcomment .*\n/m, '');
      const reloaded = await rules();
      expect(reloaded).toContain('8003');
      // the monitor follows again since the reload went to nft (before the ack), but has not subscribed yet
      const t0 = performance.now();
      await lab.nft(['flush', 'chain', 'inet', 'secgroup', 'input']);
      const line = await agent.waitFor((l) => l.event === 'drift_repaired', 30_000, from, 'drift_repaired after a change right after our reload');
      latencies['chain flushed right after our own full reload'] = Math.round(performance.now() - t0);
      expect(line).toMatchObject({ drift: 'structure', revision: 4 });
      expect(await rules()).toBe(reloaded);
      expect(await verdicts([8000, 8001, 8002])).toEqual({ 8000: true, 8001: true, 8002: false });
    } finally {
      await lab.nft(['delete', 'table', 'inet', 'sgt_other'], { reject: false });
    }
  });
});
