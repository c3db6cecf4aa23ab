/**
 * What every committed project state satisfies: referential integrity and
 * quotas. The domain (domain.ts) keeps these true on every mutation; the
 * store tests check them after crashes and concurrent writers. Pure.
 */
import { DEFAULT_GROUP_ID, DEFAULT_QUOTAS, type Quotas } from './domain.js';
import type { ProjectSnapshot } from './model.js';

/** Every problem with a snapshot's referential integrity and quotas; empty when it is sound. */
export function checkInvariants(snap: ProjectSnapshot, quotas: Quotas = DEFAULT_QUOTAS): string[] {
  const out: string[] = [];
  const groups = new Set(snap.groups.map((g) => g.id));
  const ags = new Map(snap.addressGroups.map((a) => [a.id, a]));
  if (snap.version > 0 && !groups.has(DEFAULT_GROUP_ID)) out.push('the default group is missing');
  const unique = (what: string, ids: readonly string[]) => {
    if (new Set(ids).size !== ids.length) out.push(`${what} ids are not unique`);
  };
  unique('group', snap.groups.map((g) => g.id));
  unique('rule', snap.rules.map((r) => r.id));
  unique('address group', snap.addressGroups.map((a) => a.id));
  unique('instance', snap.instances.map((i) => i.id));
  const perGroup = new Map<string, number>();
  for (const r of snap.rules) {
    if (!groups.has(r.security_group_id)) out.push(`rule ${r.id} belongs to missing group ${r.security_group_id}`);
    if (r.remote_group_id && !groups.has(r.remote_group_id)) out.push(`rule ${r.id} references missing group ${r.remote_group_id}`);
    if (r.remote_address_group_id) {
      const ag = ags.get(r.remote_address_group_id);
      if (!ag) out.push(`rule ${r.id} references missing address group ${r.remote_address_group_id}`);
      else if (ag.ip_version !== (r.ethertype === 'IPv6' ? 6 : 4)) out.push(`rule ${r.id} and address group ${ag.id} differ in family`);
    }
    perGroup.set(r.security_group_id, (perGroup.get(r.security_group_id) ?? 0) + 1);
  }
  for (const [g, n] of perGroup) if (n > quotas.rules_per_group) out.push(`group ${g} has ${n} rules`);
  for (const i of snap.instances) {
    for (const g of i.security_groups) if (!groups.has(g)) out.push(`instance ${i.id} is associated with missing group ${g}`);
    if (i.security_groups.length > quotas.groups_per_instance) out.push(`instance ${i.id} has ${i.security_groups.length} groups`);
    if (i.revision === null || i.policy_hash === null) out.push(`instance ${i.id} has no compiled policy`);
  }
  for (const a of snap.addressGroups) if (a.ip_set.length > quotas.entries_per_address_group) out.push(`address group ${a.id} has ${a.ip_set.length} entries`);
  return out;
}
