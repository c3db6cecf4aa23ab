/**
 * The drift repair planner (pure): what transaction repairs a foreign change
 * to our table that the drift monitor saw, so that a repair costs what
 * drifted, not the whole table (issue 18 item 4: within 1 s at 100k members).
 *
 * - Only rules of our chains and elements of our sets and maps changed, and
 *   the monitor named them (`Drift.scope`): `restore`, one transaction that
 *   flushes each of those chains and adds its rules again (their named
 *   counter objects stayed, so every rule keeps counting: nft/counters.ts)
 *   and refills each of those sets and maps (`restoreSet`: the very
 *   members removed when our listener reported their keys, else every
 *   element added again, flushed first only if the set gained elements),
 *   plus the generation marker. A rule inserted, a chain flushed or a
 *   member removed costs a few rules or elements; a member set flushed
 *   costs its elements, nothing else.
 * - Our table was deleted (`Drift.tableDeleted`): `recreate`, the applied
 *   compiled table as a replacement, without compiling and without reading
 *   counters first (they went with the table: nothing to carry).
 * - Only rules and elements of ours, but not provably which (no scope, a
 *   name that is not one of ours, an anonymous set's elements without a rule
 *   change, no generation marker to verify by): `in-place`, the applied
 *   table reloaded in place (sync-plan.ts reloadApplied), as before.
 * - Anything else (a foreign object added, ours deleted, a drift found by a
 *   read-back): null, the reconciler's replacement after a compile, with
 *   the counters read first.
 *
 * Exactness: a restore leaves each touched chain, set and map exactly as
 * applied, and the monitor said nothing else changed, so the table is what
 * a full reload gives. A chain or set gone meanwhile makes the restore fail
 * whole (nft's transaction is atomic); the reconciler then reloads in place
 * and, failing that, replaces the table.
 */
import { AddressSet } from '../policy/address-set.js';
import { MARKER_SET, memberElement, type VerdictMap } from '../nft/model.js';
import type { Drift } from '../nft/readback.js';
import type { NftOp } from '../nft/transaction.js';
import { fullReload, reloadApplied, type AppliedBase, type SyncPlan } from './sync-plan.js';

export type RepairKind = 'restore' | 'in-place' | 'recreate';

/** The anonymous set of a rule (`{ 80, 443 }` inline): it comes and goes with its rule. */
const isAnonymous = (name: string) => name.startsWith('__set');

/** How to repair `d` on the table applied as `applied` (which of the kinds: `repairHow`); null: a replacement after a compile (see the file note). */
export function planRepair(applied: AppliedBase, d: Drift): SyncPlan | null {
  if (d.tableDeleted) return { ...fullReload(applied.compiled), fresh: true };
  if (!d.inPlace) return null;
  const inPlace = reloadApplied(applied);
  const table = applied.compiled.table;
  const marker = table.marker;
  if (!d.scope || marker === undefined) return inPlace;
  const sets = d.scope.sets.filter((n) => !isAnonymous(n) && n !== MARKER_SET);
  const named = d.scope.chains.length + d.scope.sets.length;
  // nothing named, or an anonymous set's elements changed with no rule change (not a rule's set coming or going)
  if (named === 0 || (d.scope.chains.length === 0 && d.scope.sets.some(isAnonymous))) return inPlace;
  const chains = d.scope.chains.map((n) => table.chains.find((c) => c.name === n));
  const maps = sets.map((n) => table.maps.find((m) => m.name === n));
  if (chains.includes(undefined) || maps.includes(undefined)) return inPlace;
  const at = { family: table.family, table: table.name };
  const ops: NftOp[] = [
    ...maps.map((m) => restoreSet(m!, d.scope!, at)),
    ...chains.map((c): NftOp => ({ op: 'restore-chain', ...at, chain: c! })),
    { op: 'set-marker', ...at, text: marker },
  ];
  const added = ops.reduce((n, op) => n + (op.op === 'restore-chain' ? op.chain.rules.length : op.op === 'restore-elements' ? op.map.elements.length : op.op === 'update-elements' ? op.add.length : 0), 0);
  return { kind: 'incremental', via: 'restore', compiled: applied.compiled, tx: { ...at, ops }, tableComment: applied.tableComment, added, removed: 0 };
}

/**
 * The op that restores set `m`: a member set that only lost elements whose
 * keys the listener reported gets exactly those back (each must be a member
 * of ours); any other plain set that only lost elements gets every element
 * added again without a flush (the kernel skips what it holds); a set that
 * gained elements, and every verdict or interval map (where an element held
 * again must not be judged a clash), is flushed and refilled.
 */
function restoreSet(m: VerdictMap, scope: NonNullable<Drift['scope']>, at: { family: 'inet'; table: string }): NftOp {
  if (scope.setsAddedTo.includes(m.name) || !m.set || m.interval) return { op: 'restore-elements', ...at, map: m };
  const keys = scope.removedKeys?.get(m.name);
  const els = m.elements;
  if (keys && els instanceof AddressSet && !m.interval) {
    const digits = els.family === 4 ? 8 : 32;
    const members = [...new Set(keys)].map((hex) => (hex.length === digits ? BigInt(`0x${hex}`) : -1n));
    if (members.every((x) => x >= 0n && els.has(x))) {
      return { op: 'update-elements', ...at, map: m.name, keyType: m.keyType, remove: [], add: members.map((x) => memberElement(els.family, x)) };
    }
  }
  return { op: 'restore-elements', ...at, map: m, addOnly: true };
}

/** What a sync's transaction did, for the repair log: a plan of planRepair's, or a replacement (`replace`) or another sync's (`update`). */
export type RepairHow = RepairKind | 'replace' | 'update';

export function repairHow(plan: SyncPlan): RepairHow {
  if (plan.kind === 'full') return plan.inPlace ? 'in-place' : plan.fresh ? 'recreate' : 'replace';
  return plan.kind === 'incremental' && plan.via === 'restore' ? 'restore' : 'update';
}

/**
 * Is `nft monitor` paused around `plan` (DriftWatch before/after)? nft
 * 1.0.6's monitor dies of SIGSEGV on a transaction that creates an interval
 * map with concatenated keys with its elements (every full reload) or that
 * deletes and adds elements of one (a restore that refills it; seen here
 * with `flush map` + `add element`, and `delete element` + `add element`).
 * Our own listener is never paused (drift-monitor.ts).
 */
export function pausesMonitor(plan: SyncPlan): boolean {
  if (plan.kind === 'full') return true;
  return plan.kind === 'incremental' && plan.via === 'restore' && plan.tx.ops.some((op) => op.op === 'restore-elements' && op.map.interval && op.map.keyType.length > 1);
}
