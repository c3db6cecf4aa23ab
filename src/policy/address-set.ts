/**
 * A set of single addresses of one family, packed: sorted, unique, in one
 * Uint32Array (IPv4: one word per address; IPv6: four, most significant
 * first). It is the one form of a remote group's members in the compiled
 * table (nft/compile.ts): the member set's elements, their diff
 * (nft/diff.ts), the member fast path (nft/membership.ts, which changes it in
 * place), the digest, the render (nft/render.ts, text formatted straight from
 * the words) and the fake nft. 4 or 16 bytes a member (plus the array's
 * headroom after inserts), where an element object, its key array and its
 * key part cost ~160 bytes each (issue 18, bench/README.md "round 4").
 *
 * Addresses go in and out as bigints (the rest of the code's form); the
 * words are compared as numbers, so a lookup allocates one bigint's words
 * and nothing per step. Pure data structure: nothing here throws on valid
 * input; the only mutators are `insert` and `delete`.
 */
import { formatV6Words, type AddrRange, type Family } from './address.js';

const M32 = 0xffffffffn;

export class AddressSet implements Iterable<bigint> {
  readonly family: Family;
  private readonly stride: 1 | 4;
  private words: Uint32Array;
  private count: number;

  private constructor(family: Family, words: Uint32Array, count: number) {
    this.family = family;
    this.stride = family === 4 ? 1 : 4;
    this.words = words;
    this.count = count;
  }

  /** From single addresses already sorted and unique (a remote group's resolved peers, see normalize.ts). */
  static fromSortedRanges(family: Family, ranges: readonly AddrRange[]): AddressSet {
    const s = new AddressSet(family, new Uint32Array(ranges.length * (family === 4 ? 1 : 4)), ranges.length);
    for (let i = 0; i < ranges.length; i++) {
      const r = ranges[i]!;
      if (r.family !== family || r.lo !== r.hi || (i > 0 && ranges[i - 1]!.lo >= r.lo)) throw new Error('internal: member addresses must be single, sorted and unique');
      s.write(i, r.lo);
    }
    return s;
  }

  /** From addresses in any order, duplicates dropped. */
  static of(family: Family, values: Iterable<bigint>): AddressSet {
    const sorted = [...new Set(values)].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
    return AddressSet.fromSortedRanges(
      family,
      sorted.map((x) => ({ family, lo: x, hi: x })),
    );
  }

  get length(): number {
    return this.count;
  }

  /** The i-th smallest address. */
  at(i: number): bigint {
    const w = this.words;
    if (this.stride === 1) return BigInt(w[i]!);
    const o = i * 4;
    return (BigInt(w[o]!) << 96n) | (BigInt(w[o + 1]!) << 64n) | (BigInt(w[o + 2]!) << 32n) | BigInt(w[o + 3]!);
  }

  *[Symbol.iterator](): Iterator<bigint> {
    for (let i = 0; i < this.count; i++) yield this.at(i);
  }

  /** Index of `x`, or -(insertion point) - 1 when absent. */
  private search(x: bigint): number {
    const key = this.split(x);
    const w = this.words;
    const s = this.stride;
    let lo = 0;
    let hi = this.count - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >>> 1;
      let c = 0;
      for (let k = 0; k < s && c === 0; k++) c = w[mid * s + k]! - key[k]!;
      if (c < 0) lo = mid + 1;
      else if (c > 0) hi = mid - 1;
      else return mid;
    }
    return -lo - 1;
  }

  has(x: bigint): boolean {
    return this.search(x) >= 0;
  }

  /** Adds `x` in place; false when it was there. */
  insert(x: bigint): boolean {
    const at = this.search(x);
    if (at >= 0) return false;
    const pos = -at - 1;
    const s = this.stride;
    if ((this.count + 1) * s > this.words.length) {
      const grown = new Uint32Array(Math.max(8, Math.ceil((this.count + 1) * 1.25)) * s);
      grown.set(this.words.subarray(0, this.count * s));
      this.words = grown;
    }
    this.words.copyWithin((pos + 1) * s, pos * s, this.count * s);
    this.count++;
    this.write(pos, x);
    return true;
  }

  /** Removes `x` in place; false when it was not there. */
  delete(x: bigint): boolean {
    const at = this.search(x);
    if (at < 0) return false;
    const s = this.stride;
    this.words.copyWithin(at * s, (at + 1) * s, this.count * s);
    this.count--;
    return true;
  }

  /** A copy that shares nothing with this set. */
  clone(): AddressSet {
    return new AddressSet(this.family, this.words.slice(0, this.count * this.stride), this.count);
  }

  /** The addresses of this set that `other` does not hold, ascending (a merge walk: linear in both sizes). */
  minus(other: AddressSet): bigint[] {
    const out: bigint[] = [];
    const s = this.stride;
    const a = this.words;
    const b = other.words;
    let j = 0;
    for (let i = 0; i < this.count; i++) {
      let c = 1;
      while (j < other.count) {
        c = 0;
        for (let k = 0; k < s && c === 0; k++) c = a[i * s + k]! - b[j * s + k]!;
        if (c <= 0) break;
        j++;
        c = 1;
      }
      if (c !== 0) out.push(this.at(i));
    }
    return out;
  }

  /** nft text of the i-th address (the canonical form: dotted quad, RFC 5952 IPv6). */
  text(i: number): string {
    const w = this.words;
    if (this.stride === 1) {
      const n = w[i]!;
      return `${n >>> 24}.${(n >>> 16) & 255}.${(n >>> 8) & 255}.${n & 255}`;
    }
    const o = i * 4;
    return formatV6Words(w[o]!, w[o + 1]!, w[o + 2]!, w[o + 3]!);
  }

  /** The addresses as big-endian bytes (4 or 16 each), for hashing. */
  bytes(): Uint8Array {
    const n = this.count * this.stride;
    const view = new DataView(new ArrayBuffer(n * 4));
    for (let i = 0; i < n; i++) view.setUint32(i * 4, this.words[i]!);
    return new Uint8Array(view.buffer);
  }

  private split(x: bigint): number[] {
    if (this.stride === 1) return [Number(x)];
    return [Number((x >> 96n) & M32), Number((x >> 64n) & M32), Number((x >> 32n) & M32), Number(x & M32)];
  }

  private write(i: number, x: bigint): void {
    const key = this.split(x);
    this.words.set(key, i * this.stride);
  }
}
