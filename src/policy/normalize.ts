/**
 * The policy in the form the compiler and the port-status code work with:
 * rules flattened in match order (SEMANTICS section 2), protocols as numbers,
 * ports and peers as merged intervals. Input must have passed `parsePolicy`.
 */
import { mergeRanges, prefixRange, fullRange, type Family } from './address.js';
import { AddressSet, type Peers } from './address-set.js';
import { packedMembers } from './packed-members.js';
import { parseMultiport, parseProtocol, type Policy, type PortRange } from './schema.js';

export type Remote =
  | { kind: 'any' }
  | { kind: 'prefix'; prefix: string }
  | { kind: 'group'; id: string }
  | { kind: 'address_group'; id: string };

export interface NormalizedRule {
  groupId: string;
  groupIndex: number;
  ruleId: string;
  /** index of the rule in its group's `rules` array */
  ruleIndex: number;
  direction: 'ingress' | 'egress';
  priority: number;
  action: 'allow' | 'deny';
  family: Family;
  /** IP protocol number, null = all protocols */
  protocol: number | null;
  /** merged destination-port ranges; null = all ports */
  ports: PortRange[] | null;
  /** the rule's ports in multiport notation, in the user's order, rebuilt from the parsed numbers (for display) */
  multiport: string | null;
  icmpType: number | null;
  icmpCode: number | null;
  remote: Remote;
  /**
   * peer address intervals of the rule's family, sorted and disjoint; empty =
   * matches nothing. Merged where neighbours touch. The members of a remote
   * group are single addresses, packed (an AddressSet shared by every rule on
   * the group and by the compiled member set, see address-set.ts).
   */
  peers: Peers;
}

export function mergePorts(ranges: readonly PortRange[]): PortRange[] {
  // most rules name one port or range: nothing to sort or merge
  if (ranges.length === 1) return [[ranges[0]![0], ranges[0]![1]]];
  const sorted = [...ranges].sort((a, b) => a[0] - b[0]);
  const out: PortRange[] = [];
  for (const [a, b] of sorted) {
    const last = out[out.length - 1];
    if (last && a <= last[1] + 1) last[1] = Math.max(last[1], b);
    else out.push([a, b]);
  }
  return out;
}

/**
 * Peer intervals of a remote, per family, with references resolved against
 * the document: sorted, merged, non-overlapping.
 */
export function resolvePeers(policy: Policy, family: Family, remote: Remote): Peers {
  switch (remote.kind) {
    case 'any':
      return [fullRange(family)];
    case 'prefix':
      return [prefixRange(remote.prefix, false)];
    case 'group': {
      // a packed list (packed-members.ts): a copy of its set of this family (the membership fast path changes the compiled set in place)
      const packed = packedMembers(policy.group_members, remote.id);
      if (packed) return (family === 4 ? packed.v4 : packed.v6).clone();
      const members = Object.hasOwn(policy.group_members, remote.id) ? policy.group_members[remote.id]! : [];
      // validated by parsePolicy; single addresses, neighbours not merged: the compiler's member set is this very set
      return AddressSet.fromValidTexts(family, members);
    }
    case 'address_group': {
      const ag = policy.address_groups.find((a) => a.id === remote.id);
      if (!ag || ag.ip_version !== family) return [];
      return mergeRanges(ag.ip_set.map((e) => prefixRange(e, true)));
    }
  }
}

const portText = ([a, b]: PortRange): string => (a === b ? String(a) : `${a}-${b}`);

/** Total order of rules inside one group: priority ascending, deny before allow, then document order. */
export function compareInGroup(a: Pick<NormalizedRule, 'priority' | 'action' | 'ruleIndex'>, b: typeof a): number {
  if (a.priority !== b.priority) return a.priority - b.priority;
  if (a.action !== b.action) return a.action === 'deny' ? -1 : 1;
  return a.ruleIndex - b.ruleIndex;
}

/** Every rule of the policy, in match order: groups in association order, then `compareInGroup`. */
export function normalizeRules(policy: Policy): NormalizedRule[] {
  const out: NormalizedRule[] = [];
  // Many rules share a remote (a group, an address group): resolve each once.
  const peerCache = new Map<string, Peers>();
  // one rule in ten thousand names a new remote: the key is built only for prefixes, groups and address groups
  const anyPeers: Partial<Record<Family, Peers>> = {};
  const peersOf = (family: Family, remote: Remote): Peers => {
    if (remote.kind === 'any') return (anyPeers[family] ??= resolvePeers(policy, family, remote));
    const key = `${family}|${remote.kind}|${remote.kind === 'prefix' ? remote.prefix : remote.id}`;
    let peers = peerCache.get(key);
    if (!peers) peerCache.set(key, (peers = resolvePeers(policy, family, remote)));
    return peers;
  };
  policy.security_groups.forEach((g, groupIndex) => {
    const rules: NormalizedRule[] = g.rules.map((r, ruleIndex) => {
      const family: Family = r.ethertype === 'IPv6' ? 6 : 4;
      const proto = parseProtocol(r.protocol);
      if (!proto.ok) throw new Error(`unvalidated policy: ${proto.error}`);
      let ports: PortRange[] | null = null;
      let multiport: string | null = null;
      if (r.multiport) {
        const mp = parseMultiport(r.multiport);
        if (!mp.ok) throw new Error(`unvalidated policy: ${mp.error}`);
        ports = mergePorts(mp.ranges);
        // rebuilt from the numbers: the user's text may hold tabs or newlines around items, which must not reach nft comments
        multiport = mp.ranges.length === 1 ? portText(mp.ranges[0]!) : mp.ranges.map(portText).join(',');
      }
      const remote: Remote = r.remote_ip_prefix
        ? { kind: 'prefix', prefix: r.remote_ip_prefix }
        : r.remote_group_id
          ? { kind: 'group', id: r.remote_group_id }
          : r.remote_address_group_id
            ? { kind: 'address_group', id: r.remote_address_group_id }
            : { kind: 'any' };
      return {
        groupId: g.id,
        groupIndex,
        ruleId: r.id,
        ruleIndex,
        direction: r.direction,
        priority: r.priority,
        action: r.action,
        family,
        protocol: proto.proto,
        ports,
        multiport,
        icmpType: r.icmp_type ?? null,
        icmpCode: r.icmp_code ?? null,
        remote,
        peers: peersOf(family, remote),
      };
    });
    rules.sort(compareInGroup);
    out.push(...rules);
  });
  return out;
}

const PROTOCOL_TEXT = new Map<number, string>([
  [1, 'icmp'],
  [6, 'tcp'],
  [17, 'udp'],
  [58, 'icmpv6'],
  [132, 'sctp'],
]);

export function protocolName(p: number | null): string {
  if (p === null) return 'all';
  return PROTOCOL_TEXT.get(p) ?? String(p);
}

export function remoteText(r: Remote, family: Family): string {
  switch (r.kind) {
    case 'any':
      return family === 4 ? '0.0.0.0/0' : '::/0';
    case 'prefix':
      return r.prefix;
    case 'group':
      return `group ${r.id}`;
    case 'address_group':
      return `address group ${r.id}`;
  }
}

/** One-line human summary: `ingress allow IPv4 tcp 80,443 from 0.0.0.0/0`. */
export function describeRule(r: NormalizedRule): string {
  // one concatenation, no parts list: the compiler describes every rule of a policy (10k rules: 10k calls)
  let text = `${r.direction} ${r.action} IPv${r.family} ${protocolName(r.protocol)}`;
  if (r.multiport) text += ` ${r.multiport}`;
  if (r.icmpType !== null) text += r.icmpCode !== null ? ` type ${r.icmpType} code ${r.icmpCode}` : ` type ${r.icmpType}`;
  return `${text} ${r.direction === 'ingress' ? 'from' : 'to'} ${remoteText(r.remote, r.family)}`;
}
