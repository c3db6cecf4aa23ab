/**
 * Every row of SEMANTICS.md sections 1-4, proven with real packets through the
 * real kernel: each policy is compiled and rendered by secgroup, applied in a
 * test namespace, and each packet's verdict must equal both the expected
 * sentence and the reference evaluator.
 */
import { expect, it } from 'vitest';
import { compilePolicy } from '../../src/nft/compile.js';
import { renderScript } from '../../src/nft/render.js';
import { evaluate } from '../../src/policy/evaluate.js';
import { formatPacket, parsePacketText } from '../../src/policy/packet-text.js';
import { DEFAULT_PLATFORM, type PlatformOptions } from '../../src/policy/platform.js';
import { parsePolicy, type PolicyInput, type RuleInput } from '../../src/policy/schema.js';
import { describeKernel, useLab } from '../helpers/vitest-lab.js';

const H4 = '198.18.0.10';
const H6 = 'fd00:5ec::10';
const C4 = '198.18.0.1';
const C6 = 'fd00:5ec::1';

type Group = { id: string; rules: RuleInput[] };

function doc(groups: Group[], extra: Partial<PolicyInput> = {}): PolicyInput {
  return {
    revision: 1,
    instance: { id: 'kernel-host', addresses: [H4, H6] },
    security_groups: groups.map((g) => ({ id: g.id, name: g.id, rules: g.rules })),
    address_groups: [],
    group_members: {},
    ...extra,
  };
}

const EGRESS_ALL: RuleInput[] = [
  { id: 'out4', direction: 'egress', ethertype: 'IPv4' },
  { id: 'out6', direction: 'egress', ethertype: 'IPv6' },
];

describeKernel('SEMANTICS sections 1-4 in the kernel', () => {
  const lab = useLab({ extraHostAddrs: [] });

  async function apply(input: PolicyInput, platform: PlatformOptions = DEFAULT_PLATFORM) {
    const policy = parsePolicy(input);
    const script = renderScript(compilePolicy(policy, { platform }).table);
    await lab().applyScript(script);
    return { policy, script };
  }

  /** cases: "ingress tcp 198.18.5.5:40000 -> 198.18.0.10:22" => 'accept' | 'drop' */
  async function expectVerdicts(input: PolicyInput, cases: Record<string, 'accept' | 'drop'>, platform: PlatformOptions = DEFAULT_PLATFORM) {
    const { policy, script } = await apply(input, platform);
    const entries = Object.entries(cases);
    const packets = entries.map(([text]) => parsePacketText(text));
    const got = await lab().observe(packets);
    entries.forEach(([, want], i) => {
      const p = packets[i]!;
      const oracle = evaluate(policy, p, platform).verdict;
      const kernel = got[i] ? 'accept' : 'drop';
      const where = `${formatPacket(p)}\n--- ruleset ---\n${script}`;
      expect(oracle, `evaluator disagrees with the expectation for ${formatPacket(p)}`).toBe(want);
      expect(kernel, `kernel verdict for ${where}`).toBe(want);
    });
  }

  it('priority: a lower number wins inside a group', async () => {
    await expectVerdicts(
      doc([
        {
          id: 'sg',
          rules: [
            { id: 'allow-22-p10', direction: 'ingress', priority: 10, protocol: 'tcp', multiport: '22' },
            { id: 'deny-22-office-p5', direction: 'ingress', priority: 5, action: 'deny', protocol: 'tcp', multiport: '22', remote_ip_prefix: '198.18.5.0/24' },
            { id: 'allow-80-p1', direction: 'ingress', priority: 1, protocol: 'tcp', multiport: '80', remote_ip_prefix: '198.18.5.0/24' },
            { id: 'deny-80-p2', direction: 'ingress', priority: 2, action: 'deny', protocol: 'tcp', multiport: '80' },
          ],
        },
      ]),
      {
        'ingress tcp 198.18.5.5:40000 -> 198.18.0.10:22': 'drop',
        'ingress tcp 198.18.6.5:40000 -> 198.18.0.10:22': 'accept',
        'ingress tcp 198.18.5.5:40000 -> 198.18.0.10:80': 'accept',
        'ingress tcp 198.18.6.5:40000 -> 198.18.0.10:80': 'drop',
      },
    );
  });

  it('deny before allow at equal priority, whatever the document order', async () => {
    await expectVerdicts(
      doc([
        {
          id: 'sg',
          rules: [
            { id: 'allow-all-443', direction: 'ingress', priority: 3, protocol: 'tcp', multiport: '443' },
            { id: 'deny-some-443', direction: 'ingress', priority: 3, action: 'deny', protocol: 'tcp', multiport: '443', remote_ip_prefix: '198.18.9.0/24' },
          ],
        },
      ]),
      {
        'ingress tcp 198.18.9.9:40000 -> 198.18.0.10:443': 'drop',
        'ingress tcp 198.18.8.9:40000 -> 198.18.0.10:443': 'accept',
      },
    );
  });

  it('groups are matched in association order: the first group decides even against a higher-priority rule later', async () => {
    await expectVerdicts(
      doc([
        { id: 'sg-first', rules: [{ id: 'allow-3306-p100', direction: 'ingress', priority: 100, protocol: 'tcp', multiport: '3306' }] },
        { id: 'sg-second', rules: [{ id: 'deny-3306-p1', direction: 'ingress', priority: 1, action: 'deny', protocol: 'tcp', multiport: '3306,5432' }] },
        { id: 'sg-third', rules: [{ id: 'allow-5432', direction: 'ingress', protocol: 'tcp', multiport: '5432' }] },
      ]),
      {
        'ingress tcp 198.18.1.1:40000 -> 198.18.0.10:3306': 'accept',
        'ingress tcp 198.18.1.1:40000 -> 198.18.0.10:5432': 'drop',
      },
    );
  });

  it('no matching rule drops, inbound and outbound', async () => {
    await expectVerdicts(doc([{ id: 'sg', rules: [{ id: 'only-22', direction: 'ingress', protocol: 'tcp', multiport: '22' }] }]), {
      'ingress tcp 198.18.1.1:40000 -> 198.18.0.10:23': 'drop',
      'ingress udp 198.18.1.1:40000 -> 198.18.0.10:22': 'drop',
      'ingress icmp 198.18.1.1 -> 198.18.0.10 type 8': 'drop',
      'egress tcp 198.18.0.10:40000 -> 198.18.1.1:443': 'drop',
      'egress udp 198.18.0.10:40000 -> 198.18.1.1:53': 'drop',
      'egress icmpv6 fd00:5ec::10 -> fd00:5ec::99 type 128': 'drop',
      'ingress tcp [fd00:5ec::1:1]:40000 -> [fd00:5ec::10]:22': 'drop',
    });
  });

  it('remote group: members (the instance itself included) match, others do not; an empty group matches nothing', async () => {
    await expectVerdicts(
      doc(
        [
          {
            id: 'sg-db',
            rules: [
              { id: 'from-app', direction: 'ingress', protocol: 'tcp', multiport: '5432', remote_group_id: 'sg-app' },
              { id: 'from-app6', direction: 'ingress', ethertype: 'IPv6', protocol: 'tcp', multiport: '5432', remote_group_id: 'sg-app' },
              { id: 'from-empty', direction: 'ingress', protocol: 'tcp', multiport: '6379', remote_group_id: 'sg-empty' },
              { id: 'to-self', direction: 'egress', protocol: 'udp', multiport: '9999', remote_group_id: 'sg-app' },
            ],
          },
        ],
        { group_members: { 'sg-app': ['198.18.3.1', '198.18.3.7', 'fd00:5ec::3:1', H4], 'sg-empty': [] } },
      ),
      {
        'ingress tcp 198.18.3.1:40000 -> 198.18.0.10:5432': 'accept',
        'ingress tcp 198.18.3.7:40000 -> 198.18.0.10:5432': 'accept',
        'ingress tcp 198.18.3.2:40000 -> 198.18.0.10:5432': 'drop',
        'ingress tcp [fd00:5ec::3:1]:40000 -> [fd00:5ec::10]:5432': 'accept',
        'ingress tcp [fd00:5ec::3:2]:40000 -> [fd00:5ec::10]:5432': 'drop',
        'ingress tcp 198.18.3.1:40000 -> 198.18.0.10:6379': 'drop',
        'egress udp 198.18.0.10:40000 -> 198.18.3.7:9999': 'accept',
        'egress udp 198.18.0.10:40000 -> 198.18.3.8:9999': 'drop',
      },
    );
  });

  it('address group: ranges a-b and CIDRs; an empty address group matches nothing', async () => {
    await expectVerdicts(
      doc(
        [
          {
            id: 'sg',
            rules: [
              { id: 'office', direction: 'ingress', protocol: 'tcp', multiport: '22', remote_address_group_id: 'ag-office' },
              { id: 'office6', direction: 'ingress', ethertype: 'IPv6', protocol: 'tcp', multiport: '22', remote_address_group_id: 'ag-office6' },
              { id: 'nobody', direction: 'ingress', protocol: 'tcp', multiport: '23', remote_address_group_id: 'ag-empty' },
            ],
          },
        ],
        {
          address_groups: [
            { id: 'ag-office', ip_version: 4, ip_set: ['198.18.20.0/24', '198.19.0.5-198.19.0.9'] },
            { id: 'ag-office6', ip_version: 6, ip_set: ['fd00:5ec::20:0/112', 'fd00:5ec::30:5-fd00:5ec::30:9'] },
            { id: 'ag-empty', ip_version: 4, ip_set: [] },
          ],
        },
      ),
      {
        'ingress tcp 198.18.20.200:40000 -> 198.18.0.10:22': 'accept',
        'ingress tcp 198.19.0.5:40000 -> 198.18.0.10:22': 'accept',
        'ingress tcp 198.19.0.9:40000 -> 198.18.0.10:22': 'accept',
        'ingress tcp 198.19.0.4:40000 -> 198.18.0.10:22': 'drop',
        'ingress tcp 198.19.0.10:40000 -> 198.18.0.10:22': 'drop',
        'ingress tcp [fd00:5ec::30:7]:40000 -> [fd00:5ec::10]:22': 'accept',
        'ingress tcp [fd00:5ec::30:a]:40000 -> [fd00:5ec::10]:22': 'drop',
        'ingress tcp 198.18.20.1:40000 -> 198.18.0.10:23': 'drop',
      },
    );
  });

  it('ports: lists and ranges, destination port in both directions, tcp/udp/sctp', async () => {
    await expectVerdicts(
      doc([
        {
          id: 'sg',
          rules: [
            { id: 'web', direction: 'ingress', protocol: 'tcp', multiport: '22,3389,8000-8080' },
            { id: 'dns', direction: 'ingress', protocol: 'udp', multiport: '53' },
            { id: 'sctp', direction: 'ingress', protocol: 'sctp', multiport: '2905-2906' },
            { id: 'out-https', direction: 'egress', protocol: 'tcp', multiport: '443' },
          ],
        },
      ]),
      {
        'ingress tcp 198.18.1.1:40000 -> 198.18.0.10:3389': 'accept',
        'ingress tcp 198.18.1.1:40000 -> 198.18.0.10:8000': 'accept',
        'ingress tcp 198.18.1.1:40000 -> 198.18.0.10:8080': 'accept',
        'ingress tcp 198.18.1.1:40000 -> 198.18.0.10:8081': 'drop',
        'ingress tcp 198.18.1.1:22 -> 198.18.0.10:40000': 'drop',
        'ingress udp 198.18.1.1:40000 -> 198.18.0.10:53': 'accept',
        'ingress tcp 198.18.1.1:40000 -> 198.18.0.10:53': 'drop',
        'ingress sctp 198.18.1.1:40000 -> 198.18.0.10:2906': 'accept',
        'ingress sctp 198.18.1.1:40000 -> 198.18.0.10:2907': 'drop',
        'egress tcp 198.18.0.10:40000 -> 198.18.1.1:443': 'accept',
        'egress tcp 198.18.0.10:443 -> 198.18.1.1:40000': 'drop',
      },
    );
  });

  it('protocol numbers and "all protocols"', async () => {
    await expectVerdicts(
      doc([
        {
          id: 'sg',
          rules: [
            { id: 'gre', direction: 'ingress', protocol: '47' },
            { id: 'tcp-by-number', direction: 'ingress', protocol: '6', remote_ip_prefix: '198.18.40.0/24' },
            { id: 'all-from-peer', direction: 'ingress', remote_ip_prefix: '198.18.50.1' },
          ],
        },
      ]),
      {
        'ingress proto 47 198.18.1.1 -> 198.18.0.10': 'accept',
        'ingress proto 50 198.18.1.1 -> 198.18.0.10': 'drop',
        'ingress tcp 198.18.40.9:40000 -> 198.18.0.10:1234': 'accept',
        'ingress udp 198.18.40.9:40000 -> 198.18.0.10:1234': 'drop',
        'ingress udp 198.18.50.1:40000 -> 198.18.0.10:1234': 'accept',
        'ingress proto 50 198.18.50.1 -> 198.18.0.10': 'accept',
        'ingress icmp 198.18.50.1 -> 198.18.0.10 type 8': 'accept',
      },
    );
  });

  it('ICMP and ICMPv6 type and code', async () => {
    await expectVerdicts(
      doc([
        {
          id: 'sg',
          rules: [
            { id: 'echo', direction: 'ingress', protocol: 'icmp', icmp_type: 8, icmp_code: 0 },
            { id: 'ts', direction: 'ingress', protocol: 'icmp', icmp_type: 13 },
            { id: 'echo6', direction: 'ingress', ethertype: 'IPv6', protocol: 'icmpv6', icmp_type: 128 },
          ],
        },
      ]),
      {
        'ingress icmp 198.18.1.1 -> 198.18.0.10 type 8 code 0': 'accept',
        'ingress icmp 198.18.1.1 -> 198.18.0.10 type 8 code 1': 'drop',
        'ingress icmp 198.18.1.1 -> 198.18.0.10 type 13 code 0': 'accept',
        'ingress icmp 198.18.1.1 -> 198.18.0.10 type 17 code 0': 'drop',
        'ingress icmpv6 fd00:5ec::1:1 -> fd00:5ec::10 type 128': 'accept',
        'ingress icmpv6 fd00:5ec::1:1 -> fd00:5ec::10 type 139': 'drop',
      },
    );
  });

  it('ICMPv6 neighbour discovery and MLD pass under a policy with no rules (platform), and not when switched off', async () => {
    const nd = {
      'ingress icmpv6 fd00:5ec::1 -> fd00:5ec::10 type 135': 'accept',
      'ingress icmpv6 fd00:5ec::1 -> fd00:5ec::10 type 136': 'accept',
      'ingress icmpv6 fd00:5ec::1 -> fd00:5ec::10 type 134': 'accept',
      'ingress icmpv6 fd00:5ec::1 -> fd00:5ec::10 type 130': 'accept',
      'egress icmpv6 fd00:5ec::10 -> fd00:5ec::1 type 135': 'accept',
      'egress icmpv6 fd00:5ec::10 -> fd00:5ec::1 type 133': 'accept',
    } as const;
    await expectVerdicts(doc([{ id: 'sg', rules: [] }]), nd);
    const off = Object.fromEntries(Object.keys(nd).map((k) => [k, 'drop'])) as Record<string, 'drop'>;
    await expectVerdicts(doc([{ id: 'sg', rules: [] }]), off, { ...DEFAULT_PLATFORM, icmpv6Nd: false });
  });

  it('DHCP client, controller channel and failsafe platform rules', async () => {
    const platform: PlatformOptions = {
      ...DEFAULT_PLATFORM,
      controller: { addresses: ['198.18.0.1'], port: 8443, dns: false },
      failsafeIngress: [{ protocol: 6, from: 22, to: 22 }],
    };
    await expectVerdicts(
      doc([{ id: 'sg', rules: [] }]),
      {
        'ingress udp 198.18.0.1:67 -> 198.18.0.10:68': 'accept',
        'egress udp 198.18.0.10:68 -> 198.18.0.1:67': 'accept',
        'egress tcp 198.18.0.10:40000 -> 198.18.0.1:8443': 'accept',
        'egress tcp 198.18.0.10:40000 -> 198.18.0.2:8443': 'drop',
        'ingress tcp 198.18.7.7:40000 -> 198.18.0.10:22': 'accept',
        'ingress tcp 198.18.7.7:40000 -> 198.18.0.10:23': 'drop',
        'egress udp 198.18.0.10:40000 -> 198.18.0.1:53': 'drop',
      },
      platform,
    );
  });

  it('stateful: replies to an outbound connection pass with no ingress rule; the peer cannot open one', async () => {
    await apply(doc([{ id: 'sg', rules: EGRESS_ALL }]));
    const srv = await lab().tcpListen('client', 7001);
    try {
      expect(await lab().tcpConnect('host', C4, 7001, { timeoutMs: 2000 })).toBe('connected');
      expect(await lab().tcpConnect('host', C6, 7001, { timeoutMs: 2000 })).toBe('connected');
      expect(await lab().udpRequest('host', C4, 7001, { timeoutMs: 1000 }).then((r) => r.status)).not.toBe('blocked');
    } finally {
      await srv.close();
    }
    const hostSrv = await lab().tcpListen('host', 7002);
    try {
      expect(await lab().tcpConnect('client', H4, 7002, { timeoutMs: 1000 })).toBe('timeout');
    } finally {
      await hostSrv.close();
    }
  });

  it('stateful: real TCP, UDP and ICMP echo through allow rules', async () => {
    await apply(
      doc([
        {
          id: 'sg',
          rules: [
            { id: 'tcp-7003', direction: 'ingress', protocol: 'tcp', multiport: '7003' },
            { id: 'tcp6-7003', direction: 'ingress', ethertype: 'IPv6', protocol: 'tcp', multiport: '7003' },
            { id: 'udp-7004', direction: 'ingress', protocol: 'udp', multiport: '7004' },
            { id: 'ping', direction: 'ingress', protocol: 'icmp', icmp_type: 8 },
            { id: 'ping6', direction: 'ingress', ethertype: 'IPv6', protocol: 'icmpv6', icmp_type: 128 },
          ],
        },
      ]),
    );
    const tcp = await lab().tcpListen('host', 7003);
    const udp = await lab().udpEcho('host', 7004);
    try {
      expect(await lab().tcpConnect('client', H4, 7003, { timeoutMs: 2000 })).toBe('connected');
      expect(await lab().tcpConnect('client', H6, 7003, { timeoutMs: 2000 })).toBe('connected');
      expect((await lab().udpRequest('client', H4, 7004, { text: 'hi', timeoutMs: 2000 })).status).toBe('reply');
      expect(await lab().ping('client', H4, { timeoutMs: 2000 })).toBe('reply');
      expect(await lab().ping('client', H6, { timeoutMs: 2000 })).toBe('reply');
      expect(await lab().tcpConnect('client', H4, 7004, { timeoutMs: 800 })).toBe('timeout');
    } finally {
      await tcp.close();
      await udp.close();
    }
  });

  it('stateful: an established inbound connection is cut at its next packet when its rule is removed', async () => {
    const allow = doc([{ id: 'sg', rules: [{ id: 'tcp-7005', direction: 'ingress', protocol: 'tcp', multiport: '7005' }, ...EGRESS_ALL] }]);
    await apply(allow);
    const srv = await lab().tcpListen('host', 7005);
    try {
      const conn = await lab().tcpOpen('client', H4, 7005, { timeoutMs: 2000 });
      try {
        expect(conn.status).toBe('connected');
        expect((await conn.sendLine('before', { timeoutMs: 2000 })).status).toBe('echoed');
        await apply({ ...doc([{ id: 'sg', rules: EGRESS_ALL }]), revision: 2 });
        expect((await conn.sendLine('after', { timeoutMs: 1500 })).status).not.toBe('echoed');
      } finally {
        await conn.close();
      }
    } finally {
      await srv.close();
    }
  });

  it('stateful: a connection the instance opened keeps working after its egress rule is removed', async () => {
    await apply(doc([{ id: 'sg', rules: [{ id: 'out-7006', direction: 'egress', protocol: 'tcp', multiport: '7006' }] }]));
    const srv = await lab().tcpListen('client', 7006);
    try {
      const conn = await lab().tcpOpen('host', C4, 7006, { timeoutMs: 2000 });
      try {
        expect(conn.status).toBe('connected');
        expect((await conn.sendLine('before', { timeoutMs: 2000 })).status).toBe('echoed');
        await apply({ ...doc([{ id: 'sg', rules: [] }]), revision: 2 });
        expect((await conn.sendLine('after', { timeoutMs: 2000 })).status).toBe('echoed');
        expect(await lab().tcpConnect('host', C4, 7006, { timeoutMs: 800 })).not.toBe('connected');
      } finally {
        await conn.close();
      }
    } finally {
      await srv.close();
    }
  });

  it('loopback traffic is allowed by the platform rule, and dropped when it is switched off', async () => {
    await apply(doc([{ id: 'sg', rules: [] }]));
    const srv = await lab().tcpListen('host', 7007, 4, '127.0.0.1');
    try {
      expect(await lab().tcpConnect('host', '127.0.0.1', 7007, { timeoutMs: 2000 })).toBe('connected');
      await apply(doc([{ id: 'sg', rules: [] }]), { ...DEFAULT_PLATFORM, loopback: false });
      expect(await lab().tcpConnect('host', '127.0.0.1', 7007, { timeoutMs: 800 })).not.toBe('connected');
    } finally {
      await srv.close();
    }
  });
});
