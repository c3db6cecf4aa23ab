/**
 * Compiler: policy -> typed nft model (pure).
 *
 * Layout of table `inet <name>`:
 *  - base chains `input` / `output` (policy drop): platform rules, then
 *    conntrack handling, then a jump per family to `ingress_v4` etc., then a
 *    counted default drop;
 *  - one small chain per user rule (`r_<hash>`) holding its counter and verdict,
 *    so hits can be read back per rule id;
 *  - the family chains dispatch with interval verdict maps keyed by
 *    `peer . l4proto . dport` (tcp/udp/sctp), `peer . icmp type . icmp code`
 *    and `peer . l4proto` (everything else), whose elements jump to the rule
 *    chains. A packet costs one lookup per map, however many rules, peers and
 *    ports there are.
 *
 * First match with overlapping rules: each rule gets a *layer*, one more than
 * the highest layer of any earlier rule it overlaps. Rules of one layer never
 * overlap, so each layer's maps hold disjoint keys, and a packet whose first
 * matching rule is R cannot match anything in an earlier layer (an earlier
 * match would be an earlier overlapping rule, which sits in a lower layer).
 * Lookups run layer by layer, so the first hit is the first-match rule. The
 * number of layers depends on how rules overlap, not on how many there are.
 *
 * Within a layer and shape, elements are split by key signature: wildcard
 * parts (any address, any port) leave the key, exact keys go to hash maps
 * (constant lookup cost, fast element updates) and only keys with ranges or
 * prefixes need interval maps, whose kernel lookup cost grows with their size.
 * Rules that one earlier rule fully covers never decide and get no elements.
 *
 * Rules on a remote group are looked up differently: the group's members go
 * in a plain hash set per family (`g4_<hash>`, no verdicts), tested before a
 * small map keyed by the rest of the key (`... ip saddr @g4_x meta l4proto .
 * th dport vmap @in4_l0_ports_g<hash>_ee`), one such lookup per layer, group
 * and shape (the Neutron ipset / Felix layout). A member joining or leaving
 * is then one element of a set that no verdict depends on, which the kernel
 * adds in constant time; a jump element in a big verdict map makes it
 * re-validate every jump of the table on commit (see model.ts). For the same
 * reason, what a group rule shadows and is shadowed by does not depend on the
 * members (membership.ts relies on it): a group rule covers only rules on the
 * same group, and only a rule matching every address covers it.
 */
import { createHash } from 'node:crypto';
import { elementId } from './diff.js';
import { FAMILY_MAX, type AddrRange, type Family } from '../policy/address.js';
import { describeRule, normalizeRules, type NormalizedRule } from '../policy/normalize.js';
import { DHCP_PORTS, ND_ICMPV6_TYPES, type PlatformOptions, DEFAULT_PLATFORM } from '../policy/platform.js';
import type { Policy } from '../policy/schema.js';
import {
  ACCEPT,
  DROP,
  assertName,
  comment,
  jump,
  sel,
  v,
  type Chain,
  type Expr,
  type KeyPart,
  type KeyType,
  type MapElement,
  type Rule,
  type Selector,
  type Table,
  type Verdict,
  type VerdictMap,
} from './model.js';

export const DEFAULT_TABLE = 'secgroup';
export const PRIORITY_FILTER = 0;

export interface CompileOptions {
  table?: string;
  platform?: PlatformOptions;
}

export interface RuleChainInfo {
  chain: string;
  groupId: string;
  ruleId: string;
  direction: 'ingress' | 'egress';
  action: 'allow' | 'deny';
  family: Family;
  /** lookup layer of the rule; null when it matches nothing (e.g. an empty remote group) */
  layer: number | null;
  elements: number;
}

/** How the rules of one direction and family were laid out (kept for membership fast paths, see membership.ts). */
export interface RuleLayout {
  rules: NormalizedRule[];
  layers: (number | null)[];
  shadowed: boolean[];
}

export interface Compiled {
  table: Table;
  /** per `${direction}${family}` (e.g. "ingress4") */
  layout: Map<string, RuleLayout>;
  /** per user rule, in match order */
  rules: RuleChainInfo[];
  /** sha256 (hex, 16 chars) of the table content without its comment: equal digests = identical rulesets */
  digest: string;
  stats: { rules: number; elements: number; layers: Record<string, number> };
}

const PORT_PROTOS = [6, 17, 132];
export type Shape = 'ports' | 'icmp' | 'proto';

/** Name of the verdict map of one lookup layer, shape and key signature, e.g. `in4_l0_ports_eee`. */
export function mapName(direction: 'ingress' | 'egress', family: Family, layer: number, shape: Shape, sig: string): string {
  return `${direction === 'ingress' ? 'in' : 'out'}${family}_l${layer}_${shape}_${sig}`;
}

/** Name of the member set of a remote group, per family, e.g. `g4_3f2a...` (group ids may hold characters nft names cannot). */
const groupHashes = new Map<string, string>();

/** 12 hex digits of sha256(group id), memoized (bounded). */
function groupHash(groupId: string): string {
  let h = groupHashes.get(groupId);
  if (h === undefined) {
    h = createHash('sha256').update(groupId).digest('hex').slice(0, 12);
    if (groupHashes.size >= 100_000) groupHashes.clear();
    groupHashes.set(groupId, h);
  }
  return h;
}

export function memberSetName(family: Family, groupId: string): string {
  return `g${family}_${groupHash(groupId)}`;
}

/** Name of the map looked up after a member set (`g<hash>` names the group). */
export function groupMapName(direction: 'ingress' | 'egress', family: Family, layer: number, shape: Shape, groupId: string, sig: string): string {
  return `${direction === 'ingress' ? 'in' : 'out'}${family}_l${layer}_${shape}_g${groupHash(groupId)}_${sig}`;
}

/** Names already computed (an agent compiles the same rules over and over); bounded. */
const chainNames = new Map<string, string>();

export function ruleChainName(groupId: string, ruleId: string): string {
  const key = `${groupId}\0${ruleId}`;
  let name = chainNames.get(key);
  if (name === undefined) {
    name = 'r_' + createHash('sha256').update(key).digest('hex').slice(0, 16);
    if (chainNames.size >= 100_000) chainNames.clear();
    chainNames.set(key, name);
  }
  return name;
}

function icmpProto(f: Family): number {
  return f === 4 ? 1 : 58;
}

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

function rangesIntersect(a: readonly AddrRange[], b: readonly AddrRange[]): boolean {
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
  private readonly byProtocol = new Map<
    number,
    { all: AddrBuckets; anyPort: AddrBuckets; coarse: Map<number, AddrBuckets>; fineNarrow: Map<number, AddrBuckets>; coarseWide: Map<number, AddrBuckets> }
  >();
  private readonly stamp: Int32Array;

  constructor(private readonly rules: readonly NormalizedRule[]) {
    this.stamp = new Int32Array(rules.length).fill(-1);
  }

  add(i: number): void {
    const r = this.rules[i]!;
    const key = r.protocol ?? -1;
    let g = this.byProtocol.get(key);
    if (!g) this.byProtocol.set(key, (g = { all: new AddrBuckets(), anyPort: new AddrBuckets(), coarse: new Map(), fineNarrow: new Map(), coarseWide: new Map() }));
    const addr = addrBucketsOf(r);
    g.all.add(i, addr);
    if (!r.ports) {
      g.anyPort.add(i, addr);
      return;
    }
    const coarse = bucketsOf(r.ports, 8);
    for (const b of coarse) bucket(g.coarse, b).add(i, addr);
    const fine = narrowBuckets(r.ports);
    if (fine) for (const b of fine) bucket(g.fineNarrow, b).add(i, addr);
    else for (const b of coarse) bucket(g.coarseWide, b).add(i, addr);
  }

  /** Indexes of earlier rules that may overlap rule `i` (each at most once). */
  *candidates(i: number): Generator<number> {
    const r = this.rules[i]!;
    const groups = r.protocol === null ? [...this.byProtocol.values()] : [this.byProtocol.get(-1), this.byProtocol.get(r.protocol)];
    const addr = addrBucketsOf(r);
    const fine = r.ports ? narrowBuckets(r.ports) : null;
    const coarse = r.ports ? bucketsOf(r.ports, 8) : null;
    for (const g of groups) {
      if (!g) continue;
      const sources: AddrBuckets[] = [];
      if (!coarse) sources.push(g.all);
      else {
        sources.push(g.anyPort);
        const lookups: [Map<number, AddrBuckets>, Set<number>][] = fine
          ? [
              [g.fineNarrow, fine],
              [g.coarseWide, coarse],
            ]
          : [[g.coarse, coarse]];
        for (const [index, buckets] of lookups) {
          for (const b of buckets) {
            const ab = index.get(b);
            if (ab) sources.push(ab);
          }
        }
      }
      for (const ab of sources) {
        for (const j of ab.get(addr)) {
          if (this.stamp[j] === i) continue;
          this.stamp[j] = i;
          yield j;
        }
      }
    }
  }
}

/** Rules of one port bucket by address bucket; `wide`: rules whose peers span too many buckets. */
class AddrBuckets {
  private readonly wide: number[] = [];
  private readonly byAddr = new Map<bigint, number[]>();

  /** `addr` null: wide. */
  add(i: number, addr: readonly bigint[] | null): void {
    if (!addr) this.wide.push(i);
    else for (const a of addr) push(this.byAddr, a, i);
  }

  /** Rules that may share an address with peers in `addr` (null: wide, every rule). */
  *get(addr: readonly bigint[] | null): Generator<number> {
    yield* this.wide;
    if (!addr) {
      for (const list of this.byAddr.values()) yield* list;
      return;
    }
    for (const a of addr) {
      const list = this.byAddr.get(a);
      if (list) yield* list;
    }
  }
}

function bucket(m: Map<number, AddrBuckets>, k: number): AddrBuckets {
  let b = m.get(k);
  if (!b) m.set(k, (b = new AddrBuckets()));
  return b;
}

/** A rule whose peers span at most this many address buckets is found only through them. */
const NARROW_ADDR = 16n;

/** The address buckets (/24, /64) of a rule's peers, or null when they span more than NARROW_ADDR. */
function addrBucketsOf(r: NormalizedRule): bigint[] | null {
  const shift = r.family === 4 ? 8n : 64n;
  let n = 0n;
  for (const p of r.peers) {
    n += (p.hi >> shift) - (p.lo >> shift) + 1n;
    if (n > NARROW_ADDR) return null;
  }
  const out = new Set<bigint>();
  for (const p of r.peers) for (let k = p.lo >> shift; k <= p.hi >> shift; k++) out.add(k);
  return [...out];
}

function push(m: Map<number | bigint, number[]>, k: number | bigint, v: number): void {
  const list = m.get(k);
  if (list) list.push(v);
  else m.set(k, [v]);
}

/** A rule spanning at most this many 16-port buckets is indexed by them too. */
const NARROW_FINE = 16;

/** The 16-port buckets of narrow ports, or null when they span more than NARROW_FINE. */
function narrowBuckets(ports: readonly [number, number][]): Set<number> | null {
  let n = 0;
  for (const [a, b] of ports) n += (b >> 4) - (a >> 4) + 1;
  return n > NARROW_FINE ? null : bucketsOf(ports, 4);
}

function bucketsOf(ports: readonly [number, number][], shift: number): Set<number> {
  const out = new Set<number>();
  for (const [a, b] of ports) for (let k = a >> shift; k <= b >> shift; k++) out.add(k);
  return out;
}

function rangesCover(outer: readonly AddrRange[], inner: readonly AddrRange[]): boolean {
  let j = 0;
  for (const r of inner) {
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
  return r.peers.length === 1 && r.peers[0]!.lo === 0n && r.peers[0]!.hi === FAMILY_MAX[r.family];
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
        const q = rules[j]!;
        // cover independent of group members: a group rule covers only rules on its group, only an any-address rule covers a group rule
        const qGroup = q.remote.kind === 'group' ? q.remote.id : null;
        const rGroup = r.remote.kind === 'group' ? r.remote.id : null;
        const allowed = qGroup !== null ? qGroup === rGroup : rGroup === null || matchesEveryAddress(q);
        if (allowed && q.peers.length > 0 && ruleCovers(q, r)) {
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

export function shapesOf(r: NormalizedRule): Shape[] {
  if (r.protocol === null) return ['ports', 'icmp', 'proto'];
  if (PORT_PROTOS.includes(r.protocol)) return ['ports'];
  if (r.protocol === icmpProto(r.family)) return ['icmp'];
  return ['proto'];
}

function num(lo: number, hi: number): KeyPart {
  return { kind: 'num', lo, hi };
}

/** The key parts after the peer address: protocol . port, ICMP type . code, or protocol. */
function tailsOf(r: NormalizedRule, shape: Shape): KeyPart[][] {
  const protoPart = r.protocol === null ? num(0, 255) : num(r.protocol, r.protocol);
  if (shape === 'ports') return (r.ports ?? [[0, 65535]]).map(([a, b]) => [protoPart, num(a, b)]);
  if (shape === 'icmp') {
    const t = r.icmpType === null ? num(0, 255) : num(r.icmpType, r.icmpType);
    const c = r.icmpCode === null ? num(0, 255) : num(r.icmpCode, r.icmpCode);
    return [[t, c]];
  }
  return [[protoPart]];
}

/** Elements of a group rule's map (after the member set): the key without the peer address. */
export function tailElementsOf(r: NormalizedRule, shape: Shape, chain: string): MapElement[] {
  const verdict = jump(chain);
  return tailsOf(r, shape).map((key) => ({ key, verdict }));
}

export function elementsOf(r: NormalizedRule, shape: Shape, chain: string): MapElement[] {
  const out: MapElement[] = [];
  const verdict = jump(chain);
  const tails = tailsOf(r, shape);
  for (const p of r.peers) {
    const addr: KeyPart = { kind: 'addr', family: p.family, lo: p.lo, hi: p.hi };
    for (const t of tails) out.push({ key: [addr, ...t], verdict });
  }
  return out;
}

/** Key types of a group rule's map (after the member set). */
export function tailKeyTypes(family: Family, shape: Shape): KeyType[] {
  return keyTypes(family, shape).slice(1);
}

export function keyTypes(family: Family, shape: Shape): KeyType[] {
  const addr: KeyType = family === 4 ? 'ipv4_addr' : 'ipv6_addr';
  if (shape === 'ports') return [addr, 'inet_proto', 'inet_service'];
  if (shape === 'icmp') return family === 4 ? [addr, 'icmp_type', 'icmp_code'] : [addr, 'icmpv6_type', 'icmpv6_code'];
  return [addr, 'inet_proto'];
}

/** Port ranges at most this wide become single ports, so that their elements fit a hash map. */
const EXPAND_PORTS_MAX = 4;

type PartKind = 'e' | 'r' | 'x';

function partKind(k: KeyPart, type: KeyType): PartKind {
  if (k.kind === 'addr') return k.lo === k.hi ? 'e' : k.lo === 0n && k.hi === FAMILY_MAX[k.family] ? 'x' : 'r';
  if (k.lo === k.hi) return 'e';
  return k.lo === 0 && k.hi === (type === 'inet_service' ? 65535 : 255) ? 'x' : 'r';
}

/** Splits elements whose small port range would force an interval map into one element per port (the port is the last key part). */
export function expandSmallPortRanges(elements: MapElement[], shape: Shape): MapElement[] {
  if (shape !== 'ports') return elements;
  const out: MapElement[] = [];
  for (const el of elements) {
    const last = el.key.length - 1;
    const port = el.key[last]!;
    if (port.kind === 'num' && port.lo !== port.hi && port.hi - port.lo < EXPAND_PORTS_MAX) {
      for (let p = port.lo; p <= port.hi; p++) out.push({ key: [...el.key.slice(0, last), num(p, p)], verdict: el.verdict! });
    } else out.push(el);
  }
  return out;
}

/**
 * Splits the elements of one layer and shape by key signature: parts that are
 * wildcards ('x') leave the key, exact parts ('e') and ranges ('r') stay, and
 * only signatures with a range need an interval map. Elements of one layer are
 * disjoint, so the sub-maps can be looked up in any order.
 */
export function splitBySignature(elements: MapElement[], types: readonly KeyType[]): Map<string, MapElement[]> {
  const out = new Map<string, MapElement[]>();
  for (const el of elements) {
    let sig = '';
    for (let i = 0; i < el.key.length; i++) sig += partKind(el.key[i]!, types[i]!);
    let list = out.get(sig);
    if (!list) out.set(sig, (list = []));
    // no wildcard part: the element as it is (most elements of big maps; saves an allocation each)
    list.push(sig.includes('x') ? { key: el.key.filter((_, i) => sig[i] !== 'x'), verdict: el.verdict } : el);
  }
  return out;
}

/**
 * The exprs of one lookup: the protocol guard, then the map keyed by the
 * parts `sig` keeps. With `memberSet`, the peer is tested against the set
 * and `sig` covers the key after the peer.
 */
function lookupExprs(family: Family, shape: Shape, field: 'saddr' | 'daddr', map: string | null, sig: string, memberSet?: string): Expr[] {
  const peer = sel.addr(family, field);
  let guard: Expr;
  let parts: Selector[];
  if (shape === 'ports') {
    guard = { kind: 'match', left: sel.l4proto, op: '==', right: [v.sym('tcp'), v.sym('udp'), v.sym('sctp')] };
    parts = [peer, sel.l4proto, sel.dport('th')];
  } else if (shape === 'icmp') {
    guard = { kind: 'match', left: sel.l4proto, op: '==', right: v.num(family === 4 ? 1 : 58) };
    parts = [peer, sel.icmp(family, 'type'), sel.icmp(family, 'code')];
  } else {
    // tcp/udp/sctp/ICMP packets never first-match here: every all-protocol rule of this layer also has
    // ports and ICMP elements, looked up before; skipping them saves a lookup per layer
    guard = { kind: 'match', left: sel.l4proto, op: '!=', right: [v.num(6), v.num(17), v.num(132), v.num(family === 4 ? 1 : 58)] };
    parts = [peer, sel.l4proto];
  }
  const head: Expr[] = [guard];
  if (memberSet !== undefined) {
    head.push({ kind: 'match', left: peer, op: '==', right: v.setref(memberSet) });
    parts = parts.slice(1);
  }
  const key = parts.filter((_, i) => sig[i] !== 'x');
  if (map === null) return head;
  return [...head, { kind: 'vmap', key, map }];
}

/**
 * One rule's verdict when the elements of a layer (or of a layer's group)
 * are that rule matching every protocol, port and ICMP type: one element per
 * shape, wildcards only, the same verdict. The three shapes' protocol guards
 * split all packets between them, so one rule without a guard (`jump r_x`,
 * `ip saddr @g4_x jump r_x`) decides the same as the three lookups.
 */
function matchesEverything(shapes: ReadonlyMap<Shape, MapElement[]> | undefined, types: (shape: Shape) => KeyType[]): Verdict | null {
  if (!shapes) return null;
  let verdict: Verdict | null = null;
  for (const shape of ['ports', 'icmp', 'proto'] as const) {
    const els = shapes.get(shape);
    if (els?.length !== 1) return null;
    const el = els[0]!;
    const t = types(shape);
    if (!el.verdict || el.verdict.kind !== 'jump' || !el.key.every((k, i) => partKind(k, t[i]!) === 'x')) return null;
    if (verdict && verdict.kind === 'jump' && verdict.chain !== el.verdict.chain) return null;
    verdict = el.verdict;
  }
  return verdict;
}

const accept = (exprs: Expr[], text: string): Rule => ({ exprs: [...exprs, { kind: 'verdict', verdict: ACCEPT }], comment: text });

function platformRules(p: PlatformOptions, hook: 'input' | 'output'): Rule[] {
  const out: Rule[] = [];
  const ingress = hook === 'input';
  if (p.loopback) out.push(accept([{ kind: 'match', left: ingress ? sel.iif : sel.oif, op: '==', right: v.str('lo') }], 'platform: loopback'));
  if (p.icmpv6Nd) {
    out.push(
      accept(
        [{ kind: 'match', left: sel.icmp(6, 'type'), op: '==', right: ND_ICMPV6_TYPES.map((t) => v.num(t)) }],
        'platform: IPv6 neighbour discovery and MLD',
      ),
    );
  }
  if (p.dhcp) {
    for (const family of [4, 6] as const) {
      const port = ingress ? DHCP_PORTS[family].in : DHCP_PORTS[family].out;
      out.push(
        accept(
          [
            { kind: 'match', left: sel.nfproto, op: '==', right: v.sym(family === 4 ? 'ipv4' : 'ipv6') },
            { kind: 'match', left: sel.dport('udp'), op: '==', right: v.num(port) },
          ],
          `platform: DHCP${family === 6 ? 'v6' : ''} client`,
        ),
      );
    }
  }
  if (!ingress && p.controller) {
    const c = p.controller;
    for (const family of [4, 6] as const) {
      const addrs = c.addresses.filter((a) => (family === 4 ? !a.includes(':') : a.includes(':')));
      if (!addrs.length) continue;
      out.push(
        accept(
          [
            { kind: 'match', left: sel.addr(family, 'daddr'), op: '==', right: addrs.map((a) => v.addr(a)) },
            { kind: 'match', left: sel.dport('tcp'), op: '==', right: v.num(c.port) },
          ],
          'platform: controller channel',
        ),
      );
    }
    if (c.dns) {
      out.push(
        accept(
          [
            { kind: 'match', left: sel.l4proto, op: '==', right: [v.sym('tcp'), v.sym('udp')] },
            { kind: 'match', left: sel.dport('th'), op: '==', right: v.num(53) },
          ],
          'platform: DNS for the controller name',
        ),
      );
    }
  }
  for (const f of ingress ? p.failsafeIngress : p.failsafeEgress) {
    out.push(
      accept(
        [
          { kind: 'match', left: sel.l4proto, op: '==', right: v.num(f.protocol) },
          { kind: 'match', left: sel.dport('th'), op: '==', right: v.range(f.from, f.to) },
        ],
        `platform: failsafe ${ingress ? 'ingress' : 'egress'}`,
      ),
    );
  }
  return out;
}

function statefulRules(hook: 'input' | 'output'): Rule[] {
  const invalid: Rule = {
    exprs: [{ kind: 'match', left: sel.ctState, op: '==', right: v.sym('invalid') }, { kind: 'counter' }, { kind: 'verdict', verdict: DROP }],
    comment: 'stateful: invalid packets',
  };
  if (hook === 'output') {
    return [invalid, accept([{ kind: 'match', left: sel.ctState, op: '==', right: [v.sym('established'), v.sym('related')] }], 'stateful: established and related')];
  }
  return [
    invalid,
    accept(
      [
        { kind: 'match', left: sel.ctDirection, op: '==', right: v.sym('reply') },
        { kind: 'match', left: sel.ctState, op: '==', right: v.sym('established') },
      ],
      'stateful: replies to connections this host opened',
    ),
    accept([{ kind: 'match', left: sel.ctState, op: '==', right: v.sym('related') }], 'stateful: related (ICMP errors, expectations)'),
  ];
}

/**
 * Hash of the table without its comment: the skeleton as JSON, each map's
 * elements as short ids (JSON.stringify of 400k elements took ~1.7 s).
 */
function digestOf(table: Table): string {
  const h = createHash('sha256');
  h.update(JSON.stringify({ ...table, comment: undefined, maps: table.maps.map((m) => ({ ...m, elements: m.elements.length })) }));
  for (const m of table.maps) {
    h.update(`\n${m.name}:`);
    if (m.set) h.update(memberBytes(m));
    else h.update(m.elements.map(elementId).join(','));
  }
  return h.digest('hex').slice(0, 16);
}

/** The addresses of a member set as bytes (4 or 16 per member; no strings: a 1000-member set is hashed on every compile). */
function memberBytes(m: VerdictMap): Uint8Array {
  const v6 = m.keyType[0] === 'ipv6_addr';
  const out = new DataView(new ArrayBuffer(m.elements.length * (v6 ? 16 : 4)));
  m.elements.forEach((el, i) => {
    const k = el.key[0]!;
    if (k.kind !== 'addr' || k.lo !== k.hi) throw new Error(`internal: member set ${m.name} holds a range`);
    if (v6) {
      out.setBigUint64(i * 16, k.lo >> 64n);
      out.setBigUint64(i * 16 + 8, BigInt.asUintN(64, k.lo));
    } else out.setUint32(i * 4, Number(k.lo));
  });
  return new Uint8Array(out.buffer);
}

/** Compiles a valid policy (see parsePolicy) into the nft model of our table. Pure; throws only on internal errors. */
export function compilePolicy(policy: Policy, opts: CompileOptions = {}): Compiled {
  const tableName = assertName(opts.table ?? DEFAULT_TABLE);
  const platform = opts.platform ?? DEFAULT_PLATFORM;
  const all = normalizeRules(policy);
  const maps: VerdictMap[] = [];
  const ruleChains: Chain[] = [];
  const infos: RuleChainInfo[] = [];
  const familyChains: Chain[] = [];
  const layerStats: Record<string, number> = {};
  const layout = new Map<string, RuleLayout>();
  const seen = new Set<string>();
  // member sets, per `${family}|${groupId}`, in the order first used
  const memberSets = new Map<string, VerdictMap>();

  for (const r of all) {
    const chain = ruleChainName(r.groupId, r.ruleId);
    if (seen.has(chain)) throw new Error(`internal: rule chain name collision for ${r.groupId}/${r.ruleId}`);
    seen.add(chain);
    ruleChains.push({
      name: chain,
      comment: comment(`${r.groupId} ${r.ruleId}: ${describeRule(r)}`),
      rules: [{ exprs: [{ kind: 'counter' }, { kind: 'verdict', verdict: r.action === 'allow' ? ACCEPT : DROP }], comment: comment(`${r.groupId}/${r.ruleId}`) }],
    });
  }

  const jumps: Record<'input' | 'output', Rule[]> = { input: [], output: [] };
  for (const direction of ['ingress', 'egress'] as const) {
    for (const family of [4, 6] as const) {
      const rules = all.filter((r) => r.direction === direction && r.family === family);
      // shadowed rules match nothing first: leave them out of the maps (their chains stay, with zero hits)
      const shadowed = findShadowed(rules);
      const layers = assignLayers(rules.map((r, i) => (shadowed[i] ? { ...r, peers: [] } : r)));
      layout.set(`${direction}${family}`, { rules, layers, shadowed });
      const byLayer = new Map<number, Map<Shape, MapElement[]>>();
      // group rules: per layer, per group, per shape: tail elements
      const groupsByLayer = new Map<number, Map<string, Map<Shape, MapElement[]>>>();
      rules.forEach((r, i) => {
        const layer = layers[i] ?? null;
        const chain = ruleChainName(r.groupId, r.ruleId);
        let count = 0;
        if (layer !== null && r.remote.kind === 'group') {
          let groups = groupsByLayer.get(layer);
          if (!groups) groupsByLayer.set(layer, (groups = new Map()));
          let shapes = groups.get(r.remote.id);
          if (!shapes) groups.set(r.remote.id, (shapes = new Map()));
          for (const shape of shapesOf(r)) {
            const els = tailElementsOf(r, shape, chain);
            count += els.length;
            let list = shapes.get(shape);
            if (!list) shapes.set(shape, (list = []));
            list.push(...els);
          }
          if (!memberSets.has(`${family}|${r.remote.id}`)) {
            memberSets.set(`${family}|${r.remote.id}`, {
              name: memberSetName(family, r.remote.id),
              set: true,
              keyType: [family === 4 ? 'ipv4_addr' : 'ipv6_addr'],
              interval: false,
              comment: comment(`members of remote group ${r.remote.id}`),
              elements: r.peers.map((p) => ({ key: [p.text === undefined ? { kind: 'addr', family, lo: p.lo, hi: p.hi } : { kind: 'addr', family, lo: p.lo, hi: p.hi, text: p.text }] })),
            });
          }
        } else if (layer !== null) {
          let shapes = byLayer.get(layer);
          if (!shapes) byLayer.set(layer, (shapes = new Map()));
          for (const shape of shapesOf(r)) {
            const els = elementsOf(r, shape, chain);
            count += els.length;
            let list = shapes.get(shape);
            if (!list) shapes.set(shape, (list = []));
            for (const e of els) list.push(e);
          }
        }
        infos.push({ chain, groupId: r.groupId, ruleId: r.ruleId, direction, action: r.action, family, layer, elements: count });
      });
      const chainName = `${direction}_v${family}`;
      const chainRules: Rule[] = [];
      const layerNums = [...new Set([...byLayer.keys(), ...groupsByLayer.keys()])].sort((a, b) => a - b);
      layerStats[chainName] = layerNums.length;
      const field = direction === 'ingress' ? 'saddr' : 'daddr';
      for (const layer of layerNums) {
        const everything = matchesEverything(byLayer.get(layer), (shape) => keyTypes(family, shape));
        if (everything) chainRules.push({ exprs: [{ kind: 'verdict', verdict: everything }] });
        for (const shape of ['ports', 'icmp', 'proto'] as const) {
          const elements = everything ? undefined : byLayer.get(layer)?.get(shape);
          if (!elements?.length) continue;
          const types = keyTypes(family, shape);
          for (const [sig, els] of [...splitBySignature(expandSmallPortRanges(elements, shape), types)].sort(([a], [b]) => (a < b ? -1 : 1))) {
            if (!sig.includes('e') && !sig.includes('r')) {
              // a key of wildcards only: one element, matching every packet that reaches this lookup
              chainRules.push({ exprs: [...lookupExprs(family, shape, field, null, sig), { kind: 'verdict', verdict: els[0]!.verdict! }] });
              continue;
            }
            const name = mapName(direction, family, layer, shape, sig);
            maps.push({ name, keyType: types.filter((_, i) => sig[i] !== 'x'), interval: sig.includes('r'), elements: els });
            chainRules.push({ exprs: lookupExprs(family, shape, field, name, sig) });
          }
        }
        // the same layer's group rules (disjoint from everything else in the layer: any order)
        const groups = groupsByLayer.get(layer);
        for (const groupId of [...(groups?.keys() ?? [])].sort()) {
          const setName = memberSetName(family, groupId);
          const peer: Expr = { kind: 'match', left: sel.addr(family, field), op: '==', right: v.setref(setName) };
          const everything = matchesEverything(groups!.get(groupId), (shape) => tailKeyTypes(family, shape));
          if (everything) chainRules.push({ exprs: [peer, { kind: 'verdict', verdict: everything }] });
          for (const shape of ['ports', 'icmp', 'proto'] as const) {
            const elements = everything ? undefined : groups!.get(groupId)!.get(shape);
            if (!elements?.length) continue;
            const types = tailKeyTypes(family, shape);
            for (const [sig, els] of [...splitBySignature(expandSmallPortRanges(elements, shape), types)].sort(([a], [b]) => (a < b ? -1 : 1))) {
              if (!sig.includes('e') && !sig.includes('r')) {
                chainRules.push({ exprs: [...lookupExprs(family, shape, field, null, sig, setName), { kind: 'verdict', verdict: els[0]!.verdict! }] });
                continue;
              }
              const name = groupMapName(direction, family, layer, shape, groupId, sig);
              maps.push({ name, keyType: types.filter((_, i) => sig[i] !== 'x'), interval: sig.includes('r'), elements: els });
              chainRules.push({ exprs: lookupExprs(family, shape, field, name, sig, setName) });
            }
          }
        }
      }
      if (chainRules.length) {
        familyChains.push({ name: chainName, comment: comment(`${direction} IPv${family} rules, first match, ${layerNums.length} lookup layer(s)`), rules: chainRules });
        jumps[direction === 'ingress' ? 'input' : 'output'].push({
          exprs: [
            { kind: 'match', left: sel.nfproto, op: '==', right: v.sym(family === 4 ? 'ipv4' : 'ipv6') },
            { kind: 'verdict', verdict: jump(chainName) },
          ],
        });
      }
    }
  }

  const base = (hook: 'input' | 'output'): Chain => ({
    name: hook,
    base: { type: 'filter', hook, priority: PRIORITY_FILTER, policy: 'drop' },
    rules: [
      ...platformRules(platform, hook),
      ...statefulRules(hook),
      ...jumps[hook],
      { exprs: [{ kind: 'counter' }, { kind: 'verdict', verdict: DROP }], comment: 'default: no rule matched' },
    ],
  });

  const table: Table = { family: 'inet', name: tableName, maps: [...memberSets.values(), ...maps], chains: [base('input'), base('output'), ...familyChains, ...ruleChains] };
  const digest = digestOf(table);
  table.comment = comment(`secgroup digest=${digest} revision=${policy.revision} instance=${policy.instance.id}`);
  table.marker = table.comment;
  return {
    table,
    layout,
    rules: infos,
    digest,
    stats: { rules: all.length, elements: table.maps.reduce((n, m) => n + m.elements.length, 0), layers: layerStats },
  };
}
