/**
 * A typed model of the nftables objects secgroup writes. Callers build these
 * objects; only `render.ts` turns them into nft text or JSON. Every string in
 * the model is produced by our own code or passed through `token()`/`comment()`,
 * so no user-supplied text can reach nft syntax.
 */
import { AddressSet } from '../policy/address-set.js';

/** nft identifiers we generate: table, chain, set and map names. */
const NAME_RE = /^[a-zA-Z][a-zA-Z0-9_]{0,62}$/;
/**
 * comment text: ids are [A-Za-z0-9._:-], plus the punctuation our summaries use,
 * plus `~`, the mark of a cut comment (the renderer checks comments again, so a
 * cut comment must pass this test too).
 */
const COMMENT_RE = /^[A-Za-z0-9 ._:/,=()+#~-]*$/;
const CUT_MARK = '~';
export const COMMENT_MAX = 128;

export function assertName(name: string): string {
  if (!NAME_RE.test(name)) throw new Error(`internal: ${JSON.stringify(name)} is not a safe nft name`);
  return name;
}

/**
 * A comment, cut to nft's 128-character limit (ending in `~` when cut); throws on
 * any character outside the safe set. Idempotent: `comment(comment(t)) === comment(t)`.
 */
export function comment(text: string): string {
  if (!COMMENT_RE.test(text)) throw new Error(`internal: unsafe comment text ${JSON.stringify(text)}`);
  return text.length > COMMENT_MAX ? text.slice(0, COMMENT_MAX - CUT_MARK.length) + CUT_MARK : text;
}

export type Hook = 'input' | 'output';
export type Verdict = { kind: 'accept' } | { kind: 'drop' } | { kind: 'return' } | { kind: 'jump'; chain: string };

/** Something a packet is matched on. */
export type Selector =
  | { kind: 'meta'; key: 'iif' | 'oif' | 'nfproto' | 'l4proto' }
  | { kind: 'payload'; proto: 'ip' | 'ip6'; field: 'saddr' | 'daddr' }
  | { kind: 'payload'; proto: 'tcp' | 'udp' | 'th'; field: 'dport' }
  | { kind: 'payload'; proto: 'icmp' | 'icmpv6'; field: 'type' | 'code' }
  | { kind: 'ct'; key: 'state' | 'direction' }
  /** `ct mark and MASK`: the bits of the conntrack mark under `mask` (the flow mark's field, flow-mark.ts) */
  | { kind: 'ct'; key: 'mark'; mask: number };

/** A value in a match; `num` for numbers, `sym` for nft symbols we choose (tcp, established, lo, ...), `addr` for addresses/prefixes. */
export type Value =
  | { kind: 'num'; value: number }
  | { kind: 'range'; lo: number; hi: number }
  | { kind: 'sym'; value: string }
  | { kind: 'addr'; value: string }
  | { kind: 'str'; value: string }
  /** a named set of the table (`@name`): the match holds when the selector's value is an element */
  | { kind: 'setref'; name: string };

export type Expr =
  | { kind: 'match'; left: Selector; op: '==' | '!='; right: Value | Value[] }
  | { kind: 'vmap'; key: Selector[]; map: string }
  | { kind: 'counter' }
  /** `ct mark set ct mark and ~MASK or VALUE`: the bits under `mask` of the connection's mark set to `value` (within the mask), the others kept */
  | { kind: 'ct-mark-set'; mask: number; value: number }
  | { kind: 'verdict'; verdict: Verdict };

export interface Rule {
  exprs: Expr[];
  comment?: string;
}

export interface BaseChain {
  type: 'filter';
  hook: Hook;
  priority: number;
  policy: 'accept' | 'drop';
}

export interface Chain {
  name: string;
  base?: BaseChain;
  comment?: string;
  rules: Rule[];
}

/** One part of a concatenated key: a closed interval (lo == hi for a single value). */
export type KeyPart =
  | { kind: 'addr'; family: 4 | 6; lo: bigint; hi: bigint }
  | { kind: 'num'; lo: number; hi: number };

export interface MapElement {
  key: KeyPart[];
  /** absent in plain sets (`VerdictMap.set`), present in every verdict map element */
  verdict?: Verdict;
}

export type KeyType = 'ipv4_addr' | 'ipv6_addr' | 'inet_proto' | 'inet_service' | 'icmp_type' | 'icmp_code' | 'icmpv6_type' | 'icmpv6_code';

/**
 * A verdict map, or with `set` a plain set (elements without verdicts: the
 * members of a remote group, looked up with `ip saddr @name`). `interval`
 * maps take ranges and prefixes in their keys (a pipapo or rbtree set in the
 * kernel, whose lookup cost grows with the element count); the others are
 * hash maps of exact keys (constant cost).
 *
 * Why member sets carry no verdicts: when a transaction adds an element whose
 * verdict is a jump, nf_tables re-validates every jump of the table, every
 * element of every verdict map included (0.2 s per commit at 1M elements).
 * Adding to a plain set costs the same at any size.
 *
 * A remote group's member set holds its elements packed (`AddressSet`: 4 or
 * 16 bytes a member instead of ~160 as element objects); every reader of
 * `elements` handles both forms (`elementList` makes objects of either, for
 * the few places where the count is small or cost does not matter).
 */
export interface VerdictMap {
  name: string;
  /** a plain set: no verdicts (see above) */
  set?: true;
  keyType: KeyType[];
  interval: boolean;
  elements: MapElement[] | AddressSet;
  comment?: string;
}

/** The element of a member set holding address `x`. */
export function memberElement(family: 4 | 6, x: bigint): MapElement {
  return { key: [{ kind: 'addr', family, lo: x, hi: x }] };
}

/** A map's elements as objects (a packed member set's made on each call: not for big sets on hot paths). */
export function elementList(m: Pick<VerdictMap, 'elements'>): MapElement[] {
  const els = m.elements;
  if (!(els instanceof AddressSet)) return els;
  const out: MapElement[] = new Array<MapElement>(els.length);
  for (let i = 0; i < els.length; i++) out[i] = memberElement(els.family, els.at(i));
  return out;
}

/**
 * The set that holds the generation marker: one element (`1`) whose comment
 * names the ruleset in the kernel (`secgroup digest=... revision=...`). Every
 * transaction we send sets it, so `nft list set` (cost independent of the
 * map sizes, unlike any `list table`) tells which ruleset is in place.
 */
export const MARKER_SET = 'sg_generation';

export interface Table {
  family: 'inet';
  name: string;
  comment?: string;
  /** generation marker text (see MARKER_SET); set by the compiler */
  marker?: string;
  maps: VerdictMap[];
  chains: Chain[];
}

export const v = {
  num: (value: number): Value => ({ kind: 'num', value }),
  range: (lo: number, hi: number): Value => (lo === hi ? { kind: 'num', value: lo } : { kind: 'range', lo, hi }),
  sym: (value: string): Value => ({ kind: 'sym', value }),
  addr: (value: string): Value => ({ kind: 'addr', value }),
  str: (value: string): Value => ({ kind: 'str', value }),
  setref: (name: string): Value => ({ kind: 'setref', name: assertName(name) }),
};

export const sel = {
  iif: { kind: 'meta', key: 'iif' } as Selector,
  oif: { kind: 'meta', key: 'oif' } as Selector,
  nfproto: { kind: 'meta', key: 'nfproto' } as Selector,
  l4proto: { kind: 'meta', key: 'l4proto' } as Selector,
  ctState: { kind: 'ct', key: 'state' } as Selector,
  ctDirection: { kind: 'ct', key: 'direction' } as Selector,
  addr: (family: 4 | 6, field: 'saddr' | 'daddr'): Selector => ({ kind: 'payload', proto: family === 4 ? 'ip' : 'ip6', field }),
  dport: (proto: 'tcp' | 'udp' | 'th'): Selector => ({ kind: 'payload', proto, field: 'dport' }),
  icmp: (family: 4 | 6, field: 'type' | 'code'): Selector => ({ kind: 'payload', proto: family === 4 ? 'icmp' : 'icmpv6', field }),
};

export const ACCEPT: Verdict = { kind: 'accept' };
export const DROP: Verdict = { kind: 'drop' };
export const jump = (chain: string): Verdict => ({ kind: 'jump', chain: assertName(chain) });
