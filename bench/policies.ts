/**
 * Synthetic policies for benchmarks: realistic shapes (many ports from the
 * Internet, office ranges, remote groups, deny rules interleaved by priority),
 * deterministic for a given size.
 */
import type { PolicyInput } from '../src/policy/schema.js';

function v4(i: number): string {
  // 198.18.0.0/15 holds 131072 addresses
  const n = (198 << 24) + (18 << 16) + (i % 131072);
  return [n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255].join('.');
}

function v6(i: number): string {
  return `fd00:5ec::${(i >>> 16).toString(16)}:${(i & 0xffff).toString(16)}`;
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
