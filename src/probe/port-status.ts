/**
 * Port status (SEMANTICS section 7): which listening sockets the policy opens,
 * blocks or cannot help (loopback only), and which allowed ports nothing
 * listens on. Pure: (policy, listeners, options) -> PortReport.
 *
 * Everything is computed per (protocol, port, family). A listener counts for
 * its family; a dual-stack IPv6 wildcard (`*`) counts for IPv4 too. Entries
 * that come out identical for IPv4 and IPv6 are merged into one with
 * `family: null`.
 *
 * For one (protocol, port, family) the ingress rules that match it are walked
 * in match order (groups in association order, then priority, deny before
 * allow; SEMANTICS section 2), each rule deciding for the peer addresses no
 * earlier rule decided for. Then, exactly:
 *
 * - The port is **reachable** when at least one peer address's first matching
 *   rule is an allow, i.e. `evaluate()` accepts a new connection from that
 *   peer; or when a platform rule (DHCP client port, failsafe ingress port)
 *   accepts it before any rule. So a *partial* shadow (deny from
 *   203.0.113.0/24, then allow from 0.0.0.0/0) leaves the port reachable (open
 *   from everyone else), and only a *full* shadow (the deny rules before the
 *   allow rules cover every peer those allow) makes it unreachable.
 * - `allowed_by`: each allow rule that is the first *allow* rule matching some
 *   peer: the rules that let peers in, and those a deny rule takes some or all
 *   peers from. An allow rule whose peers earlier allow rules already cover
 *   adds nothing and is left out, as is one with no peers (a remote group
 *   without members of the family, an empty address group). When a platform
 *   rule accepts the port, the rules are never reached: `allowed_by` is that
 *   platform rule alone (group_id `platform`, rule_id `dhcp` or
 *   `failsafe:tcp:22`, peers `any`).
 * - `denied_by`: each deny rule that is the first match for some peer that a
 *   later allow rule would let in (a deny with no allow after it for those
 *   peers only repeats the default drop and is not listed).
 * - `peers`: the rule's remote as written (`0.0.0.0/0`, `198.51.100.0/24`,
 *   `group default`, `address group ag-office`); peers taken by the deny rules
 *   listed next to it are not subtracted from the text.
 *
 * Statuses: `local-only` when every listener is on loopback (127.0.0.0/8, ::1,
 * or bound to `lo`), whatever the rules say (the rules are still reported, so a
 * rule allowing a service that listens on loopback only shows); otherwise
 * `open` when reachable, else `blocked`. `not-listening`: an ingress allow rule
 * for tcp/udp (or a failsafe port) names the port, nothing listens on it in that
 * family, and some allow rule is listed for it. Whole-protocol rules and port
 * ranges wider than `maxListedRange` ports are not expanded into one entry per
 * port. Without a policy (none applied yet) there are no rules and no platform
 * rules: listeners are `blocked` or `local-only`.
 */
import { fullRange, type AddrRange, type Family } from '../policy/address.js';
import { peerRanges } from '../policy/address-set.js';
import { normalizeRules, remoteText, type NormalizedRule } from '../policy/normalize.js';
import { DEFAULT_PLATFORM, DHCP_PORTS, type PlatformOptions } from '../policy/platform.js';
import type { Policy } from '../policy/schema.js';
import type { PortEntry, PortReport } from '../protocol/messages.js';
import { intersectRanges, subtractRanges, unionRanges } from './intervals.js';
import { formatListenerAddress, isLoopback, type Listener, type ListenerProtocol } from './listener.js';
import type { SocketSourceName } from './source.js';

export type RuleRef = PortEntry['allowed_by'][number];

export interface PortAnalysis {
  /** a new connection from at least one peer is accepted */
  reachable: boolean;
  allowedBy: RuleRef[];
  deniedBy: RuleRef[];
}

export interface PortStatusOptions {
  source: SocketSourceName;
  /** ISO timestamp for the report (the caller reads the clock) */
  generatedAt: string;
  /** platform rules of the agent; default DEFAULT_PLATFORM; ignored without a policy */
  platform?: PlatformOptions;
  /** allowed port ranges of at most this many ports are listed port by port when not listened on; default 16 */
  maxListedRange?: number;
  /**
   * The ingress rules of `policy` as `normalizeRules` gives them (match
   * order per family), when the caller holds them already: the agent passes
   * the compiler's, which the membership fast path keeps current, so a
   * report after a member delta does not parse every member again (0.1-0.2 s
   * at 100k members). Default: `normalizeRules(policy)`.
   */
  rules?: readonly NormalizedRule[];
}

const PROTO_NUMBER: Record<ListenerProtocol, 6 | 17> = { tcp: 6, udp: 17 };
const PROTO_NAME: Record<number, ListenerProtocol> = { 6: 'tcp', 17: 'udp' };

function ref(r: NormalizedRule): RuleRef {
  return { group_id: r.groupId, rule_id: r.ruleId, peers: remoteText(r.remote, r.family) };
}

function platformRef(platform: PlatformOptions, protocol: 6 | 17, port: number, family: Family): RuleRef | null {
  // Same order as the platform rules in evaluate(); loopback, ND and the controller channel cannot accept an inbound port.
  if (platform.dhcp && protocol === 17 && port === DHCP_PORTS[family].in) return { group_id: 'platform', rule_id: 'dhcp', peers: 'any' };
  const f = platform.failsafeIngress.find((s) => s.protocol === protocol && s.from <= port && port <= s.to);
  if (f) return { group_id: 'platform', rule_id: `failsafe:${PROTO_NAME[f.protocol]}:${f.from === f.to ? f.from : `${f.from}-${f.to}`}`, peers: 'any' };
  return null;
}

/** Does ingress rule `r` match new connections to (protocol, port) over `family`? */
export function ruleCovers(r: NormalizedRule, protocol: 6 | 17, port: number, family: Family): boolean {
  return (
    r.direction === 'ingress' &&
    r.family === family &&
    (r.protocol === null || r.protocol === protocol) &&
    (r.ports === null || r.ports.some(([a, b]) => a <= port && port <= b))
  );
}

/**
 * Who may open a new connection to (protocol, port) over `family`, by the
 * rules in match order (`normalizeRules`). `platform` null: no platform rules.
 * See the module comment for the exact meaning of each field.
 */
export function analysePort(rules: readonly NormalizedRule[], platform: PlatformOptions | null, protocol: 6 | 17, port: number, family: Family): PortAnalysis {
  return analyseMatching(() => rules.filter((r) => ruleCovers(r, protocol, port, family)), platform, protocol, port, family);
}

/** analysePort, given the rules that match (protocol, port, family) in match order (asked for only when no platform rule decides). */
function analyseMatching(matchingRules: () => readonly NormalizedRule[], platform: PlatformOptions | null, protocol: 6 | 17, port: number, family: Family): PortAnalysis {
  const plat = platform ? platformRef(platform, protocol, port, family) : null;
  if (plat) return { reachable: true, allowedBy: [plat], deniedBy: [] };
  const matching = matchingRules();
  // one rule (most ports): what the walk below gives, without walking its peers (100k members each)
  if (matching.length === 1) {
    const r = matching[0]!;
    const lets = r.action === 'allow' && r.peers.length > 0;
    return { reachable: lets, allowedBy: lets ? [ref(r)] : [], deniedBy: [] };
  }
  // a remote group's packed members as intervals, made once per rule and call (not kept: see address-set.ts)
  const ranges = new Map<NormalizedRule, readonly AddrRange[]>();
  const peersOf = (r: NormalizedRule): readonly AddrRange[] => {
    let p = ranges.get(r);
    if (!p) ranges.set(r, (p = peerRanges(r.peers)));
    return p;
  };
  let undecided: AddrRange[] = [fullRange(family)];
  let allowPeers: AddrRange[] = [];
  let reachable = false;
  const allowedBy: RuleRef[] = [];
  const denies: { rule: NormalizedRule; decided: AddrRange[]; index: number }[] = [];
  matching.forEach((r, index) => {
    const peers = peersOf(r);
    const decided = intersectRanges(peers, undecided);
    if (r.action === 'allow') {
      if (decided.length) reachable = true;
      if (subtractRanges(peers, allowPeers).length) allowedBy.push(ref(r));
      allowPeers = unionRanges(allowPeers, peers);
    } else if (decided.length) {
      denies.push({ rule: r, decided, index });
    }
    undecided = subtractRanges(undecided, peers);
  });
  const deniedBy = denies
    .filter((d) => matching.slice(d.index + 1).some((a) => a.action === 'allow' && intersectRanges(d.decided, peersOf(a)).length > 0))
    .map((d) => ref(d.rule));
  return { reachable, allowedBy, deniedBy };
}

function addTo(m: Map<number, number[]>, key: number, i: number): void {
  const list = m.get(key);
  if (list) list.push(i);
  else m.set(key, [i]);
}

/** A rule whose ports span at most this many is indexed port by port; wider ones are tested one by one (few in any policy). */
const INDEX_PORTS_MAX = 64;

/**
 * The ingress rules by what they can match, so that the rules matching one
 * (protocol, port, family) are found without testing every rule: a report
 * asks for every port its allow rules list (10k single-port rules: 17k
 * ports; a report that tested every rule for each took 1.03-1.75 s, with
 * this index 0.10-0.21 s: bench/README.md "Issue 18 round 9").
 * `matching` gives exactly `rules.filter(ruleCovers)`, in match order.
 */
class PortRuleIndex {
  /** per `${family}/${protocol}`: rules without ports, rules by port, rules with wide port ranges (indexes into `rules`) */
  private readonly groups = new Map<string, { anyPort: number[]; byPort: Map<number, number[]>; wide: number[] }>();

  constructor(private readonly rules: readonly NormalizedRule[]) {
    rules.forEach((r, i) => {
      if (r.direction !== 'ingress') return;
      for (const protocol of [6, 17] as const) {
        if (r.protocol !== null && r.protocol !== protocol) continue;
        const key = `${r.family}/${protocol}`;
        let g = this.groups.get(key);
        if (!g) this.groups.set(key, (g = { anyPort: [], byPort: new Map(), wide: [] }));
        if (r.ports === null) g.anyPort.push(i);
        else if (r.ports.reduce((n, [a, b]) => n + b - a + 1, 0) > INDEX_PORTS_MAX) g.wide.push(i);
        else for (const [a, b] of r.ports) for (let port = a; port <= b; port++) addTo(g.byPort, port, i);
      }
    });
  }

  matching(protocol: 6 | 17, port: number, family: Family): NormalizedRule[] {
    const g = this.groups.get(`${family}/${protocol}`);
    if (!g) return [];
    const found = [...g.anyPort, ...(g.byPort.get(port) ?? []), ...g.wide.filter((i) => ruleCovers(this.rules[i]!, protocol, port, family))];
    // the three lists are disjoint; match order is rule order
    return found.sort((a, b) => a - b).map((i) => this.rules[i]!);
  }
}

interface Slot {
  protocol: ListenerProtocol;
  port: number;
  family: Family;
  listeners: Listener[];
}

const slotKey = (protocol: string, port: number, family: Family) => `${protocol}/${port}/${family}`;

function listenerViews(listeners: readonly Listener[]): PortEntry['listeners'] {
  const seen = new Set<string>();
  const out: PortEntry['listeners'] = [];
  for (const l of listeners) {
    const view = { address: formatListenerAddress(l), process: l.process };
    const k = JSON.stringify(view);
    if (!seen.has(k)) {
      seen.add(k);
      out.push(view);
    }
  }
  return out;
}

/** Ports an allow rule or a failsafe spec names one by one (ranges up to `max` ports). */
function listedPorts(ranges: readonly (readonly [number, number])[], max: number): number[] {
  const out: number[] = [];
  for (const [a, b] of ranges) if (b - a + 1 <= max) for (let p = a; p <= b; p++) out.push(p);
  return out;
}

/** Merges entries that are identical for IPv4 and IPv6 into one with family null. */
function mergeFamilies(entries: PortEntry[]): PortEntry[] {
  const byKey = new Map<string, PortEntry[]>();
  for (const e of entries) {
    const { family: _family, ...rest } = e;
    const k = JSON.stringify(rest);
    byKey.set(k, [...(byKey.get(k) ?? []), e]);
  }
  const out: PortEntry[] = [];
  for (const group of byKey.values()) {
    if (group.length === 2) out.push({ ...group[0]!, family: null });
    else out.push(...group);
  }
  return out;
}

const FAMILY_ORDER = (f: PortEntry['family']) => (f === null ? 0 : f);

/**
 * The port report for `listeners` under `policy` (null: no policy applied).
 * `policy` must be valid (parsePolicy). Never throws on valid input.
 */
export function computePortStatus(policy: Policy | null, listeners: readonly Listener[], opts: PortStatusOptions): PortReport {
  const rules = policy ? (opts.rules ?? normalizeRules(policy)).filter((r) => r.direction === 'ingress') : [];
  const platform = policy ? (opts.platform ?? DEFAULT_PLATFORM) : null;
  const maxListed = opts.maxListedRange ?? 16;

  const slots = new Map<string, Slot>();
  for (const l of listeners) {
    const families: Family[] = l.family === 6 && l.dualStack ? [6, 4] : [l.family];
    for (const family of families) {
      const k = slotKey(l.protocol, l.port, family);
      const slot = slots.get(k) ?? { protocol: l.protocol, port: l.port, family, listeners: [] };
      slot.listeners.push(l);
      slots.set(k, slot);
    }
  }

  const index = new PortRuleIndex(rules);
  const analyse = (protocol: 6 | 17, port: number, family: Family) => analyseMatching(() => index.matching(protocol, port, family), platform, protocol, port, family);
  const entries: PortEntry[] = [];
  for (const s of slots.values()) {
    const a = analyse(PROTO_NUMBER[s.protocol], s.port, s.family);
    const exposed = s.listeners.some((l) => !isLoopback(l));
    entries.push({
      protocol: s.protocol,
      port: s.port,
      family: s.family,
      status: !exposed ? 'local-only' : a.reachable ? 'open' : 'blocked',
      listeners: listenerViews(s.listeners),
      allowed_by: a.allowedBy,
      denied_by: a.deniedBy,
    });
  }

  const candidates = new Map<string, { protocol: 6 | 17; port: number; family: Family }>();
  const candidate = (protocol: 6 | 17, port: number, family: Family) => {
    const k = slotKey(PROTO_NAME[protocol]!, port, family);
    if (!slots.has(k)) candidates.set(k, { protocol, port, family });
  };
  for (const r of rules) {
    if (r.action !== 'allow' || r.ports === null || (r.protocol !== 6 && r.protocol !== 17)) continue;
    for (const p of listedPorts(r.ports, maxListed)) candidate(r.protocol, p, r.family);
  }
  for (const f of platform?.failsafeIngress ?? []) {
    if (f.protocol === 132) continue;
    for (const p of listedPorts([[f.from, f.to]], maxListed)) for (const family of [4, 6] as const) candidate(f.protocol, p, family);
  }
  for (const c of candidates.values()) {
    const a = analyse(c.protocol, c.port, c.family);
    if (!a.allowedBy.length) continue;
    entries.push({
      protocol: PROTO_NAME[c.protocol]!,
      port: c.port,
      family: c.family,
      status: 'not-listening',
      listeners: [],
      allowed_by: a.allowedBy,
      denied_by: a.deniedBy,
    });
  }

  // protocols are 'tcp' | 'udp': a plain comparison orders them as localeCompare did, without loading ICU's collation data into the agent
  const merged = mergeFamilies(entries).sort(
    (x, y) => x.port - y.port || (x.protocol < y.protocol ? -1 : x.protocol > y.protocol ? 1 : 0) || FAMILY_ORDER(x.family) - FAMILY_ORDER(y.family),
  );
  return { revision: policy ? policy.revision : null, source: opts.source, generated_at: opts.generatedAt, entries: merged };
}
