/**
 * Can a membership change alter a port report? The agent asks this after
 * every member delta (element updates) so that it reports at once what the
 * change may have altered, and coalesces the rest: a port report reads the
 * sockets and rates every port against the rules (30-150 ms of CPU with a big
 * group), far more than the delta itself (issue 18 item 3: <= 5 ms per
 * one-member delta). Pure and cheap: one pass over the rules, no peer walked.
 *
 * `reportBasis` keeps, from the last report sent, what a member change is
 * compared with: the listening (protocol, port, family) entries that are not
 * loopback-only, and whether each remote group had members of each family
 * when the report was rated. `memberChangeMatters` answers true (report now)
 * when a changed group is the remote of an ingress rule that
 *
 * - covers a listening port of that report: its status (`open` / `blocked`)
 *   or its `allowed_by` / `denied_by` may change; or
 * - went from no members of the rule's family to some, or back: a rule
 *   without peers is never listed, so `not-listening` entries appear or go.
 *
 * Otherwise (the changed groups' rules cover only ports nothing listens on,
 * or loopback-only listeners, and no group became empty or non-empty) only
 * the lists of a `not-listening` port can change, when several rules on it
 * overlap: those wait for the coalesced report (PORTS_AFTER_ELEMENTS_MS in
 * agent/port-reporter.ts). Without a basis (no report yet), or with the changed groups
 * unknown (`null`: a member-only change that came as a whole document), every
 * remote group counts as changed. A listener that opens or closes is not a
 * member change: the periodic report (`ports_interval_ms`) notices it.
 */
import type { Family } from '../policy/address.js';
import type { NormalizedRule } from '../policy/normalize.js';
import type { PortReport } from '../protocol/messages.js';
import { ruleCovers } from './port-status.js';

export interface ReportBasis {
  /** listening ports of the report that are not loopback-only (status `open` or `blocked`) */
  readonly listening: readonly { protocol: 6 | 17; port: number; family: Family | null }[];
  /** `${groupId} ${family}` of every remote group an ingress rule names -> it had no members of that family */
  readonly emptyGroups: ReadonlyMap<string, boolean>;
}

const groupKey = (id: string, family: Family) => `${id} ${family}`;

function groupRules(rules: readonly NormalizedRule[], groups: ReadonlySet<string> | null): (NormalizedRule & { remote: { kind: 'group'; id: string } })[] {
  return rules.filter((r): r is NormalizedRule & { remote: { kind: 'group'; id: string } } => r.direction === 'ingress' && r.remote.kind === 'group' && (groups === null || groups.has(r.remote.id)));
}

/** What a member change is compared with, from a report and the rules it was rated with (taken when the rating began). */
export function reportBasis(report: PortReport, rules: readonly NormalizedRule[]): ReportBasis {
  const emptyGroups = new Map<string, boolean>();
  for (const r of groupRules(rules, null)) emptyGroups.set(groupKey(r.remote.id, r.family), r.peers.length === 0);
  const listening = report.entries
    .filter((e) => e.status === 'open' || e.status === 'blocked')
    .map((e) => ({ protocol: e.protocol === 'tcp' ? (6 as const) : (17 as const), port: e.port, family: e.family }));
  return { listening, emptyGroups };
}

/**
 * May the members of `groups` (null: any group), as `rules` now hold them,
 * rate some port otherwise than the report `basis` was taken from? See the
 * module comment for exactly when.
 */
export function memberChangeMatters(basis: ReportBasis | null, rules: readonly NormalizedRule[], groups: ReadonlySet<string> | null): boolean {
  if (basis === null) return true;
  for (const r of groupRules(rules, groups)) {
    if (basis.emptyGroups.get(groupKey(r.remote.id, r.family)) !== (r.peers.length === 0)) return true;
    for (const l of basis.listening) {
      if ((l.family === null || l.family === r.family) && ruleCovers(r, l.protocol, l.port, r.family)) return true;
    }
  }
  return false;
}
