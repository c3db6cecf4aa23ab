import { parsePolicy, type Policy } from '../../../src/policy/schema.js';

/** A small valid policy: http from group `web` members, ssh from an address group, egress all. */
export function policy(revision: number, opts: { members?: string[]; office?: string[]; httpPort?: string; extraRule?: boolean } = {}): Policy {
  return parsePolicy({
    revision,
    instance: { id: 'ecs-1', addresses: ['198.18.0.10'] },
    security_groups: [
      {
        id: 'sg-web',
        rules: [
          { id: 'r-http', direction: 'ingress', protocol: 'tcp', multiport: opts.httpPort ?? '80', remote_group_id: 'web' },
          { id: 'r-ssh', direction: 'ingress', protocol: 'tcp', multiport: '22', remote_address_group_id: 'ag-office' },
          ...(opts.extraRule ? [{ id: 'r-dns', direction: 'ingress', protocol: 'udp', multiport: '53' }] : []),
          { id: 'r-out', direction: 'egress' },
        ],
      },
    ],
    address_groups: [{ id: 'ag-office', ip_version: 4, ip_set: opts.office ?? ['198.18.5.0/24'] }],
    group_members: { web: opts.members ?? ['198.18.0.10', '198.18.0.12'] },
  });
}
