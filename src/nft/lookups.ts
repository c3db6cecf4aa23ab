/**
 * Map and set emission (pure): how the rules of one lookup layer become
 * verdict-map elements (`elementsOf`, `tailElementsOf` for group rules, whose
 * peer is tested against the group's member set instead), how those elements
 * are split by key signature into hash and interval maps
 * (`splitBySignature`), and the chain rules that look them up
 * (`emitLookups`, the one place that turns a layer's elements into maps and
 * lookup rules, for plain and for group lookups alike).
 *
 * Key signature: one letter per key part, 'e' exact, 'r' range or prefix,
 * 'x' wildcard. Wildcard parts leave the key; a key of wildcards only needs
 * no map (one rule with the verdict); only signatures with an 'r' need an
 * interval map. The elements passed to emitLookups must be disjoint (one
 * layer's, see layering.ts), so its maps can be looked up in any order.
 */
import { FAMILY_MAX, type Family } from '../policy/address.js';
import { peerRanges } from '../policy/address-set.js';
import type { NormalizedRule } from '../policy/normalize.js';
import { jump, sel, v, type Expr, type KeyPart, type KeyType, type MapElement, type Rule, type Selector, type Verdict, type VerdictMap } from './model.js';
import type { Shape } from './names.js';

const PORT_PROTOS = [6, 17, 132];

/** Lookup shapes in the order they are looked up within a layer. */
export const SHAPES = ['ports', 'icmp', 'proto'] as const;

function icmpProto(f: Family): number {
  return f === 4 ? 1 : 58;
}

export function shapesOf(r: NormalizedRule): Shape[] {
  if (r.protocol === null) return [...SHAPES];
  if (PORT_PROTOS.includes(r.protocol)) return ['ports'];
  if (r.protocol === icmpProto(r.family)) return ['icmp'];
  return ['proto'];
}

function num(lo: number, hi: number): KeyPart {
  return { kind: 'num', lo, hi };
}

/** Key parts that recur in nearly every element (key parts are never changed once built: shared). */
const ANY_BYTE = num(0, 255);
const ANY_PORT = num(0, 65535);
const PROTO_PARTS = new Map(PORT_PROTOS.map((p) => [p, num(p, p)]));

/** The key parts after the peer address: protocol . port, ICMP type . code, or protocol. */
function tailsOf(r: NormalizedRule, shape: Shape): KeyPart[][] {
  const protoPart = r.protocol === null ? ANY_BYTE : (PROTO_PARTS.get(r.protocol) ?? num(r.protocol, r.protocol));
  if (shape === 'ports') return r.ports ? r.ports.map(([a, b]) => [protoPart, num(a, b)]) : [[protoPart, ANY_PORT]];
  if (shape === 'icmp') {
    const t = r.icmpType === null ? ANY_BYTE : num(r.icmpType, r.icmpType);
    const c = r.icmpCode === null ? ANY_BYTE : num(r.icmpCode, r.icmpCode);
    return [[t, c]];
  }
  return [[protoPart]];
}

/** Elements of a group rule's map (after the member set): the key without the peer address. */
export function tailElementsOf(r: NormalizedRule, shape: Shape, chain: string): MapElement[] {
  const verdict = jump(chain);
  return tailsOf(r, shape).map((key) => ({ key, verdict }));
}

/** Elements of a rule's map with the peer in the key (a rule not on a remote group: its peers are intervals). */
export function elementsOf(r: NormalizedRule, shape: Shape, chain: string): MapElement[] {
  const out: MapElement[] = [];
  const verdict = jump(chain);
  const tails = tailsOf(r, shape);
  for (const p of peerRanges(r.peers)) {
    const addr: KeyPart = { kind: 'addr', family: p.family, lo: p.lo, hi: p.hi };
    for (const t of tails) out.push({ key: t.length === 2 ? [addr, t[0]!, t[1]!] : [addr, ...t], verdict });
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
  for (const shape of SHAPES) {
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

/** Where emitLookups puts its output, and what it needs to know of the lookups. */
export interface LookupTarget {
  family: Family;
  /** saddr for ingress, daddr for egress */
  field: 'saddr' | 'daddr';
  /** maps, appended in emission order */
  maps: VerdictMap[];
  /** rules of the family chain, appended in lookup order */
  rules: Rule[];
}

/**
 * Emits the lookups of one layer's elements (per shape; a plain layer or one
 * remote group of a layer): the maps, and the rules that look them up, in
 * SHAPES order and then by signature. With `memberSet` the elements are tail
 * elements (no peer address) and every rule first tests the peer against the
 * set. `name(shape, sig)` names each map (names.ts). When the elements are one
 * rule matching everything, emits one rule jumping to it instead.
 */
export function emitLookups(
  out: LookupTarget,
  shapes: ReadonlyMap<Shape, MapElement[]> | undefined,
  name: (shape: Shape, sig: string) => string,
  memberSet?: string,
): void {
  const { family, field } = out;
  const typesOf = (shape: Shape): KeyType[] => (memberSet === undefined ? keyTypes(family, shape) : tailKeyTypes(family, shape));
  const everything = matchesEverything(shapes, typesOf);
  if (everything) {
    const head: Expr[] = memberSet === undefined ? [] : [{ kind: 'match', left: sel.addr(family, field), op: '==', right: v.setref(memberSet) }];
    out.rules.push({ exprs: [...head, { kind: 'verdict', verdict: everything }] });
    return;
  }
  for (const shape of SHAPES) {
    const elements = shapes?.get(shape);
    if (!elements?.length) continue;
    const types = typesOf(shape);
    for (const [sig, els] of [...splitBySignature(expandSmallPortRanges(elements, shape), types)].sort(([a], [b]) => (a < b ? -1 : 1))) {
      if (!sig.includes('e') && !sig.includes('r')) {
        // a key of wildcards only: one element, matching every packet that reaches this lookup
        out.rules.push({ exprs: [...lookupExprs(family, shape, field, null, sig, memberSet), { kind: 'verdict', verdict: els[0]!.verdict! }] });
        continue;
      }
      const map = name(shape, sig);
      out.maps.push({ name: map, keyType: types.filter((_, i) => sig[i] !== 'x'), interval: sig.includes('r'), elements: els });
      out.rules.push({ exprs: lookupExprs(family, shape, field, map, sig, memberSet) });
    }
  }
}
