/**
 * A model interpreter for the compiled nft `Table`: traces one `Packet` through
 * the base chain of its hook, rule by rule, through jumps and verdict-map
 * lookups, the way the kernel would, and says which rule gave the verdict.
 * It is the kernel-free twin of the kernel differential test: it checks the
 * compiler's *logic* (layers, keys, guards, order) in milliseconds; the kernel
 * test checks that nft and the kernel read the rendered text the same way.
 *
 * Kernel behaviour modelled (and the assumptions, where the kernel test is the
 * judge):
 *  - base chains of the packet's hook (`input` for ingress, `output` for
 *    egress) run in priority order; `accept` ends one base chain (the next one
 *    still runs), `drop` ends everything; falling off a base chain applies
 *    its policy;
 *  - the expressions of a rule run left to right and stop at the first that
 *    does not match; `counter` counts the packets that reach it;
 *  - payload expressions carry the dependency nft adds for them in an `inet`
 *    table: `ip saddr` only on IPv4, `ip6 saddr` only on IPv6, `tcp dport`
 *    only on TCP, `icmp type` only on ICMP, `icmpv6 type` only on ICMPv6 -
 *    on any other packet the rule does not match (also inside a vmap key);
 *  - `th dport` has no dependency: it reads bytes 2-3 of whatever transport
 *    header there is (for ICMP, the checksum). The interpreter refuses to read
 *    it from a packet without ports: a compiled rule must guard it with
 *    `meta l4proto`;
 *  - `iif` exists at the input hook only, `oif` at the output hook only;
 *  - `ct direction` does not exist for an untracked packet;
 *  - `ct mark and MASK` is the packet's `ctMark` (0 when not given) under the
 *    mask; `ct mark set` changes the connection, not this packet's verdict;
 *  - `@set` on the right of a match: the packet's value is an element of
 *    that set of the table (a plain set, no verdicts);
 *  - a vmap lookup finds the element whose every key part contains the
 *    packet's value; no element: the rule does not match. Overlapping
 *    elements are an error (the kernel's interval sets refuse or pick one
 *    arbitrarily; the compiler promises disjoint keys);
 *  - `jump` runs the target chain and continues after the rule when it falls
 *    off the end or returns; at most 16 nested jumps (the kernel's limit).
 */
import { parsePrefix, type Family } from '../../src/policy/address.js';
import type { Packet } from '../../src/policy/packet.js';
import { AddressSet } from '../../src/policy/address-set.js';
import { elementList, type Chain, type Expr, type KeyPart, type KeyType, type MapElement, type Rule, type Selector, type Table, type Value, type Verdict, type VerdictMap } from '../../src/nft/model.js';

export class InterpreterError extends Error {
  override name = 'InterpreterError';
}

/** The rule that decided (rule null: the base chain's policy). */
export interface Decision {
  verdict: 'accept' | 'drop';
  chain: string;
  rule: number | null;
  comment?: string;
  /** chains entered, in order */
  path: string[];
}

type Scalar = { kind: 'num'; n: number } | { kind: 'addr'; family: Family; v: bigint } | { kind: 'sym'; s: string } | { kind: 'str'; s: string };

const L4PROTO_SYMBOLS: Record<string, number> = { icmp: 1, tcp: 6, udp: 17, icmpv6: 58, 'ipv6-icmp': 58, sctp: 132, gre: 47 };
const NFPROTO_SYMBOLS = new Set(['ipv4', 'ipv6']);
const CT_STATES = new Set(['new', 'established', 'related', 'invalid', 'untracked']);
const CT_DIRECTIONS = new Set(['original', 'reply']);
const MAX_JUMP_DEPTH = 16;

type Hook = 'input' | 'output';

function selectorName(s: Selector): string {
  switch (s.kind) {
    case 'meta':
      return `meta ${s.key}`;
    case 'payload':
      return `${s.proto} ${s.field}`;
    case 'ct':
      return s.key === 'mark' ? `ct mark and ${s.mask}` : `ct ${s.key}`;
  }
}

/** The packet's value for a selector, or undefined when the expression (or its implicit dependency) does not apply. */
function selectorValue(s: Selector, p: Packet, hook: Hook): Scalar | undefined {
  switch (s.kind) {
    case 'meta':
      switch (s.key) {
        case 'iif':
          return hook === 'input' ? { kind: 'str', s: p.iface ?? 'eth0' } : undefined;
        case 'oif':
          return hook === 'output' ? { kind: 'str', s: p.iface ?? 'eth0' } : undefined;
        case 'nfproto':
          return { kind: 'sym', s: p.family === 4 ? 'ipv4' : 'ipv6' };
        case 'l4proto':
          return { kind: 'num', n: p.protocol };
      }
      break;
    case 'payload': {
      if (s.field === 'saddr' || s.field === 'daddr') {
        if ((s.proto === 'ip' && p.family !== 4) || (s.proto === 'ip6' && p.family !== 6)) return undefined;
        const text = s.field === 'saddr' ? p.src : p.dst;
        const parsed = parsePrefix(text);
        if (!parsed.ok || parsed.range.lo !== parsed.range.hi) throw new InterpreterError(`packet address ${JSON.stringify(text)} is not an address`);
        return { kind: 'addr', family: parsed.range.family, v: parsed.range.lo };
      }
      if (s.field === 'dport') {
        const hasPorts = p.protocol === 6 || p.protocol === 17 || p.protocol === 132;
        if (s.proto === 'th') {
          if (!hasPorts) throw new InterpreterError(`"th dport" read from a protocol ${p.protocol} packet: the rule must be guarded by meta l4proto`);
        } else if ((s.proto === 'tcp' && p.protocol !== 6) || (s.proto === 'udp' && p.protocol !== 17)) {
          return undefined;
        }
        if (p.dport === undefined) throw new InterpreterError('malformed packet: a tcp/udp/sctp packet without dport');
        return { kind: 'num', n: p.dport };
      }
      // icmp / icmpv6 type and code
      if ((s.proto === 'icmp' && (p.family !== 4 || p.protocol !== 1)) || (s.proto === 'icmpv6' && (p.family !== 6 || p.protocol !== 58))) return undefined;
      const n = s.field === 'type' ? p.icmpType : p.icmpCode;
      if (n === undefined) throw new InterpreterError(`malformed packet: an ICMP packet without ${s.field}`);
      return { kind: 'num', n };
    }
    case 'ct': {
      const state = p.ct ?? 'new';
      if (s.key === 'state') return { kind: 'sym', s: state };
      if (s.key === 'mark') return state === 'untracked' ? undefined : { kind: 'num', n: ((p.ctMark ?? 0) & s.mask) >>> 0 };
      return state === 'untracked' ? undefined : { kind: 'sym', s: p.ctDirection ?? 'original' };
    }
  }
  throw new InterpreterError(`unknown selector ${JSON.stringify(s)}`);
}

/** Does one literal of a match's right-hand side contain the packet's value? */
function valueContains(sel: Selector, value: Value, x: Scalar): boolean {
  const what = selectorName(sel);
  switch (value.kind) {
    case 'num':
    case 'range': {
      if (x.kind !== 'num') throw new InterpreterError(`${what}: a number compared with a ${x.kind}`);
      const lo = value.kind === 'num' ? value.value : value.lo;
      const hi = value.kind === 'num' ? value.value : value.hi;
      return lo <= x.n && x.n <= hi;
    }
    case 'sym': {
      if (sel.kind === 'meta' && sel.key === 'l4proto') {
        const n = L4PROTO_SYMBOLS[value.value];
        if (n === undefined) throw new InterpreterError(`${what}: unknown protocol symbol ${JSON.stringify(value.value)}`);
        return x.kind === 'num' && x.n === n;
      }
      const known = sel.kind === 'meta' && sel.key === 'nfproto' ? NFPROTO_SYMBOLS : sel.kind === 'ct' ? (sel.key === 'state' ? CT_STATES : CT_DIRECTIONS) : null;
      if (!known || !known.has(value.value)) throw new InterpreterError(`${what}: symbol ${JSON.stringify(value.value)} does not belong to this selector`);
      return x.kind === 'sym' && x.s === value.value;
    }
    case 'addr': {
      if (x.kind !== 'addr') throw new InterpreterError(`${what}: an address compared with a ${x.kind}`);
      const r = parsePrefix(value.value, { allowRange: true });
      if (!r.ok) throw new InterpreterError(`${what}: bad address literal ${JSON.stringify(value.value)}`);
      if (r.range.family !== x.family) throw new InterpreterError(`${what}: IPv${r.range.family} literal compared with an IPv${x.family} address`);
      return r.range.lo <= x.v && x.v <= r.range.hi;
    }
    case 'str':
      if (x.kind !== 'str') throw new InterpreterError(`${what}: a string compared with a ${x.kind}`);
      return x.s === value.value;
    case 'setref':
      throw new InterpreterError(`${what}: @${value.name} inside a list of values`);
  }
}

/** Which key type a selector produces, for checking vmap keys against the map's declared type. */
function keyTypeOf(s: Selector): KeyType | null {
  if (s.kind === 'meta') return s.key === 'l4proto' ? 'inet_proto' : null;
  if (s.kind !== 'payload') return null;
  if (s.field === 'saddr' || s.field === 'daddr') return s.proto === 'ip' ? 'ipv4_addr' : 'ipv6_addr';
  if (s.field === 'dport') return 'inet_service';
  if (s.proto === 'icmp') return s.field === 'type' ? 'icmp_type' : 'icmp_code';
  if (s.proto === 'icmpv6') return s.field === 'type' ? 'icmpv6_type' : 'icmpv6_code';
  return null;
}

const KEY_MAX: Record<KeyType, number> = {
  ipv4_addr: 0,
  ipv6_addr: 0,
  inet_proto: 255,
  inet_service: 65535,
  icmp_type: 255,
  icmp_code: 255,
  icmpv6_type: 255,
  icmpv6_code: 255,
};

function partContains(part: KeyPart, x: Scalar): boolean {
  if (part.kind === 'addr') return x.kind === 'addr' && x.family === part.family && part.lo <= x.v && x.v <= part.hi;
  return x.kind === 'num' && part.lo <= x.n && x.n <= part.hi;
}

function partsIntersect(a: KeyPart, b: KeyPart): boolean {
  if (a.kind === 'addr' && b.kind === 'addr') return a.family === b.family && a.lo <= b.hi && b.lo <= a.hi;
  if (a.kind === 'num' && b.kind === 'num') return a.lo <= b.hi && b.lo <= a.hi;
  return false;
}

/** Pairs of elements of one map whose keys intersect (sweep over the first key part; at most `limit` pairs). */
export function overlappingElements(m: VerdictMap, limit = 10): [MapElement, MapElement][] {
  const key0 = (e: MapElement) => {
    const k = e.key[0]!;
    return k.kind === 'addr' ? [k.lo, k.hi] : [BigInt(k.lo), BigInt(k.hi)];
  };
  const sorted = elementList(m).sort((a, b) => {
    const x = key0(a)[0]!;
    const y = key0(b)[0]!;
    return x < y ? -1 : x > y ? 1 : 0;
  });
  const out: [MapElement, MapElement][] = [];
  let active: MapElement[] = [];
  for (const e of sorted) {
    const lo = key0(e)[0]!;
    active = active.filter((a) => key0(a)[1]! >= lo);
    for (const a of active) {
      if (a.key.every((part, i) => partsIntersect(part, e.key[i]!))) {
        out.push([a, e]);
        if (out.length >= limit) return out;
      }
    }
    active.push(e);
  }
  return out;
}

/**
 * Structural problems of a table (empty list: none): duplicate names, jumps to
 * missing or base chains, jump loops, vmaps whose key does not fit their map,
 * elements out of their type's range, overlapping elements in one map.
 */
export function checkTable(table: Table): string[] {
  const problems: string[] = [];
  const chains = new Map<string, Chain>();
  for (const c of table.chains) {
    if (chains.has(c.name)) problems.push(`chain ${c.name} defined twice`);
    chains.set(c.name, c);
  }
  const maps = new Map<string, VerdictMap>();
  for (const m of table.maps) {
    if (maps.has(m.name)) problems.push(`map ${m.name} defined twice`);
    maps.set(m.name, m);
  }
  const checkJump = (vd: Verdict, where: string) => {
    if (vd.kind !== 'jump') return;
    const target = chains.get(vd.chain);
    if (!target) problems.push(`${where}: jump to missing chain ${vd.chain}`);
    else if (target.base) problems.push(`${where}: jump to base chain ${vd.chain}`);
  };
  for (const m of table.maps) {
    const elements = elementList(m);
    elements.forEach((el, i) => {
      const where = `map ${m.name} element ${i}`;
      if (el.key.length !== m.keyType.length) problems.push(`${where}: key has ${el.key.length} parts, the map ${m.keyType.length}`);
      el.key.forEach((part, j) => {
        const type = m.keyType[j];
        if (!type) return;
        if (type === 'ipv4_addr' || type === 'ipv6_addr') {
          const family = type === 'ipv4_addr' ? 4 : 6;
          const max = (1n << BigInt(family === 4 ? 32 : 128)) - 1n;
          if (part.kind !== 'addr' || part.family !== family) problems.push(`${where}: part ${j} is not an IPv${family} address`);
          else if (part.lo < 0n || part.hi > max || part.lo > part.hi) problems.push(`${where}: part ${j} is not an interval of addresses`);
        } else if (part.kind !== 'num') problems.push(`${where}: part ${j} of type ${type} is an address`);
        else if (!Number.isInteger(part.lo) || !Number.isInteger(part.hi) || part.lo < 0 || part.hi > KEY_MAX[type] || part.lo > part.hi) {
          problems.push(`${where}: part ${j} ${part.lo}-${part.hi} is outside ${type} (0-${KEY_MAX[type]})`);
        }
      });
      if (m.set && el.verdict) problems.push(`${where}: an element of a plain set has a verdict`);
      if (!m.set && !el.verdict) problems.push(`${where}: an element of a verdict map has no verdict`);
      if (el.verdict) checkJump(el.verdict, where);
    });
    for (const [a, b] of overlappingElements(m)) problems.push(`map ${m.name}: elements ${elements.indexOf(a)} and ${elements.indexOf(b)} overlap`);
  }
  for (const c of table.chains) {
    c.rules.forEach((r, i) => {
      const where = `chain ${c.name} rule ${i}`;
      r.exprs.forEach((e, j) => {
        if (e.kind === 'verdict') {
          checkJump(e.verdict, where);
          if (j !== r.exprs.length - 1) problems.push(`${where}: expressions after the verdict`);
        }
        if (e.kind === 'match' && !Array.isArray(e.right) && e.right.kind === 'setref') {
          const m = maps.get(e.right.name);
          if (!m) problems.push(`${where}: set @${e.right.name} does not exist`);
          else if (!m.set) problems.push(`${where}: @${e.right.name} is a verdict map, not a set`);
          else if (m.keyType.length !== 1 || keyTypeOf(e.left) !== m.keyType[0]) problems.push(`${where}: ${selectorName(e.left)} does not fit set ${m.name} (${m.keyType.join(' . ')})`);
        }
        if (e.kind === 'vmap') {
          const m = maps.get(e.map);
          if (!m) problems.push(`${where}: vmap @${e.map} does not exist`);
          else if (m.set) problems.push(`${where}: vmap @${e.map} is a plain set`);
          else {
            const types = e.key.map(keyTypeOf);
            if (types.length !== m.keyType.length || types.some((t, k) => t !== m.keyType[k])) {
              problems.push(`${where}: key ${types.join(' . ')} does not fit map ${m.name} (${m.keyType.join(' . ')})`);
            }
          }
          if (j !== r.exprs.length - 1) problems.push(`${where}: expressions after the vmap`);
        }
      });
    });
  }
  // jump loops (the kernel refuses them when loading)
  const state = new Map<string, 'open' | 'done'>();
  const targets = (c: Chain): string[] => {
    const out: string[] = [];
    for (const r of c.rules) {
      for (const e of r.exprs) {
        if (e.kind === 'verdict' && e.verdict.kind === 'jump') out.push(e.verdict.chain);
        if (e.kind === 'vmap') for (const el of elementList(maps.get(e.map) ?? { elements: [] })) if (el.verdict?.kind === 'jump') out.push(el.verdict.chain);
      }
    }
    return [...new Set(out)];
  };
  const visit = (name: string): void => {
    const st = state.get(name);
    if (st === 'done') return;
    if (st === 'open') {
      problems.push(`jump loop through chain ${name}`);
      return;
    }
    state.set(name, 'open');
    const c = chains.get(name);
    if (c) for (const t of targets(c)) visit(t);
    state.set(name, 'done');
  };
  for (const c of table.chains) visit(c.name);
  return problems;
}

export class NftInterpreter {
  private readonly chains = new Map<string, Chain>();
  private readonly maps = new Map<string, VerdictMap>();
  /** packets counted per `chain#rule` */
  readonly counters = new Map<string, number>();

  constructor(readonly table: Table) {
    for (const c of table.chains) this.chains.set(c.name, c);
    for (const m of table.maps) this.maps.set(m.name, m);
  }

  counter(chain: string, rule: number): number {
    return this.counters.get(`${chain}#${rule}`) ?? 0;
  }

  /** Traces one packet; throws InterpreterError when the table reads something it must not. */
  run(packet: Packet): Decision {
    const hook: Hook = packet.direction === 'ingress' ? 'input' : 'output';
    const bases = this.table.chains.filter((c) => c.base?.hook === hook).sort((a, b) => a.base!.priority - b.base!.priority);
    if (!bases.length) return { verdict: 'accept', chain: '(no base chain)', rule: null, path: [] };
    let last: Decision | undefined;
    for (const base of bases) {
      const path: string[] = [];
      const d = this.runChain(base, packet, hook, path, 0) ?? { verdict: base.base!.policy, chain: base.name, rule: null, path };
      if (d.verdict === 'drop') return d;
      last = d;
    }
    return last!;
  }

  private runChain(chain: Chain, p: Packet, hook: Hook, path: string[], depth: number): Decision | null {
    if (depth > MAX_JUMP_DEPTH) throw new InterpreterError(`more than ${MAX_JUMP_DEPTH} nested jumps at chain ${chain.name}`);
    path.push(chain.name);
    for (const [i, rule] of chain.rules.entries()) {
      const verdict = this.runRule(chain, i, rule, p, hook);
      if (!verdict) continue;
      switch (verdict.kind) {
        case 'accept':
        case 'drop':
          return { verdict: verdict.kind, chain: chain.name, rule: i, ...(rule.comment !== undefined ? { comment: rule.comment } : {}), path };
        case 'return':
          return null;
        case 'jump': {
          const target = this.chains.get(verdict.chain);
          if (!target) throw new InterpreterError(`jump to missing chain ${verdict.chain}`);
          const d = this.runChain(target, p, hook, path, depth + 1);
          if (d) return d;
          break;
        }
      }
    }
    return null;
  }

  /** The verdict a rule gives, or null when it does not match (or matches without a verdict). */
  private runRule(chain: Chain, index: number, rule: Rule, p: Packet, hook: Hook): Verdict | null {
    for (const e of rule.exprs) {
      const r = this.runExpr(chain, index, e, p, hook);
      if (r === false) return null;
      if (r !== true) return r;
    }
    return null;
  }

  private runExpr(chain: Chain, index: number, e: Expr, p: Packet, hook: Hook): boolean | Verdict {
    switch (e.kind) {
      case 'counter': {
        const k = `${chain.name}#${index}`;
        this.counters.set(k, (this.counters.get(k) ?? 0) + 1);
        return true;
      }
      case 'ct-mark-set':
        // marks the connection for its later packets; this packet's verdict does not depend on it
        return true;
      case 'verdict':
        return e.verdict;
      case 'match': {
        const x = selectorValue(e.left, p, hook);
        if (x === undefined) return false;
        if (!Array.isArray(e.right) && e.right.kind === 'setref') {
          const m = this.maps.get(e.right.name);
          if (!m?.set) throw new InterpreterError(`@${e.right.name} is not a set of the table`);
          const els = m.elements;
          const hit = els instanceof AddressSet ? x.kind === 'addr' && x.family === els.family && els.has(x.v) : els.some((el) => el.key.length === 1 && partContains(el.key[0]!, x));
          return e.op === '==' ? hit : !hit;
        }
        const values = Array.isArray(e.right) ? e.right : [e.right];
        const hit = values.some((val) => valueContains(e.left, val, x));
        return e.op === '==' ? hit : !hit;
      }
      case 'vmap': {
        const m = this.maps.get(e.map);
        if (!m) throw new InterpreterError(`vmap @${e.map} does not exist`);
        if (e.key.length !== m.keyType.length) throw new InterpreterError(`vmap @${e.map}: ${e.key.length} key parts, the map has ${m.keyType.length}`);
        const key: Scalar[] = [];
        for (const s of e.key) {
          const x = selectorValue(s, p, hook);
          if (x === undefined) return false;
          key.push(x);
        }
        const hits = elementList(m).filter((el) => el.key.length === key.length && el.key.every((part, i) => partContains(part, key[i]!)));
        if (hits.length > 1) throw new InterpreterError(`vmap @${e.map}: ${hits.length} elements match one packet (keys must be disjoint)`);
        if (m.set) throw new InterpreterError(`vmap @${e.map} is a plain set`);
        return hits[0]?.verdict ?? false;
      }
    }
  }
}
