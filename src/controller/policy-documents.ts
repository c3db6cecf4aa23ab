/**
 * The per-instance policy documents (SEMANTICS section 8) the controller
 * stores and pushes, built from a project snapshot, and the change impact
 * (which instances' documents a set of ops can change).
 *
 * The document is serialised in one fixed field order so the same state
 * always gives the same bytes; it is stored without its revision (the
 * "body"), and `renderPolicyText` puts the revision in front. GET .../policy
 * and the agent's `policy` frame both use that one function, so they are
 * byte-identical.
 */
import { parseIp } from '../policy/address.js';
import { checkPolicy } from '../policy/schema.js';
import { SecgroupError, formatIssue } from '../lib/errors.js';
import { sha256 } from '../lib/hash.js';
import { rulesByGroup, type AddressGroupRow, type GroupRow, type InstanceRow, type Op, type ProjectSnapshot, type RuleRow } from './model.js';

/** The full document text for a stored body. */
export function renderPolicyText(revision: number, body: string): string {
  return `{"revision":${revision},${body.slice(1)}`;
}

/** Prefix of the digests `policyDigest` makes; a stored hash without it is the sha256 of the whole body (before). */
const DIGEST_V2 = 'v2:';

/**
 * The change digest of a document body (`InstanceRow.policy_hash`) from its
 * two parts: the instance's own beginning (`{"instance":{...},`) and the
 * sha256 of the rest (the tail, shared between documents), so a batch hashes
 * each shared tail once instead of every whole document.
 */
export function policyDigest(instancePart: string, tailHash: string): string {
  return DIGEST_V2 + sha256(`${instancePart}\n${tailHash}`);
}

/** `policyDigest` of a whole body. */
export function policyDigestOfBody(body: string): string {
  const i = body.indexOf(',"security_groups":') + 1;
  return policyDigest(body.slice(0, i), sha256(body.slice(i)));
}

/** Whether a stored hash says the document is `body` (digest of its parts, or a whole-body sha256 stored before digests). */
function sameDocument(stored: string | null, digest: string, body: string): boolean {
  if (stored === null) return false;
  if (stored.startsWith(DIGEST_V2)) return stored === digest;
  return stored === sha256(body);
}

/**
 * Lookup tables over one snapshot, for one batch of compilations. The rules
 * and members of a group are found when a document first needs them (a
 * write that touches one group reads that group, not the project: issue 16):
 * rules from the snapshot's `rulesByGroup`; members by a scan, and after
 * LAZY_GROUPS groups all at once in one pass, so a batch never costs more
 * than a few passes over the project's instances.
 */
export interface ProjectIndex {
  snap: ProjectSnapshot;
  groups: Map<string, GroupRow>;
  /** enabled rules by group, in creation order; complete once `rulesIndexed` */
  rulesByGroup: Map<string, RuleRow[]>;
  rulesIndexed: boolean;
  /** instances by group, in creation order; complete once `membersIndexed` */
  membersByGroup: Map<string, InstanceRow[]>;
  membersIndexed: boolean;
  addressGroups: Map<string, AddressGroupRow>;
  /** sorted member addresses by `group|families`, shared by every document of the batch */
  memberLists: Map<string, string[]>;
  /** the same lists serialised (JSON), by the same key */
  memberListTexts: Map<string, string>;
  /** one security group of a document (`{id, name, rules}`) serialised, by group id */
  groupTexts: Map<string, string>;
  /** everything of a document after `instance`, by the instance's group list (see `documentTail`) */
  tails: Map<string, DocumentTail>;
}

/** Groups whose rules (or members) are found one by one before the whole project is indexed at once. */
const LAZY_GROUPS = 4;

export function indexProject(snap: ProjectSnapshot): ProjectIndex {
  return {
    snap,
    groups: new Map(snap.groups.map((g) => [g.id, g])),
    rulesByGroup: new Map(),
    rulesIndexed: false,
    membersByGroup: new Map(),
    membersIndexed: false,
    addressGroups: new Map(snap.addressGroups.map((a) => [a.id, a])),
    memberLists: new Map(),
    memberListTexts: new Map(),
    groupTexts: new Map(),
    tails: new Map(),
  };
}

function groupBy<T>(items: readonly T[], keys: (item: T) => readonly string[] | string | null): Map<string, T[]> {
  const by = new Map<string, T[]>();
  for (const item of items) {
    const k = keys(item);
    for (const key of k === null ? [] : typeof k === 'string' ? [k] : k) {
      const list = by.get(key);
      if (list) list.push(item);
      else by.set(key, [item]);
    }
  }
  return by;
}

/**
 * The group's enabled rules (a disabled rule is kept but never reaches a
 * document, SEMANTICS section 1), from the snapshot's rules by group
 * (`rulesByGroup`, kept from write to write), so finding them costs the group.
 */
export function rulesOfGroup(ix: ProjectIndex, gid: string): readonly RuleRow[] {
  let list = ix.rulesByGroup.get(gid);
  if (list || ix.rulesIndexed) return list ?? [];
  list = (rulesByGroup(ix.snap.rules).get(gid) ?? []).filter((r) => r.enabled);
  ix.rulesByGroup.set(gid, list);
  return list;
}

/** The group's instances. */
function membersOfGroup(ix: ProjectIndex, gid: string): readonly InstanceRow[] {
  let list = ix.membersByGroup.get(gid);
  if (list || ix.membersIndexed) return list ?? [];
  if (ix.membersByGroup.size < LAZY_GROUPS) {
    list = ix.snap.instances.filter((i) => i.security_groups.includes(gid));
    ix.membersByGroup.set(gid, list);
    return list;
  }
  ix.membersByGroup = groupBy(ix.snap.instances, (i) => i.security_groups);
  ix.membersIndexed = true;
  return ix.membersByGroup.get(gid) ?? [];
}

/** Member addresses of a group in the given families, deduplicated, IPv4 before IPv6, numerically sorted. */
function memberList(ix: ProjectIndex, gid: string, fams: ReadonlySet<4 | 6>): string[] {
  const key = `${gid}|${[...fams].sort().join()}`;
  let list = ix.memberLists.get(key);
  if (!list) {
    const keyed = new Map<string, { family: number; value: bigint }>();
    for (const m of membersOfGroup(ix, gid)) {
      for (const a of m.addresses) {
        if (keyed.has(a)) continue;
        const ip = parseIp(a);
        if (fams.has(ip.family)) keyed.set(a, ip);
      }
    }
    list = [...keyed]
      .sort(([, x], [, y]) => (x.family !== y.family ? x.family - y.family : x.value < y.value ? -1 : x.value > y.value ? 1 : 0))
      .map(([a]) => a);
    ix.memberLists.set(key, list);
  }
  return list;
}

function ruleDoc(r: RuleRow): Record<string, unknown> {
  const d: Record<string, unknown> = { id: r.id, direction: r.direction, priority: r.priority, action: r.action, ethertype: r.ethertype };
  if (r.protocol) d.protocol = r.protocol;
  if (r.multiport) d.multiport = r.multiport;
  if (r.icmp_type !== null) d.icmp_type = r.icmp_type;
  if (r.icmp_code !== null) d.icmp_code = r.icmp_code;
  if (r.remote_ip_prefix) d.remote_ip_prefix = r.remote_ip_prefix;
  if (r.remote_group_id) d.remote_group_id = r.remote_group_id;
  if (r.remote_address_group_id) d.remote_address_group_id = r.remote_address_group_id;
  return d;
}

/** A policy document without `revision`, in serialisation order. */
export interface PolicyBody {
  instance: { id: string; addresses: string[] };
  security_groups: { id: string; name: string; rules: Record<string, unknown>[] }[];
  address_groups: { id: string; ip_version: 4 | 6; ip_set: string[] }[];
  group_members: Record<string, string[]>;
}

/**
 * The document body (everything but `revision`) for one instance. Members of
 * a referenced group are listed only in the families that referencing rules
 * use, so an address change in an unused family changes no document.
 */
export function compileInstanceBody(ix: ProjectIndex, inst: InstanceRow): string {
  return JSON.stringify(compileInstanceDoc(ix, inst));
}

/** The document (without `revision`) as an object; member lists are shared between documents of a batch, do not mutate. */
export function compileInstanceDoc(ix: ProjectIndex, inst: InstanceRow): PolicyBody {
  const { groups, families, address_groups } = documentGroups(ix, inst.id, inst.security_groups);
  const group_members: Record<string, string[]> = {};
  for (const gid of [...families.keys()].sort()) group_members[gid] = memberList(ix, gid, families.get(gid)!);
  return {
    instance: { id: inst.id, addresses: inst.addresses },
    security_groups: groups.map(({ g, rules }) => ({ id: g.id, name: g.name, rules: rules.map(ruleDoc) })),
    address_groups,
    group_members,
  };
}

/**
 * The security groups of a document (the instance's, in its order) with their
 * rules, the address families in which rules reference each remote group, and
 * the referenced address groups (sorted by id). Throws INTERNAL naming
 * `instanceId` for an unknown group, or an unknown address group.
 */
function documentGroups(
  ix: ProjectIndex,
  instanceId: string,
  groupIds: readonly string[],
): { groups: { g: GroupRow; rules: readonly RuleRow[] }[]; families: Map<string, Set<4 | 6>>; address_groups: PolicyBody['address_groups'] } {
  const families = new Map<string, Set<4 | 6>>();
  const addressGroupIds = new Set<string>();
  const groups = groupIds.map((gid) => {
    const g = ix.groups.get(gid);
    if (!g) throw new SecgroupError('INTERNAL', `instance ${instanceId} is associated with unknown group ${gid}`);
    const rules = rulesOfGroup(ix, gid);
    for (const r of rules) {
      if (r.remote_group_id) {
        const set = families.get(r.remote_group_id) ?? new Set();
        set.add(r.ethertype === 'IPv6' ? 6 : 4);
        families.set(r.remote_group_id, set);
      }
      if (r.remote_address_group_id) addressGroupIds.add(r.remote_address_group_id);
    }
    return { g, rules };
  });
  const address_groups = [...addressGroupIds].sort().map((id) => {
    const a = ix.addressGroups.get(id);
    if (!a) throw new SecgroupError('INTERNAL', `a rule references unknown address group ${id}`);
    return { id: a.id, ip_version: a.ip_version, ip_set: a.ip_set };
  });
  return { groups, families, address_groups };
}

/**
 * The part of a document after `instance`, which depends only on the
 * instance's group list: documents of instances with the same groups share
 * it within a batch (serialised once, validated once).
 */
export interface DocumentTail {
  /** `"security_groups":[...],"address_groups":[...],"group_members":{...}}`: the body's text after `{"instance":...,` */
  text: string;
  /** the `group_members` value (`{...}`), one string shared by every document of the tail */
  membersText: string;
  /** the document without instance and members, for validation: members as empty lists */
  probe: Omit<PolicyBody, 'instance'>;
  /** null until validated */
  valid: boolean | null;
  /** sha256 of `text`, null until needed */
  hash: string | null;
}

function groupText(ix: ProjectIndex, gid: string, g: GroupRow, rules: readonly RuleRow[]): string {
  let text = ix.groupTexts.get(gid);
  if (text === undefined) {
    text = JSON.stringify({ id: g.id, name: g.name, rules: rules.map(ruleDoc) });
    ix.groupTexts.set(gid, text);
  }
  return text;
}

function memberListText(ix: ProjectIndex, gid: string, fams: ReadonlySet<4 | 6>): string {
  const key = `${gid}|${[...fams].sort().join()}`;
  let text = ix.memberListTexts.get(key);
  if (text === undefined) {
    text = JSON.stringify(memberList(ix, gid, fams));
    ix.memberListTexts.set(key, text);
  }
  return text;
}

/**
 * The tail of the documents of instances in `groups` (in this order), built
 * like `compileInstanceDoc` builds the same fields, so `{"instance":...,` +
 * tail is byte-identical to `JSON.stringify(compileInstanceDoc(...))`.
 * Throws what `compileInstanceDoc` throws, naming `instanceId`.
 */
export function documentTail(ix: ProjectIndex, instanceId: string, groups: readonly string[]): DocumentTail {
  const key = groups.join('\u0000');
  let tail = ix.tails.get(key);
  if (tail) return tail;
  const { groups: docGroups, families, address_groups } = documentGroups(ix, instanceId, groups);
  const groupTexts = docGroups.map(({ g, rules }) => groupText(ix, g.id, g, rules));
  const security_groups = docGroups.map(({ g, rules }) => ({ id: g.id, name: g.name, rules: rules.map(ruleDoc) }));
  // Assigned into an object like compileInstanceDoc does, so the key order (integer-like ids first) and
  // anything an object refuses as a key are the same.
  const members: Record<string, string> = {};
  const empty: Record<string, string[]> = {};
  for (const gid of [...families.keys()].sort()) {
    members[gid] = memberListText(ix, gid, families.get(gid)!);
    empty[gid] = [];
  }
  const membersText = Object.keys(members)
    .map((gid) => `${JSON.stringify(gid)}:${members[gid]!}`)
    .join(',');
  const membersValue = `{${membersText}}`;
  tail = {
    text: `"security_groups":[${groupTexts.join(',')}],"address_groups":${JSON.stringify(address_groups)},"group_members":${membersValue}}`,
    membersText: membersValue,
    probe: { security_groups, address_groups, group_members: Object.fromEntries(Object.keys(empty).map((k) => [k, []])) },
    valid: null,
    hash: null,
  };
  ix.tails.set(key, tail);
  return tail;
}

/** `compileInstanceBody` for a batch: the text of the instance's part plus the shared tail. */
export function compileInstanceText(ix: ProjectIndex, inst: InstanceRow): { body: string; instancePart: string; tail: DocumentTail } {
  const tail = documentTail(ix, inst.id, inst.security_groups);
  const instancePart = `{"instance":${JSON.stringify({ id: inst.id, addresses: inst.addresses })},`;
  return { body: instancePart + tail.text, instancePart, tail };
}

const PROBE_INSTANCE = { id: 'probe', addresses: [] as string[] };

/** What a set of ops changed, in the terms that decide which documents can change. */
export interface Touched {
  /** groups whose name or rules changed */
  groups: Set<string>;
  /** groups whose member addresses changed */
  membership: Set<string>;
  addressGroups: Set<string>;
  /** instances whose own part (addresses, group list) changed, or that are new */
  instances: Set<string>;
}

export function touchedBy(before: ProjectSnapshot, ops: readonly Op[]): Touched {
  const t: Touched = { groups: new Set(), membership: new Set(), addressGroups: new Set(), instances: new Set() };
  // built on first use: a rule create (the common write) needs neither
  let rules: Map<string, RuleRow> | undefined;
  let instances: Map<string, InstanceRow> | undefined;
  const oldRules = { get: (id: string) => (rules ??= new Map(before.rules.map((r) => [r.id, r]))).get(id) };
  const oldInstances = { get: (id: string) => (instances ??= new Map(before.instances.map((i) => [i.id, i]))).get(id) };
  for (const o of ops) {
    switch (o.op) {
      case 'putGroup':
        t.groups.add(o.group.id);
        break;
      case 'deleteGroup':
        t.groups.add(o.id);
        break;
      case 'putRule':
        t.groups.add(o.rule.security_group_id);
        break;
      case 'deleteRule': {
        const r = oldRules.get(o.id);
        if (r) t.groups.add(r.security_group_id);
        break;
      }
      case 'putAddressGroup':
        t.addressGroups.add(o.addressGroup.id);
        break;
      case 'deleteAddressGroup':
        t.addressGroups.add(o.id);
        break;
      case 'putInstance': {
        const old = oldInstances.get(o.instance.id);
        const next = o.instance;
        t.instances.add(next.id);
        if (!old) {
          for (const g of next.security_groups) t.membership.add(g);
        } else if (old.addresses.join() !== next.addresses.join()) {
          for (const g of [...old.security_groups, ...next.security_groups]) t.membership.add(g);
        } else {
          for (const g of old.security_groups) if (!next.security_groups.includes(g)) t.membership.add(g);
          for (const g of next.security_groups) if (!old.security_groups.includes(g)) t.membership.add(g);
        }
        break;
      }
      case 'deleteInstance': {
        const old = oldInstances.get(o.id);
        for (const g of old?.security_groups ?? []) t.membership.add(g);
        break;
      }
      case 'setToken':
      case 'setPolicy':
        break;
    }
  }
  return t;
}

/**
 * Instances (of `ix.snap`, the state after the change) whose document can
 * have changed: members of changed groups, instances whose rules reference a
 * group whose membership changed or a changed address group, and the changed
 * instances themselves - and only those.
 */
export function affectedInstances(ix: ProjectIndex, t: Touched): InstanceRow[] {
  const groupAffected = new Map<string, boolean>();
  // only a change of members or of an address group makes other groups' rules matter
  const referenced = t.membership.size > 0 || t.addressGroups.size > 0;
  const isAffected = (gid: string): boolean => {
    let v = groupAffected.get(gid);
    if (v === undefined) {
      v =
        t.groups.has(gid) ||
        (referenced &&
          rulesOfGroup(ix, gid).some(
            (r) => (r.remote_group_id !== null && t.membership.has(r.remote_group_id)) || (r.remote_address_group_id !== null && t.addressGroups.has(r.remote_address_group_id)),
          ));
      groupAffected.set(gid, v);
    }
    return v;
  };
  return ix.snap.instances.filter((i) => t.instances.has(i.id) || i.security_groups.some(isAffected));
}

/**
 * `setPolicy` ops (with the body's parts) for every affected instance whose document content changed.
 * Every new document is checked with the agent's own validator first: the
 * controller never stores a document an agent would reject.
 */
export function recompile(after: ProjectSnapshot, t: Touched): { ops: Op[]; compiled: number } {
  const ix = indexProject(after);
  const affected = affectedInstances(ix, t);
  const ops: Op[] = [];
  for (const inst of affected) {
    const { body, instancePart, tail } = compileInstanceText(ix, inst);
    tail.hash ??= sha256(tail.text);
    const hash = policyDigest(instancePart, tail.hash);
    if (sameDocument(inst.policy_hash, hash, body)) continue;
    // Member addresses were parsed when the member lists were built (parseIp throws on anything else).
    // The rest is validated in two parts that the validator checks independently of each other: the
    // tail once per group list (with a fixed valid instance), the instance's own part per document
    // (with an empty rest). Only when one fails is the whole document checked, for the same message.
    if (tail.valid === null) tail.valid = checkPolicy({ revision: 0, instance: PROBE_INSTANCE, ...tail.probe }).ok;
    const instanceOk = checkPolicy({ revision: 0, instance: { id: inst.id, addresses: inst.addresses }, security_groups: [], address_groups: [], group_members: {} }).ok;
    if (!tail.valid || !instanceOk) {
      const check = checkPolicy({ revision: 0, instance: { id: inst.id, addresses: inst.addresses }, ...tail.probe });
      if (!check.ok) {
        throw new SecgroupError('INTERNAL', `compiled policy of instance ${inst.id} is invalid: ${check.issues.map(formatIssue).join('; ')}`);
      }
    }
    ops.push({ op: 'setPolicy', instanceId: inst.id, body, hash, parts: { instance: instancePart, shared: tail.text, sharedHash: tail.hash, members: tail.membersText } });
  }
  return { ops, compiled: affected.length };
}
