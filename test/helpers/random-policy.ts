/**
 * Seeded random policies and packets for differential tests: the unit-level
 * model interpreter test (test/unit/compile-interpreter.test.ts) and the kernel
 * differential test use the same generators, so a seed that fails in one can
 * be replayed in the other.
 *
 * Policies are valid documents (SEMANTICS.md section 8) built to make rules
 * collide: several groups, priorities with ties, allow and deny, prefixes
 * inside and around 198.18.0.0/15 and fd00:5ec::/48, remote groups (empty,
 * mixed families, the instance itself), address groups with ranges, multiport
 * lists and ranges, protocol numbers, ICMP type/code, IPv4 and IPv6.
 *
 * `randomPackets` gives packets a kernel test can really send: peers and the
 * instance address only from 198.18.0.0/15 and fd00:5ec::/48 (TESTING.md), the
 * first packet of a connection (ct state new, original direction), ICMP only
 * with types conntrack treats as new (echo request 8 and timestamp 13 for
 * IPv4, echo request 128 for IPv6; code 0), never the instance's own address
 * as peer (that traffic goes over `lo`), never the first/last address of the
 * test ranges. `randomAnyPacket` adds what only the model interpreter can
 * check: other conntrack states, reply direction, loopback, any ICMP type.
 */
import { formatIp, parseIp, prefixRange, type AddrRange, type Family } from '../../src/policy/address.js';
import { peerRanges } from '../../src/policy/address-set.js';
import type { Packet } from '../../src/policy/packet.js';
import { DEFAULT_FLOW_MARK_MASK, DHCP_PORTS, ND_ICMPV6_TYPES, type PlatformOptions, type PortSpec } from '../../src/policy/platform.js';
import { normalizeRules, type NormalizedRule } from '../../src/policy/normalize.js';
import { parsePolicy, parseProtocol, type Policy, type PolicyInput, type PortRange, type RuleInput } from '../../src/policy/schema.js';

// ---- seeded randomness ----

export interface Rng {
  /** the seed this generator started from (print it on failure) */
  readonly seed: number;
  /** uniform in [0, 1) */
  next(): number;
  /** uniform integer in [lo, hi] */
  int(lo: number, hi: number): number;
  bool(pTrue?: number): boolean;
  pick<T>(items: readonly T[]): T;
  /** picks by weight: `[[3, 'a'], [1, 'b']]` */
  weighted<T>(items: readonly (readonly [number, T])[]): T;
}

/** mulberry32: small, fast, good enough for test data, and the same on every platform. */
export function createRng(seed: number): Rng {
  let a = seed >>> 0;
  const next = (): number => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const rng: Rng = {
    seed,
    next,
    int: (lo, hi) => lo + Math.floor(next() * (hi - lo + 1)),
    bool: (p = 0.5) => next() < p,
    pick: (items) => {
      if (!items.length) throw new Error('pick from an empty list');
      return items[Math.floor(next() * items.length)]!;
    },
    weighted: (items) => {
      const total = items.reduce((n, [w]) => n + w, 0);
      let x = next() * total;
      for (const [w, item] of items) {
        if ((x -= w) < 0) return item;
      }
      return items[items.length - 1]![1];
    },
  };
  return rng;
}

// ---- address space ----

/** The only ranges test packets use (TESTING.md). */
export const TEST_RANGES: Record<Family, AddrRange> = {
  4: prefixRange('198.18.0.0/15'),
  6: prefixRange('fd00:5ec::/48'),
};

const V4_BASE = parseIp('198.18.0.0').value;
const V6_BASE = parseIp('fd00:5ec::').value;

/** A test address: mostly in the first two /24 (or /120) so that rules collide, sometimes anywhere in the range. */
export function testAddress(rng: Rng, family: Family): bigint {
  const base = family === 4 ? V4_BASE : V6_BASE;
  const r = TEST_RANGES[family];
  const off = rng.weighted<() => bigint>([
    [6, () => BigInt(rng.int(1, 40))],
    [2, () => BigInt(rng.int(200, 300))],
    [1, () => BigInt(rng.int(1, 1 << 16))],
    [1, () => (family === 4 ? 1n << 16n : 1n << 64n) + BigInt(rng.int(0, 20))],
    [1, () => r.hi - r.lo - BigInt(rng.int(1, 20))],
  ])();
  return base + off;
}

function fmt(family: Family, value: bigint): string {
  return formatIp(family, value);
}

function mask(family: Family, value: bigint, len: number): bigint {
  const host = BigInt((family === 4 ? 32 : 128) - len);
  return (value >> host) << host;
}

/** A prefix inside, around or containing the test range, sometimes with host bits set or as a bare address. */
function randomPrefix(rng: Rng, family: Family): string {
  const kind = rng.weighted<string>([
    [6, 'inside'],
    [2, 'bare'],
    [1, 'any'],
    [1, 'around'],
    [1, 'hostbits'],
  ]);
  if (kind === 'any') return family === 4 ? '0.0.0.0/0' : '::/0';
  if (kind === 'bare') return fmt(family, testAddress(rng, family));
  if (kind === 'around') {
    return rng.pick(
      family === 4
        ? ['198.16.0.0/12', '198.18.0.0/15', '198.18.0.0/16', '198.19.0.0/16', '198.20.0.0/16', '198.17.255.0/24', '198.0.0.0/8', '203.0.113.0/24']
        : ['fd00::/16', 'fd00:5ec::/48', 'fd00:5ed::/48', 'fd00:5eb:ffff::/48', 'fd00:5ec::/47', '2001:db8::/32'],
    );
  }
  const lens = family === 4 ? [16, 20, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32] : [48, 64, 100, 120, 121, 122, 124, 126, 127, 128];
  const len = rng.pick(lens);
  const addr = testAddress(rng, family);
  if (kind === 'hostbits') return `${fmt(family, addr)}/${len}`;
  return `${fmt(family, mask(family, addr, len))}/${len}`;
}

export function randomIpSetEntry(rng: Rng, family: Family): string {
  const kind = rng.weighted<string>([
    [2, 'ip'],
    [2, 'cidr'],
    [3, 'range'],
  ]);
  if (kind === 'ip') return fmt(family, testAddress(rng, family));
  if (kind === 'cidr') return randomPrefix(rng, family);
  const a = testAddress(rng, family);
  const b = rng.bool(0.3) ? a : a + BigInt(rng.int(1, 40));
  return `${fmt(family, a)}-${fmt(family, b)}`;
}

// ---- policies ----

const PORT_ITEMS = ['22', '53', '80', '443', '8080', '1-1024', '1000-2000', '3306', '5432', '40000-40100', '65535', '1', '6000-6010', '67', '68', '546', '547'];

function randomMultiport(rng: Rng): string {
  const n = rng.weighted<number>([
    [4, 1],
    [2, 2],
    [1, 4],
  ]);
  const items = new Set<string>();
  while (items.size < n) items.add(rng.bool(0.8) ? rng.pick(PORT_ITEMS) : String(rng.int(1, 65535)));
  return [...items].join(',');
}

export interface RandomPolicyOptions {
  /** at most this many security groups (default 4) */
  maxGroups?: number;
  /** at most this many rules per group (default 8) */
  maxRules?: number;
}

/**
 * A random valid policy document (plain JSON, as the controller would send it).
 * Defaults are sometimes left out and absent fields sometimes sent as null, as
 * Huawei does.
 */
export function randomPolicy(rng: Rng, opts: RandomPolicyOptions = {}): PolicyInput {
  const maxGroups = opts.maxGroups ?? 4;
  const maxRules = opts.maxRules ?? 8;
  const instance4 = fmt(4, V4_BASE + BigInt(rng.int(1, 40)));
  const instance6 = fmt(6, V6_BASE + BigInt(rng.int(1, 40)));
  const groupCount = rng.int(1, maxGroups);
  const groupIds = Array.from({ length: groupCount }, (_, i) => `sg-${i}`);

  // remote groups: the policy's own groups (the instance is a member of them) and a few others
  const groupMembers: Record<string, string[]> = {};
  const remoteGroupIds = [...groupIds.filter(() => rng.bool(0.5)), ...Array.from({ length: rng.int(0, 3) }, (_, i) => `rg-${i}`)];
  for (const id of remoteGroupIds) {
    const members = new Set<string>();
    if (id.startsWith('sg-')) {
      members.add(instance4);
      members.add(instance6);
    }
    const n = rng.weighted<number>([
      [1, 0],
      [4, rng.int(1, 6)],
    ]);
    for (let i = 0; i < n; i++) {
      const family: Family = rng.bool(0.6) ? 4 : 6;
      members.add(fmt(family, testAddress(rng, family)));
    }
    groupMembers[id] = [...members];
  }

  const addressGroups: { id: string; ip_version: Family; ip_set: string[]; name?: string }[] = [];
  for (let i = 0, n = rng.int(0, 3); i < n; i++) {
    const family: Family = rng.bool(0.6) ? 4 : 6;
    const size = rng.weighted<number>([
      [1, 0],
      [5, rng.int(1, 5)],
    ]);
    addressGroups.push({ id: `ag-${i}`, ip_version: family, ip_set: Array.from({ length: size }, () => randomIpSetEntry(rng, family)) });
  }

  const securityGroups = groupIds.map((gid) => {
    const rules: RuleInput[] = [];
    for (let i = 0, n = rng.int(0, maxRules); i < n; i++) {
      const family: Family = rng.bool(0.6) ? 4 : 6;
      const rule: RuleInput = { id: `r-${gid.slice(3)}-${i}`, direction: rng.bool(0.6) ? 'ingress' : 'egress' };
      const priority = rng.pick([1, 1, 1, 2, 5, 100]);
      if (priority !== 1 || rng.bool(0.5)) rule.priority = priority;
      const action = rng.bool(0.35) ? 'deny' : 'allow';
      if (action === 'deny' || rng.bool(0.5)) rule.action = action;
      if (family === 6 || rng.bool(0.5)) rule.ethertype = family === 4 ? 'IPv4' : 'IPv6';
      const icmpName = family === 4 ? 'icmp' : 'icmpv6';
      const protocol = rng.weighted<string | null | undefined>([
        [2, undefined],
        [1, null],
        [1, ''],
        [5, 'tcp'],
        [3, 'udp'],
        [1, 'sctp'],
        [2, icmpName],
        [1, '6'],
        [1, '17'],
        [1, family === 4 ? '1' : '58'],
        [1, '47'],
        [1, '253'],
      ]);
      if (protocol !== undefined) rule.protocol = protocol;
      const proto = parseProtocol(protocol);
      const p = proto.ok ? proto.proto : null;
      if (p === 6 || p === 17 || p === 132) {
        if (rng.bool(0.7)) rule.multiport = randomMultiport(rng);
        else if (rng.bool(0.3)) rule.multiport = null;
      }
      if (p === 1 || p === 58) {
        if (rng.bool(0.6)) {
          rule.icmp_type = rng.pick(family === 4 ? [8, 8, 13, 0, 3] : [128, 128, 129, 1, 135]);
          if (rng.bool(0.4)) rule.icmp_code = rng.pick([0, 0, 1]);
        }
      }
      const remote = rng.weighted<string>([
        [4, 'prefix'],
        [2, 'none'],
        [2, 'group'],
        [2, 'address_group'],
      ]);
      if (remote === 'prefix') rule.remote_ip_prefix = randomPrefix(rng, family);
      else if (remote === 'group' && remoteGroupIds.length) rule.remote_group_id = rng.pick(remoteGroupIds);
      else if (remote === 'address_group') {
        const fitting = addressGroups.filter((a) => a.ip_version === family);
        if (fitting.length) rule.remote_address_group_id = rng.pick(fitting).id;
      }
      if (rng.bool(0.1)) {
        if (!rule.remote_ip_prefix) rule.remote_ip_prefix = null;
        if (!rule.remote_group_id) rule.remote_group_id = null;
      }
      if (rng.bool(0.1)) rule.description = rng.bool(0.5) ? null : `rule ${i} of ${gid}`;
      rules.push(rule);
    }
    return { id: gid, name: gid, rules };
  });

  const doc: PolicyInput = {
    revision: rng.int(0, 1000),
    instance: { id: `ecs-${rng.seed >>> 0}`, addresses: rng.bool(0.5) ? [instance4, instance6] : [instance6, instance4] },
    security_groups: securityGroups,
  };
  if (addressGroups.length || rng.bool(0.5)) doc.address_groups = addressGroups;
  if (remoteGroupIds.length || rng.bool(0.5)) doc.group_members = groupMembers;
  return doc;
}

// ---- packets ----

const parsed = new WeakMap<object, Policy>();

/** The validated policy of a document (cached: generators are called per packet). */
function toPolicy(policy: Policy | PolicyInput): Policy {
  let p = parsed.get(policy);
  if (!p) parsed.set(policy, (p = parsePolicy(policy)));
  return p;
}

/** Edges of intervals (lo-1, lo, lo+1, hi-1, hi, hi+1) of one family, clipped to the test range, without the instance's own addresses. */
function edgesInTestRange(ranges: readonly AddrRange[], family: Family, own: ReadonlySet<bigint>): bigint[] {
  const test = TEST_RANGES[family];
  const out = new Set<bigint>();
  for (const r of ranges) {
    if (r.family !== family) continue;
    for (const v of [r.lo - 1n, r.lo, r.lo + 1n, r.hi - 1n, r.hi, r.hi + 1n]) out.add(v);
  }
  // never the first or last address of the test range
  return [...out].filter((v) => v > test.lo && v < test.hi && !own.has(v));
}

/** Every address interval the policy mentions: prefixes, address group entries, group members. */
function policyRanges(policy: Policy): AddrRange[] {
  const out: AddrRange[] = [];
  for (const g of policy.security_groups) for (const r of g.rules) if (r.remote_ip_prefix) out.push(prefixRange(r.remote_ip_prefix));
  for (const ag of policy.address_groups) for (const e of ag.ip_set) out.push(prefixRange(e));
  for (const members of Object.values(policy.group_members)) {
    for (const m of members) {
      const ip = parseIp(m);
      out.push({ family: ip.family, lo: ip.value, hi: ip.value });
    }
  }
  return out;
}

function portEdges(ranges: readonly PortRange[]): number[] {
  const out = new Set<number>();
  for (const [a, b] of ranges) for (const v of [a - 1, a, a + 1, b - 1, b, b + 1]) if (v >= 1 && v <= 65535) out.add(v);
  return [...out];
}

function portCandidates(rules: readonly NormalizedRule[], protocol: number): number[] {
  const out = new Set<number>([22, 53, 80, 443, 1, 65535]);
  for (const r of rules) {
    if (r.ports && (r.protocol === null || r.protocol === protocol)) for (const p of portEdges(r.ports)) out.add(p);
  }
  return [...out];
}

type ProtocolKind = 'tcp' | 'udp' | 'sctp' | 'icmp' | 'other';

/** Protocols of non-port, non-ICMP rules of the policy (e.g. 47), plus 253 (experimental: conntrack tracks it generically). */
function otherProtocols(rules: readonly NormalizedRule[]): number[] {
  const out = new Set<number>([253]);
  for (const r of rules) if (r.protocol !== null && ![1, 6, 17, 58, 132].includes(r.protocol)) out.add(r.protocol);
  return [...out];
}

function kindOf(protocol: number | null): ProtocolKind | null {
  if (protocol === null) return null;
  if (protocol === 6) return 'tcp';
  if (protocol === 17) return 'udp';
  if (protocol === 132) return 'sctp';
  if (protocol === 1 || protocol === 58) return 'icmp';
  return 'other';
}

export interface RandomPacketOptions {
  /** protocols to draw from (default: tcp, udp, sctp, ICMP of the family, and "other": the policy's other protocol numbers and 253) */
  protocols?: readonly ProtocolKind[];
}

interface PacketContext {
  rules: NormalizedRule[];
  own: Record<Family, string[]>;
  families: Family[];
  ownValues: Set<bigint>;
  candidates: Record<Family, bigint[]>;
  others: number[];
}

const contexts = new WeakMap<Policy, PacketContext>();

/** What the packet generator derives from a policy, once per policy. */
function packetContext(policy: Policy): PacketContext {
  const cached = contexts.get(policy);
  if (cached) return cached;
  const rules = normalizeRules(policy);
  const own: Record<Family, string[]> = { 4: [], 6: [] };
  for (const a of policy.instance.addresses) {
    const ip = parseIp(a);
    // test packets never use other addresses (TESTING.md rule 2)
    if (TEST_RANGES[ip.family].lo <= ip.value && ip.value <= TEST_RANGES[ip.family].hi) own[ip.family].push(a);
  }
  const families = ([4, 6] as const).filter((f) => own[f].length > 0);
  if (!families.length) throw new Error('randomPackets: the instance has no address in 198.18.0.0/15 or fd00:5ec::/48');
  const ownValues = new Set(policy.instance.addresses.map((a) => parseIp(a).value));
  const all = policyRanges(policy);
  const ctx: PacketContext = {
    rules,
    own,
    families,
    ownValues,
    candidates: { 4: edgesInTestRange(all, 4, ownValues), 6: edgesInTestRange(all, 6, ownValues) },
    others: otherProtocols(rules),
  };
  contexts.set(policy, ctx);
  return ctx;
}

/**
 * `n` random first packets of new connections (ingress or egress, IPv4 or
 * IPv6) that a kernel test can send; see the file comment for the limits.
 * Most packets are aimed at one rule of the policy (its direction, family,
 * protocol, the edges of its ports and peers) so that rules get hit, missed by
 * one, and shadowed; the others are drawn from the whole test range.
 */
export function randomPackets(rng: Rng, policyDoc: Policy | PolicyInput, n: number, opts: RandomPacketOptions = {}): Packet[] {
  const policy = toPolicy(policyDoc);
  const { rules, own, families, ownValues, candidates, others } = packetContext(policy);
  const protocols = opts.protocols ?? ['tcp', 'udp', 'sctp', 'icmp', 'other'];
  const packets: Packet[] = [];
  while (packets.length < n) {
    const usable = rules.filter((r) => own[r.family].length > 0);
    const aim = usable.length && rng.bool(0.7) ? rng.pick(usable) : null;
    const family = aim ? aim.family : rng.pick(families);
    const aimedPeers = aim ? edgesInTestRange(peerRanges(aim.peers), family, ownValues) : [];
    let peerValue = aimedPeers.length && rng.bool(0.8) ? rng.pick(aimedPeers) : candidates[family].length && rng.bool(0.6) ? rng.pick(candidates[family]) : testAddress(rng, family);
    while (ownValues.has(peerValue)) peerValue += 100n;
    const peer = fmt(family, peerValue);
    const self = rng.pick(own[family]);
    const direction = aim ? aim.direction : rng.bool(0.6) ? 'ingress' : 'egress';
    const aimedKind = aim ? kindOf(aim.protocol) : null;
    const kind: ProtocolKind =
      aimedKind && protocols.includes(aimedKind) && rng.bool(0.9)
        ? aimedKind
        : rng.weighted(protocols.map((p) => [p === 'tcp' ? 5 : p === 'udp' ? 3 : p === 'icmp' ? 2 : 1, p] as const));
    const packet: Packet = {
      direction,
      family,
      protocol: 0,
      src: direction === 'ingress' ? peer : self,
      dst: direction === 'ingress' ? self : peer,
      ct: 'new',
      ctDirection: 'original',
    };
    if (kind === 'tcp' || kind === 'udp' || kind === 'sctp') {
      packet.protocol = kind === 'tcp' ? 6 : kind === 'udp' ? 17 : 132;
      packet.sport = rng.int(1024, 65535);
      const aimedPorts = aim?.ports ? portEdges(aim.ports) : [];
      packet.dport = aimedPorts.length && rng.bool(0.8) ? rng.pick(aimedPorts) : rng.bool(0.8) ? rng.pick(portCandidates(rules, packet.protocol)) : rng.int(1, 65535);
    } else if (kind === 'icmp') {
      packet.protocol = family === 4 ? 1 : 58;
      packet.icmpType = family === 4 ? rng.pick([8, 13]) : 128;
      packet.icmpCode = 0;
    } else {
      packet.protocol = aim && aimedKind === 'other' && rng.bool(0.8) ? aim.protocol! : rng.pick(others);
    }
    packets.push(packet);
  }
  return packets;
}

/**
 * One packet of any kind, for checks that need no kernel: a `randomPackets`
 * packet, sometimes changed to another conntrack state or direction, the
 * loopback interface, any ICMP type/code, or a DHCP/DNS/controller port.
 */
export function randomAnyPacket(rng: Rng, policyDoc: Policy | PolicyInput, platform?: PlatformOptions): Packet {
  const policy = toPolicy(policyDoc);
  const p = randomPackets(rng, policy, 1)[0]!;
  if (rng.bool(0.3)) {
    p.ct = rng.pick(['established', 'related', 'invalid', 'untracked'] as const);
    if (p.ct === 'established' && rng.bool(0.5)) p.ctDirection = 'reply';
  }
  if (rng.bool(0.05)) p.iface = 'lo';
  else if (rng.bool(0.1)) p.iface = rng.pick(['eth0', 'ens3', 'lo0', 'veth-lo']);
  if (p.protocol === 1 || p.protocol === 58) {
    if (rng.bool(0.5)) p.icmpType = rng.bool(0.3) && p.family === 6 ? rng.pick(ND_ICMPV6_TYPES) : rng.int(0, 255);
    if (rng.bool(0.3)) p.icmpCode = rng.int(0, 3);
  }
  if ((p.protocol === 17 || p.protocol === 6) && rng.bool(0.15)) {
    p.dport = rng.pick([DHCP_PORTS[p.family].in, DHCP_PORTS[p.family].out, 53, ...(platform?.controller ? [platform.controller.port] : [])]);
  }
  if (platform?.controller && p.direction === 'egress' && rng.bool(0.2)) {
    const addrs = platform.controller.addresses.filter((a) => parseIp(a).family === p.family);
    if (addrs.length) {
      p.dst = rng.pick(addrs);
      if (p.protocol === 6) p.dport = platform.controller.port;
    }
  }
  return p;
}

/** Random platform options: every switch on or off, sometimes a controller (with or without DNS) and failsafe ports. */
export function randomPlatform(rng: Rng): PlatformOptions {
  const spec = (): PortSpec => {
    const from = rng.pick([22, 53, 80, 443, 8000]);
    return { protocol: rng.pick([6, 17, 132] as const), from, to: from + rng.pick([0, 0, 10]) };
  };
  return {
    loopback: rng.bool(0.7),
    flowMarkMask: rng.pick([0, DEFAULT_FLOW_MARK_MASK, 0x00ff0000]),
    icmpv6Nd: rng.bool(0.7),
    dhcp: rng.bool(0.7),
    controller: rng.bool(0.4)
      ? {
          addresses: rng.bool(0.5) ? ['198.18.1.1'] : ['198.18.1.1', 'fd00:5ec::1:1'],
          port: rng.pick([443, 8443, 7000]),
          dns: rng.bool(0.5),
        }
      : null,
    failsafeIngress: rng.bool(0.3) ? [spec()] : [],
    failsafeEgress: rng.bool(0.2) ? [spec()] : [],
  };
}
