/**
 * Fleet analysis (issue 17): "can A reach B?", "what is exposed to the
 * internet, and why?", and what a rule change would open or close. Pure:
 * functions of a project snapshot and the agents' last port reports.
 *
 * One source of truth: every verdict comes from the instances' compiled
 * policy documents (`compileInstanceDoc`, the documents the agents receive)
 * through the same code the agent and `secgroup explain` use:
 * `policy/evaluate.ts` for a single packet (reachability) and
 * `probe/port-status.ts`'s `analysePort` for "who may open a connection to
 * this port" (exposure). Nothing here matches rules itself.
 *
 * Platform rules (DHCP, ICMPv6 ND, failsafe ports, the controller channel)
 * come from each agent's own configuration, which the controller does not
 * know: the analysis counts the security group rules only (`RULES_ONLY`).
 * Loopback is never the question here (every packet is on a real interface).
 *
 * Exposure: a listening port (per the instance's last port report, any
 * listener not on loopback) is exposed when an ingress allow rule whose
 * remote is the whole address space (no remote, `0.0.0.0/0`, `::/0`) decides
 * a new connection for some peers, i.e. is not shadowed entirely by the rules
 * before it. An instance without a report has no known listening ports and is
 * listed in `instancesWithoutReport`.
 */
import { formatIp, ipFamily, parseIp, parsePrefix, type Family } from '../policy/address.js';
import { evaluate, type Evaluation } from '../policy/evaluate.js';
import { normalizeRules, type NormalizedRule } from '../policy/normalize.js';
import type { Packet } from '../policy/packet.js';
import type { PlatformOptions } from '../policy/platform.js';
import type { Policy } from '../policy/schema.js';
import { matchesEveryAddress } from '../nft/layering.js';
import { analysePort } from '../probe/port-status.js';
import type { PortReport } from '../protocol/messages.js';
import type { Ethertype, GroupRow, InstanceRow, ProjectSnapshot, RuleRow } from './model.js';
import { compileInstanceDoc, indexProject, type ProjectIndex } from './policy-documents.js';
import { RISK_ORDER, riskOf, serviceRank, type Risk } from './exposure-risk.js';

/** No platform rules: the analysis shows what the security group rules decide. */
export const RULES_ONLY: PlatformOptions = { loopback: true, icmpv6Nd: false, dhcp: false, controller: null, failsafeIngress: [], failsafeEgress: [], flowMarkMask: 0 };

/** What the API shows of a rule that decided. */
export interface RuleRefView {
  id: string;
  security_group_id: string;
  security_group_name: string;
  direction: 'ingress' | 'egress';
  priority: number;
  action: 'allow' | 'deny';
  protocol: string | null;
  multiport: string | null;
  remote_ip_prefix: string | null;
  remote_group_id: string | null;
  remote_address_group_id: string | null;
}

/** An instance's last port report as the store keeps it. */
export interface PortsOf {
  report: PortReport | null;
  receivedAt: string | null;
}

export type PortsLookup = (instanceId: string) => PortsOf;

/** A project snapshot with its lookup tables and the policies compiled from it (lazily, once per group list). */
export class FleetView {
  readonly ix: ProjectIndex;
  private readonly instances: Map<string, InstanceRow>;
  private readonly rules: Map<string, RuleRow>;
  private readonly policies = new Map<string, Policy>();
  private readonly ingress = new Map<string, NormalizedRule[]>();
  private readonly world = new Map<string, NormalizedRule | null>();
  private readonly ingressOfGroup = new Map<string, NormalizedRule[]>();

  constructor(readonly snap: ProjectSnapshot) {
    this.ix = indexProject(snap);
    this.instances = new Map(snap.instances.map((i) => [i.id, i]));
    this.rules = new Map(snap.rules.map((r) => [r.id, r]));
  }

  instance(id: string): InstanceRow | undefined {
    return this.instances.get(id);
  }

  /** The instance's policy document (as its agent receives it, revision aside). */
  policy(inst: InstanceRow): Policy {
    let p = this.policies.get(inst.id);
    if (!p) {
      // compiled documents are checked with the agent's validator before they are stored (recompile)
      p = { revision: inst.revision ?? 0, ...compileInstanceDoc(this.ix, inst) } as unknown as Policy;
      this.policies.set(inst.id, p);
    }
    return p;
  }

  /**
   * Ingress rules in match order. Normalising a document's groups one by one
   * gives the same rules as the whole document (groups in association order,
   * each group's rules in `compareInGroup` order, a group's remotes resolved
   * from the same members), so each group is normalised once and every group
   * list is their concatenation.
   */
  ingressRules(inst: InstanceRow): NormalizedRule[] {
    const key = inst.security_groups.join('\u0000');
    let rules = this.ingress.get(key);
    if (!rules) {
      rules = inst.security_groups.flatMap((gid, groupIndex) => this.groupIngress(inst, gid).map((r) => (r.groupIndex === groupIndex ? r : { ...r, groupIndex })));
      this.ingress.set(key, rules);
    }
    return rules;
  }

  private groupIngress(inst: InstanceRow, gid: string): NormalizedRule[] {
    let rules = this.ingressOfGroup.get(gid);
    if (!rules) {
      const doc = compileInstanceDoc(this.ix, { ...inst, security_groups: [gid] });
      rules = normalizeRules({ revision: 0, ...doc } as unknown as Policy).filter((r) => r.direction === 'ingress');
      this.ingressOfGroup.set(gid, rules);
    }
    return rules;
  }

  /** `worldRule` for the instance's rules, once per group list and port. */
  worldRule(inst: InstanceRow, protocol: 6 | 17, port: number, family: Family): NormalizedRule | null {
    const key = `${inst.security_groups.join('\u0000')}|${protocol}|${port}|${family}`;
    let w = this.world.get(key);
    if (w === undefined) {
      w = worldRule(this.ingressRules(inst), protocol, port, family);
      this.world.set(key, w);
    }
    return w;
  }

  ruleRef(ruleId: string): RuleRefView | null {
    const r = this.rules.get(ruleId);
    if (!r) return null;
    const g: GroupRow | undefined = this.ix.groups.get(r.security_group_id);
    return {
      id: r.id,
      security_group_id: r.security_group_id,
      security_group_name: g?.name ?? '',
      direction: r.direction,
      priority: r.priority,
      action: r.action,
      protocol: r.protocol,
      multiport: r.multiport,
      remote_ip_prefix: r.remote_ip_prefix,
      remote_group_id: r.remote_group_id,
      remote_address_group_id: r.remote_address_group_id,
    };
  }
}

// ---- reachability ----

export type ReachProtocol = 'tcp' | 'udp' | 'icmp' | 'any';

export interface ReachabilityQuery {
  from: string;
  to: string;
  protocol: ReachProtocol;
  port?: number | undefined;
  ethertype?: Ethertype | undefined;
}

export type ReachSource = { kind: 'instance'; instance_id: string; address: string } | { kind: 'address'; address: string } | { kind: 'cidr'; cidr: string; address: string };

export interface SideVerdict {
  evaluated: boolean;
  verdict: 'allow' | 'deny';
  reason: 'rule' | 'default' | 'not_evaluated';
  rule: RuleRefView | null;
}

export interface Reachability {
  from: ReachSource;
  to: { instance_id: string; address: string };
  protocol: ReachProtocol;
  port: number | null;
  ethertype: Ethertype;
  verdict: 'allowed' | 'denied';
  egress: SideVerdict;
  ingress: SideVerdict;
  listening: boolean | null;
  ports_reported_at: string | null;
}

/** A query that cannot be answered: the field and why (the API makes it a 400). */
export class AnalysisQueryError extends Error {
  constructor(
    readonly field: string,
    message: string,
  ) {
    super(message);
    this.name = 'AnalysisQueryError';
  }
}

/**
 * "any" is asked with an IP protocol no rule names (253, RFC 3692's
 * experimental number): only rules for all protocols decide it.
 */
const ANY_PROTOCOL = 253;

const familyOf = (e: Ethertype): Family => (e === 'IPv6' ? 6 : 4);
const ethertypeOf = (f: Family): Ethertype => (f === 6 ? 'IPv6' : 'IPv4');

function addressOfFamily(inst: InstanceRow, family: Family, field: string): string {
  const a = inst.addresses.find((x) => ipFamily(x) === family);
  if (a === undefined) throw new AnalysisQueryError(field, `instance ${JSON.stringify(inst.id)} has no ${ethertypeOf(family)} address`);
  return a;
}

function packetFields(q: ReachabilityQuery, family: Family): Pick<Packet, 'protocol' | 'dport' | 'sport' | 'icmpType' | 'icmpCode'> {
  switch (q.protocol) {
    case 'tcp':
      return { protocol: 6, sport: 40000, dport: q.port! };
    case 'udp':
      return { protocol: 17, sport: 40000, dport: q.port! };
    case 'icmp':
      // an echo request
      return family === 4 ? { protocol: 1, icmpType: 8, icmpCode: 0 } : { protocol: 58, icmpType: 128, icmpCode: 0 };
    case 'any':
      return { protocol: ANY_PROTOCOL };
  }
}

function side(view: FleetView, e: Evaluation): SideVerdict {
  const verdict = e.verdict === 'accept' ? 'allow' : 'deny';
  if (e.reason.kind === 'rule') return { evaluated: true, verdict, reason: 'rule', rule: view.ruleRef(e.reason.ruleId) };
  return { evaluated: true, verdict, reason: 'default', rule: null };
}

/** Is `protocol/port` listening on the instance in `family`, per its last report (null: no report, or no port asked)? */
function listeningIn(report: PortReport | null, q: ReachabilityQuery, family: Family): boolean | null {
  if (!report || (q.protocol !== 'tcp' && q.protocol !== 'udp')) return null;
  return report.entries.some((e) => e.protocol === q.protocol && e.port === q.port && (e.family === null || e.family === family) && e.listeners.length > 0);
}

/**
 * Can a new connection from `q.from` reach `q.to`? The source's egress (when
 * it is an instance) and the destination's ingress, each by `evaluate()` over
 * the instance's compiled document. Throws AnalysisQueryError for an unknown
 * instance, a malformed address, or a family neither side has.
 */
export function reachability(view: FleetView, q: ReachabilityQuery, ports: PortsLookup): Reachability {
  const dest = view.instance(q.to);
  if (!dest) throw new AnalysisQueryError('to', `${JSON.stringify(q.to)} is not an instance of this project`);
  const srcInstance = view.instance(q.from);
  let srcFamily: Family | null = null;
  let cidr: string | null = null;
  if (!srcInstance) {
    const fam = ipFamily(q.from);
    if (fam) srcFamily = fam;
    else if (q.from.includes('/')) {
      const p = parsePrefix(q.from);
      if (!p.ok) throw new AnalysisQueryError('from', p.error);
      srcFamily = p.range.family;
      cidr = q.from;
    } else throw new AnalysisQueryError('from', `${JSON.stringify(q.from)} is neither an instance of this project, an IP address nor a CIDR`);
    if (q.ethertype && familyOf(q.ethertype) !== srcFamily) throw new AnalysisQueryError('ethertype', `${q.ethertype} disagrees with from ${JSON.stringify(q.from)}`);
  }
  let family: Family;
  if (q.ethertype) family = familyOf(q.ethertype);
  else if (srcFamily) family = srcFamily;
  else {
    const first = dest.addresses[0];
    if (first === undefined) throw new AnalysisQueryError('to', `instance ${JSON.stringify(dest.id)} has no address`);
    family = parseIp(first).family;
  }
  const dst = addressOfFamily(dest, family, 'to');
  let from: ReachSource;
  if (srcInstance) from = { kind: 'instance', instance_id: srcInstance.id, address: addressOfFamily(srcInstance, family, 'from') };
  else if (cidr !== null) from = { kind: 'cidr', cidr, address: formatIp(family, (parsePrefix(cidr) as { ok: true; range: { lo: bigint } }).range.lo) };
  else from = { kind: 'address', address: formatIp(family, parseIp(q.from).value) };

  const fields = packetFields(q, family);
  const packet = (direction: 'ingress' | 'egress'): Packet => ({ direction, family, src: from.address, dst, ...fields });
  const egress: SideVerdict = srcInstance
    ? side(view, evaluate(view.policy(srcInstance), packet('egress'), RULES_ONLY))
    : { evaluated: false, verdict: 'allow', reason: 'not_evaluated', rule: null };
  const ingress = side(view, evaluate(view.policy(dest), packet('ingress'), RULES_ONLY));
  const p = ports(dest.id);
  return {
    from,
    to: { instance_id: dest.id, address: dst },
    protocol: q.protocol,
    port: q.protocol === 'tcp' || q.protocol === 'udp' ? q.port! : null,
    ethertype: ethertypeOf(family),
    verdict: egress.verdict === 'allow' && ingress.verdict === 'allow' ? 'allowed' : 'denied',
    egress,
    ingress,
    listening: listeningIn(p.report, q, family),
    ports_reported_at: p.report ? p.receivedAt : null,
  };
}

// ---- exposure ----

export interface Exposure {
  instance_id: string;
  instance_name: string;
  protocol: 'tcp' | 'udp';
  port: number;
  ethertype: Ethertype;
  listen_address: string;
  process: string | null;
  source: '0.0.0.0/0' | '::/0';
  rule: RuleRefView;
  risk: Risk;
  risk_reason: string;
}

function exposureOrder(a: Exposure, b: Exposure): number {
  const str = (x: string, y: string) => (x < y ? -1 : x > y ? 1 : 0);
  return (
    RISK_ORDER[a.risk] - RISK_ORDER[b.risk] ||
    serviceRank(a.protocol, a.port) - serviceRank(b.protocol, b.port) ||
    str(a.instance_name, b.instance_name) ||
    str(a.instance_id, b.instance_id) ||
    a.port - b.port ||
    str(a.protocol, b.protocol) ||
    str(a.ethertype, b.ethertype)
  );
}

const LOOPBACK_TEXT = /^(127\.|\[?::1\]?$)|%lo$/;

/**
 * The allow rule whose remote is the whole address space and that decides a
 * new connection to (protocol, port) for some peers, or null. `analysePort`
 * over the rules before it (each made a deny: only "who is decided before")
 * and the rule itself is reachable exactly when the rule still decides some peers.
 */
function worldRule(rules: readonly NormalizedRule[], protocol: 6 | 17, port: number, family: Family): NormalizedRule | null {
  // most ports no world rule names: skip the interval work for them
  const candidate = (r: NormalizedRule) =>
    r.action === 'allow' && r.family === family && (r.protocol === null || r.protocol === protocol) && (r.ports === null || r.ports.some(([a, b]) => a <= port && port <= b));
  if (!rules.some((r) => candidate(r) && matchesEveryAddress(r))) return null;
  const a = analysePort(rules, null, protocol, port, family);
  if (!a.reachable) return null;
  const world = family === 4 ? '0.0.0.0/0' : '::/0';
  for (const ref of a.allowedBy) {
    if (ref.peers !== world) continue;
    const i = rules.findIndex((r) => r.groupId === ref.group_id && r.ruleId === ref.rule_id);
    const before = rules.slice(0, i).map((r) => (r.action === 'deny' ? r : { ...r, action: 'deny' as const }));
    if (analysePort([...before, rules[i]!], null, protocol, port, family).reachable) return rules[i]!;
  }
  return null;
}

/** One instance's exposed listening ports (unsorted); null without a port report. */
export function instanceExposure(view: FleetView, inst: InstanceRow, report: PortReport | null): Exposure[] | null {
  if (!report) return null;
  const out: Exposure[] = [];
  for (const e of report.entries) {
    // open or blocked: something listens beyond loopback (local-only: loopback only; not-listening: nothing)
    if (e.status !== 'open' && e.status !== 'blocked') continue;
    const listener = e.listeners.find((l) => !LOOPBACK_TEXT.test(l.address)) ?? e.listeners[0];
    if (!listener) continue;
    const proto = e.protocol === 'tcp' ? 6 : 17;
    for (const family of e.family === null ? ([4, 6] as const) : [e.family]) {
      const w = view.worldRule(inst, proto, e.port, family);
      if (!w) continue;
      const rule = view.ruleRef(w.ruleId);
      if (!rule) continue;
      const { risk, reason } = riskOf(e.protocol, e.port);
      out.push({
        instance_id: inst.id,
        instance_name: inst.name,
        protocol: e.protocol,
        port: e.port,
        ethertype: ethertypeOf(family),
        listen_address: listener.address,
        process: listener.process,
        source: family === 4 ? '0.0.0.0/0' : '::/0',
        rule,
        risk,
        risk_reason: reason,
      });
    }
  }
  return out;
}

export interface ExposureList {
  exposure: Exposure[];
  instances_without_report: string[];
}

/** Exposed listening ports of `instances` (default: all), riskiest first. */
export function exposure(view: FleetView, ports: PortsLookup, instances: readonly InstanceRow[] = view.snap.instances): ExposureList {
  const list: Exposure[] = [];
  const without: string[] = [];
  for (const inst of instances) {
    const e = instanceExposure(view, inst, ports(inst.id).report);
    if (e) list.push(...e);
    else without.push(inst.id);
  }
  return { exposure: sortExposure(list), instances_without_report: without };
}

export function sortExposure(list: Exposure[]): Exposure[] {
  return list.sort(exposureOrder);
}

/**
 * `exposure()` kept up to date incrementally for one project: the analysis
 * of the project's version is kept (a new version starts over), and an
 * instance is analysed again only when its port report changed (by
 * `receivedAt`). `current()` always equals `exposure(new FleetView(snap), ports)`.
 */
export class ExposureTracker {
  private view: FleetView | null = null;
  private readonly perInstance = new Map<string, { receivedAt: string | null; entries: Exposure[] | null }>();
  private list: ExposureList | null = null;

  current(snap: ProjectSnapshot, ports: PortsLookup): ExposureList {
    if (!this.view || this.view.snap.version !== snap.version || this.view.snap.projectId !== snap.projectId) {
      this.view = new FleetView(snap);
      this.perInstance.clear();
      this.list = null;
    }
    const view = this.view;
    let changed = this.list === null;
    for (const inst of view.snap.instances) {
      const p = ports(inst.id);
      const known = this.perInstance.get(inst.id);
      if (known && known.receivedAt === p.receivedAt && (known.entries === null) === (p.report === null)) continue;
      this.perInstance.set(inst.id, { receivedAt: p.receivedAt, entries: instanceExposure(view, inst, p.report) });
      changed = true;
    }
    if (changed || !this.list) {
      const all: Exposure[] = [];
      const without: string[] = [];
      for (const inst of view.snap.instances) {
        const entries = this.perInstance.get(inst.id)!.entries;
        if (entries) all.push(...entries);
        else without.push(inst.id);
      }
      this.list = { exposure: sortExposure(all), instances_without_report: without };
    }
    return this.list;
  }
}

// ---- change preview ----

export interface PortRef {
  instance_id: string;
  protocol: 'tcp' | 'udp';
  port: number;
  ethertype: Ethertype;
}

export interface ChangeImpact {
  instances: string[];
  internet: { opened: PortRef[]; closed: PortRef[] };
}

const portKey = (p: PortRef) => `${p.instance_id}|${p.protocol}|${p.port}|${p.ethertype}`;
const portRef = (e: Exposure): PortRef => ({ instance_id: e.instance_id, protocol: e.protocol, port: e.port, ethertype: e.ethertype });

/**
 * What a change does: the instances (of the state after it) whose document
 * changes, and the (instance, port) pairs that become reachable or
 * unreachable from the internet, counting only ports listening per the last
 * reports. `candidates`: the instances whose document can change
 * (`affectedInstances`), so the rest of the fleet is not compiled.
 */
export function changeImpact(before: FleetView, after: FleetView, candidates: readonly InstanceRow[], ports: PortsLookup): ChangeImpact {
  const instances: string[] = [];
  const opened: PortRef[] = [];
  const closed: PortRef[] = [];
  for (const inst of candidates) {
    const old = before.instance(inst.id);
    const newDoc = JSON.stringify(after.policy(inst));
    if (old && JSON.stringify(before.policy(old)) === newDoc) continue;
    instances.push(inst.id);
    const report = ports(inst.id).report;
    const was = new Map((old ? (instanceExposure(before, old, report) ?? []) : []).map((e) => [portKey(portRef(e)), portRef(e)]));
    const now = new Map((instanceExposure(after, inst, report) ?? []).map((e) => [portKey(portRef(e)), portRef(e)]));
    for (const [k, p] of now) if (!was.has(k)) opened.push(p);
    for (const [k, p] of was) if (!now.has(k)) closed.push(p);
  }
  return { instances, internet: { opened, closed } };
}
