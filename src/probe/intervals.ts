/** Set operations on merged address intervals (AddrRange lists). Pure. */
import { mergeRanges, type AddrRange } from '../policy/address.js';

const max = (a: bigint, b: bigint) => (a > b ? a : b);
const min = (a: bigint, b: bigint) => (a < b ? a : b);

export function intersectRanges(a: readonly AddrRange[], b: readonly AddrRange[]): AddrRange[] {
  const out: AddrRange[] = [];
  for (const x of a) {
    for (const y of b) {
      if (x.family !== y.family) continue;
      const lo = max(x.lo, y.lo);
      const hi = min(x.hi, y.hi);
      if (lo <= hi) out.push({ family: x.family, lo, hi });
    }
  }
  return mergeRanges(out);
}

/** a minus b */
export function subtractRanges(a: readonly AddrRange[], b: readonly AddrRange[]): AddrRange[] {
  let cur = a.map((r) => ({ ...r }));
  for (const y of b) {
    const next: AddrRange[] = [];
    for (const x of cur) {
      if (x.family !== y.family || y.hi < x.lo || y.lo > x.hi) {
        next.push(x);
        continue;
      }
      if (x.lo < y.lo) next.push({ family: x.family, lo: x.lo, hi: y.lo - 1n });
      if (x.hi > y.hi) next.push({ family: x.family, lo: y.hi + 1n, hi: x.hi });
    }
    cur = next;
  }
  return mergeRanges(cur);
}

export function unionRanges(a: readonly AddrRange[], b: readonly AddrRange[]): AddrRange[] {
  return mergeRanges([...a, ...b]);
}
