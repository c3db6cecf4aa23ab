/**
 * Drift noticed as it happens: follows the kernel's change events for our
 * table (nft/monitor.ts) and has the reconciler re-apply its ruleset when a
 * transaction that is not ours touched it; keeps the periodic check as a
 * backstop, cheap while the monitor watches.
 *
 * - Ours or not: every transaction the agent sends sets the generation
 *   marker (nft/model.ts MARKER_SET) to a text the reconciler remembers
 *   (`isOwnMarker`). A transaction on our table without one of those
 *   markers is someone else's: a deleted table, a flushed chain or set, a
 *   rule inserted, an element added or removed. It is repaired at once, at
 *   the cost of what it changed (agent/repair-plan.ts): when it only added
 *   or removed rules and elements of ours (`Drift.inPlace`, from
 *   MonitorBatch.contentOnly) only the chains and sets it named
 *   (`Drift.scope`) are restored; a deleted table (`Drift.tableDeleted`) is
 *   recreated from the applied state; anything else replaces the table
 *   (nothing foreign may stay in it). Changes seen while a repair runs cause
 *   one more repair that covers all of them (`mergeDrifts`); when a full
 *   check was waiting too, that repair restores the whole table (`unscoped`).
 * - Two sources (an `NftMonitor` each): our own listener of the kernel's
 *   change events (nft/nftwatch.ts, native/secgroup-nftwatch.c), preferred,
 *   and `nft monitor` (nft/monitor.ts), its fallback (nftwatch.ts
 *   FallbackMonitor). The listener keeps no cache and says `ready` once
 *   subscribed (a `ready` event, milliseconds after its start at any
 *   size): that session is covered after one full check, with no probe,
 *   and it survives our own full reloads, so it is not paused around them
 *   (`announced`): a change made right after our reload is reported and
 *   repaired like any other. Probes and pauses below are for `nft monitor`.
 * - Supervised: when the monitor dies it is started again after a backoff
 *   (1 s doubling to 60 s, reset once a session has run a minute); while it
 *   is down, or after it reported lost events, the periodic check lists the
 *   whole table (elements included) as before.
 * - Covered only once proven subscribed: `nft monitor` loads its cache
 *   (every element of every set) before it subscribes, milliseconds for
 *   small tables, seconds at 10k-100k members (bench/tools/monitor-repro.ts
 *   and bench drift measure it). So after each (re)start the monitor is not
 *   trusted until it reported something: the target sends a probe (its
 *   generation marker once more, a tiny transaction of its own) after
 *   `probeInitialMs`, doubling to `probeMaxMs`, until the session reports
 *   any event. Then one full check finds whatever changed before the
 *   subscription (while no monitor ran), and from then on the periodic check
 *   reads only the generation marker: it still sees the table deleted,
 *   recreated or replaced by another writer (also if the monitor silently
 *   stopped reporting), but an edit inside the table only through the
 *   monitor. A monitor that reports nothing `readyTimeoutMs` after the
 *   first probe went out is stopped and restarted (with the backoff).
 * - Paused around the agent's own full reloads: nft 1.0.6's monitor dies
 *   (SIGSEGV) printing a transaction that creates an interval map with
 *   concatenated keys together with its elements, which a full reload does,
 *   in place (reloadInPlaceTx) or as a replacement (reproduced at 100k
 *   members with bench/tools/monitor-repro.ts: `nft monitor` and `nft -j
 *   monitor` die on the in-place reload, `nft monitor elements` on the
 *   replacement; `nft monitor rules|chains|sets|tables` survive but show no
 *   element edits), and on a transaction that deletes and adds elements of
 *   such a map (a drift restore that refills one: paused too,
 *   repair-plan.ts `pausesMonitor`). It is stopped right before the reload goes to nft and
 *   started again right after (no backoff), and covers the table again as
 *   after any start: once it reported a probe and a full check ran. A
 *   change made right after our reload, before the new monitor subscribed,
 *   is thereby found by that full check (not repaired within milliseconds,
 *   but never missed until the next full periodic check).
 * - A transaction nft printed nothing of (`unknown`: elements of such a map
 *   changed later; it may be any table's) gets a full check, not a repair.
 * - Known gaps: a transaction that carries one of our recent markers
 *   (someone replaying the agent's own script, e.g. `secgroup render | nft
 *   -f -` of the same revision) counts as ours. With `nft monitor` only:
 *   after our own full reload the table is watched by full periodic checks
 *   until the new monitor has subscribed (seconds at 100k members).
 *
 * Timers come from the injected clock; the reconciler serialises repairs with
 * its syncs, so a repair never races an apply.
 */
import type { Clock, Timer } from '../lib/clock.js';
import type { Logger } from '../lib/logger.js';
import type { MonitorBatch, MonitorEvent, MonitorSession, NftMonitor } from '../nft/monitor.js';
import type { Drift } from '../nft/readback.js';
import type { AgentMetrics } from './metrics.js';

/**
 * The drift monitor as the reconciler sees it: told right before and after
 * each of its full reloads goes to nft (the monitor pauses around them);
 * `covers`: the monitor sees every transaction on the table now (element
 * updates then skip their marker read-back).
 */
export interface DriftWatch {
  before(): void;
  after(): void;
  covers?(): boolean;
}

/** What the monitor needs of the reconciler. */
export interface DriftTarget {
  isOwnMarker(marker: string): boolean;
  /** Tells the reconciler who watches (null: nobody). */
  setDriftWatch(watch: DriftWatch | null): void;
  /** Sends one tiny transaction of its own on the table (the monitor reports it once subscribed); false when none was sent (nothing applied, nft failed). Never throws. */
  probeMonitor(): Promise<boolean>;
  repairDrift(found: Drift): Promise<void>;
  checkDrift(opts?: { elements?: boolean }): Promise<Drift | null>;
}

export interface DriftMonitorOptions {
  monitor: NftMonitor;
  target: DriftTarget;
  clock: Clock;
  logger: Logger;
  metrics: AgentMetrics;
  /** first restart delay after the monitor died, doubled up to `restartMaxMs` (defaults 1 s, 60 s) */
  restartInitialMs?: number;
  restartMaxMs?: number;
  /** after a (re)start: the first probe after this long, doubled up to `probeMaxMs` until the monitor reported something (defaults 250 ms, 2 s) */
  probeInitialMs?: number;
  probeMaxMs?: number;
  /** a monitor that reported nothing this long after the first probe went out is restarted (default 300 s) */
  readyTimeoutMs?: number;
}

/** What a foreign transaction did, as a drift (kind for the metric, the first lines for the log). */
export function driftOf(b: MonitorBatch): Drift {
  const kind = b.tableDeleted ? 'missing' : b.structural ? 'structure' : 'modified';
  const by = b.by ? ` by process ${b.by}` : '';
  const more = b.lines > b.sample.length ? ` (+${b.lines - b.sample.length} more)` : '';
  const detail = `a change to our table${by}: ${b.sample.join('; ')}${more}`;
  if (b.tableDeleted) return { kind, detail, tableDeleted: true };
  if (!b.contentOnly) return { kind, detail };
  const removedKeys = new Map<string, string[]>();
  for (const [set, keys] of b.removedKeys) if (keys) removedKeys.set(set, keys);
  return { kind, detail, inPlace: true, scope: { chains: b.rulesOf, sets: b.elementsOf, setsAddedTo: b.elementsAddedTo, removedKeys } };
}

/** `d` without its scope: restored whole (in place), not only what the monitor saw change. */
export function unscoped(d: Drift): Drift {
  const { scope: _, ...rest } = d;
  return rest;
}

/**
 * Two foreign changes repaired by one repair (the second came while the
 * first was being repaired): restoring both scopes restores both; anything
 * the scopes cannot prove (one without `inPlace`) drops to the replacement.
 */
export function mergeDrifts(a: Drift, b: Drift): Drift {
  const detail = `${a.detail}; then ${b.detail}`;
  if (a.tableDeleted || b.tableDeleted) return { kind: 'missing', detail, tableDeleted: true };
  if (!a.inPlace || !b.inPlace) return { kind: a.inPlace ? b.kind : a.kind, detail };
  const union = (x: string[] | undefined, y: string[] | undefined) => [...new Set([...(x ?? []), ...(y ?? [])])];
  if (!a.scope || !b.scope) return { kind: a.kind, detail, inPlace: true };
  // a set's removed keys stay known only when each drift that touched it knew them
  const removedKeys = new Map<string, string[]>();
  for (const set of union(a.scope.sets, b.scope.sets)) {
    const [ka, kb] = [a.scope, b.scope].map((s) => (s.sets.includes(set) ? s.removedKeys?.get(set) : []));
    if (ka && kb) removedKeys.set(set, [...ka, ...kb]);
  }
  const scope = { scope: { chains: union(a.scope.chains, b.scope.chains), sets: union(a.scope.sets, b.scope.sets), setsAddedTo: union(a.scope.setsAddedTo, b.scope.setsAddedTo), removedKeys } };
  return { kind: a.kind, detail, inPlace: true, ...scope };
}

export class DriftMonitor {
  private readonly o: Required<DriftMonitorOptions>;
  private session: MonitorSession | null = null;
  private restartTimer: Timer | null = null;
  private probeTimer: Timer | null = null;
  private probeAttempt = 0;
  /** when the first probe of this session went out (null: none yet) */
  private probedAt: number | null = null;
  /** the session has reported an event: it is subscribed */
  private ready = false;
  /** the session said `ready` itself (our own listener): no probe needed, not paused around our full reloads */
  private announced = false;
  private attempt = 0;
  private startedAt = 0;
  /** the monitor has watched without a gap since the last full check */
  private covered = false;
  private stopped = true;
  /** stopped around our own full reload */
  private paused = false;
  /** a repair runs; `again`: another foreign change came meanwhile */
  private repairing: Promise<void> | null = null;
  /** undefined: nothing waits; null: a full check waits; a Drift: a repair waits */
  private again: Drift | null | undefined = undefined;

  constructor(opts: DriftMonitorOptions) {
    this.o = { restartInitialMs: 1000, restartMaxMs: 60_000, probeInitialMs: 250, probeMaxMs: 2000, readyTimeoutMs: 300_000, ...opts };
  }

  /** Does the monitor cover the table now (periodic checks read only the marker)? */
  get watching(): boolean {
    return this.covered;
  }

  start(): void {
    if (!this.stopped) return;
    this.stopped = false;
    this.o.target.setDriftWatch({ before: () => this.pause(), after: () => this.resume(), covers: () => this.covered });
    this.follow();
  }

  /** Before our own full reload: stop following (see the file note). */
  private pause(): void {
    if (this.stopped || !this.session || this.announced) return;
    this.paused = true;
    this.covered = false;
    this.cancelProbe();
    this.session.stop();
    this.session = null;
  }

  /** After our own full reload: follow again, at once; covered again once it proved subscribed. */
  private resume(): void {
    if (!this.paused) return;
    this.paused = false;
    if (this.stopped) return;
    this.follow();
  }

  /** Stops following and waits for a running repair. */
  async stop(): Promise<void> {
    this.stopped = true;
    this.covered = false;
    this.paused = false;
    this.o.target.setDriftWatch(null);
    this.restartTimer?.cancel();
    this.restartTimer = null;
    this.cancelProbe();
    this.session?.stop();
    this.session = null;
    this.o.metrics.driftMonitorUp.set(0);
    await this.idle();
  }

  /** Resolves when no repair runs. */
  async idle(): Promise<void> {
    while (this.repairing) await this.repairing;
  }

  /** The periodic backstop: the generation marker only while the monitor covers the table, else the whole table. */
  periodicCheck(): Promise<Drift | null> {
    return this.o.target.checkDrift({ elements: !this.covered });
  }

  private follow(): void {
    const { monitor, clock, logger, metrics } = this.o;
    this.startedAt = clock.monotonic();
    this.ready = false;
    this.announced = false;
    this.probeAttempt = 0;
    this.probedAt = null;
    this.session = monitor.follow({ onEvent: (e) => this.onEvent(e), onExit: (reason) => this.onExit(reason) });
    metrics.driftMonitorUp.set(1);
    logger.debug({ event: 'drift_monitor_started' }, 'following the change events of our table');
    this.scheduleProbe();
  }

  private cancelProbe(): void {
    this.probeTimer?.cancel();
    this.probeTimer = null;
  }

  private scheduleProbe(): void {
    const { clock, probeInitialMs, probeMaxMs } = this.o;
    const delay = Math.min(probeMaxMs, probeInitialMs * 2 ** this.probeAttempt++);
    this.probeTimer = clock.setTimeout(() => {
      this.probeTimer = null;
      void this.probe();
    }, delay);
  }

  /** Until the session reported something: one probe, then the next one later (see the file note). */
  private async probe(): Promise<void> {
    const { clock, logger, readyTimeoutMs, target } = this.o;
    const session = this.session;
    if (this.stopped || !session || this.ready) return;
    if (this.probedAt !== null && clock.monotonic() - this.probedAt >= readyTimeoutMs) {
      session.stop();
      this.onExit(`nft monitor reported nothing within ${readyTimeoutMs} ms of the first probe`);
      return;
    }
    const sent = await target.probeMonitor();
    if (sent) this.probedAt ??= clock.monotonic();
    if (this.session !== session || this.stopped || this.ready) return;
    logger.debug({ event: 'drift_monitor_probe', sent }, 'waiting for nft monitor to report its first transaction');
    this.scheduleProbe();
  }

  private async fullCheck(): Promise<void> {
    if (this.stopped || !this.session || !this.ready) return;
    // covered from before the read: a change during it is reported by the monitor
    this.covered = true;
    await this.o.target.checkDrift({ elements: true });
  }

  private onExit(reason: string): void {
    const { clock, logger, metrics, restartInitialMs, restartMaxMs } = this.o;
    this.session = null;
    this.covered = false;
    this.ready = false;
    this.announced = false;
    this.cancelProbe();
    metrics.driftMonitorUp.set(0);
    if (this.stopped) return;
    if (clock.monotonic() - this.startedAt >= restartMaxMs) this.attempt = 0;
    const delay = Math.min(restartMaxMs, restartInitialMs * 2 ** this.attempt++);
    metrics.driftMonitorRestarts.inc();
    logger.warn({ event: 'drift_monitor_exited', reason, retryInMs: delay }, `${reason}; restarting it in ${delay} ms (until then the periodic check reads the whole table)`);
    this.restartTimer = clock.setTimeout(() => {
      this.restartTimer = null;
      if (!this.stopped) this.follow();
    }, delay);
  }

  private onEvent(e: MonitorEvent): void {
    if (this.stopped) return;
    if (e.kind === 'ready') this.announced = true;
    if (!this.ready) {
      // the first event: subscribed; what changed before it is found by one full check
      // (unless the event is itself a foreign change: its repair reloads the whole table anyway)
      this.ready = true;
      this.cancelProbe();
      this.o.logger.debug({ event: 'drift_monitor_ready', afterMs: Math.max(0, this.o.clock.monotonic() - this.startedAt), announced: this.announced }, 'the monitor reports changes: one full check, then marker checks');
      const foreign = e.kind === 'batch' && !e.batch.markers.some((m) => this.o.target.isOwnMarker(m));
      if (!foreign) {
        void this.fullCheck();
        return;
      }
    }
    if (e.kind === 'ready') return;
    if (e.kind === 'lost') {
      this.o.logger.warn({ event: 'drift_monitor_lost' }, 'nft monitor lost events: reading the whole table back');
      this.covered = false;
      void this.fullCheck();
      return;
    }
    if (e.kind === 'unknown') {
      this.o.logger.debug({ event: 'drift_monitor_unknown', generation: e.generation, by: e.by }, 'a transaction nft monitor printed nothing of: reading the whole table back');
      this.repair(null);
      return;
    }
    if (e.batch.markers.some((m) => this.o.target.isOwnMarker(m))) return;
    this.repair(driftOf(e.batch));
  }

  /** Repairs `d`, or (null) reads the whole table back; one at a time: what comes meanwhile runs once after (a repair wins over a check). */
  private repair(d: Drift | null): void {
    if (this.repairing) {
      // a repair wins over a check, but then restores more than its scope (the check may have found anything);
      // two repairs waiting become one that covers both
      const waiting = this.again;
      if (waiting === undefined) this.again = d;
      else if (waiting && d) this.again = mergeDrifts(waiting, d);
      else if (waiting ?? d) this.again = unscoped((waiting ?? d)!);
      return;
    }
    this.repairing = (async () => {
      let next: Drift | null | undefined = d;
      while (next !== undefined && !this.stopped) {
        this.again = undefined;
        if (next) await this.o.target.repairDrift(next);
        else await this.o.target.checkDrift({ elements: true });
        next = this.again;
      }
    })().finally(() => {
      this.repairing = null;
    });
  }
}
