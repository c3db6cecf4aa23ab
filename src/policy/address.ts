/**
 * IP address arithmetic on bigints: parsing of addresses, CIDRs and ranges into
 * closed intervals, interval merging and formatting. Pure; used by the schema,
 * the evaluator, the compiler and the probes.
 */
import { isIPv4, isIPv6 } from 'node:net';

export type Family = 4 | 6;

/** A closed interval [lo, hi] of addresses of one family. */
export interface AddrRange {
  family: Family;
  lo: bigint;
  hi: bigint;
}

export const FAMILY_BITS: Record<Family, number> = { 4: 32, 6: 128 };
export const FAMILY_MAX: Record<Family, bigint> = { 4: (1n << 32n) - 1n, 6: (1n << 128n) - 1n };

export function ipFamily(text: string): Family | null {
  if (isIPv4(text)) return 4;
  if (isIPv6(text) && !text.includes('%')) return 6;
  return null;
}

/** A validated dotted quad as a number, in one pass (no split: member lists parse 100k of these). */
function parseV4Number(text: string): number {
  let n = 0;
  let part = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c === 46 /* . */) {
      n = n * 256 + part;
      part = 0;
    } else part = part * 10 + (c - 48);
  }
  return n * 256 + part;
}

function parseV4(text: string): bigint {
  return BigInt(parseV4Number(text));
}

/** Scratch for the IPv6 readers (one address at a time, never kept). */
const READ_GROUPS = new Uint16Array(8);

/**
 * The 8 groups of a valid IPv6 address without an embedded IPv4 part, in
 * one pass over its characters, into READ_GROUPS (no array per address:
 * member lists parse 100k of these); false otherwise.
 */
function v6Groups(text: string): boolean {
  const g = READ_GROUPS;
  let n = 0;
  let gap = -1;
  let cur = 0;
  let digits = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c === 58 /* : */) {
      if (text.charCodeAt(i + 1) === 58) {
        if (gap >= 0) return false;
        if (digits) {
          if (n === 8) return false;
          g[n++] = cur;
        }
        gap = n;
        i++;
      } else if (digits) {
        if (n === 8) return false;
        g[n++] = cur;
      } else return false;
      cur = 0;
      digits = 0;
      continue;
    }
    let d: number;
    if (c >= 48 && c <= 57) d = c - 48;
    else if ((c | 32) >= 97 && (c | 32) <= 102) d = (c | 32) - 87;
    else return false; // '.', '%', anything else: the general parser
    cur = cur * 16 + d;
    if (++digits > 4) return false;
  }
  if (digits) {
    if (n === 8) return false;
    g[n++] = cur;
  }
  if (gap >= 0) {
    if (n > 7) return false;
    // the groups after the gap move to the end, zeros fill the gap
    const after = n - gap;
    g.copyWithin(8 - after, gap, n);
    g.fill(0, gap, 8 - after);
    n = 8;
  }
  return n === 8;
}

function parseV6(text: string): bigint {
  if (v6Groups(text)) {
    const fast = READ_GROUPS;
    // four 32-bit words: 7 BigInt operations instead of 8 shifts, 8 ors and 8 conversions
    // (no closure here: defining one per call cost more than the parse under tsx/esbuild's keepNames)
    return (
      (BigInt(fast[0]! * 65536 + fast[1]!) << 96n) |
      (BigInt(fast[2]! * 65536 + fast[3]!) << 64n) |
      (BigInt(fast[4]! * 65536 + fast[5]!) << 32n) |
      BigInt(fast[6]! * 65536 + fast[7]!)
    );
  }
  let s = text;
  let tail: number[] = [];
  const lastColon = s.lastIndexOf(':');
  const tailPart = s.slice(lastColon + 1);
  if (tailPart.includes('.')) {
    const v4 = Number(parseV4(tailPart));
    tail = [(v4 >>> 16) & 0xffff, v4 & 0xffff];
    s = s.slice(0, lastColon + 1) + '0';
    // the placeholder group is dropped again below
  }
  const [head, rest] = s.includes('::') ? (s.split('::') as [string, string]) : [s, undefined];
  const h = head ? head.split(':').map((g) => parseInt(g, 16)) : [];
  const r = rest !== undefined && rest !== '' ? rest.split(':').map((g) => parseInt(g, 16)) : [];
  if (tail.length) {
    (r.length ? r : h).pop();
  }
  const groups =
    rest === undefined ? [...h, ...tail] : [...h, ...new Array(8 - h.length - r.length - tail.length).fill(0), ...r, ...tail];
  return groups.reduce((acc: bigint, g: number) => (acc << 16n) | BigInt(g), 0n);
}

/**
 * Parses an address already known to be valid (from a validated policy):
 * the family is told by a `:`, and the slow validating regexes are skipped.
 */
export function parseValidIp(text: string): { family: Family; value: bigint } {
  return text.includes(':') ? { family: 6, value: parseV6(text) } : { family: 4, value: parseV4(text) };
}

/**
 * Writes an address already known to be valid (see parseValidIp) of family
 * `family` into `out` at `at` as 32-bit words, most significant first (1 for
 * IPv4, 4 for IPv6: the form of AddressSet), without a bigint on the common
 * path.
 */
export function writeValidIpWords(text: string, family: Family, out: Uint32Array, at: number): void {
  if (family === 4) {
    out[at] = parseV4Number(text);
    return;
  }
  if (v6Groups(text)) {
    const g = READ_GROUPS;
    for (let k = 0; k < 4; k++) out[at + k] = g[2 * k]! * 65536 + g[2 * k + 1]!;
    return;
  }
  const value = parseV6(text);
  for (let k = 0; k < 4; k++) out[at + k] = Number((value >> BigInt(96 - 32 * k)) & 0xffffffffn);
}

/** Parses a bare IPv4/IPv6 address; throws on anything else. */
export function parseIp(text: string): { family: Family; value: bigint } {
  const family = ipFamily(text);
  if (family === 4) return { family, value: parseV4(text) };
  if (family === 6) return { family, value: parseV6(text) };
  throw new Error(`"${text}" is not an IP address`);
}

export function formatIp(family: Family, value: bigint): string {
  if (family === 4) {
    const n = Number(value);
    return `${n >>> 24}.${(n >>> 16) & 255}.${(n >>> 8) & 255}.${n & 255}`;
  }
  // four 32-bit words, then number work (8 BigInt shifts and conversions per address cost ~3x more)
  return formatV6Words(Number((value >> 96n) & 0xffffffffn), Number((value >> 64n) & 0xffffffffn), Number((value >> 32n) & 0xffffffffn), Number(value & 0xffffffffn));
}

/** Scratch for the text writers (one address at a time, never kept): no array per address formatted. */
const GROUPS = new Uint16Array(8);
const TEXT = new Uint8Array(48);

/** ASCII hex digits of `v` (0..0xffff) without leading zeros into `out` at `at`; returns the end. */
function writeHex(v: number, out: Uint8Array, at: number): number {
  for (let shift = v >= 0x1000 ? 12 : v >= 0x100 ? 8 : v >= 0x10 ? 4 : 0; shift >= 0; shift -= 4) {
    const d = (v >>> shift) & 15;
    out[at++] = d < 10 ? 48 + d : 87 + d;
  }
  return at;
}

/**
 * Writes an IPv6 address given as four 32-bit words, most significant first,
 * as RFC 5952 text (ASCII, at most 39 bytes) into `out` at `at`; returns the
 * end. The one IPv6 formatter: formatIp and formatV6Words read what it
 * writes, and a member set is rendered with it straight into a chunk's bytes
 * (AddressSet.writeText: no string per address).
 */
export function writeV6Text(w0: number, w1: number, w2: number, w3: number, out: Uint8Array, at: number): number {
  const g = GROUPS;
  g[0] = w0 >>> 16;
  g[1] = w0 & 0xffff;
  g[2] = w1 >>> 16;
  g[3] = w1 & 0xffff;
  g[4] = w2 >>> 16;
  g[5] = w2 & 0xffff;
  g[6] = w3 >>> 16;
  g[7] = w3 & 0xffff;
  // RFC 5952: compress the longest run (>= 2) of zero groups, leftmost on ties.
  let bestStart = -1;
  let bestLen = 1;
  for (let i = 0; i < 8; ) {
    if (g[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && g[j] === 0) j++;
    if (j - i > bestLen) {
      bestStart = i;
      bestLen = j - i;
    }
    i = j;
  }
  let colon = false;
  for (let i = 0; i < 8; i++) {
    if (i === bestStart) {
      out[at++] = 58;
      out[at++] = 58;
      i += bestLen - 1;
      colon = false;
      continue;
    }
    if (colon) out[at++] = 58;
    at = writeHex(g[i]!, out, at);
    colon = true;
  }
  return at;
}

/** Writes an IPv4 address (a 32-bit number) as a dotted quad (ASCII, at most 15 bytes) into `out` at `at`; returns the end. */
export function writeV4Text(n: number, out: Uint8Array, at: number): number {
  for (let shift = 24; shift >= 0; shift -= 8) {
    const o = (n >>> shift) & 255;
    if (o >= 100) out[at++] = 48 + Math.floor(o / 100);
    if (o >= 10) out[at++] = 48 + (Math.floor(o / 10) % 10);
    out[at++] = 48 + (o % 10);
    if (shift) out[at++] = 46;
  }
  return at;
}

/** What a text writer wrote into `out` up to `end`, as a string (ASCII). */
export function asciiText(out: Uint8Array, end: number): string {
  return String.fromCharCode.apply(null, out.subarray(0, end) as unknown as number[]);
}

/** An IPv6 address given as four 32-bit words, most significant first, in RFC 5952 text (see writeV6Text). */
function formatV6Words(w0: number, w1: number, w2: number, w3: number): string {
  return asciiText(TEXT, writeV6Text(w0, w1, w2, w3, TEXT, 0));
}

/** Canonical text of an address (lower-case, compressed IPv6). */
export function canonicalIp(text: string): string {
  const { family, value } = parseIp(text);
  return formatIp(family, value);
}

export type ParsedPrefix = { ok: true; range: AddrRange } | { ok: false; error: string };

/**
 * Parses `a.b.c.d`, `a.b.c.d/n`, IPv6 equivalents and (when `allowRange`)
 * `first-last`. Host bits set in a CIDR are accepted and masked (as the clouds do).
 */
export function parsePrefix(text: string, opts: { allowRange?: boolean } = {}): ParsedPrefix {
  if (typeof text !== 'string' || text.length === 0 || text.length > 100) return { ok: false, error: `"${String(text)}" is not an IP address or CIDR` };
  const dash = text.indexOf('-');
  if (dash >= 0) {
    if (!opts.allowRange) return { ok: false, error: `"${text}" is a range; only an IP address or CIDR is allowed here` };
    const a = text.slice(0, dash).trim();
    const b = text.slice(dash + 1).trim();
    const fa = ipFamily(a);
    const fb = ipFamily(b);
    if (!fa || !fb) return { ok: false, error: `"${text}" is not a range of two IP addresses "first-last"` };
    if (fa !== fb) return { ok: false, error: `"${text}" mixes IPv4 and IPv6` };
    const lo = parseIp(a).value;
    const hi = parseIp(b).value;
    if (lo > hi) return { ok: false, error: `"${text}": the first address is greater than the last` };
    return { ok: true, range: { family: fa, lo, hi } };
  }
  const slash = text.indexOf('/');
  const addr = slash >= 0 ? text.slice(0, slash) : text;
  const family = ipFamily(addr);
  if (!family) return { ok: false, error: `"${text}" is not an IP address or CIDR` };
  const bits = FAMILY_BITS[family];
  let len = bits;
  if (slash >= 0) {
    const lenText = text.slice(slash + 1);
    if (!/^\d{1,3}$/.test(lenText) || Number(lenText) > bits) {
      return { ok: false, error: `"${text}" has an invalid prefix length (0-${bits})` };
    }
    len = Number(lenText);
  }
  const value = parseIp(addr).value;
  const hostBits = BigInt(bits - len);
  const lo = (value >> hostBits) << hostBits;
  const hi = lo | ((1n << hostBits) - 1n);
  return { ok: true, range: { family, lo, hi } };
}

export function prefixRange(text: string, allowRange = true): AddrRange {
  const p = parsePrefix(text, { allowRange });
  if (!p.ok) throw new Error(p.error);
  return p.range;
}

export function fullRange(family: Family): AddrRange {
  return { family, lo: 0n, hi: FAMILY_MAX[family] };
}

const byStart = (a: AddrRange, b: AddrRange): number => (a.family !== b.family ? a.family - b.family : a.lo < b.lo ? -1 : a.lo > b.lo ? 1 : 0);

/** Sorts and merges overlapping or adjacent intervals of one family. `owned`: the caller gives up `ranges` and its objects (no copies). */
export function mergeRanges(ranges: readonly AddrRange[], owned = false): AddrRange[] {
  let sorted = ranges as AddrRange[];
  // member lists usually come sorted (the controller's canonical order): check before sorting a copy
  let inOrder = true;
  for (let i = 1; i < ranges.length && inOrder; i++) if (byStart(ranges[i - 1]!, ranges[i]!) > 0) inOrder = false;
  if (!inOrder) sorted = owned ? sorted.sort(byStart) : [...ranges].sort(byStart);
  const out: AddrRange[] = [];
  for (const r of sorted) {
    const last = out[out.length - 1];
    if (last && last.family === r.family && r.lo <= last.hi + 1n) {
      if (r.hi > last.hi) last.hi = r.hi;
    } else {
      out.push(owned ? r : { ...r });
    }
  }
  return out;
}

export function rangeContains(r: AddrRange, family: Family, value: bigint): boolean {
  return r.family === family && r.lo <= value && value <= r.hi;
}

/** Largest CIDR blocks covering exactly [lo, hi]; used to print ranges readably. */
export function rangeToCidrs(r: AddrRange): string[] {
  const bits = FAMILY_BITS[r.family];
  const out: string[] = [];
  let lo = r.lo;
  while (lo <= r.hi) {
    let size = 0;
    while (size < bits) {
      const next = size + 1;
      const mask = (1n << BigInt(next)) - 1n;
      if ((lo & mask) !== 0n || lo + mask > r.hi) break;
      size = next;
    }
    out.push(`${formatIp(r.family, lo)}/${bits - size}`);
    lo += 1n << BigInt(size);
  }
  return out;
}

/** nft element text for a range: `a.b.c.d`, `a.b.c.d/n` or `first-last`. */
export function formatRangeNft(r: AddrRange): string {
  if (r.lo === r.hi) return formatIp(r.family, r.lo);
  const size = r.hi - r.lo + 1n;
  if ((size & (size - 1n)) === 0n && (r.lo & (size - 1n)) === 0n) {
    return `${formatIp(r.family, r.lo)}/${FAMILY_BITS[r.family] - size.toString(2).length + 1}`;
  }
  const cidrs = rangeToCidrs(r);
  if (cidrs.length === 1) return cidrs[0]!;
  return `${formatIp(r.family, r.lo)}-${formatIp(r.family, r.hi)}`;
}
