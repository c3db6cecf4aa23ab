/**
 * The sync loop: desired policy -> compile -> render -> check -> apply (one
 * transaction) -> report -> verify -> persist (element updates are verified
 * before the report, full reloads right after it: see "Verified after the ack").
 *
 * - Bursts coalesce: `submit` only records the newest desired revision; one
 *   loop applies whatever is newest when it gets to it. A revision replaced
 *   before its turn is reported `superseded`.
 * - Never backwards: a revision older than the newest one accepted (applied,
 *   in flight or pending) is reported `stale` and not applied. The one
 *   exception is a revision the controller declared authoritative (its
 *   `welcome` was behind ours: a restored database): it is accepted and the
 *   order restarts from it, so the agent converges on the controller's state.
 * - No-op: a policy that compiles to the ruleset already applied costs no nft
 *   call (the new revision is still recorded and persisted).
 * - Incremental: when only verdict-map elements change, they are changed in
 *   one transaction; any doubt or failure falls back to a full reload.
 * - Counters: a full reload keeps our rules' counts (nft/counters.ts): in
 *   place over the table applied last, else carried by reading them first
 *   (that read is started before the compile: nft lists the table while the
 *   agent compiles, on the other core).
 * - Verified after the ack: a full reload is reported applied when `nft -f`
 *   exits 0 (its transaction is atomic: the kernel holds all of it). The
 *   generation-marker read that checks it (one more nft process, ~15-20 ms,
 *   up to a fifth of `nft -f` at 1k rules) follows the ack, under the
 *   mutex, before the next sync. What it still catches: an `nft` that exits
 *   0 without applying (a wrapper that swallows a failure,
 *   docs/security-agent-faults.md) and a table replaced or deleted right
 *   after our commit. Either way the revision is then reported `failed`
 *   (VERIFY_FAILED, after its `applied`), the previous one counts as
 *   applied again and the sync is retried as a full reload, as when the
 *   read ran before the ack. Element updates keep the read before the ack
 *   (unless the monitor covers the table, see below).
 * - Failure: nft's transaction is atomic, so the previous ruleset stays; the
 *   failure is reported once per revision, the next attempt is a full reload,
 *   retried with exponential backoff until it works or a newer revision comes.
 * - Last known good: written after each applied revision, but after
 *   element updates (member deltas, a stream of them at 100k members) at
 *   most once per `persistCoalesceMs` (a trailing write takes the newest):
 *   state-writer.ts. The file is always one complete good policy; after a
 *   crash it may be up to `persistCoalesceMs` older than what was applied,
 *   and the controller's newer revision follows on the next connection.
 *   Full reloads, failures and `stop` write at once.
 * - Drift: `checkDrift` reads the table back (all of it, or only the
 *   generation marker when a monitor watches the table: see
 *   drift-monitor.ts) and re-applies on any difference; `repairDrift`
 *   repairs a change the monitor saw (what, planned in repair-plan.ts). `isOwnMarker` tells the monitor
 *   which transactions are ours (the markers of the last ones sent). While
 *   the monitor covers the table, element updates skip the marker read-back
 *   (nft's transaction is atomic; a foreign change is the monitor's to see).
 *
 * What one sync does (nothing, element updates or a full reload) is decided
 * by the planner in sync-plan.ts; `syncOnce` applies and verifies that one
 * transaction, falling back to a full reload when element updates fail.
 *
 * One mutex serialises syncs, drift checks and counter reads, so a read never
 * races our own apply.
 *
 * Size: one sync loop with the checks and repairs that share its mutex and
 * its applied state; what a sync does is planned in sync-plan.ts, checked
 * after it in verify-applied.ts, what the monitor saw is judged in
 * drift-monitor.ts, the last known good is written by state-writer.ts; the
 * options and outcome types are in reconciler-types.ts.
 */
import type { Timer } from '../lib/clock.js';
import { SecgroupError, asSecgroupError, errorMessage } from '../lib/errors.js';
import type { Compiled } from '../nft/compile.js';
import type { ClearResult } from '../nft/conntrack.js';
import { chainCounters, type RuleCounters } from '../nft/counters.js';
import { composeMembershipChanges } from '../nft/membership.js';
import { findDrift, findMarkerDrift, hasElementFingerprint, type Counter, type Drift, type TableReadback } from '../nft/readback.js';
import { replaceTableTx, type NftOp, type NftTransaction } from '../nft/transaction.js';
import { flowChainOps, isFlowChain, flowMaskOf, hex, maxGeneration, setFlowGeneration } from '../nft/flow-mark.js';
import type { PlatformOptions } from '../policy/platform.js';
import { packedGroupCount } from '../policy/packed-members.js';
import type { Policy } from '../policy/schema.js';
import type { DriftWatch } from './drift-monitor.js';
import { countsToCarry, observeRuleCounters } from './rule-counters.js';
import { burstWork } from './footprint.js';
import type { AppliedState, FlowMarkState, PolicySource, ReconcilerOptions, SyncKind, SyncOutcome } from './reconciler-types.js';
import { CoalescedStateWriter } from './state-writer.js';
import { verifyApplied } from './verify-applied.js';
import { fullReload, planSync, reloadApplied, type ChangeHint, type SyncPlan } from './sync-plan.js';
import { pausesMonitor, planRepair, repairHow, type RepairHow } from './repair-plan.js';
import { Mutex } from '../lib/mutex.js';

export type { ChangeHint } from './sync-plan.js';
export type { AppliedState, FlowMarkState, PolicySource, ReconcilerOptions, SyncKind, SyncOutcome } from './reconciler-types.js';

interface Desired {
  policy: Policy;
  source: PolicySource;
  /** when set: the policy is the document of revision `change.base` with only these member changes */
  change: ChangeHint | null;
  waiters: ((o: SyncOutcome) => void)[];
  /** its failure was already reported (retries are silent) */
  reported: boolean;
}

/** One sync's result; `verifyMarker`: a full reload's (or restore's) marker, read after the ack (checkAfterAck); `how`: what the transaction did (the repair log). */
type SyncResult = { ok: true; kind: SyncKind; durationMs: number; digest: string; verifyMarker?: string; how?: RepairHow } | { ok: false; error: SecgroupError };

/** What a sync replaces, kept by the loop so a failed check after the ack can put it back (checkAfterAck). */
interface BeforeSync {
  applied: AppliedState | null;
  unsaved: Policy | null;
}

/** How many recent transactions' markers count as ours (a burst of syncs may be reported after the next one was sent). */
const OWN_MARKERS = 4;

/** After a failed conntrack sweep the next waits this long, doubling up to the max (reconciler `armCleared`). */
const FLOW_SWEEP_BACKOFF_MS = 60_000;
const FLOW_SWEEP_BACKOFF_MAX_MS = 3_600_000;

/** `tx` with the flow chain restores `flowOps` last (any restore of those chains it had dropped: they carry the old generation). */
function withFlowOps(tx: NftTransaction, flowOps: NftOp[]): NftTransaction {
  if (!flowOps.length) return tx;
  const kept = tx.ops.filter((op) => !(op.op === 'restore-chain' && isFlowChain(op.chain.name)));
  return { ...tx, ops: [...kept, ...flowOps] };
}

/** The counts a replacement of a table known to be absent carries: none. */
const NOTHING_TO_CARRY: Promise<RuleCounters | null> = Promise.resolve(null);

export class Reconciler {
  private readonly o: Required<Omit<ReconcilerOptions, 'onOutcome' | 'heapBurst' | 'flowMarks'>> & Pick<ReconcilerOptions, 'onOutcome' | 'heapBurst' | 'flowMarks'>;
  private platform: PlatformOptions;
  private pending: Desired | null = null;
  private inFlight: Desired | null = null;
  private applied: AppliedState | null = null;
  private loopRunning: Promise<void> | null = null;
  private retryTimer: Timer | null = null;
  private retryAttempt = 0;
  private forceFull = false;
  /** our table was found absent just now (noteTableAbsent): the next sync reads no counters to carry */
  private absentAtProbe = false;
  private lastError: SecgroupError | null = null;
  private stopped = false;
  private readonly mutex = new Mutex();
  /** the last known good, written after syncs (coalesced after element updates) */
  private readonly lastGood: CoalescedStateWriter;
  /** revision of the newest accepted submission (-1: none): older ones are stale */
  private newest = -1;
  /** generation markers of the last transactions sent (isOwnMarker) */
  private sentMarkers: string[] = [];
  private driftWatch: DriftWatch | null = null;
  /** the flow mark as last sent (nft/flow-mark.ts; `nextFlowGeneration`, `startArming`); `missing`: conntrack(8) is not installed, not tried again */
  private flow: FlowMarkState & { missing: boolean; nextTryAt: number; backoffMs: number } = { mask: 0, generation: 0, armed: false, reason: null, missing: false, nextTryAt: 0, backoffMs: 0 };
  /** counts the flow mark's epochs (a new one at generation 1, or the mark turned off): a sweep arms only the epoch it started in */
  private flowEpoch = 0;
  /** the sweep and arming of the current epoch, while under way (`startArming`) */
  private arming: Promise<void> | null = null;

  constructor(opts: ReconcilerOptions) {
    this.o = { retryInitialMs: 1000, retryMaxMs: 60_000, incremental: true, checkBeforeApply: true, persistCoalesceMs: 0, ...opts };
    this.platform = opts.platform;
    const { store, clock, logger, metrics } = this.o;
    this.lastGood = new CoalescedStateWriter({
      store,
      clock,
      logger,
      metrics,
      coalesceMs: this.o.persistCoalesceMs,
      serialize: (write) => this.mutex.run(write),
      busy: () => this.loopRunning !== null,
    });
  }

  /** What is enforced now (null until the first successful sync). */
  get state(): AppliedState | null {
    return this.applied;
  }

  /** The flow mark as last sent to the kernel (nft/flow-mark.ts). */
  get flowMark(): FlowMarkState {
    const { mask, generation, armed, reason } = this.flow;
    return { mask, generation, armed, reason };
  }

  get appliedRevision(): number | null {
    return this.applied?.revision ?? null;
  }

  /** The revision waiting to be applied (after a failure, or while a sync runs). */
  get pendingRevision(): number | null {
    return (this.pending ?? this.inFlight)?.policy.revision ?? null;
  }

  /** The newest document this reconciler holds: waiting, being applied, or applied (the base of the next delta). */
  get newestPolicy(): Policy | null {
    return (this.pending ?? this.inFlight)?.policy ?? this.applied?.policy ?? null;
  }

  get error(): SecgroupError | null {
    return this.lastError;
  }

  /** The revision of the newest document accepted (applied, in flight or pending); null: none. */
  get newestRevision(): number | null {
    return this.newest >= 0 ? this.newest : null;
  }

  /**
   * Records `policy` as desired and resolves with what became of it: applied,
   * failed (first failure; retries go on), superseded or stale. Never rejects.
   * `authoritative`: accepted even when older than what this reconciler has,
   * and later revisions are ordered after it (the controller's state wins
   * after a database restore; the caller decides when that applies).
   */
  submit(policy: Policy, source: PolicySource, change: ChangeHint | null = null, opts: { authoritative?: boolean } = {}): Promise<SyncOutcome> {
    return new Promise((resolve) => {
      const rev = policy.revision;
      if (this.stopped) {
        resolve({ status: 'failed', revision: rev, error: new SecgroupError('INTERNAL', 'the agent is stopping: not applied'), source, retryInMs: 0 });
        return;
      }
      const current = this.newest;
      if (rev < current && !opts.authoritative) {
        this.emit({ status: 'stale', revision: rev, current, source }, [resolve]);
        return;
      }
      this.newest = rev;
      let waiters: ((o: SyncOutcome) => void)[] = [resolve];
      const old = this.pending;
      // a delta on top of a waiting delta: one change against the older base
      if (change && old && change.base === old.policy.revision) change = old.change ? { base: old.change.base, groups: composeMembershipChanges(old.change.groups, change.groups) } : null;
      else if (change && old) change = null;
      if (old && old.policy.revision === rev) waiters = [...old.waiters, resolve];
      else if (old && !old.reported) this.emit({ status: 'superseded', revision: old.policy.revision, by: rev, source: old.source }, old.waiters);
      this.pending = { policy, source, change, waiters, reported: false };
      this.kick(true);
    });
  }

  /**
   * The caller has just listed our table and found none (the agent's
   * start-up probe): the next full apply then reads no counters to carry (a
   * table that does not exist has none), so only nft itself is on its path.
   * Holds for the next sync only, or until the drift monitor reports a
   * change to our table (repairDrift). Should another writer create the
   * table unseen in between, that apply still replaces it; only that
   * table's counts are not carried.
   */
  noteTableAbsent(): void {
    this.absentAtProbe = true;
  }

  /** New platform options (e.g. the controller's addresses changed): re-applies the current policy if its ruleset changes. */
  setPlatform(platform: PlatformOptions): void {
    this.platform = platform;
    if (this.applied && !this.pending) {
      this.pending = { policy: this.applied.policy, source: 'platform', change: null, waiters: [], reported: false };
      this.kick(true);
    }
  }

  /**
   * Reads our table back and, if it is missing or differs from what we
   * applied, re-applies it (full reload). Returns the drift found, or null.
   * A full check (default) lists the table with its elements and feeds the
   * per-rule counters into the metrics; `{ elements: false }` reads only the
   * generation marker (milliseconds at any map size: a deleted or replaced
   * table, not an edit inside it; for when a monitor sees edits). Never throws.
   */
  async checkDrift(opts: { elements?: boolean } = {}): Promise<Drift | null> {
    if (this.stopped) return null;
    return this.mutex.run(async () => {
      const applied = this.applied;
      if (!applied || this.stopped) return null;
      let d: Drift | null;
      try {
        d = opts.elements === false ? findMarkerDrift(applied.compiled.table, await this.o.nft.readMarker()) : this.compareFull(applied, await this.o.nft.readTable());
      } catch (e) {
        this.o.logger.warn({ event: 'drift_check_failed', err: e }, `cannot read table back: ${errorMessage(e)}`);
        return null;
      }
      if (d) await this.repair(applied, d, 'check');
      return d;
    });
  }

  /**
   * Re-applies what is enforced now (full reload) after a change `found`
   * elsewhere (the monitor saw a transaction on our table that was not
   * ours). Resolves when repaired or failed (the next check retries). Never throws.
   */
  async repairDrift(found: Drift): Promise<void> {
    if (this.stopped) return;
    // someone changed our table: it may exist now, whatever the start-up probe found
    this.absentAtProbe = false;
    await this.mutex.run(async () => {
      const applied = this.applied;
      if (applied && !this.stopped) await this.repair(applied, found, 'monitor');
    });
  }

  /** The drift monitor, told right before and after each full reload goes to nft (it pauses around them); null: nobody. */
  setDriftWatch(watch: DriftWatch | null): void {
    this.driftWatch = watch;
  }

  /**
   * Sends the applied generation marker once more (`set-marker` with the
   * same text: one tiny transaction of our own on our table). A restarted
   * `nft monitor` that reports it has subscribed (drift-monitor.ts). False
   * when nothing is applied or nft failed (the table is gone: the next check
   * finds it). Never throws.
   */
  async probeMonitor(): Promise<boolean> {
    if (this.stopped) return false;
    return this.mutex.run(async () => {
      const marker = this.applied?.compiled.table.marker;
      if (this.stopped || marker === undefined) return false;
      const { nft, logger } = this.o;
      if (!this.sentMarkers.includes(marker)) this.sentMarkers = [...this.sentMarkers.slice(1 - OWN_MARKERS), marker];
      try {
        await nft.apply({ family: nft.family, table: nft.table, ops: [{ op: 'set-marker', family: nft.family, table: nft.table, text: marker }] });
        return true;
      } catch (e) {
        logger.debug({ event: 'monitor_probe_failed', err: e }, `cannot send the monitor probe: ${errorMessage(e)}`);
        return false;
      }
    });
  }

  /** Is `marker` the generation marker of one of the last transactions this reconciler sent? */
  isOwnMarker(marker: string): boolean {
    return this.sentMarkers.includes(marker);
  }

  private compareFull(applied: AppliedState, rb: TableReadback | null): Drift | null {
    if (rb) this.observeCounters(chainCounters(rb.chains));
    const d = findDrift({ table: applied.compiled.table, comment: applied.tableComment, fingerprint: applied.fingerprint }, rb);
    // after an apply the fingerprint has no element part (verifyApplied reads without elements):
    // the first clean full read supplies it, so later element swaps show as drift
    if (!d && rb && !hasElementFingerprint(applied.fingerprint)) applied.fingerprint = rb.fingerprint;
    return d;
  }

  /** Under the mutex: re-applies `applied` (full reload), logs and counts it. */
  private async repair(applied: AppliedState, d: Drift, via: 'check' | 'monitor'): Promise<void> {
    const { logger, metrics, clock } = this.o;
    logger.warn({ event: 'drift', revision: applied.revision, drift: d.kind, via }, `our table drifted (${d.detail}): re-applying revision ${applied.revision}`);
    metrics.driftRepairs.inc({ kind: d.kind });
    const t0 = clock.monotonic();
    // Repair what is enforced now, even while a newer revision waits for a retry:
    // a newer revision that keeps failing must not leave the host without its table.
    // The last sync was clean: what the monitor saw decides what is restored, no compile (repair-plan.ts); else a replacement.
    const planned = !this.forceFull && this.applied === applied ? planRepair(applied, d) : null;
    if (!planned) this.forceFull = true;
    const r = await this.checkAfterAck(await this.syncOnce(applied.policy, 'drift', null, planned));
    if (!r.ok) {
      metrics.applyFailures.inc({ code: r.error.code });
      logger.error({ event: 'drift_repair_failed', revision: applied.revision, via, err: r.error }, `drift repair failed (next check retries): ${r.error.message}`);
      return;
    }
    // a repair that started a new flow mark epoch arms it, as a loop's sync does after its ack
    this.startArming();
    logger.info(
      { event: 'drift_repaired', revision: applied.revision, drift: d.kind, detail: d.detail, via, inPlace: r.how === 'in-place', repair: r.how, durationMs: Math.max(0, clock.monotonic() - t0) },
      `drift repaired (${via}): revision ${applied.revision} re-applied after ${d.detail}`,
    );
  }

  /** Reads rule counters into the metrics (for a scrape; no map elements are read). Never throws. */
  async refreshCounters(): Promise<void> {
    await this.mutex.run(async () => {
      if (!this.applied) return;
      try {
        const counters = await this.o.nft.readCounters();
        if (counters) this.observeCounters(counters);
      } catch (e) {
        this.o.logger.debug({ event: 'counters_failed', err: e }, 'cannot read counters');
      }
    });
  }

  /** Resolves when no sync is running (a retry may still be scheduled). */
  async idle(): Promise<void> {
    while (this.loopRunning || this.arming) {
      await this.loopRunning;
      await this.arming;
    }
  }

  /** Stops retries and waits for a running sync; the ruleset stays in place. */
  async stop(): Promise<void> {
    this.stopped = true;
    this.retryTimer?.cancel();
    this.retryTimer = null;
    await this.idle();
    // a trailing write that was still waiting (element updates coalesced): written now
    await this.lastGood.flush();
  }

  private observeCounters(counters: ReadonlyMap<string, Counter>): void {
    if (this.applied) observeRuleCounters(this.o.metrics, this.applied.compiled, counters);
  }

  private emit(o: SyncOutcome, waiters: ((o: SyncOutcome) => void)[]): void {
    for (const w of waiters) w(o);
    this.o.onOutcome?.(o);
  }

  /** Starts the loop if it is not running; `now` cancels a scheduled retry (new information). */
  private kick(now: boolean): void {
    if (this.stopped) return;
    if (now && this.retryTimer) {
      this.retryTimer.cancel();
      this.retryTimer = null;
    }
    if (this.loopRunning || this.retryTimer) return;
    this.loopRunning = Promise.resolve()
      .then(() => this.loop())
      .finally(() => {
        this.loopRunning = null;
        // a submit that landed after the loop's last check of `pending` but before this point
        if (this.pending && !this.retryTimer) this.kick(false);
      });
  }

  private async loop(): Promise<void> {
    try {
      await this.loopSyncs();
    } finally {
      // stopped (or nothing left) with an applied revision not written yet (unless a trailing write is due)
      if (this.stopped || !this.lastGood.trailingDue) await this.lastGood.writeNow();
    }
  }

  private async loopSyncs(): Promise<void> {
    while (this.pending && !this.stopped) {
      const d = this.pending;
      this.pending = null;
      this.inFlight = d;
      let before: BeforeSync = { applied: null, unsaved: null };
      let result = await this.mutex.run(() => {
        before = { applied: this.applied, unsaved: this.lastGood.pending };
        return this.syncOnce(d.policy, d.source, d.change);
      });
      this.inFlight = null;
      if (result.ok) {
        this.retryAttempt = 0;
        this.lastError = null;
        this.emit(
          { status: 'applied', revision: d.policy.revision, kind: result.kind, durationMs: result.durationMs, digest: result.digest, source: d.source },
          d.waiters,
        );
        if (result.verifyMarker !== undefined) {
          const acked = result;
          result = await this.mutex.run(() => this.checkAfterAck(acked, before));
        }
        // a new flow mark epoch is armed after the ack, in the background: its sweep of the conntrack table (0.03 s at 1k marked
        // connections, 0.8 s at 200k) holds back neither the ack nor the syncs after it
        if (result.ok) this.startArming();
      }
      if (result.ok) {
        // after the ack (a 1M-member document: ~60 ms of CPU and the disk's fsync), before the next sync; when a newer
        // revision already waits, it goes first and what is applied after it is written (below, or after its own sync)
        if (!this.pending) await this.lastGood.afterSync(result.kind === 'incremental');
        continue;
      }
      // a failed sync leaves the last applied revision in place: that one is the last known good
      await this.lastGood.writeNow();
      const newer = this.pending !== null;
      const delay = Math.min(this.o.retryMaxMs, this.o.retryInitialMs * 2 ** this.retryAttempt);
      this.retryAttempt++;
      this.lastError = result.error;
      this.o.metrics.applyFailures.inc({ code: result.error.code });
      this.o.logger.error(
        { event: 'apply_failed', revision: d.policy.revision, code: result.error.code, err: result.error, retryInMs: newer ? 0 : delay, attempt: this.retryAttempt },
        `revision ${d.policy.revision} was not applied (the previous ruleset stays): ${result.error.message}`,
      );
      if (!d.reported) {
        d.reported = true;
        this.emit({ status: 'failed', revision: d.policy.revision, error: result.error, source: d.source, retryInMs: newer ? 0 : delay }, d.waiters);
        d.waiters = [];
      }
      if (newer) continue;
      this.pending = d;
      this.retryTimer = this.o.clock.setTimeout(() => {
        this.retryTimer = null;
        this.kick(false);
      }, delay);
      return;
    }
  }

  /**
   * One sync: the planner (sync-plan.ts) decides what it does, `applyPlan`
   * applies and verifies it; a failed element update falls back to a full
   * reload in the same sync. Any failure makes the next sync a full one.
   */
  private async syncOnce(
    policy: Policy,
    source: PolicySource,
    change: ChangeHint | null = null,
    repair: SyncPlan | null = null,
  ): Promise<SyncResult> {
    const { nft, clock, logger } = this.o;
    const t0 = clock.monotonic();
    const log = { revision: policy.revision, source };
    const endBurst = change === null && !repair ? this.o.heapBurst?.(burstWork(policy)) : undefined;
    try {
      const input = { policy, change, applied: this.applied, table: nft.table, platform: this.platform, incremental: this.o.incremental };
      // nothing applied yet, or a full sync forced: the plan replaces the table, carrying the counts read from it;
      // the read starts before the compile, so nft lists the table while the agent compiles (runner.ts: a read is on its way when called)
      // a table known to be absent (the start-up probe found none, a repair recreates a deleted one) has no counts to read
      const absent = this.absentAtProbe || (repair?.kind === 'full' && repair.fresh === true);
      const replacing = !repair && (!this.applied || this.forceFull);
      let carried = absent ? NOTHING_TO_CARRY : replacing ? countsToCarry(nft, logger) : null;
      this.absentAtProbe = false;
      let plan = repair ?? planSync({ ...input, needFullSync: this.forceFull });
      if (plan.membershipFull !== undefined) {
        logger.debug({ event: 'membership_full', ...log, reason: plan.membershipFull }, `member change needs a full compile: ${plan.membershipFull}`);
      }
      let applied: { fingerprint: string; verifyMarker?: string };
      for (;;) {
        try {
          applied = await this.applyPlan(plan, carried);
          break;
        } catch (e) {
          if (plan.kind === 'full' && plan.inPlace && asSecgroupError(e, 'sync').code === 'NFT_NOT_FOUND_OBJECT') {
            // the kernel's table is not the one applied last (an object of it is missing): replace it, counters carried by reading them
            logger.warn({ event: 'reload_in_place_failed', ...log, err: e }, `reload in place failed, replacing the table: ${errorMessage(e)}`);
            plan = fullReload(plan.compiled);
            carried = null;
            continue;
          }
          if (plan.kind !== 'incremental') throw e;
          // the fallback is a full reload in this same sync (if it fails too, the catch below forces the next one full)
          if (plan.via === 'membership') {
            // the fast path changed the applied compiled state in place: compile again
            logger.warn({ event: 'membership_failed', ...log, err: e }, `member update failed, falling back to a full reload: ${errorMessage(e)}`);
            plan = planSync({ ...input, change: null, needFullSync: true });
          } else if (plan.via === 'restore' && this.applied) {
            logger.warn({ event: 'restore_failed', ...log, err: e }, `drift restore failed (a chain or set gone?), reloading the table in place: ${errorMessage(e)}`);
            plan = reloadApplied(this.applied);
          } else {
            logger.warn({ event: 'incremental_failed', ...log, err: e }, `element update failed, falling back to a full reload: ${errorMessage(e)}`);
            plan = fullReload(plan.compiled);
          }
        }
      }
      if (plan.kind === 'incremental') {
        const detail = { ...log, added: plan.added, removed: plan.removed };
        if (plan.via === 'membership') logger.debug({ event: 'membership', ...detail }, 'member change applied as element updates');
        else if (plan.via === 'elements') logger.debug({ event: 'incremental', ...detail }, 'map elements updated');
        else logger.debug({ event: 'drift_restore', ...detail }, 'drifted chains and sets restored (rules and elements added again)');
      }
      const done = await this.finish(policy, source, plan.compiled, plan.tableComment, applied.fingerprint, plan.kind, t0);
      return { ...done, how: repairHow(plan), ...(applied.verifyMarker === undefined ? {} : { verifyMarker: applied.verifyMarker }) };
    } catch (e) {
      this.forceFull = true;
      return { ok: false, error: asSecgroupError(e, 'sync') };
    } finally {
      endBurst?.();
    }
  }

  /**
   * Checks (when configured), applies and verifies the planned transaction; returns the fingerprint to compare later reads with.
   * `carried`: the counts to carry into a replacement, read while compiling (else read here). Throws what nft or `verifyApplied` throws.
   * `verifyMarker`: a full reload whose marker read follows the ack (checkAfterAck).
   */
  private async applyPlan(plan: SyncPlan, carried: Promise<RuleCounters | null> | null): Promise<{ fingerprint: string; verifyMarker?: string }> {
    if (plan.kind === 'noop') return { fingerprint: plan.fingerprint };
    const { nft, metrics } = this.o;
    // a full reload keeps our rules' counts (nft/counters.ts): in place it keeps the counter objects, a replacement carries what it reads first (syncOnce)
    const replace = plan.kind === 'full' && !plan.inPlace;
    const restore = plan.kind === 'incremental' && plan.via === 'restore';
    const counters = replace ? await (carried ?? countsToCarry(nft, this.o.logger)) : null;
    const flowOps = this.nextFlowGeneration(plan);
    const tx = withFlowOps(counters ? replaceTableTx(plan.compiled.table, counters) : plan.tx, flowOps);
    if (this.o.checkBeforeApply) await nft.check(tx);
    // known before nft commits: the monitor may report the transaction before apply() returns
    const marker = plan.compiled.table.marker;
    if (marker !== undefined) this.sentMarkers = [...this.sentMarkers.slice(1 - OWN_MARKERS), marker];
    const watch = pausesMonitor(plan) ? this.driftWatch : null;
    watch?.before();
    try {
      await nft.apply(tx);
    } finally {
      watch?.after();
    }
    if (replace && !counters) metrics.resetRuleBaselines();
    // element updates while a monitor covers the table: nft committed them (atomic), and any foreign transaction is reported by the monitor, so the marker read-back (one more nft process per delta) adds nothing
    if (plan.kind === 'incremental' && !restore && this.driftWatch?.covers?.() === true) return { fingerprint: '' };
    // a full reload or a drift restore: nft -f exited 0, so the kernel committed all of it; its marker is read right after the ack (module comment)
    if ((plan.kind === 'full' || restore) && marker !== undefined) return { fingerprint: '', verifyMarker: marker };
    return { fingerprint: await verifyApplied(this.o.nft, plan.compiled, plan.tableComment) };
  }

  /**
   * Gives the transaction about to go out the next flow mark generation
   * (nft/flow-mark.ts): every transaction that changes what the rules
   * decide, and every repair, gets a new one, so no connection marked
   * before it skips the rules after it. The one exception is element
   * updates that cannot deny a connection allowed now (`narrows` false): a
   * member delta whose members join groups of ingress allow rules, leave
   * groups of deny rules, or change groups only egress rules use
   * (nft/membership.ts), and a whole document whose changes are such
   * members or entries added to an address group of ingress allow rules
   * (removed from one of deny rules; nft/diff.ts `elementUpdateNarrows`):
   * it keeps the generation, so connections are not matched again for
   * nothing and the transaction stays element updates. A new epoch (the first transaction,
   * a new mask, or the field about to wrap) starts at generation 1 with
   * flow_known empty; `startArming` fills it once the kernel's marks are
   * cleared. The table's flow chains are set in place; returns the restores
   * of them an incremental transaction needs (a full one carries the table).
   */
  private nextFlowGeneration(plan: SyncPlan & { kind: 'full' | 'incremental' }): NftOp[] {
    const table = plan.compiled.table;
    const mask = flowMaskOf(table);
    if (!mask) {
      if (this.flow.mask !== 0) this.flowEpoch++;
      this.flow = { ...this.flow, mask: 0, generation: 0, armed: false, reason: null };
      this.o.metrics.flowMarkArmed.set(-1);
      return [];
    }
    // element updates that cannot deny an allowed connection: the kernel's flow chains stay as they are (the fast path's table
    // shares the applied one's; a compiled table's hold generation 1 until set here)
    if (plan.kind === 'incremental' && (plan.via === 'membership' || plan.via === 'elements') && plan.narrows === false && this.flow.generation > 0 && mask === this.flow.mask) {
      setFlowGeneration(table, this.flow.generation, this.flow.armed);
      return [];
    }
    let generation = this.flow.generation + 1;
    if (this.flow.generation === 0 || mask !== this.flow.mask || generation > maxGeneration(mask)) {
      generation = 1;
      this.flow.armed = false;
      this.flowEpoch++;
    }
    this.flow.mask = mask;
    this.flow.generation = generation;
    setFlowGeneration(table, generation, this.flow.armed);
    this.o.metrics.flowMarkArmed.set(this.flow.armed ? 1 : 0);
    return plan.kind === 'incremental' ? flowChainOps(table) : [];
  }

  /** A sweep is due: unarmed, a sweeper, conntrack not missing, none under way, and any backoff after a failed sweep over (each sweep dumps the whole conntrack table). */
  private flowArmDue(): boolean {
    return this.flow.mask !== 0 && !this.flow.armed && !this.flow.missing && this.arming === null && this.o.flowMarks !== undefined && this.o.clock.monotonic() >= this.flow.nextTryAt;
  }

  /**
   * The second half of a new flow mark epoch, when one is due (`flowArmDue`),
   * once its first transaction (generation 1, flow_known empty) is in the
   * kernel and acked (after a loop's sync and after a repair): in the
   * background, so that neither the ack nor the syncs after it wait for it.
   * Clears the field on every connection (nft/conntrack.ts) outside the
   * mutex: nothing writes the field meanwhile (flow_allow keeps it at 0
   * while unarmed, whatever the syncs in between apply). Then, under the
   * mutex, arms flow_known (and flow_allow) of the table applied by then,
   * with the generation it has by then, in a transaction of its own (with
   * the marker, so the drift monitor knows it as ours); unless a new epoch
   * started meanwhile (its own sweep follows its first sync) or the
   * reconciler stops. When conntrack fails the table stays unarmed
   * (correct, at the old cost per packet) and the first sync after a
   * backoff (1 min, doubling to 1 h) tries again; when it is not installed,
   * not again. The applied state's fingerprint, when it has one, is taken
   * anew (the table's structure changed). `idle()` waits for it. Never throws.
   */
  private startArming(): void {
    if (!this.applied || this.stopped || !this.flowArmDue()) return;
    const epoch = this.flowEpoch;
    const mask = this.flow.mask;
    const run = this.o
      .flowMarks!.clear(mask)
      .then((cleared) => this.mutex.run(() => this.armCleared(epoch, mask, cleared)))
      .catch((e: unknown) => this.o.logger.warn({ event: 'flow_mark_unarmed', mask: hex(mask), err: e }, `flow mark not armed: ${errorMessage(e)}; retried at the next sync`))
      .finally(() => {
        if (this.arming !== run) return;
        this.arming = null;
        // a new epoch started during the sweep: its own sweep now (its first sync found this one under way)
        if (epoch !== this.flowEpoch) this.startArming();
      });
    this.arming = run;
  }

  /** Under the mutex, after the sweep of epoch `epoch`: arms the applied table (see `startArming`). */
  private async armCleared(epoch: number, mask: number, cleared: ClearResult): Promise<void> {
    const applied = this.applied;
    if (!applied || this.stopped || epoch !== this.flowEpoch || this.flow.armed) return;
    const { compiled, tableComment } = applied;
    const { nft, logger } = this.o;
    const { generation } = this.flow;
    if (!cleared.ok) {
      this.flow.missing = cleared.missing;
      // a sweep dumps the whole conntrack table: after a failure, the next one waits (1 min, doubling to 1 h), whatever the syncs in between
      this.flow.backoffMs = Math.min(FLOW_SWEEP_BACKOFF_MAX_MS, Math.max(FLOW_SWEEP_BACKOFF_MS, this.flow.backoffMs * 2));
      this.flow.nextTryAt = this.o.clock.monotonic() + this.flow.backoffMs;
      if (this.flow.reason !== cleared.reason) {
        logger.warn(
          { event: 'flow_mark_unarmed', mask: hex(mask), reason: cleared.reason, ...(cleared.missing ? {} : { retryInMs: this.flow.backoffMs }) },
          `flow mark not armed: ${cleared.reason}; packets from peers are matched against the rules every time (correct, slower)${cleared.missing ? '' : `; tried again with the first sync after ${Math.round(this.flow.backoffMs / 1000)} s`}`,
        );
      }
      this.flow.reason = cleared.reason;
      return;
    }
    this.flow.backoffMs = 0;
    setFlowGeneration(compiled.table, generation, true);
    const marker = compiled.table.marker;
    // flow_known accepting, flow_allow marking: both in one transaction
    const ops: NftOp[] = flowChainOps(compiled.table);
    if (marker !== undefined) ops.push({ op: 'set-marker', family: nft.family, table: nft.table, text: marker });
    try {
      await nft.apply({ family: nft.family, table: nft.table, ops });
    } catch (e) {
      setFlowGeneration(compiled.table, generation, false);
      const reason = `cannot arm flow_known: ${errorMessage(e)}`;
      if (this.flow.reason !== reason) logger.warn({ event: 'flow_mark_unarmed', mask: hex(mask), err: e }, `flow mark not armed: ${reason}; retried at the next sync`);
      this.flow.reason = reason;
      return;
    }
    this.flow.armed = true;
    this.flow.reason = null;
    this.o.metrics.flowMarkArmed.set(1);
    logger.info(
      { event: 'flow_mark_armed', mask: hex(mask), generation, cleared: cleared.updated },
      `flow mark armed: connections allowed under generation ${generation} skip the rules (marks under ${hex(mask)} cleared on ${cleared.updated} connection(s))`,
    );
    if (!applied.fingerprint || this.applied !== applied) return;
    // the fingerprint was read before flow_known changed
    let fingerprint = '';
    try {
      fingerprint = await verifyApplied(nft, compiled, tableComment);
    } catch {
      // none: the next drift check reads the table in full
    }
    this.applied = { ...applied, fingerprint };
  }

  /**
   * Under the mutex, right after a sync's ack (the loop's and a repair's):
   * checks that the table holds `result.verifyMarker`, the generation marker
   * a full reload set (verifyApplied). Returns `result` when there is no marker to
   * check, the table holds it, a later sync replaced it (that one is checked
   * instead) or the reconciler stops. Else a failed result (VERIFY_FAILED or
   * nft's error), the next sync forced full and, given `before` (the loop),
   * the state before the sync restored: as if the sync had failed at its
   * read-back, the revision before it is the one applied (and the last known
   * good). Never throws.
   */
  private async checkAfterAck(result: SyncResult, before?: BeforeSync): Promise<SyncResult> {
    const applied = this.applied;
    const marker = result.ok ? result.verifyMarker : undefined;
    if (marker === undefined || !applied || this.stopped || applied.compiled.table.marker !== marker) return result;
    try {
      await verifyApplied(this.o.nft, applied.compiled, applied.tableComment);
      return result;
    } catch (e) {
      if (before) {
        this.applied = before.applied;
        this.lastGood.pending = before.unsaved;
        if (before.applied) this.o.metrics.appliedRevision.set(before.applied.revision);
      }
      this.forceFull = true;
      return { ok: false, error: asSecgroupError(e, 'sync') };
    }
  }

  /** After a successful sync: record, count and log it (persisting follows in the loop). */
  private async finish(
    policy: Policy,
    source: PolicySource,
    compiled: Compiled,
    tableComment: string | null,
    fingerprint: string,
    kind: SyncKind,
    t0: number,
  ): Promise<SyncResult & { ok: true }> {
    const { clock, logger, metrics } = this.o;
    const log = { revision: policy.revision, source };
    const prev = this.applied;
    const durationMs = Math.max(0, clock.monotonic() - t0);
    const changed = prev?.revision !== policy.revision;
    this.applied = { policy, revision: policy.revision, compiled, tableComment, fingerprint, at: clock.now(), kind };
    this.forceFull = false;
    // saved as last known good right after the outcome is reported (see loop)
    if (changed && source !== 'disk') this.lastGood.pending = policy;
    metrics.appliedRevision.set(policy.revision);
    if (kind !== 'noop') {
      metrics.applies.inc({ kind });
      metrics.applyDuration.observe({ kind }, durationMs / 1000);
    }
    const packedGroups = packedGroupCount(policy.group_members);
    logger.info(
      {
        event: 'apply',
        ...log,
        kind,
        durationMs,
        digest: compiled.digest,
        rules: compiled.stats.rules,
        elements: compiled.stats.elements,
        // remote groups whose members the document holds packed (policy/packed-members.ts), when there are any
        ...(packedGroups ? { packedGroups } : {}),
      },
      kind === 'noop' ? `revision ${policy.revision}: ruleset unchanged, nothing to apply` : `revision ${policy.revision} applied (${kind})`,
    );
    return { ok: true, kind, durationMs, digest: compiled.digest };
  }
}
