/**
 * Address groups (Huawei VPC v3 `address-groups`), as pure functions like
 * ./domain.ts: each takes a project snapshot and validated input and returns
 * the ops to commit and the result to show, or throws an ApiError. Entries
 * come as `ip_set` or `ip_extra_set` (with remarks), are stored canonical,
 * and are bounded by the group's `max_capacity` and the project quota.
 */
import { canonicalIpSetEntry } from '../policy/canonical.js';
import { checkAddressGroupEntries } from '../policy/schema.js';
import { ApiError } from './errors.js';
import { findAddressGroup, takeId, type Mutation, type MutationContext } from './domain.js';
import type { AddressGroupRow, Op, ProjectSnapshot, Tag } from './model.js';

/** An `ip_extra_set` entry: an entry with a remark. */
export interface IpExtra {
  ip: string;
  remarks?: string | undefined;
}
export interface AddressGroupCreate {
  id?: string | undefined;
  name: string;
  description: string;
  ip_version: 4 | 6;
  ip_set?: string[] | undefined;
  ip_extra_set?: IpExtra[] | undefined;
  max_capacity?: number | undefined;
  enterprise_project_id?: string | undefined;
  tags?: Tag[] | undefined;
}
export interface AddressGroupUpdate {
  name?: string | undefined;
  description?: string | undefined;
  ip_set?: string[] | undefined;
  ip_extra_set?: IpExtra[] | undefined;
  max_capacity?: number | undefined;
}
/** Checks an `ip_set` and returns its entries in canonical form (duplicates are found among the canonical forms). */
function checkIpSet(ipVersion: 4 | 6, ipSet: readonly string[], path: string, field = 'ip_set'): string[] {
  const issues = checkAddressGroupEntries({ ip_version: ipVersion, ip_set: [...ipSet] }, path).map((i) => ({ ...i, path: i.path.replace(`${path}.ip_set[`, `${path}.${field}[`) }));
  const bad = new Set(issues.map((i) => i.path));
  const seen = new Map<string, number>();
  const canonical: string[] = [];
  ipSet.forEach((e, i) => {
    const at = `${path}.${field}[${i}]`;
    if (bad.has(at)) return;
    const c = canonicalIpSetEntry(e);
    if (!c.ok) issues.push({ path: at, message: c.error });
    else if (seen.has(c.value)) issues.push({ path: at, message: `${JSON.stringify(e)} is listed twice (also ${field}[${seen.get(c.value)}])` });
    else {
      seen.set(c.value, i);
      canonical.push(c.value);
    }
  });
  if (issues.length) throw ApiError.invalid(issues, 'ipSetInvalid');
  return canonical;
}

/**
 * The entries of an address group from `ip_set` or `ip_extra_set` (Huawei:
 * mutually exclusive), canonical, with the remarks of `ip_extra_set`
 * entries; checked against `max_capacity` and the quota.
 */
function addressGroupEntries(
  ipVersion: 4 | 6,
  input: { ip_set?: string[] | undefined; ip_extra_set?: IpExtra[] | undefined },
  maxCapacity: number,
  path: string,
  ctx: MutationContext,
): { ip_set: string[]; ip_remarks: Record<string, string> } | undefined {
  if (input.ip_set !== undefined && input.ip_extra_set !== undefined) {
    throw ApiError.invalid([{ path: `${path}.ip_extra_set`, message: 'ip_set and ip_extra_set are mutually exclusive: give one of them' }], 'ipSetInvalid');
  }
  let ipSet: string[];
  const ipRemarks: Record<string, string> = {};
  if (input.ip_extra_set !== undefined) {
    ipSet = checkIpSet(ipVersion, input.ip_extra_set.map((e) => e.ip), path, 'ip_extra_set');
    input.ip_extra_set.forEach((e, i) => {
      if (e.remarks) ipRemarks[ipSet[i]!] = e.remarks;
    });
  } else if (input.ip_set !== undefined) ipSet = checkIpSet(ipVersion, input.ip_set, path);
  else return undefined;
  if (ipSet.length > ctx.quotas.entries_per_address_group) {
    throw new ApiError('quota', `${path}.ip_set has ${ipSet.length} entries (quota entries_per_address_group: ${ctx.quotas.entries_per_address_group})`);
  }
  if (ipSet.length > maxCapacity) {
    throw new ApiError('quota', `${path} has ${ipSet.length} entries (max_capacity: ${maxCapacity})`);
  }
  return { ip_set: ipSet, ip_remarks: ipRemarks };
}

export function createAddressGroup(snap: ProjectSnapshot, input: AddressGroupCreate, ctx: MutationContext): Mutation<AddressGroupRow> {
  const maxCapacity = input.max_capacity ?? ctx.quotas.entries_per_address_group;
  const entries = addressGroupEntries(input.ip_version, input, maxCapacity, 'address_group', ctx) ?? { ip_set: [], ip_remarks: {} };
  if (snap.addressGroups.length >= ctx.quotas.address_groups_per_project) {
    throw new ApiError('quota', `project ${snap.projectId} already has ${snap.addressGroups.length} address groups (quota address_groups_per_project: ${ctx.quotas.address_groups_per_project})`);
  }
  const id = takeId(snap, input.id, ctx, 'address group', snap.addressGroups);
  const addressGroup: AddressGroupRow = {
    id,
    name: input.name,
    description: input.description,
    ip_version: input.ip_version,
    ip_set: entries.ip_set,
    ip_remarks: entries.ip_remarks,
    max_capacity: maxCapacity,
    enterprise_project_id: input.enterprise_project_id ?? '0',
    tags: input.tags ?? [],
    created_at: ctx.now,
    updated_at: ctx.now,
  };
  return { ops: [{ op: 'putAddressGroup', addressGroup }], result: addressGroup };
}

export function updateAddressGroup(snap: ProjectSnapshot, id: string, input: AddressGroupUpdate, ctx: MutationContext): Mutation<AddressGroupRow> {
  const old = findAddressGroup(snap, id);
  const maxCapacity = input.max_capacity ?? old.max_capacity;
  const entries = addressGroupEntries(old.ip_version, input, maxCapacity, 'address_group', ctx);
  if (!entries && old.ip_set.length > maxCapacity) {
    throw new ApiError('quota', `address_group.max_capacity ${maxCapacity} is below the group's ${old.ip_set.length} entries`);
  }
  const addressGroup: AddressGroupRow = {
    ...old,
    name: input.name ?? old.name,
    description: input.description ?? old.description,
    ip_set: entries?.ip_set ?? old.ip_set,
    ip_remarks: entries?.ip_remarks ?? old.ip_remarks,
    max_capacity: maxCapacity,
    updated_at: ctx.now,
  };
  return { ops: [{ op: 'putAddressGroup', addressGroup }], result: addressGroup };
}

/**
 * Deletes an address group: refused (VPC.9907) while a rule references it;
 * with `force` (Huawei's DeleteIpAddressGroupForce) the referencing rules are
 * deleted with it, in the same commit.
 */
export function deleteAddressGroup(snap: ProjectSnapshot, id: string, opts: { force?: boolean } = {}): Mutation<null> {
  findAddressGroup(snap, id);
  const refs = snap.rules.filter((r) => r.remote_address_group_id === id);
  const ref = refs[0];
  if (ref && !opts.force) {
    throw new ApiError('addressGroupInUse', `address group ${JSON.stringify(id)} is referenced by rule ${JSON.stringify(ref.id)} of security group ${JSON.stringify(ref.security_group_id)}`);
  }
  return { ops: [...refs.map((r): Op => ({ op: 'deleteRule', id: r.id })), { op: 'deleteAddressGroup', id }], result: null };
}
