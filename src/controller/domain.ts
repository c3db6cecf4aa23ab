/**
 * The controller's rules about its objects (SEMANTICS section 6), as pure
 * functions: each takes a project snapshot and validated input and returns
 * the ops to commit and the result to show, or throws an ApiError. Nothing
 * here does I/O; time, ids and tokens come in through the context.
 */
import { canonicalIp, ipFamily, parsePrefix, FAMILY_MAX } from '../policy/address.js';
import { mergePorts } from '../policy/normalize.js';
import { canonicalRuleFields } from '../policy/canonical.js';
import { checkRule, parseMultiport, parseProtocol, type Rule } from '../policy/schema.js';
import type { Issue } from '../lib/errors.js';
import { ApiError } from './errors.js';
import { rulesByGroup, type AddressGroupRow, type GroupRow, type InstanceSpec, type Op, type ProjectSnapshot, type RuleRow, type Tag } from './model.js';

export const DEFAULT_GROUP_ID = 'default';
/** Priority of the four rules Huawei gives a new security group (SEMANTICS section 6). */
export const NEW_GROUP_RULE_PRIORITY = 100;

export interface Quotas {
  rules_per_group: number;
  groups_per_instance: number;
  entries_per_address_group: number;
  security_groups_per_project: number;
  address_groups_per_project: number;
  instances_per_project: number;
}

export const DEFAULT_QUOTAS: Quotas = {
  rules_per_group: 50,
  groups_per_instance: 5,
  entries_per_address_group: 20,
  security_groups_per_project: 100,
  address_groups_per_project: 50,
  instances_per_project: 10000,
};

export interface MutationContext {
  /** UTC timestamp `yyyy-MM-ddTHH:mm:ssZ` */
  now: string;
  newId(): string;
  /** a fresh agent token and its stored hash */
  newToken(): { token: string; hash: string };
  quotas: Quotas;
}

export interface Mutation<T> {
  ops: Op[];
  result: T;
}

// ---- inputs (shapes after the API layer parsed the body) ----

export interface GroupCreate {
  id?: string | undefined;
  name: string;
  description: string;
  enterprise_project_id?: string | undefined;
  tags?: Tag[] | undefined;
}
export interface GroupUpdate {
  name?: string | undefined;
  description?: string | undefined;
}
/** A rule as a create request gives it: a stored row without the server's fields, id optional. */
export type RuleCreate = Omit<RuleRow, 'id' | 'created_at'> & { id?: string | undefined };
/** A rule's fields in the policy model (policy/schema.ts `Rule`), its id optional. */
export type RuleFields = Omit<Rule, 'id'> & { id?: string | undefined; enabled?: boolean | undefined };
export interface InstanceCreate {
  id?: string | undefined;
  name: string;
  addresses: string[];
  security_groups: string[];
}
export interface InstanceUpdate {
  name?: string | undefined;
  addresses?: string[] | undefined;
  security_groups?: string[] | undefined;
}

// ---- lookups ----

export function findGroup(snap: ProjectSnapshot, id: string): GroupRow {
  const g = snap.groups.find((x) => x.id === id);
  if (!g) throw ApiError.notFound('security group', id);
  return g;
}

export function findRule(snap: ProjectSnapshot, id: string): RuleRow {
  const r = snap.rules.find((x) => x.id === id);
  if (!r) throw ApiError.notFound('security group rule', id);
  return r;
}

export function findAddressGroup(snap: ProjectSnapshot, id: string): AddressGroupRow {
  const a = snap.addressGroups.find((x) => x.id === id);
  if (!a) throw ApiError.notFound('address group', id);
  return a;
}

export function findInstance(snap: ProjectSnapshot, id: string): InstanceSpec {
  const i = snap.instances.find((x) => x.id === id);
  if (!i) throw ApiError.notFound('instance', id);
  return i;
}

export function rulesOf(snap: ProjectSnapshot, groupId: string): RuleRow[] {
  return [...(rulesByGroup(snap.rules).get(groupId) ?? [])];
}

// ---- the default group ----

/** A rule row with the defaults of an API create (priority 1, allow, any protocol and peer, enabled); `fields` set the rest. */
export function newRuleRow(fields: Partial<RuleRow> & Pick<RuleRow, 'id' | 'security_group_id' | 'direction' | 'ethertype' | 'created_at'>): RuleRow {
  return {
    priority: 1,
    action: 'allow',
    protocol: null,
    multiport: null,
    icmp_type: null,
    icmp_code: null,
    remote_ip_prefix: null,
    remote_group_id: null,
    remote_address_group_id: null,
    description: '',
    enabled: true,
    ...fields,
  };
}

function defaultRule(id: string, direction: RuleRow['direction'], ethertype: RuleRow['ethertype'], remote: Partial<RuleRow>, now: string): RuleRow {
  return newRuleRow({ id, security_group_id: DEFAULT_GROUP_ID, direction, ethertype, created_at: now, ...remote });
}

/** Ops that create a project: its undeletable `default` group with the four rules of SEMANTICS section 6. */
export function createProjectOps(now: string): Op[] {
  return [
    { op: 'putGroup', group: { id: DEFAULT_GROUP_ID, name: 'default', description: 'Default security group', enterprise_project_id: '0', tags: [], created_at: now, updated_at: now } },
    { op: 'putRule', rule: defaultRule('default-in-v4', 'ingress', 'IPv4', { remote_group_id: DEFAULT_GROUP_ID }, now) },
    { op: 'putRule', rule: defaultRule('default-in-v6', 'ingress', 'IPv6', { remote_group_id: DEFAULT_GROUP_ID }, now) },
    { op: 'putRule', rule: defaultRule('default-out-v4', 'egress', 'IPv4', { remote_ip_prefix: '0.0.0.0/0' }, now) },
    { op: 'putRule', rule: defaultRule('default-out-v6', 'egress', 'IPv6', { remote_ip_prefix: '::/0' }, now) },
  ];
}

// ---- ids ----

export function takeId(snap: ProjectSnapshot, wanted: string | undefined, ctx: MutationContext, what: string, existing: readonly { id: string }[]): string {
  if (wanted === undefined) return ctx.newId();
  if (existing.some((x) => x.id === wanted)) throw new ApiError('exists', `a ${what} with id ${JSON.stringify(wanted)} already exists in project ${snap.projectId}`);
  return wanted;
}

// ---- security groups ----

export function createGroup(snap: ProjectSnapshot, input: GroupCreate, ctx: MutationContext): Mutation<{ group: GroupRow; rules: RuleRow[] }> {
  if (snap.groups.length >= ctx.quotas.security_groups_per_project) {
    throw new ApiError('quota', `project ${snap.projectId} already has ${snap.groups.length} security groups (quota security_groups_per_project: ${ctx.quotas.security_groups_per_project})`);
  }
  const id = takeId(snap, input.id, ctx, 'security group', snap.groups);
  const group: GroupRow = {
    id,
    name: input.name,
    description: input.description,
    enterprise_project_id: input.enterprise_project_id ?? '0',
    tags: input.tags ?? [],
    created_at: ctx.now,
    updated_at: ctx.now,
  };
  // SEMANTICS section 6: Huawei's four rules of a new group, priority 100, ordinary (deletable) rules
  const seed = (direction: RuleRow['direction'], ethertype: RuleRow['ethertype'], remote: Partial<RuleRow>): RuleRow => ({
    ...defaultRule(ctx.newId(), direction, ethertype, remote, ctx.now),
    security_group_id: id,
    priority: NEW_GROUP_RULE_PRIORITY,
  });
  const rules = [
    seed('ingress', 'IPv4', { remote_group_id: id }),
    seed('ingress', 'IPv6', { remote_group_id: id }),
    seed('egress', 'IPv4', { remote_ip_prefix: '0.0.0.0/0' }),
    seed('egress', 'IPv6', { remote_ip_prefix: '::/0' }),
  ];
  if (rules.length > ctx.quotas.rules_per_group) {
    throw new ApiError('quota', `security group ${JSON.stringify(id)} would have its ${rules.length} default rules (quota rules_per_group: ${ctx.quotas.rules_per_group})`);
  }
  return { ops: [{ op: 'putGroup', group }, ...rules.map((rule): Op => ({ op: 'putRule', rule }))], result: { group, rules } };
}

export function updateGroup(snap: ProjectSnapshot, id: string, input: GroupUpdate, ctx: MutationContext): Mutation<{ group: GroupRow; rules: RuleRow[] }> {
  const old = findGroup(snap, id);
  if (id === DEFAULT_GROUP_ID && input.name !== undefined && input.name !== old.name) {
    throw ApiError.invalid([{ path: 'security_group.name', message: 'the default security group cannot be renamed' }]);
  }
  const group: GroupRow = { ...old, name: input.name ?? old.name, description: input.description ?? old.description, updated_at: ctx.now };
  return { ops: [{ op: 'putGroup', group }], result: { group, rules: rulesOf(snap, id) } };
}

export function deleteGroup(snap: ProjectSnapshot, id: string): Mutation<null> {
  findGroup(snap, id);
  if (id === DEFAULT_GROUP_ID) throw new ApiError('inUse', 'the default security group cannot be deleted');
  const ref = snap.rules.find((r) => r.remote_group_id === id && r.security_group_id !== id);
  if (ref) {
    throw new ApiError('inUse', `security group ${JSON.stringify(id)} is referenced by rule ${JSON.stringify(ref.id)} of security group ${JSON.stringify(ref.security_group_id)}`);
  }
  const member = snap.instances.find((i) => i.security_groups.includes(id));
  if (member) throw new ApiError('inUse', `security group ${JSON.stringify(id)} is associated with instance ${JSON.stringify(member.id)}`);
  return { ops: [{ op: 'deleteGroup', id }], result: null };
}

// ---- rules ----

/** `ruleMatchKey` of stored rows (immutable, shared between snapshots by the store's cache): each is parsed once. */
const storedKeys = new WeakMap<RuleRow, string>();
function storedRuleKey(r: RuleRow): string {
  let key = storedKeys.get(r);
  if (key === undefined) storedKeys.set(r, (key = ruleMatchKey(r)));
  return key;
}

/** Identity of a rule for duplicate detection: equal keys match exactly the same packets with the same verdict. */
export function ruleMatchKey(r: Omit<RuleRow, 'id' | 'created_at' | 'description' | 'security_group_id' | 'action'>): string {
  const proto = parseProtocol(r.protocol);
  const p = proto.ok ? proto.proto : r.protocol;
  let ports = '*';
  if (r.multiport) {
    const mp = parseMultiport(r.multiport);
    ports = mp.ok ? mergePorts(mp.ranges).map(([a, b]) => `${a}-${b}`).join(',') : r.multiport;
  }
  const family = r.ethertype === 'IPv6' ? 6 : 4;
  let remote = `p:0-${FAMILY_MAX[family]}`;
  if (r.remote_ip_prefix) {
    const pr = parsePrefix(r.remote_ip_prefix);
    remote = pr.ok ? `p:${pr.range.lo}-${pr.range.hi}` : `p:${r.remote_ip_prefix}`;
  } else if (r.remote_group_id) remote = `g:${r.remote_group_id}`;
  else if (r.remote_address_group_id) remote = `a:${r.remote_address_group_id}`;
  return [r.direction, r.ethertype, r.priority, p ?? '*', ports, r.icmp_type ?? '*', r.icmp_code ?? '*', remote].join('|');
}

/**
 * The input of `createRules` from a rule's fields as the policy model has
 * them (the API's rule body is that model): absent optional fields become
 * null. The one mapping of rule fields; "" = absent is canonicalised in
 * `createRules` (policy/canonical.ts).
 */
export function ruleCreate(groupId: string, r: RuleFields): RuleCreate {
  return {
    id: r.id,
    security_group_id: groupId,
    direction: r.direction,
    priority: r.priority,
    action: r.action,
    ethertype: r.ethertype,
    protocol: r.protocol ?? null,
    multiport: r.multiport ?? null,
    icmp_type: r.icmp_type ?? null,
    icmp_code: r.icmp_code ?? null,
    remote_ip_prefix: r.remote_ip_prefix ?? null,
    remote_group_id: r.remote_group_id ?? null,
    remote_address_group_id: r.remote_address_group_id ?? null,
    description: r.description ?? '',
    enabled: r.enabled ?? true,
  };
}

/** An issue saying the rule's ethertype disagrees with its protocol, prefix or address group. */
function isEthertypeIssue(i: Issue): boolean {
  return /ethertype/.test(i.message) && /\.(protocol|remote_ip_prefix|remote_address_group_id|ethertype)$/.test(i.path);
}

/**
 * Creates rules in one group, all or nothing. `paths[i]` names input i in
 * error messages (`security_group_rule`, `security_group_rules[3]`). With
 * `ignoreDuplicates`, exact duplicates (of existing rules or earlier inputs)
 * are skipped instead of rejected.
 */
export function createRules(
  snap: ProjectSnapshot,
  groupId: string,
  inputs: readonly RuleCreate[],
  paths: readonly string[],
  ctx: MutationContext,
  opts: { ignoreDuplicates?: boolean } = {},
): Mutation<RuleRow[]> {
  findGroup(snap, groupId);
  const issues: Issue[] = [];
  // the canonical form of each input (docs/api.md "Stored values are canonical"): what is compared, stored and returned
  const canonical: RuleCreate[] = [];
  inputs.forEach((input, i) => {
    const path = paths[i]!;
    const ruleIssues = checkRule({ ...input, id: input.id ?? 'new' }, path);
    issues.push(...ruleIssues);
    if (!ruleIssues.length) {
      const c = canonicalRuleFields(input);
      if (c.ok) canonical.push({ ...input, ...c.fields });
      else issues.push({ path: `${path}.${c.field}`, message: c.message });
    }
    if (input.remote_group_id && !snap.groups.some((g) => g.id === input.remote_group_id)) {
      issues.push({ path: `${path}.remote_group_id`, message: `security group ${JSON.stringify(input.remote_group_id)} does not exist in project ${snap.projectId}` });
    }
    if (input.remote_address_group_id) {
      const ag = snap.addressGroups.find((a) => a.id === input.remote_address_group_id);
      const family = input.ethertype === 'IPv6' ? 6 : 4;
      if (!ag) {
        issues.push({ path: `${path}.remote_address_group_id`, message: `address group ${JSON.stringify(input.remote_address_group_id)} does not exist in project ${snap.projectId}` });
      } else if (ag.ip_version !== family) {
        issues.push({ path: `${path}.remote_address_group_id`, message: `address group ${JSON.stringify(ag.id)} is IPv${ag.ip_version} but the rule's ethertype is ${input.ethertype}` });
      }
    }
  });
  // Huawei answers a rule whose ethertype disagrees with the rest with VPC.9902 (400)
  if (issues.length) throw ApiError.invalid(issues, issues.every(isEthertypeIssue) ? 'ruleEthertype' : 'invalid');

  const existing = rulesOf(snap, groupId);
  const byKey = new Map<string, { action: string; what: string }>();
  for (const r of existing) byKey.set(storedRuleKey(r), { action: r.action, what: `rule ${JSON.stringify(r.id)}` });
  // only an input that names its id needs the project's rule ids
  let projectIds: Set<string> | undefined;
  const added = new Set<string>();
  const ids = { has: (id: string) => added.has(id) || (projectIds ??= new Set(snap.rules.map((r) => r.id))).has(id), add: (id: string) => added.add(id) };
  const created: RuleRow[] = [];
  canonical.forEach((input, i) => {
    const path = paths[i]!;
    const key = ruleMatchKey(input);
    const same = byKey.get(key);
    if (same && same.action === input.action) {
      if (opts.ignoreDuplicates) return;
      throw new ApiError('duplicate', `${path} duplicates ${same.what} of security group ${JSON.stringify(groupId)}`);
    }
    if (same) {
      throw new ApiError('ruleConflict', `${path} (${input.action}) conflicts with ${same.what} of security group ${JSON.stringify(groupId)} (${same.action}): the two differ only in their action`);
    }
    let id: string;
    if (input.id === undefined) id = ctx.newId();
    else if (ids.has(input.id)) throw new ApiError('exists', `${path}.id: a security group rule with id ${JSON.stringify(input.id)} already exists in project ${snap.projectId}`);
    else id = input.id;
    ids.add(id);
    const rule: RuleRow = {
      id,
      security_group_id: groupId,
      direction: input.direction,
      priority: input.priority,
      action: input.action,
      ethertype: input.ethertype,
      protocol: input.protocol,
      multiport: input.multiport,
      icmp_type: input.icmp_type,
      icmp_code: input.icmp_code,
      remote_ip_prefix: input.remote_ip_prefix,
      remote_group_id: input.remote_group_id,
      remote_address_group_id: input.remote_address_group_id,
      description: input.description,
      enabled: input.enabled,
      created_at: ctx.now,
    };
    byKey.set(key, { action: rule.action, what: `${path}` });
    created.push(rule);
  });
  const total = existing.length + created.length;
  if (total > ctx.quotas.rules_per_group) {
    throw new ApiError(
      'quota',
      `security group ${JSON.stringify(groupId)} would have ${total} rules (quota rules_per_group: ${ctx.quotas.rules_per_group})`,
    );
  }
  return { ops: created.map((rule): Op => ({ op: 'putRule', rule })), result: created };
}

export function deleteRule(snap: ProjectSnapshot, id: string): Mutation<null> {
  findRule(snap, id);
  return { ops: [{ op: 'deleteRule', id }], result: null };
}

// ---- address groups: ./address-groups.ts ----

// ---- instances ----

function checkInstanceParts(snap: ProjectSnapshot, addresses: readonly string[] | undefined, groups: readonly string[] | undefined, ctx: MutationContext): string[] | undefined {
  const issues: Issue[] = [];
  let canonical: string[] | undefined;
  if (addresses) {
    canonical = [];
    const seen = new Map<string, number>();
    addresses.forEach((a, i) => {
      if (!ipFamily(a)) {
        issues.push({ path: `instance.addresses[${i}]`, message: `${JSON.stringify(a)} is not an IPv4 or IPv6 address` });
        return;
      }
      const c = canonicalIp(a);
      if (seen.has(c)) issues.push({ path: `instance.addresses[${i}]`, message: `${JSON.stringify(a)} is listed twice (also addresses[${seen.get(c)}])` });
      else {
        seen.set(c, i);
        canonical!.push(c);
      }
    });
  }
  if (groups) {
    const seen = new Map<string, number>();
    groups.forEach((g, i) => {
      if (seen.has(g)) issues.push({ path: `instance.security_groups[${i}]`, message: `security group ${JSON.stringify(g)} is listed twice (also security_groups[${seen.get(g)}])` });
      seen.set(g, i);
      if (!snap.groups.some((x) => x.id === g)) {
        issues.push({ path: `instance.security_groups[${i}]`, message: `security group ${JSON.stringify(g)} does not exist in project ${snap.projectId}` });
      }
    });
  }
  if (issues.length) throw ApiError.invalid(issues);
  if (groups && groups.length > ctx.quotas.groups_per_instance) {
    throw new ApiError('quota', `instance.security_groups has ${groups.length} groups (quota groups_per_instance: ${ctx.quotas.groups_per_instance})`);
  }
  return canonical;
}

export function createInstance(snap: ProjectSnapshot, input: InstanceCreate, ctx: MutationContext): Mutation<{ instance: InstanceSpec; token: string }> {
  const addresses = checkInstanceParts(snap, input.addresses, input.security_groups, ctx)!;
  if (snap.instances.length >= ctx.quotas.instances_per_project) {
    throw new ApiError('quota', `project ${snap.projectId} already has ${snap.instances.length} instances (quota instances_per_project: ${ctx.quotas.instances_per_project})`);
  }
  const id = takeId(snap, input.id, ctx, 'instance', snap.instances);
  const instance: InstanceSpec = { id, name: input.name, addresses, security_groups: input.security_groups, created_at: ctx.now, updated_at: ctx.now };
  const token = ctx.newToken();
  return {
    ops: [
      { op: 'putInstance', instance },
      { op: 'setToken', instanceId: id, tokenHash: token.hash },
    ],
    result: { instance, token: token.token },
  };
}

export function updateInstance(snap: ProjectSnapshot, id: string, input: InstanceUpdate, ctx: MutationContext): Mutation<InstanceSpec> {
  const old = findInstance(snap, id);
  const addresses = checkInstanceParts(snap, input.addresses, input.security_groups, ctx);
  const instance: InstanceSpec = {
    id: old.id,
    name: input.name ?? old.name,
    addresses: addresses ?? old.addresses,
    security_groups: input.security_groups ?? old.security_groups,
    created_at: old.created_at,
    updated_at: ctx.now,
  };
  return { ops: [{ op: 'putInstance', instance }], result: instance };
}

export function deleteInstance(snap: ProjectSnapshot, id: string): Mutation<null> {
  findInstance(snap, id);
  return { ops: [{ op: 'deleteInstance', id }], result: null };
}

export function rotateToken(snap: ProjectSnapshot, id: string, ctx: MutationContext): Mutation<{ instanceId: string; token: string }> {
  findInstance(snap, id);
  const token = ctx.newToken();
  return { ops: [{ op: 'setToken', instanceId: id, tokenHash: token.hash }], result: { instanceId: id, token: token.token } };
}
