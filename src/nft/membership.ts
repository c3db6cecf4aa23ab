/**
 * Membership fast path (pure): a change to remote-group members (protocol
 * `policy_delta`) turned into element updates of the already compiled table,
 * without compiling the whole policy again. Its cost depends on the number of
 * changed addresses and rules, not on the size of the groups (a one-address
 * change to a 100k-member group: a few ms, where a compile takes ~1 s).
 *
 * It only takes changes it can prove give the same first-match decisions as
 * a full compile of the new policy, and returns a reason otherwise (the
 * caller then compiles in full). For each changed address `a` of family f
 * and each rule R on the group:
 *  - R has a layer (it is neither shadowed nor empty), and the group keeps at
 *    least one member of family f before and after: R's overlaps with other
 *    rules then stay as they were, so its layer stays valid;
 *  - `a` becomes or stops being a single-address peer: no member next to it
 *    (adjacent members are merged into ranges by the compiler);
 *  - no other rule of the same direction and family that can match the same
 *    packets as R (protocol, ports, ICMP) has `a` among its peers, unless
 *    that rule matches every address (then nothing depends on `a`).
 * The elements of `a` go to the maps R's other single-address members are
 * in (named by layer, shape and key signature); a map that does not exist
 * yet also means "compile in full".
 *
 * The result can differ from a full compile in one harmless way: when a
 * removal leaves R covered by an earlier rule, a full compile would drop R's
 * elements, the fast path keeps them (R sits in a higher layer than the rule
 * covering it, so the decisions are the same).
 */
import { createHash } from 'node:crypto';
import { parseIp, type AddrRange, type Family } from '../policy/address.js';
import type { NormalizedRule } from '../policy/normalize.js';
import type { Policy } from '../policy/schema.js';
import { elementId } from './diff.js';
import { expandSmallPortRanges, elementsOf, keyTypes, mapName, ruleChainName, shapesOf, splitBySignature, type Compiled } from './compile.js';
import { comment, type MapElement, type VerdictMap } from './model.js';
import type { NftOp } from './transaction.js';

/** Per remote group: members added and removed (addresses as text). */
export type MembershipChange = Record<string, { add: readonly string[]; remove: readonly string[] }>;

export type MembershipResult =
  | { ok: true; compiled: Compiled; ops: NftOp[]; added: number; removed: number }
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

/** Position where a range starting at `x` is inserted to keep `ranges` sorted. */
function insertAt(ranges: readonly AddrRange[], x: bigint): number {
  let lo = 0;
  let hi = ranges.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (ranges[mid]!.lo < x) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

/** Position of an element equal to `el` (its address part compared first: one bigint compare per element). */
function indexOfElement(elements: readonly MapElement[], el: MapElement): number {
  const k0 = el.key[0]!;
  const id = elementId(el);
  for (let i = 0; i < elements.length; i++) {
    const k = elements[i]!.key[0]!;
    if (k.lo === k0.lo && k.hi === k0.hi && elementId(elements[i]!) === id) return i;
  }
  return -1;
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

function isFull(r: NormalizedRule): boolean {
  return r.peers.length === 1 && r.peers[0]!.lo === 0n && r.peers[0]!.hi === (r.family === 4 ? 0xffffffffn : (1n << 128n) - 1n);
}

interface MapChange {
  map: VerdictMap;
  add: MapElement[];
  remove: MapElement[];
}

/**
 * Applies `change` (relative to the policy `prev` was compiled from) to the
 * compiled table. `policy` is the new document (its revision and instance
 * name the result). Returns the new compiled state and the element ops
 * (ending with the generation marker), or the reason it cannot.
 *
 * On success the result takes over `prev`'s big arrays (member ranges, map
 * elements) and changes them in place, so the cost does not grow with the
 * group: `prev` must not be used afterwards (if applying the ops fails, the
 * caller reloads from a full compile). On failure `prev` is untouched: every
 * check runs before anything is changed.
 */
export function applyMembershipChange(prev: Compiled, policy: Policy, change: MembershipChange): MembershipResult {
  const fail = (reason: string): MembershipResult => ({ ok: false, reason });
  let total = 0;
  for (const c of Object.values(change)) total += c.add.length + c.remove.length;
  if (total > MAX_CHANGES) return fail(`${total} changed addresses`);

  // ---- phase 1: checks and planned element changes; nothing is modified ----
  const layout = prev.layout;
  const mapChanges = new Map<string, MapChange>();
  const counts = new Map<string, number>(); // chain -> element delta
  const peerEdits: { peers: AddrRange[]; family: Family; add: bigint[]; remove: bigint[] }[] = [];
  const touched = new Set<string>(); // family:address changed in some group
  let added = 0;
  let removed = 0;
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
      // every rule on the group shares one array of merged members (see normalizeRules)
      const peers = layout.get(first.key)!.rules[first.index]!.peers;
      for (const { key, index } of affected) {
        if (layout.get(key)!.rules[index]!.peers !== peers) return fail(`rules on ${groupId} do not share their member list`);
      }
      // effective changes against the current members (a rule's peers are the group's merged members)
      const addList: bigint[] = [];
      const removeList: bigint[] = [];
      for (const a of adds) {
        if (find(peers, a) >= 0) continue;
        if (find(peers, a - 1n) >= 0 || find(peers, a + 1n) >= 0 || adds.has(a - 1n) || adds.has(a + 1n)) return fail(`an added member of ${groupId} is next to another member (merged range)`);
        addList.push(a);
      }
      for (const a of removes) {
        const i = find(peers, a);
        if (i < 0) continue;
        if (peers[i]!.lo !== a || peers[i]!.hi !== a) return fail(`a removed member of ${groupId} is part of a merged range`);
        removeList.push(a);
      }
      if (!addList.length && !removeList.length) continue;
      if (peers.length === 0 || peers.length - removeList.length + addList.length === 0) return fail(`group ${groupId} gains its first or loses its last IPv${family} member`);
      const changed = [...addList, ...removeList];
      for (const a of changed) {
        // one address changing in two groups at once could create or remove an overlap between their rules
        if (touched.has(`${family}:${a}`)) return fail(`an address changes in more than one group`);
        touched.add(`${family}:${a}`);
      }

      for (const { key, index } of affected) {
        const l = layout.get(key)!;
        const r = l.rules[index]!;
        const layer = l.layers[index] ?? null;
        if (layer === null || l.shadowed[index]) return fail(`rule ${r.groupId}/${r.ruleId} has no lookup layer (shadowed or empty)`);
        for (let j = 0; j < l.rules.length; j++) {
          const q = l.rules[j]!;
          if (j === index || (q.remote.kind === 'group' && q.remote.id === groupId) || !samePackets(q, r) || isFull(q)) continue;
          for (const a of changed) if (find(q.peers, a) >= 0) return fail(`a changed member of ${groupId} is a peer of rule ${q.groupId}/${q.ruleId} too`);
        }
        const chain = ruleChainName(r.groupId, r.ruleId);
        const direction = key.startsWith('ingress') ? 'ingress' : 'egress';
        for (const [list, into] of [
          [addList, 'add'],
          [removeList, 'remove'],
        ] as const) {
          for (const a of list) {
            const one: NormalizedRule = { ...r, peers: [{ family, lo: a, hi: a }] };
            for (const shape of shapesOf(r)) {
              const types = keyTypes(family, shape);
              for (const [sig, els] of splitBySignature(expandSmallPortRanges(elementsOf(one, shape, chain), shape), types)) {
                const name = mapName(direction, family, layer, shape, sig);
                let mc = mapChanges.get(name);
                if (!mc) {
                  const map = prev.table.maps.find((m) => m.name === name);
                  if (!map) return fail(`map ${name} does not exist yet`);
                  mapChanges.set(name, (mc = { map, add: [], remove: [] }));
                }
                mc[into].push(...els);
                counts.set(chain, (counts.get(chain) ?? 0) + (into === 'add' ? els.length : -els.length));
                if (into === 'add') added += els.length;
                else removed += els.length;
              }
            }
          }
        }
      }
      peerEdits.push({ peers, family, add: addList, remove: removeList });
      effective.push(`${groupId}:${family}:+${addList.join(',')}:-${removeList.join(',')}`);
    }
  }
  for (const mc of mapChanges.values()) {
    for (const el of mc.remove) if (indexOfElement(mc.map.elements, el) < 0) return fail(`map ${mc.map.name} does not hold an element it should`);
  }

  // ---- phase 2: in place (binary search + splice; swap-remove and push for elements) ----
  for (const e of peerEdits) {
    for (const a of e.remove) e.peers.splice(find(e.peers, a), 1);
    for (const a of e.add) e.peers.splice(insertAt(e.peers, a), 0, { family: e.family, lo: a, hi: a });
  }
  for (const mc of mapChanges.values()) {
    const elements = mc.map.elements;
    for (const el of mc.remove) {
      const i = indexOfElement(elements, el);
      elements[i] = elements[elements.length - 1]!;
      elements.pop();
    }
    for (const el of mc.add) elements.push(el);
  }
  const digest = createHash('sha256').update(`${prev.digest}\n${policy.revision}\n${effective.join('\n')}`).digest('hex').slice(0, 16);
  const marker = comment(`secgroup digest=${digest} revision=${policy.revision} instance=${policy.instance.id}`);
  const table = { ...prev.table, marker };
  const ops: NftOp[] = [];
  for (const mc of mapChanges.values()) {
    if (mc.remove.length || mc.add.length) ops.push({ op: 'update-elements', family: table.family, table: table.name, map: mc.map.name, keyType: mc.map.keyType, remove: mc.remove, add: mc.add });
  }
  ops.push({ op: 'set-marker', family: table.family, table: table.name, text: marker });
  const rules = prev.rules.map((info) => (counts.has(info.chain) ? { ...info, elements: info.elements + counts.get(info.chain)! } : info));
  const compiled: Compiled = {
    table,
    layout,
    rules,
    digest,
    stats: { ...prev.stats, elements: prev.stats.elements + added - removed },
  };
  return { ok: true, compiled, ops, added, removed };
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
