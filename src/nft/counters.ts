/**
 * Rule counters carried over a full reload (pure), as `iptables-restore
 * --counters` does: before the table is replaced, the counts of our rules are
 * read, and each rule of the new table whose identity is unchanged starts
 * from its old counts, in the same atomic transaction (render.ts writes
 * `counter packets N bytes M`). So `nft list` and `secgroup status` never go
 * backwards on a reload; element updates never touch rules, so never counters.
 *
 * A rule's identity is its chain and its comment: a user rule's chain is
 * named after its group and rule ids (`r_<hash>`, names.ts) and its rule
 * carries `group/rule`; the base chains' counted rules carry fixed comments
 * ("default: no rule matched", "stateful: invalid packets"). Rules without a
 * comment, and comments seen twice in one chain, have no identity and start
 * from zero. Packets counted between the read and the commit are not carried
 * (milliseconds of traffic).
 */
import type { ChainReadback, Counter } from './readback.js';

/** Counts per rule identity (`counterKey`). */
export type RuleCounters = ReadonlyMap<string, Counter>;

/** The identity of the rule with `comment` in `chain`. */
export function counterKey(chain: string, comment: string): string {
  return `${chain}\n${comment}`;
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
