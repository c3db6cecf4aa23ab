/** The console's pure logic (console/src/logic.ts): routes, matching order, health, field errors, the SSE parser. */
import { describe, expect, it } from 'vitest';
import { SseParser, describeRule, fieldErrors, filterInstances, fleetCounts, healthOf, href, matchingOrder, parseRoute, type RuleLike, type StatusLike } from '../../console/src/logic.js';

const rule = (id: string, priority: number, action: 'allow' | 'deny', over: Partial<RuleLike> = {}): RuleLike => ({
  id,
  priority,
  action,
  direction: 'ingress',
  protocol: 'tcp',
  multiport: '22',
  ethertype: 'IPv4',
  remote_ip_prefix: null,
  remote_group_id: null,
  remote_address_group_id: null,
  ...over,
});

describe('routes', () => {
  it('gives every view its own URL and parses it back', () => {
    expect(parseRoute(href.overview())).toEqual({ view: 'overview' });
    expect(parseRoute('/console')).toEqual({ view: 'overview' });
    expect(parseRoute(href.groups())).toEqual({ view: 'groups' });
    expect(parseRoute(href.group('sg web/1').split('#')[0]!)).toEqual({ view: 'group', id: 'sg web/1' });
    expect(href.group('sg-web', 'r-1')).toBe('/console/groups/sg-web#rule-r-1');
    expect(parseRoute(href.addressGroups())).toEqual({ view: 'address-groups' });
    expect(parseRoute(href.instances())).toEqual({ view: 'instances' });
    expect(parseRoute(href.instance('ecs-1'))).toEqual({ view: 'instance', id: 'ecs-1' });
    const q = { from: '203.0.113.7', to: 'ecs-1', protocol: 'tcp', port: '443' };
    const url = new URL(href.reachability(q), 'http://x');
    expect(parseRoute(url.pathname, url.search)).toEqual({ view: 'reachability', query: q });
    expect(parseRoute('/console/groups/a/b')).toEqual({ view: 'not-found', path: '/console/groups/a/b' });
    expect(parseRoute('/console/%E0%A4%A')).toEqual({ view: 'not-found', path: '/console/%E0%A4%A' });
  });
});

describe('rules in matching order', () => {
  it('sorts by priority, deny before allow at equal priority, stable otherwise', () => {
    const rules = [rule('a', 2, 'allow'), rule('b', 1, 'allow'), rule('c', 2, 'deny'), rule('d', 1, 'allow'), rule('e', 100, 'deny')];
    expect(matchingOrder(rules).map((r) => r.id)).toEqual(['b', 'd', 'c', 'a', 'e']);
  });

  it('describes a rule in words, with the peer the direction means', () => {
    expect(describeRule(rule('a', 1, 'allow', { remote_ip_prefix: '0.0.0.0/0' }))).toBe('tcp 22 from 0.0.0.0/0');
    expect(describeRule(rule('a', 1, 'allow', { direction: 'egress', protocol: null, multiport: null }))).toBe('any protocol to 0.0.0.0/0');
    expect(describeRule(rule('a', 1, 'allow', { multiport: null, remote_group_id: 'sg-db', ethertype: 'IPv6' }))).toBe('tcp all ports from group sg-db');
    expect(describeRule(rule('a', 1, 'allow', { protocol: 'icmp', multiport: null, icmp_type: 8, ethertype: 'IPv6' }))).toBe('icmp type 8 from ::/0');
  });
});

describe('instance health', () => {
  const st = (over: Partial<StatusLike>): StatusLike => ({ instance_id: 'i', desired_revision: 5, applied_revision: 5, in_sync: true, connected: true, last_error: null, ...over });
  it('is failing only for an error about the revision it should run; an old error fixed since does not count', () => {
    expect(healthOf(st({}))).toBe('in-sync');
    expect(healthOf(st({ in_sync: false, applied_revision: 4 }))).toBe('out-of-date');
    expect(healthOf(st({ in_sync: false, applied_revision: 4, last_error: { revision: 5, code: 'NFT_FAILED', message: 'x' } }))).toBe('failing');
    expect(healthOf(st({ in_sync: false, applied_revision: 4, last_error: { revision: 3, code: 'NFT_FAILED', message: 'x' } }))).toBe('out-of-date');
    expect(healthOf(st({ last_error: { revision: 3, code: 'NFT_FAILED', message: 'x' } }))).toBe('in-sync');
    expect(healthOf(st({ desired_revision: null, applied_revision: null, in_sync: false }))).toBe('no-policy');
    expect(
      fleetCounts([st({}), st({ connected: false, in_sync: false, applied_revision: null }), st({ in_sync: false, last_error: { revision: null, code: 'REVISION_AHEAD', message: 'x' } })]),
    ).toEqual({ instances: 3, connected: 2, inSync: 1, outOfDate: 1, failing: 1 });
  });
});

describe('instance filter', () => {
  it('keeps instances whose name, id, addresses or groups contain every word, case-insensitively', () => {
    const all = [
      { id: 'ecs-1', name: 'web-a', addresses: ['198.18.0.10'], security_groups: ['sg-web', 'default'] },
      { id: 'ecs-2', name: 'db-a', addresses: ['198.18.0.20', 'fd00:5ec::20'], security_groups: ['sg-db'] },
    ];
    expect(filterInstances(all, '').map((i) => i.id)).toEqual(['ecs-1', 'ecs-2']);
    expect(filterInstances(all, 'WEB').map((i) => i.id)).toEqual(['ecs-1']);
    expect(filterInstances(all, 'fd00:5ec::20').map((i) => i.id)).toEqual(['ecs-2']);
    expect(filterInstances(all, 'a sg-db').map((i) => i.id)).toEqual(['ecs-2']);
    expect(filterInstances(all, 'web sg-db')).toEqual([]);
  });
});

describe('API validation messages at their field', () => {
  it('puts each message of the answer under its form field; other paths stay general', () => {
    const msg = 'security_group_rule.multiport: "99999" is not a port 1-65535; security_group_rule.priority: must be 1-100; security_group_rule.priority: not a number; other: boom';
    expect(fieldErrors(msg, 'security_group_rule', ['multiport', 'priority'])).toEqual({
      fields: { multiport: '"99999" is not a port 1-65535', priority: 'must be 1-100; not a number' },
      general: ['other: boom'],
    });
    expect(fieldErrors('security group "x" not found', 'security_group_rule', ['multiport'])).toEqual({ fields: {}, general: ['security group "x" not found'] });
  });
});

describe('server-sent events parser', () => {
  it('assembles events across chunks, joins data lines, skips comments and events without data', () => {
    const p = new SseParser();
    expect(p.push(': stream open\n\nevent: inst')).toEqual([]);
    expect(p.push('ance\ndata: {"a":1}\n\n: heartbeat\n\nevent: x\n\ndata: one\r\ndata: two\r\n\r\n')).toEqual([
      { event: 'instance', data: '{"a":1}' },
      { event: 'message', data: 'one\ntwo' },
    ]);
  });
});
