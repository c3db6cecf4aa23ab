/**
 * When the agent reports its ports, and the report itself: reads the
 * listening sockets through the `PortProbe`, rates them with the applied
 * policy's compiled rules and sends a `ports` frame (docs/protocol.md).
 *
 * Cadence (docs/agent-config.md, `ports_interval_ms`):
 * - every `ports_interval_ms` (agent.ts runs the interval), on connect, and
 *   after a rule change (full reload): at once, at most one report a second
 *   (`soon`), so a burst of changes or a flapping controller costs one socket
 *   read a second, not one per change;
 * - after a member change (element updates, a `policy_delta`): at once (at
 *   most one a second) when it can change the status of a listening port
 *   (probe/member-change.ts: a changed group's rule covers a port that
 *   listens beyond loopback, or a group became empty or non-empty); else at
 *   most PORTS_AFTER_ELEMENTS_MS after the last report (a stream of deltas
 *   gets one trailing report), because rating every port against a big group
 *   costs far more CPU than the delta.
 *
 * One report at a time: reports read concurrently (a slow `ss`, the interval
 * and a change together) could reach the controller out of order, and the
 * controller keeps the last one it receives, so an older revision's report
 * could stay stored after a newer one. A report asked for while one is on its
 * way follows it, with the state of then.
 *
 * Log lines: `ports_sent` (debug: revision, entries, source, durationMs),
 * `ports_slow` (warn: a report took PORTS_SLOW_MS or more, most of it
 * reading the sockets: `ss` and `netstat` each get 15 s before the next
 * source is tried, and while one report is on its way no other goes out),
 * `ports_clipped` (warn), `ports_failed` (warn).
 */
import type { Clock, Timer } from '../lib/clock.js';
import { errorMessage } from '../lib/errors.js';
import type { Logger } from '../lib/logger.js';
import type { Compiled } from '../nft/compile.js';
import type { NormalizedRule } from '../policy/normalize.js';
import { memberChangeMatters, reportBasis, type ReportBasis } from '../probe/member-change.js';
import type { PortProbe } from '../probe/port-probe.js';
import { boundPortReport, type AgentMessage, type PolicyDeltaMessage } from '../protocol/messages.js';
import type { AppliedState, SyncOutcome } from './reconciler.js';

/**
 * The rules a compiled policy was laid out from (every direction and family,
 * match order within each): what `normalizeRules` gives for the policy
 * applied, with the member changes of the membership fast path included
 * (it edits these peer lists in place), so a port report needs no parse of
 * every member.
 */
export function compiledRules(compiled: Compiled): NormalizedRule[] {
  return [...compiled.layout.values()].flatMap((l) => l.rules);
}

/**
 * After member deltas (element updates) that cannot change the status of a
 * listening port, a port report follows at most this long after the last one
 * (a stream of deltas: one trailing report): rating every port against a big
 * group and reading the sockets costs 30-100 ms of CPU at 10k members, which
 * every 10 s was ~1.5 ms of every delta in a stream of 5 a second. Half the
 * default `ports_interval_ms`.
 */
export const PORTS_AFTER_ELEMENTS_MS = 30_000;

/** After a change or a (re)connect: at most one report a second. */
export const PORTS_MIN_INTERVAL_MS = 1000;

/** A report that takes this long (reading the sockets, rating them) is logged (`ports_slow`): the controller's view is that far behind. */
export const PORTS_SLOW_MS = 5000;

export interface PortReporterOptions {
  /** null: no probe, nothing is ever reported */
  probe: PortProbe | null;
  clock: Clock;
  logger: Logger;
  /** the policy applied now (null: none yet) */
  state: () => AppliedState | null;
  connected: () => boolean;
  /** false when it was not sent */
  send: (msg: AgentMessage) => boolean;
}

export class PortReporter {
  private lastAt = -Infinity;
  private soonTimer: Timer | null = null;
  private due = Infinity;
  /** the last report sent, as a member change is compared with it; null: none yet */
  private basis: ReportBasis | null = null;
  /** each group a member delta not yet applied changes -> the newest revision that changes it */
  private readonly deltaGroups = new Map<string, number>();
  private running: Promise<void> | null = null;
  private again = false;

  constructor(private readonly o: PortReporterOptions) {}

  /** A `policy_delta` was handed to the reconciler: its groups are checked once its revision is applied. */
  delta(d: PolicyDeltaMessage): void {
    for (const g of Object.keys(d.group_members)) this.deltaGroups.set(g, Math.max(d.revision, this.deltaGroups.get(g) ?? 0));
  }

  /** A sync's outcome: a rule change is reported soon, a member change soon or coalesced (see the design note). */
  applied(outcome: SyncOutcome): void {
    if (outcome.status !== 'applied') return;
    const groups = this.deltaGroupsUpTo(outcome.revision);
    if (outcome.kind === 'full') this.soon();
    else if (outcome.kind === 'incremental') this.soon(this.membersMatter(groups) ? PORTS_MIN_INTERVAL_MS : PORTS_AFTER_ELEMENTS_MS);
  }

  /** A report `minInterval` ms after the last one at the earliest (now if that is past); an earlier one already due stays. */
  soon(minInterval = PORTS_MIN_INTERVAL_MS): void {
    const { clock } = this.o;
    const due = Math.max(clock.monotonic(), this.lastAt + minInterval);
    if (this.soonTimer && this.due <= due) return;
    this.cancelSoon();
    const wait = due - clock.monotonic();
    if (wait <= 0) {
      void this.send();
      return;
    }
    this.due = due;
    this.soonTimer = clock.setTimeout(() => {
      this.soonTimer = null;
      this.due = Infinity;
      void this.send();
    }, wait);
  }

  /** A report now, or right after the one on its way. */
  send(): Promise<void> {
    if (this.running) {
      this.again = true;
      return this.running;
    }
    this.running = (async () => {
      try {
        do {
          this.again = false;
          await this.reportOnce();
        } while (this.again);
      } finally {
        this.running = null;
      }
    })();
    return this.running;
  }

  stop(): void {
    this.cancelSoon();
  }

  private cancelSoon(): void {
    this.soonTimer?.cancel();
    this.soonTimer = null;
    this.due = Infinity;
  }

  /** The groups changed by the deltas up to `revision` (null: none known, e.g. a member change sent as a whole document), forgotten once taken. */
  private deltaGroupsUpTo(revision: number): Set<string> | null {
    const out = new Set<string>();
    for (const [g, rev] of this.deltaGroups) {
      if (rev > revision) continue;
      out.add(g);
      this.deltaGroups.delete(g);
    }
    return out.size > 0 ? out : null;
  }

  /** Can the member change just applied (of `groups`; null: of any group) change the status of a listening port? */
  private membersMatter(groups: ReadonlySet<string> | null): boolean {
    const st = this.o.state();
    return st === null || memberChangeMatters(this.basis, compiledRules(st.compiled), groups);
  }

  private async reportOnce(): Promise<void> {
    const { clock, logger, probe } = this.o;
    this.lastAt = clock.monotonic();
    if (!probe || !this.o.connected()) return;
    try {
      const st = this.o.state();
      const rules = st ? compiledRules(st.compiled) : undefined;
      const { report, clipped } = boundPortReport(await probe.report(st?.policy ?? null, st?.revision ?? null, rules));
      if (clipped) logger.warn({ event: 'ports_clipped', clipped }, `the port report is over the protocol's limits (docs/protocol.md): ${clipped} entries, listeners or rule references left out`);
      const durationMs = Math.round(clock.monotonic() - this.lastAt);
      if (durationMs >= PORTS_SLOW_MS) {
        logger.warn({ event: 'ports_slow', revision: report.revision, source: report.source, durationMs }, `the port report took ${durationMs} ms (reading the sockets with ${report.source}): the controller's view of the ports was that far behind`);
      }
      if (this.o.send({ type: 'ports', report })) {
        // what the controller holds now: the next member change is compared with it
        this.basis = rules ? reportBasis(report, rules) : null;
        logger.debug({ event: 'ports_sent', revision: report.revision, entries: report.entries.length, source: report.source, durationMs }, 'port report sent');
      }
    } catch (e) {
      logger.warn({ event: 'ports_failed', err: e }, `cannot report port status: ${errorMessage(e)}`);
    }
  }
}
