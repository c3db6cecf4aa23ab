/**
 * The real agent process in a network namespace, driven by a small WebSocket
 * controller in a second namespace; verdicts are observed with real TCP
 * connects from that second namespace.
 */
import { readFile, readdir, writeFile } from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AgentLab, CLIENT_ADDR, CONTROLLER_PORT, HOST_ADDR, kernelSkipReason, type AgentProcess, type Peer } from '../helpers/agent-lab.js';

const skip = kernelSkipReason();
const DRIFT_PERIOD_MS = 2000;

/**
 * Allows tcp `ports` from the client namespace, and tcp 8001 from the members
 * of group `peers`; egress all (the agent's control channel has its own
 * platform rule). A change of `ports` reloads the table, a change of
 * `members` only changes map elements.
 */
function labPolicy(revision: number, ports: number[], members: string[] = [CLIENT_ADDR], egress = true) {
  return {
    revision,
    instance: { id: 'lab-1', addresses: [HOST_ADDR] },
    security_groups: [
      {
        id: 'sg-lab',
        rules: [
          { id: 'r-tcp', direction: 'ingress', protocol: 'tcp', multiport: ports.join(','), remote_ip_prefix: `${CLIENT_ADDR}/32` },
          { id: 'r-peers', direction: 'ingress', protocol: 'tcp', multiport: '8001', remote_group_id: 'peers' },
          ...(egress ? [{ id: 'r-out', direction: 'egress' }] : []),
        ],
      },
    ],
    group_members: { peers: members },
  };
}

describe.skipIf(skip !== null)(`agent in a network namespace${skip ? ` (skipped: ${skip})` : ''}`, () => {
  let lab: AgentLab;
  let peer: Peer;
  let agent: AgentProcess;
  let configPath: string;

  const tableRevision = async () => {
    // the generation marker names the ruleset (a full reload in place keeps the table's comment)
    const r = await lab.nft(['list', 'set', 'inet', 'secgroup', 'sg_generation'], { reject: false });
    if (r.exitCode !== 0) return null;
    const m = /revision=(\d+)/.exec(String(r.stdout));
    return m ? Number(m[1]) : -1;
  };
  const verdicts = async (ports: number[]) => Object.fromEntries(await Promise.all(ports.map(async (p) => [p, await peer.canConnect(p)] as const)));

  beforeAll(async () => {
    lab = await AgentLab.create('agent');
    await lab.startListeners([8000, 8001, 8002, 8003]);
    peer = await lab.startPeer();
    configPath = await lab.writeConfig({
      instance_id: 'lab-1',
      state_dir: `${lab.dir}/state`,
      log_level: 'debug',
      controller: { url: `ws://${CLIENT_ADDR}:${CONTROLLER_PORT}`, token: 'lab-token', reconnect_initial_ms: 100, reconnect_max_ms: 1000, ping_interval_ms: 1000, pong_timeout_ms: 1000 },
      drift_schedule: `*/${DRIFT_PERIOD_MS / 1000} * * * * *`,
      retry_initial_ms: 200,
      retry_max_ms: 2000,
      http_listen: '127.0.0.1:9469',
      platform: { dhcp: false },
    });
  });

  afterAll(async () => {
    await lab?.destroy();
  });

  it('without a policy the host is open (no table yet) and the agent says hello with no revision', async () => {
    agent = lab.startAgent(configPath);
    const hello = await peer.waitFor((l) => l.event === 'message' && (l.message as { type: string }).type === 'hello', 30_000, 0, 'hello');
    expect(hello.message).toMatchObject({ instance_id: 'lab-1', applied_revision: null, protocol: 1 });
    expect(peer.lines.find((l) => l.event === 'connection')?.auth).toBe('Bearer lab-token');
    expect(await tableRevision()).toBeNull();
    expect((await lab.httpGet(9469, '/readyz')).status).toBe(503);
  });

  it('applies the policy from the controller, acks it, and real packets follow it', async () => {
    await peer.request({ cmd: 'policy', policy: labPolicy(1, [8000]) });
    const ack = await peer.waitForAck(1);
    expect(ack).toMatchObject({ status: 'applied', digest: expect.any(String) });
    expect(ack.duration_ms).toBeGreaterThanOrEqual(0);
    expect(await tableRevision()).toBe(1);
    expect(await verdicts([8000, 8001, 8002, 8003])).toEqual({ 8000: true, 8001: true, 8002: false, 8003: false });
    expect((await lab.httpGet(9469, '/readyz')).status).toBe(200);
    const metrics = (await lab.httpGet(9469, '/metrics')).body;
    expect(metrics).toContain('secgroup_applied_revision 1');
    expect(metrics).toContain('secgroup_controller_connected 1');
    expect(metrics).toMatch(/secgroup_rule_packets_total\{group="sg-lab",rule="r-tcp",direction="ingress"\} [1-9]/);
  });

  it('replaces one revision by the next atomically: an always-allowed port never fails, a never-allowed port never opens', async () => {
    const hammer = peer.request({ cmd: 'hammer', host: HOST_ADDR, ports: [8000, 8003], durationMs: 6000, timeoutMs: 400 }, 60_000);
    const steps: [number[], string[]][] = [
      [[8000, 8002], [CLIENT_ADDR]], // 2: ports change -> full reload
      [[8000, 8002], ['198.18.7.99']], // 3: membership change -> element update
      [[8000], ['198.18.7.99']], // 4: full
      [[8000], [CLIENT_ADDR]], // 5: element update
      [[8000, 8002], [CLIENT_ADDR]], // 6: full
      [[8000], [CLIENT_ADDR]], // 7: full
    ];
    for (const [i, [ports, members]] of steps.entries()) {
      const rev = i + 2;
      await peer.request({ cmd: 'policy', policy: labPolicy(rev, ports, members) });
      await peer.waitForAck(rev, 'applied');
      if (rev === 3) expect(await verdicts([8001, 8002])).toEqual({ 8001: false, 8002: true });
      if (rev === 5) expect(await verdicts([8001, 8002])).toEqual({ 8001: true, 8002: false });
    }
    const h = (await hammer) as { ok: Record<string, number>; tries: Record<string, number> };
    expect(h.tries['8000']).toBeGreaterThan(5);
    expect(h.ok['8000']).toBe(h.tries['8000']);
    expect(h.ok['8003'] ?? 0).toBe(0);
    expect(await tableRevision()).toBe(7);
    expect(await verdicts([8000, 8001, 8002])).toEqual({ 8000: true, 8001: true, 8002: false });
    const kinds = new Set(agent.events('apply').map((l) => l.kind));
    expect(kinds.has('full')).toBe(true);
    expect(kinds.has('incremental')).toBe(true);
  });

  it('repairs `nft delete table inet secgroup` within one drift period', async () => {
    // counted before the change: a drift check may catch it before the next line runs
    const from = agent.lines.length;
    await lab.nft(['delete', 'table', 'inet', 'secgroup']);
    expect(await verdicts([8002])).toEqual({ 8002: true }); // open while our table is gone
    await agent.waitFor((l) => l.event === 'drift' && l.drift === 'missing', DRIFT_PERIOD_MS * 2 + 2000, from, 'drift repair');
    await agent.waitFor((l) => l.event === 'apply' && l.source === 'drift', 5000, from, 'drift re-apply');
    expect(await tableRevision()).toBe(7);
    expect(await verdicts([8000, 8002])).toEqual({ 8000: true, 8002: false });
  });

  it('repairs `nft flush table inet secgroup` within one drift period', async () => {
    const from = agent.lines.length;
    await lab.nft(['flush', 'table', 'inet', 'secgroup']);
    await agent.waitFor((l) => l.event === 'drift', DRIFT_PERIOD_MS * 2 + 2000, from, 'drift repair');
    await agent.waitFor((l) => l.event === 'apply' && l.source === 'drift', 5000, from, 'drift re-apply');
    expect(await verdicts([8000, 8002])).toEqual({ 8000: true, 8002: false });
  });

  it('repairs a rule added by hand', async () => {
    const from = agent.lines.length;
    await lab.nft(['insert', 'rule', 'inet', 'secgroup', 'input', 'tcp', 'dport', '8002', 'accept']);
    expect(await verdicts([8002])).toEqual({ 8002: true });
    await agent.waitFor((l) => l.event === 'drift', DRIFT_PERIOD_MS * 2 + 2000, from, 'drift repair');
    await agent.waitFor((l) => l.event === 'apply' && l.source === 'drift', 5000, from, 'drift re-apply');
    expect(await verdicts([8002])).toEqual({ 8002: false });
  });

  it('does not report drift on an untouched table', async () => {
    const from = agent.lines.length;
    await new Promise((r) => setTimeout(r, DRIFT_PERIOD_MS * 2 + 500));
    expect(agent.lines.slice(from).filter((l) => l.event === 'drift')).toEqual([]);
  });

  it('rejects an invalid policy with an error ack; the previous ruleset stays (packets prove it)', async () => {
    const bad = labPolicy(8, [8002]) as { security_groups: { rules: Record<string, unknown>[] }[] };
    bad.security_groups[0]!.rules[0]!.remote_ip_prefix = '198.18.7.0/33';
    await peer.request({ cmd: 'policy', policy: bad });
    const ack = await peer.waitForAck(8);
    expect(ack).toMatchObject({ status: 'rejected', error: { code: 'POLICY_INVALID' } });
    expect(await tableRevision()).toBe(7);
    expect(await verdicts([8000, 8001, 8002])).toEqual({ 8000: true, 8001: true, 8002: false });
  });

  it('keeps its control channel with no egress rule at all (platform rule): a fresh connection gets through', async () => {
    await peer.request({ cmd: 'policy', policy: labPolicy(9, [8000], [CLIENT_ADDR], false) });
    await peer.waitForAck(9, 'applied');
    const from = peer.lines.length;
    await peer.request({ cmd: 'down' });
    await peer.request({ cmd: 'up' });
    const hello = await peer.waitFor((l) => l.event === 'message' && (l.message as { type: string }).type === 'hello', 15_000, from, 'hello on a new connection');
    expect(hello.message).toMatchObject({ applied_revision: 9 });
    await peer.request({ cmd: 'policy', policy: labPolicy(10, [8000]) });
    await peer.waitForAck(10, 'applied');
    expect(await verdicts([8000, 8001, 8002])).toEqual({ 8000: true, 8001: true, 8002: false });
  });

  it('stops on SIGTERM and leaves the rules in place', async () => {
    await peer.request({ cmd: 'down' });
    const code = await agent.stop('SIGTERM');
    expect(code).toBe(0);
    expect(agent.events('stop').length).toBe(1);
    expect(await tableRevision()).toBe(10);
    expect(await verdicts([8001, 8002])).toEqual({ 8001: true, 8002: false });
  });

  it('after a "reboot" (table gone) with the controller down, re-applies the last known good policy', async () => {
    await lab.nft(['delete', 'table', 'inet', 'secgroup']);
    expect(await verdicts([8002])).toEqual({ 8002: true });
    agent = lab.startAgent(configPath);
    await agent.waitFor((l) => l.event === 'boot' && l.revision === 10, 30_000, 0, 'boot from last known good');
    expect(await tableRevision()).toBe(10);
    expect(await verdicts([8000, 8001, 8002])).toEqual({ 8000: true, 8001: true, 8002: false });
    await agent.waitFor((l) => l.event === 'disconnect', 10_000, 0, 'failed connect attempt');
  });

  it('reconnects when the controller comes back and reports its revision in hello', async () => {
    const from = peer.lines.length;
    await peer.request({ cmd: 'up' });
    const hello = await peer.waitFor((l) => l.event === 'message' && (l.message as { type: string }).type === 'hello', 15_000, from, 'hello after reconnect');
    expect(hello.message).toMatchObject({ applied_revision: 10 });
  });

  it('secgroup status shows the applied revision and rule counters', async () => {
    const r = await lab.cli(['status', '--state-dir', `${lab.dir}/state`, '--config', configPath, '--json']);
    expect(r.exitCode).toBe(0);
    const s = JSON.parse(String(r.stdout)) as { present: boolean; table_revision: number; last_known_good: { revision: number }; rules: { group: string; rule: string; packets: number }[] };
    expect(s).toMatchObject({ present: true, table_revision: 10, last_known_good: { revision: 10 } });
    expect(s.rules.map((x) => x.rule).sort()).toEqual(['r-out', 'r-peers', 'r-tcp']);
    expect(s.rules.find((x) => x.rule === 'r-tcp')!.packets).toBeGreaterThan(0);
    // the agent swept the conntrack marks and armed the flow mark (src/nft/flow-mark.ts)
    expect((s as unknown as { flow_mark: unknown }).flow_mark).toEqual({ armed: true, generation: expect.any(Number) });
    const text = await lab.cli(['status', '--state-dir', `${lab.dir}/state`, '--config', configPath]);
    expect(String(text.stdout)).toMatch(/^flow mark: armed, generation \d+ /m);
  });

  it('keeps a corrupt state file aside, reports it, and takes the next policy from the controller', async () => {
    await agent.stop('SIGTERM');
    await writeFile(`${lab.dir}/state/policy.json`, '{"format":1,"policy":{"revision":');
    agent = lab.startAgent(configPath);
    const corrupt = await agent.waitFor((l) => l.event === 'state_corrupt', 30_000, 0, 'state_corrupt');
    expect(String(corrupt.movedTo)).toMatch(/policy\.json\.corrupt-/);
    await agent.waitFor((l) => l.event === 'apply' && l.revision === 10 && l.source === 'controller', 15_000, 0, 'policy from the controller');
    // the last known good is written right after the ack
    for (let i = 0; i < 50 && !(await readdir(`${lab.dir}/state`)).includes('policy.json'); i++) await new Promise((r) => setTimeout(r, 100));
    expect((await readdir(`${lab.dir}/state`)).sort()).toEqual(['policy.json', String(corrupt.movedTo).split('/').pop()]);
    expect(await readFile(String(corrupt.movedTo), 'utf8')).toBe('{"format":1,"policy":{"revision":');
  });

  it('secgroup uninstall-rules removes our table and nothing else', async () => {
    await agent.stop('SIGTERM');
    await lab.nft(['-f', '-'], { input: 'table inet bystander {\n\tchain c {\n\t\ttype filter hook input priority 10; policy accept;\n\t}\n}\n' });
    const r = await lab.cli(['uninstall-rules', '--config', configPath]);
    expect(r.exitCode).toBe(0);
    expect(String(r.stdout)).toContain('removed table inet secgroup');
    const tables = String((await lab.nft(['list', 'tables'])).stdout);
    expect(tables).toContain('table inet bystander');
    expect(tables).not.toContain('table inet secgroup');
    const again = await lab.cli(['status', '--config', configPath]);
    expect(again.exitCode).toBe(1);
    expect(String(again.stdout)).toContain('NOT PRESENT');
  });
});
