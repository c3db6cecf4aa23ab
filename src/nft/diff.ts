/**
 * Incremental updates (pure): when two compiled tables differ only in map
 * elements (remote-group membership, address-group entries), the change is a
 * few `delete element` / `add element` commands instead of a table reload,
 * which keeps rule counters and costs the kernel far less.
 */
import { AddressSet } from '../policy/address-set.js';
import { elementList, memberElement, type MapElement, type Table, type Verdict } from './model.js';
import type { NftOp } from './transaction.js';
import { flowMaskOf, isFlowChain } from './flow-mark.js';

/** JSON.stringify replacer for models holding bigints (addresses): hex digits. */
export const bigintAsHex = (_k: string, val: unknown): unknown => (typeof val === 'bigint' ? val.toString(16) : val);

/**
 * Everything of a table except its comment, the elements of its maps and the
 * rules of the flow mark's chains (their generation is the agent's, set on
 * every transaction: flow-mark.ts; the mask is compared apart).
 */
function skeleton(t: Table): string {
  const chains = t.chains.map((c) => (isFlowChain(c.name) ? { ...c, rules: [] } : c));
  return JSON.stringify({ family: t.family, name: t.name, chains, maps: t.maps.map((m) => ({ ...m, elements: undefined })) }, bigintAsHex);
}

/**
 * A map element as a short string, equal for equal elements and only for
 * them.
 * (JSON.stringify of 100k elements took ~0.5 s.)
 */
export function elementId(el: MapElement): string {
  const vd = el.verdict;
  let s = vd === undefined ? '' : vd.kind === 'jump' ? vd.chain : vd.kind;
  for (const k of el.key) s += k.kind === 'addr' ? `|${k.family}:${k.lo.toString(16)}-${k.hi.toString(16)}` : `|${k.lo}-${k.hi}`;
  return s;
}

/** Elements of `from` not in `to` and of `to` not in `from`; packed member sets compared as sorted words (no element ids). */
function elementChanges(from: MapElement[] | AddressSet, to: MapElement[] | AddressSet): { remove: MapElement[]; add: MapElement[] } {
  if (from instanceof AddressSet && to instanceof AddressSet && from.family === to.family) {
    const el = (x: bigint) => memberElement(to.family, x);
    return { remove: from.minus(to).map(el), add: to.minus(from).map(el) };
  }
  const a = elementList({ elements: from });
  const b = elementList({ elements: to });
  const oldIds = a.map(elementId);
  const newIds = b.map(elementId);
  const oldSet = new Set(oldIds);
  const newSet = new Set(newIds);
  return { remove: a.filter((_el, k) => !newSet.has(oldIds[k]!)), add: b.filter((_el, k) => !oldSet.has(newIds[k]!)) };
}

export interface ElementPlan {
  ops: NftOp[];
  added: number;
  removed: number;
}

/**
 * Element ops that turn `from` into `to` (then the generation marker of
 * `to`), or null when anything but map elements differs (then only a full reload is right). A change that would
 * touch more than `maxChanges` elements and more than half of the result is
 * also null: a reload is then cheaper.
 */
export function planElementUpdate(from: Table, to: Table, maxChanges = 1000): ElementPlan | null {
  // cheap differences first (a rule added or removed): no need to serialise both tables
  if (from.chains.length !== to.chains.length || from.maps.length !== to.maps.length) return null;
  if (from.chains.some((c, i) => c.name !== to.chains[i]!.name || (c.rules.length !== to.chains[i]!.rules.length && !isFlowChain(c.name)))) return null;
  if (flowMaskOf(from) !== flowMaskOf(to)) return null;
  if (from.maps.some((m, i) => m.name !== to.maps[i]!.name)) return null;
  if (skeleton(from) !== skeleton(to)) return null;
  const ops: NftOp[] = [];
  let added = 0;
  let removed = 0;
  to.maps.forEach((m, i) => {
    const old = from.maps[i]!;
    if (old.elements === m.elements) return;
    const { remove, add } = elementChanges(old.elements, m.elements);
    if (remove.length || add.length) {
      ops.push({ op: 'update-elements', family: to.family, table: to.name, map: m.name, keyType: m.keyType, remove, add });
      added += add.length;
      removed += remove.length;
    }
  });
  const total = to.maps.reduce((n, m) => n + m.elements.length, 0);
  if (added + removed > maxChanges && (added + removed) * 2 > total) return null;
  // the same transaction names the new ruleset in the generation marker
  if (to.marker !== undefined) {
    if (from.marker === undefined) return null;
    ops.push({ op: 'set-marker', family: to.family, table: to.name, text: to.marker });
  }
  return { ops, added, removed };
}

/** What `elementUpdateNarrows` needs of a rule chain (compile.ts `RuleChainInfo`). */
export interface RuleOfChain {
  chain: string;
  direction: 'ingress' | 'egress';
  action: 'allow' | 'deny';
}

/**
 * Can element updates (`planElementUpdate(from, to)`'s ops) turn an inbound
 * connection the rules allow now into one they deny? The flow mark keeps
 * its generation when not (reconciler.ts, as for member deltas:
 * membership.ts `narrows`): the two tables have the same skeleton, so the
 * same lookups in the same order, and only these element changes count:
 * - an element of a verdict map removed whose rule is an ingress allow, or
 *   one added whose rule is an ingress deny (a packet's first match can
 *   only move to an added element, so an added allow or a removed deny
 *   only widens what is allowed);
 * - a member leaving a set that an ingress lookup tests before a map (or a
 *   verdict) that holds an allow rule, or joining one that holds a deny
 *   rule (the elements of that map before and after both count).
 * Egress rules never decide a packet from the peer of an inbound
 * connection (flow-mark.ts). A verdict that is not a jump to a rule chain
 * of `rules`, or a set tested by a rule we cannot read, counts as narrowing.
 */
export function elementUpdateNarrows(from: Table, to: Table, rules: readonly RuleOfChain[], ops: readonly NftOp[]): boolean {
  const ruleOf = new Map(rules.map((r) => [r.chain, r]));
  /** 'allow' / 'deny' of an ingress rule's verdict, 'egress', or null when it is not a rule chain's */
  const decides = (vd: Verdict | undefined): 'allow' | 'deny' | 'egress' | null => {
    const r = vd?.kind === 'jump' ? ruleOf.get(vd.chain) : undefined;
    return r === undefined ? null : r.direction === 'egress' ? 'egress' : r.action;
  };
  const mapsOf = (t: Table) => new Map(t.maps.map((m) => [m.name, m]));
  const before = mapsOf(from);
  const after = mapsOf(to);
  /** what the lookups that test set `name` can decide: the verdicts after it, in both tables */
  const afterSet = (name: string): ('allow' | 'deny' | 'egress' | null)[] => {
    const out: ('allow' | 'deny' | 'egress' | null)[] = [];
    for (const chain of to.chains) {
      if (ruleOf.has(chain.name)) continue; // a rule chain: its counter and verdict, no lookup
      for (const rule of chain.rules) {
        if (!rule.exprs.some((e) => e.kind === 'match' && !Array.isArray(e.right) && e.right.kind === 'setref' && e.right.name === name)) continue;
        let read = false;
        for (const e of rule.exprs) {
          if (e.kind === 'verdict') {
            out.push(decides(e.verdict));
            read = true;
          } else if (e.kind === 'vmap') {
            for (const m of [before.get(e.map), after.get(e.map)]) {
              if (!m || m.elements instanceof AddressSet) out.push(null);
              else for (const el of m.elements) out.push(decides(el.verdict));
            }
            read = true;
          }
        }
        if (!read) out.push(null);
      }
    }
    return out;
  };
  for (const op of ops) {
    if (op.op !== 'update-elements') continue;
    const m = after.get(op.map);
    if (m?.set) {
      const outcomes = afterSet(op.map);
      if (outcomes.includes(null)) return true;
      if (op.remove.length && outcomes.includes('allow')) return true;
      if (op.add.length && outcomes.includes('deny')) return true;
      continue;
    }
    for (const el of op.remove) {
      const d = decides(el.verdict);
      if (d === null || d === 'allow') return true;
    }
    for (const el of op.add) {
      const d = decides(el.verdict);
      if (d === null || d === 'deny') return true;
    }
  }
  return false;
}
