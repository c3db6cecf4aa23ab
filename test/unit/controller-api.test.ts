/* eslint-disable @typescript-eslint/no-explicit-any -- response bodies are untyped JSON, checked by the assertions */
import { describe, expect, it, beforeEach } from 'vitest';
import { parsePolicy } from '../../src/policy/schema.js';
import { ADMIN, AUTH, SCOPED, call, expectError, makeApi, rule, seed, type TestApi } from './controller-helpers.js';

const A = '/v3/proj-a';
const B = '/v3/proj-b';

let t: TestApi;
beforeEach(() => {
  t = makeApi();
});

describe('auth', () => {
  it('401 without a token, with an unknown token, and with an agent token', async () => {
    expectError(await call(t.app, 'GET', `${A}/vpc/security-groups`, undefined, {}), 401, 'SG.0002', /missing token/);
    expectError(await call(t.app, 'GET', `${A}/vpc/security-groups`, undefined, { 'x-auth-token': 'nope-nope-nope-nope' }), 401, 'SG.0002', /invalid token/);
    const agentToken = await seed(t.app);
    expectError(await call(t.app, 'GET', `${A}/vpc/security-groups`, undefined, { authorization: `Bearer ${agentToken}` }), 401, 'SG.0002');
  });

  it('accepts X-Auth-Token and Authorization: Bearer', async () => {
    expect((await call(t.app, 'GET', `${A}/vpc/security-groups`, undefined, { 'x-auth-token': ADMIN })).status).toBe(200);
    expect((await call(t.app, 'GET', `${A}/vpc/security-groups`, undefined, { authorization: `Bearer ${ADMIN}` })).status).toBe(200);
  });

  it('403 when the token is not allowed for the project', async () => {
    expect((await call(t.app, 'GET', `${A}/vpc/security-groups`, undefined, { 'x-auth-token': SCOPED })).status).toBe(200);
    expectError(await call(t.app, 'GET', `${B}/vpc/security-groups`, undefined, { 'x-auth-token': SCOPED }), 403, 'SG.0003', /proj-b/);
    expectError(await call(t.app, 'POST', `${B}/vpc/security-groups`, { security_group: { name: 'x' } }, { 'x-auth-token': SCOPED }), 403, 'SG.0003');
  });

  it('400 for a malformed project id, 404 for unknown paths', async () => {
    expectError(await call(t.app, 'GET', '/v3/bad%20project/vpc/security-groups'), 400, 'SG.0001', /project_id/);
    expectError(await call(t.app, 'GET', `${A}/vpc/nothing-here`), 404, 'APIG.0101', /no such API/);
  });
});

describe('security groups', () => {
  it('a new project has the default group with the four default rules', async () => {
    const r = await call(t.app, 'GET', `${A}/vpc/security-groups/default`);
    expect(r.status).toBe(200);
    const rules = r.body.security_group.security_group_rules.map((x: any) => [x.id, x.direction, x.ethertype, x.remote_group_id, x.remote_ip_prefix, x.priority, x.action]);
    expect(rules).toEqual([
      ['default-in-v4', 'ingress', 'IPv4', 'default', null, 1, 'allow'],
      ['default-in-v6', 'ingress', 'IPv6', 'default', null, 1, 'allow'],
      ['default-out-v4', 'egress', 'IPv4', null, '0.0.0.0/0', 1, 'allow'],
      ['default-out-v6', 'egress', 'IPv6', null, '::/0', 1, 'allow'],
    ]);
  });

  // Huawei's defaults (SEMANTICS section 6, changed): same-group ingress IPv4/IPv6 and egress IPv4/IPv6, priority 100; was two egress rules
  it('create returns the group with Huawei\'s four default rules: ingress from the group itself, egress to all', async () => {
    const r = await t.app.inject({ method: 'POST', url: `${A}/vpc/security-groups`, headers: AUTH, payload: { security_group: { name: 'web', description: 'web servers' } } });
    expect(r.statusCode).toBe(201);
    const body = r.json();
    expect(r.headers['x-request-id']).toBe(body.request_id);
    const sg = body.security_group;
    expect(Object.keys(sg)).toEqual(['id', 'name', 'project_id', 'description', 'enterprise_project_id', 'tags', 'security_group_rules', 'created_at', 'updated_at']);
    expect(sg).toMatchObject({ name: 'web', project_id: 'proj-a', description: 'web servers', enterprise_project_id: '0', created_at: '2024-05-01T12:00:00Z' });
    expect(sg.id).toMatch(/^[0-9a-f-]{36}$/);
    expect(
      sg.security_group_rules.map((x: any) => [x.direction, x.ethertype, x.remote_ip_prefix, x.remote_group_id, x.protocol, x.multiport, x.priority, x.action, x.description, x.security_group_id]),
    ).toEqual([
      ['ingress', 'IPv4', null, sg.id, null, null, 100, 'allow', '', sg.id],
      ['ingress', 'IPv6', null, sg.id, null, null, 100, 'allow', '', sg.id],
      ['egress', 'IPv4', '0.0.0.0/0', null, null, null, 100, 'allow', '', sg.id],
      ['egress', 'IPv6', '::/0', null, null, null, 100, 'allow', '', sg.id],
    ]);
    // ordinary rules: they can be deleted
    const first = sg.security_group_rules[0].id;
    expect((await call(t.app, 'DELETE', `${A}/vpc/security-group-rules/${first}`)).status).toBe(204);
  });

  it('create validates every field and names it', async () => {
    expectError(await call(t.app, 'POST', `${A}/vpc/security-groups`, { security_group: {} }), 400, 'SG.0001', /security_group\.name: is required/);
    expectError(await call(t.app, 'POST', `${A}/vpc/security-groups`, { security_group: { name: 'has space' } }), 400, 'SG.0001', /security_group\.name: .*letters, digits/);
    expectError(await call(t.app, 'POST', `${A}/vpc/security-groups`, { security_group: { name: 'x'.repeat(65) } }), 400, 'SG.0001', /security_group\.name/);
    expectError(await call(t.app, 'POST', `${A}/vpc/security-groups`, { security_group: { name: 'a', description: '<b>' } }), 400, 'SG.0001', /security_group\.description: .*"<"/);
    expectError(await call(t.app, 'POST', `${A}/vpc/security-groups`, { security_group: { name: 'a', colour: 'red' } }), 400, 'SG.0001', /security_group\.colour: unknown field/);
    expectError(await call(t.app, 'POST', `${A}/vpc/security-groups`, { security_group: { name: 'a', id: 'bad id' } }), 400, 'SG.0001', /security_group\.id/);
    expectError(await call(t.app, 'POST', `${A}/vpc/security-groups`, { securitygroup: { name: 'a' } }), 400, 'SG.0001', /security_group: is required/);
    expectError(await call(t.app, 'POST', `${A}/vpc/security-groups`), 400, 'SG.0001', /body is missing/);
    const bad = await t.app.inject({ method: 'POST', url: `${A}/vpc/security-groups`, headers: { ...AUTH, 'content-type': 'application/json' }, payload: '{"security_group": ' });
    expectError({ status: bad.statusCode, body: bad.json() }, 400, 'SG.0001');
  });

  it('accepts Huawei-only fields it does not use (enterprise_project_id, tags)', async () => {
    const r = await call(t.app, 'POST', `${A}/vpc/security-groups`, { security_group: { name: 'sg-01', enterprise_project_id: '0', tags: [{ key: 'k', value: 'v' }] } });
    expect(r.status).toBe(201);
  });

  it('409 for an id that exists; dry_run changes nothing', async () => {
    expect((await call(t.app, 'POST', `${A}/vpc/security-groups`, { security_group: { id: 'sg-web', name: 'web' } })).status).toBe(201);
    expectError(await call(t.app, 'POST', `${A}/vpc/security-groups`, { security_group: { id: 'sg-web', name: 'web' } }), 409, 'SG.0009', /sg-web/);
    expectError(await call(t.app, 'POST', `${A}/vpc/security-groups`, { security_group: { id: 'default', name: 'x' } }), 409, 'SG.0009');
    const dry = await call(t.app, 'POST', `${A}/vpc/security-groups`, { security_group: { id: 'sg-dry', name: 'dry' }, dry_run: true });
    expect(dry.status).toBe(202);
    expect(dry.body.error_code).toBe('SYS.0202');
    expect((await call(t.app, 'GET', `${A}/vpc/security-groups/sg-dry`)).status).toBe(404);
    // a dry run still validates
    expectError(await call(t.app, 'POST', `${A}/vpc/security-groups`, { security_group: { id: 'sg-web', name: 'web' }, dry_run: true }), 409, 'SG.0009');
  });

  it('quota: security groups per project', async () => {
    t = makeApi({ quotas: { security_groups_per_project: 2 } });
    expect((await call(t.app, 'POST', `${A}/vpc/security-groups`, { security_group: { name: 'one' } })).status).toBe(201);
    expectError(await call(t.app, 'POST', `${A}/vpc/security-groups`, { security_group: { name: 'two' } }), 409, 'VPC.9905', /security_groups_per_project: 2/);
  });

  it('list: creation order, list form without rules, filters, limit and marker', async () => {
    for (const id of ['sg-1', 'sg-2', 'sg-3', 'sg-4']) await call(t.app, 'POST', `${A}/vpc/security-groups`, { security_group: { id, name: id === 'sg-3' ? 'three' : 'other' } });
    const all = await call(t.app, 'GET', `${A}/vpc/security-groups`);
    expect(all.body.security_groups.map((g: any) => g.id)).toEqual(['default', 'sg-1', 'sg-2', 'sg-3', 'sg-4']);
    expect(all.body.security_groups[0].security_group_rules).toBeUndefined();
    expect(all.body.page_info).toEqual({ previous_marker: 'default', current_count: 5 });

    const p1 = await call(t.app, 'GET', `${A}/vpc/security-groups?limit=2`);
    expect(p1.body.security_groups.map((g: any) => g.id)).toEqual(['default', 'sg-1']);
    expect(p1.body.page_info).toEqual({ previous_marker: 'default', current_count: 2, next_marker: 'sg-1' });
    const p2 = await call(t.app, 'GET', `${A}/vpc/security-groups?limit=2&marker=${p1.body.page_info.next_marker}`);
    expect(p2.body.security_groups.map((g: any) => g.id)).toEqual(['sg-2', 'sg-3']);
    const p3 = await call(t.app, 'GET', `${A}/vpc/security-groups?limit=2&marker=${p2.body.page_info.next_marker}`);
    expect(p3.body.security_groups.map((g: any) => g.id)).toEqual(['sg-4']);
    expect(p3.body.page_info.next_marker).toBeUndefined();

    expect((await call(t.app, 'GET', `${A}/vpc/security-groups?name=three`)).body.security_groups.map((g: any) => g.id)).toEqual(['sg-3']);
    expect((await call(t.app, 'GET', `${A}/vpc/security-groups?id=sg-4&id=sg-1`)).body.security_groups.map((g: any) => g.id)).toEqual(['sg-1', 'sg-4']);
    expectError(await call(t.app, 'GET', `${A}/vpc/security-groups?marker=nope`), 400, 'SG.0001', /^marker:/);
    expectError(await call(t.app, 'GET', `${A}/vpc/security-groups?limit=-1`), 400, 'SG.0001', /^limit:/);
    expectError(await call(t.app, 'GET', `${A}/vpc/security-groups?limit=2001`), 400, 'SG.0001', /^limit:/);
  });

  it('get: 404 for unknown ids and ids that cannot exist', async () => {
    expectError(await call(t.app, 'GET', `${A}/vpc/security-groups/sg-none`), 404, 'VPC.9904', /security group "sg-none" not found/);
    expectError(await call(t.app, 'GET', `${A}/vpc/security-groups/${'x'.repeat(65)}`), 404, 'VPC.9904');
  });

  it('update: name and description; the default group keeps its name', async () => {
    await call(t.app, 'POST', `${A}/vpc/security-groups`, { security_group: { id: 'sg-web', name: 'web' } });
    await t.clock.advance(60_000);
    const r = await call(t.app, 'PUT', `${A}/vpc/security-groups/sg-web`, { security_group: { name: 'web2', description: 'new' } });
    expect(r.status).toBe(200);
    expect(r.body.security_group).toMatchObject({ id: 'sg-web', name: 'web2', description: 'new', created_at: '2024-05-01T12:00:00Z', updated_at: '2024-05-01T12:01:00Z' });
    expect(r.body.security_group.security_group_rules).toHaveLength(4);
    expectError(await call(t.app, 'PUT', `${A}/vpc/security-groups/default`, { security_group: { name: 'other' } }), 400, 'SG.0001', /cannot be renamed/);
    expect((await call(t.app, 'PUT', `${A}/vpc/security-groups/default`, { security_group: { description: 'mine' } })).status).toBe(200);
    expectError(await call(t.app, 'PUT', `${A}/vpc/security-groups/sg-none`, { security_group: { name: 'x' } }), 404, 'VPC.9904');
    expectError(await call(t.app, 'PUT', `${A}/vpc/security-groups/sg-web`, { security_group: { name: 'a b' } }), 400, 'SG.0001', /security_group\.name/);
  });

  it('delete: 204; refused for the default group and while referenced by a rule or an instance', async () => {
    await call(t.app, 'POST', `${A}/vpc/security-groups`, { security_group: { id: 'sg-db', name: 'db' } });
    await call(t.app, 'POST', `${A}/vpc/security-groups`, { security_group: { id: 'sg-web', name: 'web' } });
    await call(t.app, 'POST', `${A}/vpc/security-group-rules`, { security_group_rule: { id: 'r-from-web', security_group_id: 'sg-db', ...rule({ remote_ip_prefix: null, remote_group_id: 'sg-web' }) } });
    expectError(await call(t.app, 'DELETE', `${A}/vpc/security-groups/default`), 409, 'VPC.9902', /default security group cannot be deleted/);
    expectError(await call(t.app, 'DELETE', `${A}/vpc/security-groups/sg-web`), 409, 'VPC.9902', /rule "r-from-web"/);
    await call(t.app, 'POST', `${A}/instances`, { instance: { id: 'i1', security_groups: ['sg-db'] } });
    expectError(await call(t.app, 'DELETE', `${A}/vpc/security-groups/sg-db`), 409, 'VPC.9902', /instance "i1"/);
    await call(t.app, 'DELETE', `${A}/vpc/security-group-rules/r-from-web`);
    const d = await call(t.app, 'DELETE', `${A}/vpc/security-groups/sg-web`);
    expect(d.status).toBe(204);
    expect(d.text).toBe('');
    expectError(await call(t.app, 'DELETE', `${A}/vpc/security-groups/sg-web`), 404, 'VPC.9904');
  });

  it('a group whose only reference is its own rule can be deleted, with its rules', async () => {
    await call(t.app, 'POST', `${A}/vpc/security-groups`, { security_group: { id: 'sg-self', name: 'self' } });
    await call(t.app, 'POST', `${A}/vpc/security-group-rules`, { security_group_rule: { id: 'r-self', security_group_id: 'sg-self', ...rule({ remote_ip_prefix: null, remote_group_id: 'sg-self' }) } });
    expect((await call(t.app, 'DELETE', `${A}/vpc/security-groups/sg-self`)).status).toBe(204);
    expectError(await call(t.app, 'GET', `${A}/vpc/security-group-rules/r-self`), 404, 'VPC.9904');
  });
});

describe('security group rules', () => {
  beforeEach(async () => {
    await call(t.app, 'POST', `${A}/vpc/security-groups`, { security_group: { id: 'sg-web', name: 'web' } });
  });
  const create = (r: Record<string, unknown>) => call(t.app, 'POST', `${A}/vpc/security-group-rules`, { security_group_rule: { security_group_id: 'sg-web', ...r } });

  it('create: defaults (priority 1, action allow, ethertype IPv4) and the v3 field order', async () => {
    const r = await create({ direction: 'ingress', protocol: 'tcp', multiport: '80' });
    expect(r.status).toBe(201);
    expect(Object.keys(r.body)).toEqual(['request_id', 'security_group_rule']);
    const x = r.body.security_group_rule;
    expect(Object.keys(x)).toEqual([
      'id',
      'project_id',
      'security_group_id',
      'direction',
      'protocol',
      'description',
      'created_at',
      'updated_at',
      'ethertype',
      'remote_ip_prefix',
      'multiport',
      'action',
      'priority',
      'remote_group_id',
      'remote_address_group_id',
      'enabled',
    ]);
    expect(x).toMatchObject({ priority: 1, action: 'allow', ethertype: 'IPv4', remote_ip_prefix: null, description: '', protocol: 'tcp', multiport: '80' });
  });

  it('priority may be a string (as in Huawei\'s SDK models) or an integer', async () => {
    expect((await create({ direction: 'ingress', protocol: 'tcp', multiport: '81', priority: '5' })).body.security_group_rule.priority).toBe(5);
    expect((await create({ direction: 'ingress', protocol: 'tcp', multiport: '82', priority: 100 })).body.security_group_rule.priority).toBe(100);
  });

  it('icmp_type and icmp_code appear only when set', async () => {
    const r = await create({ direction: 'ingress', protocol: 'icmp', icmp_type: 8, icmp_code: 0 });
    expect(r.body.security_group_rule).toMatchObject({ icmp_type: 8, icmp_code: 0 });
  });

  it.each([
    [{ protocol: 'tcp' }, /security_group_rule\.direction: is required/],
    [{ direction: 'in' }, /security_group_rule\.direction: the string "in" is not one of "ingress", "egress"/],
    [{ direction: 'ingress', ethertype: 'IPv5' }, /security_group_rule\.ethertype/],
    [{ direction: 'ingress', protocol: 'gre!' }, /security_group_rule\.protocol: "gre!" is not a protocol/],
    [{ direction: 'ingress', multiport: '80' }, /security_group_rule\.multiport: ports need protocol tcp, udp or sctp/],
    [{ direction: 'ingress', protocol: 'tcp', multiport: '0' }, /security_group_rule\.multiport: "0" is not a port/],
    [{ direction: 'ingress', protocol: 'tcp', multiport: '90-80' }, /security_group_rule\.multiport: .*greater than the last/],
    [{ direction: 'ingress', protocol: 'tcp', multiport: '80,80' }, /security_group_rule\.multiport: "80" is listed twice/],
    [{ direction: 'ingress', remote_ip_prefix: '10.0.0.0/33' }, /security_group_rule\.remote_ip_prefix: .*prefix length/],
    [{ direction: 'ingress', remote_ip_prefix: '10.0.0.0/8', remote_group_id: 'sg-web' }, /security_group_rule\.remote_group_id: only one of/],
    [{ direction: 'ingress', priority: 0 }, /security_group_rule\.priority/],
    [{ direction: 'ingress', priority: '101' }, /security_group_rule\.priority/],
    [{ direction: 'ingress', action: 'reject' }, /security_group_rule\.action/],
    [{ direction: 'ingress', description: 'x'.repeat(256) }, /security_group_rule\.description/],
    [{ direction: 'ingress', icmp_code: 1, protocol: 'icmp' }, /security_group_rule\.icmp_code: an ICMP code needs an ICMP type/],
    [{ direction: 'ingress', enabled: 'no' }, /security_group_rule\.enabled/],
    [{ direction: 'ingress', port_range_min: 80 }, /security_group_rule\.port_range_min: unknown field/],
    [{ direction: 'ingress', remote_group_id: 'sg-none' }, /security_group_rule\.remote_group_id: security group "sg-none" does not exist/],
    [{ direction: 'ingress', remote_address_group_id: 'ag-none' }, /security_group_rule\.remote_address_group_id: address group "ag-none" does not exist/],
  ])('400 for %j', async (input, msg) => {
    expectError(await create(input), 400, 'SG.0001', msg);
  });

  // Huawei: an ethertype that disagrees with the protocol or the peer is VPC.9902 (400)
  it.each([
    [{ direction: 'ingress', protocol: 'icmp', ethertype: 'IPv6' }, /security_group_rule\.protocol: .*needs ethertype IPv4/],
    [{ direction: 'ingress', protocol: 'icmpv6' }, /security_group_rule\.protocol: .*needs ethertype IPv6/],
    [{ direction: 'ingress', remote_ip_prefix: '2001:db8::/32' }, /security_group_rule\.remote_ip_prefix: .*IPv6 but the rule's ethertype is IPv4/],
  ])('400 VPC.9902 for %j (ethertype disagrees)', async (input, msg) => {
    expectError(await create(input), 400, 'VPC.9902', msg);
  });

  it('404 for an unknown security_group_id', async () => {
    expectError(await call(t.app, 'POST', `${A}/vpc/security-group-rules`, { security_group_rule: { security_group_id: 'sg-none', direction: 'ingress' } }), 404, 'VPC.9904', /sg-none/);
  });

  it('400 when the address group has the other IP version', async () => {
    await call(t.app, 'POST', `${A}/vpc/address-groups`, { address_group: { id: 'ag6', name: 'v6', ip_version: 6, ip_set: ['fd00:5ec::/64'] } });
    expectError(await create({ direction: 'ingress', remote_address_group_id: 'ag6' }), 400, 'VPC.9902', /address group "ag6" is IPv6 but the rule's ethertype is IPv4/);
    expect((await create({ direction: 'ingress', ethertype: 'IPv6', remote_address_group_id: 'ag6' })).status).toBe(201);
  });

  it('409 for an exact duplicate, also when written differently', async () => {
    expect((await create(rule())).status).toBe(201);
    expectError(await create(rule()), 409, 'VPC.9902', /duplicates rule/);
    expectError(await create(rule({ protocol: '6', remote_ip_prefix: null, description: 'other text' })), 409, 'VPC.9902');
    expectError(await create(rule({ remote_ip_prefix: '0.0.0.0/0', multiport: '80-80' })), 409, 'VPC.9902');
    // a different priority is a different rule
    expect((await create(rule({ priority: 2 }))).status).toBe(201);
  });

  it('409 for a rule identical to another except for the action', async () => {
    expect((await create(rule())).status).toBe(201);
    expectError(await create(rule({ action: 'deny' })), 409, 'VPC.9902', /differ only in their action/);
  });

  it('409 for a rule id that exists', async () => {
    expect((await create(rule({ id: 'r1' }))).status).toBe(201);
    expectError(await create(rule({ id: 'r1', multiport: '443' })), 409, 'SG.0009');
  });

  // the four default rules of a new group count (Huawei's defaults: SEMANTICS section 6); was two before
  it('quota: rules per group (the four default rules count)', async () => {
    t = makeApi({ quotas: { rules_per_group: 5 } });
    await call(t.app, 'POST', `${A}/vpc/security-groups`, { security_group: { id: 'sg-web', name: 'web' } });
    expect((await create(rule())).status).toBe(201);
    expectError(await create(rule({ multiport: '443' })), 409, 'VPC.9905', /would have 6 rules \(quota rules_per_group: 5\)/);
  });

  it('quota: a group cannot be created when its four default rules exceed rules_per_group', async () => {
    t = makeApi({ quotas: { rules_per_group: 3 } });
    expectError(await call(t.app, 'POST', `${A}/vpc/security-groups`, { security_group: { id: 'sg-web', name: 'web' } }), 409, 'VPC.9905', /4 default rules \(quota rules_per_group: 3\)/);
    expectError(await call(t.app, 'GET', `${A}/vpc/security-groups/sg-web`), 404, 'VPC.9904');
  });

  it('get, delete, 404', async () => {
    const id = (await create(rule())).body.security_group_rule.id;
    expect((await call(t.app, 'GET', `${A}/vpc/security-group-rules/${id}`)).body.security_group_rule.id).toBe(id);
    expect((await call(t.app, 'DELETE', `${A}/vpc/security-group-rules/${id}`)).status).toBe(204);
    expectError(await call(t.app, 'GET', `${A}/vpc/security-group-rules/${id}`), 404, 'VPC.9904');
    expectError(await call(t.app, 'DELETE', `${A}/vpc/security-group-rules/${id}`), 404, 'VPC.9904');
  });

  it('list: filters by security_group_id, direction, protocol, ethertype; pagination', async () => {
    await create(rule({ id: 'r-80' }));
    await create(rule({ id: 'r-53', protocol: 'udp', multiport: '53' }));
    await create(rule({ id: 'r-out', direction: 'egress', protocol: 'tcp', multiport: '443' }));
    const ids = async (q: string) => (await call(t.app, 'GET', `${A}/vpc/security-group-rules${q}`)).body.security_group_rules.map((r: any) => r.id);
    // after the group's two default ingress rules (Huawei's defaults)
    expect((await ids('?security_group_id=sg-web&direction=ingress')).slice(2)).toEqual(['r-80', 'r-53']);
    expect(await ids('?security_group_id=sg-web&protocol=udp')).toEqual(['r-53']);
    expect(await ids('?security_group_id=default&ethertype=IPv6')).toEqual(['default-in-v6', 'default-out-v6']);
    expect(await ids('?security_group_id=sg-web&protocol=tcp&protocol=udp&direction=ingress')).toEqual(['r-80', 'r-53']);
    const p = await call(t.app, 'GET', `${A}/vpc/security-group-rules?security_group_id=sg-web&limit=2&marker=r-80`);
    expect(p.body.security_group_rules.map((r: any) => r.id)).toEqual(['r-53', 'r-out']);
    expect(p.body.page_info).toEqual({ previous_marker: 'r-53', current_count: 2 });
    expectError(await call(t.app, 'GET', `${A}/vpc/security-group-rules?direction=inbound`), 400, 'SG.0001', /^direction:/);
  });

  describe('batch-create', () => {
    const batch = (rules: unknown[], extra: Record<string, unknown> = {}) =>
      call(t.app, 'POST', `${A}/vpc/security-groups/sg-web/security-group-rules/batch-create`, { security_group_rules: rules, ...extra });

    it('creates all rules', async () => {
      const r = await batch([rule({ multiport: '80' }), rule({ multiport: '443', priority: '2' })]);
      expect(r.status).toBe(201);
      expect(r.body.security_group_rules.map((x: any) => [x.multiport, x.priority, x.security_group_id])).toEqual([
        ['80', 1, 'sg-web'],
        ['443', 2, 'sg-web'],
      ]);
    });

    it('is all-or-nothing: one invalid rule and none is created', async () => {
      expectError(await batch([rule({ multiport: '80' }), rule({ multiport: '99999' })]), 400, 'SG.0001', /security_group_rules\[1\]\.multiport/);
      expectError(await batch([rule({ multiport: '80' }), rule({ multiport: '81' }), rule({ multiport: '80', action: 'deny' })]), 409, 'VPC.9902');
      // tcp: the group's default rules have no protocol
      const list = await call(t.app, 'GET', `${A}/vpc/security-group-rules?security_group_id=sg-web&direction=ingress&protocol=tcp`);
      expect(list.body.security_group_rules).toEqual([]);
    });

    it('duplicates fail, or are skipped with ignore_duplicate', async () => {
      await batch([rule({ multiport: '80' })]);
      expectError(await batch([rule({ multiport: '443' }), rule({ multiport: '80' })]), 409, 'VPC.9902', /security_group_rules\[1\]/);
      expectError(await batch([rule({ multiport: '22' }), rule({ multiport: '22' })]), 409, 'VPC.9902', /security_group_rules\[1\] duplicates security_group_rules\[0\]/);
      const r = await batch([rule({ multiport: '443' }), rule({ multiport: '80' }), rule({ multiport: '443' })], { ignore_duplicate: true });
      expect(r.status).toBe(201);
      expect(r.body.security_group_rules.map((x: any) => x.multiport)).toEqual(['443']);
    });

    it('validates the body and the group; dry_run writes nothing', async () => {
      expectError(await batch([]), 400, 'SG.0001', /security_group_rules/);
      expectError(await batch([rule({ security_group_id: 'sg-web' })]), 400, 'SG.0001', /security_group_rules\[0\]\.security_group_id: unknown field/);
      expectError(
        await call(t.app, 'POST', `${A}/vpc/security-groups/sg-none/security-group-rules/batch-create`, { security_group_rules: [rule()] }),
        404,
        'VPC.9904',
      );
      expect((await batch([rule({ multiport: '8080' })], { dry_run: true })).status).toBe(202);
      // tcp: the group's default rules have no protocol
      const list = await call(t.app, 'GET', `${A}/vpc/security-group-rules?security_group_id=sg-web&direction=ingress&protocol=tcp`);
      expect(list.body.security_group_rules).toEqual([]);
    });

    it('quota counts the whole batch', async () => {
      t = makeApi({ quotas: { rules_per_group: 6 } }); // 4 default rules + 2
      await call(t.app, 'POST', `${A}/vpc/security-groups`, { security_group: { id: 'sg-web', name: 'web' } });
      expectError(await batch([rule({ multiport: '1' }), rule({ multiport: '2' }), rule({ multiport: '3' })]), 409, 'VPC.9905');
      expect((await batch([rule({ multiport: '1' }), rule({ multiport: '2' })])).status).toBe(201);
    });
  });
});

describe('address groups', () => {
  const create = (a: Record<string, unknown>) => call(t.app, 'POST', `${A}/vpc/address-groups`, { address_group: { name: 'office', ip_version: 4, ...a } });

  it('create, get, list, update, delete', async () => {
    const c = await create({ id: 'ag-office', ip_set: ['203.0.113.0/24', '198.51.100.5-198.51.100.9', '192.0.2.1'], description: 'the office' });
    expect(c.status).toBe(201);
    // the complete v3 shape (issue 14): max_capacity, enterprise_project_id, tags, status, status_message, ip_extra_set
    expect(Object.keys(c.body.address_group)).toEqual([
      'id',
      'name',
      'description',
      'max_capacity',
      'ip_set',
      'ip_version',
      'created_at',
      'updated_at',
      'tenant_id',
      'enterprise_project_id',
      'tags',
      'status',
      'status_message',
      'ip_extra_set',
    ]);
    expect(c.body.address_group).toMatchObject({ id: 'ag-office', tenant_id: 'proj-a', ip_version: 4 });
    expect((await call(t.app, 'GET', `${A}/vpc/address-groups/ag-office`)).body.address_group.ip_set).toHaveLength(3);
    await create({ id: 'ag-v6', ip_version: 6, ip_set: [] });
    expect((await call(t.app, 'GET', `${A}/vpc/address-groups?ip_version=6`)).body.address_groups.map((a: any) => a.id)).toEqual(['ag-v6']);
    expect((await call(t.app, 'GET', `${A}/vpc/address-groups?limit=1`)).body.page_info).toEqual({ previous_marker: 'ag-office', current_count: 1, next_marker: 'ag-office' });
    const u = await call(t.app, 'PUT', `${A}/vpc/address-groups/ag-office`, { address_group: { ip_set: ['192.0.2.0/24'], name: 'hq' } });
    expect(u.body.address_group).toMatchObject({ name: 'hq', ip_set: ['192.0.2.0/24'], description: 'the office' });
    expect((await call(t.app, 'DELETE', `${A}/vpc/address-groups/ag-office`)).status).toBe(204);
    expectError(await call(t.app, 'GET', `${A}/vpc/address-groups/ag-office`), 404, 'VPC.9904');
  });

  it('tags: stored and returned; more than 20 or a duplicate key refused', async () => {
    const tags = [{ key: 'site', value: 'hq' }];
    const c = await create({ id: 'ag-t', tags });
    expect(c.body.address_group.tags).toEqual(tags);
    expect((await call(t.app, 'GET', `${A}/vpc/address-groups/ag-t`)).body.address_group.tags).toEqual(tags);
    expectError(await create({ tags: Array.from({ length: 21 }, (_, i) => ({ key: `k${i}`, value: '' })) }), 400, 'SG.0001', /address_group\.tags/);
    expectError(await create({ tags: [{ key: 'a', value: '1' }, { key: 'a', value: '2' }] }), 400, 'SG.0001', /keys must be unique/);
  });

  it('validates ip_version and every ip_set entry', async () => {
    expectError(await create({ ip_version: 5 }), 400, 'SG.0001', /address_group\.ip_version/);
    expectError(await create({ ip_set: ['10.0.0.0/8', 'fd00::1'] }), 400, 'VPC.9901', /address_group\.ip_set\[1\]: "fd00::1" is IPv6 but the address group's ip_version is 4/);
    expectError(await create({ ip_set: ['not-an-ip'] }), 400, 'VPC.9901', /address_group\.ip_set\[0\]/);
    expectError(await create({ ip_set: ['10.0.0.9-10.0.0.1'] }), 400, 'VPC.9901', /first address is greater/);
    expectError(await create({ ip_set: ['10.0.0.1', '10.0.0.1'] }), 400, 'VPC.9901', /ip_set\[1\]: "10.0.0.1" is listed twice/);
    expectError(await create({ name: '' }), 400, 'SG.0001', /address_group\.name/);
    await create({ id: 'ag1' });
    expectError(await call(t.app, 'PUT', `${A}/vpc/address-groups/ag1`, { address_group: { ip_version: 6 } }), 400, 'SG.0001', /address_group\.ip_version: unknown field/);
    expectError(await call(t.app, 'PUT', `${A}/vpc/address-groups/ag1`, { address_group: { ip_set: ['fd00::1'] } }), 400, 'VPC.9901', /ip_set\[0\]/);
    expectError(await create({ id: 'ag1' }), 409, 'SG.0009');
  });

  it('quotas: entries per address group, address groups per project', async () => {
    t = makeApi({ quotas: { entries_per_address_group: 2, address_groups_per_project: 1 } });
    expectError(await create({ ip_set: ['10.0.0.1', '10.0.0.2', '10.0.0.3'] }), 409, 'VPC.9905', /entries_per_address_group: 2/);
    expect((await create({ id: 'ag1', ip_set: ['10.0.0.1', '10.0.0.2'] })).status).toBe(201);
    expectError(await call(t.app, 'PUT', `${A}/vpc/address-groups/ag1`, { address_group: { ip_set: ['10.0.0.1', '10.0.0.2', '10.0.0.3'] } }), 409, 'VPC.9905');
    expectError(await create({ id: 'ag2' }), 409, 'VPC.9905', /address_groups_per_project: 1/);
  });

  it('409 on delete while a rule references it', async () => {
    await create({ id: 'ag1', ip_set: ['10.0.0.0/8'] });
    await call(t.app, 'POST', `${A}/vpc/security-group-rules`, { security_group_rule: { id: 'r-ag', security_group_id: 'default', ...rule({ remote_ip_prefix: null, remote_address_group_id: 'ag1' }) } });
    expectError(await call(t.app, 'DELETE', `${A}/vpc/address-groups/ag1`), 409, 'VPC.9907', /rule "r-ag"/);
  });
});

describe('instances', () => {
  it('create returns the token once; get and list never show it', async () => {
    const c = await call(t.app, 'POST', `${A}/instances`, { instance: { id: 'i1', name: 'one', addresses: ['198.18.0.1', 'FD00:5EC:0:0::1'] } });
    expect(c.status).toBe(201);
    expect(c.body.token).toMatch(/^sgi_/);
    expect(c.body.instance).toEqual({
      id: 'i1',
      name: 'one',
      project_id: 'proj-a',
      addresses: ['198.18.0.1', 'fd00:5ec::1'],
      security_groups: ['default'],
      created_at: '2024-05-01T12:00:00Z',
      updated_at: '2024-05-01T12:00:00Z',
    });
    expect((await call(t.app, 'GET', `${A}/instances/i1`)).text).not.toContain(c.body.token);
    expect((await call(t.app, 'GET', `${A}/instances`)).text).not.toContain(c.body.token);
    const gen = await call(t.app, 'POST', `${A}/instances`, { instance: {} });
    expect(gen.body.instance.id).toMatch(/^[0-9a-f-]{36}$/);
  });

  it('validates addresses and groups', async () => {
    await call(t.app, 'POST', `${A}/vpc/security-groups`, { security_group: { id: 'sg-web', name: 'web' } });
    expectError(await call(t.app, 'POST', `${A}/instances`, { instance: { addresses: ['198.18.0.300'] } }), 400, 'SG.0001', /instance\.addresses\[0\]: "198.18.0.300" is not an IPv4 or IPv6 address/);
    expectError(await call(t.app, 'POST', `${A}/instances`, { instance: { addresses: ['198.18.0.1', '198.18.0.1'] } }), 400, 'SG.0001', /instance\.addresses\[1\]/);
    expectError(await call(t.app, 'POST', `${A}/instances`, { instance: { security_groups: ['sg-none'] } }), 400, 'SG.0001', /instance\.security_groups\[0\]: security group "sg-none" does not exist/);
    expectError(await call(t.app, 'POST', `${A}/instances`, { instance: { security_groups: ['sg-web', 'sg-web'] } }), 400, 'SG.0001', /security_groups\[1\]: .*listed twice/);
    expectError(await call(t.app, 'POST', `${A}/instances`, { instance: { name: '<x>' } }), 400, 'SG.0001', /instance\.name/);
    expectError(await call(t.app, 'POST', `${A}/instances`, { instance: { ip: '1.2.3.4' } }), 400, 'SG.0001', /instance\.ip: unknown field/);
    await call(t.app, 'POST', `${A}/instances`, { instance: { id: 'i1' } });
    expectError(await call(t.app, 'POST', `${A}/instances`, { instance: { id: 'i1' } }), 409, 'SG.0009');
  });

  it('quota: groups per instance', async () => {
    t = makeApi({ quotas: { groups_per_instance: 2 } });
    for (const id of ['g1', 'g2']) await call(t.app, 'POST', `${A}/vpc/security-groups`, { security_group: { id, name: id } });
    expectError(await call(t.app, 'POST', `${A}/instances`, { instance: { security_groups: ['g1', 'g2', 'default'] } }), 409, 'VPC.9905', /groups_per_instance: 2/);
    expect((await call(t.app, 'POST', `${A}/instances`, { instance: { id: 'i1', security_groups: ['g1', 'g2'] } })).status).toBe(201);
    expectError(await call(t.app, 'PUT', `${A}/instances/i1`, { instance: { security_groups: ['g2', 'g1', 'default'] } }), 409, 'VPC.9905');
  });

  it('update changes addresses and the group order; list filters by group', async () => {
    await call(t.app, 'POST', `${A}/vpc/security-groups`, { security_group: { id: 'sg-web', name: 'web' } });
    await call(t.app, 'POST', `${A}/instances`, { instance: { id: 'i1', security_groups: ['sg-web', 'default'] } });
    await call(t.app, 'POST', `${A}/instances`, { instance: { id: 'i2' } });
    const u = await call(t.app, 'PUT', `${A}/instances/i1`, { instance: { addresses: ['198.18.0.7'], security_groups: ['default', 'sg-web'] } });
    expect(u.body.instance).toMatchObject({ addresses: ['198.18.0.7'], security_groups: ['default', 'sg-web'] });
    const policy = parsePolicy(JSON.parse((await call(t.app, 'GET', `${A}/instances/i1/policy`)).text));
    expect(policy.security_groups.map((g) => g.id)).toEqual(['default', 'sg-web']);
    expect((await call(t.app, 'GET', `${A}/instances?security_group_id=sg-web`)).body.instances.map((i: any) => i.id)).toEqual(['i1']);
    expect((await call(t.app, 'GET', `${A}/instances?limit=1`)).body.page_info).toEqual({ previous_marker: 'i1', current_count: 1, next_marker: 'i1' });
    expectError(await call(t.app, 'PUT', `${A}/instances/none`, { instance: { name: 'x' } }), 404, 'VPC.9904');
  });

  it('delete disconnects the agent; rotate-token issues a new token and disconnects', async () => {
    const token = await seed(t.app);
    const r = await call(t.app, 'POST', `${A}/instances/ecs-web-1/rotate-token`);
    expect(r.status).toBe(200);
    expect(r.body).toMatchObject({ instance_id: 'ecs-web-1' });
    expect(r.body.token).not.toBe(token);
    expect(await t.store.findTokenOwner((await import('../../src/controller/tokens.js')).hashToken(token))).toBeNull();
    expect(t.presence.disconnects).toEqual([{ project: 'proj-a', instance: 'ecs-web-1', why: 'revoked' }]);
    expect((await call(t.app, 'DELETE', `${A}/instances/ecs-web-1`)).status).toBe(204);
    expect(t.presence.disconnects[1]).toEqual({ project: 'proj-a', instance: 'ecs-web-1', why: 'deleted' });
    for (const sub of ['', '/policy', '/status', '/ports']) expectError(await call(t.app, 'GET', `${A}/instances/ecs-web-1${sub}`), 404, 'VPC.9904');
    expectError(await call(t.app, 'POST', `${A}/instances/ecs-web-1/rotate-token`), 404, 'VPC.9904');
  });

  it('policy, status and ports of a fresh instance', async () => {
    await seed(t.app);
    const p = await t.app.inject({ method: 'GET', url: `${A}/instances/ecs-web-1/policy`, headers: AUTH });
    expect(p.statusCode).toBe(200);
    expect(p.headers['content-type']).toMatch(/^application\/json/);
    const policy = parsePolicy(JSON.parse(p.body));
    expect(policy.instance).toEqual({ id: 'ecs-web-1', addresses: ['198.18.0.10', 'fd00:5ec::10'] });
    const s = await call(t.app, 'GET', `${A}/instances/ecs-web-1/status`);
    expect(s.body.status).toEqual({
      instance_id: 'ecs-web-1',
      desired_revision: policy.revision,
      applied_revision: null,
      in_sync: false,
      connected: false,
      last_seen: null,
      last_ack: null,
      last_error: null,
      agent: { version: null, hostname: null },
    });
    const ports = await call(t.app, 'GET', `${A}/instances/ecs-web-1/ports`);
    expect(ports.body).toMatchObject({ instance_id: 'ecs-web-1', received_at: null, report: null });
  });
});

describe('project isolation', () => {
  it('a project sees nothing of another and cannot reference its groups', async () => {
    await seed(t.app, 'proj-a');
    await call(t.app, 'POST', `${A}/vpc/address-groups`, { address_group: { id: 'ag-a', name: 'a', ip_version: 4, ip_set: ['10.0.0.0/8'] } });
    await call(t.app, 'POST', `${B}/vpc/security-groups`, { security_group: { id: 'sg-b', name: 'b' } });
    expectError(await call(t.app, 'GET', `${B}/vpc/security-groups/sg-web`), 404, 'VPC.9904');
    expectError(await call(t.app, 'GET', `${B}/vpc/security-group-rules/r-http`), 404, 'VPC.9904');
    expectError(await call(t.app, 'GET', `${B}/instances/ecs-web-1/policy`), 404, 'VPC.9904');
    expectError(await call(t.app, 'DELETE', `${B}/vpc/security-groups/sg-web`), 404, 'VPC.9904');
    expectError(await call(t.app, 'POST', `${B}/vpc/security-group-rules`, { security_group_rule: { security_group_id: 'sg-web', direction: 'ingress' } }), 404, 'VPC.9904');
    expectError(
      await call(t.app, 'POST', `${B}/vpc/security-group-rules`, { security_group_rule: { security_group_id: 'sg-b', direction: 'ingress', remote_group_id: 'sg-web' } }),
      400,
      'SG.0001',
      /security group "sg-web" does not exist in project proj-b/,
    );
    expectError(
      await call(t.app, 'POST', `${B}/vpc/security-group-rules`, { security_group_rule: { security_group_id: 'sg-b', direction: 'ingress', remote_address_group_id: 'ag-a' } }),
      400,
      'SG.0001',
      /address group "ag-a" does not exist in project proj-b/,
    );
    expectError(await call(t.app, 'POST', `${B}/instances`, { instance: { security_groups: ['sg-web'] } }), 400, 'SG.0001', /does not exist in project proj-b/);
    expect((await call(t.app, 'GET', `${B}/vpc/security-groups`)).body.security_groups.map((g: any) => g.id)).toEqual(['default', 'sg-b']);
    expect((await call(t.app, 'GET', `${B}/instances`)).body.instances).toEqual([]);
    // the same ids are independent per project; B's default group is B's own
    expect((await call(t.app, 'POST', `${B}/vpc/security-groups`, { security_group: { id: 'sg-web', name: 'b-web' } })).status).toBe(201);
    const b = await call(t.app, 'POST', `${B}/instances`, { instance: { id: 'ecs-web-1', addresses: ['198.18.1.10'] } });
    expect(b.status).toBe(201);
    const pa = parsePolicy(JSON.parse((await call(t.app, 'GET', `${A}/instances/ecs-web-1/policy`)).text));
    const pb = parsePolicy(JSON.parse((await call(t.app, 'GET', `${B}/instances/ecs-web-1/policy`)).text));
    expect(pa.group_members.default).toEqual(['198.18.0.10', 'fd00:5ec::10']);
    expect(pb.group_members.default).toEqual(['198.18.1.10']);
  });
});

describe('service endpoints', () => {
  it('/healthz, /metrics and /openapi.json need no token', async () => {
    expect((await call(t.app, 'GET', '/healthz', undefined, {})).body).toEqual({ status: 'ok', agents_connected: 0 });
    await call(t.app, 'GET', `${A}/vpc/security-groups`);
    const m = await t.app.inject({ method: 'GET', url: '/metrics' });
    expect(m.statusCode).toBe(200);
    expect(m.body).toMatch(/secgroup_controller_api_request_duration_seconds_count\{method="GET",route="\/v3\/:project_id\/vpc\/security-groups",status_code="200"\} 1/);
    expect(m.body).toContain('secgroup_controller_agents_connected');
    const o = await call(t.app, 'GET', '/openapi.json', undefined, {});
    expect(o.body.openapi).toBe('3.1.0');
    expect(Object.keys(o.body.paths)).toEqual(
      expect.arrayContaining([
        '/v3/{project_id}/vpc/security-groups',
        '/v3/{project_id}/vpc/security-groups/{id}',
        '/v3/{project_id}/vpc/security-group-rules',
        '/v3/{project_id}/vpc/security-group-rules/{id}',
        '/v3/{project_id}/vpc/security-groups/{id}/security-group-rules/batch-create',
        '/v3/{project_id}/vpc/address-groups',
        '/v3/{project_id}/vpc/address-groups/{id}',
        '/v3/{project_id}/instances',
        '/v3/{project_id}/instances/{id}',
        '/v3/{project_id}/instances/{id}/rotate-token',
        '/v3/{project_id}/instances/{id}/policy',
        '/v3/{project_id}/instances/{id}/status',
        '/v3/{project_id}/instances/{id}/ports',
        '/v3/{project_id}/instance-statuses',
        '/v3/{project_id}/audit-events',
      ]),
    );
    const rulesBody = o.body.paths['/v3/{project_id}/vpc/security-group-rules'].post.requestBody.content['application/json'].schema;
    expect(rulesBody.required).toEqual(['security_group_rule']);
    expect(rulesBody.properties.security_group_rule.required).toEqual(expect.arrayContaining(['direction', 'security_group_id']));
  });

  it('the OpenAPI document lists Huawei\'s error codes per status, and SYS.0202 for a dry run', async () => {
    const o = (await call(t.app, 'GET', '/openapi.json', undefined, {})).body;
    const post = o.paths['/v3/{project_id}/vpc/security-groups'].post.responses;
    expect(post['202'].description).toMatch(/SYS\.0202/);
    expect(post['404'].description).toMatch(/VPC\.9904.*APIG\.0101/);
    for (const code of ['VPC.9902', 'VPC.9905', 'VPC.9907']) expect(post['409'].description).toContain(code);
    for (const code of ['SG.0001', 'VPC.9901', 'VPC.9902']) expect(post['400'].description).toContain(code);
  });

  it('every documented operation is a registered route', async () => {
    const o = (await call(t.app, 'GET', '/openapi.json', undefined, {})).body;
    const documented = new Set<string>();
    for (const [path, ops] of Object.entries(o.paths as Record<string, object>)) for (const m of Object.keys(ops)) documented.add(`${m.toUpperCase()} ${path}`);
    expect(documented.size).toBe(33);
    // fastify's route table uses :param; compare against the documented {param} form
    for (const method of ['GET', 'POST', 'PUT', 'DELETE']) {
      for (const path of documented) {
        if (!path.startsWith(method + ' ')) continue;
        const url = path.slice(method.length + 1).replace(/\{(\w+)\}/g, ':$1');
        expect(t.app.hasRoute({ method, url }), `${method} ${url}`).toBe(true);
      }
    }
  });

  it('bodies over the limit are 413 with the error shape', async () => {
    const big = { security_group: { name: 'x', description: 'y'.repeat(70 * 1024) } };
    const r = await call(t.app, 'POST', `${A}/vpc/security-groups`, big);
    expectError(r, 413, 'SG.0010');
  });
});
