/**
 * The controller's data model: one project's state as an immutable snapshot,
 * and the operations a mutation turns into. Mutations are pure functions
 * `snapshot -> ops`; a store applies ops atomically (one transaction) and
 * `applyOps` applies them in memory, so the per-instance compiler can run on
 * the state *after* the change before anything is written.
 */

export type Direction = 'ingress' | 'egress';
export type Action = 'allow' | 'deny';
export type Ethertype = 'IPv4' | 'IPv6';

export interface RuleRow {
  id: string;
  security_group_id: string;
  direction: Direction;
  priority: number;
  action: Action;
  ethertype: Ethertype;
  /** null = all protocols */
  protocol: string | null;
  multiport: string | null;
  icmp_type: number | null;
  icmp_code: number | null;
  remote_ip_prefix: string | null;
  remote_group_id: string | null;
  remote_address_group_id: string | null;
  description: string;
  /** false: kept, listed and counted, but never compiled into a policy document (SEMANTICS section 1) */
  enabled: boolean;
  created_at: string;
}

/** A Huawei resource tag. */
export interface Tag {
  key: string;
  value: string;
}

export interface GroupRow {
  id: string;
  name: string;
  description: string;
  /** Huawei's enterprise project; "0" = the default one. Stored and returned, not enforced. */
  enterprise_project_id: string;
  tags: Tag[];
  created_at: string;
  updated_at: string;
}

export interface AddressGroupRow {
  id: string;
  name: string;
  description: string;
  ip_version: 4 | 6;
  /** canonical entries */
  ip_set: string[];
  /** remarks of entries given as `ip_extra_set`, by canonical entry */
  ip_remarks: Record<string, string>;
  /** most entries the group may hold (Huawei's `max_capacity`) */
  max_capacity: number;
  enterprise_project_id: string;
  tags: Tag[];
  created_at: string;
  updated_at: string;
}

/** What a client owns of an instance. */
export interface InstanceSpec {
  id: string;
  name: string;
  /** canonical addresses (IPv4 and IPv6), no duplicates */
  addresses: string[];
  /** ordered security group ids (SEMANTICS section 2) */
  security_groups: string[];
  created_at: string;
  updated_at: string;
}

/** An instance as stored: the spec plus what the controller derived. */
export interface InstanceRow extends InstanceSpec {
  /** revision of the current policy document, null before the first compilation */
  revision: number | null;
  /** digest of the current policy document body (without revision): `policyDigest` (policy-documents.ts), or before that the sha256 of the body */
  policy_hash: string | null;
}

/** One project's state. Arrays are in creation order (the listing and `marker` order). */
export interface ProjectSnapshot {
  readonly projectId: string;
  /** bumped by every commit; 0 = the project is not stored yet */
  readonly version: number;
  readonly groups: readonly GroupRow[];
  readonly rules: readonly RuleRow[];
  readonly addressGroups: readonly AddressGroupRow[];
  readonly instances: readonly InstanceRow[];
}

export type Op =
  | { op: 'putGroup'; group: GroupRow }
  /** deletes the group and its rules */
  | { op: 'deleteGroup'; id: string }
  | { op: 'putRule'; rule: RuleRow }
  | { op: 'deleteRule'; id: string }
  | { op: 'putAddressGroup'; addressGroup: AddressGroupRow }
  | { op: 'deleteAddressGroup'; id: string }
  /** inserts or updates the spec; revision, policy and token are kept */
  | { op: 'putInstance'; instance: InstanceSpec }
  /** deletes the instance, its policy, token and agent state */
  | { op: 'deleteInstance'; id: string }
  | { op: 'setToken'; instanceId: string; tokenHash: string }
  /** a new policy document body; the store assigns the next revision. With `parts`, a store may keep the shared part once. */
  | { op: 'setPolicy'; instanceId: string; body: string; hash: string; parts?: BodyParts };

/**
 * A document body in two parts: `body === instance + shared`. `instance` is
 * the instance's own beginning (`{"instance":{...},`); `shared` is the rest
 * (groups, address groups, members), the same string for every document of
 * a batch with the same group list. `sharedHash`: sha256 of `shared`;
 * `members`: the `group_members` value, with which `shared` ends
 * (`...,"group_members":${members}}`), also one shared string.
 */
export interface BodyParts {
  instance: string;
  shared: string;
  sharedHash: string;
  members: string;
}

const MEMBERS_KEY = ',"group_members":';

/**
 * The parts of a stored document whose shared tail `shared` (stored once
 * under `sharedHash`) follows the instance's own beginning `instance`: the
 * member list is found at its key (which cannot occur inside a string value,
 * where quotes are escaped). Null when the tail does not end with a member
 * list. Pure.
 */
export function storedParts(instance: string, shared: string, sharedHash: string): BodyParts | null {
  const j = shared.indexOf(MEMBERS_KEY);
  if (j < 0 || !shared.endsWith('}}') || shared[j + MEMBERS_KEY.length] !== '{') return null;
  return { instance, shared, sharedHash, members: shared.slice(j + MEMBERS_KEY.length, -1) };
}

export function emptySnapshot(projectId: string): ProjectSnapshot {
  return { projectId, version: 0, groups: [], rules: [], addressGroups: [], instances: [] };
}

/**
 * One list of a snapshot while ops are applied: copied on its first change
 * (the snapshot's own array is never touched). Short lists are searched by a
 * scan until INDEX_AFTER lookups; a list of INDEX_FROM rows or more is looked
 * up through an index of ids, which is kept with the list it was built for
 * and handed on to the lists derived from it by appends and same-id
 * replacements (the write path applies one write after another to the
 * project's latest snapshot, and each write adds a row or two: building the
 * index, or scanning 5000 rules for an id that is not there, on every write
 * made a write cost the size of the project, issue 16). Lists derived from
 * the same list share one index: an entry that points at another row (a
 * sibling added its own row there) is checked and the list scanned instead;
 * an id without an entry is in none of them. A removal ends the sharing.
 */
const INDEX_AFTER = 8;
const INDEX_FROM = 256;
const INDEXES = new WeakMap<readonly { id: string }[], Map<string, number>>();

class ListEdit<T extends { id: string }> {
  private rows: T[] | null = null;
  /** the rows put, with the row each replaced (undefined: appended), in order; null after a removal */
  changes: { old: T | undefined; row: T }[] | null = [];
  /** ids to positions, for every row of the current list (and maybe rows of sibling lists) */
  private at: Map<string, number> | null;
  private lookups = 0;

  constructor(private readonly base: readonly T[]) {
    this.at = INDEXES.get(base) ?? null;
  }

  private position(id: string): number {
    const rows = this.rows ?? this.base;
    if (!this.at && (rows.length >= INDEX_FROM || ++this.lookups > INDEX_AFTER)) {
      this.at = new Map(rows.map((r, i) => [r.id, i]));
      if (!this.rows) INDEXES.set(this.base, this.at);
    }
    if (!this.at) return rows.findIndex((r) => r.id === id);
    const i = this.at.get(id);
    if (i === undefined) return -1;
    return rows[i]?.id === id ? i : rows.findIndex((r) => r.id === id);
  }

  find(id: string): T | undefined {
    const i = this.position(id);
    return i < 0 ? undefined : (this.rows ?? this.base)[i];
  }

  put(row: T): void {
    const i = this.position(row.id);
    const rows = (this.rows ??= [...this.base]);
    this.changes?.push({ old: i < 0 ? undefined : rows[i], row });
    if (i < 0) {
      this.at?.set(row.id, rows.length);
      rows.push(row);
    } else rows[i] = row;
  }

  remove(keep: (row: T) => boolean): void {
    const current = this.rows ?? this.base;
    const kept = current.filter(keep);
    if (kept.length === current.length) return;
    this.rows = kept;
    this.at = null;
    this.changes = null;
  }

  result(): readonly T[] {
    if (this.rows && this.at) INDEXES.set(this.rows, this.at);
    return this.rows ?? this.base;
  }
}

/** Rules by group id (creation order within each group), per rules list; see `rulesByGroup`. */
const RULES_BY_GROUP = new WeakMap<readonly RuleRow[], ReadonlyMap<string, readonly RuleRow[]>>();

/**
 * The rules of every group, in creation order, of one snapshot's rules list:
 * built in one pass on first use, and handed on by `applyOps` to the list it
 * derives by appends and same-group replacements (one group's list copied,
 * not the project's rules scanned: a rule create costs its group, issue 16).
 * Shared, do not mutate.
 */
export function rulesByGroup(rules: readonly RuleRow[]): ReadonlyMap<string, readonly RuleRow[]> {
  let by = RULES_BY_GROUP.get(rules);
  if (!by) {
    const m = new Map<string, RuleRow[]>();
    for (const r of rules) {
      const list = m.get(r.security_group_id);
      if (list) list.push(r);
      else m.set(r.security_group_id, [r]);
    }
    RULES_BY_GROUP.set(rules, (by = m));
  }
  return by;
}

/** `rulesByGroup` of `next`, derived from that of `base` when `next` is `base` with the rows `changes` put (null when it cannot be). */
function deriveRulesByGroup(base: readonly RuleRow[], next: readonly RuleRow[], changes: readonly { old: RuleRow | undefined; row: RuleRow }[]): void {
  const prev = RULES_BY_GROUP.get(base);
  // a rule moved to another group would need its place among that group's rules: built anew when asked
  if (!prev || changes.some((c) => c.old && c.old.security_group_id !== c.row.security_group_id)) return;
  const by = new Map(prev);
  const copied = new Set<string>();
  for (const { old, row } of changes) {
    const gid = row.security_group_id;
    let list = by.get(gid) as RuleRow[] | undefined;
    if (!copied.has(gid)) {
      list = list ? [...list] : [];
      by.set(gid, list);
      copied.add(gid);
    }
    const at = old ? list!.findIndex((r) => r.id === row.id) : -1;
    if (at < 0) list!.push(row);
    else list![at] = row;
  }
  RULES_BY_GROUP.set(next, by);
}

/**
 * Applies ops in memory. `setPolicy` records the hash with revision null
 * (revisions are assigned by the store), `setToken` is not part of a snapshot.
 */
export function applyOps(snap: ProjectSnapshot, ops: readonly Op[]): ProjectSnapshot {
  const groups = new ListEdit(snap.groups);
  const rules = new ListEdit(snap.rules);
  const addressGroups = new ListEdit(snap.addressGroups);
  const instances = new ListEdit(snap.instances);
  for (const o of ops) {
    switch (o.op) {
      case 'putGroup':
        groups.put(o.group);
        break;
      case 'deleteGroup':
        groups.remove((g) => g.id !== o.id);
        rules.remove((r) => r.security_group_id !== o.id);
        break;
      case 'putRule':
        rules.put(o.rule);
        break;
      case 'deleteRule':
        rules.remove((r) => r.id !== o.id);
        break;
      case 'putAddressGroup':
        addressGroups.put(o.addressGroup);
        break;
      case 'deleteAddressGroup':
        addressGroups.remove((a) => a.id !== o.id);
        break;
      case 'putInstance': {
        const old = instances.find(o.instance.id);
        instances.put({ ...o.instance, revision: old?.revision ?? null, policy_hash: old?.policy_hash ?? null });
        break;
      }
      case 'deleteInstance':
        instances.remove((i) => i.id !== o.id);
        break;
      case 'setPolicy': {
        const old = instances.find(o.instanceId);
        if (old) instances.put({ ...old, policy_hash: o.hash });
        break;
      }
      case 'setToken':
        break;
    }
  }
  const nextRules = rules.result();
  if (nextRules !== snap.rules && rules.changes) deriveRulesByGroup(snap.rules, nextRules, rules.changes);
  return { projectId: snap.projectId, version: snap.version, groups: groups.result(), rules: nextRules, addressGroups: addressGroups.result(), instances: instances.result() };
}
