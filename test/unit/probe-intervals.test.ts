import { describe, expect, it } from 'vitest';
import type { AddrRange } from '../../src/policy/address.js';
import { intersectRanges, subtractRanges, unionRanges } from '../../src/probe/intervals.js';
import { createRng } from '../helpers/random-policy.js';

/** The addresses of a list, one by one (small ranges only): what the operations must agree with. */
const addresses = (rs: readonly AddrRange[]) => new Set(rs.flatMap((r) => Array.from({ length: Number(r.hi - r.lo) + 1 }, (_, i) => `${r.family}:${r.lo + BigInt(i)}`)));

describe('address interval operations (sweeps over merged lists)', () => {
  it('agree with address-by-address set operations on random lists of both families', () => {
    const rng = createRng(18).next;
    const list = (): AddrRange[] =>
      Array.from({ length: Math.floor(rng() * 12) }, () => {
        const lo = BigInt(Math.floor(rng() * 60));
        return { family: rng() < 0.5 ? 4 : 6, lo, hi: lo + BigInt(Math.floor(rng() * 8)) } as AddrRange;
      });
    for (let n = 0; n < 500; n++) {
      // also lists of neighbouring single addresses, as remote groups' members are kept
      const a = n % 3 ? list() : Array.from({ length: 6 }, (_, i) => ({ family: 4, lo: BigInt(10 + i), hi: BigInt(10 + i) }) as AddrRange);
      const b = list();
      const A = addresses(a);
      const B = addresses(b);
      const inter = intersectRanges(a, b);
      const diff = subtractRanges(a, b);
      expect(addresses(inter)).toEqual(new Set([...A].filter((x) => B.has(x))));
      expect(addresses(diff)).toEqual(new Set([...A].filter((x) => !B.has(x))));
      expect(addresses(unionRanges(a, b))).toEqual(new Set([...A, ...B]));
      // results are sorted without overlaps (what the next operation expects of its operands)
      for (const r of [inter, diff]) for (let i = 1; i < r.length; i++) if (r[i]!.family === r[i - 1]!.family) expect(r[i]!.lo).toBeGreaterThan(r[i - 1]!.hi);
    }
  });
});
