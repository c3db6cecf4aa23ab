/**
 * The sync planner: what one sync of the reconciler does, decided before nft
 * is touched (kube-proxy's `syncProxyRules` with `needFullSync`). The
 * reconciler then applies and verifies the one transaction planned, and on a
 * failed element update asks for a full reload instead.
 *
 * In order:
 * - a member delta (`ChangeHint`) on the applied revision: element updates of
 *   the applied table without compiling (nft/membership.ts), when its checks
 *   pass;
 * - else compile; the same ruleset as applied: nothing to do (`noop`);
 * - only map elements differ: element updates (nft/diff.ts);
 * - else a full reload (`replace-table`): in place over the applied table when
 *   the kernel holds it (counters kept without reading them, nft/counters.ts;
 *   the table's comment stays), else a replacement of the table.
 * `needFullSync` (the last sync failed, or drift was found) skips all but the
 * replacement; `incremental: false` skips the element updates. A drift the
 * monitor saw is planned by repair-plan.ts instead (restores of what it
 * touched, `reloadApplied` in place, or the applied table recreated; no
 * compile).
 *
 * Pure except for one documented effect: a membership plan updates the
 * applied `Compiled` in place (that is how the fast path avoids copying big
 * maps), so after it fails to apply only a full reload is right.
 */
import { compilePolicy, type Compiled } from '../nft/compile.js';
import { elementUpdateNarrows, planElementUpdate } from '../nft/diff.js';
import { applyMembershipChange, type MembershipChange } from '../nft/membership.js';
import { reloadInPlaceTx, replaceTableTx, type NftTransaction } from '../nft/transaction.js';
import type { PlatformOptions } from '../policy/platform.js';
import type { Policy } from '../policy/schema.js';

/** What changed since revision `base`: only these remote-group members (a protocol `policy_delta`). */
export interface ChangeHint {
  base: number;
  groups: MembershipChange;
}

/** What the planner needs of the applied state. */
export interface AppliedBase {
  revision: number;
  compiled: Compiled;
  tableComment: string | null;
  fingerprint: string;
}

export interface SyncInput {
  policy: Policy;
  change: ChangeHint | null;
  applied: AppliedBase | null;
  /** the table name and platform options to compile with */
  table: string;
  platform: PlatformOptions;
  /** element-level updates allowed */
  incremental: boolean;
  /** only a full reload will do (the last sync failed, or the table drifted) */
  needFullSync: boolean;
}

/**
 * One sync: `tableComment` is the comment the table has after it (a full
 * reload sets it, nothing else can), `membershipFull` why a member delta was
 * compiled instead (for the log).
 */
export type SyncPlan = (
  | { kind: 'noop'; compiled: Compiled; tableComment: string | null; fingerprint: string }
  /** `restore`: a drift repair of the chains and sets a foreign change touched (repair-plan.ts); if it fails, `reloadApplied` */
  | {
      kind: 'incremental';
      via: 'membership' | 'elements' | 'restore';
      compiled: Compiled;
      tx: NftTransaction;
      tableComment: string | null;
      added: number;
      removed: number;
      /** membership and elements: false when no connection the rules allow now can be denied after it (nft/membership.ts, nft/diff.ts `elementUpdateNarrows`); absent: it may */
      narrows?: boolean;
    }
  /**
   * `inPlace`: tx reloads the applied table in place; if it fails, `fullReload(compiled)` replaces the table.
   * `fresh`: a replacement of a table known to be gone (a drift repair): no counts to read and carry
   */
  | { kind: 'full'; compiled: Compiled; tx: NftTransaction; tableComment: string | null; inPlace?: true; fresh?: true }
) & { membershipFull?: string };

/** A full reload of `compiled` that replaces the table. */
export function fullReload(compiled: Compiled): SyncPlan & { kind: 'full' } {
  return { kind: 'full', compiled, tx: replaceTableTx(compiled.table), tableComment: compiled.table.comment ?? null };
}

/**
 * A reload in place of the applied table exactly as applied, without
 * compiling: the repair of a drift that only added or removed rules and
 * elements of our own chains and sets (`Drift.inPlace`). Counter objects
 * stay, so no counts are read; if an object of ours turns out to be missing
 * the reconciler replaces the table instead (`fullReload`).
 */
export function reloadApplied(applied: AppliedBase): SyncPlan & { kind: 'full' } {
  const table = applied.compiled.table;
  return { kind: 'full', inPlace: true, compiled: applied.compiled, tx: reloadInPlaceTx(table, table), tableComment: applied.tableComment };
}

export function planSync(i: SyncInput): SyncPlan {
  const prev = i.applied;
  const base = prev && !i.needFullSync && i.incremental ? prev : null;
  let membershipFull: string | undefined;
  if (i.change && base && i.change.base === base.revision) {
    const fast = applyMembershipChange(base.compiled, i.policy, i.change.groups);
    if (fast.ok) {
      const tx: NftTransaction = { family: 'inet', table: i.table, ops: fast.ops };
      return { kind: 'incremental', via: 'membership', compiled: fast.compiled, tx, tableComment: base.tableComment, added: fast.added, removed: fast.removed, narrows: fast.narrows };
    }
    membershipFull = fast.reason;
  }
  const compiled = compilePolicy(i.policy, { table: i.table, platform: i.platform });
  const why = membershipFull === undefined ? {} : { membershipFull };
  if (prev && !i.needFullSync && prev.compiled.digest === compiled.digest) {
    return { kind: 'noop', compiled, tableComment: prev.tableComment, fingerprint: prev.fingerprint, ...why };
  }
  const elements = base ? planElementUpdate(base.compiled.table, compiled.table) : null;
  if (elements && base) {
    const tx: NftTransaction = { family: 'inet', table: i.table, ops: elements.ops };
    const narrows = elementUpdateNarrows(base.compiled.table, compiled.table, compiled.rules, elements.ops);
    return { kind: 'incremental', via: 'elements', compiled, tx, tableComment: base.tableComment, added: elements.added, removed: elements.removed, narrows, ...why };
  }
  if (prev && !i.needFullSync) {
    return { kind: 'full', inPlace: true, compiled, tx: reloadInPlaceTx(compiled.table, prev.compiled.table), tableComment: prev.tableComment, ...why };
  }
  return { ...fullReload(compiled), ...why };
}
