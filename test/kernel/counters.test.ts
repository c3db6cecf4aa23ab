/**
 * Rule counters over reloads, against the kernel: real TCP connections from a
 * client namespace are counted in our rules' chains; a full reload (a rule
 * added) keeps the counts (`nft list` never goes backwards): in place, without
 * reading them, over the table the agent applied; by reading and carrying
 * them when the table was changed behind the agent's back. A rule removed
 * takes its counter object with it. An element-only update (a remote-group
 * member changes) leaves them alone. The reconciler runs in this process with the real nft runner
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
import { counterObjectName } from '../../src/nft/names.js';
import { ExecaNftRunner } from '../../src/nft/exec.js';
import { DEFAULT_PLATFORM } from '../../src/policy/platform.js';
import { parsePolicy } from '../../src/policy/schema.js';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { kernelSkipReason, REPO } from '../helpers/agent-lab.js';
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

// the full applies through nft -f, and as the agent sends them: netlink batches through secgroup-nftload (nft/netlink-batch.ts)
describe.skipIf(skip !== null).each([{ via: 'nft -f' }, { via: 'secgroup-nftload' }])(`rule counters over reloads, in a namespace, full applies through $via${skip ? ` (skipped: ${skip})` : ''}`, ({ via }) => {
  let lab: Lab;
  let fellBack: string | null = null;
  const bin = mkdtempSync(join(tmpdir(), 'sgt-counters-'));
  let nft: ExecaNftRunner;
  let r: Reconciler;
  const servers: Server[] = [];
  const counts = async () => (await nft.readRuleCounters())!;
  const connect = async (port: number, times: number) => {
    for (let i = 0; i < times; i++) expect(await lab.tcpConnect('client', LAYOUT.host.v4, port)).toBe('connected');
  };

  beforeAll(async () => {
    lab = await createLab();
    if (via !== 'nft -f') execFileSync('bash', [join(REPO, 'scripts/build-native.sh'), bin]);
    const loader = via === 'nft -f' ? {} : { loader: ['ip', 'netns', 'exec', lab.ns.host, join(bin, 'secgroup-nftload')], onLoaderFallback: (why: string) => (fellBack = why) };
    nft = new ExecaNftRunner({ table: 'secgroup', command: ['ip', 'netns', 'exec', lab.ns.host, 'nft'], helper: true, ...loader });
    r = new Reconciler({ nft, store: new MemoryStateStore(), clock: systemClock, logger: silentLogger(), metrics: new AgentMetrics(), platform: DEFAULT_PLATFORM, checkBeforeApply: false });
    servers.push(await lab.tcpListen('host', 8000, 4), await lab.tcpListen('host', 8001, 4));
  });
  afterAll(async () => {
    await r?.stop();
    nft?.close();
    for (const s of servers) await s.close();
    await lab?.destroy();
    rmSync(bin, { recursive: true, force: true });
    // the loader applied every full apply itself (a reload over a table changed behind the agent's back is refused by the kernel, and nft -f says so)
    if (via !== 'nft -f') expect(fellBack === null || /refused the reload in place/.test(fellBack), String(fellBack)).toBe(true);
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
    // as `nft list` shows it (the rule counts into its named counter object)
    const listed = String((await lab.exec('host', 'nft', ['list', 'counter', 'inet', 'secgroup', counterObjectName(counterKey(TCP, 'sg-c/r-tcp'))])).stdout);
    expect(Number(/packets (\d+) bytes/.exec(listed)![1])).toBeGreaterThanOrEqual(before.get(counterKey(TCP, 'sg-c/r-tcp'))!.packets);

    // a member of the remote group changes: element updates only, no rule is touched
    expect(await r.submit(counted(3, [LAYOUT.client.v4, '198.18.0.51'], true), 'local')).toMatchObject({ status: 'applied', kind: 'incremental' });
    const updated = await counts();
    for (const [key, c] of reloaded) expect(updated.get(key), key).toEqual(c);

    // and they go on counting
    await connect(8000, 2);
    expect((await counts()).get(counterKey(TCP, 'sg-c/r-tcp'))!.packets).toBeGreaterThanOrEqual(reloaded.get(counterKey(TCP, 'sg-c/r-tcp'))!.packets + 2);
  });

  it('a reload in place reads no counters and deletes the counter of a removed rule; a table changed by hand is replaced with its counts carried', async () => {
    const read = nft.readRuleCounters.bind(nft);
    let agentReads = 0;
    // counts the reads the reconciler makes (the test's own reads go through `reader`)
    nft.readRuleCounters = () => ((agentReads += 1), read());
    const reader = new ExecaNftRunner({ table: 'secgroup', command: ['ip', 'netns', 'exec', lab.ns.host, 'nft'] });
    const counts = async () => (await reader.readRuleCounters())!;
    const tcp = counterKey(TCP, 'sg-c/r-tcp');
    const listCounters = async () => String((await lab.exec('host', 'nft', ['list', 'counters', 'table', 'inet', 'secgroup'])).stdout);
    const udpCounter = counterObjectName(counterKey(ruleChainName('sg-c', 'r-udp'), 'sg-c/r-udp'));
    try {
      await r.submit(counted(10, [LAYOUT.client.v4], true), 'local');
      await connect(8000, 3);
      const before = await counts();
      expect(await listCounters()).toContain(udpCounter);

      // the udp rule removed: a reload in place, no counter read, the udp rule's counter gone
      agentReads = 0;
      expect(await r.submit(counted(11, [LAYOUT.client.v4]), 'local')).toMatchObject({ status: 'applied', kind: 'full' });
      expect(agentReads).toBe(0);
      expect(await listCounters()).not.toContain(udpCounter);
      const inPlace = await counts();
      for (const [key, c] of inPlace) {
        expect(c.packets, key).toBeGreaterThanOrEqual(before.get(key)!.packets);
        expect(c.bytes, key).toBeGreaterThanOrEqual(before.get(key)!.bytes);
      }
      expect(inPlace.get(tcp)!.packets).toBeGreaterThanOrEqual(3);

      // the generation marker deleted by hand: the reload in place fails whole, the table is replaced with the counts read first
      await lab.exec('host', 'nft', ['delete', 'set', 'inet', 'secgroup', 'sg_generation']);
      expect(await r.submit(counted(12, [LAYOUT.client.v4], true), 'local')).toMatchObject({ status: 'applied', kind: 'full' });
      expect(agentReads).toBe(1);
      const replaced = await counts();
      expect(replaced.get(tcp)!.packets).toBeGreaterThanOrEqual(inPlace.get(tcp)!.packets);
      expect(replaced.get(tcp)!.bytes).toBeGreaterThanOrEqual(inPlace.get(tcp)!.bytes);
      await connect(8000, 1);
      expect((await counts()).get(tcp)!.packets).toBeGreaterThanOrEqual(replaced.get(tcp)!.packets + 1);
    } finally {
      nft.readRuleCounters = read;
      reader.close();
    }
  });
});
