/**
 * The agent's side of nft rule counters: what goes into the metrics after a
 * read, and what a full reload carries into the new table (nft/counters.ts).
 * Kept out of the reconciler, which only calls these at the right moments.
 */
import { errorMessage } from '../lib/errors.js';
import type { Logger } from '../lib/logger.js';
import type { Compiled } from '../nft/compile.js';
import type { RuleCounters } from '../nft/counters.js';
import type { Counter } from '../nft/readback.js';
import type { NftRunner } from '../nft/runner.js';
import type { AgentMetrics } from './metrics.js';

/** Feeds the counters of the compiled policy's rule chains into the per-rule metrics. */
export function observeRuleCounters(metrics: AgentMetrics, compiled: Compiled, counters: ReadonlyMap<string, Counter>): void {
  const values = [];
  for (const r of compiled.rules) {
    const counter = counters.get(r.chain);
    if (counter) values.push({ key: { chain: r.chain, group: r.groupId, rule: r.ruleId, direction: r.direction }, counter });
  }
  metrics.observeRuleCounters(values);
}

/**
 * Our rules' counts to carry over a full reload; null when there is no table
 * (or no counted rule), or when it cannot be read: logged, and the reload
 * goes on with counters from zero. Never throws.
 */
export async function countsToCarry(nft: NftRunner, logger: Logger): Promise<RuleCounters | null> {
  try {
    const counters = await nft.readRuleCounters();
    return counters?.size ? counters : null;
  } catch (e) {
    logger.warn({ event: 'counters_not_carried', err: e }, `cannot read rule counters before the reload, they restart from zero: ${errorMessage(e)}`);
    return null;
  }
}
