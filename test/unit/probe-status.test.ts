import { readFileSync } from 'node:fs';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { parsePrefix, formatIp, FAMILY_MAX, type Family } from '../../src/policy/address.js';
import { evaluate, ruleMatches, rulesInOrder } from '../../src/policy/evaluate.js';
import type { Packet } from '../../src/policy/packet.js';
import { DEFAULT_PLATFORM, type PlatformOptions } from '../../src/policy/platform.js';
import { parsePolicy, type PolicyInput, type Policy, type RuleInput } from '../../src/policy/schema.js';
import { portReportSchema, type PortEntry } from '../../src/protocol/messages.js';
import type { Listener } from '../../src/probe/listener.js';
import { analysePort, computePortStatus } from '../../src/probe/port-status.js';
import { normalizeRules } from '../../src/policy/normalize.js';
import { parseSs } from '../../src/probe/ss.js';

const OPTS = { source: 'ss', generatedAt: '2024-01-01T00:00:00.000Z' } as const;

function policyOf(groups: { id: string; rules: Partial<RuleInput>[] }[], extra: Partial<PolicyInput> = {}): Policy {
  return parsePolicy({
    revision: 7,
    instance: { id: 'ecs-1', addresses: ['192.0.2.2', 'fd00::2'] },
    security_groups: groups.map((g) => ({ id: g.id, rules: g.rules.map((r, i) => ({ id: `r${i}`, direction: 'ingress', ...r })) })),
    address_groups: [{ id: 'ag-office', ip_version: 4, ip_set: ['198.51.100.0/24'] }],
    group_members: { default: ['192.0.2.2', '192.0.2.3', 'fd00::2'], empty: [] },
    ...extra,
  });
}

const tcp = (address: string, port: number, more: Partial<Listener> = {}): Listener => ({
  protocol: 'tcp',
  family: address.includes(':') ? 6 : 4,
  address,
  port,
  process: 'srv',
  ...more,
});

function entry(entries: PortEntry[], protocol: 'tcp' | 'udp', port: number, family: 4 | 6 | null): PortEntry {
  const e = entries.filter((x) => x.protocol === protocol && x.port === port && x.family === family);
  expect(e, `${protocol}/${port} family ${family} in ${JSON.stringify(entries.map((x) => [x.protocol, x.port, x.family]))}`).toHaveLength(1);
  return e[0]!;
}
const ids = (refs: PortEntry['allowed_by']) => refs.map((r) => `${r.group_id}/${r.rule_id} ${r.peers}`);

describe('computePortStatus: the four statuses', () => {
  const policy = policyOf([
    {
      id: 'sg-web',
      rules: [
        { protocol: 'tcp', multiport: '80,443', remote_ip_prefix: '0.0.0.0/0' },
        { protocol: 'tcp', multiport: '5432', remote_group_id: 'default' },
        { protocol: 'tcp', multiport: '8000-8002', remote_address_group_id: 'ag-office' },
        { protocol: 'tcp', multiport: '10000-20000' },
        { protocol: 'udp' },
      ],
    },
  ]);
  const report = computePortStatus(
    policy,
    [tcp('0.0.0.0', 80, { process: 'nginx' }), tcp('0.0.0.0', 8080), tcp('127.0.0.1', 5432, { process: 'postgres' }), tcp('0.0.0.0', 25, { iface: 'lo' })],
    OPTS,
  );

  it('is a valid PortReport with the revision and source', () => {
    expect(portReportSchema.parse(report)).toEqual(report);
    expect(report).toMatchObject({ revision: 7, source: 'ss', generated_at: OPTS.generatedAt });
  });

  it('open: listening outside loopback and allowed, with the rule and its peers', () => {
    expect(entry(report.entries, 'tcp', 80, 4)).toEqual({
      protocol: 'tcp',
      port: 80,
      family: 4,
      status: 'open',
      listeners: [{ address: '0.0.0.0', process: 'nginx' }],
      allowed_by: [{ group_id: 'sg-web', rule_id: 'r0', peers: '0.0.0.0/0' }],
      denied_by: [],
    });
  });

  it('blocked: listening outside loopback, no rule allows it', () => {
    expect(entry(report.entries, 'tcp', 8080, 4)).toMatchObject({ status: 'blocked', allowed_by: [], denied_by: [] });
  });

  it('local-only: loopback or bound to lo, with the rule that would allow it still shown', () => {
    expect(entry(report.entries, 'tcp', 5432, 4)).toMatchObject({
      status: 'local-only',
      listeners: [{ address: '127.0.0.1', process: 'postgres' }],
      allowed_by: [{ group_id: 'sg-web', rule_id: 'r1', peers: 'group default' }],
    });
    expect(entry(report.entries, 'tcp', 25, 4)).toMatchObject({ status: 'local-only', listeners: [{ address: '0.0.0.0%lo' }] });
  });

  it('not-listening: each allowed port and small range, not wide ranges or whole protocols', () => {
    const nl = report.entries.filter((e) => e.status === 'not-listening');
    expect(nl.map((e) => `${e.protocol}/${e.port}/${e.family}`)).toEqual(['tcp/443/4', 'tcp/8000/4', 'tcp/8001/4', 'tcp/8002/4']);
    expect(entry(report.entries, 'tcp', 8001, 4)).toMatchObject({ listeners: [], allowed_by: [{ rule_id: 'r2', peers: 'address group ag-office' }] });
    const wide = computePortStatus(policy, [], { ...OPTS, maxListedRange: 3 });
    expect(wide.entries.map((e) => e.port)).toEqual([80, 443, 5432, 8000, 8001, 8002]);
  });

  it('sorts by port, protocol, family', () => {
    const ports = report.entries.map((e) => e.port);
    expect(ports).toEqual([...ports].sort((a, b) => a - b));
  });
});

describe('computePortStatus: shadowing and order', () => {
  const l22 = [tcp('0.0.0.0', 22)];

  it('partial shadow (deny 203.0.113.0/24, then allow 0.0.0.0/0) is open, reporting both rules', () => {
    const p = policyOf([
      { id: 'sg', rules: [{ protocol: 'tcp', multiport: '22', remote_ip_prefix: '0.0.0.0/0' }, { action: 'deny', protocol: 'tcp', multiport: '22', remote_ip_prefix: '203.0.113.0/24' }] },
    ]);
    const e = entry(computePortStatus(p, l22, OPTS).entries, 'tcp', 22, 4);
    expect(e.status).toBe('open');
    expect(ids(e.allowed_by)).toEqual(['sg/r0 0.0.0.0/0']);
    expect(ids(e.denied_by)).toEqual(['sg/r1 203.0.113.0/24']);
  });

  it('full shadow is blocked, still naming the allow rule and the deny rule', () => {
    const p = policyOf([
      { id: 'sg', rules: [{ protocol: 'tcp', multiport: '22', remote_address_group_id: 'ag-office' }, { action: 'deny', protocol: 'tcp', remote_ip_prefix: '198.51.100.0/23' }] },
    ]);
    const e = entry(computePortStatus(p, l22, OPTS).entries, 'tcp', 22, 4);
    expect(e.status).toBe('blocked');
    expect(ids(e.allowed_by)).toEqual(['sg/r0 address group ag-office']);
    expect(ids(e.denied_by)).toEqual(['sg/r1 198.51.100.0/23']);
  });

  it('a shadow assembled from several deny rules is full only when together they cover the allow', () => {
    const rules = (extra: Partial<RuleInput>[]) =>
      policyOf([{ id: 'sg', rules: [{ protocol: 'tcp', multiport: '22', priority: 50 }, { action: 'deny', protocol: 'tcp', remote_ip_prefix: '0.0.0.0/1' }, ...extra] }]);
    expect(entry(computePortStatus(rules([]), l22, OPTS).entries, 'tcp', 22, 4).status).toBe('open');
    const full = entry(computePortStatus(rules([{ action: 'deny', protocol: 'tcp', remote_ip_prefix: '128.0.0.0/1' }]), l22, OPTS).entries, 'tcp', 22, 4);
    expect(full.status).toBe('blocked');
    expect(ids(full.denied_by)).toEqual(['sg/r1 0.0.0.0/1', 'sg/r2 128.0.0.0/1']);
  });

  it('a deny rule after the allow (lower priority) shadows nothing', () => {
    const p = policyOf([{ id: 'sg', rules: [{ action: 'deny', protocol: 'tcp', multiport: '22', priority: 2 }, { protocol: 'tcp', multiport: '22', priority: 1 }] }]);
    const e = entry(computePortStatus(p, l22, OPTS).entries, 'tcp', 22, 4);
    expect(e).toMatchObject({ status: 'open', denied_by: [] });
  });

  it('at equal priority deny comes first', () => {
    const p = policyOf([{ id: 'sg', rules: [{ protocol: 'tcp', multiport: '22' }, { action: 'deny', protocol: 'tcp', multiport: '22' }] }]);
    expect(entry(computePortStatus(p, l22, OPTS).entries, 'tcp', 22, 4)).toMatchObject({ status: 'blocked', denied_by: [{ rule_id: 'r1' }] });
  });

  it('group association order decides before priority', () => {
    const deny = { id: 'sg-deny', rules: [{ action: 'deny' as const, protocol: 'tcp', multiport: '22', priority: 100 }] };
    const allow = { id: 'sg-allow', rules: [{ protocol: 'tcp', multiport: '22', priority: 1 }] };
    const denyFirst = entry(computePortStatus(policyOf([deny, allow]), l22, OPTS).entries, 'tcp', 22, 4);
    expect(denyFirst).toMatchObject({ status: 'blocked', allowed_by: [{ group_id: 'sg-allow' }], denied_by: [{ group_id: 'sg-deny' }] });
    const allowFirst = entry(computePortStatus(policyOf([allow, deny]), l22, OPTS).entries, 'tcp', 22, 4);
    expect(allowFirst).toMatchObject({ status: 'open', allowed_by: [{ group_id: 'sg-allow' }], denied_by: [] });
  });

  it('leaves out allow rules that add no peer, and rules whose remote has no members', () => {
    const p = policyOf([
      {
        id: 'sg',
        rules: [
          { protocol: 'tcp', multiport: '22', remote_ip_prefix: '198.51.100.0/24' },
          { protocol: 'tcp', multiport: '22', remote_address_group_id: 'ag-office' },
          { protocol: 'tcp', multiport: '22', remote_group_id: 'empty' },
          { protocol: '6', remote_group_id: 'default' },
        ],
      },
    ]);
    const e = entry(computePortStatus(p, l22, OPTS).entries, 'tcp', 22, 4);
    expect(ids(e.allowed_by)).toEqual(['sg/r0 198.51.100.0/24', 'sg/r3 group default']);
    const onlyEmpty = policyOf([{ id: 'sg', rules: [{ protocol: 'tcp', multiport: '22', remote_group_id: 'empty' }] }]);
    expect(entry(computePortStatus(onlyEmpty, l22, OPTS).entries, 'tcp', 22, 4)).toMatchObject({ status: 'blocked', allowed_by: [] });
    expect(computePortStatus(onlyEmpty, [], OPTS).entries).toEqual([]);
  });

  it('ignores egress rules and other protocols', () => {
    const p = policyOf([{ id: 'sg', rules: [{ direction: 'egress', protocol: 'tcp', multiport: '22' }, { protocol: 'udp', multiport: '22' }, { protocol: 'sctp', multiport: '22' }] }]);
    expect(entry(computePortStatus(p, l22, OPTS).entries, 'tcp', 22, 4).status).toBe('blocked');
  });
});

describe('computePortStatus: IPv6 and dual-stack', () => {
  const v4Only = policyOf([{ id: 'sg', rules: [{ protocol: 'tcp', multiport: '443' }] }]);
  const both = policyOf([{ id: 'sg', rules: [{ protocol: 'tcp', multiport: '443' }, { ethertype: 'IPv6', protocol: 'tcp', multiport: '443', remote_ip_prefix: '2001:db8::/32' }] }]);

  it('an IPv6-only socket is not reachable by an IPv4 rule: IPv6 blocked, IPv4 not listening', () => {
    const r = computePortStatus(v4Only, [tcp('::', 443, { dualStack: false })], OPTS);
    expect(entry(r.entries, 'tcp', 443, 6)).toMatchObject({ status: 'blocked', listeners: [{ address: '[::]' }] });
    expect(entry(r.entries, 'tcp', 443, 4)).toMatchObject({ status: 'not-listening', listeners: [] });
  });

  it('a dual-stack wildcard counts for IPv4 too', () => {
    const r = computePortStatus(v4Only, [tcp('::', 443, { dualStack: true })], OPTS);
    expect(entry(r.entries, 'tcp', 443, 4)).toMatchObject({ status: 'open', listeners: [{ address: '*' }], allowed_by: [{ peers: '0.0.0.0/0' }] });
    expect(entry(r.entries, 'tcp', 443, 6)).toMatchObject({ status: 'blocked' });
    const r2 = computePortStatus(both, [tcp('::', 443, { dualStack: true })], OPTS);
    expect(entry(r2.entries, 'tcp', 443, 6)).toMatchObject({ status: 'open', allowed_by: [{ rule_id: 'r1', peers: '2001:db8::/32' }] });
  });

  it('specific, link-local and loopback IPv6 addresses', () => {
    const r = computePortStatus(
      both,
      [tcp('fd00::2', 443), tcp('fe80::1', 22, { iface: 'eth0' }), tcp('::1', 631), tcp('127.0.0.1', 631)],
      OPTS,
    );
    expect(entry(r.entries, 'tcp', 443, 6)).toMatchObject({ status: 'open', listeners: [{ address: '[fd00::2]' }] });
    expect(entry(r.entries, 'tcp', 22, 6)).toMatchObject({ status: 'blocked', listeners: [{ address: '[fe80::1]%eth0' }] });
    expect(entry(r.entries, 'tcp', 631, 4)).toMatchObject({ status: 'local-only', listeners: [{ address: '127.0.0.1' }] });
    expect(entry(r.entries, 'tcp', 631, 6)).toMatchObject({ status: 'local-only', listeners: [{ address: '[::1]' }] });
  });

  it('merges identical IPv4 and IPv6 results into family null', () => {
    const r = computePortStatus(null, [tcp('::', 22, { dualStack: true })], OPTS);
    expect(r.entries).toEqual([{ protocol: 'tcp', port: 22, family: null, status: 'blocked', listeners: [{ address: '*', process: 'srv' }], allowed_by: [], denied_by: [] }]);
  });

  it('a mixed loopback and public listener set is exposed', () => {
    const r = computePortStatus(null, [tcp('127.0.0.1', 80), tcp('192.0.2.2', 80)], OPTS);
    expect(entry(r.entries, 'tcp', 80, 4)).toMatchObject({ status: 'blocked', listeners: [{ address: '127.0.0.1' }, { address: '192.0.2.2' }] });
  });
});

describe('computePortStatus: platform rules and no policy', () => {
  const denyAll = policyOf([{ id: 'sg', rules: [{ action: 'deny' }, { protocol: 'tcp', multiport: '22' }] }]);
  const failsafe: PlatformOptions = { ...DEFAULT_PLATFORM, failsafeIngress: [{ protocol: 6, from: 22, to: 22 }] };

  it('a failsafe port is open whatever the rules say, and the rules are not reached', () => {
    const r = computePortStatus(denyAll, [tcp('0.0.0.0', 22)], { ...OPTS, platform: failsafe });
    expect(entry(r.entries, 'tcp', 22, 4)).toMatchObject({ status: 'open', allowed_by: [{ group_id: 'platform', rule_id: 'failsafe:tcp:22', peers: 'any' }], denied_by: [] });
    expect(entry(computePortStatus(denyAll, [tcp('0.0.0.0', 22)], OPTS).entries, 'tcp', 22, 4)).toMatchObject({ status: 'blocked', denied_by: [{ rule_id: 'r0' }] });
  });

  it('a failsafe port nothing listens on is not-listening for both families', () => {
    const r = computePortStatus(policyOf([]), [], { ...OPTS, platform: failsafe });
    expect(r.entries).toEqual([
      { protocol: 'tcp', port: 22, family: null, status: 'not-listening', listeners: [], allowed_by: [{ group_id: 'platform', rule_id: 'failsafe:tcp:22', peers: 'any' }], denied_by: [] },
    ]);
  });

  it('the DHCP client port is open by the platform rule unless it is turned off', () => {
    const dhcp = { protocol: 'udp' as const, family: 4 as const, address: '0.0.0.0', port: 68, process: 'dhclient', iface: 'eth0' };
    expect(entry(computePortStatus(denyAll, [dhcp], OPTS).entries, 'udp', 68, 4)).toMatchObject({ status: 'open', allowed_by: [{ rule_id: 'dhcp' }] });
    expect(entry(computePortStatus(denyAll, [dhcp], { ...OPTS, platform: { ...DEFAULT_PLATFORM, dhcp: false } }).entries, 'udp', 68, 4).status).toBe('blocked');
  });

  it('without a policy: revision null, listeners only, blocked or local-only, no platform rules', () => {
    const r = computePortStatus(null, [tcp('0.0.0.0', 22), tcp('127.0.0.1', 53), { ...tcp('0.0.0.0', 68), protocol: 'udp' }], { ...OPTS, platform: failsafe });
    expect(r.revision).toBeNull();
    expect(r.entries.map((e) => `${e.protocol}/${e.port} ${e.status}`)).toEqual(['tcp/22 blocked', 'tcp/53 local-only', 'udp/68 blocked']);
  });
});

describe('computePortStatus on the real ss capture', () => {
  it('classifies every socket the capture opened', () => {
    const listeners = parseSs(readFileSync(new URL('../fixtures/probe/ss-ltunp.txt', import.meta.url), 'utf8'));
    const policy = policyOf([
      {
        id: 'sg',
        rules: [
          { protocol: 'tcp', multiport: '18080-18090' },
          { ethertype: 'IPv6', protocol: 'tcp', multiport: '18080-18090' },
          { protocol: 'udp', multiport: '18053-18068' },
          { action: 'deny', protocol: 'tcp', multiport: '18085' },
        ],
      },
    ]);
    const r = computePortStatus(policy, listeners, OPTS);
    const status = Object.fromEntries(r.entries.filter((e) => e.listeners.length).map((e) => [`${e.protocol}/${e.port}/${e.family ?? 'both'}`, e.status]));
    expect(status).toEqual({
      'tcp/2024/4': 'blocked',
      'udp/18053/4': 'open',
      'udp/18054/4': 'local-only', // 127.0.0.53%lo
      'udp/18055/4': 'open', // *: dual-stack, reachable over IPv4
      'udp/18055/6': 'blocked', // no IPv6 udp rule
      'udp/18056/6': 'local-only',
      'udp/18068/4': 'open', // 0.0.0.0%eth0
      'tcp/18080/4': 'open',
      'tcp/18081/4': 'local-only',
      'tcp/18082/4': 'open', // *: dual-stack
      'tcp/18082/6': 'open',
      'tcp/18083/6': 'open', // [::]: IPv6 only
      'tcp/18084/6': 'local-only',
      'tcp/18085/4': 'blocked', // the deny comes first (equal priority)
      'tcp/18086/6': 'open',
      'tcp/18087/6': 'open', // link-local
      'tcp/18088/4': 'open', // IPv4-mapped
      'tcp/18089/4': 'local-only', // 0.0.0.0%lo
      'tcp/18090/4': 'open',
    });
    expect(r.entries.filter((e) => e.status === 'not-listening').map((e) => `${e.protocol}/${e.port}/${e.family}`)).toContain('tcp/18083/4');
  });
});

// ---- the reference evaluator as the oracle ----

const PREFIXES: Record<Family, string[]> = {
  4: ['0.0.0.0/0', '10.0.0.0/8', '10.1.0.0/16', '10.1.2.3', '203.0.113.0/24', '0.0.0.0/1', '128.0.0.0/1'],
  6: ['::/0', '2001:db8::/32', '2001:db8::1', '::/1', '8000::/1'],
};
const MEMBERS = ['10.1.2.3', '192.0.2.9', '2001:db8::1'];
const ADDRESS_GROUPS = [
  { id: 'ag4', ip_version: 4 as const, ip_set: ['10.1.0.0-10.1.0.255', '203.0.113.0/24'] },
  { id: 'ag6', ip_version: 6 as const, ip_set: ['2001:db8::/48'] },
  { id: 'ag4-empty', ip_version: 4 as const, ip_set: [] },
];

const ruleArb = fc
  .record({
    action: fc.constantFrom('allow', 'deny'),
    priority: fc.integer({ min: 1, max: 3 }),
    family: fc.constantFrom<Family>(4, 4, 6),
    protocol: fc.constantFrom<string | undefined>(undefined, 'tcp', 'udp', '6'),
    // '1-1000': wider than the port index lists port by port (port-status.ts)
    multiport: fc.constantFrom<string | undefined>(undefined, '22', '22,80', '20-30', '80', '68', '1-1000'),
    remote: fc.constantFrom('any', 'prefix', 'group', 'empty-group', 'ag', 'ag-empty'),
    prefixIndex: fc.nat(),
  })
  .map((r) => {
    const rule: Partial<RuleInput> = { action: r.action as 'allow' | 'deny', priority: r.priority, ethertype: r.family === 4 ? 'IPv4' : 'IPv6' };
    if (r.protocol) rule.protocol = r.protocol;
    if (r.protocol && r.multiport) rule.multiport = r.multiport;
    const prefixes = PREFIXES[r.family];
    if (r.remote === 'prefix') rule.remote_ip_prefix = prefixes[r.prefixIndex % prefixes.length];
    if (r.remote === 'group') rule.remote_group_id = 'default';
    if (r.remote === 'empty-group') rule.remote_group_id = 'empty';
    if (r.remote === 'ag') rule.remote_address_group_id = r.family === 4 ? 'ag4' : 'ag6';
    if (r.remote === 'ag-empty' && r.family === 4) rule.remote_address_group_id = 'ag4-empty';
    return rule;
  });

const policyArb = fc
  .tuple(fc.array(fc.array(ruleArb, { maxLength: 6 }), { minLength: 1, maxLength: 3 }), fc.boolean(), fc.boolean())
  .map(([groups, withFailsafe, dhcp]) => {
    const policy = parsePolicy({
      revision: 1,
      instance: { id: 'i', addresses: ['192.0.2.2'] },
      security_groups: groups.map((rules, g) => ({ id: `g${g}`, rules: rules.map((r, i) => ({ id: `g${g}r${i}`, direction: 'ingress', ...r })) })),
      address_groups: ADDRESS_GROUPS,
      group_members: { default: MEMBERS, empty: [] },
    });
    const platform: PlatformOptions = { ...DEFAULT_PLATFORM, dhcp, failsafeIngress: withFailsafe ? [{ protocol: 6, from: 22, to: 22 }] : [] };
    return { policy, platform };
  });

/** Peer addresses at every boundary of every peer set: the first match is constant between them. */
function boundaryPeers(family: Family): string[] {
  const texts = [...PREFIXES[family], ...MEMBERS, ...ADDRESS_GROUPS.flatMap((a) => a.ip_set)];
  const values = new Set<bigint>([0n, FAMILY_MAX[family]]);
  for (const t of texts) {
    const p = parsePrefix(t, { allowRange: true });
    if (!p.ok || p.range.family !== family) continue;
    for (const v of [p.range.lo - 1n, p.range.lo, p.range.hi, p.range.hi + 1n]) if (v >= 0n && v <= FAMILY_MAX[family]) values.add(v);
  }
  return [...values].map((v) => formatIp(family, v));
}

const PORTS = [22, 68, 80] as const;
const PROTOS = [
  ['tcp', 6],
  ['udp', 17],
] as const;

describe('computePortStatus agrees with the reference evaluator', () => {
  it('open <=> some peer is accepted; allowed_by / denied_by are the first allow / shadowing deny for some peer', () => {
    fc.assert(
      fc.property(policyArb, ({ policy, platform }) => {
        const listeners: Listener[] = [];
        for (const [proto] of PROTOS) for (const port of PORTS) listeners.push({ protocol: proto, family: 4, address: '192.0.2.2', port, process: null }, { protocol: proto, family: 6, address: 'fd00::2', port, process: null });
        const report = computePortStatus(policy, listeners, { ...OPTS, platform });
        const ordered = policy.security_groups.flatMap((g) => rulesInOrder(g.rules).map((rule) => ({ group: g.id, rule })));
        for (const [proto, protoNum] of PROTOS) {
          for (const port of PORTS) {
            for (const family of [4, 6] as const) {
              const e = report.entries.find((x) => x.protocol === proto && x.port === port && (x.family === family || x.family === null))!;
              const packet = (src: string): Packet => ({ direction: 'ingress', family, protocol: protoNum, src, dst: family === 4 ? '192.0.2.2' : 'fd00::2', sport: 40000, dport: port });
              const peers = boundaryPeers(family);
              const verdicts = peers.map((p) => ({ p, ev: evaluate(policy, packet(p), platform) }));
              expect(e.status).toBe(verdicts.some((v) => v.ev.verdict === 'accept') ? 'open' : 'blocked');
              const key = (g: string, r: string) => `${g}/${r}`;
              const platformReason = verdicts.find((v) => v.ev.reason.kind === 'platform');
              if (platformReason) {
                expect(e.allowed_by.map((r) => r.group_id)).toEqual(['platform']);
                expect(e.denied_by).toEqual([]);
                continue;
              }
              const allowed = new Set<string>();
              const denied = new Set<string>();
              for (const { p, ev } of verdicts) {
                const pkt = packet(p);
                let earlierAllow = false;
                for (const [i, { group, rule }] of ordered.entries()) {
                  if (!ruleMatches(policy, rule, pkt)) continue;
                  if (rule.action === 'allow' && !earlierAllow) allowed.add(key(group, rule.id));
                  if (rule.action === 'allow') earlierAllow = true;
                  if (ev.reason.kind === 'rule' && ev.reason.groupId === group && ev.reason.ruleId === rule.id && rule.action === 'deny') {
                    if (ordered.slice(i + 1).some((o) => o.rule.action === 'allow' && ruleMatches(policy, o.rule, pkt))) denied.add(key(group, rule.id));
                  }
                }
              }
              expect(new Set(e.allowed_by.map((r) => key(r.group_id, r.rule_id)))).toEqual(allowed);
              expect(new Set(e.denied_by.map((r) => key(r.group_id, r.rule_id)))).toEqual(denied);
            }
          }
        }
      }),
      { numRuns: 300 },
    );
  }, 60_000); // the reference evaluator re-parses every rule per packet: ~3 s alone, more beside other files
});

describe('computePortStatus: its rule index', () => {
  it('finds, for every entry (listened on or not), what testing every rule finds (analysePort)', () => {
    fc.assert(
      fc.property(policyArb, ({ policy, platform }) => {
        const listeners: Listener[] = PORTS.map((port) => ({ protocol: 'tcp', family: 4, address: '192.0.2.2', port, process: null }));
        const report = computePortStatus(policy, listeners, { ...OPTS, platform });
        const rules = normalizeRules(policy);
        for (const e of report.entries) {
          for (const family of e.family === null ? ([4, 6] as const) : [e.family]) {
            const a = analysePort(rules, platform, e.protocol === 'tcp' ? 6 : 17, e.port, family);
            expect([ids(e.allowed_by), ids(e.denied_by)]).toEqual([ids(a.allowedBy), ids(a.deniedBy)]);
          }
        }
      }),
      { numRuns: 200 },
    );
  });
});
