/**
 * Incremental updates (pure): when two compiled tables differ only in map
 * elements (remote-group membership, address-group entries), the change is a
 * few `delete element` / `add element` commands instead of a table reload,
 * which keeps rule counters and costs the kernel far less.
 */
import { AddressSet } from '../policy/address-set.js';
import { elementList, memberElement, type MapElement, type Table } from './model.js';
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
