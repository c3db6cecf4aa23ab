/**
 * Rule counters over reloads, against the kernel: real TCP connections from a
 * client namespace are counted in our rules' chains; a full reload (a rule
 * added) carries the counts into the new table (`nft list` never goes
 * backwards); an element-only update (a remote-group member changes) leaves
 * them alone. The reconciler runs in this process with the real nft runner
 * (helper shell), the table in a lab namespace.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AgentMetrics } from '../../src/agent/metrics.js';
import { Reconciler } from '../../src/agent/reconciler.js';
import { MemoryStateStore } from '../../src/agent/state-store.js';
import { systemClock } from '../../src/lib/clock.js';
import { silentLogger } from '../../src/lib/logger.js';
import { ruleChainName } from '../../src/nft/compile.js';
import { counterKey } from '../../src/nft/counters.js';
import { ExecaNftRunner } from '../../src/nft/exec.js';
import { DEFAULT_PLATFORM } from '../../src/policy/platform.js';
import { parsePolicy } from '../../src/policy/schema.js';
import { kernelSkipReason } from '../helpers/agent-lab.js';
import { createLab, LAYOUT, type Lab, type Server } from '../helpers/netns.js';

const skip = kernelSkipReason();
const TCP = ruleChainName('sg-c', 'r-tcp');
const PEERS = ruleChainName('sg-c', 'r-peers');

/** tcp 8000 from the client, tcp 8001 from group `peers`; `udp` adds a rule (a full reload). */
function counted(revision: number, members: string[], udp = false) {
  return parsePolicy({
    revision,
    instance: { id: 'cnt-1', addresses: [LAYOUT.host.v4] },
    security_groups: [
      {
        id: 'sg-c',
        rules: [
          { id: 'r-tcp', direction: 'ingress', protocol: 'tcp', multiport: '8000', remote_ip_prefix: `${LAYOUT.client.v4}/32` },
          { id: 'r-peers', direction: 'ingress', protocol: 'tcp', multiport: '8001', remote_group_id: 'peers' },
          ...(udp ? [{ id: 'r-udp', direction: 'ingress', protocol: 'udp', multiport: '53' }] : []),
          { id: 'r-out', direction: 'egress' },
        ],
      },
    ],
    group_members: { peers: members },
  });
}

describe.skipIf(skip !== null)(`rule counters over reloads, in a namespace${skip ? ` (skipped: ${skip})` : ''}`, () => {
  let lab: Lab;
  let nft: ExecaNftRunner;
  let r: Reconciler;
  const servers: Server[] = [];
  const counts = async () => (await nft.readRuleCounters())!;
  const connect = async (port: number, times: number) => {
    for (let i = 0; i < times; i++) expect(await lab.tcpConnect('client', LAYOUT.host.v4, port)).toBe('connected');
  };

  beforeAll(async () => {
    lab = await createLab();
    nft = new ExecaNftRunner({ table: 'secgroup', command: ['ip', 'netns', 'exec', lab.ns.host, 'nft'], helper: true });
    r = new Reconciler({ nft, store: new MemoryStateStore(), clock: systemClock, logger: silentLogger(), metrics: new AgentMetrics(), platform: DEFAULT_PLATFORM, checkBeforeApply: false });
    servers.push(await lab.tcpListen('host', 8000, 4), await lab.tcpListen('host', 8001, 4));
  });
  afterAll(async () => {
    await r?.stop();
    nft?.close();
    for (const s of servers) await s.close();
    await lab?.destroy();
  });

  it('a full reload carries the counts of every rule into the new table; an element update leaves them alone', async () => {
    expect(await r.submit(counted(1, [LAYOUT.client.v4, '198.18.0.50']), 'local')).toMatchObject({ status: 'applied', kind: 'full' });
    await connect(8000, 5);
    await connect(8001, 3);
    const before = await counts();
    expect(before.get(counterKey(TCP, 'sg-c/r-tcp'))!.packets).toBeGreaterThanOrEqual(5);
    expect(before.get(counterKey(PEERS, 'sg-c/r-peers'))!.packets).toBeGreaterThanOrEqual(3);

    // a rule added: the table is replaced
    expect(await r.submit(counted(2, [LAYOUT.client.v4, '198.18.0.50'], true), 'local')).toMatchObject({ status: 'applied', kind: 'full' });
    const reloaded = await counts();
    for (const [key, c] of before) {
      expect(reloaded.get(key)!.packets, key).toBeGreaterThanOrEqual(c.packets);
      expect(reloaded.get(key)!.bytes, key).toBeGreaterThanOrEqual(c.bytes);
    }
    expect(reloaded.get(counterKey(ruleChainName('sg-c', 'r-udp'), 'sg-c/r-udp'))).toEqual({ packets: 0, bytes: 0 });
    // as `nft list` shows it
    const listed = String((await lab.exec('host', 'nft', ['list', 'chain', 'inet', 'secgroup', TCP])).stdout);
    expect(Number(/counter packets (\d+)/.exec(listed)![1])).toBeGreaterThanOrEqual(before.get(counterKey(TCP, 'sg-c/r-tcp'))!.packets);

    // a member of the remote group changes: element updates only, no rule is touched
    expect(await r.submit(counted(3, [LAYOUT.client.v4, '198.18.0.51'], true), 'local')).toMatchObject({ status: 'applied', kind: 'incremental' });
    const updated = await counts();
    for (const [key, c] of reloaded) expect(updated.get(key), key).toEqual(c);

    // and they go on counting
    await connect(8000, 2);
    expect((await counts()).get(counterKey(TCP, 'sg-c/r-tcp'))!.packets).toBeGreaterThanOrEqual(reloaded.get(counterKey(TCP, 'sg-c/r-tcp'))!.packets + 2);
  });
});
