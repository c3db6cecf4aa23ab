/**
 * The reference evaluator against SEMANTICS sections 2-4, one behaviour per
 * test. Packets are written in `secgroup explain` notation. The instance is
 * 198.18.0.10 / fd00:5ec::10.
 */
import { describe, expect, it } from 'vitest';
import { compilePolicy } from '../../src/nft/compile.js';
import { describeReason, evaluate, rulesInOrder, type Evaluation } from '../../src/policy/evaluate.js';
import type { Packet } from '../../src/policy/packet.js';
import { DEFAULT_PLATFORM, type PlatformOptions } from '../../src/policy/platform.js';
import { parsePolicy, type Policy, type RuleInput } from '../../src/policy/schema.js';
import { NftInterpreter } from '../helpers/nft-interpreter.js';
import { doc, pkt, policyOf, type GroupInput } from '../helpers/policies.js';

/**
 * "ACCEPT by sg/r1", "DROP by default", "ACCEPT by platform dhcp", ... Every
 * verdict is also checked against the compiled table (model interpreter), so
 * each behaviour below holds for the nft ruleset too.
 */
function verdict(policy: Policy, packet: Packet | string, platform: PlatformOptions = DEFAULT_PLATFORM): string {
  const p = typeof packet === 'string' ? pkt(packet) : packet;
  const e: Evaluation = evaluate(policy, p, platform);
  const compiled = new NftInterpreter(compilePolicy(policy, { platform }).table).run(p);
  expect(compiled.verdict, `compiled table: ${JSON.stringify(compiled)}`).toBe(e.verdict);
  const r = e.reason;
  const by = r.kind === 'rule' ? `${r.groupId}/${r.ruleId}` : r.kind === 'default' ? 'default' : `${r.kind} ${r.name}`;
  return `${e.verdict.toUpperCase()} by ${by}`;
}

const groups = (gs: GroupInput[], extra: Parameters<typeof doc>[1] = {}) => parsePolicy(doc(gs, extra));
const allow = (r: Partial<RuleInput> = {}): Partial<RuleInput> => ({ action: 'allow', ...r });
const deny = (r: Partial<RuleInput> = {}): Partial<RuleInput> => ({ action: 'deny', ...r });
const tcp = (ports: string, r: Partial<RuleInput> = {}): Partial<RuleInput> => ({ protocol: 'tcp', multiport: ports, ...r });

const SSH_IN = 'ingress tcp 203.0.113.7:40000 -> 198.18.0.10:22';
const NO_PLATFORM: PlatformOptions = { ...DEFAULT_PLATFORM, loopback: false, icmpv6Nd: false, dhcp: false };

describe('matching order (SEMANTICS section 2)', () => {
  it('groups are matched in association order: a priority 100 deny of the first group beats a priority 1 allow of the second', () => {
    const p = groups([
      { id: 'sg-first', rules: [deny({ id: 'no-ssh', priority: 100, ...tcp('22') })] },
      { id: 'sg-second', rules: [allow({ id: 'ssh', priority: 1, ...tcp('22') })] },
    ]);
    expect(verdict(p, SSH_IN)).toBe('DROP by sg-first/no-ssh');
    const swapped = groups([
      { id: 'sg-second', rules: [allow({ id: 'ssh', priority: 1, ...tcp('22') })] },
      { id: 'sg-first', rules: [deny({ id: 'no-ssh', priority: 100, ...tcp('22') })] },
    ]);
    expect(verdict(swapped, SSH_IN)).toBe('ACCEPT by sg-second/ssh');
  });

  it('a later group is reached when no rule of an earlier group matches', () => {
    const p = groups([
      { id: 'sg-a', rules: [deny({ id: 'no-db', ...tcp('3306') })] },
      { id: 'sg-b', rules: [allow({ id: 'ssh', ...tcp('22') })] },
    ]);
    expect(verdict(p, SSH_IN)).toBe('ACCEPT by sg-b/ssh');
  });

  it('inside a group, priority ascending decides, whatever the order in the list (1 is highest)', () => {
    expect(verdict(policyOf([allow({ id: 'late-allow', priority: 2, ...tcp('22') }), deny({ id: 'early-deny', priority: 1, ...tcp('22') })]), SSH_IN)).toBe(
      'DROP by sg/early-deny',
    );
    expect(verdict(policyOf([deny({ id: 'late-deny', priority: 100, ...tcp('22') }), allow({ id: 'early-allow', priority: 99, ...tcp('22') })]), SSH_IN)).toBe(
      'ACCEPT by sg/early-allow',
    );
  });

  it('at equal priority deny comes before allow, whatever the order in the list', () => {
    expect(verdict(policyOf([allow({ id: 'a', priority: 5, ...tcp('22') }), deny({ id: 'd', priority: 5, ...tcp('1-1024') })]), SSH_IN)).toBe('DROP by sg/d');
    expect(verdict(policyOf([deny({ id: 'd', priority: 5, ...tcp('1-1024') }), allow({ id: 'a', priority: 5, ...tcp('22') })]), SSH_IN)).toBe('DROP by sg/d');
    expect(rulesInOrder(policyOf([allow({ id: 'a', priority: 5 }), deny({ id: 'd', priority: 5 }), allow({ id: 'b', priority: 1 })]).security_groups[0]!.rules).map((r) => r.id)).toEqual([
      'b',
      'd',
      'a',
    ]);
  });

  it('same priority and action: the verdict is the same whichever rule is taken', () => {
    const p = policyOf([allow({ id: 'a', ...tcp('22') }), allow({ id: 'b', ...tcp('1-100') })]);
    expect(evaluate(p, pkt(SSH_IN)).verdict).toBe('accept');
  });

  it('a rule decides only when ethertype, protocol, port and peer all match', () => {
    const p = policyOf([
      allow({ id: 'v6', ethertype: 'IPv6', ...tcp('22') }),
      allow({ id: 'udp', protocol: 'udp', multiport: '22' }),
      allow({ id: 'port', ...tcp('2222') }),
      allow({ id: 'peer', ...tcp('22'), remote_ip_prefix: '198.51.100.0/24' }),
      allow({ id: 'out', direction: 'egress', ...tcp('22') }),
      allow({ id: 'all', priority: 2, ...tcp('22'), remote_ip_prefix: '203.0.113.0/24' }),
    ]);
    expect(verdict(p, SSH_IN)).toBe('ACCEPT by sg/all');
  });

  it('no matching rule: dropped, inbound and outbound alike', () => {
    const p = policyOf([allow({ id: 'http', ...tcp('80') })]);
    expect(verdict(p, SSH_IN)).toBe('DROP by default');
    expect(verdict(p, 'egress tcp 198.18.0.10 -> 203.0.113.7:80')).toBe('DROP by default');
    expect(verdict(groups([]), 'egress udp 198.18.0.10 -> 198.18.0.1:53')).toBe('DROP by default');
  });

  it('SSH is not open unless a rule opens it', () => {
    expect(verdict(parsePolicy(webPolicy()), SSH_IN)).toBe('DROP by default');
  });
});

function webPolicy() {
  return doc(
    [
      { id: 'sg-web', rules: [allow({ id: 'r-http', ...tcp('80'), remote_ip_prefix: '0.0.0.0/0' })] },
      {
        id: 'default',
        rules: [
          { id: 'in4', remote_group_id: 'default' },
          { id: 'in6', ethertype: 'IPv6', remote_group_id: 'default' },
          { id: 'out4', direction: 'egress', remote_ip_prefix: '0.0.0.0/0' },
          { id: 'out6', direction: 'egress', ethertype: 'IPv6', remote_ip_prefix: '::/0' },
        ],
      },
    ],
    { group_members: { default: ['198.18.0.10', '198.18.0.11', 'fd00:5ec::10'] } },
  );
}

describe('peers', () => {
  it('the peer is the source for ingress and the destination for egress', () => {
    const p = policyOf([allow({ id: 'in', remote_ip_prefix: '203.0.113.0/24' }), allow({ id: 'out', direction: 'egress', remote_ip_prefix: '198.51.100.0/24' })]);
    expect(verdict(p, 'ingress udp 203.0.113.7 -> 198.18.0.10:53')).toBe('ACCEPT by sg/in');
    expect(verdict(p, 'ingress udp 198.51.100.7 -> 198.18.0.10:53')).toBe('DROP by default');
    expect(verdict(p, 'egress udp 198.18.0.10 -> 198.51.100.7:53')).toBe('ACCEPT by sg/out');
    expect(verdict(p, 'egress udp 203.0.113.7 -> 198.18.0.10:53')).toBe('DROP by default');
  });

  it('prefix edges are inclusive; host bits in a prefix are masked; a bare address is one host', () => {
    const p = policyOf([allow({ id: 'net', remote_ip_prefix: '203.0.113.77/28' }), allow({ id: 'host', remote_ip_prefix: '198.51.100.5' })]);
    expect(verdict(p, 'ingress proto 47 203.0.113.64 -> 198.18.0.10')).toBe('ACCEPT by sg/net');
    expect(verdict(p, 'ingress proto 47 203.0.113.79 -> 198.18.0.10')).toBe('ACCEPT by sg/net');
    expect(verdict(p, 'ingress proto 47 203.0.113.80 -> 198.18.0.10')).toBe('DROP by default');
    expect(verdict(p, 'ingress proto 47 203.0.113.63 -> 198.18.0.10')).toBe('DROP by default');
    expect(verdict(p, 'ingress proto 47 198.51.100.5 -> 198.18.0.10')).toBe('ACCEPT by sg/host');
    expect(verdict(p, 'ingress proto 47 198.51.100.6 -> 198.18.0.10')).toBe('DROP by default');
  });

  it('no remote means any peer of the rule\'s family', () => {
    const p = policyOf([allow({ id: 'any4' })]);
    expect(verdict(p, 'ingress udp 203.0.113.7 -> 198.18.0.10:53')).toBe('ACCEPT by sg/any4');
    expect(verdict(p, 'ingress udp [2001:db8::7]:1 -> [fd00:5ec::10]:53')).toBe('DROP by default');
  });

  describe('remote group', () => {
    const members = { 'sg-app': ['198.18.0.11', 'fd00:5ec::11', '198.18.0.10'], 'sg-v6only': ['fd00:5ec::12'], 'sg-empty': [] };
    const p = policyOf(
      [
        allow({ id: 'app4', remote_group_id: 'sg-app' }),
        allow({ id: 'app6', ethertype: 'IPv6', remote_group_id: 'sg-app' }),
        allow({ id: 'v6only-as-v4', remote_group_id: 'sg-v6only' }),
        allow({ id: 'empty', remote_group_id: 'sg-empty' }),
        allow({ id: 'empty6', ethertype: 'IPv6', remote_group_id: 'sg-empty' }),
        allow({ id: 'out', direction: 'egress', remote_group_id: 'sg-app' }),
      ],
      { group_members: members },
    );

    it('matches any address of a member, per family', () => {
      expect(verdict(p, 'ingress tcp 198.18.0.11:1 -> 198.18.0.10:5432')).toBe('ACCEPT by sg/app4');
      expect(verdict(p, 'ingress tcp [fd00:5ec::11]:1 -> [fd00:5ec::10]:5432')).toBe('ACCEPT by sg/app6');
      expect(verdict(p, 'ingress tcp 198.18.0.12:1 -> 198.18.0.10:5432')).toBe('DROP by default');
    });

    it('includes the instance itself when it is a member', () => {
      expect(verdict(p, 'ingress tcp 198.18.0.10:1 -> 198.18.0.10:5432', NO_PLATFORM)).toBe('ACCEPT by sg/app4');
    });

    it('a group without members of the rule\'s family matches nothing; an empty group matches nothing', () => {
      expect(verdict(p, 'ingress tcp [fd00:5ec::12]:1 -> [fd00:5ec::10]:5432')).toBe('DROP by default');
      expect(verdict(p, 'ingress tcp 198.18.0.99:1 -> 198.18.0.10:5432')).toBe('DROP by default');
      expect(verdict(p, 'ingress tcp [fd00:5ec::99]:1 -> [fd00:5ec::10]:5432')).toBe('DROP by default');
    });

    it('on egress the member is the destination', () => {
      expect(verdict(p, 'egress tcp 198.18.0.10 -> 198.18.0.11:80')).toBe('ACCEPT by sg/out');
      expect(verdict(p, 'egress tcp 198.18.0.10 -> 198.18.0.12:80')).toBe('DROP by default');
    });
  });

  describe('address group', () => {
    const p = policyOf([allow({ id: 'partners', remote_address_group_id: 'ag-4' }), allow({ id: 'partners6', ethertype: 'IPv6', remote_address_group_id: 'ag-6' }), allow({ id: 'none', remote_address_group_id: 'ag-empty' })], {
      address_groups: [
        { id: 'ag-4', ip_version: 4, ip_set: ['203.0.113.0/25', '198.51.100.10-198.51.100.20', '198.51.100.99'] },
        { id: 'ag-6', ip_version: 6, ip_set: ['2001:db8:2::10-2001:db8:2::1f'] },
        { id: 'ag-empty', ip_version: 4, ip_set: [] },
      ],
    });

    it.each([
      ['198.51.100.10', 'ACCEPT by sg/partners'],
      ['198.51.100.15', 'ACCEPT by sg/partners'],
      ['198.51.100.20', 'ACCEPT by sg/partners'],
      ['198.51.100.9', 'DROP by default'],
      ['198.51.100.21', 'DROP by default'],
      ['198.51.100.99', 'ACCEPT by sg/partners'],
      ['203.0.113.127', 'ACCEPT by sg/partners'],
      ['203.0.113.128', 'DROP by default'],
    ])('range, CIDR and single entries: %s -> %s', (peer, expected) => {
      expect(verdict(p, `ingress tcp ${peer}:1 -> 198.18.0.10:443`)).toBe(expected);
    });

    it('IPv6 ranges; an empty address group matches nothing', () => {
      expect(verdict(p, 'ingress tcp [2001:db8:2::1f]:1 -> [fd00:5ec::10]:443')).toBe('ACCEPT by sg/partners6');
      expect(verdict(p, 'ingress tcp [2001:db8:2::20]:1 -> [fd00:5ec::10]:443')).toBe('DROP by default');
      const empty = policyOf([allow({ id: 'none', remote_address_group_id: 'ag-empty' })], { address_groups: [{ id: 'ag-empty', ip_version: 4, ip_set: [] }] });
      expect(verdict(empty, 'ingress tcp 198.51.100.10:1 -> 198.18.0.10:443')).toBe('DROP by default');
    });
  });
});

describe('protocols, ports, ICMP', () => {
  it('port lists and ranges match the destination port, edges included, in both directions', () => {
    const p = policyOf([allow({ id: 'in', ...tcp('22,80,8000-8080') }), allow({ id: 'out', direction: 'egress', protocol: 'udp', multiport: '53,123' })]);
    for (const port of [22, 80, 8000, 8042, 8080]) expect(verdict(p, `ingress tcp 203.0.113.7:40000 -> 198.18.0.10:${port}`)).toBe('ACCEPT by sg/in');
    for (const port of [21, 23, 81, 7999, 8081]) expect(verdict(p, `ingress tcp 203.0.113.7:40000 -> 198.18.0.10:${port}`)).toBe('DROP by default');
    expect(verdict(p, 'ingress tcp 203.0.113.7:22 -> 198.18.0.10:40000')).toBe('DROP by default');
    expect(verdict(p, 'egress udp 198.18.0.10:40000 -> 203.0.113.7:123')).toBe('ACCEPT by sg/out');
    expect(verdict(p, 'egress udp 198.18.0.10:53 -> 203.0.113.7:40000')).toBe('DROP by default');
  });

  it('a protocol rule matches only that protocol; no protocol matches all; numbers are the same protocols as names', () => {
    const p = policyOf([
      allow({ id: 'tcp6', protocol: '6', multiport: '22' }),
      allow({ id: 'gre', protocol: '47' }),
      allow({ id: 'udp', protocol: 'udp' }),
      allow({ id: 'sctp', protocol: 'sctp', multiport: '9' }),
      allow({ id: 'all', priority: 2, remote_ip_prefix: '198.51.100.0/24' }),
    ]);
    expect(verdict(p, SSH_IN)).toBe('ACCEPT by sg/tcp6');
    expect(verdict(p, 'ingress tcp 203.0.113.7:1 -> 198.18.0.10:23')).toBe('DROP by default');
    expect(verdict(p, 'ingress proto 47 203.0.113.7 -> 198.18.0.10')).toBe('ACCEPT by sg/gre');
    expect(verdict(p, 'ingress proto 50 203.0.113.7 -> 198.18.0.10')).toBe('DROP by default');
    expect(verdict(p, 'ingress udp 203.0.113.7:1 -> 198.18.0.10:65535')).toBe('ACCEPT by sg/udp');
    expect(verdict(p, 'ingress sctp 203.0.113.7:1 -> 198.18.0.10:9')).toBe('ACCEPT by sg/sctp');
    expect(verdict(p, 'ingress sctp 203.0.113.7:1 -> 198.18.0.10:10')).toBe('DROP by default');
    for (const packet of ['ingress proto 50 198.51.100.1 -> 198.18.0.10', 'ingress icmp 198.51.100.1 -> 198.18.0.10 type 3 code 1', 'ingress tcp 198.51.100.1:1 -> 198.18.0.10:23']) {
      expect(verdict(p, packet)).toBe('ACCEPT by sg/all');
    }
  });

  it('ICMP type, and code when given; no type means every type', () => {
    const p = policyOf([
      allow({ id: 'echo', protocol: 'icmp', icmp_type: 8 }),
      allow({ id: 'unreach-port', protocol: 'icmp', icmp_type: 3, icmp_code: 3 }),
      allow({ id: 'v6-any', ethertype: 'IPv6', protocol: 'icmpv6' }),
    ]);
    expect(verdict(p, 'ingress icmp 203.0.113.7 -> 198.18.0.10 type 8 code 0')).toBe('ACCEPT by sg/echo');
    expect(verdict(p, 'ingress icmp 203.0.113.7 -> 198.18.0.10 type 8 code 5')).toBe('ACCEPT by sg/echo');
    expect(verdict(p, 'ingress icmp 203.0.113.7 -> 198.18.0.10 type 13')).toBe('DROP by default');
    expect(verdict(p, 'ingress icmp 203.0.113.7 -> 198.18.0.10 type 3 code 3')).toBe('ACCEPT by sg/unreach-port');
    expect(verdict(p, 'ingress icmp 203.0.113.7 -> 198.18.0.10 type 3 code 1')).toBe('DROP by default');
    expect(verdict(p, 'ingress icmpv6 2001:db8::7 -> fd00:5ec::10 type 128')).toBe('ACCEPT by sg/v6-any');
    expect(verdict(p, 'ingress icmpv6 2001:db8::7 -> fd00:5ec::10 type 1 code 4')).toBe('ACCEPT by sg/v6-any');
  });

  it('an ICMPv6 rule with a type matches only that type (ND types too, when the platform rule is off)', () => {
    const p = policyOf([allow({ id: 'ns', ethertype: 'IPv6', protocol: 'icmpv6', icmp_type: 135 })]);
    expect(verdict(p, 'ingress icmpv6 2001:db8::7 -> fd00:5ec::10 type 135', NO_PLATFORM)).toBe('ACCEPT by sg/ns');
    expect(verdict(p, 'ingress icmpv6 2001:db8::7 -> fd00:5ec::10 type 136', NO_PLATFORM)).toBe('DROP by default');
  });
});

describe('state (SEMANTICS section 3)', () => {
  const p = policyOf([allow({ id: 'http', ...tcp('80') }), allow({ id: 'out-http', direction: 'egress', ...tcp('443') })]);

  it('replies to connections the instance opened are accepted without an ingress rule', () => {
    expect(verdict(p, pkt('ingress tcp 203.0.113.7:443 -> 198.18.0.10:40000', { ct: 'established', ctDirection: 'reply' }))).toBe('ACCEPT by stateful reply');
  });

  it('related packets (ICMP errors) are accepted in both directions', () => {
    expect(verdict(p, pkt('ingress icmp 203.0.113.7 -> 198.18.0.10 type 3 code 4', { ct: 'related' }))).toBe('ACCEPT by stateful related');
    expect(verdict(p, pkt('egress icmp 198.18.0.10 -> 203.0.113.7 type 3 code 3', { ct: 'related' }))).toBe('ACCEPT by stateful related');
  });

  it('invalid packets are dropped, even when a rule would allow them', () => {
    expect(verdict(p, pkt('ingress tcp 203.0.113.7:1 -> 198.18.0.10:80', { ct: 'invalid' }))).toBe('DROP by stateful invalid');
    expect(verdict(p, pkt('egress tcp 198.18.0.10:1 -> 203.0.113.7:443', { ct: 'invalid' }))).toBe('DROP by stateful invalid');
  });

  it('established inbound-initiated connections are matched again at every packet from the peer', () => {
    const established = pkt('ingress tcp 203.0.113.7:40000 -> 198.18.0.10:80', { ct: 'established', ctDirection: 'original' });
    expect(verdict(p, established)).toBe('ACCEPT by sg/http');
    // the rule that allowed the connection is removed: the next packet is dropped
    expect(verdict(policyOf([allow({ id: 'out-http', direction: 'egress', ...tcp('443') })]), established)).toBe('DROP by default');
  });

  it('connections the instance opened keep working when the egress rule goes away', () => {
    const noRules = policyOf([]);
    expect(verdict(noRules, pkt('egress tcp 198.18.0.10:40000 -> 203.0.113.7:443', { ct: 'established' }))).toBe('ACCEPT by stateful established');
    expect(verdict(noRules, pkt('egress tcp 198.18.0.10:40000 -> 203.0.113.7:443', { ct: 'new' }))).toBe('DROP by default');
  });

  it('untracked packets are matched against the rules', () => {
    expect(verdict(p, pkt('ingress tcp 203.0.113.7:1 -> 198.18.0.10:80', { ct: 'untracked' }))).toBe('ACCEPT by sg/http');
    expect(verdict(p, pkt('ingress tcp 203.0.113.7:1 -> 198.18.0.10:81', { ct: 'untracked' }))).toBe('DROP by default');
  });
});

describe('platform rules (SEMANTICS section 4)', () => {
  const denyAll = policyOf([deny({ id: 'deny-in' }), deny({ id: 'deny-in6', ethertype: 'IPv6' }), deny({ id: 'deny-out', direction: 'egress' }), deny({ id: 'deny-out6', direction: 'egress', ethertype: 'IPv6' })]);
  const nothing = policyOf([]);

  it('come before every rule: a deny-everything policy keeps loopback, ND and DHCP working', () => {
    expect(verdict(denyAll, pkt('ingress tcp 198.18.0.10:1 -> 198.18.0.10:22', { iface: 'lo' }))).toBe('ACCEPT by platform loopback');
    expect(verdict(denyAll, 'ingress icmpv6 2001:db8::1 -> fd00:5ec::10 type 135')).toBe('ACCEPT by platform icmpv6-nd');
    expect(verdict(denyAll, 'ingress udp 198.18.0.1:67 -> 198.18.0.10:68')).toBe('ACCEPT by platform dhcp');
  });

  it('loopback in both directions, and only on lo', () => {
    expect(verdict(nothing, pkt('egress udp 198.18.0.10 -> 198.18.0.10:53', { iface: 'lo' }))).toBe('ACCEPT by platform loopback');
    expect(verdict(nothing, pkt('ingress udp [fd00:5ec::10]:1 -> [fd00:5ec::10]:53', { iface: 'lo' }))).toBe('ACCEPT by platform loopback');
    expect(verdict(nothing, pkt('ingress udp 198.18.0.10:1 -> 198.18.0.10:53', { iface: 'eth0' }))).toBe('DROP by default');
  });

  it('ICMPv6 neighbour discovery (133-137) and MLD (130-132, 143) both ways; not echo, not ICMPv4', () => {
    for (const type of [130, 131, 132, 133, 134, 135, 136, 137, 143]) {
      expect(verdict(nothing, `ingress icmpv6 2001:db8::1 -> fd00:5ec::10 type ${type}`)).toBe('ACCEPT by platform icmpv6-nd');
      expect(verdict(nothing, `egress icmpv6 fd00:5ec::10 -> 2001:db8::1 type ${type}`)).toBe('ACCEPT by platform icmpv6-nd');
    }
    for (const type of [128, 129, 138, 142, 144]) expect(verdict(nothing, `ingress icmpv6 2001:db8::1 -> fd00:5ec::10 type ${type}`)).toBe('DROP by default');
    expect(verdict(nothing, 'ingress icmp 203.0.113.1 -> 198.18.0.10 type 134')).toBe('DROP by default');
  });

  it('DHCP client: udp 68 in and 67 out; DHCPv6: udp 546 in and 547 out; nothing else', () => {
    expect(verdict(nothing, 'ingress udp 198.18.0.1:67 -> 198.18.0.10:68')).toBe('ACCEPT by platform dhcp');
    expect(verdict(nothing, 'egress udp 198.18.0.10:68 -> 198.18.0.1:67')).toBe('ACCEPT by platform dhcp');
    expect(verdict(nothing, 'ingress udp [fd00:5ec::1]:547 -> [fd00:5ec::10]:546')).toBe('ACCEPT by platform dhcp');
    expect(verdict(nothing, 'egress udp [fd00:5ec::10]:546 -> [fd00:5ec::1]:547')).toBe('ACCEPT by platform dhcp');
    expect(verdict(nothing, 'ingress udp 198.18.0.1:68 -> 198.18.0.10:67')).toBe('DROP by default');
    expect(verdict(nothing, 'egress udp 198.18.0.10:67 -> 198.18.0.1:68')).toBe('DROP by default');
    expect(verdict(nothing, 'ingress tcp 198.18.0.1:67 -> 198.18.0.10:68')).toBe('DROP by default');
    expect(verdict(nothing, 'ingress udp [fd00:5ec::1]:1 -> [fd00:5ec::10]:68')).toBe('DROP by default');
    expect(verdict(nothing, 'ingress udp 198.18.0.1:1 -> 198.18.0.10:546')).toBe('DROP by default');
  });

  it('the controller channel: egress TCP to the controller address and port only; DNS only when the controller is a name', () => {
    const platform: PlatformOptions = { ...DEFAULT_PLATFORM, controller: { addresses: ['198.18.1.1', 'fd00:5ec::1:1'], port: 8443, dns: false } };
    expect(verdict(nothing, 'egress tcp 198.18.0.10 -> 198.18.1.1:8443', platform)).toBe('ACCEPT by platform controller');
    expect(verdict(nothing, 'egress tcp [fd00:5ec::10]:1 -> [fd00:5ec::1:1]:8443', platform)).toBe('ACCEPT by platform controller');
    expect(verdict(nothing, 'egress tcp 198.18.0.10 -> 198.18.1.1:443', platform)).toBe('DROP by default');
    expect(verdict(nothing, 'egress tcp 198.18.0.10 -> 198.18.1.2:8443', platform)).toBe('DROP by default');
    expect(verdict(nothing, 'egress udp 198.18.0.10 -> 198.18.1.1:8443', platform)).toBe('DROP by default');
    expect(verdict(nothing, 'ingress tcp 198.18.1.1:1 -> 198.18.0.10:8443', platform)).toBe('DROP by default');
    expect(verdict(nothing, 'egress udp 198.18.0.10 -> 198.18.1.53:53', platform)).toBe('DROP by default');
    const byName = { ...platform, controller: { ...platform.controller!, dns: true } };
    expect(verdict(nothing, 'egress udp 198.18.0.10 -> 198.18.1.53:53', byName)).toBe('ACCEPT by platform dns');
    expect(verdict(nothing, 'egress tcp 198.18.0.10 -> 198.18.1.53:53', byName)).toBe('ACCEPT by platform dns');
    expect(verdict(nothing, 'ingress udp 198.18.1.53:1 -> 198.18.0.10:53', byName)).toBe('DROP by default');
  });

  it('failsafe ports, e.g. tcp:22 in, only when configured', () => {
    const platform: PlatformOptions = { ...DEFAULT_PLATFORM, failsafeIngress: [{ protocol: 6, from: 22, to: 22 }], failsafeEgress: [{ protocol: 17, from: 1000, to: 1010 }] };
    expect(verdict(denyAll, SSH_IN, platform)).toBe('ACCEPT by platform failsafe');
    expect(verdict(denyAll, SSH_IN)).toBe('DROP by sg/deny-in');
    expect(verdict(denyAll, 'ingress udp 203.0.113.7:1 -> 198.18.0.10:22', platform)).toBe('DROP by sg/deny-in');
    expect(verdict(denyAll, 'egress udp 198.18.0.10 -> 203.0.113.7:1010', platform)).toBe('ACCEPT by platform failsafe');
    expect(verdict(denyAll, 'egress udp 198.18.0.10 -> 203.0.113.7:1011', platform)).toBe('DROP by sg/deny-out');
  });

  it('each switch turns its rule off', () => {
    expect(verdict(nothing, pkt('ingress tcp 198.18.0.10:1 -> 198.18.0.10:22', { iface: 'lo' }), { ...DEFAULT_PLATFORM, loopback: false })).toBe('DROP by default');
    expect(verdict(nothing, 'ingress icmpv6 2001:db8::1 -> fd00:5ec::10 type 135', { ...DEFAULT_PLATFORM, icmpv6Nd: false })).toBe('DROP by default');
    expect(verdict(nothing, 'ingress udp 198.18.0.1:67 -> 198.18.0.10:68', { ...DEFAULT_PLATFORM, dhcp: false })).toBe('DROP by default');
  });
});

describe('describeReason', () => {
  it('says which rule of which group decided, or why none did', () => {
    expect(describeReason({ kind: 'rule', groupId: 'sg-web', groupIndex: 0, ruleId: 'r-http', priority: 1, action: 'allow' })).toBe(
      'rule r-http (priority 1, allow) of security group sg-web (#1 in association order)',
    );
    expect(describeReason({ kind: 'default' })).toBe('no rule matched: default drop');
    expect(describeReason({ kind: 'stateful', name: 'invalid' })).toBe('conntrack state invalid (always dropped)');
    expect(describeReason({ kind: 'platform', name: 'dhcp' })).toMatch(/platform rule "dhcp"/);
  });
});
