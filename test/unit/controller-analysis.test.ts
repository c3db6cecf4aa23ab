/* eslint-disable @typescript-eslint/no-explicit-any -- response bodies are untyped JSON, checked by the assertions */
/**
 * The fleet analysis API through fastify inject: GET .../reachability,
 * GET .../exposure, and the `impact` of rule dry runs (docs/api.md "Fleet
 * analysis"). The seed: sg-web ("inbound TCP 80 from 0.0.0.0/0" plus
 * Huawei's default rules), ecs-web-1 in [sg-web, default], and ecs-db-1 in
 * [default].
 */
import { beforeEach, describe, expect, it } from 'vitest';
import type { PortEntry } from '../../src/protocol/messages.js';
import { SCOPED, call, expectError, makeApi, rule, seed, type TestApi } from './controller-helpers.js';

const A = '/v3/proj-a';
let t: TestApi;

beforeEach(async () => {
  t = makeApi();
  await seed(t.app);
  const db = await call(t.app, 'POST', `${A}/instances`, { instance: { id: 'ecs-db-1', name: 'db-1', addresses: ['198.18.0.11', 'fd00:5ec::11'], security_groups: ['default'] } });
  expect(db.status).toBe(201);
});

const listening = (protocol: 'tcp' | 'udp', port: number, process: string, family: 4 | 6 | null = null): PortEntry => ({
  protocol,
  port,
  family,
  status: 'open',
  listeners: [{ address: family === 4 ? '0.0.0.0' : '*', process }],
  allowed_by: [],
  denied_by: [],
});

/** Stores a port report for the instance as the hub does when an agent sends one. */
async function report(instance: string, at: string, ...entries: PortEntry[]): Promise<void> {
  const ok = await t.store.updateAgentState('proj-a', instance, { ports: { revision: 1, source: 'ss', generated_at: at, entries }, ports_received_at: at });
  expect(ok).not.toBeNull();
}

const reach = (q: string) => call(t.app, 'GET', `${A}/reachability?${q}`);

describe('GET /v3/{project_id}/reachability', () => {
  it('needs the project\'s auth', async () => {
    expectError(await call(t.app, 'GET', `${A}/reachability?from=203.0.113.7&to=ecs-web-1&protocol=tcp&port=80`, undefined, {}), 401, 'SG.0002');
    expectError(await call(t.app, 'GET', `/v3/proj-b/reachability?from=203.0.113.7&to=ecs-web-1&protocol=tcp&port=80`, undefined, { 'x-auth-token': SCOPED }), 403, 'SG.0003');
    expectError(await call(t.app, 'GET', `/v3/proj-b/exposure`, undefined, { 'x-auth-token': SCOPED }), 403, 'SG.0003');
  });

  it.each([
    ['from=not_an_address!&to=ecs-web-1&protocol=tcp&port=80', /from: .*neither an instance of this project, an IP address nor a CIDR/],
    ['from=203.0.113.0/33&to=ecs-web-1&protocol=tcp&port=80', /from: .*invalid prefix length/],
    ['from=203.0.113.7&to=ecs-nope&protocol=tcp&port=80', /to: "ecs-nope" is not an instance of this project/],
    ['from=203.0.113.7&protocol=tcp&port=80', /to: /],
    ['from=203.0.113.7&to=ecs-web-1&protocol=tcp', /port: is required for tcp/],
    ['from=203.0.113.7&to=ecs-web-1&protocol=udp&port=0', /port: /],
    ['from=203.0.113.7&to=ecs-web-1&protocol=tcp&port=65536', /port: /],
    ['from=203.0.113.7&to=ecs-web-1&protocol=tcp&port=http', /port: must be a non-negative integer/],
    ['from=203.0.113.7&to=ecs-web-1&protocol=icmp&port=8', /port: must be absent for icmp/],
    ['from=203.0.113.7&to=ecs-web-1&protocol=gre', /protocol: /],
    ['from=203.0.113.7&to=ecs-web-1&protocol=tcp&port=80&ethertype=IPv6', /ethertype: IPv6 disagrees with from "203.0.113.7"/],
    ['from=ecs-db-1&to=ecs-web-1&protocol=tcp&port=80&ethertype=IPv5', /ethertype: /],
  ])('400 SG.0001 for %s', async (q, msg) => {
    expectError(await reach(q), 400, 'SG.0001', msg);
  });

  it('400 when the destination has no address of the family asked', async () => {
    await call(t.app, 'PUT', `${A}/instances/ecs-db-1`, { instance: { addresses: ['198.18.0.11'] } });
    expectError(await reach('from=2001:db8::1&to=ecs-db-1&protocol=tcp&port=22'), 400, 'SG.0001', /to: instance "ecs-db-1" has no IPv6 address/);
  });

  it('IPv4 from an address: allowed by the deciding ingress rule; the egress side is not evaluated; listening null without a report', async () => {
    const r = await reach('from=203.0.113.7&to=ecs-web-1&protocol=tcp&port=80');
    expect(r.status).toBe(200);
    expect(Object.keys(r.body)).toEqual(['request_id', 'reachability']);
    expect(r.body.reachability).toEqual({
      from: { kind: 'address', address: '203.0.113.7' },
      to: { instance_id: 'ecs-web-1', address: '198.18.0.10' },
      protocol: 'tcp',
      port: 80,
      ethertype: 'IPv4',
      verdict: 'allowed',
      egress: { evaluated: false, verdict: 'allow', reason: 'not_evaluated', rule: null },
      ingress: {
        evaluated: true,
        verdict: 'allow',
        reason: 'rule',
        rule: {
          id: 'r-http',
          security_group_id: 'sg-web',
          security_group_name: 'web',
          direction: 'ingress',
          priority: 1,
          action: 'allow',
          protocol: 'tcp',
          multiport: '80',
          remote_ip_prefix: '0.0.0.0/0',
          remote_group_id: null,
          remote_address_group_id: null,
        },
      },
      listening: null,
      ports_reported_at: null,
    });
  });

  it('listening: true when the last report has the port, false when it has not', async () => {
    await report('ecs-web-1', '2024-05-01T12:00:05.000Z', listening('tcp', 80, 'nginx', 4));
    const yes = (await reach('from=203.0.113.7&to=ecs-web-1&protocol=tcp&port=80')).body.reachability;
    expect([yes.listening, yes.ports_reported_at]).toEqual([true, '2024-05-01T12:00:05.000Z']);
    const no = (await reach('from=203.0.113.7&to=ecs-web-1&protocol=tcp&port=81')).body.reachability;
    expect(no).toMatchObject({ verdict: 'denied', ingress: { verdict: 'deny', reason: 'default', rule: null }, listening: false });
    // an IPv4-only listener does not listen for IPv6
    expect((await reach('from=2001:db8::1&to=ecs-web-1&protocol=tcp&port=80')).body.reachability.listening).toBe(false);
  });

  it('IPv6 from an address: the IPv4 rule does not match, default drop', async () => {
    const r = (await reach('from=2001:db8::1&to=ecs-web-1&protocol=tcp&port=80')).body.reachability;
    expect(r).toMatchObject({ ethertype: 'IPv6', to: { address: 'fd00:5ec::10' }, verdict: 'denied', ingress: { evaluated: true, verdict: 'deny', reason: 'default', rule: null } });
  });

  it('a CIDR is evaluated at its first address', async () => {
    const r = (await reach('from=0.0.0.0/0&to=ecs-web-1&protocol=tcp&port=80')).body.reachability;
    expect(r).toMatchObject({ from: { kind: 'cidr', cidr: '0.0.0.0/0', address: '0.0.0.0' }, verdict: 'allowed', ingress: { rule: { id: 'r-http' } } });
  });

  it('a deny rule decides before the allow', async () => {
    const d = await call(t.app, 'POST', `${A}/vpc/security-group-rules`, {
      security_group_rule: { security_group_id: 'sg-web', id: 'r-deny', ...rule({ action: 'deny', remote_ip_prefix: '203.0.113.0/24' }) },
    });
    expect(d.status).toBe(201);
    const r = (await reach('from=203.0.113.7&to=ecs-web-1&protocol=tcp&port=80')).body.reachability;
    expect(r).toMatchObject({ verdict: 'denied', ingress: { verdict: 'deny', reason: 'rule', rule: { id: 'r-deny', action: 'deny', security_group_name: 'web' } } });
    expect((await reach('from=198.51.100.1&to=ecs-web-1&protocol=tcp&port=80')).body.reachability.verdict).toBe('allowed');
  });

  it('instance to instance, IPv4 and IPv6: the source\'s egress and the destination\'s ingress, each with its rule', async () => {
    const r = (await reach('from=ecs-db-1&to=ecs-web-1&protocol=tcp&port=80')).body.reachability;
    expect(r.from).toEqual({ kind: 'instance', instance_id: 'ecs-db-1', address: '198.18.0.11' });
    expect(r).toMatchObject({ verdict: 'allowed', egress: { evaluated: true, verdict: 'allow', reason: 'rule', rule: { security_group_id: 'default', direction: 'egress' } }, ingress: { rule: { id: 'r-http' } } });
    const v6 = (await reach('from=ecs-db-1&to=ecs-web-1&protocol=tcp&port=22&ethertype=IPv6')).body.reachability;
    // ecs-db-1 and ecs-web-1 are both members of default, whose default rule lets its members in
    expect(v6).toMatchObject({ ethertype: 'IPv6', from: { address: 'fd00:5ec::11' }, to: { address: 'fd00:5ec::10' }, verdict: 'allowed', ingress: { rule: { security_group_id: 'default', remote_group_id: 'default' } } });
  });

  it('icmp and any: no port, listening null', async () => {
    for (const protocol of ['icmp', 'any']) {
      const inside = (await reach(`from=ecs-web-1&to=ecs-db-1&protocol=${protocol}`)).body.reachability;
      expect(inside).toMatchObject({ protocol, port: null, verdict: 'allowed', listening: null, ingress: { rule: { remote_group_id: 'default' } } });
      const outside = (await reach(`from=203.0.113.7&to=ecs-db-1&protocol=${protocol}`)).body.reachability;
      expect(outside).toMatchObject({ verdict: 'denied', ingress: { reason: 'default' } });
    }
  });
});

describe('GET /v3/{project_id}/exposure', () => {
  it('listening ports open to the world, riskiest first, and the instances without a report', async () => {
    await call(t.app, 'POST', `${A}/vpc/security-group-rules`, { security_group_rule: { security_group_id: 'sg-web', id: 'r-ssh', ...rule({ multiport: '22' }) } });
    await report('ecs-web-1', '2024-05-01T12:00:05.000Z', listening('tcp', 80, 'nginx'), listening('tcp', 22, 'sshd'), listening('udp', 5353, 'avahi'));
    const r = await call(t.app, 'GET', `${A}/exposure`);
    expect(r.status).toBe(200);
    expect(Object.keys(r.body)).toEqual(['request_id', 'exposure', 'instances_without_report']);
    expect(r.body.exposure.map((e: any) => [e.instance_name, `${e.protocol}/${e.port}`, e.ethertype, e.risk, e.rule.id, e.process])).toEqual([
      ['web-1', 'tcp/22', 'IPv4', 'critical', 'r-ssh', 'sshd'],
      ['web-1', 'tcp/80', 'IPv4', 'low', 'r-http', 'nginx'],
    ]);
    expect(r.body.instances_without_report).toEqual(['ecs-db-1']);
    const one = await call(t.app, 'GET', `${A}/exposure?instance_id=ecs-db-1`);
    expect(one.body).toMatchObject({ exposure: [], instances_without_report: ['ecs-db-1'] });
    expectError(await call(t.app, 'GET', `${A}/exposure?instance_id=ecs-nope`), 400, 'SG.0001', /instance_id: "ecs-nope" is not an instance/);
  });

  it('follows a new port report and a new rule (nothing stale is served from the cache)', async () => {
    await report('ecs-web-1', '2024-05-01T12:00:05.000Z', listening('tcp', 80, 'nginx', 4));
    const ports = async () => (await call(t.app, 'GET', `${A}/exposure`)).body.exposure.map((e: any) => `${e.protocol}/${e.port}`);
    expect(await ports()).toEqual(['tcp/80']);
    await report('ecs-web-1', '2024-05-01T12:00:10.000Z', listening('tcp', 80, 'nginx', 4), listening('tcp', 5432, 'postgres', 4));
    expect(await ports()).toEqual(['tcp/80']);
    await call(t.app, 'POST', `${A}/vpc/security-group-rules`, { security_group_rule: { security_group_id: 'sg-web', id: 'r-pg', ...rule({ multiport: '5432' }) } });
    expect(await ports()).toEqual(['tcp/5432', 'tcp/80']);
    await report('ecs-web-1', '2024-05-01T12:00:15.000Z', listening('tcp', 5432, 'postgres', 4));
    expect(await ports()).toEqual(['tcp/5432']);
  });
});

describe('change preview: dry_run answers the impact', () => {
  beforeEach(async () => {
    await report('ecs-web-1', '2024-05-01T12:00:05.000Z', listening('tcp', 80, 'nginx', 4), listening('tcp', 443, 'nginx', 4));
  });

  async function unchanged(fn: () => Promise<void>): Promise<void> {
    const before = await t.store.loadProject('proj-a');
    const pushed = t.pushed.length;
    await fn();
    expect(await t.store.loadProject('proj-a')).toEqual(before);
    expect(t.pushed.length).toBe(pushed);
  }

  it('a rule create: 202 SYS.0202 with the instances whose document changes and the ports it opens; nothing is written', async () => {
    await unchanged(async () => {
      const r = await call(t.app, 'POST', `${A}/vpc/security-group-rules`, { dry_run: true, security_group_rule: { security_group_id: 'sg-web', ...rule({ multiport: '443' }) } });
      expect(r.status).toBe(202);
      expect(Object.keys(r.body)).toEqual(['request_id', 'error_code', 'error_msg', 'impact']);
      expect(r.body.error_code).toBe('SYS.0202');
      expect(r.body.impact).toEqual({ instances: ['ecs-web-1'], internet: { opened: [{ instance_id: 'ecs-web-1', protocol: 'tcp', port: 443, ethertype: 'IPv4' }], closed: [] } });
    });
  });

  it('a batch create: the same impact for all its rules', async () => {
    await unchanged(async () => {
      const r = await call(t.app, 'POST', `${A}/vpc/security-groups/default/security-group-rules/batch-create`, {
        dry_run: true,
        security_group_rules: [rule({ multiport: '443' }), rule({ multiport: '8443' })],
      });
      expect(r.status).toBe(202);
      expect(r.body.impact).toEqual({ instances: ['ecs-web-1', 'ecs-db-1'], internet: { opened: [{ instance_id: 'ecs-web-1', protocol: 'tcp', port: 443, ethertype: 'IPv4' }], closed: [] } });
    });
  });

  it('a rule delete with ?dry_run=true: the ports it closes; the rule stays', async () => {
    await unchanged(async () => {
      const r = await call(t.app, 'DELETE', `${A}/vpc/security-group-rules/r-http?dry_run=true`);
      expect(r.status).toBe(202);
      expect(r.body.error_code).toBe('SYS.0202');
      expect(r.body.impact).toEqual({ instances: ['ecs-web-1'], internet: { opened: [], closed: [{ instance_id: 'ecs-web-1', protocol: 'tcp', port: 80, ethertype: 'IPv4' }] } });
    });
    expect((await call(t.app, 'GET', `${A}/vpc/security-group-rules/r-http`)).status).toBe(200);
    expectError(await call(t.app, 'DELETE', `${A}/vpc/security-group-rules/r-http?dry_run=maybe`), 400, 'SG.0001', /dry_run/);
    expect((await call(t.app, 'DELETE', `${A}/vpc/security-group-rules/r-http?dry_run=false`)).status).toBe(204);
  });

  it('a dry run that would fail answers the error, as before', async () => {
    expectError(await call(t.app, 'DELETE', `${A}/vpc/security-group-rules/r-nope?dry_run=true`), 404, 'VPC.9904');
  });
});
