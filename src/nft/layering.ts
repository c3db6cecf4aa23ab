/**
 * Rule layering (pure): which rules of one direction and family can match the
 * same packet (`rulesOverlap`), which rule makes another unreachable
 * (`ruleCovers`, `findShadowed`), and the lookup layer of each rule
 * (`assignLayers`; both in one pass: `layerRules`), with the index that
 * keeps these near-linear (`OverlapIndex`). The layer contract, from compile.ts's design note: a rule
 * gets one more than the highest layer of any earlier rule it overlaps, so
 * the rules of one layer never overlap and lookups layer by layer find the
 * first-match rule first.
 *
 * Group rules: cover does not depend on a remote group's members (a group
 * rule covers only rules on the same group, and only a rule matching every
 * address covers it), so a membership change never changes what is shadowed
 * (membership.ts relies on it). Overlap does use the members.
 *
 * Inputs are the normalized rules of ONE direction and family, in match
 * order; nothing here throws or keeps state between calls.
 */
import { FAMILY_MAX, type AddrRange } from '../policy/address.js';
import { AddressSet, peerRanges, type Peers } from '../policy/address-set.js';
import type { NormalizedRule } from '../policy/normalize.js';

/** Does a range of sorted disjoint `ranges` intersect [lo, hi]? (binary search) */
function anyIntersects(ranges: readonly AddrRange[], lo: bigint, hi: bigint): boolean {
  let l = 0;
  let h = ranges.length;
  while (l < h) {
    const mid = (l + h) >> 1;
    if (ranges[mid]!.hi < lo) l = mid + 1;
    else h = mid;
  }
  return l < ranges.length && ranges[l]!.lo <= hi;
}

function rangesIntersect(a: Peers, b: Peers): boolean {
  // packed members (AddressSet): binary search for each range of the other side, or for each member of the smaller set
  if (a instanceof AddressSet) return b instanceof AddressSet ? a.intersects(b) : b.some((r) => a.intersectsRange(r.lo, r.hi));
  if (b instanceof AddressSet) return a.some((r) => b.intersectsRange(r.lo, r.hi));
  // a big member list against a few prefixes: binary search instead of walking the members
  if (a.length > 16 * b.length) return b.some((r) => anyIntersects(a, r.lo, r.hi));
  if (b.length > 16 * a.length) return a.some((r) => anyIntersects(b, r.lo, r.hi));
  let i = 0;
  let j = 0;
  while (i < a.length && j < b.length) {
    const x = a[i]!;
    const y = b[j]!;
    if (x.hi < y.lo) i++;
    else if (y.hi < x.lo) j++;
    else return true;
  }
  return false;
}

function portsIntersect(a: readonly [number, number][] | null, b: readonly [number, number][] | null): boolean {
  if (!a || !b) return true;
  return a.some(([a0, a1]) => b.some(([b0, b1]) => a0 <= b1 && b0 <= a1));
}

/** Can one packet match both rules? (same direction and family assumed) */
export function rulesOverlap(a: NormalizedRule, b: NormalizedRule): boolean {
  if (a.protocol !== null && b.protocol !== null && a.protocol !== b.protocol) return false;
  if (!portsIntersect(a.ports, b.ports)) return false;
  if (a.icmpType !== null && b.icmpType !== null) {
    if (a.icmpType !== b.icmpType) return false;
    if (a.icmpCode !== null && b.icmpCode !== null && a.icmpCode !== b.icmpCode) return false;
  }
  return rangesIntersect(a.peers, b.peers);
}

/**
 * Earlier rules indexed by what can make them overlap a new one: by protocol
 * (a rule for protocol P can only overlap rules for P or for all protocols),
 * then by destination-port bucket, then by address bucket (/24 for IPv4, /64
 * for IPv6). Rules whose ports are narrow (at most NARROW_FINE buckets of 16
 * ports) are also indexed by 16-port bucket, so that a narrow rule meets only
 * the narrow rules near its ports and the wide rules of its 256-port buckets;
 * rules whose peers are narrow (at most NARROW_ADDR address buckets) are
 * found only through their address buckets, so that 1000 rules on one port
 * from 1000 different /32s do not all meet each other. It returns a superset
 * of the rules that can overlap; rulesOverlap decides. Without it, layering
 * is quadratic in the number of rules (10k rules: 11 s).
 */
class OverlapIndex {
  private readonly byProtocol = new Map<number, ProtocolIndex>();
  private readonly stamp: Int32Array;
  /** candidates() fills and returns this list (reused: one compile makes no garbage per query) */
  private readonly found: number[] = [];
  /** per rule: its address buckets (addrBucketsOf), computed once for its query and its add */
  private readonly addrs: (readonly number[] | null | undefined)[];

  constructor(private readonly rules: readonly NormalizedRule[]) {
    this.stamp = new Int32Array(rules.length).fill(-1);
    this.addrs = new Array<readonly number[] | null | undefined>(rules.length);
  }

  private addrOf(i: number): readonly number[] | null {
    let a = this.addrs[i];
    if (a === undefined) this.addrs[i] = a = addrBucketsOf(this.rules[i]!);
    return a;
  }

  add(i: number): void {
    const r = this.rules[i]!;
    const key = r.protocol ?? -1;
    let g = this.byProtocol.get(key);
    if (!g) this.byProtocol.set(key, (g = { all: new AddrBuckets(), anyPort: new AddrBuckets(), coarse: new Map(), fineNarrow: new Map(), coarseWide: new Map() }));
    const addr = this.addrOf(i);
    g.all.add(i, addr);
    if (!r.ports) {
      g.anyPort.add(i, addr);
      return;
    }
    const narrow = isNarrow(r.ports);
    for (const [a, b] of r.ports) {
      for (let k = a >> 8; k <= b >> 8; k++) {
        bucket(g.coarse, k).add(i, addr);
        if (!narrow) bucket(g.coarseWide, k).add(i, addr);
      }
      if (narrow) for (let k = a >> 4; k <= b >> 4; k++) bucket(g.fineNarrow, k).add(i, addr);
    }
  }

  /**
   * Indexes of earlier rules that may overlap rule `i`, each once, in a list
   * that the next call reuses (read it before calling again).
   */
  candidates(i: number): readonly number[] {
    const r = this.rules[i]!;
    this.found.length = 0;
    const addr = this.addrOf(i);
    if (r.protocol === null) for (const g of this.byProtocol.values()) this.fromProtocol(g, r, addr, i);
    else {
      const any = this.byProtocol.get(-1);
      if (any) this.fromProtocol(any, r, addr, i);
      const own = this.byProtocol.get(r.protocol);
      if (own) this.fromProtocol(own, r, addr, i);
    }
    return this.found;
  }

  /** candidates() within one protocol's rules (a bucket met twice adds nothing: the stamp) */
  private fromProtocol(g: ProtocolIndex, r: NormalizedRule, addr: readonly number[] | null, i: number): void {
    if (!r.ports) {
      g.all.collect(addr, i, this.stamp, this.found);
      return;
    }
    g.anyPort.collect(addr, i, this.stamp, this.found);
    const narrow = isNarrow(r.ports);
    for (const [a, b] of r.ports) {
      if (narrow) {
        for (let k = a >> 4; k <= b >> 4; k++) g.fineNarrow.get(k)?.collect(addr, i, this.stamp, this.found);
        for (let k = a >> 8; k <= b >> 8; k++) g.coarseWide.get(k)?.collect(addr, i, this.stamp, this.found);
      } else for (let k = a >> 8; k <= b >> 8; k++) g.coarse.get(k)?.collect(addr, i, this.stamp, this.found);
    }
  }
}

/** The rules of one protocol (-1: all protocols), by port bucket (see OverlapIndex). */
interface ProtocolIndex {
  all: AddrBuckets;
  anyPort: AddrBuckets;
  coarse: Map<number, AddrBuckets>;
  fineNarrow: Map<number, AddrBuckets>;
  coarseWide: Map<number, AddrBuckets>;
}

/** Rules of one port bucket by address bucket; `wide`: rules whose peers span too many buckets. */
class AddrBuckets {
  private readonly wide: number[] = [];
  private readonly byAddr = new Map<number, number[]>();

  /** `addr` null: wide. */
  add(i: number, addr: readonly number[] | null): void {
    if (!addr) {
      if (this.wide[this.wide.length - 1] !== i) this.wide.push(i);
    } else for (const a of addr) push(this.byAddr, a, i);
  }

  /**
   * Appends to `out` the rules that may share an address with peers in `addr`
   * (null: wide, every rule) and are not stamped `query` yet, stamping them.
   */
  collect(addr: readonly number[] | null, query: number, stamp: Int32Array, out: number[]): void {
    take(this.wide, query, stamp, out);
    if (!addr) {
      for (const list of this.byAddr.values()) take(list, query, stamp, out);
      return;
    }
    for (const a of addr) {
      const list = this.byAddr.get(a);
      if (list) take(list, query, stamp, out);
    }
  }
}

/** Appends the rules of `list` not stamped `query` yet to `out`, stamping them. */
function take(list: readonly number[], query: number, stamp: Int32Array, out: number[]): void {
  for (const j of list) {
    if (stamp[j] === query) continue;
    stamp[j] = query;
    out.push(j);
  }
}

function bucket(m: Map<number, AddrBuckets>, k: number): AddrBuckets {
  let b = m.get(k);
  if (!b) m.set(k, (b = new AddrBuckets()));
  return b;
}

/** A rule whose peers span at most this many address buckets is found only through them. */
const NARROW_ADDR = 16n;

/** Low bits of an IPv6 /64 bucket kept in its key (a double holds 53). */
const V6_KEY_MASK = (1n << 52n) - 1n;

/**
 * The address buckets (/24, /64) of a rule's peers, or null when they span
 * more than NARROW_ADDR; as numbers (a Map hashes a bigint key on every
 * lookup: 10k rules spent most of their layering there). An IPv6 bucket
 * keeps the low 52 bits of its /64: two prefixes that differ only above
 * them share a key, which only adds candidates (rulesOverlap decides).
 */
function addrBucketsOf(r: NormalizedRule): number[] | null {
  const shift = r.family === 4 ? 8n : 64n;
  // at most NARROW_ADDR + 1 peers are looked at: a big member set stops early
  const peers = r.peers instanceof AddressSet ? peerRanges(r.peers, Number(NARROW_ADDR) + 1) : r.peers;
  let n = 0n;
  for (const p of peers) {
    n += (p.hi >> shift) - (p.lo >> shift) + 1n;
    if (n > NARROW_ADDR) return null;
  }
  // peers are sorted and disjoint: their buckets come in order, a repeat only where two peers share one
  const out: number[] = [];
  for (const p of peers) {
    for (let k = p.lo >> shift; k <= p.hi >> shift; k++) {
      const key = r.family === 4 ? Number(k) : Number(k & V6_KEY_MASK);
      if (out[out.length - 1] !== key) out.push(key);
    }
  }
  return out;
}

function push(m: Map<number, number[]>, k: number, v: number): void {
  const list = m.get(k);
  if (!list) m.set(k, [v]);
  else if (list[list.length - 1] !== v) list.push(v);
}

/** A rule spanning at most this many 16-port buckets is indexed by them too. */
const NARROW_FINE = 16;

/** Do the ports span at most NARROW_FINE 16-port buckets? */
function isNarrow(ports: readonly [number, number][]): boolean {
  let n = 0;
  for (const [a, b] of ports) n += (b >> 4) - (a >> 4) + 1;
  return n <= NARROW_FINE;
}

function rangesCover(outer: Peers, inner: Peers): boolean {
  // the same members (rules on one group share their set): covered
  if (outer === inner) return true;
  if (outer instanceof AddressSet) {
    // single addresses cover only single addresses they hold
    if (inner instanceof AddressSet) return inner.minus(outer).length === 0;
    return inner.every((r) => r.lo === r.hi && outer.has(r.lo));
  }
  if (inner instanceof AddressSet) {
    // members inside one range of the outer list (any address, a prefix): the first and last decide
    if (!inner.length || outer.some((o) => o.lo <= inner.at(0) && inner.at(inner.length - 1) <= o.hi)) return true;
  }
  let j = 0;
  for (const r of peerRanges(inner)) {
    while (j < outer.length && outer[j]!.hi < r.lo) j++;
    const o = outer[j];
    if (!o || o.lo > r.lo || o.hi < r.hi) return false;
  }
  return true;
}

/** Does every packet `b` can match also match `a`? (same direction and family assumed) */
export function ruleCovers(a: NormalizedRule, b: NormalizedRule): boolean {
  if (a.protocol !== null && a.protocol !== b.protocol) return false;
  if (a.ports) {
    if (!b.ports) return false;
    if (!b.ports.every(([lo, hi]) => a.ports!.some(([alo, ahi]) => alo <= lo && hi <= ahi))) return false;
  }
  if (a.icmpType !== null) {
    if (b.icmpType !== a.icmpType) return false;
    if (a.icmpCode !== null && b.icmpCode !== a.icmpCode) return false;
  }
  return rangesCover(a.peers, b.peers);
}

/** Does the rule's peer hold every address of its family? */
export function matchesEveryAddress(r: NormalizedRule): boolean {
  const p = r.peers;
  if (p instanceof AddressSet) return false; // members are single addresses (a group of every address cannot be written)
  return p.length === 1 && p[0]!.lo === 0n && p[0]!.hi === FAMILY_MAX[r.family];
}

/**
 * Rules that can never be the first match because one earlier rule matches
 * every packet they match (a repeated rule, a narrower rule after a wider
 * one). They keep their chain and counter but get no map elements, which
 * saves lookup layers. An earlier rule that covers them may itself be
 * shadowed: its own coverer then covers them too.
 */
export function findShadowed(rules: readonly NormalizedRule[]): boolean[] {
  const shadowed: boolean[] = [];
  const index = new OverlapIndex(rules);
  for (let i = 0; i < rules.length; i++) {
    const r = rules[i]!;
    let hit = false;
    if (r.peers.length > 0) {
      for (const j of index.candidates(i)) {
        if (shadows(rules[j]!, r)) {
          hit = true;
          break;
        }
      }
    }
    shadowed.push(hit);
    index.add(i);
  }
  return shadowed;
}

/** Does earlier rule `q` make `r` unreachable? Cover independent of group members: a group rule covers only rules on its group, only an any-address rule covers a group rule. */
function shadows(q: NormalizedRule, r: NormalizedRule): boolean {
  const qGroup = q.remote.kind === 'group' ? q.remote.id : null;
  const rGroup = r.remote.kind === 'group' ? r.remote.id : null;
  const allowed = qGroup !== null ? qGroup === rGroup : rGroup === null || matchesEveryAddress(q);
  return allowed && q.peers.length > 0 && ruleCovers(q, r);
}

/**
 * `findShadowed` and `assignLayers` (of the rules with the shadowed ones
 * matching nothing) in one pass over one index: what the compiler uses.
 * Shadowed rules are left out of the index: what one covers, the rule that
 * covers it covers too, and they have no layer to push later rules up.
 */
export function layerRules(rules: readonly NormalizedRule[]): { shadowed: boolean[]; layers: (number | null)[] } {
  const shadowed: boolean[] = [];
  const layers: (number | null)[] = [];
  const index = new OverlapIndex(rules);
  for (let i = 0; i < rules.length; i++) {
    const r = rules[i]!;
    let hit = false;
    let layer = 0;
    if (r.peers.length > 0) {
      for (const j of index.candidates(i)) {
        const q = rules[j]!;
        if (shadows(q, r)) {
          hit = true;
          break;
        }
        const lj = layers[j]!;
        if (lj !== null && lj >= layer && rulesOverlap(q, r)) layer = lj + 1;
      }
    }
    shadowed.push(hit);
    layers.push(hit || r.peers.length === 0 ? null : layer);
    if (!hit) index.add(i);
  }
  return { shadowed, layers };
}

/** Layer per rule (see the file comment); null for rules that match nothing. */
export function assignLayers(rules: readonly NormalizedRule[]): (number | null)[] {
  const layers: (number | null)[] = [];
  const index = new OverlapIndex(rules);
  for (let i = 0; i < rules.length; i++) {
    const r = rules[i]!;
    if (r.peers.length === 0) {
      layers.push(null);
      continue;
    }
    let layer = 0;
    for (const j of index.candidates(i)) {
      const lj = layers[j]!;
      if (lj === null || lj < layer) continue;
      if (rulesOverlap(rules[j]!, r)) layer = lj + 1;
    }
    layers.push(layer);
    index.add(i);
  }
  return layers;
}
