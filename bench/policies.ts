/**
 * Synthetic policies for benchmarks: realistic shapes (many ports from the
 * Internet, office ranges, remote groups, deny rules interleaved by priority),
 * deterministic for a given size.
 */
import { formatIp } from '../src/policy/address.js';
import type { PolicyInput } from '../src/policy/schema.js';

function v4(i: number): string {
  // 198.18.0.0/15 holds 131072 addresses
  const n = (198 << 24) + (18 << 16) + (i % 131072);
  return [n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255].join('.');
}

// members in the text the controller sends (canonical: formatIp), so that the agent holds them as it does a controller's
function v6(i: number): string {
  return formatIp(6, (0xfd0005ecn << 96n) | BigInt(i >>> 0));
}

export interface SyntheticOptions {
  rules: number;
  /** members of the remote group `sg-app` (IPv4 + IPv6 split) */
  members?: number;
}

/** `rules` rules over 3 groups: ports from 0/0, ports from /24 ranges, denies, remote-group rules. */
export function syntheticPolicy(opts: SyntheticOptions): PolicyInput {
  const members = opts.members ?? 100;
  const groups: { id: string; name: string; rules: NonNullable<PolicyInput['security_groups'][number]['rules']> }[] = [
    { id: 'sg-edge', name: 'edge', rules: [] },
    { id: 'sg-app', name: 'app', rules: [] },
    { id: 'default', name: 'default', rules: [] },
  ];
  for (let i = 0; i < opts.rules; i++) {
    const g = groups[i % 3]!;
    const port = 1024 + ((i * 7) % 60000);
    const kind = i % 10;
    const id = `r${i}`;
    const priority = 1 + (i % 100);
    if (kind < 5) {
      g.rules.push({ id, direction: 'ingress', priority, action: 'allow', protocol: i % 2 ? 'tcp' : 'udp', multiport: `${port}`, remote_ip_prefix: '0.0.0.0/0' });
    } else if (kind < 7) {
      g.rules.push({
        id,
        direction: 'ingress',
        priority,
        action: 'allow',
        protocol: 'tcp',
        multiport: `${port}-${port + 5}`,
        remote_ip_prefix: `198.${18 + (i % 2)}.${i % 256}.0/24`,
      });
    } else if (kind === 7) {
      g.rules.push({ id, direction: 'ingress', priority, action: 'deny', protocol: 'tcp', multiport: `${port}`, remote_ip_prefix: `198.18.${i % 256}.${i % 200}/32` });
    } else if (kind === 8) {
      g.rules.push({ id, direction: 'ingress', priority, action: 'allow', protocol: 'tcp', multiport: `${port}`, remote_group_id: 'sg-app' });
    } else {
      g.rules.push({ id, direction: 'egress', priority, action: 'allow', protocol: 'tcp', multiport: `${port}`, remote_ip_prefix: '0.0.0.0/0' });
    }
  }
  const memberList: string[] = [];
  for (let i = 0; i < members; i++) memberList.push(i % 4 === 3 ? v6(i) : v4(i));
  return {
    revision: 1,
    instance: { id: 'bench-1', addresses: ['198.18.0.10', 'fd00:5ec::10'] },
    security_groups: groups,
    address_groups: [],
    group_members: { 'sg-app': memberList, default: ['198.18.0.10'] },
  };
}

export interface PacketPolicyOptions {
  rules: number;
  /** members of remote group `sg-v4` (spread: every other address of 198.18.128.0/17 and up, never the lab client) */
  v4Members: number;
  /** members of remote group `sg-v6` (every other address from fd00:5ec::1:0) */
  v6Members: number;
  /** the bench traffic's ports; only the last rule allows them from the client */
  benchPorts: [number, number];
  /** also allow this UDP port from the client (rule `bench-udp`, the last of its chain) */
  udpPort?: number;
  /** IPv6 too: a tenth of the rules (the kind-3 prefix rules) on fd00:5ec:1:X::/64 prefixes, and rule `bench-v6` allowing benchPorts from fd00:5ec::/120 last */
  v6?: boolean;
}

/**
 * The packet benchmark's policy: `rules` ingress/egress rules, allow and deny
 * interleaved in priority order, prefixes, 0/0 rules, two remote groups. No
 * rule but the last (priority 100, allow benchPorts from 198.18.0.0/24) matches
 * the lab client 198.18.0.1 on the bench ports, and rules on the bench ports
 * from other peers sit all through the order, so a first-match evaluator has
 * to look at (almost) every rule before it allows the bench traffic.
 */
export function packetPolicy(o: PacketPolicyOptions): PolicyInput {
  const groups: { id: string; name: string; rules: NonNullable<PolicyInput['security_groups'][number]['rules']> }[] = [
    { id: 'sg-web', name: 'web', rules: [] },
    { id: 'sg-db', name: 'db', rules: [] },
  ];
  const [b0, b1] = o.benchPorts;
  const n = o.rules - 1;
  for (let i = 0; i < n; i++) {
    const g = groups[i % 2]!;
    const priority = 1 + Math.floor((i * 99) / n);
    const port = 10000 + ((i * 7) % 50000);
    const id = `r${i}`;
    const kind = i % 10;
    const x = i % 256;
    const y = (i >> 8) % 256;
    if (kind <= 2) g.rules.push({ id, direction: 'ingress', priority, action: 'allow', protocol: i % 2 ? 'tcp' : 'udp', multiport: `${port}`, remote_ip_prefix: '0.0.0.0/0' });
    else if (kind === 3 && o.v6) g.rules.push({ id, direction: 'ingress', priority, action: 'allow', ethertype: 'IPv6', protocol: 'tcp', multiport: `${port}-${port + 5}`, remote_ip_prefix: `fd00:5ec:1:${x.toString(16)}${y.toString(16).padStart(2, '0')}::/64` });
    else if (kind <= 4) g.rules.push({ id, direction: 'ingress', priority, action: 'allow', protocol: 'tcp', multiport: `${port}-${port + 5}`, remote_ip_prefix: `198.19.${x}.0/24` });
    else if (kind === 5) g.rules.push({ id, direction: 'ingress', priority, action: 'deny', protocol: 'tcp', multiport: `${port}`, remote_ip_prefix: `198.18.${1 + (i % 100)}.${x}/32` });
    else if (kind === 6) g.rules.push({ id, direction: 'ingress', priority, action: 'deny', protocol: 'tcp', multiport: `${b0}-${b1}`, remote_ip_prefix: `198.19.${y}.${x}/32` });
    else if (kind === 7 && i % 1000 === 7) {
      // a few rules on the big remote groups: elements = members per rule
      const v6 = i % 3000 === 2007;
      g.rules.push({ id, direction: 'ingress', priority, action: 'allow', protocol: 'tcp', multiport: `${b0}-${b1}`, remote_group_id: v6 ? 'sg-v6' : 'sg-v4', ethertype: v6 ? 'IPv6' : 'IPv4' });
    } else if (kind === 7) g.rules.push({ id, direction: 'ingress', priority, action: 'allow', protocol: 'tcp', multiport: `${port},${b0}-${b1}`, remote_ip_prefix: `198.19.${x}.${y}/32` });
    else if (kind === 8) g.rules.push({ id, direction: 'ingress', priority, action: 'deny', protocol: 'udp', multiport: `${port}`, remote_ip_prefix: `198.19.${x}.0/24` });
    else g.rules.push({ id, direction: 'egress', priority, action: 'allow', protocol: 'tcp', multiport: `${port}`, remote_ip_prefix: '0.0.0.0/0' });
  }
  groups[1]!.rules.push({ id: 'bench', direction: 'ingress', priority: 100, action: 'allow', protocol: 'tcp', multiport: `${b0}-${b1}`, remote_ip_prefix: '198.18.0.0/24' });
  // the UDP and IPv6 cases: also the last rules of their chains
  if (o.udpPort !== undefined) groups[1]!.rules.push({ id: 'bench-udp', direction: 'ingress', priority: 100, action: 'allow', protocol: 'udp', multiport: `${o.udpPort}`, remote_ip_prefix: '198.18.0.0/24' });
  if (o.v6) groups[1]!.rules.push({ id: 'bench-v6', direction: 'ingress', priority: 100, action: 'allow', ethertype: 'IPv6', protocol: 'tcp', multiport: `${b0}-${b1}`, remote_ip_prefix: 'fd00:5ec::/120' });
  const v4m: string[] = [];
  const base = (198 << 24) + (18 << 16) + (128 << 8);
  for (let i = 0; i < o.v4Members; i++) {
    const a = base + 2 * i;
    v4m.push([a >>> 24, (a >>> 16) & 255, (a >>> 8) & 255, a & 255].join('.'));
  }
  const v6m: string[] = [];
  for (let i = 0; i < o.v6Members; i++) v6m.push(`fd00:5ec::${(1 + ((2 * i) >>> 16)).toString(16)}:${((2 * i) & 0xffff).toString(16)}`);
  return {
    revision: 1,
    instance: { id: 'bench-packet', addresses: ['198.18.0.10', 'fd00:5ec::10'] },
    security_groups: groups,
    address_groups: [],
    group_members: { 'sg-v4': v4m, 'sg-v6': v6m },
  };
}

/** Member `i` of the big v6 remote group: every other address from fd00:5ec:0:1:: (never adjacent, so never merged). */
export function bigMember(i: number): string {
  return formatIp(6, (0xfd0005ec_00000001n << 64n) | BigInt(2 * i));
}

/**
 * `rules` small rules plus one rule allowing tcp/443 from remote group
 * `sg-big` of `members` IPv6 addresses: about `members` map elements. The
 * list is in the controller's canonical text and order; `replace` swaps
 * member `index` for member `with` (above the others: it goes last).
 */
export function groupPolicy(members: number, rules = 10, revision = 1, replace?: { index: number; with: number }): PolicyInput {
  const list: string[] = [];
  for (let i = 0; i < members; i++) if (i !== replace?.index) list.push(bigMember(i));
  if (replace) {
    if (replace.with < members) throw new Error('groupPolicy: the replacing member goes last, so it must be above the others');
    list.push(bigMember(replace.with));
  }
  const rs: NonNullable<PolicyInput['security_groups'][number]['rules']> = [];
  for (let i = 0; i < rules; i++) rs.push({ id: `r${i}`, direction: 'ingress', priority: 10, action: 'allow', protocol: 'tcp', multiport: `${2000 + i}`, remote_ip_prefix: '198.18.0.0/15' });
  rs.push({ id: 'big', direction: 'ingress', priority: 20, action: 'allow', protocol: 'tcp', multiport: '443', ethertype: 'IPv6', remote_group_id: 'sg-big' });
  return {
    revision,
    instance: { id: 'bench-apply', addresses: ['198.18.0.10', 'fd00:5ec::10'] },
    security_groups: [{ id: 'sg-web', name: 'web', rules: rs }],
    address_groups: [],
    group_members: { 'sg-big': list },
  };
}

/** The full-apply cases of the step and profile benches (bench/apply-steps.ts, apply-profile.ts), as bench/apply.ts names them. */
export const APPLY_CASES: Record<string, () => PolicyInput> = {
  '1k rules': () => syntheticPolicy({ rules: 1000, members: 100 }),
  '10k rules': () => syntheticPolicy({ rules: 10000, members: 100 }),
  '100k rules': () => syntheticPolicy({ rules: 100_000, members: 100 }),
  '10k members': () => groupPolicy(10_000, 10),
  '100k members': () => groupPolicy(100_000, 10),
  '1M members': () => groupPolicy(1_000_000, 10),
};
