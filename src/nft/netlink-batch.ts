/**
 * A full apply of our table (replaced, or reloaded in place over the one
 * applied before) as the nf_tables netlink batch itself, byte for byte the
 * batch `nft -f` sends for the script render.ts writes (nft 1.0.6), for
 * native/secgroup-nftload to send. Why: for a
 * rule-heavy table over half of nft's time is its parse and evaluation of
 * our text (10k rules: ~0.33 s of user time against ~0.25 s in the kernel),
 * and it cannot start before the whole script is written. Encoding the batch
 * here costs about what rendering the text did.
 *
 * What nft's evaluation adds is done here for the model's vocabulary (model.ts):
 * the implicit protocol dependencies (`meta nfproto` before an `ip` field,
 * `meta l4proto` before a `tcp`/`udp`/`icmp` field, unless the rule already
 * matched them), registers of concatenations (one 32-bit register per 4
 * bytes), anonymous sets for `{ a, b }`, interval elements (rbtree: a start
 * element and an end element one past each range, nft's leading `0 [end]`;
 * concatenations: key and key end), set and element user data (what
 * `nft list` reads back: key byte order, comments) and counter objects with
 * the counts carried. The objects go in nft's order (table, chains, counters,
 * sets each with its elements, then rules, each after the anonymous sets it
 * uses), so the kernel holds the same objects with the same handles. A model
 * this encoder does not know (`UnsupportedError`) is applied by `nft -f` as
 * before; test/kernel/netlink-batch.test.ts checks the batch against nft's
 * own (`nft --debug=mnl`) and the resulting table's listing against the one
 * nft makes.
 *
 * Size: one encoder of one wire format, as render.ts is of the text: the
 * writer, the lowering of the model's expressions, sets and elements, and
 * the two batches (replace, reload in place) share their helpers.
 */
import type { RuleCounters } from './counters.js';
import { counterDeclarations, ruleCounterNames, tableCounterNames } from './counters.js';
import { MARKER_SET, assertName, type Chain, type Expr, type KeyPart, type KeyType, type MapElement, type Rule, type Selector, type Table, type Value, type Verdict, type VerdictMap, v } from './model.js';
import { AddressSet } from '../policy/address-set.js';
import { parsePrefix } from '../policy/address.js';

/** The table uses something this encoder does not produce: apply it with nft. */
export class UnsupportedError extends Error {
  override name = 'UnsupportedError';
}

// netlink and nf_tables constants (linux/netlink.h, linux/netfilter/nfnetlink.h, nf_tables.h)
const NLM_F_REQUEST = 0x1;
const NLM_F_CREATE = 0x400;
const NLM_F_APPEND = 0x800;
const NLA_F_NESTED = 0x8000;
const NFNL_MSG_BATCH_BEGIN = 0x10;
const NFNL_MSG_BATCH_END = 0x11;
const NFNL_SUBSYS_NFTABLES = 10;
const NFPROTO_INET = 1;
const MSG = { NEWTABLE: 0, DELTABLE: 2, NEWCHAIN: 3, DELCHAIN: 5, NEWRULE: 6, DELRULE: 8, NEWSET: 9, DELSET: 11, NEWSETELEM: 12, NEWOBJ: 18, DELOBJ: 20 } as const;
const NFT_SET_ANONYMOUS = 0x1;
const NFT_SET_CONSTANT = 0x2;
const NFT_SET_INTERVAL = 0x4;
const NFT_SET_MAP = 0x8;
const NFT_SET_CONCAT = 0x80;
const NFT_SET_ELEM_INTERVAL_END = 0x1;
const NFT_DATA_VERDICT = 0xffffff00;
const NFT_OBJECT_COUNTER = 1;
const REG_VERDICT = 0;
const REG_1 = 1;
const REG32_00 = 8;
const VERDICT_CODE: Record<Verdict['kind'], number> = { drop: 0, accept: 1, jump: -3, return: -5 };
const HOOKNUM = { input: 1, output: 3 } as const;
const META_KEY = { iif: 4, oif: 5, nfproto: 15, l4proto: 16 } as const;
const CT_KEY = { state: 0, direction: 1, mark: 3 } as const;
const PAYLOAD_BASE = { network: 1, transport: 2 } as const;
const CMP = { '==': 0, '!=': 1 } as const;
const CMP_LTE = 3;
const CMP_GTE = 5;
const NFPROTO = { ipv4: 2, ipv6: 10 } as const;
const L4 = { icmp: 1, tcp: 6, udp: 17, icmpv6: 58, sctp: 132 } as const;
const CT_STATE = { invalid: 1, established: 2, related: 4, new: 8, untracked: 64 } as const;
const CT_DIR = { original: 0, reply: 1 } as const;

/** nft's data types (datatype.h) of our key types, and their length in a key. */
const KEY_TYPES: Record<KeyType, { id: number; len: number }> = {
  ipv4_addr: { id: 7, len: 4 },
  ipv6_addr: { id: 8, len: 16 },
  inet_proto: { id: 12, len: 1 },
  inet_service: { id: 13, len: 2 },
  icmp_type: { id: 14, len: 1 },
  icmp_code: { id: 32, len: 1 },
  icmpv6_type: { id: 29, len: 1 },
  icmpv6_code: { id: 33, len: 1 },
};

/** nft's byte order of a named set's key type (KEYBYTEORDER: 0 none, 1 host, 2 network); a concatenation's is 0. */
const KEY_BYTEORDER: Record<KeyType, number> = {
  ipv4_addr: 2,
  ipv6_addr: 2,
  inet_proto: 0,
  inet_service: 2,
  icmp_type: 2,
  icmp_code: 2,
  icmpv6_type: 2,
  icmpv6_code: 2,
};

/** A batch is handed over in pieces of about this many bytes (whole messages; a few write calls per MB). */
const PIECE = 256 * 1024;

/**
 * Writes netlink messages and attributes into one buffer, which `flush()`
 * hands over and then reuses: a piece is valid until the writer writes again
 * (the consumer writes it out before it asks for the next), so a batch of any
 * size costs one buffer of about PIECE bytes.
 */
class Writer {
  // room for a piece and the message that completes it (a NEWSETELEM message is at most ~64 KB)
  private buf = Buffer.allocUnsafe(PIECE + 2 * 65536);
  private at = 0;
  private msgAt = -1;
  private readonly nests: number[] = [];
  seq = 0;

  /** Room for `n` more bytes: a message bigger than the buffer grows it (moved whole). */
  private room(n: number): void {
    if (this.at + n <= this.buf.length) return;
    const next = Buffer.allocUnsafe(Math.max(this.buf.length * 2, this.at + n));
    this.buf.copy(next, 0, 0, this.at);
    this.buf = next;
  }

  /** Is a piece ready to hand over (whole messages only)? */
  full(): boolean {
    return this.msgAt < 0 && this.at >= PIECE;
  }

  /** The messages written since the last flush; valid until the next write. */
  flush(): Buffer {
    const piece = this.buf.subarray(0, this.at);
    this.at = 0;
    return piece;
  }

  begin(type: number, flags: number, family: number, resId = 0): void {
    this.room(20);
    this.msgAt = this.at;
    const b = this.buf;
    b.writeUInt32LE(0, this.at);
    b.writeUInt16LE(type, this.at + 4);
    b.writeUInt16LE(flags, this.at + 6);
    b.writeUInt32LE(this.seq++, this.at + 8);
    b.writeUInt32LE(0, this.at + 12);
    b[this.at + 16] = family;
    b[this.at + 17] = 0;
    b.writeUInt16BE(resId, this.at + 18);
    this.at += 20;
  }

  end(): void {
    this.buf.writeUInt32LE(this.at - this.msgAt, this.msgAt);
    this.msgAt = -1;
  }

  private header(type: number, len: number): void {
    this.room(4 + len + 3);
    this.buf.writeUInt16LE(4 + len, this.at);
    this.buf.writeUInt16LE(type, this.at + 2);
    this.at += 4;
  }

  private pad(): void {
    while (this.at & 3) this.buf[this.at++] = 0;
  }

  u32(type: number, v: number): void {
    this.header(type, 4);
    this.buf.writeUInt32BE(v >>> 0, this.at);
    this.at += 4;
  }

  u64(type: number, v: number): void {
    this.header(type, 8);
    this.buf.writeBigUInt64BE(BigInt(v), this.at);
    this.at += 8;
  }

  /** a string with its terminating NUL (`withNul`: false for the few attributes nft sends without) */
  str(type: number, s: string, withNul = true): void {
    const n = Buffer.byteLength(s, 'latin1');
    this.header(type, n + (withNul ? 1 : 0));
    this.buf.write(s, this.at, 'latin1');
    this.at += n;
    if (withNul) this.buf[this.at++] = 0;
    this.pad();
  }

  bytes(type: number, data: Uint8Array): void {
    this.header(type, data.length);
    this.buf.set(data, this.at);
    this.at += data.length;
    this.pad();
  }

  nest(type: number): void {
    this.room(4);
    this.nests.push(this.at);
    // 16 bits, as libmnl stores it: a list element numbered past 32767 wraps (the kernel reads list elements by position)
    this.buf.writeUInt16LE((type | NLA_F_NESTED) & 0xffff, this.at + 2);
    this.at += 4;
  }

  /** Where the next byte goes (for `rewind`). */
  position(): number {
    return this.at;
  }

  /** Drops what was written since `position()` returned `at` (within the current message, its nests closed). */
  rewind(at: number): void {
    this.at = at;
  }

  /** bytes written in the innermost open nest so far */
  nestSize(): number {
    return this.at - this.nests[this.nests.length - 1]!;
  }

  close(): void {
    const at = this.nests.pop()!;
    this.buf.writeUInt16LE(this.at - at, at);
  }

  /** `nest(type) { value(1, <the len bytes of source's item i>) }`: a value written in place (no closure or copy per item) */
  valueFrom(type: number, len: number, source: { writeBytes(i: number, buf: Buffer, at: number): unknown }, i: number): void {
    this.nest(type);
    this.header(1, len);
    source.writeBytes(i, this.buf, this.at);
    this.at += len;
    this.pad();
    this.close();
  }

  /** `nest(type) { value(1, data) }`: nft's NFTA_DATA_VALUE */
  value(type: number, data: Uint8Array): void {
    this.nest(type);
    this.bytes(1, data);
    this.close();
  }
}

/** nft's user data: type, length, value records (libnftnl udata). */
function udata(records: [number, Uint8Array][]): Uint8Array {
  const out: number[] = [];
  for (const [t, v] of records) {
    if (v.length > 255) throw new UnsupportedError('user data record over 255 bytes');
    out.push(t, v.length, ...v);
  }
  return Uint8Array.from(out);
}

const strz = (s: string): Uint8Array => {
  const b = Buffer.alloc(Buffer.byteLength(s, 'latin1') + 1);
  b.write(s, 0, 'latin1');
  return b;
};
const u32le = (n: number): Uint8Array => {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(n >>> 0);
  return b;
};
const be = (n: number, len: number): Uint8Array => {
  const b = Buffer.alloc(len);
  for (let i = len - 1; i >= 0; i--, n = Math.floor(n / 256)) b[i] = n & 0xff;
  return b;
};
const bigBe = (n: bigint, len: number): Uint8Array => {
  const b = Buffer.alloc(len);
  for (let i = len - 1; i >= 0; i--, n >>= 8n) b[i] = Number(n & 0xffn);
  return b;
};
const commentData = (text: string): Uint8Array => udata([[0, strz(text)]]);

// ---- expressions as nft lowers them ----

type Lowered =
  | { e: 'meta'; key: number; dreg: number }
  | { e: 'cmp'; sreg: number; op: number; data: Uint8Array }
  | { e: 'payload'; dreg: number; base: number; offset: number; len: number }
  | { e: 'ct'; key: number; dreg: number }
  | { e: 'ct-set'; key: number; sreg: number }
  /** `op`: nft sends NFTA_BITWISE_OP (boolean) for the mask of a `ct mark set` only */
  | { e: 'bitwise'; sreg: number; dreg: number; len: number; mask: Uint8Array; xor: Uint8Array; op?: true }
  | { e: 'byteorder'; reg: number; len: number; size: number }
  | { e: 'lookup'; sreg: number; dreg?: number; set: string; id: number; inv?: boolean }
  | { e: 'counter' }
  | { e: 'objref'; name: string }
  | { e: 'immediate'; verdict: Verdict };

/** An anonymous set a rule uses (`{ a, b }`), sent before the rule. */
interface AnonSet {
  id: number;
  keyType: number;
  keyLen: number;
  typeof: Uint8Array;
  keys: Uint8Array[];
}

/** How nft loads a selector: its expression, the length of its value, its key type and the typeof record of a set keyed by it. */
interface Load {
  exprs: (dreg: number) => Lowered[];
  len: number;
  type: number;
  typeofRec: Uint8Array;
  /** the dependency nft puts before it: [nfproto, l4proto] */
  nfproto?: number;
  l4proto?: number;
  /** the value of a number or symbol, as the register holds it */
  encode: (v: Value) => Uint8Array;
  /** host byte order (KEYBYTEORDER 1) rather than network order (2) */
  host: boolean;
}

const typeofRecord = (exprType: number, inner: [number, Uint8Array][]): Uint8Array => udata([[0, u32le(exprType)], [1, udata(inner)]]);

function numValue(v: Value, names: Record<string, number>, len: number, host: boolean): Uint8Array {
  let n: number;
  if (v.kind === 'num') n = v.value;
  else if (v.kind === 'sym' && v.value in names) n = names[v.value]!;
  else throw new UnsupportedError(`value ${JSON.stringify(v)}`);
  if (!host) return be(n, len);
  const b = Buffer.alloc(len);
  for (let i = 0; i < len; i++, n = Math.floor(n / 256)) b[i] = n & 0xff;
  return b;
}

function load(s: Selector): Load {
  switch (s.kind) {
    case 'meta': {
      const key = META_KEY[s.key];
      if (s.key === 'iif' || s.key === 'oif') {
        return {
          exprs: (dreg) => [{ e: 'meta', key, dreg }],
          len: 4,
          type: 20,
          typeofRec: typeofRecord(9, [[0, u32le(key)]]),
          // `iif "lo"`: the loopback device is interface 1 in every network namespace
          encode: (v) => {
            if (v.kind !== 'str' || v.value !== 'lo') throw new UnsupportedError(`interface ${JSON.stringify(v)}`);
            return u32le(1);
          },
          host: true,
        };
      }
      const names = s.key === 'nfproto' ? NFPROTO : (L4 as Record<string, number>);
      return { exprs: (dreg) => [{ e: 'meta', key, dreg }], len: 1, type: s.key === 'nfproto' ? 2 : 12, typeofRec: typeofRecord(9, [[0, u32le(key)]]), encode: (v) => numValue(v, names, 1, true), host: true };
    }
    case 'ct': {
      if (s.key === 'mark') throw new UnsupportedError('ct mark in a set');
      if (s.key === 'state') {
        return { exprs: (dreg) => [{ e: 'ct', key: CT_KEY.state, dreg }], len: 4, type: 26, typeofRec: typeofRecord(12, [[0, u32le(0)], [1, u32le(0xffffffff)]]), encode: (v) => numValue(v, CT_STATE, 4, true), host: true };
      }
      return { exprs: (dreg) => [{ e: 'ct', key: CT_KEY.direction, dreg }], len: 1, type: 27, typeofRec: typeofRecord(12, [[0, u32le(1)], [1, u32le(0xffffffff)]]), encode: (v) => numValue(v, CT_DIR, 1, true), host: true };
    }
    case 'payload': {
      if (s.proto === 'ip' || s.proto === 'ip6') {
        const v4 = s.proto === 'ip';
        const len = v4 ? 4 : 16;
        const offset = v4 ? (s.field === 'saddr' ? 12 : 16) : s.field === 'saddr' ? 8 : 24;
        return {
          exprs: (dreg) => [{ e: 'payload', dreg, base: PAYLOAD_BASE.network, offset, len }],
          len,
          type: v4 ? 7 : 8,
          typeofRec: typeofRecord(7, [[0, u32le(v4 ? 12 : 13)], [1, u32le(s.field === 'saddr' ? (v4 ? 11 : 8) : v4 ? 12 : 9)]]),
          nfproto: v4 ? NFPROTO.ipv4 : NFPROTO.ipv6,
          encode: () => {
            throw new UnsupportedError('address value');
          },
          host: false,
        };
      }
      if (s.field === 'dport') {
        const l4 = s.proto === 'th' ? undefined : L4[s.proto];
        return {
          exprs: (dreg) => [{ e: 'payload', dreg, base: PAYLOAD_BASE.transport, offset: 2, len: 2 }],
          len: 2,
          type: 13,
          typeofRec: typeofRecord(7, [[0, u32le(s.proto === 'tcp' ? 10 : s.proto === 'udp' ? 6 : 11)], [1, u32le(2)]]),
          ...(l4 === undefined ? {} : { l4proto: l4 }),
          encode: (v) => numValue(v, {}, 2, false),
          host: false,
        };
      }
      // icmp / icmpv6 type and code: one byte at 0 and 1 of the transport header
      const v6 = s.proto === 'icmpv6';
      return {
        exprs: (dreg) => [{ e: 'payload', dreg, base: PAYLOAD_BASE.transport, offset: s.field === 'type' ? 0 : 1, len: 1 }],
        len: 1,
        type: v6 ? (s.field === 'type' ? 29 : 33) : s.field === 'type' ? 14 : 32,
        typeofRec: typeofRecord(7, [[0, u32le(v6 ? 14 : 4)], [1, u32le(s.field === 'type' ? 1 : 2)]]),
        nfproto: v6 ? NFPROTO.ipv6 : NFPROTO.ipv4,
        l4proto: v6 ? L4.icmpv6 : L4.icmp,
        encode: (v) => numValue(v, {}, 1, false),
        host: false,
      };
    }
  }
}

/**
 * The selectors whose anonymous sets (`{ a, b }`) were checked against
 * nft's own batch (their user data records how nft lists them): the ones our
 * rules use. Others are left to nft.
 */
const ANON_SET_KEYS = (s: Selector): boolean =>
  (s.kind === 'meta' && s.key === 'l4proto') || (s.kind === 'ct' && s.key === 'state') || (s.kind === 'payload' && (s.proto === 'ip' || s.proto === 'ip6' || (s.proto === 'icmpv6' && s.field === 'type')));

/** What a rule has matched so far, for nft's dependency elision. */
interface RuleContext {
  nfproto?: number;
  l4proto?: number;
}

function dependencies(l: Load, ctx: RuleContext): Lowered[] {
  const out: Lowered[] = [];
  // an icmp field's dependency is its protocol; only a generated protocol match needs the family before it
  if (l.l4proto !== undefined && l.nfproto !== undefined && ctx.l4proto === l.l4proto) return out;
  if (l.nfproto !== undefined && ctx.nfproto !== l.nfproto) {
    out.push({ e: 'meta', key: META_KEY.nfproto, dreg: REG_1 }, { e: 'cmp', sreg: REG_1, op: CMP['=='], data: Uint8Array.of(l.nfproto) });
    ctx.nfproto = l.nfproto;
  }
  if (l.l4proto !== undefined && ctx.l4proto !== l.l4proto) {
    out.push({ e: 'meta', key: META_KEY.l4proto, dreg: REG_1 }, { e: 'cmp', sreg: REG_1, op: CMP['=='], data: Uint8Array.of(l.l4proto) });
    ctx.l4proto = l.l4proto;
  }
  return out;
}

/**
 * Register of the part at byte `at` of a concatenation, numbered as nft
 * does (netlink_put_register): a 128-bit register when the part starts on
 * one, else a 32-bit one.
 */
const concatReg = (at: number): number => {
  const word = at / 4;
  return word % 4 === 0 ? REG_1 + word / 4 : REG32_00 + word;
};

/** The lowering of one table's rules and sets; `nextSetId` numbers every set of the batch. */
class Lowering {
  nextSetId = 1;
  readonly setIds = new Map<string, number>();
  /** the interval maps of the table */
  readonly intervals = new Set<string>();

  rule(r: Rule, counterName: string | undefined, anon: AnonSet[]): Lowered[] {
    const out: Lowered[] = [];
    const ctx: RuleContext = {};
    let firstCounter = true;
    for (const e of r.exprs) {
      switch (e.kind) {
        case 'match':
          this.match(e, ctx, out, anon);
          break;
        case 'vmap':
          this.vmap(e.key, e.map, ctx, out);
          break;
        case 'counter':
          out.push(firstCounter && counterName !== undefined ? { e: 'objref', name: counterName } : { e: 'counter' });
          firstCounter = false;
          break;
        case 'ct-mark-set': {
          const keep = ~e.mask >>> 0;
          out.push(
            { e: 'ct', key: CT_KEY.mark, dreg: REG_1 },
            { e: 'bitwise', sreg: REG_1, dreg: REG_1, len: 4, mask: u32le(keep), xor: u32le(e.value), op: true },
            { e: 'ct-set', key: CT_KEY.mark, sreg: REG_1 },
          );
          break;
        }
        case 'verdict':
          out.push({ e: 'immediate', verdict: e.verdict });
          break;
      }
    }
    return out;
  }

  private match(e: Extract<Expr, { kind: 'match' }>, ctx: RuleContext, out: Lowered[], anon: AnonSet[]): void {
    const s = e.left;
    if (s.kind === 'ct' && s.key === 'mark') {
      if (Array.isArray(e.right) || e.right.kind !== 'num' || e.op !== '==') throw new UnsupportedError('ct mark match');
      out.push({ e: 'ct', key: CT_KEY.mark, dreg: REG_1 }, { e: 'bitwise', sreg: REG_1, dreg: REG_1, len: 4, mask: u32le(s.mask), xor: u32le(0), op: true }, { e: 'cmp', sreg: REG_1, op: CMP['=='], data: u32le(e.right.value) });
      return;
    }
    const l = load(s);
    // nft makes a one-element set a comparison
    const right = Array.isArray(e.right) && e.right.length === 1 ? e.right[0]! : e.right;
    if (!Array.isArray(right) && right.kind === 'setref') {
      out.push(...dependencies(l, ctx), ...l.exprs(REG_1), { e: 'lookup', sreg: REG_1, set: right.name, id: this.idOf(right.name), ...(e.op === '!=' ? { inv: true } : {}) });
      return;
    }
    // an explicit protocol match is the dependency of what follows
    if (!Array.isArray(right) && e.op === '==' && s.kind === 'meta' && (s.key === 'nfproto' || s.key === 'l4proto')) {
      const data = l.encode(right);
      out.push(...l.exprs(REG_1), { e: 'cmp', sreg: REG_1, op: CMP['=='], data });
      if (s.key === 'nfproto') ctx.nfproto = data[0]!;
      else ctx.l4proto = data[0]!;
      return;
    }
    // ct state flags: a bit test
    if (s.kind === 'ct' && s.key === 'state' && !Array.isArray(right)) {
      if (e.op !== '==') throw new UnsupportedError('ct state !=');
      out.push(...l.exprs(REG_1), { e: 'bitwise', sreg: REG_1, dreg: REG_1, len: 4, mask: l.encode(right), xor: u32le(0) }, { e: 'cmp', sreg: REG_1, op: CMP['!='], data: u32le(0) });
      return;
    }
    const deps = dependencies(l, ctx);
    if (Array.isArray(right)) {
      if (!ANON_SET_KEYS(s)) throw new UnsupportedError(`a set of ${JSON.stringify(s)} values`);
      const keys = right.map((v) => (v.kind === 'addr' ? addrKey(v, l.len) : l.encode(v)));
      const id = this.nextSetId++;
      anon.push({ id, keyType: l.type, keyLen: l.len, typeof: udata([[0, u32le(l.host ? 1 : 2)], [3, l.typeofRec]]), keys });
      out.push(...deps, ...l.exprs(REG_1), { e: 'lookup', sreg: REG_1, set: '__set%d', id, ...(e.op === '!=' ? { inv: true } : {}) });
      return;
    }
    if (right.kind === 'range') {
      if (e.op !== '==') throw new UnsupportedError('range !=');
      out.push(...deps, ...l.exprs(REG_1), { e: 'cmp', sreg: REG_1, op: CMP_GTE, data: l.encode(v.num(right.lo)) }, { e: 'cmp', sreg: REG_1, op: CMP_LTE, data: l.encode(v.num(right.hi)) });
      return;
    }
    const data = right.kind === 'addr' ? addrKey(right, l.len) : l.encode(right);
    out.push(...deps, ...l.exprs(REG_1), { e: 'cmp', sreg: REG_1, op: CMP[e.op], data });
  }

  private vmap(key: Selector[], map: string, ctx: RuleContext, out: Lowered[]): void {
    const loads = key.map(load);
    for (const l of loads) out.push(...dependencies(l, ctx));
    let at = 0;
    const pipapo = loads.length > 1 && this.intervals.has(map);
    for (const l of loads) {
      const reg = loads.length === 1 ? REG_1 : concatReg(at);
      out.push(...l.exprs(reg));
      if (pipapo && l.host) out.push({ e: 'byteorder', reg, len: l.len, size: 2 });
      at += Math.ceil(l.len / 4) * 4;
    }
    out.push({ e: 'lookup', sreg: REG_1, dreg: REG_VERDICT, set: map, id: this.idOf(map) });
  }

  idOf(name: string): number {
    const id = this.setIds.get(name);
    if (id === undefined) throw new UnsupportedError(`set ${name} used before it is declared`);
    return id;
  }
}

function addrKey(v: Extract<Value, { kind: 'addr' }>, len: number): Uint8Array {
  const p = parsePrefix(v.value);
  if (!p.ok || p.range.lo !== p.range.hi) throw new UnsupportedError(`address ${v.value}`);
  return bigBe(p.range.lo, len);
}

// ---- messages ----

function writeExpr(w: Writer, x: Lowered): void {
  w.nest(1);
  const name = x.e === 'ct-set' ? 'ct' : x.e;
  w.str(1, name);
  w.nest(2);
  switch (x.e) {
    case 'meta':
      w.u32(2, x.key);
      w.u32(1, x.dreg);
      break;
    case 'cmp':
      w.u32(1, x.sreg);
      w.u32(2, x.op);
      w.value(3, x.data);
      break;
    case 'payload':
      w.u32(1, x.dreg);
      w.u32(2, x.base);
      w.u32(3, x.offset);
      w.u32(4, x.len);
      break;
    case 'ct':
      w.u32(2, x.key);
      w.u32(1, x.dreg);
      break;
    case 'ct-set':
      w.u32(2, x.key);
      w.u32(4, x.sreg);
      break;
    case 'bitwise':
      w.u32(1, x.sreg);
      w.u32(2, x.dreg);
      if (x.op) w.u32(6, 0);
      w.u32(3, x.len);
      w.value(4, x.mask);
      w.value(5, x.xor);
      break;
    case 'lookup':
      w.u32(2, x.sreg);
      if (x.dreg !== undefined) w.u32(3, x.dreg);
      w.str(1, x.set);
      w.u32(4, x.id);
      if (x.inv) w.u32(5, 1);
      break;
    case 'counter':
      w.u64(1, 0);
      w.u64(2, 0);
      break;
    case 'objref':
      w.u32(1, NFT_OBJECT_COUNTER);
      w.str(2, x.name, false);
      break;
    case 'immediate':
      w.u32(1, REG_VERDICT);
      w.nest(2);
      writeVerdict(w, x.verdict);
      w.close();
      break;
    case 'byteorder':
      // host to network order, as nft converts host-order parts of an interval concatenation's key
      w.u32(1, x.reg);
      w.u32(2, x.reg);
      w.u32(3, 1);
      w.u32(4, x.len);
      w.u32(5, x.size);
      break;
  }
  w.close();
  w.close();
}

/** NFTA_DATA_VERDICT { code, chain } */
function writeVerdict(w: Writer, v: Verdict): void {
  w.nest(2);
  w.u32(1, VERDICT_CODE[v.kind]);
  if (v.kind === 'jump') w.str(2, assertName(v.chain));
  w.close();
}

interface KeyShape {
  parts: { type: KeyType; len: number }[];
  /** bytes of a key: each part padded to 4 bytes in a concatenation */
  len: number;
  concat: boolean;
}

function keyShape(types: readonly KeyType[]): KeyShape {
  const parts = types.map((t) => ({ type: t, len: KEY_TYPES[t].len }));
  const concat = parts.length > 1;
  return { parts, concat, len: concat ? parts.reduce((n, p) => n + Math.ceil(p.len / 4) * 4, 0) : parts[0]!.len };
}

/** The key of an element, its low end (`hi`: false) or its high end. */
function writeKeyBytes(out: Uint8Array, at: number, k: KeyPart, len: number, hi: boolean): void {
  if (k.kind === 'addr') out.set(bigBe(hi ? k.hi : k.lo, len), at);
  else {
    const n = hi ? k.hi : k.lo;
    // ports are in network order; one-byte values are the byte
    if (len === 2) {
      out[at] = (n >> 8) & 0xff;
      out[at + 1] = n & 0xff;
    } else out[at] = n & 0xff;
  }
}

function elementKey(el: MapElement, shape: KeyShape, hi: boolean): Uint8Array {
  const out = new Uint8Array(shape.len);
  let at = 0;
  shape.parts.forEach((p, i) => {
    writeKeyBytes(out, at, el.key[i]!, p.len, hi);
    at += shape.concat ? Math.ceil(p.len / 4) * 4 : p.len;
  });
  return out;
}

/** The most a nested attribute holds (its length is 16 bits): a NEWSETELEM message's elements are split there, as nft splits them. */
const NEST_MAX = 0xffff;

interface TableContext {
  w: Writer;
  table: string;
  /** starts an nf_tables message of `type` for the inet family */
  begin: (type: number, flags: number) => void;
}

/** NEWSETELEM messages holding `count` elements, each written by `write(i)`; yields full pieces. */
function* setElements(t: TableContext, name: string, id: number, write: (w: Writer, index: number) => void, count: number): Generator<Buffer> {
  const { w } = t;
  // elements are numbered across the messages of one set, as nft numbers them
  let n = 0;
  for (let start = 0; start < count; ) {
    t.begin(MSG.NEWSETELEM, NLM_F_REQUEST | NLM_F_CREATE);
    w.str(1, t.table);
    w.str(2, name);
    w.u32(4, id);
    w.nest(3);
    const first = n;
    while (start < count) {
      // as nft: as many elements as the nest's 16-bit length holds; the one that does not fit starts the next message
      const mark = w.position();
      w.nest(++n);
      write(w, start);
      w.close();
      if (w.nestSize() > NEST_MAX && n > first + 1) {
        // nft counts the element that did not fit too
        w.rewind(mark);
        break;
      }
      start++;
    }
    w.close();
    w.end();
    if (w.full()) yield w.flush();
  }
}

/** The element records of an interval set: rbtree (one key) or pipapo (concatenation: key and key end). */
type ElementRecord = { key: Uint8Array; keyEnd?: Uint8Array; end?: true; verdict?: Verdict; comment?: string };

function intervalRecords(els: readonly MapElement[], shape: KeyShape): ElementRecord[] {
  if (shape.concat) return els.map((el) => ({ key: elementKey(el, shape, false), keyEnd: elementKey(el, shape, true), ...(el.verdict ? { verdict: el.verdict } : {}) }));
  // rbtree: sorted ranges, each a start and (unless it reaches the top) an end one past it; nft starts with `0 [end]` unless the first range starts at 0
  const max = (1n << BigInt(shape.len * 8)) - 1n;
  const ranges = els.map((el) => {
    const k = el.key[0]!;
    return { lo: BigInt(k.lo), hi: BigInt(k.hi), verdict: el.verdict };
  });
  ranges.sort((a, b) => (a.lo < b.lo ? -1 : a.lo > b.lo ? 1 : 0));
  const out: ElementRecord[] = [];
  if (ranges.length && ranges[0]!.lo !== 0n) out.push({ key: bigBe(0n, shape.len), end: true });
  for (let i = 0; i < ranges.length; i++) {
    const r = ranges[i]!;
    out.push({ key: bigBe(r.lo, shape.len), ...(r.verdict ? { verdict: r.verdict } : {}) });
    const next = ranges[i + 1];
    if (r.hi !== max && !(next && next.lo === r.hi + 1n)) out.push({ key: bigBe(r.hi + 1n, shape.len), end: true });
  }
  return out;
}

function writeRecord(w: Writer, r: ElementRecord): void {
  if (r.end) w.u32(3, NFT_SET_ELEM_INTERVAL_END);
  w.value(1, r.key);
  if (r.keyEnd) w.value(10, r.keyEnd);
  if (r.verdict) {
    w.nest(2);
    writeVerdict(w, r.verdict);
    w.close();
  }
  if (r.comment !== undefined) w.bytes(6, commentData(r.comment));
}

function* writeSet(t: TableContext, m: VerdictMap, id: number): Generator<Buffer> {
  const { w } = t;
  const shape = keyShape(m.keyType);
  const map = !m.set;
  const flags = (map ? NFT_SET_MAP : 0) | (m.interval ? NFT_SET_INTERVAL : 0) | (m.interval && shape.concat ? NFT_SET_CONCAT : 0);
  t.begin(MSG.NEWSET, NLM_F_REQUEST | NLM_F_CREATE);
  w.str(1, t.table);
  w.str(2, assertName(m.name));
  w.u32(3, flags);
  w.u32(4, shape.parts.reduce((id, p) => (id << 6) | KEY_TYPES[p.type].id, 0));
  w.u32(5, shape.len);
  if (map) {
    w.u32(6, NFT_DATA_VERDICT);
    w.u32(7, 0);
  }
  w.u32(10, id);
  if (m.interval && shape.concat) {
    w.nest(9);
    w.nest(2);
    for (const p of shape.parts) {
      w.nest(1);
      w.u32(1, p.len);
      w.close();
    }
    w.close();
    w.close();
  }
  const rec: [number, Uint8Array][] = [[0, u32le(shape.concat ? 0 : KEY_BYTEORDER[shape.parts[0]!.type])]];
  if (map) rec.push([1, u32le(0)]);
  if (map && shape.concat) rec.push([3, udata([[0, u32le(13)], [1, new Uint8Array(0)]])]);
  if (map) rec.push([6, u32le(0)]);
  if (m.comment !== undefined) rec.push([7, strz(m.comment)]);
  w.bytes(13, udata(rec));
  w.end();

  const els = m.elements;
  if (!els.length) return;
  if (els instanceof AddressSet) {
    // a packed member set: each key written straight from its words (no copy of the set, no object per member)
    yield* setElements(t, m.name, id, (w, i) => w.valueFrom(1, shape.len, els, i), els.length);
    return;
  }
  if (m.interval) {
    const records = intervalRecords(els, shape);
    yield* setElements(t, m.name, id, (w, i) => writeRecord(w, records[i]!), records.length);
    return;
  }
  yield* setElements(t, m.name, id, (w, i) => writeRecord(w, { key: elementKey(els[i]!, shape, false), ...(els[i]!.verdict ? { verdict: els[i]!.verdict! } : {}) }), els.length);
}

function* writeAnonSet(t: TableContext, s: AnonSet): Generator<Buffer> {
  const { w } = t;
  t.begin(MSG.NEWSET, NLM_F_REQUEST | NLM_F_CREATE);
  w.str(1, t.table);
  w.str(2, '__set%d');
  w.u32(3, NFT_SET_ANONYMOUS | NFT_SET_CONSTANT);
  w.u32(4, s.keyType);
  w.u32(5, s.keyLen);
  w.u32(10, s.id);
  w.nest(9);
  w.u32(1, s.keys.length);
  w.close();
  w.bytes(13, s.typeof);
  w.end();
  yield* setElements(t, '__set%d', s.id, (w, i) => w.value(1, s.keys[i]!), s.keys.length);
}

function writeChain(t: TableContext, c: Chain): void {
  const { w } = t;
  t.begin(MSG.NEWCHAIN, NLM_F_REQUEST | NLM_F_CREATE);
  w.str(1, t.table);
  w.str(3, assertName(c.name));
  if (c.base) {
    w.str(7, c.base.type);
    w.u32(5, c.base.policy === 'accept' ? 1 : 0);
    w.nest(4);
    w.u32(1, HOOKNUM[c.base.hook]);
    w.u32(2, c.base.priority);
    w.close();
  }
  if (c.comment !== undefined) w.bytes(12, commentData(c.comment));
  w.end();
}

function writeRule(t: TableContext, chain: string, exprs: Lowered[], comment: string | undefined): void {
  const { w } = t;
  t.begin(MSG.NEWRULE, NLM_F_REQUEST | NLM_F_CREATE | NLM_F_APPEND);
  w.str(1, t.table);
  w.str(2, chain);
  w.nest(4);
  for (const x of exprs) writeExpr(w, x);
  w.close();
  if (comment !== undefined) w.bytes(7, commentData(comment));
  w.end();
}

/** The sets and ids of a table's batch, and its rules lowered as nft lowers them. */
function prepare(table: Table): { low: Lowering; names: (string | undefined)[][]; marker: number; setIds: number[] } {
  if (table.family !== 'inet') throw new UnsupportedError(`family ${table.family}`);
  const low = new Lowering();
  const names = table.chains.map(ruleCounterNames);
  let marker = 0;
  if (table.marker !== undefined) low.setIds.set(MARKER_SET, (marker = low.nextSetId++));
  const setIds = table.maps.map((m) => {
    const id = low.nextSetId++;
    low.setIds.set(m.name, id);
    if (m.interval) low.intervals.add(m.name);
    return id;
  });
  return { low, names, marker, setIds };
}

/**
 * The table's definition after its NEWTABLE, in nft's order: chains, counter
 * objects (`counters`: counts carried), the marker set and the maps each
 * with its elements, then the rules, each after its anonymous sets.
 */
function* tableMessages(t: TableContext, table: Table, counters: RuleCounters | undefined): Generator<Buffer> {
  const { w } = t;
  const { low, names, marker, setIds } = prepare(table);
  for (const c of table.chains) {
    writeChain(t, c);
    if (w.full()) yield w.flush();
  }
  for (const { name, carried } of counterDeclarations(table, names, counters)) {
    t.begin(MSG.NEWOBJ, NLM_F_REQUEST | NLM_F_CREATE);
    w.str(1, t.table);
    w.str(2, assertName(name));
    w.u32(3, NFT_OBJECT_COUNTER);
    w.nest(4);
    w.u64(1, carried?.bytes ?? 0);
    w.u64(2, carried?.packets ?? 0);
    w.close();
    w.end();
    if (w.full()) yield w.flush();
  }
  if (table.marker !== undefined) {
    const text = table.marker;
    yield* writeSet(t, { name: MARKER_SET, set: true, keyType: ['inet_service'], interval: false, elements: [] }, marker);
    yield* setElements(t, MARKER_SET, marker, (w) => writeRecord(w, { key: be(1, 2), comment: text }), 1);
  }
  for (let i = 0; i < table.maps.length; i++) yield* writeSet(t, table.maps[i]!, setIds[i]!);
  for (let k = 0; k < table.chains.length; k++) {
    const c = table.chains[k]!;
    for (let j = 0; j < c.rules.length; j++) {
      const r = c.rules[j]!;
      const anon: AnonSet[] = [];
      const exprs = low.rule(r, names[k]![j], anon);
      for (const s of anon) yield* writeAnonSet(t, s);
      writeRule(t, c.name, exprs, r.comment);
    }
    if (w.full()) yield w.flush();
  }
}

/** A whole batch: begin, `body`, end, in pieces (see encodeReplaceTable). */
function* batch(name: string, body: (t: TableContext) => Generator<Buffer>): Generator<Buffer> {
  const w = new Writer();
  const t: TableContext = { w, table: assertName(name), begin: (type, flags) => w.begin((NFNL_SUBSYS_NFTABLES << 8) | type, flags, NFPROTO_INET) };
  w.begin(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, 0, NFNL_SUBSYS_NFTABLES);
  w.end();
  yield* body(t);
  w.begin(NFNL_MSG_BATCH_END, NLM_F_REQUEST, 0, NFNL_SUBSYS_NFTABLES);
  w.end();
  yield w.flush();
}

/** NEWTABLE with the table's comment (none: the kernel keeps an existing table's comment) */
function newTable(t: TableContext, comment: string | undefined): void {
  t.begin(MSG.NEWTABLE, NLM_F_REQUEST);
  t.w.str(1, t.table);
  t.w.u32(2, 0);
  if (comment !== undefined) t.w.bytes(6, commentData(comment));
  t.w.end();
}

/** a DEL* message naming one object of the table (`name` attribute `attr`) */
function deleteObject(t: TableContext, type: number, attr: number, name: string, extra?: () => void): void {
  t.begin(type, NLM_F_REQUEST);
  t.w.str(1, t.table);
  t.w.str(attr, assertName(name));
  extra?.();
  t.w.end();
}

/**
 * The batch that replaces table `inet <name>` with `table` (what
 * renderScript's script makes nft send): create-if-missing, delete, define.
 * `counters`: counts carried into the counter objects (counters.ts). Yields
 * the batch in pieces of about 256 KB of whole messages, each valid until the
 * next is asked for (write it out, or copy it). Throws UnsupportedError,
 * part-way, when the table holds something it does not encode: what was
 * yielded before must then never reach the kernel.
 */
export function encodeReplaceTable(table: Table, counters?: RuleCounters): Generator<Buffer> {
  return batch(table.name, function* (t) {
    // `table inet NAME {}`, `delete table inet NAME`, then the table
    newTable(t, undefined);
    t.begin(MSG.DELTABLE, NLM_F_REQUEST);
    t.w.str(1, t.table);
    t.w.end();
    newTable(t, table.comment);
    yield* tableMessages(t, table, counters);
  });
}

/**
 * The batch of a reload in place over `previous`, the table the agent
 * applied last (what renderReloadInPlace's script makes nft send): every
 * rule flushed, the previous sets, maps and chains deleted and the counter
 * objects no rule of `table` counts into, then `table` defined; the counter
 * objects that stay keep their counts (the kernel keeps an existing object
 * on NEWOBJ without NLM_F_EXCL), the table its comment. Pieces and errors as
 * encodeReplaceTable's.
 */
export function encodeReloadInPlace(table: Table, previous: Table): Generator<Buffer> {
  return batch(table.name, function* (t) {
    if (previous.name !== table.name || previous.family !== table.family) throw new UnsupportedError('a reload in place of another table');
    const keep = tableCounterNames(table);
    // `flush table`: NFT_MSG_DELRULE naming the table only
    t.begin(MSG.DELRULE, NLM_F_REQUEST);
    t.w.str(1, t.table);
    t.w.end();
    if (previous.marker !== undefined) deleteObject(t, MSG.DELSET, 2, MARKER_SET);
    for (const m of previous.maps) deleteObject(t, MSG.DELSET, 2, m.name);
    for (const c of previous.chains) {
      deleteObject(t, MSG.DELCHAIN, 3, c.name);
      if (t.w.full()) yield t.w.flush();
    }
    for (const n of tableCounterNames(previous)) {
      if (keep.has(n)) continue;
      deleteObject(t, MSG.DELOBJ, 2, n, () => {
        t.w.u32(3, NFT_OBJECT_COUNTER);
        t.w.nest(4);
        t.w.close();
      });
      if (t.w.full()) yield t.w.flush();
    }
    newTable(t, undefined);
    yield* tableMessages(t, table, undefined);
  });
}
