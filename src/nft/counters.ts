/**
 * Rule counters kept over a full reload (pure), as `iptables-restore
 * --counters` does, so `nft list` and `secgroup status` never go backwards on
 * a reload; element updates never touch rules, so never counters.
 *
 * Every counted rule with an identity counts into a named counter object of
 * our table (`counter name "c_<hash>"`, the name a function of the identity,
 * names.ts). A full reload of a table the agent applied itself reloads it in
 * place, without reading anything first: one transaction flushes the rules,
 * deletes the previous chains, maps and sets and the counters whose rules are
 * gone, and defines the new table, whose `counter c_... {}` declarations keep
 * the values of the counters that exist (the kernel keeps an object's state on
 * `add`; checked in test/kernel/counters.test.ts). The table itself, and so
 * its comment, stays (the kernel does not change a table's comment). Reading
 * counts first was as slow as the reload at 100k members: nft 1.0.6 loads
 * every set element for any listing.
 *
 * When the agent does not know what is in the kernel (first sync, after a
 * failure or drift, or when the in-place reload fails), the table is replaced
 * (`delete table`) and the counts read before it are carried in its
 * declarations (`counter c_... { packets N bytes M }`).
 *
 * A rule's identity is its chain and its comment: a user rule's chain is
 * named after its group and rule ids (`r_<hash>`, names.ts) and its rule
 * carries `group/rule`; the base chains' counted rules carry fixed comments
 * ("default: no rule matched", "stateful: invalid packets"). Rules without a
 * comment, and comments seen twice in one chain, have no identity and start
 * from zero. Packets counted between the read and the commit are not carried
 * (milliseconds of traffic).
 */
import type { Chain, Table } from './model.js';
import { counterObjectName } from './names.js';
import type { ChainReadback, Counter } from './readback.js';

/** Counts per rule identity (`counterKey`). */
export type RuleCounters = ReadonlyMap<string, Counter>;

/** The identity of the rule with `comment` in `chain`. */
export function counterKey(chain: string, comment: string): string {
  return `${chain}\n${comment}`;
}

/**
 * The counter object name of each rule of `chain` (by index): only rules with
 * a counter and a comment seen once in the chain (an identity); undefined for
 * the others, which keep an anonymous counter.
 */
export function ruleCounterNames(chain: Chain): (string | undefined)[] {
  // one rule (every user rule's chain): its comment is seen once, no count needed
  if (chain.rules.length === 1) {
    const r = chain.rules[0]!;
    return [r.comment !== undefined && r.exprs.some((e) => e.kind === 'counter') ? counterObjectName(counterKey(chain.name, r.comment)) : undefined];
  }
  const seen = new Map<string, number>();
  for (const r of chain.rules) if (r.comment !== undefined) seen.set(r.comment, (seen.get(r.comment) ?? 0) + 1);
  return chain.rules.map((r) =>
    r.comment !== undefined && seen.get(r.comment) === 1 && r.exprs.some((e) => e.kind === 'counter') ? counterObjectName(counterKey(chain.name, r.comment)) : undefined,
  );
}

/**
 * The counter objects a table declares, in the order of its chains and
 * rules, with the counts `counters` carries into each (undefined: from
 * zero); `names`: ruleCounterNames of each chain. What render.ts writes as
 * `counter NAME { ... }` and netlink-batch.ts sends as NEWOBJ.
 */
export function* counterDeclarations(table: Table, names: readonly (readonly (string | undefined)[])[], counters?: RuleCounters): Generator<{ name: string; carried: Counter | undefined }> {
  for (let k = 0; k < table.chains.length; k++) {
    const c = table.chains[k]!;
    const chainNames = names[k]!;
    for (let j = 0; j < chainNames.length; j++) {
      const name = chainNames[j];
      if (name !== undefined) yield { name, carried: counters?.get(counterKey(c.name, c.rules[j]!.comment!)) };
    }
  }
}

/** Every counter object of `table` (ruleCounterNames of all its chains). */
export function tableCounterNames(table: Table): Set<string> {
  const out = new Set<string>();
  for (const c of table.chains) for (const n of ruleCounterNames(c)) if (n !== undefined) out.add(n);
  return out;
}

/** Counts past 2^53 lost precision in nft's JSON: such a rule starts from zero rather than from a wrong count. */
function carriable(c: Counter): boolean {
  return Number.isSafeInteger(c.packets) && Number.isSafeInteger(c.bytes) && c.packets >= 0 && c.bytes >= 0;
}

/** The counters of every identified rule of a read-back (its first counter), skipping comments that repeat within a chain and counts that cannot be carried exactly. */
export function ruleCounters(chains: readonly ChainReadback[]): Map<string, Counter> {
  const out = new Map<string, Counter>();
  for (const c of chains) {
    const seen = new Set<string>();
    for (const r of c.rules) {
      if (r.comment === null) continue;
      const key = counterKey(c.name, r.comment);
      if (seen.has(key)) out.delete(key);
      else if (r.counter && carriable(r.counter)) out.set(key, { ...r.counter });
      seen.add(key);
    }
  }
  return out;
}

/** The first counter of each chain (chain name -> counter): what `NftRunner.readCounters` returns, for the per-rule metrics. */
export function chainCounters(chains: readonly ChainReadback[]): Map<string, Counter> {
  const out = new Map<string, Counter>();
  for (const c of chains) {
    const counter = c.rules.find((r) => r.counter)?.counter;
    if (counter) out.set(c.name, counter);
  }
  return out;
}
