/**
 * Random remote-group member changes for property tests of the membership
 * fast path and of what builds on it (test/unit/membership.test.ts,
 * test/unit/port-report-members.test.ts, test/unit/probe-member-change.test.ts),
 * and listeners to rate against them.
 */
import type { MembershipChange } from '../../src/nft/membership.js';
import { formatIp, type Family } from '../../src/policy/address.js';
import { normalizeRules } from '../../src/policy/normalize.js';
import { parsePolicy, type Policy } from '../../src/policy/schema.js';
import type { Listener } from '../../src/probe/listener.js';
import { testAddress, type Rng } from './random-policy.js';

/** `p` with `change` applied (as a full document of `revision`). */
export function withChange(p: Policy, change: MembershipChange, revision: number): Policy {
  const gm: Record<string, string[]> = { ...p.group_members };
  for (const [g, c] of Object.entries(change)) {
    const gone = new Set(c.remove);
    gm[g] = [...gm[g]!.filter((m) => !gone.has(m)), ...c.add.filter((a) => !gm[g]!.includes(a))];
  }
  return parsePolicy({ ...p, revision, group_members: gm });
}

/** Per group (60 %): up to 3 test addresses that are not members join, each member leaves with 30 %. */
export function randomChange(rng: Rng, p: Policy): MembershipChange {
  const change: MembershipChange = {};
  const groups = Object.keys(p.group_members);
  for (const g of groups) {
    if (!rng.bool(0.6)) continue;
    const members = p.group_members[g]!;
    const add = new Set<string>();
    const remove = new Set<string>();
    for (let i = rng.int(0, 3); i > 0; i--) {
      const family: Family = rng.bool(0.6) ? 4 : 6;
      const a = formatIp(family, testAddress(rng, family));
      if (!members.includes(a)) add.add(a);
    }
    for (const m of members) if (rng.bool(0.3) && !add.has(m)) remove.add(m);
    if (add.size || remove.size) change[g] = { add: [...add], remove: [...remove] };
  }
  return change;
}

/** Listeners on ports the policy's ingress rules name (and a few others), on wildcard, dual-stack or loopback addresses. */
export function listenersFor(rng: Rng, p: Policy): Listener[] {
  const out: Listener[] = [];
  const ports = normalizeRules(p)
    .filter((r) => r.direction === 'ingress' && r.ports !== null)
    .map((r) => ({ port: r.ports![0]![0], protocol: r.protocol === 17 ? ('udp' as const) : ('tcp' as const) }));
  for (const x of [...ports, { port: 22, protocol: 'tcp' as const }, { port: 53, protocol: 'udp' as const }]) {
    if (!rng.bool(0.7)) continue;
    const where = rng.pick(['0.0.0.0', '::', '::dual', '127.0.0.1'] as const);
    const address = where === '::dual' ? '::' : where;
    out.push({ protocol: x.protocol, family: address.includes(':') ? 6 : 4, address, port: x.port, process: 'srv', ...(where === '::dual' ? { dualStack: true } : {}) });
  }
  return out;
}
