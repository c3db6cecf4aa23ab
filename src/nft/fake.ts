/**
 * In-memory nft for unit tests: applies transactions to a copy of the table
 * model, reads it back like the real runner, counts calls, and lets a test
 * break things (fail the next call, hold an apply, delete or flush the table,
 * edit it behind the agent's back, set counters).
 */
import { createHash } from 'node:crypto';
import { bigintAsHex, elementId } from './diff.js';
import { AddressSet } from '../policy/address-set.js';
import { MARKER_SET, elementList, type Chain, type MapElement, type Table } from './model.js';
import { counterKey, ruleCounters, type RuleCounters } from './counters.js';
import type { ChainReadback, Counter, TableReadback } from './readback.js';
import { renderTable } from './render.js';
import { nftFailed, nftMissingObject, type NftInfo, type NftRunner } from './runner.js';
import { assertOwnTable, type NftTransaction } from './transaction.js';

type Method = 'probe' | 'check' | 'apply' | 'readTable' | 'readCounters' | 'readRuleCounters' | 'readMarker';

/**
 * A copy that shares nothing the agent or this fake changes later: the table,
 * its maps and chains and their element and rule arrays (the membership fast
 * path edits element arrays in place; a test's flushTable empties rule
 * arrays). Elements and rules themselves are never changed, so they are
 * shared (structuredClone of a big table with bigints took ~25 ms per apply).
 */
const clone = (t: Table): Table => ({
  ...t,
  maps: t.maps.map((m) => ({ ...m, keyType: [...m.keyType], elements: m.elements instanceof AddressSet ? m.elements.clone() : m.elements.slice() })),
  chains: t.chains.map((c) => ({ ...c, rules: c.rules.slice() })),
});
/** The address of a member set's element (a packed set holds single addresses only, as the kernel's set would refuse anything else). */
const memberOf = (set: AddressSet, el: MapElement): bigint => {
  const k = el.key[0];
  if (el.key.length !== 1 || k?.kind !== 'addr' || k.family !== set.family || k.lo !== k.hi) throw nftFailed('nft -f', 'element does not fit the set');
  return k.lo;
};
const firstKey = (el: MapElement): string => {
  const k = el.key[0];
  return k === undefined ? '' : `${k.lo}-${k.hi}`;
};

export class FakeNft implements NftRunner {
  readonly family = 'inet' as const;
  readonly table: string;
  /** the table as the "kernel" holds it; null = absent */
  state: Table | null = null;
  /** every call, in order */
  readonly calls: { method: Method; tx?: NftTransaction }[] = [];
  private readonly failures: { method: Method; error: unknown }[] = [];
  private holds: { method: Method; release: Promise<void> }[] = [];
  private readonly counters = new Map<string, Counter>();
  /** something that changes the fingerprint without changing counts (a rule replaced by hand) */
  private tampered = 0;

  private readonly version: string;

  constructor(opts: { table?: string; version?: string } = {}) {
    this.table = opts.table ?? 'secgroup';
    this.version = opts.version ?? '1.0.6';
  }

  count(method: Method): number {
    return this.calls.filter((c) => c.method === method).length;
  }

  /** The next call of `method` throws `error` (queued, one per call). */
  failNext(method: Method, error: unknown = nftFailed('nft -f', 'injected failure')): void {
    this.failures.push({ method, error });
  }

  /** The next call of `method` waits until the returned function is called. */
  hold(method: Method): () => void {
    let release!: () => void;
    const p = new Promise<void>((r) => (release = r));
    this.holds.push({ method, release: p });
    return release;
  }

  /**
   * The table as the "kernel" holds it, as nft text (render.ts renderTable,
   * listing form: elements sorted, so the order updates added them in does
   * not show); '' when there is no table. For tests that compare a whole
   * resulting table with a golden text or with a fresh compile's
   * `renderTable(table, { listing: true })` (knftables' Fake.Dump).
   */
  dump(): string {
    return this.state ? renderTable(this.state, { listing: true }) : '';
  }

  /** `nft delete table` by someone else */
  deleteTable(): void {
    this.state = null;
  }

  /** `nft flush table` by someone else: chains stay, their rules go */
  flushTable(): void {
    if (this.state) for (const c of this.state.chains) c.rules = [];
  }

  /** the generation marker element replaced by someone else (e.g. another agent's table of the same name) */
  setMarker(text: string): void {
    if (this.state) this.state.marker = text;
  }

  /** a hand edit that keeps every count (e.g. `nft replace rule`) */
  tamper(): void {
    this.tampered++;
  }

  /** sets the counter of the rule(s) in `chain` */
  setCounter(chain: string, packets: number, bytes: number): void {
    this.counters.set(chain, { packets, bytes });
  }

  private async enter(method: Method, tx?: NftTransaction): Promise<void> {
    this.calls.push(tx ? { method, tx } : { method });
    const h = this.holds.findIndex((x) => x.method === method);
    if (h >= 0) {
      const [hold] = this.holds.splice(h, 1);
      await hold!.release;
    }
    const f = this.failures.findIndex((x) => x.method === method);
    if (f >= 0) {
      const [failure] = this.failures.splice(f, 1);
      throw failure!.error;
    }
  }

  async probe(): Promise<NftInfo> {
    await this.enter('probe');
    return { version: this.version, tableExists: this.state !== null };
  }

  private run(tx: NftTransaction, state: Table | null, dryRun = false): Table | null {
    assertOwnTable(tx);
    if (tx.table !== this.table) throw new Error(`internal: fake for ${this.table} got ${tx.table}`);
    if (state && tx.ops.every((op) => op.op === 'update-elements' || op.op === 'set-marker')) return this.runUpdates(tx, state, dryRun);
    let t = state ? clone(state) : null;
    for (const op of tx.ops) {
      if (op.op === 'replace-table') t = op.previous ? reloadInPlace(t, op.table, op.previous) : clone(op.table);
      else if (op.op === 'delete-table') t = null;
      else if (op.op === 'set-marker') {
        if (!t || t.marker === undefined) throw nftMissingObject('nft -f', `set ${MARKER_SET}`);
        t.marker = op.text;
      } else if (op.op === 'restore-chain') {
        const chain = t?.chains.find((c) => c.name === op.chain.name);
        if (!chain) throw nftMissingObject('nft -f', `chain ${op.chain.name}`);
        chain.rules = op.chain.rules.slice();
      } else if (op.op === 'restore-elements') {
        const map = t?.maps.find((m) => m.name === op.map.name);
        if (!map) throw nftMissingObject('nft -f', `map ${op.map.name}`);
        const want = op.map.elements;
        // addOnly: what the set holds stays (foreign additions too, as in the kernel), every element of ours is added
        if (!op.addOnly) map.elements = want instanceof AddressSet ? want.clone() : want.slice();
        else if (map.elements instanceof AddressSet && want instanceof AddressSet) for (let i = 0; i < want.length; i++) map.elements.insert(want.at(i));
        else {
          const held = new Set(elementList(map).map(elementId));
          map.elements = [...elementList(map), ...elementList({ elements: want }).filter((el) => !held.has(elementId(el)))];
        }
      } else {
        const map = t?.maps.find((m) => m.name === op.map);
        if (!map) throw nftMissingObject('nft -f', `map ${op.map}`);
        const set = map.elements;
        if (set instanceof AddressSet) {
          for (const el of op.remove) if (!set.delete(memberOf(set, el))) throw nftMissingObject('nft -f', 'element');
          for (const el of op.add) set.insert(memberOf(set, el));
          continue;
        }
        const ids = new Set(op.remove.map(elementId));
        const before = map.elements.length;
        const kept = set.filter((el) => !ids.has(elementId(el)));
        if (before - kept.length !== ids.size) throw nftMissingObject('nft -f', 'element');
        kept.push(...op.add.map((el) => structuredClone(el)));
        map.elements = kept;
      }
    }
    return t;
  }

  /**
   * Element and marker changes without copying the table (big tables, many
   * fake agents): every op is checked first, then applied, so a failing
   * transaction changes nothing, as in the kernel. Returns the same table.
   */
  private runUpdates(tx: NftTransaction, t: Table, dryRun = false): Table {
    const plans: { map: Table['maps'][number]; remove: Set<MapElement>; add: MapElement[] }[] = [];
    const setPlans: { set: AddressSet; remove: bigint[]; add: bigint[] }[] = [];
    let marker: string | undefined;
    for (const op of tx.ops) {
      if (op.op === 'set-marker') {
        if (t.marker === undefined) throw nftMissingObject('nft -f', `set ${MARKER_SET}`);
        marker = op.text;
        continue;
      }
      if (op.op !== 'update-elements') continue;
      const map = t.maps.find((m) => m.name === op.map);
      if (!map) throw nftMissingObject('nft -f', `map ${op.map}`);
      const set = map.elements;
      if (set instanceof AddressSet) {
        const gone = op.remove.map((el) => memberOf(set, el));
        if (gone.some((x) => !set.has(x)) || new Set(gone).size !== gone.length) throw nftMissingObject('nft -f', 'element');
        setPlans.push({ set, remove: gone, add: op.add.map((el) => memberOf(set, el)) });
        continue;
      }
      const remove = new Set(op.remove.map(elementId));
      // ids only for elements whose first key part can match (a JSON id per element of a big map made every update O(map))
      const firsts = new Set(op.remove.map(firstKey));
      const gone = remove.size ? set.filter((el) => firsts.has(firstKey(el)) && remove.has(elementId(el))) : [];
      if (gone.length !== remove.size) throw nftMissingObject('nft -f', 'element');
      plans.push({ map, remove: new Set(gone), add: op.add });
    }
    if (dryRun) return t;
    for (const p of plans) {
      const els = elementList(p.map);
      p.map.elements = p.remove.size ? els.filter((el) => !p.remove.has(el)) : els;
      for (const el of p.add) p.map.elements.push(el);
    }
    for (const p of setPlans) {
      for (const x of p.remove) p.set.delete(x);
      for (const x of p.add) p.set.insert(x);
    }
    if (marker !== undefined) t.marker = marker;
    return t;
  }

  async check(tx: NftTransaction): Promise<void> {
    await this.enter('check', tx);
    this.run(tx, this.state, true);
  }

  async apply(tx: NftTransaction): Promise<void> {
    await this.enter('apply', tx);
    const replaced = tx.ops.some((op) => op.op === 'replace-table' || op.op === 'delete-table');
    this.state = this.run(tx, this.state);
    if (!replaced) return;
    const last = tx.ops.findLast((op) => op.op === 'replace-table');
    if (last?.previous && this.state) {
      // in place: a chain's counter stays when its counted rule keeps its identity
      const before = new Map(last.previous.chains.map((c) => [c.name, counterIdentity(c)]));
      for (const c of this.state.chains) if (counterIdentity(c) === undefined || before.get(c.name) !== counterIdentity(c)) this.counters.delete(c.name);
      for (const name of [...this.counters.keys()]) if (!this.state.chains.some((c) => c.name === name)) this.counters.delete(name);
      return;
    }
    // a new table starts from zero, except the counts carried into it (the first counted rule of a chain)
    this.counters.clear();
    const carried = last?.counters;
    for (const c of carried && this.state ? this.state.chains : []) {
      const rule = c.rules.find((r) => r.comment !== undefined && r.exprs.some((e) => e.kind === 'counter'));
      const counter = rule && carried!.get(counterKey(c.name, rule.comment!));
      if (counter) this.counters.set(c.name, { ...counter });
    }
  }

  async readCounters(): Promise<Map<string, Counter> | null> {
    await this.enter('readCounters');
    if (!this.state) return null;
    const out = new Map<string, Counter>();
    for (const c of this.state.chains) {
      if (c.rules.some((r) => r.exprs.some((e) => e.kind === 'counter'))) out.set(c.name, { ...(this.counters.get(c.name) ?? { packets: 0, bytes: 0 }) });
    }
    return out;
  }

  async readRuleCounters(): Promise<RuleCounters | null> {
    await this.enter('readRuleCounters');
    return this.state && ruleCounters(this.chainReadback(this.state));
  }

  async readMarker(): Promise<string | null> {
    await this.enter('readMarker');
    return this.state?.marker ?? null;
  }

  /** Chains as read back: every counted rule of a chain shows the chain's counter (setCounter). */
  private chainReadback(t: Table): ChainReadback[] {
    return t.chains.map((c) => ({
      name: c.name,
      rules: c.rules.map((r) => ({
        comment: r.comment ?? null,
        counter: r.exprs.some((e) => e.kind === 'counter') ? { ...(this.counters.get(c.name) ?? { packets: 0, bytes: 0 }) } : null,
      })),
    }));
  }

  async readTable(opts: { elements?: boolean } = {}): Promise<TableReadback | null> {
    await this.enter('readTable');
    const elements = opts.elements ?? true;
    const t = this.state;
    if (!t) return null;
    const structure = createHash('sha256')
      .update(JSON.stringify({ ...t, comment: undefined, marker: undefined, maps: t.maps.map((m) => ({ ...m, elements: undefined })), tampered: this.tampered }, bigintAsHex))
      .digest('hex')
      .slice(0, 32);
    const elementHash = elements
      ? createHash('sha256')
          .update(JSON.stringify(t.maps.map((m) => (m.elements instanceof AddressSet ? Buffer.from(m.elements.bytes()).toString('hex') : m.elements)), bigintAsHex))
          .digest('hex')
          .slice(0, 32)
      : '';
    const fingerprint = `${structure}.${elementHash}`;
    return {
      family: 'inet',
      name: t.name,
      comment: t.comment ?? null,
      marker: elements ? (t.marker ?? null) : null,
      withElements: elements,
      chains: this.chainReadback(t),
      maps: t.maps.map((m) => ({ name: m.name, elements: elements ? m.elements.length : null })),
      fingerprint,
    };
  }
}

/** The comment of a chain's first counted rule with a comment: what the fake keys a chain's counter by. */
function counterIdentity(c: Chain): string | undefined {
  return c.rules.find((r) => r.comment !== undefined && r.exprs.some((e) => e.kind === 'counter'))?.comment;
}

/**
 * What the kernel does with a reload in place (render.ts renderReloadInPlace):
 * fails unless it holds every object of `previous`; keeps the table's comment.
 * (Objects added by hand would stay in the kernel, empty; the fake drops them.)
 */
function reloadInPlace(state: Table | null, table: Table, previous: Table): Table {
  const names = (t: Table) => [...t.chains.map((c) => `chain ${c.name}`), ...t.maps.map((m) => `map ${m.name}`), ...(t.marker !== undefined ? [`set ${MARKER_SET}`] : [])];
  if (!state) throw nftMissingObject('nft -f', `table ${table.family} ${table.name}`);
  const held = new Set(names(state));
  const missing = names(previous).find((n) => !held.has(n));
  if (missing !== undefined) throw nftMissingObject('nft -f', missing);
  const next = clone(table);
  if (state.comment === undefined) delete next.comment;
  else next.comment = state.comment;
  return next;
}
