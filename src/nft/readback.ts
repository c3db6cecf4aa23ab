/**
 * Reading our table back (pure parsing and comparison). The runner lists the
 * table twice: `nft -j list table` for structure and counters, and
 * `nft -t list table` (text, terse) for the table comment, because nft 1.0.6
 * leaves table and chain comments out of its JSON output.
 */
import { createHash } from 'node:crypto';
import { SecgroupError } from '../lib/errors.js';
import { MARKER_SET, type Table } from './model.js';

export interface Counter {
  packets: number;
  bytes: number;
}

export interface RuleReadback {
  comment: string | null;
  /** the first counter of the rule, null when it has none */
  counter: Counter | null;
}

export interface ChainReadback {
  name: string;
  rules: RuleReadback[];
}

export interface MapReadback {
  name: string;
  /** null when read without elements (`nft -t`) */
  elements: number | null;
}

export interface TableReadback {
  family: 'inet';
  name: string;
  /** the table comment (`secgroup digest=... revision=... instance=...`), null if none */
  comment: string | null;
  /** the generation marker (see MARKER_SET); null if absent or read without elements */
  marker: string | null;
  /** read with elements (a full listing), so `marker` and map element counts are known */
  withElements: boolean;
  chains: ChainReadback[];
  maps: MapReadback[];
  /**
   * `<structure>.<elements>`: hashes of the content without handles and
   * counter values, split so that a read without elements (`nft -t`, after
   * an apply: `<structure>.`) can be compared with a full one. Compare with
   * `sameFingerprint`: the element part counts only when both reads have it.
   */
  fingerprint: string;
}

type Obj = Record<string, unknown>;

function isObj(x: unknown): x is Obj {
  return typeof x === 'object' && x !== null && !Array.isArray(x);
}

/** Drops handles, counter values and map elements (hashed apart), so two reads of an untouched table hash the same. */
function stable(x: unknown): unknown {
  if (Array.isArray(x)) return x.map(stable);
  if (!isObj(x)) return x;
  const out: Obj = {};
  for (const [k, v] of Object.entries(x)) {
    if (k === 'handle' || k === 'elem') continue;
    out[k] = k === 'counter' ? {} : stable(v);
  }
  return out;
}

/** Equal structure, and equal elements where both fingerprints include them (see TableReadback.fingerprint). */
export function sameFingerprint(a: string, b: string): boolean {
  const [sa, ea = ''] = a.split('.');
  const [sb, eb = ''] = b.split('.');
  return sa === sb && (ea === '' || eb === '' || ea === eb);
}

/** Does the fingerprint include map elements (a full read)? */
export function hasElementFingerprint(f: string): boolean {
  return (f.split('.')[1] ?? '') !== '';
}

/** The table comment from `nft -t list table inet NAME` text (first line after the table header). */
export function parseTableComment(text: string): string | null {
  const lines = text.split('\n');
  const i = lines.findIndex((l) => /^table \S+ \S+ \{$/.test(l.trim()));
  const next = i >= 0 ? lines[i + 1]?.trim() : undefined;
  const m = next ? /^comment "(.*)"$/.exec(next) : null;
  return m ? m[1]! : null;
}

/**
 * Parses `nft -j list table inet NAME` plus the terse text listing.
 * Throws SecgroupError NFT_FAILED when the JSON is not what nft prints.
 */
export function parseTableReadback(json: string, terseText: string, family: 'inet', name: string, withElements = true): TableReadback {
  let doc: unknown;
  try {
    doc = JSON.parse(json);
  } catch (e) {
    throw new SecgroupError('NFT_FAILED', `nft -j list table ${family} ${name} printed something that is not JSON`, { cause: e });
  }
  const items = isObj(doc) && Array.isArray(doc.nftables) ? (doc.nftables as unknown[]) : null;
  if (!items) throw new SecgroupError('NFT_FAILED', `nft -j list table ${family} ${name}: no "nftables" array in the output`);
  const chains = new Map<string, ChainReadback>();
  const maps: MapReadback[] = [];
  const content: unknown[] = [];
  const elems = createHash('sha256');
  let marker: string | null = null;
  const objects = new Map<string, Counter>();
  const named: { rule: RuleReadback; name: string }[] = [];
  for (const item of items) {
    if (!isObj(item) || 'metainfo' in item) continue;
    if (isObj(item.set) && item.set.name === MARKER_SET && item.set.table === name && item.set.family === family) {
      // the marker changes with every transaction: neither structure nor elements
      marker = markerOf(item.set);
      continue;
    }
    content.push(item);
    if (isObj(item.chain)) {
      const c = item.chain;
      if (c.table !== name || c.family !== family) continue;
      chains.set(String(c.name), { name: String(c.name), rules: [] });
    } else if (isObj(item.map) || isObj(item.set)) {
      const m = (item.map ?? item.set) as Obj;
      if (m.table !== name || m.family !== family) continue;
      maps.push({ name: String(m.name), elements: withElements ? (Array.isArray(m.elem) ? m.elem.length : 0) : null });
      if (withElements) elems.update(`${String(m.name)}:${JSON.stringify(m.elem ?? [])}\n`);
    } else if (isObj(item.rule)) {
      const r = item.rule;
      if (r.table !== name || r.family !== family) continue;
      const chain = chains.get(String(r.chain));
      if (!chain) continue;
      let counter: Counter | null = null;
      let counterName: string | null = null;
      for (const e of Array.isArray(r.expr) ? r.expr : []) {
        if (!isObj(e)) continue;
        if (isObj(e.counter)) counter = counterOf(e.counter);
        // a named counter (counters.ts): its counts are in the counter object, resolved below
        else if (typeof e.counter === 'string') counterName = e.counter;
        else continue;
        break;
      }
      const rule: RuleReadback = { comment: typeof r.comment === 'string' ? r.comment : null, counter };
      chain.rules.push(rule);
      if (counterName !== null) named.push({ rule, name: counterName });
    } else if (isObj(item.counter)) {
      const c = item.counter;
      if (c.table === name && c.family === family) objects.set(String(c.name), counterOf(c));
    }
  }
  for (const n of named) n.rule.counter = objects.get(n.name) ?? null;
  const structure = createHash('sha256').update(JSON.stringify(stable(content))).digest('hex').slice(0, 32);
  const fingerprint = `${structure}.${withElements ? elems.digest('hex').slice(0, 32) : ''}`;
  return { family, name, comment: parseTableComment(terseText), marker, withElements, chains: [...chains.values()], maps, fingerprint };
}

function counterOf(c: Obj): Counter {
  return { packets: Number(c.packets ?? 0), bytes: Number(c.bytes ?? 0) };
}

function markerOf(set: Obj): string | null {
  const elem = Array.isArray(set.elem) ? (set.elem as unknown[]) : [];
  for (const e of elem) {
    const inner = isObj(e) && isObj(e.elem) ? e.elem : null;
    if (inner && typeof inner.comment === 'string') return inner.comment;
  }
  return null;
}

/**
 * The generation marker from `nft -j list set inet NAME sg_generation`
 * (null when the set holds no marker). Throws NFT_FAILED on output that is not nft's JSON.
 */
export function parseMarker(json: string, family: 'inet', name: string): string | null {
  let doc: unknown;
  try {
    doc = JSON.parse(json);
  } catch (e) {
    throw new SecgroupError('NFT_FAILED', `nft -j list set ${family} ${name} ${MARKER_SET} printed something that is not JSON`, { cause: e });
  }
  const items = isObj(doc) && Array.isArray(doc.nftables) ? (doc.nftables as unknown[]) : [];
  for (const item of items) {
    if (isObj(item) && isObj(item.set) && item.set.name === MARKER_SET && item.set.table === name && item.set.family === family) return markerOf(item.set);
  }
  return null;
}

export type DriftKind = 'missing' | 'comment' | 'structure' | 'modified';

export interface Drift {
  kind: DriftKind;
  detail: string;
  /** only rules and elements of our own chains and sets changed (the drift monitor saw the transaction): a reload in place restores the table exactly, no replacement needed */
  inPlace?: true;
  /** with `inPlace`: the chains whose rules and the sets and maps whose elements changed, nothing else (what agent/repair-plan.ts restores alone) */
  scope?: { chains: string[]; sets: string[]; setsAddedTo: string[]; removedKeys?: Map<string, string[]> };
  /** our table was deleted (the drift monitor saw it), its counters with it: nothing to carry into the repair */
  tableDeleted?: true;
}

/**
 * Does the table read back hold what we meant to apply? Checks the comment
 * (digest), then every chain's rule count and every map's element count
 * against the model (a flush empties chains but keeps the comment), then the
 * fingerprint against the one taken right after our own apply (catches a rule
 * replaced by hand with the same count). Element counts are skipped for maps
 * read without elements. Returns null when everything matches.
 */
export function findDrift(
  expected: { table: Table; comment: string | null; fingerprint?: string | null },
  rb: TableReadback | null,
): Drift | null {
  const t = expected.table;
  if (!rb) return { kind: 'missing', detail: `table ${t.family} ${t.name} does not exist` };
  if (rb.comment !== expected.comment) return { kind: 'comment', detail: `table comment is ${JSON.stringify(rb.comment)}, expected ${JSON.stringify(expected.comment)}` };
  if (rb.withElements && rb.marker !== (t.marker ?? null)) {
    return { kind: 'comment', detail: `generation marker is ${JSON.stringify(rb.marker)}, expected ${JSON.stringify(t.marker ?? null)}` };
  }
  const chainNames = t.chains.map((c) => c.name).sort();
  const seenChains = rb.chains.map((c) => c.name).sort();
  if (chainNames.join() !== seenChains.join()) return { kind: 'structure', detail: `chains differ: expected ${chainNames.length}, found ${seenChains.length}` };
  for (const c of t.chains) {
    const got = rb.chains.find((x) => x.name === c.name)!;
    if (got.rules.length !== c.rules.length) return { kind: 'structure', detail: `chain ${c.name} has ${got.rules.length} rules, expected ${c.rules.length}` };
  }
  const mapNames = t.maps.map((m) => m.name).sort();
  const seenMaps = rb.maps.map((m) => m.name).sort();
  if (mapNames.join() !== seenMaps.join()) return { kind: 'structure', detail: `maps differ: expected ${mapNames.length}, found ${seenMaps.length}` };
  for (const m of t.maps) {
    const got = rb.maps.find((x) => x.name === m.name)!;
    if (got.elements !== null && got.elements !== m.elements.length) return { kind: 'structure', detail: `map ${m.name} has ${got.elements} elements, expected ${m.elements.length}` };
  }
  if (expected.fingerprint && !sameFingerprint(rb.fingerprint, expected.fingerprint)) return { kind: 'modified', detail: 'table content changed since it was applied' };
  return null;
}

/**
 * The cheap drift check: only the generation marker (`readMarker`, cost
 * independent of the map sizes) against the one `table` carries. Sees a
 * deleted, recreated or replaced table; not an edit inside it.
 */
export function findMarkerDrift(table: Table, marker: string | null): Drift | null {
  const expected = table.marker ?? null;
  if (marker === expected) return null;
  if (marker === null) return { kind: 'missing', detail: `table ${table.family} ${table.name} or its generation marker is missing` };
  return { kind: 'comment', detail: `generation marker is ${JSON.stringify(marker)}, expected ${JSON.stringify(expected)}` };
}
