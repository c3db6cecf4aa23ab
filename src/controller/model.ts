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
 * (the snapshot's own array is never touched). Rows are found by a scan
 * (no allocation: the one or two puts of an API write) until INDEX_AFTER
 * lookups, then through an index of ids, so applying k ops to a list of n
 * rows costs O(n * min(k, INDEX_AFTER) + k), not O(k * n).
 */
const INDEX_AFTER = 8;
class ListEdit<T extends { id: string }> {
  private rows: T[] | null = null;
  private at: Map<string, number> | null = null;
  private lookups = 0;

  constructor(private readonly base: readonly T[]) {}

  private position(id: string): number {
    const rows = this.rows ?? this.base;
    if (!this.at && ++this.lookups > INDEX_AFTER) this.at = new Map(rows.map((r, i) => [r.id, i]));
    if (this.at) return this.at.get(id) ?? -1;
    return rows.findIndex((r) => r.id === id);
  }

  find(id: string): T | undefined {
    const i = this.position(id);
    return i < 0 ? undefined : (this.rows ?? this.base)[i];
  }

  put(row: T): void {
    const i = this.position(row.id);
    const rows = (this.rows ??= [...this.base]);
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
  }

  result(): readonly T[] {
    return this.rows ?? this.base;
  }
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
  return { projectId: snap.projectId, version: snap.version, groups: groups.result(), rules: rules.result(), addressGroups: addressGroups.result(), instances: instances.result() };
}
