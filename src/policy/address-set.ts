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
 * It is also the rules' peers on that group (`NormalizedRule.peers`, shared
 * by every rule on the group: layering, the port report and the fast path
 * read the same words the set is rendered from): a remote group's members
 * exist once in the agent, parsed from the document straight into words.
 *
 * Addresses go in and out as bigints (the rest of the code's form); the
 * words are compared as numbers, so a lookup allocates one bigint's words
 * and nothing per step. Pure data structure: nothing here throws on valid
 * input; the only mutators are `insert` and `delete`.
 */
import { asciiText, writeV4Text, writeV6Text, writeValidIpWords, type AddrRange, type Family } from './address.js';

const M32 = 0xffffffffn;

/** Are the `n` addresses of `s` words each in `words` strictly ascending? (most significant word first) */
function strictlyAscending(words: Uint32Array, n: number, s: number): boolean {
  for (let i = s; i < n * s; i += s) {
    let k = 0;
    while (k < s && words[i - s + k] === words[i + k]) k++;
    if (k === s || words[i - s + k]! > words[i + k]!) return false;
  }
  return true;
}

/** The longest text of an address (IPv6, eight groups of four digits). */
export const TEXT_MAX = 39;
const SCRATCH = new Uint8Array(TEXT_MAX);

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

  /**
   * The addresses of family `family` among `texts` (valid addresses, as a
   * validated document holds them: a remote group's members), parsed straight
   * into words: no bigint or object per member. Sorted and made unique here
   * when they are not already (documents usually list members in order).
   */
  static fromValidTexts(family: Family, texts: readonly string[]): AddressSet {
    const stride = family === 4 ? 1 : 4;
    // indexed loops: an iterator's result objects showed up as 8 MB per 100k members
    const colon = family === 6;
    let n = 0;
    for (let k = 0; k < texts.length; k++) if (texts[k]!.includes(':') === colon) n++;
    const words = new Uint32Array(n * stride);
    let i = 0;
    for (let k = 0; k < texts.length; k++) {
      const t = texts[k]!;
      if (t.includes(':') === colon) writeValidIpWords(t, family, words, i++ * stride);
    }
    return AddressSet.sorted(family, words, n);
  }

  /**
   * The first `count` addresses of `words` (one word per IPv4 address, four
   * per IPv6, most significant first), the array taken over as it is:
   * sorted and made unique here when they are not already.
   */
  static fromWords(family: Family, words: Uint32Array, count: number): AddressSet {
    return AddressSet.sorted(family, words, count);
  }

  /** From addresses in any order, duplicates dropped. */
  static of(family: Family, values: Iterable<bigint>): AddressSet {
    const list = [...values];
    const s = new AddressSet(family, new Uint32Array(list.length * (family === 4 ? 1 : 4)), list.length);
    list.forEach((x, i) => s.write(i, x));
    return AddressSet.sorted(family, s.words, list.length);
  }

  /**
   * `n` addresses of `words` as a set: taken as they are when strictly
   * ascending, else sorted and made unique. Both without a comparator called
   * per pair where they can (the check is one loop; IPv4 sorts with the typed
   * array's own numeric sort): a group is compiled in a process that may not
   * have run this code yet, where every call back costs.
   */
  private static sorted(family: Family, words: Uint32Array, n: number): AddressSet {
    const s = family === 4 ? 1 : 4;
    if (strictlyAscending(words, n, s)) return new AddressSet(family, words, n);
    if (s === 1) {
      const out = words.slice(0, n).sort();
      let m = 0;
      for (let k = 0; k < n; k++) if (m === 0 || out[k] !== out[m - 1]) out[m++] = out[k]!;
      return new AddressSet(family, out, m);
    }
    const cmp = (i: number, j: number): number => {
      let c = 0;
      for (let k = 0; k < s && c === 0; k++) c = words[i * s + k]! - words[j * s + k]!;
      return c;
    };
    const order = Array.from({ length: n }, (_, i) => i).sort(cmp);
    const out = new Uint32Array(n * s);
    let m = 0;
    for (let k = 0; k < n; k++) {
      if (m > 0 && cmp(order[k]!, order[k - 1]!) === 0) continue;
      out.set(words.subarray(order[k]! * s, order[k]! * s + s), m * s);
      m++;
    }
    return new AddressSet(family, out, m);
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

  /** Does the set hold an address in [lo, hi]? (binary search) */
  intersectsRange(lo: bigint, hi: bigint): boolean {
    const at = this.search(lo);
    if (at >= 0) return true;
    const next = -at - 1;
    return next < this.count && this.at(next) <= hi;
  }

  /** Do the two sets share an address? (binary search of the smaller set's addresses in the larger one) */
  intersects(other: AddressSet): boolean {
    if (other.family !== this.family) return false;
    const [small, big] = this.count <= other.count ? [this, other] : [other, this];
    for (let i = 0; i < small.count; i++) if (big.has(small.at(i))) return true;
    return false;
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
    return asciiText(SCRATCH, this.writeText(i, SCRATCH, 0));
  }

  /** Writes address `i` in network byte order (4 or 16 bytes) into `out` at `at`; returns the offset after it. */
  writeBytes(i: number, out: Buffer, at: number): number {
    const s = this.stride;
    for (let k = 0; k < s; k++) out.writeUInt32BE(this.words[i * s + k]!, at + 4 * k);
    return at + 4 * s;
  }

  /** Writes text(i) as ASCII into `out` at `at` (at most TEXT_MAX bytes); returns the end. For rendering many without a string each. */
  writeText(i: number, out: Uint8Array, at: number): number {
    const w = this.words;
    if (this.stride === 1) return writeV4Text(w[i]!, out, at);
    const o = i * 4;
    return writeV6Text(w[o]!, w[o + 1]!, w[o + 2]!, w[o + 3]!, out, at);
  }

  /** The addresses as big-endian bytes (4 or 16 each). */
  bytes(): Uint8Array {
    const out = new Uint8Array(this.count * this.stride * 4);
    let at = 0;
    this.eachBytes((b) => {
      out.set(b, at);
      at += b.length;
    });
    return out;
  }

  /**
   * The same bytes in slices of at most 64 KB, for hashing (a 1M-member set is
   * hashed on every compile: no 16 MB copy). A slice is only valid during its call.
   */
  eachBytes(take: (slice: Uint8Array) => void): void {
    const n = this.count * this.stride;
    const per = 16384;
    const view = new DataView(new ArrayBuffer(Math.min(n, per) * 4));
    for (let start = 0; start < n; start += per) {
      const end = Math.min(n, start + per);
      for (let i = start; i < end; i++) view.setUint32((i - start) * 4, this.words[i]!);
      take(new Uint8Array(view.buffer, 0, (end - start) * 4));
    }
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

/** A rule's peers: sorted disjoint intervals, or a remote group's members packed (see NormalizedRule.peers). */
export type Peers = readonly AddrRange[] | AddressSet;

/**
 * Peers as intervals (a packed set's made on each call: one object per
 * member, for the few readers that need intervals); `limit`: at most that
 * many of a packed set.
 */
export function peerRanges(peers: Peers, limit = Infinity): readonly AddrRange[] {
  if (!(peers instanceof AddressSet)) return peers;
  const out = new Array<AddrRange>(Math.min(limit, peers.length));
  for (let i = 0; i < out.length; i++) {
    const x = peers.at(i);
    out[i] = { family: peers.family, lo: x, hi: x };
  }
  return out;
}
