/**
 * The reference evaluator: SEMANTICS.md sections 2-4 as a pure function from
 * (policy, platform options, packet) to a verdict and its reason. It is the
 * oracle every other part is tested against, so it is written for obviousness,
 * not speed, and shares no matching code with the nft compiler.
 */
import { parseIp, parsePrefix, type Family } from './address.js';
import type { Packet } from './packet.js';
import { DHCP_PORTS, ND_ICMPV6_TYPES, type PlatformOptions, DEFAULT_PLATFORM } from './platform.js';
import { parseMultiport, parseProtocol, type Policy, type Rule } from './schema.js';

export type Reason =
  | { kind: 'platform'; name: 'loopback' | 'icmpv6-nd' | 'dhcp' | 'controller' | 'dns' | 'failsafe' }
  | { kind: 'stateful'; name: 'invalid' | 'reply' | 'related' | 'established' }
  | { kind: 'rule'; groupId: string; groupIndex: number; ruleId: string; priority: number; action: 'allow' | 'deny' }
  | { kind: 'default' };

export interface Evaluation {
  verdict: 'accept' | 'drop';
  reason: Reason;
}

const PORT_PROTOCOLS = new Set([6, 17, 132]);

function addressIn(addr: string, family: Family, prefixOrRange: string): boolean {
  const p = parsePrefix(prefixOrRange, { allowRange: true });
  if (!p.ok || p.range.family !== family) return false;
  const v = parseIp(addr).value;
  return p.range.lo <= v && v <= p.range.hi;
}

function peerMatches(policy: Policy, rule: Rule, family: Family, peer: string): boolean {
  if (rule.remote_ip_prefix) return addressIn(peer, family, rule.remote_ip_prefix);
  if (rule.remote_group_id) {
    const members = Object.hasOwn(policy.group_members, rule.remote_group_id) ? policy.group_members[rule.remote_group_id]! : [];
    return members.some((m) => {
      const ip = parseIp(m);
      return ip.family === family && ip.value === parseIp(peer).value;
    });
  }
  if (rule.remote_address_group_id) {
    const ag = policy.address_groups.find((a) => a.id === rule.remote_address_group_id);
    if (!ag || ag.ip_version !== family) return false;
    return ag.ip_set.some((e) => addressIn(peer, family, e));
  }
  return true;
}

/** Does `rule` match `packet`? (direction, ethertype, protocol, ports / ICMP type and code, peer) */
export function ruleMatches(policy: Policy, rule: Rule, packet: Packet): boolean {
  if (rule.direction !== packet.direction) return false;
  const family: Family = rule.ethertype === 'IPv6' ? 6 : 4;
  if (family !== packet.family) return false;
  const proto = parseProtocol(rule.protocol);
  if (!proto.ok) return false;
  if (proto.proto !== null && proto.proto !== packet.protocol) return false;
  if (rule.multiport) {
    const mp = parseMultiport(rule.multiport);
    if (!mp.ok || !PORT_PROTOCOLS.has(packet.protocol) || packet.dport === undefined) return false;
    const dport = packet.dport;
    if (!mp.ranges.some(([a, b]) => a <= dport && dport <= b)) return false;
  }
  if (rule.icmp_type !== undefined && rule.icmp_type !== null) {
    if (packet.icmpType !== rule.icmp_type) return false;
    if (rule.icmp_code !== undefined && rule.icmp_code !== null && packet.icmpCode !== rule.icmp_code) return false;
  }
  const peer = packet.direction === 'ingress' ? packet.src : packet.dst;
  return peerMatches(policy, rule, family, peer);
}

/** Rules of one group in evaluation order: priority ascending, deny before allow at equal priority. */
export function rulesInOrder(rules: readonly Rule[]): Rule[] {
  return rules
    .map((r, i) => ({ r, i }))
    .sort((a, b) => a.r.priority - b.r.priority || (a.r.action === b.r.action ? 0 : a.r.action === 'deny' ? -1 : 1) || a.i - b.i)
    .map((x) => x.r);
}

function platformVerdict(opts: PlatformOptions, p: Packet): Reason | null {
  const ingress = p.direction === 'ingress';
  if (opts.loopback && p.iface === 'lo') return { kind: 'platform', name: 'loopback' };
  if (opts.icmpv6Nd && p.family === 6 && p.protocol === 58 && p.icmpType !== undefined && (ND_ICMPV6_TYPES as readonly number[]).includes(p.icmpType)) {
    return { kind: 'platform', name: 'icmpv6-nd' };
  }
  if (opts.dhcp && p.protocol === 17 && p.dport === (ingress ? DHCP_PORTS[p.family].in : DHCP_PORTS[p.family].out)) {
    return { kind: 'platform', name: 'dhcp' };
  }
  if (!ingress && opts.controller) {
    const c = opts.controller;
    const toController = (e: { addresses: string[]; port: number }) =>
      p.protocol === 6 && p.dport === e.port && e.addresses.some((a) => parseIp(a).family === p.family && parseIp(a).value === parseIp(p.dst).value);
    if ([c, ...(c.more ?? [])].some(toController)) return { kind: 'platform', name: 'controller' };
    if (c.dns && (p.protocol === 6 || p.protocol === 17) && p.dport === 53) return { kind: 'platform', name: 'dns' };
  }
  const failsafe = ingress ? opts.failsafeIngress : opts.failsafeEgress;
  if (failsafe.some((f) => f.protocol === p.protocol && p.dport !== undefined && f.from <= p.dport && p.dport <= f.to)) {
    return { kind: 'platform', name: 'failsafe' };
  }
  return null;
}

/**
 * The verdict for `packet` under `policy`. `policy` must be valid (parsePolicy).
 *
 * Order: platform rules; `ct state invalid` dropped; on ingress only replies
 * (`ct direction reply`, established) and related packets skip the rules, so an
 * inbound-initiated connection is re-checked at every packet; on egress every
 * established or related packet skips them; then the groups' rules; then drop.
 */
export function evaluate(policy: Policy, packet: Packet, platform: PlatformOptions = DEFAULT_PLATFORM): Evaluation {
  const plat = platformVerdict(platform, packet);
  if (plat) return { verdict: 'accept', reason: plat };
  const ct = packet.ct ?? 'new';
  const ctDir = packet.ctDirection ?? 'original';
  if (ct === 'invalid') return { verdict: 'drop', reason: { kind: 'stateful', name: 'invalid' } };
  if (ct === 'related') return { verdict: 'accept', reason: { kind: 'stateful', name: 'related' } };
  if (ct === 'established') {
    if (packet.direction === 'egress') return { verdict: 'accept', reason: { kind: 'stateful', name: 'established' } };
    if (ctDir === 'reply') return { verdict: 'accept', reason: { kind: 'stateful', name: 'reply' } };
  }
  for (const [groupIndex, group] of policy.security_groups.entries()) {
    for (const rule of rulesInOrder(group.rules)) {
      if (ruleMatches(policy, rule, packet)) {
        return {
          verdict: rule.action === 'allow' ? 'accept' : 'drop',
          reason: { kind: 'rule', groupId: group.id, groupIndex, ruleId: rule.id, priority: rule.priority, action: rule.action },
        };
      }
    }
  }
  return { verdict: 'drop', reason: { kind: 'default' } };
}

export function describeReason(r: Reason): string {
  switch (r.kind) {
    case 'platform':
      return `platform rule "${r.name}" (always allowed, see the agent configuration)`;
    case 'stateful':
      return r.name === 'invalid' ? 'conntrack state invalid (always dropped)' : `stateful: ${r.name} packet of a tracked connection (always allowed)`;
    case 'rule':
      return `rule ${r.ruleId} (priority ${r.priority}, ${r.action}) of security group ${r.groupId} (#${r.groupIndex + 1} in association order)`;
    case 'default':
      return 'no rule matched: default drop';
  }
}
