/**
 * Remote groups' member lists held packed in the document itself (issue 18
 * item 2; bench/README.md "Issue 18 round 14").
 *
 * A document's `group_members` is a list of address strings per group. At
 * 100k members those are 100k strings (~5 MB of heap, with their list),
 * which the agent held for as long as the document, parsed from the frame's
 * JSON first, and which every full garbage collection walked; the compiler
 * turned them into one packed AddressSet per family anyway.
 *
 * `parseWithPackedMembers` (the agent's decoder of a `policy` frame and of
 * its state file) reads the lists at `policy.group_members.<group>` out of
 * the JSON text before JSON.parse sees it. A list of at least PACK_MIN
 * addresses, every one a string in its canonical text (what `formatIp`
 * writes: IPv4 without leading zeros, IPv6 in RFC 5952 form) and in
 * canonical order (IPv4 before IPv6, ascending, no duplicates: the order
 * the controller sends, protocol/delta.ts), is read straight into two
 * AddressSets: no string per member is ever made. Anything else (a short
 * list, a member in other text, out of order, an escape, a duplicated or
 * escaped key on the way to the list, malformed JSON) is left to JSON.parse
 * and the string path as before, its validation messages included.
 *
 * The document JSON.parse returns then has `[]` where each packed list was,
 * and the packed list beside it (a WeakMap keyed by the `group_members`
 * object); `checkPolicy` gives the lists back in the document it returns,
 * where each reads as before: an enumerable getter builds the same strings
 * the text held on first read, then keeps them. What knows about the packed
 * form reads it and never builds the strings: the compiler's member sets
 * (normalize.ts: a copy of the packed set, which the membership fast path
 * then changes in place), the size of a burst (agent/footprint.ts), the
 * state file's writer (agent/state-store.ts) and policy deltas
 * (protocol/delta.ts: the next document's list is the packed one with the
 * delta applied, built when first needed).
 */
import { AddressSet } from './address-set.js';
import { writeV6Text, type Family } from './address.js';

/** A group's members: IPv4 then IPv6, each ascending (the canonical order). */
export interface PackedMembers {
  readonly v4: AddressSet;
  readonly v6: AddressSet;
}

/** Gives a packed list, built on the first call (a list changed by deltas) or at hand. */
export type PackedSource = () => PackedMembers;

/** Lists shorter than this stay strings: the packing is for big groups, the rest of the code path is the same. */
export const PACK_MIN = 256;

/** `group_members` object -> group id -> its packed list. */
const packed = new WeakMap<object, Map<string, PackedSource>>();

function register(groupMembers: object, gid: string, source: PackedSource): void {
  let m = packed.get(groupMembers);
  if (!m) packed.set(groupMembers, (m = new Map()));
  m.set(gid, source);
}

/** The packed list of group `gid` of a document's `group_members`, without building it (undefined: the list is strings). */
export function packedSource(groupMembers: object, gid: string): PackedSource | undefined {
  return packed.get(groupMembers)?.get(gid);
}

/** The packed list of group `gid` (undefined: the list is strings). */
export function packedMembers(groupMembers: object, gid: string): PackedMembers | undefined {
  return packedSource(groupMembers, gid)?.();
}

/** How many groups of a document's `group_members` are held packed (none built by asking). */
export function packedGroupCount(groupMembers: object): number {
  return packed.get(groupMembers)?.size ?? 0;
}

/** How many members group `gid` lists, without building the strings of a packed list. */
export function memberCount(groupMembers: Readonly<Record<string, readonly string[]>>, gid: string): number {
  const p = packedMembers(groupMembers, gid);
  return p ? p.v4.length + p.v6.length : (groupMembers[gid]?.length ?? 0);
}

/** The members of a packed list as the document's strings (canonical text, canonical order). */
export function memberTexts(p: PackedMembers): string[] {
  const out = new Array<string>(p.v4.length + p.v6.length);
  let k = 0;
  for (let i = 0; i < p.v4.length; i++) out[k++] = p.v4.text(i);
  for (let i = 0; i < p.v6.length; i++) out[k++] = p.v6.text(i);
  return out;
}

/**
 * Makes group `gid` of `groupMembers` (a document's, being built) the packed
 * list `source` gives: the property reads as its strings, built on the first
 * read and kept.
 */
export function definePacked(groupMembers: Record<string, readonly string[]>, gid: string, source: PackedSource): void {
  let texts: string[] | undefined;
  Object.defineProperty(groupMembers, gid, { enumerable: true, configurable: true, get: () => (texts ??= memberTexts(source())) });
  register(groupMembers, gid, source);
}

/** Gives the packed lists of a raw document's `group_members` (`parseWithPackedMembers`) to the validated document's (`checkPolicy`). */
export function carryPacked(from: unknown, to: Record<string, readonly string[]>): void {
  if (typeof from !== 'object' || from === null) return;
  const m = packed.get(from);
  if (!m) return;
  for (const [gid, source] of m) if (Object.hasOwn(to, gid)) definePacked(to, gid, source);
}

/**
 * The JSON text of a packed list, exactly what JSON.stringify writes for its
 * strings (`["198.18.0.1","fd00:5ec::1"]`), in pieces of at most `per`
 * members. Each piece is a view of one buffer, valid until the next is taken.
 */
export function* packedJsonPieces(p: PackedMembers, per = 4096): Generator<Uint8Array> {
  const total = p.v4.length + p.v6.length;
  if (total === 0) {
    yield Uint8Array.of(91, 93);
    return;
  }
  // 39 characters at most per address, its quotes and a comma; the brackets
  const buf = new Uint8Array(Math.min(per, total) * 42 + 2);
  let at = 0;
  let k = 0;
  for (const set of [p.v4, p.v6]) {
    for (let i = 0; i < set.length; i++, k++) {
      buf[at++] = k === 0 ? 91 : 44;
      buf[at++] = 34;
      at = set.writeText(i, buf, at);
      buf[at++] = 34;
      if (k === total - 1) buf[at++] = 93;
      if ((k + 1) % per === 0 || k === total - 1) {
        yield buf.subarray(0, at);
        at = 0;
      }
    }
  }
}

// ---- reading the lists out of the JSON text ----

const QUOTE = 34;
const BACKSLASH = 92;
const COMMA = 44;
const COLON = 58;
const DOT = 46;
const LBRACE = 123;
const RBRACE = 125;
const LBRACK = 91;
const RBRACK = 93;

const isSpace = (c: number): boolean => c === 32 || c === 10 || c === 13 || c === 9;

function skipSpace(t: string, i: number): number {
  while (i < t.length && isSpace(t.charCodeAt(i))) i++;
  return i;
}

/** The index after the string at `i` (a quote), -1 when it does not end. */
function skipString(t: string, i: number): number {
  for (i++; i < t.length; i++) {
    const c = t.charCodeAt(i);
    if (c === QUOTE) return i + 1;
    if (c === BACKSLASH) i++;
  }
  return -1;
}

/** The index after the value at `i`, -1 when it is malformed as far as skipping can tell (JSON.parse has the last word). */
function skipValue(t: string, i: number): number {
  const c = t.charCodeAt(i);
  if (c === QUOTE) return skipString(t, i);
  if (c === LBRACE || c === LBRACK) {
    let depth = 0;
    for (; i < t.length; i++) {
      const d = t.charCodeAt(i);
      if (d === QUOTE) {
        const e = skipString(t, i);
        if (e < 0) return -1;
        i = e - 1;
      } else if (d === LBRACE || d === LBRACK) depth++;
      else if ((d === RBRACE || d === RBRACK) && --depth === 0) return i + 1;
    }
    return -1;
  }
  const s = i;
  while (i < t.length) {
    const d = t.charCodeAt(i);
    if (d === COMMA || d === RBRACE || d === RBRACK || isSpace(d)) break;
    i++;
  }
  return i > s ? i : -1;
}

/**
 * Walks the object at `i` (a brace): `onValue(key, at)` reads or skips each
 * value and returns the index after it. -1 (give up) for malformed text and
 * for a key with an escape or seen twice: JSON.parse decodes the one and
 * keeps the last of the other, which is not worth reproducing here.
 */
function eachMember(t: string, i: number, onValue: (key: string, at: number) => number): number {
  const seen = new Set<string>();
  i = skipSpace(t, i + 1);
  if (t.charCodeAt(i) === RBRACE) return i + 1;
  for (;;) {
    if (t.charCodeAt(i) !== QUOTE) return -1;
    const e = skipString(t, i);
    if (e < 0) return -1;
    const key = t.slice(i + 1, e - 1);
    if (key.includes('\\') || seen.has(key)) return -1;
    seen.add(key);
    i = skipSpace(t, e);
    if (t.charCodeAt(i) !== COLON) return -1;
    const after = onValue(key, skipSpace(t, i + 1));
    if (after < 0) return -1;
    i = skipSpace(t, after);
    const c = t.charCodeAt(i);
    if (c === RBRACE) return i + 1;
    if (c !== COMMA) return -1;
    i = skipSpace(t, i + 1);
  }
}

/** The IPv4 address in canonical text at t[s, e) as a number, -1 when it is not one. */
function readV4(t: string, s: number, e: number): number {
  let n = 0;
  let octet = 0;
  let digits = 0;
  let dots = 0;
  for (let i = s; i < e; i++) {
    const c = t.charCodeAt(i);
    if (c === DOT) {
      if (digits === 0 || dots === 3) return -1;
      n = n * 256 + octet;
      dots++;
      octet = 0;
      digits = 0;
    } else if (c >= 48 && c <= 57) {
      // canonical: no leading zero
      if (digits > 0 && octet === 0) return -1;
      octet = octet * 10 + (c - 48);
      if (++digits > 3 || octet > 255) return -1;
    } else return -1;
  }
  return dots === 3 && digits > 0 ? n * 256 + octet : -1;
}

const GROUPS = new Uint16Array(8);
const TEXT = new Uint8Array(48);

/**
 * The IPv6 address in canonical text at t[s, e) into `out` at `at` (four
 * words); false when it is not one. Read leniently, then written back in
 * canonical text and compared: only the canonical text of an address
 * passes, so the comparison is the validation.
 */
function readV6(t: string, s: number, e: number, out: Uint32Array, at: number): boolean {
  if (e - s < 2 || e - s > 39) return false;
  const g = GROUPS;
  let n = 0;
  let gap = -1;
  let i = s;
  if (t.charCodeAt(i) === COLON) {
    if (t.charCodeAt(i + 1) !== COLON) return false;
    gap = 0;
    i += 2;
  }
  while (i < e) {
    let v = 0;
    let d = 0;
    for (; i < e; i++) {
      const c = t.charCodeAt(i);
      const h = c >= 48 && c <= 57 ? c - 48 : c >= 97 && c <= 102 ? c - 87 : -1;
      if (h < 0) break;
      v = v * 16 + h;
      if (++d > 4) return false;
    }
    if (d === 0 || n === 8) return false;
    g[n++] = v;
    if (i === e) break;
    if (t.charCodeAt(i) !== COLON) return false;
    i++;
    if (i < e && t.charCodeAt(i) === COLON) {
      if (gap >= 0) return false;
      gap = n;
      i++;
    } else if (i === e) return false;
  }
  if (gap < 0 ? n !== 8 : n > 7) return false;
  if (gap >= 0) {
    // the groups after the gap move to the end, zeros in between
    const tail = n - gap;
    for (let k = 0; k < tail; k++) g[7 - k] = g[n - 1 - k]!;
    for (let k = gap; k < 8 - tail; k++) g[k] = 0;
  }
  const w0 = g[0]! * 65536 + g[1]!;
  const w1 = g[2]! * 65536 + g[3]!;
  const w2 = g[4]! * 65536 + g[5]!;
  const w3 = g[6]! * 65536 + g[7]!;
  const end = writeV6Text(w0, w1, w2, w3, TEXT, 0);
  if (end !== e - s) return false;
  for (let k = 0; k < end; k++) if (TEXT[k] !== t.charCodeAt(s + k)) return false;
  out[at] = w0;
  out[at + 1] = w1;
  out[at + 2] = w2;
  out[at + 3] = w3;
  return true;
}

/** The addresses of one family read so far, in a buffer sized for the whole list. */
class Words {
  readonly words: Uint32Array;
  count = 0;
  constructor(
    readonly stride: 1 | 4,
    capacity: number,
  ) {
    this.words = new Uint32Array(capacity * stride);
  }
  /** where the next address goes (its first word) */
  next(): number {
    return this.count * this.stride;
  }
  /** Is the address just written at `at` above the previous one? */
  ascending(at: number): boolean {
    if (this.count === 0) return true;
    const w = this.words;
    for (let k = 0; k < this.stride; k++) {
      const a = w[at - this.stride + k]!;
      const b = w[at + k]!;
      if (a !== b) return a < b;
    }
    return false;
  }
  set(family: Family): AddressSet {
    const n = this.count * this.stride;
    return AddressSet.fromWords(family, n === this.words.length ? this.words : this.words.slice(0, n), this.count);
  }
}

/**
 * The end of the list at `start` (a bracket; -1: it has none), how many of
 * the strings in it have a colon and how many do not (its IPv6 and IPv4
 * members, if it is a list of addresses), and whether one has an escape.
 * One pass.
 */
function listExtent(t: string, start: number): { end: number; n4: number; n6: number; escaped: boolean } {
  let depth = 0;
  let n4 = 0;
  let n6 = 0;
  let escaped = false;
  for (let i = start; i < t.length; i++) {
    const c = t.charCodeAt(i);
    if (c === QUOTE) {
      let colon = false;
      for (i++; i < t.length; i++) {
        const d = t.charCodeAt(i);
        if (d === QUOTE) break;
        if (d === BACKSLASH) {
          escaped = true;
          i++;
        } else if (d === COLON) colon = true;
      }
      if (colon) n6++;
      else n4++;
    } else if (c === LBRACE || c === LBRACK) depth++;
    else if ((c === RBRACE || c === RBRACK) && --depth === 0) return { end: i + 1, n4, n6, escaped };
  }
  return { end: -1, n4, n6, escaped };
}

/**
 * The list at `i` (a bracket): its end, and its members packed when it is a
 * list of at least `min` addresses in canonical text and order.
 */
function readList(t: string, i: number, min: number): { end: number; members?: PackedMembers } {
  // each family's buffer sized for the list's strings with and without a colon: nothing grown or copied
  const { end, n4, n6, escaped } = listExtent(t, i);
  // an escape is left to JSON.parse and the string path
  if (end < 0 || escaped || n4 + n6 < min) return { end };
  const v4 = new Words(1, n4);
  const v6 = new Words(4, n6);
  const giveUp = () => ({ end });
  i = skipSpace(t, i + 1);
  for (;;) {
    if (t.charCodeAt(i) !== QUOTE) return giveUp();
    const s = i + 1;
    let e = s;
    let colon = false;
    // address characters only: an escape or anything else is left to the string path
    for (; e < t.length; e++) {
      const c = t.charCodeAt(e);
      if (c === QUOTE) break;
      if (c === COLON) colon = true;
      else if (!((c >= 48 && c <= 57) || (c >= 97 && c <= 102) || c === DOT)) return giveUp();
    }
    if (e >= t.length) return giveUp();
    if (colon) {
      const at = v6.next();
      if (!readV6(t, s, e, v6.words, at) || !v6.ascending(at)) return giveUp();
      v6.count++;
    } else {
      // IPv4 before every IPv6
      if (v6.count > 0) return giveUp();
      const n = readV4(t, s, e);
      if (n < 0) return giveUp();
      const at = v4.next();
      v4.words[at] = n;
      if (!v4.ascending(at)) return giveUp();
      v4.count++;
    }
    i = skipSpace(t, e + 1);
    const c = t.charCodeAt(i);
    if (c === RBRACK) break;
    if (c !== COMMA) return giveUp();
    i = skipSpace(t, i + 1);
  }
  return { end, members: { v4: v4.set(4), v6: v6.set(6) } };
}

/**
 * The lists of `text` (a JSON object whose `policy` is a policy document: a
 * `policy` frame, the state file) that can be held packed: the text with
 * `[]` in their place, and the lists by group id. Null when there is none,
 * or when the text is not what this reads (JSON.parse reads it then).
 */
export function extractMemberLists(text: string, min = PACK_MIN): { text: string; lists: Map<string, PackedMembers> } | null {
  const cuts: { start: number; end: number; gid: string; members: PackedMembers }[] = [];
  const t = text;
  const i = skipSpace(t, 0);
  if (t.charCodeAt(i) !== LBRACE) return null;
  const end = eachMember(t, i, (key, at) =>
    key !== 'policy' || t.charCodeAt(at) !== LBRACE
      ? skipValue(t, at)
      : eachMember(t, at, (field, at2) =>
          field !== 'group_members' || t.charCodeAt(at2) !== LBRACE
            ? skipValue(t, at2)
            : eachMember(t, at2, (gid, at3) => {
                // "__proto__": zod drops it and checkPolicy says so; left to that path
                if (t.charCodeAt(at3) !== LBRACK || gid === '__proto__') return skipValue(t, at3);
                const r = readList(t, at3, min);
                if (r.members) cuts.push({ start: at3, end: r.end, gid, members: r.members });
                return r.end;
              }),
        ),
  );
  if (end < 0 || skipSpace(t, end) !== t.length || cuts.length === 0) return null;
  let out = '';
  let at = 0;
  for (const c of cuts) {
    out += t.slice(at, c.start) + '[]';
    at = c.end;
  }
  out += t.slice(at);
  return { text: out, lists: new Map(cuts.map((c) => [c.gid, c.members])) };
}

/**
 * JSON.parse of `text` (a JSON object whose `policy` is a policy document),
 * with the member lists that can be held packed read out of it first (see
 * the module comment): its `policy.group_members` has `[]` in their place,
 * and `checkPolicy` of its `policy` gives them back. The same result and
 * errors as JSON.parse otherwise.
 */
export function parseWithPackedMembers(text: string, min = PACK_MIN): unknown {
  // a text this short holds no list worth packing (an IPv4 member takes 10 characters or more with its quotes and comma)
  const x = text.length >= min * 10 ? extractMemberLists(text, min) : null;
  if (!x) return JSON.parse(text);
  let doc: { policy: { group_members: object } };
  try {
    doc = JSON.parse(x.text) as typeof doc;
  } catch {
    // not expected (the lists taken out were well-formed): JSON.parse's own reading and error, then
    return JSON.parse(text);
  }
  for (const [gid, members] of x.lists) register(doc.policy.group_members, gid, () => members);
  return doc;
}
