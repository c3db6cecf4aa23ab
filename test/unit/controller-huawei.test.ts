/* eslint-disable @typescript-eslint/no-explicit-any -- response bodies are untyped JSON, checked by the assertions */
/**
 * Replays request examples of the Huawei Cloud VPC API v3 reference
 * (security groups, security group rules, address groups) unchanged and
 * checks the answers against the reference's response examples: status
 * codes, field names, defaults and the error shape. Ids in the examples are
 * UUIDs the cloud generated; where an example refers to an existing group
 * we create it first with that id (secgroup lets clients choose ids).
 *
 * Known, deliberate differences (docs/api.md, "Deviations"): `multiport` is
 * always a string (one reference example shows the number 33). A new group
 * gets Huawei's four default rules, and groups carry `tags`, as the
 * reference shows.
 */
import { describe, expect, it, beforeEach } from 'vitest';
import { call, makeApi, type TestApi } from './controller-helpers.js';

const P = '/v3/060576782980d5762f9ec014dd2f1148';
const TIME = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/;

/** Keys of the response examples in the v3 reference. */
const HUAWEI_GROUP_KEYS = ['id', 'name', 'project_id', 'description', 'enterprise_project_id', 'tags', 'security_group_rules', 'created_at', 'updated_at'];
const HUAWEI_LIST_GROUP_KEYS = ['id', 'name', 'project_id', 'description', 'enterprise_project_id', 'tags', 'created_at', 'updated_at'];
const HUAWEI_RULE_KEYS = [
  'id',
  'project_id',
  'security_group_id',
  'remote_group_id',
  'direction',
  'protocol',
  'description',
  'created_at',
  'updated_at',
  'ethertype',
  'remote_ip_prefix',
  'multiport',
  'remote_address_group_id',
  'action',
  'priority',
  'enabled',
];
const HUAWEI_ADDRESS_GROUP_KEYS = [
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
];

let t: TestApi;
beforeEach(() => {
  t = makeApi();
});

describe('Huawei VPC v3 reference examples', () => {
  it('CreateSecurityGroup: "Create a security group named security_group_1"', async () => {
    const r = await call(t.app, 'POST', `${P}/vpc/security-groups`, {
      security_group: { name: 'security_group_1', description: 'security group description' },
    });
    expect(r.status).toBe(201);
    expect(Object.keys(r.body).sort()).toEqual(['request_id', 'security_group']);
    expect(r.body.request_id).toMatch(/^[0-9a-f]{32}$/);
    const sg = r.body.security_group;
    expect(Object.keys(sg).sort()).toEqual([...HUAWEI_GROUP_KEYS].sort());
    expect(sg).toMatchObject({
      name: 'security_group_1',
      project_id: '060576782980d5762f9ec014dd2f1148',
      description: 'security group description',
      enterprise_project_id: '0',
    });
    expect(sg.id).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/);
    expect(sg.created_at).toMatch(TIME);
    for (const rule of sg.security_group_rules) {
      expect(Object.keys(rule).sort()).toEqual([...HUAWEI_RULE_KEYS].sort());
      expect(rule).toMatchObject({ security_group_id: sg.id, project_id: '060576782980d5762f9ec014dd2f1148', protocol: null, description: '', action: 'allow', priority: 100 });
      expect(rule.created_at).toMatch(TIME);
    }
    // Huawei's four default rules: ingress from the group itself, egress to all, per family
    expect(sg.security_group_rules.map((x: any) => [x.direction, x.ethertype, x.remote_group_id, x.remote_ip_prefix])).toEqual([
      ['ingress', 'IPv4', sg.id, null],
      ['ingress', 'IPv6', sg.id, null],
      ['egress', 'IPv4', null, '0.0.0.0/0'],
      ['egress', 'IPv6', null, '::/0'],
    ]);
  });

  it('CreateSecurityGroup with "dry_run": true answers 202 and creates nothing', async () => {
    const r = await call(t.app, 'POST', `${P}/vpc/security-groups`, {
      security_group: { name: 'security_group_1', description: 'security group description' },
      dry_run: true,
    });
    expect(r.status).toBe(202);
    expect(Object.keys(r.body)).toEqual(['request_id', 'error_code', 'error_msg']);
    const list = await call(t.app, 'GET', `${P}/vpc/security-groups?name=security_group_1`);
    expect(list.body.security_groups).toEqual([]);
  });

  it('CreateSecurityGroupRule: "Create an inbound rule in the security group 1c8d9f94-..."', async () => {
    await call(t.app, 'POST', `${P}/vpc/security-groups`, { security_group: { id: '1c8d9f94-6022-4518-bb98-e0145fcc7b33', name: 'sg' } });
    const r = await call(t.app, 'POST', `${P}/vpc/security-group-rules`, {
      security_group_rule: {
        security_group_id: '1c8d9f94-6022-4518-bb98-e0145fcc7b33',
        direction: 'ingress',
        protocol: 'tcp',
        description: 'security group rule description',
        action: 'allow',
        priority: 1,
        multiport: '33',
        remote_ip_prefix: '10.10.0.0/16',
      },
    });
    expect(r.status).toBe(201);
    expect(Object.keys(r.body).sort()).toEqual(['request_id', 'security_group_rule']);
    const rule = r.body.security_group_rule;
    expect(Object.keys(rule).sort()).toEqual([...HUAWEI_RULE_KEYS].sort());
    expect(rule).toMatchObject({
      project_id: '060576782980d5762f9ec014dd2f1148',
      security_group_id: '1c8d9f94-6022-4518-bb98-e0145fcc7b33',
      direction: 'ingress',
      protocol: 'tcp',
      description: 'security group rule description',
      ethertype: 'IPv4',
      remote_ip_prefix: '10.10.0.0/16',
      multiport: '33',
      action: 'allow',
      priority: 1,
      remote_group_id: null,
      remote_address_group_id: null,
    });
  });

  it('BatchCreateSecurityGroupRules: "two inbound rules, duplicates ignored, the two rules are the same"', async () => {
    await call(t.app, 'POST', `${P}/vpc/security-groups`, { security_group: { id: '15457509-18f9-4387-bae6-d4ed1898b301', name: 'sg' } });
    const same = { direction: 'ingress', ethertype: 'IPv4', protocol: 'tcp', multiport: '8080', remote_ip_prefix: '10.10.0.0/16', action: 'allow', priority: '1' };
    const r = await call(t.app, 'POST', `${P}/vpc/security-groups/15457509-18f9-4387-bae6-d4ed1898b301/security-group-rules/batch-create`, {
      security_group_rules: [same, same],
      ignore_duplicate: true,
    });
    expect(r.status).toBe(201);
    expect(Object.keys(r.body).sort()).toEqual(['request_id', 'security_group_rules']);
    expect(r.body.security_group_rules).toHaveLength(1);
    expect(Object.keys(r.body.security_group_rules[0]).sort()).toEqual([...HUAWEI_RULE_KEYS].sort());
    expect(r.body.security_group_rules[0].priority).toBe(1);
  });

  it('ListSecurityGroups: items without rules, page_info with previous_marker and current_count', async () => {
    await call(t.app, 'POST', `${P}/vpc/security-groups`, { security_group: { name: 'sg-test', description: 'test' } });
    const r = await call(t.app, 'GET', `${P}/vpc/security-groups`);
    expect(r.status).toBe(200);
    expect(Object.keys(r.body).sort()).toEqual(['page_info', 'request_id', 'security_groups']);
    for (const g of r.body.security_groups) expect(Object.keys(g).sort()).toEqual([...HUAWEI_LIST_GROUP_KEYS].sort());
    expect(r.body.page_info).toEqual({ previous_marker: r.body.security_groups[0].id, current_count: 2 });
  });

  it('ShowSecurityGroup, UpdateSecurityGroup, DeleteSecurityGroup (204, no body)', async () => {
    const id = (await call(t.app, 'POST', `${P}/vpc/security-groups`, { security_group: { name: 'sg-01' } })).body.security_group.id;
    const show = await call(t.app, 'GET', `${P}/vpc/security-groups/${id}`);
    expect(Object.keys(show.body.security_group).sort()).toEqual([...HUAWEI_GROUP_KEYS].sort());
    const upd = await call(t.app, 'PUT', `${P}/vpc/security-groups/${id}`, { security_group: { name: 'sg-02', description: 'new description' } });
    expect(upd.status).toBe(200);
    expect(upd.body.security_group).toMatchObject({ name: 'sg-02', description: 'new description' });
    const del = await call(t.app, 'DELETE', `${P}/vpc/security-groups/${id}`);
    expect(del.status).toBe(204);
    expect(del.text).toBe('');
  });

  it('ListSecurityGroupRules with security_group_id, direction, protocol and action filters', async () => {
    const sg = (await call(t.app, 'POST', `${P}/vpc/security-groups`, { security_group: { name: 'sg' } })).body.security_group.id;
    await call(t.app, 'POST', `${P}/vpc/security-group-rules`, { security_group_rule: { security_group_id: sg, direction: 'ingress', protocol: 'tcp', multiport: '22' } });
    const r = await call(t.app, 'GET', `${P}/vpc/security-group-rules?security_group_id=${sg}&direction=ingress&protocol=tcp&action=allow`);
    expect(r.status).toBe(200);
    expect(Object.keys(r.body).sort()).toEqual(['page_info', 'request_id', 'security_group_rules']);
    expect(r.body.security_group_rules.map((x: any) => x.multiport)).toEqual(['22']);
  });

  it('CreateAddressGroup / ListAddressGroup: IPs, ranges and CIDRs in ip_set', async () => {
    const r = await call(t.app, 'POST', `${P}/vpc/address-groups`, {
      address_group: { name: 'test', description: 'test', ip_version: 4, ip_set: ['192.168.3.2', '192.168.3.40', '192.168.3.20-192.168.3.100', '192.168.5.0/24'], max_capacity: 20 },
    });
    expect(r.status).toBe(201);
    expect(Object.keys(r.body.address_group).sort()).toEqual([...HUAWEI_ADDRESS_GROUP_KEYS].sort());
    expect(r.body.address_group).toMatchObject({ tenant_id: '060576782980d5762f9ec014dd2f1148', ip_version: 4 });
    const l = await call(t.app, 'GET', `${P}/vpc/address-groups`);
    expect(Object.keys(l.body).sort()).toEqual(['address_groups', 'page_info', 'request_id']);
  });

  it('errors have exactly request_id, error_code and error_msg', async () => {
    for (const r of [
      await call(t.app, 'GET', `${P}/vpc/security-groups/0552091e-b83a-49dd-88a7-4a5c86fd9ec3`),
      await call(t.app, 'POST', `${P}/vpc/security-group-rules`, { security_group_rule: { direction: 'ingress' } }),
      await call(t.app, 'GET', `${P}/vpc/security-groups`, undefined, {}),
    ]) {
      expect([401, 400, 404]).toContain(r.status);
      expect(Object.keys(r.body)).toEqual(['request_id', 'error_code', 'error_msg']);
      expect(typeof r.body.error_msg).toBe('string');
    }
  });
});
