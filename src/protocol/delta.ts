/**
 * Membership deltas (protocol `policy_delta`), shared by both sides: the
 * controller computes them with `diffGroupMembers`, the agent applies them
 * with `applyPolicyDelta`. Pure; no I/O.
 *
 * Member lists are kept in the controller's canonical order (deduplicated,
 * IPv4 before IPv6, numerically ascending), so applying a delta to the
 * previous document gives exactly (also when serialised) the document the
 * controller compiled for the new revision.
 */
import { canonicalIp, parseIp } from '../policy/address.js';
import { definePacked, memberTexts, packedSource, type PackedMembers, type PackedSource } from '../policy/packed-members.js';
import type { PolicyDeltaMessage } from './messages.js';

/** Per-group changes: addresses added to / removed from a group's member list. */
export type GroupMembersDelta = Record<string, { add: string[]; remove: string[] }>;

/** What `applyPolicyDelta` needs of a delta (a `policy_delta` message fits). */
export type PolicyDelta = Pick<PolicyDeltaMessage, 'base_revision' | 'revision' | 'group_members'>;

/** A delta that cannot be applied to the given document; the agent answers `resync` with the message as reason. */
export class PolicyDeltaError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'PolicyDeltaError';
  }
}

/**
 * The per-group changes from `before` to `after`, or null when the two do not
 * list the same groups (a group added or removed is not a delta: send the
 * full document). Groups whose members did not change are left out, so an
 * empty object means the lists are equal. `add` follows `after`'s order,
 * `remove` `before`'s.
 */
export function diffGroupMembers(before: Readonly<Record<string, readonly string[]>>, after: Readonly<Record<string, readonly string[]>>): GroupMembersDelta | null {
  const beforeKeys = Object.keys(before);
  const afterKeys = Object.keys(after);
  if (beforeKeys.length !== afterKeys.length) return null;
  for (const k of afterKeys) if (!Object.hasOwn(before, k)) return null;
  const out: GroupMembersDelta = {};
  for (const gid of afterKeys) {
    const old = before[gid]!;
    const cur = after[gid]!;
    if (old === cur || sameList(old, cur)) continue;
    const oldSet = new Set(old);
    const curSet = new Set(cur);
    const add = cur.filter((a) => !oldSet.has(a));
    const remove = old.filter((a) => !curSet.has(a));
    if (add.length || remove.length) out[gid] = { add, remove };
  }
  return out;
}

function sameList(a: readonly string[], b: readonly string[]): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

type Key = { family: number; value: bigint };

function keyOf(address: string, gid: string): Key {
  try {
    return parseIp(address);
  } catch {
    throw new PolicyDeltaError(`group_members.${gid}: ${JSON.stringify(address)} is not an IP address`);
  }
}

function cmp(x: Key, y: Key): number {
  return x.family !== y.family ? x.family - y.family : x.value < y.value ? -1 : x.value > y.value ? 1 : 0;
}

/** First position in `list` (canonical order) whose address is not below `k` (log n parses). */
function lowerBound(list: readonly string[], k: Key, gid: string): number {
  let lo = 0;
  let hi = list.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (cmp(keyOf(list[mid]!, gid), k) < 0) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

/**
 * `list` (in canonical order) without `remove`, plus `add`, in canonical
 * order. Binary searches and splices: the cost grows with the size of the
 * change, not of the group (a one-address change to 100k members: ~0.1 ms).
 * A list that is not in canonical order still loses its removed members
 * (found by a linear search then). For a few changes to a long list.
 */
function applySmall(gid: string, list: readonly string[], change: { add: readonly string[]; remove: readonly string[] }): string[] {
  const out = list.slice();
  for (const a of change.remove) {
    const k = keyOf(a, gid);
    let i = lowerBound(out, k, gid);
    if (i >= out.length || cmp(keyOf(out[i]!, gid), k) !== 0) i = out.findIndex((x) => x === a);
    if (i >= 0) out.splice(i, 1);
  }
  for (const a of change.add) {
    const k = keyOf(a, gid);
    const i = lowerBound(out, k, gid);
    if (i < out.length && cmp(keyOf(out[i]!, gid), k) === 0) continue;
    out.splice(i, 0, a);
  }
  return out;
}

/** `list` (in canonical order) without `remove`, plus `add`, in canonical order. */
function applyGroup(gid: string, list: readonly string[], change: { add: readonly string[]; remove: readonly string[] }): string[] {
  const n = change.add.length + change.remove.length;
  return n * 32 < list.length ? applySmall(gid, list, change) : applyLarge(gid, list, change);
}

/** The same for many changes: one pass over the list. */
function applyLarge(gid: string, list: readonly string[], change: { add: readonly string[]; remove: readonly string[] }): string[] {
  const removeSet = new Set(change.remove);
  const kept = removeSet.size ? list.filter((a) => !removeSet.has(a)) : [...list];
  const present = new Set(kept);
  const adds: { a: string; k: Key }[] = [];
  for (const a of change.add) {
    if (present.has(a)) continue;
    present.add(a);
    adds.push({ a, k: keyOf(a, gid) });
  }
  if (!adds.length) return kept;
  adds.sort((x, y) => cmp(x.k, y.k));
  const log = Math.ceil(Math.log2(kept.length + 1));
  if (adds.length * log < kept.length) {
    // a few additions: binary-search each position (log n parses each) instead of parsing the whole list
    for (const { a, k } of adds) {
      let lo = 0;
      let hi = kept.length;
      while (lo < hi) {
        const mid = (lo + hi) >>> 1;
        if (cmp(keyOf(kept[mid]!, gid), k) < 0) lo = mid + 1;
        else hi = mid;
      }
      kept.splice(lo, 0, a);
    }
    return kept;
  }
  const out: string[] = [];
  let j = 0;
  for (const a of kept) {
    const k = keyOf(a, gid);
    while (j < adds.length && cmp(adds[j]!.k, k) < 0) out.push(adds[j++]!.a);
    out.push(a);
  }
  while (j < adds.length) out.push(adds[j++]!.a);
  return out;
}

/**
 * A member list not built yet: `base` with the net `change` of the deltas
 * since (built on first read, then kept). A packed list's (`packedBase`,
 * policy/packed-members.ts: every address added in canonical text) is built
 * packed: a copy of the base's sets with the change applied.
 */
interface PendingList {
  base: readonly string[];
  packedBase?: PackedSource;
  add: Set<string>;
  remove: Set<string>;
  built?: string[];
  builtPacked?: PackedMembers;
}

/** The pending lists of a document's `group_members` object (only those made by `applyPolicyDelta`). */
const pendingLists = new WeakMap<object, Map<string, PendingList>>();

function built(gid: string, p: PendingList): string[] {
  if (p.built === undefined) {
    p.built = applyGroup(gid, p.base, { add: [...p.add], remove: [...p.remove] });
    // the base list is not needed any more: let it go with the document that holds it
    p.base = [];
    p.add.clear();
    p.remove.clear();
  }
  return p.built;
}

function builtPacked(p: PendingList): PackedMembers {
  if (p.builtPacked === undefined) {
    const base = p.packedBase!();
    const v4 = base.v4.clone();
    const v6 = base.v6.clone();
    // as applyGroup: the removed first, then the added (an address in both ends up a member)
    for (const a of p.remove) {
      const k = parseIp(a);
      (k.family === 4 ? v4 : v6).delete(k.value);
    }
    for (const a of p.add) {
      const k = parseIp(a);
      (k.family === 4 ? v4 : v6).insert(k.value);
    }
    p.builtPacked = { v4, v6 };
    p.packedBase = undefined;
    p.add.clear();
    p.remove.clear();
  }
  return p.builtPacked;
}

const isBuilt = (p: PendingList): boolean => p.built !== undefined || p.builtPacked !== undefined;

/**
 * Can the list stay packed with `change` applied? Every address of the
 * change must be in canonical text: an added one is given back in the text
 * a packed list writes, and a removed one is then matched by value as by
 * text, which the string path does not always do (applyLarge matches text).
 * Otherwise the list goes on as strings, exactly as before.
 */
const packable = (change: { add: readonly string[]; remove: readonly string[] }): boolean => change.add.every((a) => canonicalIp(a) === a) && change.remove.every((a) => canonicalIp(a) === a);

/** A pending list over a packed base as one over its strings (a change that cannot stay packed). */
function unpacked(p: PendingList): PendingList {
  return p.packedBase ? { base: memberTexts(p.packedBase()), add: p.add, remove: p.remove } : p;
}

/** `p`, then `change`, as one change against `p.base` (a later add undoes an earlier remove and the reverse). */
function compose(p: PendingList, change: { add: readonly string[]; remove: readonly string[] }): PendingList {
  const add = new Set(p.add);
  const remove = new Set(p.remove);
  for (const a of change.remove) {
    add.delete(a);
    remove.add(a);
  }
  for (const a of change.add) {
    remove.delete(a);
    add.add(a);
  }
  return { base: p.base, ...(p.packedBase ? { packedBase: p.packedBase } : {}), add, remove };
}

/**
 * The document `delta` describes: `doc` (the delta's base revision) with the
 * delta's revision and member changes; every other field and the key order
 * are kept, `doc` is not modified. Throws PolicyDeltaError when `doc` is not
 * the delta's base or the delta names a group `doc` does not list.
 *
 * A changed member list is built when it is first read (an enumerable
 * getter: JSON.stringify, spreading and iterating see a plain list), and a
 * delta on a document whose list was not read yet composes with the change
 * it waits with: a stream of one-member deltas to a 100k-member group copies
 * no list per delta (a copy of 100k entries cost ~10 ms of CPU and garbage),
 * only when something reads the list (the agent: writing the last known good
 * every few seconds, a full compile).
 */
export function applyPolicyDelta<D extends { revision: number; group_members: Readonly<Record<string, readonly string[]>> }>(doc: D, delta: PolicyDelta): D {
  if (doc.revision !== delta.base_revision) {
    throw new PolicyDeltaError(`the delta is against revision ${delta.base_revision}, the newest document here is revision ${doc.revision}`);
  }
  if (delta.revision <= delta.base_revision) throw new PolicyDeltaError(`the delta's revision ${delta.revision} is not above its base ${delta.base_revision}`);
  for (const [gid, c] of Object.entries(delta.group_members)) {
    if (!Object.hasOwn(doc.group_members, gid)) throw new PolicyDeltaError(`the delta changes group ${JSON.stringify(gid)}, which revision ${doc.revision} does not list`);
    // now, not when the list is built
    for (const a of [...c.add, ...c.remove]) keyOf(a, gid);
  }
  const before = pendingLists.get(doc.group_members);
  const pending = new Map<string, PendingList>();
  const group_members: Record<string, string[]> = {};
  for (const gid of Object.keys(doc.group_members)) {
    const change = Object.hasOwn(delta.group_members, gid) ? delta.group_members[gid] : undefined;
    const waiting = before?.get(gid);
    const open = waiting !== undefined && !isBuilt(waiting);
    // a packed list (policy/packed-members.ts) is read packed, never as strings
    const source = open ? undefined : packedSource(doc.group_members, gid);
    if (!change && !open) {
      // unchanged lists are shared with `doc` (documents are never modified in place)
      if (source) definePacked(group_members, gid, source);
      else group_members[gid] = doc.group_members[gid] as string[];
      continue;
    }
    let p: PendingList;
    if (!change) p = waiting!;
    else if (open) p = compose(waiting.packedBase && !packable(change) ? unpacked(waiting) : waiting, change);
    else if (source && packable(change)) p = compose({ base: [], packedBase: source, add: new Set(), remove: new Set() }, change);
    else p = compose({ base: doc.group_members[gid]!, add: new Set(), remove: new Set() }, change);
    pending.set(gid, p);
    if (p.packedBase) definePacked(group_members, gid, () => builtPacked(p));
    else Object.defineProperty(group_members, gid, { enumerable: true, configurable: true, get: () => built(gid, p) });
  }
  if (pending.size) pendingLists.set(group_members, pending);
  return { ...doc, revision: delta.revision, group_members };
}
