/**
 * One nft transaction as typed operations on our table. Runners take these,
 * never text: the real runner renders them with `renderTransaction` and pipes
 * the script into `nft -f -` (one atomic batch); the fake applies them to an
 * in-memory table.
 */
import type { RuleCounters } from './counters.js';
import { assertName, type Chain, type KeyType, type MapElement, type Table, type VerdictMap } from './model.js';

export type NftOp =
  /**
   * replace the whole table (create-if-missing, delete, define); `counters`: rule counts carried into it;
   * `previous`: the table in the kernel, reloaded in place, its counters kept (counters.ts); fails whole when the kernel holds another
   */
  | { op: 'replace-table'; table: Table; counters?: RuleCounters; previous?: Table }
  /** remove the table; no error when it is absent */
  | { op: 'delete-table'; family: 'inet'; name: string }
  /** element changes of one verdict map; deletions are rendered before additions */
  | { op: 'update-elements'; family: 'inet'; table: string; map: string; keyType: KeyType[]; remove: MapElement[]; add: MapElement[] }
  /** replace the generation marker (MARKER_SET) of an existing table */
  | { op: 'set-marker'; family: 'inet'; table: string; text: string }
  /** flush an existing chain of ours and add `chain`'s rules again (named counters keep counting: counters.ts); a drift repair */
  | { op: 'restore-chain'; family: 'inet'; table: string; chain: Chain }
  /**
   * flush an existing set or map of ours and add `map`'s elements again; a drift repair. `addOnly`: it only lost
   * elements, so every element is added again without the flush (the kernel skips those it holds, cheaper than a flush)
   */
  | { op: 'restore-elements'; family: 'inet'; table: string; map: VerdictMap; addOnly?: true };

export interface NftTransaction {
  family: 'inet';
  /** the only table the transaction may touch */
  table: string;
  ops: NftOp[];
}

/** Throws if an op names any table other than `tx.table`: a runner must never touch another table. */
export function assertOwnTable(tx: NftTransaction): void {
  assertName(tx.table);
  for (const op of tx.ops) {
    const name = op.op === 'replace-table' ? op.table.name : op.op === 'delete-table' ? op.name : op.table;
    const family = op.op === 'replace-table' ? op.table.family : op.family;
    const previous = op.op === 'replace-table' ? op.previous : undefined;
    if (name !== tx.table || family !== tx.family || (previous && (previous.name !== name || previous.family !== family))) throw new Error(`internal: transaction for table ${tx.family} ${tx.table} touches ${family} ${name}`);
  }
}

export function replaceTableTx(table: Table, counters?: RuleCounters): NftTransaction {
  return { family: table.family, table: table.name, ops: [counters ? { op: 'replace-table', table, counters } : { op: 'replace-table', table }] };
}

export function deleteTableTx(family: 'inet', name: string): NftTransaction {
  return { family, table: name, ops: [{ op: 'delete-table', family, name }] };
}

/** A full reload of our table in place over `previous`, the table the agent applied last (counters kept, see counters.ts). */
export function reloadInPlaceTx(table: Table, previous: Table): NftTransaction {
  return { family: table.family, table: table.name, ops: [{ op: 'replace-table', table, previous }] };
}
