/**
 * The one place where the nft model becomes nft syntax: a script for `nft -f`
 * that replaces our table atomically, or the equivalent libnftables JSON.
 *
 * Scripts are produced in chunks (`renderTransactionChunks`, ~64 KB each:
 * whole lines, a map's elements in slices) so the runner can stream them into
 * nft with back-pressure: a 1M-member set is never one string of ~40 MB
 * (plus an array of a million line strings) in the agent's memory; its
 * addresses are formatted slice by slice straight from the packed set
 * (policy/address-set.ts), in canonical form whatever the document wrote. The
 * string forms (`renderScript`, `renderTransaction`) join the same chunks.
 *
 * Counters (counters.ts): in a script, every counted rule with an identity
 * counts into a named counter object declared in the table; `replace-table`
 * with `previous` reloads the table in place (its counter objects keep their
 * counts), with `counters` it declares them with the counts carried
 * (`counter c_... { packets N bytes M }`). The JSON form (`renderJson`)
 * declares and names the same counter objects; listings (`listing: true`)
 * keep anonymous counters.
 *
 * A drift repair restores only what a foreign change touched
 * (agent/repair-plan.ts): `restore-chain` flushes a chain of ours and adds
 * its rules again (counting into the counter objects that stayed),
 * `restore-elements` flushes a set or map and adds its elements again.
 *
 * Size: the one module that writes nft syntax (STYLE.md "objects before
 * text"): the table, the in-place reload, element changes and restores share
 * its rule, element and chunking helpers; the JSON form sits beside them.
 */
import { formatRangeNft, parsePrefix } from '../policy/address.js';
import { AddressSet, TEXT_MAX } from '../policy/address-set.js';
import { hex } from './flow-mark.js';
import { MARKER_SET, assertName, comment as safeComment, type Chain, type Expr, type KeyPart, type MapElement, type Rule, type Selector, type Table, type Value, type Verdict, type VerdictMap } from './model.js';
import { counterDeclarations, ruleCounterNames, tableCounterNames, type RuleCounters } from './counters.js';
import { assertOwnTable, type NftTransaction } from './transaction.js';

const SYM_RE = /^[a-z][a-z0-9-]*$/;
const STR_RE = /^[A-Za-z0-9._-]{1,15}$/;

function valueText(val: Value): string {
  switch (val.kind) {
    case 'num':
      if (!Number.isInteger(val.value) || val.value < 0) throw new Error(`internal: bad number ${val.value}`);
      return String(val.value);
    case 'range':
      if (!Number.isInteger(val.lo) || !Number.isInteger(val.hi) || val.lo < 0 || val.lo > val.hi) throw new Error('internal: bad range');
      return `${val.lo}-${val.hi}`;
    case 'sym':
      if (!SYM_RE.test(val.value)) throw new Error(`internal: bad symbol ${JSON.stringify(val.value)}`);
      return val.value;
    case 'addr': {
      const p = parsePrefix(val.value);
      if (!p.ok) throw new Error(`internal: bad address ${JSON.stringify(val.value)}`);
      return formatRangeNft(p.range);
    }
    case 'str':
      if (!STR_RE.test(val.value)) throw new Error(`internal: bad string ${JSON.stringify(val.value)}`);
      return `"${val.value}"`;
    case 'setref':
      return `@${assertName(val.name)}`;
  }
}

function selectorText(s: Selector): string {
  switch (s.kind) {
    case 'meta':
      return s.key === 'iif' || s.key === 'oif' ? s.key : `meta ${s.key}`;
    case 'payload':
      return `${s.proto} ${s.field}`;
    case 'ct':
      return s.key === 'mark' ? `ct mark and ${markHex(s.mask)}` : `ct ${s.key}`;
  }
}

/** A conntrack mark value or mask, as nft lists it back (`0x` and 8 hex digits). */
function markHex(n: number): string {
  if (!Number.isInteger(n) || n < 0 || n > 0xffffffff) throw new Error(`internal: bad mark ${n}`);
  return hex(n);
}

/** `ct mark set ct mark and KEEP or VALUE`: `value` must lie within `mask`. */
function markSetParts(e: { mask: number; value: number }): { keep: number; value: number } {
  markHex(e.mask);
  markHex(e.value);
  if ((e.value & ~e.mask) !== 0) throw new Error(`internal: mark value ${e.value} outside mask ${e.mask}`);
  return { keep: ~e.mask >>> 0, value: e.value };
}

function verdictText(vd: Verdict | undefined): string {
  if (!vd) throw new Error('internal: verdict map element without a verdict');
  return vd.kind === 'jump' ? `jump ${assertName(vd.chain)}` : vd.kind;
}

/** `named`: the rule counts into this counter object (counters.ts). */
function exprText(e: Expr, named?: string): string {
  switch (e.kind) {
    case 'match': {
      if (e.left.kind === 'ct' && e.left.key === 'mark') {
        if (Array.isArray(e.right) || e.right.kind !== 'num') throw new Error('internal: a ct mark matches one number');
        return `${selectorText(e.left)} ${e.op} ${markHex(e.right.value)}`;
      }
      const right = Array.isArray(e.right) ? `{ ${e.right.map(valueText).join(', ')} }` : valueText(e.right);
      return `${selectorText(e.left)} ${e.op === '!=' ? '!= ' : ''}${right}`;
    }
    case 'vmap':
      return `${e.key.map(selectorText).join(' . ')} vmap @${assertName(e.map)}`;
    case 'counter':
      return named !== undefined ? `counter name "${assertName(named)}"` : 'counter';
    case 'ct-mark-set': {
      const m = markSetParts(e);
      return `ct mark set ct mark and ${markHex(m.keep)} or ${markHex(m.value)}`;
    }
    case 'verdict':
      return verdictText(e.verdict);
  }
}

function counterValue(n: number): string {
  if (!Number.isSafeInteger(n) || n < 0) throw new Error(`internal: bad counter value ${n}`);
  return String(n);
}

/** `named`: the counter object of this rule's first counter (counters.ts). */
function ruleText(r: Rule, named?: string): string {
  // concatenated, no lists: a script of 10k rule chains renders 10k of these
  let first = true;
  let body = '';
  for (const e of r.exprs) {
    const text = e.kind === 'counter' && first ? exprText(e, named) : exprText(e);
    if (e.kind === 'counter') first = false;
    body = body ? `${body} ${text}` : text;
  }
  return r.comment !== undefined ? `${body} comment "${safeComment(r.comment)}"` : body;
}

const PROTO_NAMES: Record<number, string> = { 1: 'icmp', 6: 'tcp', 17: 'udp', 58: 'icmpv6', 132: 'sctp' };

function keyPartText(k: KeyPart, type?: string): string {
  if (k.kind === 'addr') return formatRangeNft({ family: k.family, lo: k.lo, hi: k.hi });
  if (k.lo === k.hi) return type === 'inet_proto' && PROTO_NAMES[k.lo] ? PROTO_NAMES[k.lo]! : String(k.lo);
  return `${k.lo}-${k.hi}`;
}

/** Maps at most this big get a `# group/rule` note per element in the script (readability, not semantics). */
const ANNOTATE_MAX = 5000;
/** Elements per chunk of a streamed map (a few tens of KB of text). */
const SLICE = 2048;

function* mapChunks(m: VerdictMap, notes: ReadonlyMap<string, string>, listing = false): Generator<string> {
  const head = [`\t${m.set ? 'set' : 'map'} ${assertName(m.name)} {`, `\t\ttype ${m.keyType.join(' . ')}${m.set ? '' : ' : verdict'}`];
  if (m.interval) head.push('\t\tflags interval');
  if (m.comment !== undefined) head.push(`\t\tcomment "${safeComment(m.comment)}"`);
  if (!m.elements.length) {
    yield head.join('\n') + '\n\t}\n';
    return;
  }
  head.push('\t\telements = {');
  yield head.join('\n') + '\n';
  yield* elementLines(m, notes, listing);
  yield '\t\t}\n\t}\n';
}

/** The elements of a non-empty map, one line each (`\t\t\tkey : verdict,`), in slices; `notes`: a `# group/rule` per element of small maps. */
function* elementLines(m: VerdictMap, notes: ReadonlyMap<string, string>, listing: boolean): Generator<string> {
  const els = m.elements;
  const last = els.length - 1;
  if (els instanceof AddressSet) {
    // a packed member set: text straight from its words, slice by slice (no element objects)
    if (listing) {
      const texts = new Array<string>(els.length);
      for (let i = 0; i <= last; i++) texts[i] = els.text(i);
      texts.sort();
      yield texts.map((text, i) => `\t\t\t${text}${i === last ? '' : ','}\n`).join('');
    } else {
      // each slice's lines written as bytes into one buffer, one string per chunk (no string per address)
      const buf = Buffer.alloc(SLICE * (TEXT_MAX + 5));
      for (let start = 0; start <= last; start += SLICE) {
        let at = 0;
        for (let i = start; i < Math.min(start + SLICE, last + 1); i++) {
          buf[at++] = 9;
          buf[at++] = 9;
          buf[at++] = 9;
          at = els.writeText(i, buf, at);
          if (i !== last) buf[at++] = 44;
          buf[at++] = 10;
        }
        yield buf.toString('latin1', 0, at);
      }
    }
    return;
  }
  const elementText = (el: MapElement, keyText: (k: KeyPart, j: number) => string): string => `${el.key.map(keyText).join(' . ')}${m.set ? '' : ` : ${verdictText(el.verdict)}`}`;
  const keyText = (k: KeyPart, j: number) => keyPartText(k, m.keyType[j]);
  if (listing) {
    const texts = els.map((el) => elementText(el, keyText)).sort();
    yield texts.map((text, i) => `\t\t\t${text}${i === last ? '' : ','}\n`).join('');
  } else {
    const annotate = els.length <= ANNOTATE_MAX;
    for (let start = 0; start <= last; start += SLICE) {
      let chunk = '';
      for (let i = start; i < Math.min(start + SLICE, last + 1); i++) {
        const el = els[i]!;
        const note = annotate && el.verdict?.kind === 'jump' ? notes.get(el.verdict.chain) : undefined;
        chunk += `\t\t\t${elementText(el, keyText)}${i === last ? '' : ','}${note ? ` # ${safeComment(note)}` : ''}\n`;
      }
      yield chunk;
    }
  }
}

/** `names`: the counter object each rule counts into (a script, see the note at the top); none: anonymous counters. */
function chainText(c: Chain, names: readonly (string | undefined)[] = []): string {
  let out = `\tchain ${assertName(c.name)} {\n`;
  if (c.base) out += `\t\ttype ${c.base.type} hook ${c.base.hook} priority ${c.base.priority}; policy ${c.base.policy};\n`;
  if (c.comment !== undefined) out += `\t\tcomment "${safeComment(c.comment)}"\n`;
  for (let i = 0; i < c.rules.length; i++) out += `\t\t${ruleText(c.rules[i]!, names[i])}\n`;
  return `${out}\t}\n`;
}

/** Chains per chunk of a streamed table (rule chains are a few lines each). */
const CHAINS_PER_CHUNK = 256;
/** Counter declarations per chunk (one line each). */
const COUNTERS_PER_CHUNK = 256;

/**
 * The table as one nft `table <family> <name> { ... }` block, objects in the
 * order of the model. `listing: true` is what a listing of the table would
 * show, the same text for the same content: map elements sorted, no per-element notes
 * (FakeNft.dump, golden files of a whole resulting table).
 */
export function renderTable(table: Table, opts: { listing?: boolean } = {}): string {
  return [...tableChunks(table, opts)].join('');
}

/** Declarations of the table's counter objects, with the counts carried into them (see the note at the top). */
function* counterChunks(table: Table, names: readonly (readonly (string | undefined)[])[], counters?: RuleCounters): Generator<string> {
  let chunk = '';
  let lines = 0;
  for (const { name, carried } of counterDeclarations(table, names, counters)) {
    chunk += carried ? `\tcounter ${assertName(name)} { packets ${counterValue(carried.packets)} bytes ${counterValue(carried.bytes)} }\n` : `\tcounter ${assertName(name)} { }\n`;
    if (++lines === COUNTERS_PER_CHUNK) {
      yield chunk;
      chunk = '';
      lines = 0;
    }
  }
  if (chunk) yield chunk;
}

/**
 * renderTable in chunks of whole lines; `script`: the table of a script, with
 * named counters (and `counters` carried into them), without its comment when
 * `inPlace` (the kernel keeps an existing table's comment).
 */
function* tableChunks(table: Table, opts: { listing?: boolean; script?: { counters?: RuleCounters; inPlace?: boolean } } = {}): Generator<string> {
  const name = assertName(table.name);
  const head = [`table ${table.family} ${name} {`];
  if (table.comment !== undefined && !opts.script?.inPlace) head.push(`\tcomment "${safeComment(table.comment)}"`);
  if (table.marker !== undefined) head.push(`\tset ${MARKER_SET} {`, '\t\ttype inet_service', `\t\telements = { 1 comment "${safeComment(table.marker)}" }`, '\t}');
  yield head.join('\n') + '\n';
  // each chain's counter names, worked out once for the declarations and the rules
  const names = opts.script ? table.chains.map(ruleCounterNames) : null;
  if (opts.script) yield* counterChunks(table, names!, opts.script.counters);
  const notes = new Map<string, string>();
  if (!opts.listing) for (const c of table.chains) if (!c.base && c.rules.length === 1 && c.rules[0]!.comment) notes.set(c.name, c.rules[0]!.comment);
  for (const m of table.maps) yield* mapChunks(m, notes, opts.listing);
  for (let i = 0; i < table.chains.length; i += CHAINS_PER_CHUNK) {
    let chunk = '';
    for (let k = i; k < Math.min(i + CHAINS_PER_CHUNK, table.chains.length); k++) chunk += chainText(table.chains[k]!, names?.[k]);
    yield chunk;
  }
  yield '}\n';
}

/**
 * nft script that atomically replaces table `inet <name>` with `table`:
 * create-if-missing, delete, define, all in one `nft -f` transaction.
 * `counters`: rule counts to carry into the new table (see counters.ts).
 */
export function renderScript(table: Table, counters?: RuleCounters): string {
  return [...scriptChunks(table, counters)].join('');
}

function* scriptChunks(table: Table, counters?: RuleCounters): Generator<string> {
  const name = assertName(table.name);
  yield `# secgroup: replaces table ${table.family} ${name} in one transaction (nft -f)\ntable ${table.family} ${name} {}\ndelete table ${table.family} ${name}\n`;
  yield* tableChunks(table, { script: counters ? { counters } : {} });
}

/**
 * nft script that reloads our table in place over `previous`, the table the
 * agent last applied (see counters.ts): flush its rules, delete its chains,
 * maps and sets and the counters the new table has no rule for, define the
 * new table; counter objects that stay keep their counts. One transaction: it
 * fails whole (nft: No such file or directory) when the kernel's table is not
 * `previous`.
 */
export function renderReloadInPlace(table: Table, previous: Table): string {
  return [...reloadInPlaceChunks(table, previous)].join('');
}

function* reloadInPlaceChunks(table: Table, previous: Table): Generator<string> {
  const t = `${table.family} ${assertName(table.name)}`;
  const keep = tableCounterNames(table);
  let out = [`# secgroup: reloads table ${t} in place, keeping its counters, in one transaction (nft -f)`, `flush table ${t}`];
  const lines = function* (): Generator<string> {
    if (previous.marker !== undefined) yield `delete set ${t} ${MARKER_SET}`;
    for (const m of previous.maps) yield `delete ${m.set ? 'set' : 'map'} ${t} ${assertName(m.name)}`;
    for (const c of previous.chains) yield `delete chain ${t} ${assertName(c.name)}`;
    for (const n of tableCounterNames(previous)) if (!keep.has(n)) yield `delete counter ${t} ${assertName(n)}`;
  };
  for (const line of lines()) {
    out.push(line);
    if (out.length >= CHAINS_PER_CHUNK) {
      yield out.join('\n') + '\n';
      out = [];
    }
  }
  if (out.length) yield out.join('\n') + '\n';
  yield* tableChunks(table, { script: { inPlace: true } });
}

/**
 * A chain of ours restored after a foreign change to its rules only: flushed
 * and its rules added again, counting into the counter objects that exist
 * (counters.ts), so no count is lost. Fails whole if the chain is gone.
 */
function restoreChainText(family: 'inet', table: string, c: Chain): string {
  const at = `${family} ${assertName(table)} ${assertName(c.name)}`;
  const names = ruleCounterNames(c);
  let out = `flush chain ${at}\n`;
  for (let i = 0; i < c.rules.length; i++) out += `add rule ${at} ${ruleText(c.rules[i]!, names[i])}\n`;
  return out;
}

/** A set or map of ours restored after a foreign change to its elements only: flushed (unless `addOnly`) and every element added again. */
function* restoreElementChunks(family: 'inet', table: string, m: VerdictMap, addOnly: boolean): Generator<string> {
  const at = `${family} ${assertName(table)} ${assertName(m.name)}`;
  if (!addOnly) yield `flush ${m.set ? 'set' : 'map'} ${at}\n`;
  if (!m.elements.length) return;
  yield `add element ${at} {\n`;
  yield* elementLines(m, new Map(), false);
  yield '}\n';
}

/** Script that removes our table and nothing else (no error if it is absent). */
export function renderDeleteScript(family: 'inet', name: string): string {
  assertName(name);
  return `table ${family} ${name} {}\ndelete table ${family} ${name}\n`;
}

function elementText(el: MapElement, keyType: readonly string[], withVerdict: boolean): string {
  const key = el.key.map((k, j) => keyPartText(k, keyType[j])).join(' . ');
  return withVerdict && el.verdict ? `${key} : ${verdictText(el.verdict)}` : key;
}

/**
 * Element changes of verdict maps and sets, for `nft -f` as one transaction: every
 * deletion first, then every addition (a key whose verdict changes is deleted
 * and added again).
 */
export function renderElementChanges(
  family: 'inet',
  table: string,
  changes: readonly { map: string; keyType: readonly string[]; remove: readonly MapElement[]; add: readonly MapElement[] }[],
): string {
  const t = assertName(table);
  const out: string[] = [`# secgroup: element changes in table ${family} ${t} (one transaction)`];
  for (const c of changes) {
    if (c.remove.length) out.push(`delete element ${family} ${t} ${assertName(c.map)} { ${c.remove.map((el) => elementText(el, c.keyType, false)).join(', ')} }`);
  }
  for (const c of changes) {
    if (c.add.length) out.push(`add element ${family} ${t} ${assertName(c.map)} { ${c.add.map((el) => elementText(el, c.keyType, true)).join(', ')} }`);
  }
  return out.join('\n') + '\n';
}

/** Replaces the generation marker of an existing table (flush + add in the same transaction). */
export function renderMarkerChange(family: 'inet', table: string, text: string): string {
  const t = assertName(table);
  return `flush set ${family} ${t} ${MARKER_SET}\nadd element ${family} ${t} ${MARKER_SET} { 1 comment "${safeComment(text)}" }\n`;
}

/** The script of one transaction (see transaction.ts); throws if it touches any table but its own. */
export function renderTransaction(tx: NftTransaction): string {
  return [...renderTransactionChunks(tx)].join('');
}

/**
 * The script of one transaction in chunks of whole lines, for streaming into
 * nft (see the note at the top). The ownership check runs before the first
 * chunk: a transaction that touches another table yields nothing and throws.
 */
export function renderTransactionChunks(tx: NftTransaction): Iterable<string> {
  assertOwnTable(tx);
  return transactionChunks(tx);
}

function* transactionChunks(tx: NftTransaction): Generator<string> {
  const updates = [];
  const markers: string[] = [];
  for (const op of tx.ops) {
    if (op.op === 'replace-table') yield* op.previous ? reloadInPlaceChunks(op.table, op.previous) : scriptChunks(op.table, op.counters);
    else if (op.op === 'delete-table') yield renderDeleteScript(op.family, op.name);
    else if (op.op === 'set-marker') markers.push(renderMarkerChange(op.family, op.table, op.text));
    else if (op.op === 'restore-chain') yield restoreChainText(op.family, op.table, op.chain);
    else if (op.op === 'restore-elements') yield* restoreElementChunks(op.family, op.table, op.map, op.addOnly === true);
    else updates.push(op);
  }
  if (updates.length) yield renderElementChanges(tx.family, tx.table, updates);
  yield* markers;
}

// ---- JSON (libnftables schema, `nft -j -f`) ----

type Json = unknown;

function valueJson(val: Value): Json {
  switch (val.kind) {
    case 'num':
      return val.value;
    case 'range':
      valueText(val);
      return { range: [val.lo, val.hi] };
    case 'sym':
      valueText(val);
      return val.value;
    case 'addr': {
      const text = valueText(val);
      const slash = text.indexOf('/');
      if (slash >= 0) return { prefix: { addr: text.slice(0, slash), len: Number(text.slice(slash + 1)) } };
      const dash = text.indexOf('-');
      if (dash >= 0) return { range: [text.slice(0, dash), text.slice(dash + 1)] };
      return text;
    }
    case 'str':
      valueText(val);
      return val.value;
    case 'setref':
      return valueText(val);
  }
}

function selectorJson(s: Selector): Json {
  switch (s.kind) {
    case 'meta':
      return { meta: { key: s.key } };
    case 'payload':
      return { payload: { protocol: s.proto, field: s.field } };
    case 'ct':
      return s.key === 'mark' ? { '&': [{ ct: { key: 'mark' } }, s.mask] } : { ct: { key: s.key } };
  }
}

function verdictJson(vd: Verdict | undefined): Json {
  if (!vd) throw new Error('internal: verdict map element without a verdict');
  return vd.kind === 'jump' ? { jump: { target: assertName(vd.chain) } } : { [vd.kind]: null };
}

/** `named`: the rule counts into this counter object (counters.ts), as in the script. */
function exprJson(e: Expr, named?: string): Json {
  switch (e.kind) {
    case 'match':
      return {
        match: {
          op: e.op,
          left: selectorJson(e.left),
          right: Array.isArray(e.right) ? { set: e.right.map(valueJson) } : valueJson(e.right),
        },
      };
    case 'vmap':
      return {
        vmap: { key: e.key.length === 1 ? selectorJson(e.key[0]!) : { concat: e.key.map(selectorJson) }, data: `@${assertName(e.map)}` },
      };
    case 'counter':
      return named !== undefined ? { counter: assertName(named) } : { counter: { packets: 0, bytes: 0 } };
    case 'ct-mark-set': {
      const m = markSetParts(e);
      return { mangle: { key: { ct: { key: 'mark' } }, value: { '|': [{ '&': [{ ct: { key: 'mark' } }, m.keep] }, m.value] } } };
    }
    case 'verdict':
      return verdictJson(e.verdict);
  }
}

function keyPartJson(k: KeyPart): Json {
  if (k.kind === 'num') return k.lo === k.hi ? k.lo : { range: [k.lo, k.hi] };
  const text = keyPartText(k);
  const slash = text.indexOf('/');
  if (slash >= 0) return { prefix: { addr: text.slice(0, slash), len: Number(text.slice(slash + 1)) } };
  const dash = text.indexOf('-');
  if (dash >= 0) return { range: [text.slice(0, dash), text.slice(dash + 1)] };
  return text;
}

/** The same transaction as `renderScript`, as libnftables JSON. */
export function renderJson(table: Table): { nftables: Json[] } {
  const family = table.family;
  const tname = assertName(table.name);
  const cmds: Json[] = [];
  cmds.push({ add: { table: { family, name: tname } } });
  cmds.push({ delete: { table: { family, name: tname } } });
  cmds.push({ add: { table: { family, name: tname, ...(table.comment !== undefined ? { comment: safeComment(table.comment) } : {}) } } });
  // the counter objects the rules count into (counters.ts), before the rules that name them
  const counterNames = table.chains.map(ruleCounterNames);
  for (const names of counterNames) for (const n of names) if (n !== undefined) cmds.push({ add: { counter: { family, table: tname, name: assertName(n) } } });
  // chains first: map elements jump to them, and JSON commands are resolved in order
  for (const c of table.chains) {
    const chain: Record<string, Json> = { family, table: tname, name: assertName(c.name) };
    if (c.base) Object.assign(chain, { type: c.base.type, hook: c.base.hook, prio: c.base.priority, policy: c.base.policy });
    if (c.comment !== undefined) chain.comment = safeComment(c.comment);
    cmds.push({ add: { chain } });
  }
  if (table.marker !== undefined) {
    cmds.push({ add: { set: { family, table: tname, name: MARKER_SET, type: 'inet_service', elem: [{ elem: { val: 1, comment: safeComment(table.marker) } }] } } });
  }
  for (const m of table.maps) {
    const map: Record<string, Json> = {
      family,
      table: tname,
      name: assertName(m.name),
      type: m.keyType.length === 1 ? m.keyType[0] : m.keyType,
      ...(m.set ? {} : { map: 'verdict' }),
      ...(m.interval ? { flags: ['interval'] } : {}),
    };
    if (m.comment !== undefined) map.comment = safeComment(m.comment);
    const els = m.elements;
    if (els instanceof AddressSet) {
      if (els.length) map.elem = Array.from({ length: els.length }, (_, i) => els.text(i));
    } else if (els.length) {
      const keyJson = (el: MapElement): Json => (el.key.length === 1 ? keyPartJson(el.key[0]!) : { concat: el.key.map(keyPartJson) });
      map.elem = m.set ? els.map(keyJson) : els.map((el) => [keyJson(el), verdictJson(el.verdict)]);
    }
    cmds.push({ add: m.set ? { set: map } : { map } });
  }
  table.chains.forEach((c, ci) => {
    c.rules.forEach((r, ri) => {
      const named = counterNames[ci]![ri];
      const first = r.exprs.findIndex((e) => e.kind === 'counter');
      const rule: Record<string, Json> = { family, table: tname, chain: c.name, expr: r.exprs.map((e, i) => exprJson(e, i === first ? named : undefined)) };
      if (r.comment !== undefined) rule.comment = safeComment(r.comment);
      cmds.push({ add: { rule } });
    });
  });
  return { nftables: cmds };
}
