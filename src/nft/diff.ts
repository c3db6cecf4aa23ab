/**
 * Incremental updates (pure): when two compiled tables differ only in map
 * elements (remote-group membership, address-group entries), the change is a
 * few `delete element` / `add element` commands instead of a table reload,
 * which keeps rule counters and costs the kernel far less.
 */
import type { MapElement, Table } from './model.js';
import type { NftOp } from './transaction.js';

const bigintAsHex = (_k: string, val: unknown): unknown => (typeof val === 'bigint' ? val.toString(16) : val);

/** Everything of a table except its comment and the elements of its maps. */
function skeleton(t: Table): string {
  return JSON.stringify({ family: t.family, name: t.name, chains: t.chains, maps: t.maps.map((m) => ({ ...m, elements: undefined })) }, bigintAsHex);
}

function elementId(el: MapElement): string {
  return JSON.stringify(el, bigintAsHex);
}

export interface ElementPlan {
  ops: NftOp[];
  added: number;
  removed: number;
}

/**
 * Element ops that turn `from` into `to`, or null when anything but map
 * elements differs (then only a full reload is right). A change that would
 * touch more than `maxChanges` elements and more than half of the result is
 * also null: a reload is then cheaper.
 */
export function planElementUpdate(from: Table, to: Table, maxChanges = 1000): ElementPlan | null {
  if (skeleton(from) !== skeleton(to)) return null;
  const ops: NftOp[] = [];
  let added = 0;
  let removed = 0;
  to.maps.forEach((m, i) => {
    const old = from.maps[i]!;
    const oldIds = new Set(old.elements.map(elementId));
    const newIds = new Set(m.elements.map(elementId));
    const remove = old.elements.filter((el) => !newIds.has(elementId(el)));
    const add = m.elements.filter((el) => !oldIds.has(elementId(el)));
    if (remove.length || add.length) {
      ops.push({ op: 'update-elements', family: to.family, table: to.name, map: m.name, keyType: m.keyType, remove, add });
      added += add.length;
      removed += remove.length;
    }
  });
  const total = to.maps.reduce((n, m) => n + m.elements.length, 0);
  if (added + removed > maxChanges && (added + removed) * 2 > total) return null;
  return { ops, added, removed };
}
