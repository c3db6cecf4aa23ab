/**
 * The fleet analysis (src/controller/analysis.ts) over project snapshots:
 * reachability verdicts agree with the reference evaluator on random
 * policies, exposure lists the listening ports the world can reach (and
 * only those), riskiest first, and a change preview names what it opens and
 * closes.
 */
import { describe, expect, it } from 'vitest';
import { ExposureTracker, FleetView, RULES_ONLY, changeImpact, exposure, reachability, type PortsLookup, type ReachabilityQuery } from '../../src/controller/analysis.js';
import { applyOps, type GroupRow, type InstanceRow, type ProjectSnapshot, type RuleRow } from '../../src/controller/model.js';
import { newRuleRow } from '../../src/controller/domain.js';
import { affectedInstances, touchedBy } from '../../src/controller/policy-documents.js';
import { evaluate } from '../../src/policy/evaluate.js';
import { normalizeRules } from '../../src/policy/normalize.js';
import type { Packet } from '../../src/policy/packet.js';
import { parsePolicy, type Policy } from '../../src/policy/schema.js';
import type { PortEntry, PortReport } from '../../src/protocol/messages.js';
import { createRng, randomPackets, randomPolicy } from '../helpers/random-policy.js';

const T = '2024-05-01T12:00:00.000Z';

function group(id: string, name = id): GroupRow {
  return { id, name, description: '', enterprise_project_id: '0', tags: [], created_at: T, updated_at: T };
}

function ruleRow(groupId: string, r: Partial<RuleRow> & { id: string }): RuleRow {
  return newRuleRow({ security_group_id: groupId, direction: 'ingress', ethertype: 'IPv4', created_at: T, ...r });
}

function instance(id: string, addresses: string[], groups: string[], name = id): InstanceRow {
  return { id, name, addresses, security_groups: groups, created_at: T, updated_at: T, revision: 1, policy_hash: null };
}

function snapshot(parts: Partial<Pick<ProjectSnapshot, 'groups' | 'rules' | 'addressGroups' | 'instances'>>): ProjectSnapshot {
  return { projectId: 'p', version: 1, groups: [], rules: [], addressGroups: [], instances: [], ...parts };
}

/** A snapshot whose instance `inst` gets exactly `policy` as its document: groups, rules, address groups, and an instance per remote group member. */
function snapshotOf(policy: Policy, extra: InstanceRow[] = []): ProjectSnapshot {
  const groupIds = new Set([...policy.security_groups.map((g) => g.id), ...Object.keys(policy.group_members)]);
  const own = new Set(policy.instance.addresses);
  const members: InstanceRow[] = [];
  for (const [gid, list] of Object.entries(policy.group_members)) {
    list.filter((a) => !own.has(a)).forEach((a, i) => members.push(instance(`m-${gid}-${i}`, [a], [gid])));
  }
  return snapshot({
    groups: [...groupIds].map((id) => group(id)),
    rules: policy.security_groups.flatMap((g) =>
      g.rules.map((r) =>
        ruleRow(g.id, {
          id: r.id,
          direction: r.direction,
          priority: r.priority,
          action: r.action,
          ethertype: r.ethertype,
          protocol: r.protocol || null,
          multiport: r.multiport ?? null,
          icmp_type: r.icmp_type ?? null,
          icmp_code: r.icmp_code ?? null,
          remote_ip_prefix: r.remote_ip_prefix ?? null,
          remote_group_id: r.remote_group_id ?? null,
          remote_address_group_id: r.remote_address_group_id ?? null,
        }),
      ),
    ),
    addressGroups: policy.address_groups.map((a) => ({ ...group(a.id), ip_version: a.ip_version, ip_set: a.ip_set, ip_remarks: {}, max_capacity: 20 })),
    instances: [instance('inst', policy.instance.addresses, policy.security_groups.map((g) => g.id)), ...members, ...extra],
  });
}

const noPorts: PortsLookup = () => ({ report: null, receivedAt: null });

/** The reachability question a packet asks (tcp, udp, an ICMP echo, or "any" for other protocols), and the packet it evaluates. */
function question(p: Packet, from: string, to: string): { q: ReachabilityQuery; asked: Packet } | null {
  const ethertype = p.family === 4 ? 'IPv4' : 'IPv6';
  if (p.protocol === 6 || p.protocol === 17) return { q: { from, to, protocol: p.protocol === 6 ? 'tcp' : 'udp', port: p.dport!, ethertype }, asked: p };
  if (p.protocol === 1 || p.protocol === 58) return { q: { from, to, protocol: 'icmp', ethertype }, asked: { ...p, icmpType: p.family === 4 ? 8 : 128, icmpCode: 0 } };
  if (p.protocol === 132) return null;
  return { q: { from, to, protocol: 'any', ethertype }, asked: { ...p, protocol: 253 } };
}

describe('reachability agrees with the reference evaluator', () => {
  it('on random policies: the ingress side (from an address) and the egress side (from the instance) decide as evaluate() does, with the same rule', () => {
    let compared = 0;
    for (let seed = 1; seed <= 60; seed++) {
      const rng = createRng(seed);
      const policy = parsePolicy(randomPolicy(rng));
      const packets = randomPackets(rng, policy, 40).map((p) => ({ ...p, sport: p.sport ?? 40000 }));
      const peers = [...new Set(packets.filter((p) => p.direction === 'egress').map((p) => p.dst))];
      const peerId = new Map(peers.map((a, i) => [a, `peer-${i}`]));
      const view = new FleetView(snapshotOf(policy, peers.map((a) => instance(peerId.get(a)!, [a], []))));
      for (const p of packets) {
        const ingress = p.direction === 'ingress';
        const qa = question(p, ingress ? p.src : 'inst', ingress ? 'inst' : peerId.get(p.dst)!);
        if (!qa) continue;
        const r = reachability(view, qa.q, noPorts);
        const sideOf = ingress ? r.ingress : r.egress;
        // the analysis evaluates from/to the first address of the family; the rules match only the peer's address
        const asked = { ...qa.asked, sport: 40000, ...(ingress ? { dst: r.to.address } : { src: r.from.address }) };
        const e = evaluate(policy, asked, RULES_ONLY);
        const context = `seed ${seed}: ${JSON.stringify(asked)} -> ${JSON.stringify(sideOf)}`;
        expect(sideOf.verdict, context).toBe(e.verdict === 'accept' ? 'allow' : 'deny');
        expect(sideOf.rule?.id ?? null, context).toBe(e.reason.kind === 'rule' ? e.reason.ruleId : null);
        expect(sideOf.reason, context).toBe(e.reason.kind === 'rule' ? 'rule' : 'default');
        compared++;
      }
    }
    expect(compared).toBeGreaterThan(1500);
  });
});

const entry = (protocol: 'tcp' | 'udp', port: number, family: 4 | 6 | null, address: string, status: PortEntry['status'] = 'blocked', process: string | null = null): PortEntry => ({
  protocol,
  port,
  family,
  status,
  listeners: status === 'not-listening' ? [] : [{ address, process }],
  allowed_by: [],
  denied_by: [],
});
const report = (...entries: PortEntry[]): PortReport => ({ revision: 1, source: 'ss', generated_at: T, entries });
const portsOf =
  (reports: Record<string, PortReport>): PortsLookup =>
  (id) =>
    reports[id] ? { report: reports[id], receivedAt: T } : { report: null, receivedAt: null };

describe('exposure', () => {
  const snap = snapshot({
    groups: [group('sg-admin', 'admin'), group('sg-web', 'web'), group('sg-lan', 'lan')],
    rules: [
      ruleRow('sg-admin', { id: 'ssh-any', protocol: 'tcp', multiport: '22' }),
      ruleRow('sg-admin', { id: 'pg-v6', protocol: 'tcp', multiport: '5432', ethertype: 'IPv6', remote_ip_prefix: '::/0' }),
      ruleRow('sg-web', { id: 'web', protocol: 'tcp', multiport: '80,443', remote_ip_prefix: '0.0.0.0/0' }),
      ruleRow('sg-web', { id: 'deny-all-9000', protocol: 'tcp', multiport: '9000', action: 'deny', remote_ip_prefix: '0.0.0.0/0' }),
      ruleRow('sg-web', { id: 'allow-9000', protocol: 'tcp', multiport: '9000', priority: 2 }),
      ruleRow('sg-web', { id: 'deny-some-8000', protocol: 'tcp', multiport: '8000', action: 'deny', remote_ip_prefix: '203.0.113.0/24' }),
      ruleRow('sg-web', { id: 'allow-8000', protocol: 'tcp', multiport: '8000', priority: 2 }),
      ruleRow('sg-lan', { id: 'lan-all', remote_ip_prefix: '198.18.0.0/15' }),
    ],
    instances: [
      instance('i-web', ['198.18.0.2', 'fd00:5ec::2'], ['sg-web', 'sg-admin'], 'web-1'),
      instance('i-db', ['198.18.0.3', 'fd00:5ec::3'], ['sg-admin', 'sg-lan'], 'db-1'),
      instance('i-lan', ['198.18.0.4'], ['sg-lan'], 'lan-1'),
      instance('i-new', ['198.18.0.5'], ['sg-web'], 'new-1'),
    ],
  });
  const reports = {
    'i-web': report(
      entry('tcp', 80, null, '*', 'open', 'nginx'),
      entry('tcp', 443, 4, '0.0.0.0', 'open', 'nginx'),
      entry('tcp', 22, 4, '0.0.0.0', 'open', 'sshd'),
      entry('tcp', 9000, 4, '0.0.0.0'),
      entry('tcp', 8000, 4, '0.0.0.0'),
      entry('tcp', 6000, 4, '127.0.0.1', 'local-only'),
      entry('tcp', 3306, 4, '0.0.0.0'),
    ),
    'i-db': report(entry('tcp', 5432, null, '*', 'open', 'postgres'), entry('tcp', 22, null, '*', 'open', 'sshd'), entry('tcp', 22, null, '', 'not-listening')),
    'i-lan': report(entry('tcp', 3306, 4, '0.0.0.0', 'open', 'mysqld')),
  };
  const list = exposure(new FleetView(snap), portsOf(reports));
  const rows = list.exposure.map((e) => `${e.risk} ${e.instance_name} ${e.protocol}/${e.port} ${e.ethertype} by ${e.rule.id}`);

  it('lists every listening port a rule opens to 0.0.0.0/0 or ::/0, riskiest first (admin, then database ports), then by instance name and port', () => {
    expect(rows).toEqual([
      'critical db-1 tcp/22 IPv4 by ssh-any',
      'critical web-1 tcp/22 IPv4 by ssh-any',
      'critical db-1 tcp/5432 IPv6 by pg-v6',
      'medium web-1 tcp/8000 IPv4 by allow-8000',
      'low web-1 tcp/80 IPv4 by web',
      'low web-1 tcp/443 IPv4 by web',
    ]);
  });

  it('leaves out ports shadowed by a deny for the whole world, loopback listeners, ports no rule opens, and rules open to part of the world only', () => {
    expect(rows.join('\n')).not.toMatch(/9000|6000|3306|lan-1/);
  });

  it('says where it listens, which process, the rule with its group name, and why it is risky', () => {
    const ssh = list.exposure.find((e) => e.instance_id === 'i-web' && e.port === 22)!;
    expect(ssh).toEqual({
      instance_id: 'i-web',
      instance_name: 'web-1',
      protocol: 'tcp',
      port: 22,
      ethertype: 'IPv4',
      listen_address: '0.0.0.0',
      process: 'sshd',
      source: '0.0.0.0/0',
      rule: {
        id: 'ssh-any',
        security_group_id: 'sg-admin',
        security_group_name: 'admin',
        direction: 'ingress',
        priority: 1,
        action: 'allow',
        protocol: 'tcp',
        multiport: '22',
        remote_ip_prefix: null,
        remote_group_id: null,
        remote_address_group_id: null,
      },
      risk: 'critical',
      risk_reason: 'SSH (admin) open to the internet',
    });
    expect(list.exposure.find((e) => e.port === 5432)).toMatchObject({ source: '::/0', ethertype: 'IPv6', risk_reason: 'PostgreSQL (database) open to the internet', process: 'postgres' });
  });

  it('names the instances without a port report', () => {
    expect(list.instances_without_report).toEqual(['i-new']);
  });

  it('the tracker answers what exposure() answers, analysing again only the instances whose report changed, and everything on a new version', () => {
    const tracker = new ExposureTracker();
    const current = { ...reports };
    const lookup: PortsLookup = (id) => (current[id as keyof typeof current] ? { report: current[id as keyof typeof current], receivedAt: `${T}#${id}-${current[id as keyof typeof current].entries.length}` } : { report: null, receivedAt: null });
    const first = tracker.current(snap, lookup);
    expect(first).toEqual(list);
    expect(tracker.current(snap, lookup)).toBe(first);
    current['i-web'] = report(entry('tcp', 22, 4, '0.0.0.0', 'open', 'sshd'));
    const second = tracker.current(snap, lookup);
    expect(second).toEqual(exposure(new FleetView(snap), lookup));
    expect(second).not.toEqual(first);
    const next = { ...snap, version: 2, rules: snap.rules.filter((r) => r.id !== 'ssh-any') };
    expect(tracker.current(next, lookup)).toEqual(exposure(new FleetView(next), lookup));
    expect(tracker.current(next, lookup).exposure.some((e) => e.port === 22)).toBe(false);
  });

  it('an allow for the world that earlier rules shadow entirely (some allowing, some denying) exposes nothing', () => {
    const s = snapshot({
      groups: [group('g')],
      rules: [
        ruleRow('g', { id: 'lan', protocol: 'tcp', multiport: '22', remote_ip_prefix: '0.0.0.0/1' }),
        ruleRow('g', { id: 'deny-rest', protocol: 'tcp', multiport: '22', remote_ip_prefix: '128.0.0.0/1', action: 'deny', priority: 2 }),
        ruleRow('g', { id: 'world', protocol: 'tcp', multiport: '22', priority: 3 }),
      ],
      instances: [instance('i', ['198.18.0.9'], ['g'])],
    });
    expect(exposure(new FleetView(s), portsOf({ i: report(entry('tcp', 22, 4, '0.0.0.0', 'open')) })).exposure).toEqual([]);
  });
});

describe('change preview', () => {
  const base = snapshot({
    groups: [group('g')],
    rules: [ruleRow('g', { id: 'ssh', protocol: 'tcp', multiport: '22' })],
    instances: [instance('a', ['198.18.0.2'], ['g']), instance('b', ['198.18.0.3'], ['g']), instance('c', ['198.18.0.4'], [])],
  });
  const ports = portsOf({ a: report(entry('tcp', 22, 4, '0.0.0.0'), entry('tcp', 443, 4, '0.0.0.0')), b: report(entry('tcp', 22, 4, '0.0.0.0')) });
  const impact = (ops: Parameters<typeof applyOps>[1]) => {
    const after = new FleetView(applyOps(base, ops));
    return changeImpact(new FleetView(base), after, affectedInstances(after.ix, touchedBy(base, ops)), ports);
  };

  it('a rule create names the instances whose document changes and the listening ports it opens to the internet', () => {
    const r = impact([{ op: 'putRule', rule: ruleRow('g', { id: 'https', protocol: 'tcp', multiport: '443,8443' }) }]);
    expect(r).toEqual({ instances: ['a', 'b'], internet: { opened: [{ instance_id: 'a', protocol: 'tcp', port: 443, ethertype: 'IPv4' }], closed: [] } });
  });

  it('a rule delete names the ports it closes', () => {
    const r = impact([{ op: 'deleteRule', id: 'ssh' }]);
    expect(r.instances).toEqual(['a', 'b']);
    expect(r.internet).toEqual({
      opened: [],
      closed: [
        { instance_id: 'a', protocol: 'tcp', port: 22, ethertype: 'IPv4' },
        { instance_id: 'b', protocol: 'tcp', port: 22, ethertype: 'IPv4' },
      ],
    });
  });

  it('a rule that changes no exposure still lists the instances whose document changes', () => {
    const r = impact([{ op: 'putRule', rule: ruleRow('g', { id: 'lan', protocol: 'tcp', multiport: '443', remote_ip_prefix: '198.18.0.0/15' }) }]);
    expect(r).toEqual({ instances: ['a', 'b'], internet: { opened: [], closed: [] } });
  });
});

describe('the analysis view of a document', () => {
  it('ingress rules normalised group by group equal the whole document normalised (random policies)', () => {
    for (let seed = 1; seed <= 100; seed++) {
      const policy = parsePolicy(randomPolicy(createRng(seed)));
      const view = new FleetView(snapshotOf(policy));
      const expected = normalizeRules(policy).filter((r) => r.direction === 'ingress');
      expect(view.ingressRules(view.instance('inst')!), `seed ${seed}`).toEqual(expected);
    }
  });
});
