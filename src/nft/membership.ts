/**
 * Membership fast path (pure): a change to remote-group members (protocol
 * `policy_delta`) turned into element updates of the already compiled table,
 * without compiling the whole policy again. Its cost depends on the number of
 * changed addresses and rules, not on the size of the groups.
 *
 * The compiler keeps each remote group's members in a plain set per family
 * (see compile.ts), so a member joining or leaving is one element of that
 * set; the rules on the group and the maps after the set do not change. What
 * remains to prove is that the layers (first-match order) stay valid. For
 * each changed address `a` of family f and each rule R on the group:
 *  - R has a layer, or is shadowed (shadowing of group rules never depends
 *    on members). A rule with neither matched nothing when compiled (the
 *    group had no member of family f): a first member needs a full compile;
 *  - when `a` joins: every other rule Q of the same direction and family that
 *    can match the same packets as R (protocol, ports, ICMP) and has `a`
 *    among its peers now overlaps R, so Q's layer must be below R's if Q
 *    comes first and above it if Q comes later. A removal only takes
 *    overlaps away, which never breaks a layering;
 *  - `a` does not change in two groups at once.
 * Otherwise the caller compiles in full. The result decides every packet as
 * a full compile would; it can differ from one in layout (a rule whose
 * group lost its last member keeps its lookup, over an empty set).
 */
import { sha256 } from '../lib/hash.js';
import { parseIp, type AddrRange, type Family } from '../policy/address.js';
import type { NormalizedRule } from '../policy/normalize.js';
import type { Policy } from '../policy/schema.js';
import type { Compiled } from './compile.js';
import { memberSetName } from './names.js';
import { AddressSet, type Peers } from '../policy/address-set.js';
import { comment, memberElement, type MapElement, type VerdictMap } from './model.js';
import type { NftOp } from './transaction.js';
import { elementUpdateNarrows } from './diff.js';

/** Per remote group: members added and removed (addresses as text). */
export type MembershipChange = Record<string, { add: readonly string[]; remove: readonly string[] }>;

export type MembershipResult =
  | {
      ok: true;
      compiled: Compiled;
      ops: NftOp[];
      added: number;
      removed: number;
      /**
       * Can the change turn an inbound connection the rules allow now into
       * one they deny? True when an ingress allow rule's group loses a member
       * or an ingress deny rule's group gains one (rules that can decide a
       * packet: not shadowed, with a lookup). False for members joining
       * groups of ingress allow rules, leaving groups of deny rules, and any
       * change to groups only egress rules use: every connection allowed
       * before is allowed after (first match: the deny rules before its
       * allow still do not match it, and whatever matches it first now is an
       * allow), so the flow mark keeps its generation (reconciler.ts). Read
       * off the ops by diff.ts `elementUpdateNarrows`, as for a whole document.
       */
      narrows: boolean;
    }
  | { ok: false; reason: string };

/** More changed addresses than this: compile in full (a reload is then about as cheap). */
const MAX_CHANGES = 1000;

/** Index of the range holding `x` in sorted disjoint ranges, or -1. */
function find(ranges: readonly AddrRange[], x: bigint): number {
  let lo = 0;
  let hi = ranges.length - 1;
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    const r = ranges[mid]!;
    if (x < r.lo) hi = mid - 1;
    else if (x > r.hi) lo = mid + 1;
    else return mid;
  }
  return -1;
}

/** Do the peers hold address `x`? */
function holds(peers: Peers, x: bigint): boolean {
  return peers instanceof AddressSet ? peers.has(x) : find(peers, x) >= 0;
}

/** Can one packet match both rules, peers aside? (same direction and family) */
function samePackets(a: NormalizedRule, b: NormalizedRule): boolean {
  if (a.protocol !== null && b.protocol !== null && a.protocol !== b.protocol) return false;
  if (a.ports && b.ports && !a.ports.some(([a0, a1]) => b.ports!.some(([b0, b1]) => a0 <= b1 && b0 <= a1))) return false;
  if (a.icmpType !== null && b.icmpType !== null) {
    if (a.icmpType !== b.icmpType) return false;
    if (a.icmpCode !== null && b.icmpCode !== null && a.icmpCode !== b.icmpCode) return false;
  }
  return true;
}

interface SetChange {
  set: VerdictMap;
  members: AddressSet;
  family: Family;
  add: bigint[];
  remove: bigint[];
}

/**
 * Applies `change` (relative to the policy `prev` was compiled from) to the
 * compiled table. `policy` is the new document (its revision and instance
 * name the result). Returns the new compiled state and the element ops
 * (ending with the generation marker), or the reason it cannot.
 *
 * On success the result takes over `prev`'s big arrays (member lists, the
 * packed member sets) and changes them in place, so the cost does not grow with the
 * group: `prev` must not be used afterwards (if applying the ops fails, the
 * caller reloads from a full compile). On failure `prev` is untouched: every
 * check runs before anything is changed.
 */
export function applyMembershipChange(prev: Compiled, policy: Policy, change: MembershipChange): MembershipResult {
  const fail = (reason: string): MembershipResult => ({ ok: false, reason });
  let total = 0;
  for (const c of Object.values(change)) total += c.add.length + c.remove.length;
  if (total > MAX_CHANGES) return fail(`${total} changed addresses`);

  // ---- phase 1: checks and planned changes; nothing is modified ----
  const layout = prev.layout;
  const setChanges: SetChange[] = [];
  const peerEdits: { peers: AddressSet; add: bigint[]; remove: bigint[] }[] = [];
  const touched = new Set<string>(); // family:address changed in some group
  const effective: string[] = [];

  for (const [groupId, c] of Object.entries(change)) {
    for (const family of [4, 6] as Family[]) {
      const adds = new Set<bigint>();
      const removes = new Set<bigint>();
      for (const t of c.add) {
        const ip = parseIp(t);
        if (ip.family === family) adds.add(ip.value);
      }
      for (const t of c.remove) {
        const ip = parseIp(t);
        if (ip.family === family) {
          if (adds.has(ip.value)) return fail(`${t} is both added to and removed from ${groupId}`);
          removes.add(ip.value);
        }
      }
      if (!adds.size && !removes.size) continue;
      // rules on this group, per direction (same family)
      const affected: { key: string; index: number }[] = [];
      for (const direction of ['ingress', 'egress'] as const) {
        const key = `${direction}${family}`;
        const l = layout.get(key);
        if (!l) continue;
        l.rules.forEach((r, i) => {
          if (r.remote.kind === 'group' && r.remote.id === groupId) affected.push({ key, index: i });
        });
      }
      if (!affected.length) continue; // members of a group no rule of this family uses
      const first = affected[0]!;
      // every rule on the group shares one packed set of members (see normalizeRules)
      const peers = layout.get(first.key)!.rules[first.index]!.peers;
      if (!(peers instanceof AddressSet)) return fail(`the members of ${groupId} are not packed`);
      for (const { key, index } of affected) {
        if (layout.get(key)!.rules[index]!.peers !== peers) return fail(`rules on ${groupId} do not share their member list`);
      }
      const addList = [...adds].filter((a) => !peers.has(a));
      const removeList = [...removes].filter((a) => peers.has(a));
      if (!addList.length && !removeList.length) continue;
      for (const a of [...addList, ...removeList]) {
        // one address changing in two groups at once could create or remove an overlap between their rules
        if (touched.has(`${family}:${a}`)) return fail(`an address changes in more than one group`);
        touched.add(`${family}:${a}`);
      }

      let live = 0;
      for (const { key, index } of affected) {
        const l = layout.get(key)!;
        const r = l.rules[index]!;
        if (l.shadowed[index]) continue; // never matches first, whatever the members
        const layer = l.layers[index] ?? null;
        if (layer === null) {
          if (addList.length) return fail(`rule ${r.groupId}/${r.ruleId} has no lookup layer (group ${groupId} had no IPv${family} member)`);
          continue;
        }
        live++;
        if (!addList.length) continue;
        for (let j = 0; j < l.rules.length; j++) {
          const q = l.rules[j]!;
          const lj = l.layers[j] ?? null;
          if (j === index || lj === null || l.shadowed[j] || (q.remote.kind === 'group' && q.remote.id === groupId) || !samePackets(q, r)) continue;
          if (j < index ? lj < layer : lj > layer) continue; // any overlap between them is already in order
          for (const a of addList) {
            if (holds(q.peers, a)) return fail(`a member joining ${groupId} would overlap rule ${q.groupId}/${q.ruleId} out of layer order`);
          }
        }
      }
      if (live) {
        const name = memberSetName(family, groupId);
        const set = prev.table.maps.find((m) => m.name === name && m.set);
        if (!set) return fail(`member set ${name} does not exist`);
        const members = set.elements;
        if (!(members instanceof AddressSet)) return fail(`member set ${name} is not packed`);
        for (const a of removeList) if (!members.has(a)) return fail(`member set ${name} does not hold a member it should`);
        setChanges.push({ set, members, family, add: addList, remove: removeList });
      }
      peerEdits.push({ peers, add: addList, remove: removeList });
      effective.push(`${groupId}:${family}:+${addList.join(',')}:-${removeList.join(',')}`);
    }
  }

  // ---- phase 2: in place (binary search + copyWithin in the packed sets) ----
  // the member set of the table is the rules' peers (compile.ts): each set is changed once
  const edited = new Set<AddressSet>();
  for (const e of peerEdits) {
    for (const a of e.remove) e.peers.delete(a);
    for (const a of e.add) e.peers.insert(a);
    edited.add(e.peers);
  }
  let added = 0;
  let removed = 0;
  const digest = sha256(`${prev.digest}\n${policy.revision}\n${effective.join('\n')}`).slice(0, 16);
  const marker = comment(`secgroup digest=${digest} revision=${policy.revision} instance=${policy.instance.id}`);
  const table = { ...prev.table, marker };
  const ops: NftOp[] = [];
  for (const sc of setChanges) {
    const el = (a: bigint): MapElement => memberElement(sc.family, a);
    if (!edited.has(sc.members)) {
      for (const a of sc.remove) sc.members.delete(a);
      for (const a of sc.add) sc.members.insert(a);
    }
    ops.push({ op: 'update-elements', family: table.family, table: table.name, map: sc.set.name, keyType: sc.set.keyType, remove: sc.remove.map(el), add: sc.add.map(el) });
    added += sc.add.length;
    removed += sc.remove.length;
  }
  ops.push({ op: 'set-marker', family: table.family, table: table.name, text: marker });
  const compiled: Compiled = {
    table,
    layout,
    rules: prev.rules,
    digest,
    stats: { ...prev.stats, elements: prev.stats.elements + added - removed },
  };
  // the member sets' tail maps and rules are the applied table's: one table stands for before and after (diff.ts)
  return { ok: true, compiled, ops, added, removed, narrows: elementUpdateNarrows(table, table, prev.rules, ops) };
}

/**
 * `a` then `b` as one change (both exact against their bases: adds were not
 * members, removes were). An address added then removed, or removed then
 * added, drops out.
 */
export function composeMembershipChanges(a: MembershipChange, b: MembershipChange): MembershipChange {
  const net = new Map<string, Map<string, 1 | -1>>();
  for (const c of [a, b]) {
    for (const [g, { add, remove }] of Object.entries(c)) {
      let m = net.get(g);
      if (!m) net.set(g, (m = new Map()));
      for (const x of remove) {
        if (m.get(x) === 1) m.delete(x);
        else m.set(x, -1);
      }
      for (const x of add) {
        if (m.get(x) === -1) m.delete(x);
        else m.set(x, 1);
      }
    }
  }
  const out: Record<string, { add: string[]; remove: string[] }> = {};
  for (const [g, m] of net) {
    const add: string[] = [];
    const remove: string[] = [];
    for (const [x, s] of m) (s === 1 ? add : remove).push(x);
    out[g] = { add, remove };
  }
  return out;
}
