/** src/policy/address-set.ts: the packed member sets agree with a plain sorted list of bigints, and write addresses as formatIp does. */
import { describe, expect, it } from 'vitest';
import { formatIp, FAMILY_MAX, type Family } from '../../src/policy/address.js';
import { AddressSet } from '../../src/policy/address-set.js';
import { createRng, type Rng } from '../helpers/random-policy.js';

const sortedUnique = (xs: Iterable<bigint>): bigint[] => [...new Set(xs)].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));

/** Random addresses near each other (so inserts and deletes hit neighbours) and at the ends of the family. */
function randomAddress(rng: Rng, family: Family): bigint {
  const base = family === 4 ? 0xc6120000n : 0xfd0005ec000000000000000000000000n;
  const pick = rng.int(0, 9);
  if (pick === 0) return 0n;
  if (pick === 1) return FAMILY_MAX[family];
  // words that differ only in the low word, and ones that differ in a high word (IPv6)
  return pick === 2 && family === 6 ? base + (BigInt(rng.int(0, 3)) << 64n) : base + BigInt(rng.int(0, 300));
}

describe('AddressSet', () => {
  for (const family of [4, 6] as const) {
    it(`IPv${family}: insert, delete, has, at, minus and iteration match a sorted list (random operations)`, () => {
      const rng = createRng(family * 7919);
      const start = Array.from({ length: 50 }, () => randomAddress(rng, family));
      const set = AddressSet.of(family, start);
      let ref = sortedUnique(start);
      expect([...set]).toEqual(ref);
      for (let step = 0; step < 2000; step++) {
        const x = randomAddress(rng, family);
        if (rng.int(0, 1) === 0) {
          expect(set.insert(x)).toBe(!ref.includes(x));
          ref = sortedUnique([...ref, x]);
        } else {
          expect(set.delete(x)).toBe(ref.includes(x));
          ref = ref.filter((y) => y !== x);
        }
        expect(set.length).toBe(ref.length);
        const probe = randomAddress(rng, family);
        expect(set.has(probe)).toBe(ref.includes(probe));
      }
      expect([...set]).toEqual(ref);
      expect(ref.map((_, i) => set.at(i))).toEqual(ref);
      const other = AddressSet.of(family, Array.from({ length: 80 }, () => randomAddress(rng, family)));
      const otherList = [...other];
      expect(set.minus(other)).toEqual(ref.filter((x) => !otherList.includes(x)));
      expect(other.minus(set)).toEqual(otherList.filter((x) => !ref.includes(x)));
    });

    it(`IPv${family}: text is formatIp's canonical form and bytes are the big-endian addresses`, () => {
      const rng = createRng(family);
      // IPv6: runs of zero groups of equal and different lengths (the leftmost longest is compressed)
      const crafted = family === 6 ? [0x00010000000000020000000000000003n, 0x00010000000200000003000000000000n, 0x00000000000100000000000000000000n, 1n] : [1n];
      const values = sortedUnique([0n, FAMILY_MAX[family], ...crafted, ...Array.from({ length: 200 }, () => BigInt.asUintN(family === 4 ? 32 : 128, BigInt(rng.int(0, 2 ** 31)) * BigInt(rng.int(0, 2 ** 31)) * (family === 6 ? 1n << BigInt(rng.int(0, 64)) : 1n)))]);
      const set = AddressSet.of(family, values);
      expect(values.map((_, i) => set.text(i))).toEqual(values.map((x) => formatIp(family, x)));
      // and formatIp's IPv6 form is the WHATWG URL serializer's (RFC 5952: the longest run of 2+ zero groups, leftmost, compressed)
      if (family === 6) {
        const full = (x: bigint) => x.toString(16).padStart(32, '0').match(/.{4}/g)!.join(':');
        expect(values.map((_, i) => set.text(i))).toEqual(values.map((x) => new URL(`http://[${full(x)}]/`).hostname.slice(1, -1)));
      }
      const width = family === 4 ? 4 : 16;
      const hex = Buffer.from(set.bytes()).toString('hex');
      expect(hex).toBe(values.map((x) => x.toString(16).padStart(width * 2, '0')).join(''));
    });
  }

  it('a clone shares nothing with its original', () => {
    const a = AddressSet.of(4, [1n, 2n, 3n]);
    const b = a.clone();
    b.insert(4n);
    a.delete(1n);
    expect([...a]).toEqual([2n, 3n]);
    expect([...b]).toEqual([1n, 2n, 3n, 4n]);
  });

  for (const family of [4, 6] as const) {
    it(`IPv${family}: members in any order, repeated, on both sides of the top bit, come out sorted and unique (and taken as they are when already so)`, () => {
      const rng = createRng(family * 104729);
      const values = Array.from({ length: 3000 }, () => randomAddress(rng, family));
      values.push(0n, FAMILY_MAX[family], FAMILY_MAX[family] - 1n, 1n << (family === 4 ? 31n : 127n), (1n << (family === 4 ? 31n : 127n)) - 1n, values[7]!);
      const texts = values.map((x) => formatIp(family, x));
      const ref = sortedUnique(values);
      expect([...AddressSet.fromValidTexts(family, texts)]).toEqual(ref);
      expect([...AddressSet.of(family, values)]).toEqual(ref);
      const again = ref.map((x) => formatIp(family, x));
      expect([...AddressSet.fromValidTexts(family, again)]).toEqual(ref);
      // a repeat at the end of an otherwise ascending list is not ascending
      expect([...AddressSet.fromValidTexts(family, [...again, again[again.length - 1]!])]).toEqual(ref);
    });
  }

  it('parses members straight into words: the family asked for, sorted, duplicates dropped, every IPv6 spelling', () => {
    const texts = ['198.18.0.9', 'fd00:5ec::10', '198.18.0.1', 'FD00:5EC:0:0:0:0:0:9', '198.18.0.9', '::ffff:198.18.0.1', 'fd00:5ec::9'];
    expect([...AddressSet.fromValidTexts(4, texts)].map((x) => formatIp(4, x))).toEqual(['198.18.0.1', '198.18.0.9']);
    expect([...AddressSet.fromValidTexts(6, texts)].map((x) => formatIp(6, x))).toEqual(['::ffff:c612:1', 'fd00:5ec::9', 'fd00:5ec::10']);
  });
});
