/* eslint-disable @typescript-eslint/no-explicit-any -- response bodies are untyped JSON, checked by the assertions */
/** Stored values are canonical (docs/api.md): what a POST stores, returns and compares for duplicates does not depend on spelling. */
import { beforeEach, describe, expect, it } from 'vitest';
import { call, makeApi, rule, type TestApi } from './controller-helpers.js';

const A = '/v3/proj-a';

let t: TestApi;
beforeEach(async () => {
  t = makeApi({ sqlite: true });
  await call(t.app, 'POST', `${A}/vpc/security-groups`, { security_group: { id: 'sg-web', name: 'web' } });
});

const createRule = (r: Record<string, unknown>) => call(t.app, 'POST', `${A}/vpc/security-group-rules`, { security_group_rule: { security_group_id: 'sg-web', ...r } });
const getRule = async (id: string) => (await call(t.app, 'GET', `${A}/vpc/security-group-rules/${id}`)).body.security_group_rule;
const createAg = (a: Record<string, unknown>) => call(t.app, 'POST', `${A}/vpc/address-groups`, { address_group: { name: 'office', ip_version: 4, ...a } });

/** 400 with SG.0001, or Huawei's VPC.9901 for an address group's ip_set */
function expect400(r: { status: number; body: any }, msg: RegExp, code = /ip_set/.test(msg.source) ? 'VPC.9901' : 'SG.0001'): void {
  expect(r.status).toBe(400);
  expect(r.body.error_code).toBe(code);
  expect(r.body.error_msg).toMatch(msg);
}

/** POSTs a rule, then checks that the POST's answer and a GET show `want` for `field`. */
async function storedAs(over: Record<string, unknown>, field: string, want: unknown): Promise<void> {
  const r = await createRule(rule(over));
  expect(r.status, r.text).toBe(201);
  expect(r.body.security_group_rule[field]).toEqual(want);
  expect((await getRule(r.body.security_group_rule.id))[field]).toEqual(want);
}

describe('rules: canonical stored values', () => {
  it('multiport: items trimmed, no spaces, a-a written a, order kept', async () => {
    await storedAs({ multiport: ' 80' }, 'multiport', '80');
    await storedAs({ multiport: '443, 22 ,8000-8080', remote_ip_prefix: '198.18.0.0/16' }, 'multiport', '443,22,8000-8080');
    await storedAs({ multiport: '25-25', remote_ip_prefix: '198.18.1.0/24' }, 'multiport', '25');
  });

  it('remote_ip_prefix: a bare IP gets /32 or /128', async () => {
    await storedAs({ remote_ip_prefix: '198.18.0.5' }, 'remote_ip_prefix', '198.18.0.5/32');
    await storedAs({ ethertype: 'IPv6', remote_ip_prefix: 'fd00:5ec::5' }, 'remote_ip_prefix', 'fd00:5ec::5/128');
  });

  it('remote_ip_prefix: host bits cleared (the network address, as Neutron\'s normalized_cidr)', async () => {
    await storedAs({ remote_ip_prefix: '198.18.0.5/24' }, 'remote_ip_prefix', '198.18.0.0/24');
    await storedAs({ ethertype: 'IPv6', remote_ip_prefix: 'fd00:5ec::1:2/64' }, 'remote_ip_prefix', 'fd00:5ec::/64');
  });

  it('remote_ip_prefix: IPv6 in RFC 5952 text (lower case, longest zero run compressed)', async () => {
    await storedAs({ ethertype: 'IPv6', remote_ip_prefix: 'FD00:05EC:0000:0000:0000:0000:0000:0010/128' }, 'remote_ip_prefix', 'fd00:5ec::10/128');
    await storedAs({ ethertype: 'IPv6', remote_ip_prefix: 'fd00:5ec:0:0:1:0:0:0/128' }, 'remote_ip_prefix', 'fd00:5ec:0:0:1::/128');
  });

  it('leading zeros are refused, in the prefix length and in an octet', async () => {
    expect400(await createRule(rule({ remote_ip_prefix: '198.18.0.0/08' })), /remote_ip_prefix: "198\.18\.0\.0\/08": the prefix length must be written without leading zeros/);
    expect400(await createRule(rule({ remote_ip_prefix: '010.1.1.1' })), /remote_ip_prefix: "010\.1\.1\.1" is not an IP address or CIDR/);
    expect400(await createRule(rule({ ethertype: 'IPv6', remote_ip_prefix: 'fd00:5ec::/064' })), /prefix length must be written without leading zeros/);
    expect((await call(t.app, 'GET', `${A}/vpc/security-group-rules?security_group_id=sg-web`)).body.security_group_rules).toHaveLength(4);
  });

  it('duplicates are found across spellings, with the existing duplicate error', async () => {
    expect((await createRule(rule({ remote_ip_prefix: '198.18.0.0/24', multiport: '22,80' }))).status).toBe(201);
    for (const over of [{ remote_ip_prefix: '198.18.0.5/24' }, { multiport: '22, 80' }, { multiport: ' 22 ,80-80' }]) {
      const r = await createRule(rule({ remote_ip_prefix: '198.18.0.0/24', multiport: '22,80', ...over }));
      expect(r.status, JSON.stringify(over)).toBe(409);
      expect(r.body.error_code).toBe('VPC.9902');
    }
    expect((await createRule(rule({ remote_ip_prefix: '198.18.0.7' }))).status).toBe(201);
    expect((await createRule(rule({ remote_ip_prefix: '198.18.0.7/32' }))).status).toBe(409);
  });

  it('the list filter remote_ip_prefix finds the stored (canonical) value', async () => {
    const r = await createRule(rule({ remote_ip_prefix: '198.18.0.5/24' }));
    const q = await call(t.app, 'GET', `${A}/vpc/security-group-rules?remote_ip_prefix=${encodeURIComponent('198.18.0.0/24')}`);
    expect(q.body.security_group_rules.map((x: any) => x.id)).toEqual([r.body.security_group_rule.id]);
  });

  it('batch-create stores canonical values too', async () => {
    const r = await call(t.app, 'POST', `${A}/vpc/security-groups/sg-web/security-group-rules/batch-create`, {
      security_group_rules: [rule({ multiport: '22 , 25', remote_ip_prefix: '198.18.3.9/24' })],
    });
    expect(r.status, r.text).toBe(201);
    expect(r.body.security_group_rules[0]).toMatchObject({ multiport: '22,25', remote_ip_prefix: '198.18.3.0/24' });
  });

  it('the compiled policy carries the canonical values', async () => {
    await createRule(rule({ id: 'r-x', remote_ip_prefix: '198.18.0.5/24', multiport: '22, 80' }));
    await call(t.app, 'POST', `${A}/instances`, { instance: { id: 'i1', addresses: ['198.18.0.10'], security_groups: ['sg-web'] } });
    const p = JSON.parse((await call(t.app, 'GET', `${A}/instances/i1/policy`)).text);
    expect(p.security_groups[0].rules.find((x: any) => x.id === 'r-x')).toMatchObject({ remote_ip_prefix: '198.18.0.0/24', multiport: '22,80' });
  });
});

describe('rules and address groups: IPv4-mapped and IPv4-compatible IPv6 refused', () => {
  it('400 naming the field and value, and the IPv4 rule to write instead', async () => {
    const r = await createRule(rule({ ethertype: 'IPv6', remote_ip_prefix: '::ffff:198.18.0.1/128' }));
    expect400(
      r,
      /security_group_rule\.remote_ip_prefix: "::ffff:198\.18\.0\.1\/128" is an IPv4-mapped IPv6 address, which never matches IPv4 traffic: write an IPv4 rule with 198\.18\.0\.1\/32/,
    );
    expect400(await createRule(rule({ ethertype: 'IPv6', remote_ip_prefix: '::ffff:0:0/96' })), /"::ffff:0:0\/96" is an IPv4-mapped IPv6 address.*write an IPv4 rule with 0\.0\.0\.0\/0/);
    expect400(await createRule(rule({ ethertype: 'IPv6', remote_ip_prefix: '::FFFF:C612:0/120' })), /IPv4-mapped.*198\.18\.0\.0\/24/);
    expect400(await createRule(rule({ ethertype: 'IPv6', remote_ip_prefix: '::198.18.0.1' })), /"::198\.18\.0\.1" is an IPv4-compatible IPv6 address.*198\.18\.0\.1\/32/);
    // ::/0, ::1 and an ordinary prefix stay valid
    for (const p of ['::/0', '::1', 'fd00:5ec::/48']) expect((await createRule(rule({ ethertype: 'IPv6', remote_ip_prefix: p }))).status, p).toBe(201);
  });

  it('in an IPv6 address group: 400 naming the entry', async () => {
    expect400(
      await createAg({ ip_version: 6, ip_set: ['fd00:5ec::/64', '::ffff:198.18.0.0-::ffff:198.18.0.9'] }),
      /address_group\.ip_set\[1\]: "::ffff:198\.18\.0\.0-::ffff:198\.18\.0\.9" is an IPv4-mapped IPv6 address, which never matches IPv4 traffic: put 198\.18\.0\.0-198\.18\.0\.9 in an IPv4 address group/,
    );
    expect((await createAg({ id: 'ag6', ip_version: 6, ip_set: ['fd00:5ec::/64'] })).status).toBe(201);
    expect400(await call(t.app, 'PUT', `${A}/vpc/address-groups/ag6`, { address_group: { ip_set: ['::ffff:198.18.0.1'] } }), /ip_set\[0\]: "::ffff:198\.18\.0\.1" is an IPv4-mapped/);
  });
});

describe('address groups: canonical ip_set', () => {
  it('IPs get /32 or /128, CIDRs lose host bits, ranges get canonical ends; POST and GET show it', async () => {
    const r = await createAg({ id: 'ag4', ip_set: ['198.18.0.5', '198.18.1.9/24', '198.18.2.1 - 198.18.2.9'] });
    expect(r.status, r.text).toBe(201);
    const want = ['198.18.0.5/32', '198.18.1.0/24', '198.18.2.1-198.18.2.9'];
    expect(r.body.address_group.ip_set).toEqual(want);
    expect((await call(t.app, 'GET', `${A}/vpc/address-groups/ag4`)).body.address_group.ip_set).toEqual(want);
    const v6 = await createAg({ id: 'ag6', ip_version: 6, ip_set: ['FD00:5EC::0:1', 'fd00:5ec:0:0:0:0:0:0/48'] });
    expect(v6.body.address_group.ip_set).toEqual(['fd00:5ec::1/128', 'fd00:5ec::/48']);
    const put = await call(t.app, 'PUT', `${A}/vpc/address-groups/ag4`, { address_group: { ip_set: ['198.18.7.7/16'] } });
    expect(put.body.address_group.ip_set).toEqual(['198.18.0.0/16']);
  });

  it('entries that are the same after canonicalisation are duplicates; leading zeros refused', async () => {
    expect400(await createAg({ ip_set: ['198.18.0.5', '198.18.0.5/32'] }), /ip_set\[1\]: "198\.18\.0\.5\/32" is listed twice \(also ip_set\[0\]\)/);
    expect400(await createAg({ ip_set: ['198.18.0.0/24', '198.18.0.9/24'] }), /ip_set\[1\]: "198\.18\.0\.9\/24" is listed twice/);
    expect400(await createAg({ ip_set: ['198.18.0.0/024'] }), /ip_set\[0\]: "198\.18\.0\.0\/024": the prefix length must be written without leading zeros/);
  });
});

describe('instances: canonical addresses', () => {
  it('IPv6 addresses are stored in RFC 5952 text', async () => {
    const r = await call(t.app, 'POST', `${A}/instances`, { instance: { id: 'i1', addresses: ['198.18.0.10', 'FD00:05EC:0:0:0:0:0:10'], security_groups: ['sg-web'] } });
    expect(r.body.instance.addresses).toEqual(['198.18.0.10', 'fd00:5ec::10']);
  });
});

describe('OpenAPI', () => {
  it('describes the canonical forms of multiport, remote_ip_prefix and ip_set', async () => {
    const text = (await call(t.app, 'GET', '/openapi.json', undefined, {})).text;
    expect(text).toMatch(/IP or CIDR of the rule's ethertype; stored canonical/);
    expect(text).toMatch(/stored canonical: items trimmed/);
    expect(text).toMatch(/ranges \\"first-last\\" of ip_version; stored canonical/);
  });
});
