/**
 * The policy document (SEMANTICS sections 1 and 8): every cross-field error
 * with its path and a message that says what to do, all problems at once,
 * defaults, nulls, unknown fields, references, duplicates, YAML.
 */
import { mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { SecgroupError, ValidationError } from '../../src/lib/errors.js';
import { loadPolicyFile, parseDocumentText } from '../../src/policy/load.js';
import { checkPolicy, parseMultiport, parsePolicy, parseProtocol, type RuleInput } from '../../src/policy/schema.js';
import { doc, issueLines, issuesOf, policyOf } from '../helpers/policies.js';

const R = 'security_groups[0].rules[0]';

/** Issues of a document whose only rule is `rule` (id r0, ingress unless given). */
const ruleIssues = (rule: Partial<RuleInput>, extra: Parameters<typeof doc>[1] = {}) => issueLines(doc([{ id: 'sg', rules: [rule] }], extra));

describe('rule fields (SEMANTICS section 1)', () => {
  it.each<[string, Partial<RuleInput> | Record<string, unknown>, string]>([
    ['id with a space', { id: 'r 1' }, `${R}.id: must be 1-64 characters of letters, digits, ".", "_", ":" or "-"`],
    ['id of 65 characters', { id: 'x'.repeat(65) }, `${R}.id: must be 1-64 characters of letters, digits, ".", "_", ":" or "-"`],
    ['empty id', { id: '' }, `${R}.id: must be 1-64 characters of letters, digits, ".", "_", ":" or "-"`],
    ['direction', { direction: 'inbound' }, `${R}.direction: the string "inbound" is not one of "ingress", "egress"`],
    ['priority 0', { priority: 0 }, `${R}.priority: 0 is below the minimum 1`],
    ['priority 101', { priority: 101 }, `${R}.priority: 101 is above the maximum 100`],
    ['priority 1.5', { priority: 1.5 }, `${R}.priority: 1.5 is not an integer`],
    ['priority as a string', { priority: '1' }, `${R}.priority: expected number, got the string "1"`],
    ['action', { action: 'reject' }, `${R}.action: the string "reject" is not one of "allow", "deny"`],
    ['ethertype is case-sensitive', { ethertype: 'ipv4' }, `${R}.ethertype: the string "ipv4" is not one of "IPv4", "IPv6"`],
    [
      'protocol name in capitals',
      { protocol: 'TCP' },
      `${R}.protocol: "TCP" is not a protocol: use tcp, udp, sctp, icmp, icmpv6, a number 0-255, or omit it (null) for all protocols`,
    ],
    [
      'protocol number 256',
      { protocol: '256' },
      `${R}.protocol: "256" is not a protocol: use tcp, udp, sctp, icmp, icmpv6, a number 0-255, or omit it (null) for all protocols`,
    ],
    ['protocol as a JSON number', { protocol: 6 }, `${R}.protocol: expected string, got number 6`],
    ['icmp with IPv6', { ethertype: 'IPv6', protocol: 'icmp' }, `${R}.protocol: "icmp" (ICMP for IPv4) needs ethertype IPv4; use icmpv6 for IPv6`],
    ['protocol "1" with IPv6', { ethertype: 'IPv6', protocol: '1' }, `${R}.protocol: "1" (ICMP for IPv4) needs ethertype IPv4; use icmpv6 for IPv6`],
    ['icmpv6 with IPv4', { protocol: 'icmpv6' }, `${R}.protocol: "icmpv6" (ICMPv6) needs ethertype IPv6; use icmp for IPv4`],
    ['protocol "58" with IPv4 (the default)', { protocol: '58' }, `${R}.protocol: "58" (ICMPv6) needs ethertype IPv6; use icmp for IPv4`],
    ['port above 65535', { protocol: 'tcp', multiport: '70000' }, `${R}.multiport: "70000" is not a port (1-65535)`],
    ['port 0', { protocol: 'udp', multiport: '0' }, `${R}.multiport: "0" is not a port (1-65535)`],
    ['port range end above 65535', { protocol: 'tcp', multiport: '80,1000-70000' }, `${R}.multiport: "70000" is not a port (1-65535)`],
    ['reversed range', { protocol: 'tcp', multiport: '8080-80' }, `${R}.multiport: "8080-80": the first port is greater than the last`],
    ['duplicate item', { protocol: 'tcp', multiport: '22,80,22' }, `${R}.multiport: "22" is listed twice`],
    ['a name instead of a port', { protocol: 'tcp', multiport: 'http' }, `${R}.multiport: "http" is not a port (1-65535) or a range "first-last"`],
    ['empty item', { protocol: 'tcp', multiport: '80,' }, `${R}.multiport: "" is not a port (1-65535) or a range "first-last"`],
    [
      '21 items',
      { protocol: 'tcp', multiport: Array.from({ length: 21 }, (_, i) => String(i + 1)).join(',') },
      `${R}.multiport: has 21 items; at most 20 are allowed`,
    ],
    ['ports without a protocol', { multiport: '80' }, `${R}.multiport: ports need protocol tcp, udp or sctp (protocol is all)`],
    ['ports with icmp', { protocol: 'icmp', multiport: '80' }, `${R}.multiport: ports need protocol tcp, udp or sctp (protocol is "icmp")`],
    ['ports with protocol 47', { protocol: '47', multiport: '80' }, `${R}.multiport: ports need protocol tcp, udp or sctp (protocol is "47")`],
    ['icmp_type with tcp', { protocol: 'tcp', icmp_type: 8 }, `${R}.icmp_type: ICMP type and code need protocol icmp or icmpv6 (protocol is "tcp")`],
    ['icmp_type without a protocol', { icmp_type: 8 }, `${R}.icmp_type: ICMP type and code need protocol icmp or icmpv6 (protocol is all)`],
    ['icmp_code without icmp_type', { protocol: 'icmp', icmp_code: 0 }, `${R}.icmp_code: an ICMP code needs an ICMP type`],
    ['icmp_type 256', { protocol: 'icmp', icmp_type: 256 }, `${R}.icmp_type: 256 is above the maximum 255`],
    ['prefix length 33', { remote_ip_prefix: '198.18.0.0/33' }, `${R}.remote_ip_prefix: "198.18.0.0/33" has an invalid prefix length (0-32)`],
    ['prefix length 129', { ethertype: 'IPv6', remote_ip_prefix: 'fd00:5ec::/129' }, `${R}.remote_ip_prefix: "fd00:5ec::/129" has an invalid prefix length (0-128)`],
    ['not an address', { remote_ip_prefix: 'example.com' }, `${R}.remote_ip_prefix: "example.com" is not an IP address or CIDR`],
    [
      'a range as prefix',
      { remote_ip_prefix: '198.18.0.1-198.18.0.5' },
      `${R}.remote_ip_prefix: "198.18.0.1-198.18.0.5" is a range; only an IP address or CIDR is allowed here`,
    ],
    ['IPv6 prefix on an IPv4 rule', { remote_ip_prefix: 'fd00:5ec::/48' }, `${R}.remote_ip_prefix: "fd00:5ec::/48" is IPv6 but the rule's ethertype is IPv4`],
    ['IPv4 prefix on an IPv6 rule', { ethertype: 'IPv6', remote_ip_prefix: '198.18.0.0/15' }, `${R}.remote_ip_prefix: "198.18.0.0/15" is IPv4 but the rule's ethertype is IPv6`],
    [
      'two remotes',
      { remote_ip_prefix: '198.18.0.0/15', remote_group_id: 'sg' },
      `${R}.remote_group_id: only one of remote_ip_prefix, remote_group_id, remote_address_group_id may be set (found remote_ip_prefix and remote_group_id)`,
    ],
    ['description with <', { description: 'see <here>' }, `${R}.description: must not contain "<" or ">"`],
    ['description of 256 characters', { description: 'd'.repeat(256) }, `${R}.description: the string "${'d'.repeat(40)}…" is 256 characters long; at most 255 are allowed`],
    ['unknown field', { prot: 'tcp' }, `${R}.prot: unknown field (a typo must not silently change a policy)`],
  ])('%s', (_name, rule, expected) => {
    expect(ruleIssues(rule as Partial<RuleInput>, { group_members: { sg: [] } })).toEqual([expected]);
  });

  it('three remotes: one problem, naming all three', () => {
    expect(ruleIssues({ remote_ip_prefix: '198.18.0.0/15', remote_group_id: 'sg', remote_address_group_id: 'ag' }, { group_members: { sg: [] }, address_groups: [{ id: 'ag', ip_version: 4, ip_set: [] }] })).toEqual([
      `${R}.remote_group_id: only one of remote_ip_prefix, remote_group_id, remote_address_group_id may be set (found remote_ip_prefix and remote_group_id and remote_address_group_id)`,
    ]);
  });

  it('required fields', () => {
    expect(issueLines({ ...doc([]), security_groups: [{ id: 'sg', rules: [{}] }] })).toEqual([
      `${R}.id: is required (string)`,
      `${R}.direction: is required (one of "ingress", "egress")`,
    ]);
  });

  it.each([
    ['tcp', '80'],
    ['udp', '53,67-68'],
    ['sctp', '1-65535'],
    ['6', '22, 3389, 8000-8080'],
    ['17', '1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20'],
  ])('ports are fine with protocol %s: %s', (protocol, multiport) => {
    expect(checkPolicy(doc([{ id: 'sg', rules: [{ protocol, multiport }] }])).ok).toBe(true);
  });

  it('accepts ICMP type and code for icmp and icmpv6, IPv6 prefixes for IPv6 rules, bare addresses, host bits', () => {
    const p = policyOf([
      { protocol: 'icmp', icmp_type: 8, icmp_code: 0 },
      { protocol: 'icmpv6', ethertype: 'IPv6', icmp_type: 128 },
      { protocol: '58', ethertype: 'IPv6', icmp_type: 135, remote_ip_prefix: 'fd00:5ec::/48' },
      { remote_ip_prefix: '198.18.0.77' },
      { remote_ip_prefix: '198.18.0.77/24' },
      { protocol: '0' },
      { protocol: '255' },
    ]);
    expect(p.security_groups[0]!.rules).toHaveLength(7);
  });
});

describe('defaults and nulls', () => {
  it('applies priority 1, action allow, ethertype IPv4, empty names and lists', () => {
    const p = parsePolicy({ revision: 0, instance: { id: 'i' }, security_groups: [{ id: 'sg', rules: [{ id: 'r', direction: 'egress' }] }] });
    expect(p.security_groups[0]).toEqual({ id: 'sg', name: '', rules: [{ id: 'r', direction: 'egress', priority: 1, action: 'allow', ethertype: 'IPv4' }] });
    expect(p.instance.addresses).toEqual([]);
    expect(p.address_groups).toEqual([]);
    expect(p.group_members).toEqual({});
  });

  it('accepts null where Huawei sends null (protocol, multiport, remotes, description, ICMP)', () => {
    const huawei = {
      id: 'r-huawei',
      direction: 'ingress',
      priority: 1,
      action: 'allow',
      ethertype: 'IPv4',
      protocol: null,
      multiport: null,
      icmp_type: null,
      icmp_code: null,
      remote_ip_prefix: null,
      remote_group_id: null,
      remote_address_group_id: null,
      description: null,
    };
    const p = parsePolicy({
      revision: 1,
      instance: { id: 'i', addresses: [] },
      security_groups: [{ id: 'sg', name: 'x', description: null, rules: [huawei, { ...huawei, id: 'r-2', protocol: '', multiport: '', remote_ip_prefix: '', description: '' }] }],
      address_groups: [{ id: 'ag', ip_version: 4, ip_set: [], description: null }],
    });
    expect(p.security_groups[0]!.rules).toHaveLength(2);
  });

  it('null is not accepted for required or defaulted fields', () => {
    expect(ruleIssues({ direction: null as never, priority: null as never })).toEqual([`${R}.direction: null is not one of "ingress", "egress"`, `${R}.priority: expected number, got null`]);
  });
});

describe('unknown fields are rejected at every level', () => {
  it.each<[string, unknown, string]>([
    ['document', { ...doc([]), revison: 2 }, 'revison'],
    ['instance', { ...doc([]), instance: { id: 'i', adresses: [] } }, 'instance.adresses'],
    ['group', doc([{ id: 'sg', rules: [], rulez: [] }]), 'security_groups[0].rulez'],
    ['rule', doc([{ id: 'sg', rules: [{ prioirty: 5 } as never] }]), 'security_groups[0].rules[0].prioirty'],
    ['address group', { ...doc([]), address_groups: [{ id: 'ag', ip_version: 4, ip_set: [], ipset: [] }] }, 'address_groups[0].ipset'],
  ])('%s', (_level, input, path) => {
    expect(issuesOf(input)).toEqual([{ path, message: 'unknown field (a typo must not silently change a policy)' }]);
  });

  it('Object.prototype names are unknown fields too', () => {
    expect(issueLines(JSON.parse('{"revision":1,"instance":{"id":"i"},"security_groups":[],"constructor":1,"__proto__":{}}'))).toEqual([
      'constructor: unknown field (a typo must not silently change a policy)',
      '__proto__: unknown field (a typo must not silently change a policy)',
    ]);
  });
});

describe('the document (SEMANTICS section 8)', () => {
  it.each<[string, unknown, string[]]>([
    ['not an object', 'policy', ['expected object, got the string "policy"']],
    ['missing revision and groups', { instance: { id: 'i' } }, ['revision: is required (number)', 'security_groups: is required (array)']],
    ['negative revision', { ...doc([]), revision: -1 }, ['revision: -1 is below the minimum 0']],
    ['fractional revision', { ...doc([]), revision: 1.5 }, ['revision: 1.5 is not an integer']],
    ['instance address', { ...doc([]), instance: { id: 'i', addresses: ['198.18.0.300', 'fd00:5ec::10%eth0'] } }, [
      'instance.addresses[0]: "198.18.0.300" is not an IP address',
      'instance.addresses[1]: "fd00:5ec::10%eth0" is not an IP address',
    ]],
    ['group member address', { ...doc([]), group_members: { sg: ['198.18.0.1', '198.18.0.0/24'] } }, ['group_members.sg[1]: "198.18.0.0/24" is not an IP address']],
    ['group member key', { ...doc([]), group_members: { 'sg one': [] } }, [
      'group_members.sg one: "sg one" is not a valid key: must be 1-64 characters of letters, digits, ".", "_", ":" or "-"',
    ]],
    ['address group version', { ...doc([]), address_groups: [{ id: 'ag', ip_version: 5, ip_set: [] }] }, ['address_groups[0].ip_version: number 5 is not one of 4, 6']],
    ['address group entries', { ...doc([]), address_groups: [{ id: 'ag', ip_version: 4, ip_set: ['198.18.0.1', 'fd00:5ec::1', '198.18.0.9-198.18.0.1', '198.18.0.1-fd00::1', 'x-y', '198.18.0.0/40'] }] }, [
      'address_groups[0].ip_set[1]: "fd00:5ec::1" is IPv6 but the address group\'s ip_version is 4',
      'address_groups[0].ip_set[2]: "198.18.0.9-198.18.0.1": the first address is greater than the last',
      'address_groups[0].ip_set[3]: "198.18.0.1-fd00::1" mixes IPv4 and IPv6',
      'address_groups[0].ip_set[4]: "x-y" is not a range of two IP addresses "first-last"',
      'address_groups[0].ip_set[5]: "198.18.0.0/40" has an invalid prefix length (0-32)',
    ]],
  ])('%s', (_name, input, expected) => {
    expect(issueLines(input)).toEqual(expected);
  });

  it('resolves references: group_members entry (an empty list is fine) and address groups of the rule\'s version', () => {
    const p = policyOf(
      [
        { remote_group_id: 'sg-empty' },
        { remote_group_id: 'sg-app' },
        { remote_address_group_id: 'ag-4' },
        { ethertype: 'IPv6', remote_address_group_id: 'ag-6' },
      ],
      {
        group_members: { 'sg-empty': [], 'sg-app': ['198.18.0.11', 'fd00:5ec::11'] },
        address_groups: [
          { id: 'ag-4', ip_version: 4, ip_set: ['203.0.113.0/24', '198.51.100.5-198.51.100.9'] },
          { id: 'ag-6', ip_version: 6, ip_set: ['2001:db8::/32'] },
        ],
      },
    );
    expect(p.security_groups[0]!.rules.map((r) => r.remote_group_id ?? r.remote_address_group_id)).toEqual(['sg-empty', 'sg-app', 'ag-4', 'ag-6']);
  });

  it('names the rule of a dangling or mismatched reference', () => {
    expect(
      ruleIssues({ id: 'r-db', remote_group_id: 'sg-gone' }, { group_members: { constructor: [] } as never }),
    ).toEqual([`${R}.remote_group_id: rule "r-db" references group "sg-gone", which has no entry in group_members`]);
    expect(ruleIssues({ id: 'r-db', remote_address_group_id: 'ag-gone' })).toEqual([
      `${R}.remote_address_group_id: rule "r-db" references address group "ag-gone", which is not in address_groups`,
    ]);
    expect(ruleIssues({ id: 'r-db', ethertype: 'IPv6', remote_address_group_id: 'ag-4' }, { address_groups: [{ id: 'ag-4', ip_version: 4, ip_set: [] }] })).toEqual([
      `${R}.remote_address_group_id: rule "r-db" is IPv6 but address group "ag-4" is IPv4`,
    ]);
  });

  it('does not take names from Object.prototype for group_members entries', () => {
    for (const id of ['constructor', 'toString', 'hasOwnProperty']) {
      expect(ruleIssues({ remote_group_id: id })).toEqual([`${R}.remote_group_id: rule "r0" references group "${id}", which has no entry in group_members`]);
    }
    expect(checkPolicy(doc([{ id: 'sg', rules: [{ remote_group_id: 'constructor' }] }], { group_members: { constructor: ['198.18.0.1'] } as never })).ok).toBe(true);
    // zod drops a "__proto__" record key silently; the check says so
    expect(issueLines(JSON.parse('{"revision":1,"instance":{"id":"i"},"security_groups":[],"group_members":{"__proto__":["198.18.0.1"]}}'))).toEqual([
      'group_members.__proto__: "__proto__" cannot be used as a group id',
    ]);
  });

  it('rejects duplicate group ids, rule ids within a group and address group ids (the same rule id in two groups is fine)', () => {
    const input = doc(
      [
        { id: 'sg-a', rules: [{ id: 'r1' }, { id: 'r2' }, { id: 'r1' }] },
        { id: 'sg-b', rules: [{ id: 'r1' }] },
        { id: 'sg-a', rules: [] },
      ],
      { address_groups: [{ id: 'ag', ip_version: 4, ip_set: [] }, { id: 'ag', ip_version: 6, ip_set: [] }] },
    );
    expect(issueLines(input)).toEqual([
      'address_groups[1].id: address group "ag" is listed twice',
      'security_groups[0].rules[2].id: rule id "r1" is used twice in group "sg-a" (also rules[0])',
      'security_groups[2].id: group "sg-a" is listed twice (also security_groups[0])',
    ]);
  });
});

describe('all problems at once', () => {
  it('lists every problem of a document, shape errors and cross-field errors together', () => {
    const input = {
      revison: 1,
      instance: { id: 'ecs-1', addresses: ['198.18.0.300'] },
      security_groups: [
        {
          id: 'sg-web',
          rules: [
            { id: 'r-a', direction: 'ingress', remote_group_id: 'sg-nope' },
            { id: 'r-b', direction: 'ingress', protocol: 'tcp', multiport: '80' },
            { id: 'r-c', direction: 'ingress', protocol: 'tcp', multiport: '70000', prioirty: 3 },
            { id: 'r-a', direction: 'egress', priority: 0, remote_address_group_id: 'ag-nope' },
            { id: 'r-e', direction: 'ingress', ethertype: 'IPv6', protocol: 'icmp', icmp_code: 3 },
          ],
        },
      ],
      address_groups: [{ id: 'ag-1', ip_version: 4, ip_set: ['fd00:5ec::1'], nmae: 'x' }],
      group_members: { 'sg-other': ['not-an-ip'] },
    };
    const lines = issueLines(input);
    expect(new Set(lines)).toEqual(
      new Set([
        'revision: is required (number)',
        'revison: unknown field (a typo must not silently change a policy)',
        'security_groups[0].rules[2].prioirty: unknown field (a typo must not silently change a policy)',
        'security_groups[0].rules[3].priority: 0 is below the minimum 1',
        'address_groups[0].nmae: unknown field (a typo must not silently change a policy)',
        'instance.addresses[0]: "198.18.0.300" is not an IP address',
        'group_members.sg-other[0]: "not-an-ip" is not an IP address',
        'address_groups[0].ip_set[0]: "fd00:5ec::1" is IPv6 but the address group\'s ip_version is 4',
        'security_groups[0].rules[0].remote_group_id: rule "r-a" references group "sg-nope", which has no entry in group_members',
        'security_groups[0].rules[2].multiport: "70000" is not a port (1-65535)',
        'security_groups[0].rules[3].id: rule id "r-a" is used twice in group "sg-web" (also rules[0])',
        'security_groups[0].rules[3].remote_address_group_id: rule "r-a" references address group "ag-nope", which is not in address_groups',
        'security_groups[0].rules[4].protocol: "icmp" (ICMP for IPv4) needs ethertype IPv4; use icmpv6 for IPv6',
        'security_groups[0].rules[4].icmp_code: an ICMP code needs an ICMP type',
      ]),
    );
    expect(lines).toHaveLength(14);
  });

  it('parsePolicy throws one ValidationError (POLICY_INVALID) carrying every issue', () => {
    const input = doc([{ id: 'sg', rules: [{ protocol: 'tcp', multiport: '0' }, { protocol: 'icmpv6' }] }]);
    let error: unknown;
    try {
      parsePolicy(input);
    } catch (e) {
      error = e;
    }
    expect(error).toBeInstanceOf(ValidationError);
    const v = error as ValidationError;
    expect(v.code).toBe('POLICY_INVALID');
    expect(v.issues).toHaveLength(2);
    expect(v.message).toBe(
      'policy is invalid:\n' +
        '  security_groups[0].rules[0].multiport: "0" is not a port (1-65535)\n' +
        '  security_groups[0].rules[1].protocol: "icmpv6" (ICMPv6) needs ethertype IPv6; use icmp for IPv4',
    );
  });
});

describe('parseMultiport / parseProtocol', () => {
  it('parses ports and ranges in input order, trimming spaces', () => {
    expect(parseMultiport('22, 3389 ,8000-8080')).toEqual({ ok: true, ranges: [[22, 22], [3389, 3389], [8000, 8080]] });
    expect(parseMultiport('1-65535')).toEqual({ ok: true, ranges: [[1, 65535]] });
    expect(parseMultiport('80-80')).toEqual({ ok: true, ranges: [[80, 80]] });
  });

  it('accepts exactly the items "N" and "N-M" of 1-5 ASCII digits (random items against the documented pattern)', () => {
    const pattern = /^(\d{1,5})(?:-(\d{1,5}))?$/;
    const alphabet = ['0', '1', '5', '9', '-', ' ', 'a', '٣', '+', '.'];
    let seed = 7;
    const rnd = (n: number) => ((seed = (seed * 1103515245 + 12345) % 2 ** 31) % n);
    for (let i = 0; i < 5000; i++) {
      let item = '';
      for (let k = rnd(9); k > 0; k--) item += alphabet[rnd(alphabet.length)];
      const m = pattern.exec(item.trim());
      const r = parseMultiport(item);
      if (!m) {
        expect(r, JSON.stringify(item)).toEqual({ ok: false, error: `${JSON.stringify(item.trim())} is not a port (1-65535) or a range "first-last"` });
        continue;
      }
      const [a, b] = [Number(m[1]), m[2] === undefined ? Number(m[1]) : Number(m[2])];
      if (a >= 1 && a <= 65535 && b >= 1 && b <= 65535 && a <= b) expect(r, JSON.stringify(item)).toEqual({ ok: true, ranges: [[a, b]] });
      else expect(r.ok, JSON.stringify(item)).toBe(false);
    }
    expect(parseMultiport('80,443,80')).toEqual({ ok: false, error: '"80" is listed twice' });
    expect(parseMultiport('0-5')).toEqual({ ok: false, error: '"0" is not a port (1-65535)' });
    expect(parseMultiport('5-70000')).toEqual({ ok: false, error: '"70000" is not a port (1-65535)' });
    expect(parseMultiport('90-80')).toEqual({ ok: false, error: '"90-80": the first port is greater than the last' });
  });

  it('maps names and numbers to one protocol number; empty means all', () => {
    expect([null, undefined, '', 'tcp', '6', 'udp', 'sctp', 'icmp', 'icmpv6', '0', '255'].map((p) => parseProtocol(p))).toEqual(
      [null, null, null, 6, 6, 17, 132, 1, 58, 0, 255].map((proto) => ({ ok: true, proto })),
    );
    for (const bad of ['06', '-1', '1.0', 'gre', ' tcp']) expect(parseProtocol(bad).ok).toBe(false);
  });
});

describe('loading files (src/policy/load.ts)', () => {
  const write = async (name: string, text: string) => {
    const dir = await mkdtemp(join(tmpdir(), 'secgroup-schema-'));
    const path = join(dir, name);
    await writeFile(path, text);
    return path;
  };

  it('reads YAML by extension (.yaml and .yml) with the same meaning as JSON', async () => {
    const yaml = [
      'revision: 3',
      'instance: { id: ecs-1, addresses: [198.18.0.10] }',
      'security_groups:',
      '  - id: sg-web',
      '    rules:',
      '      - { id: r-http, direction: ingress, protocol: tcp, multiport: "80,443", remote_ip_prefix: 0.0.0.0/0 }',
      '      - { id: r-null, direction: egress, protocol: null, remote_ip_prefix: ~ }',
    ].join('\n');
    const json = {
      revision: 3,
      instance: { id: 'ecs-1', addresses: ['198.18.0.10'] },
      security_groups: [
        {
          id: 'sg-web',
          rules: [
            { id: 'r-http', direction: 'ingress', protocol: 'tcp', multiport: '80,443', remote_ip_prefix: '0.0.0.0/0' },
            { id: 'r-null', direction: 'egress', protocol: null, remote_ip_prefix: null },
          ],
        },
      ],
    };
    expect(await loadPolicyFile(await write('p.yaml', yaml))).toEqual(parsePolicy(json));
    expect(await loadPolicyFile(await write('p.yml', yaml))).toEqual(parsePolicy(json));
    expect(await loadPolicyFile(await write('p.json', JSON.stringify(json)))).toEqual(parsePolicy(json));
  });

  it('an unquoted YAML port number is a type error with the path, not a silent conversion', async () => {
    const yaml = 'revision: 1\ninstance: { id: i }\nsecurity_groups:\n  - id: sg\n    rules:\n      - { id: r, direction: ingress, protocol: tcp, multiport: 80 }\n';
    await expect(loadPolicyFile(await write('p.yaml', yaml))).rejects.toMatchObject({
      code: 'POLICY_INVALID',
      issues: [{ path: 'security_groups[0].rules[0].multiport', message: 'expected string, got number 80' }],
    });
  });

  it('syntax errors are POLICY_PARSE with the file name and the parser position', async () => {
    const badYaml = await write('bad.yaml', 'revision: 1\ninstance: {id: i\n');
    await expect(loadPolicyFile(badYaml)).rejects.toMatchObject({ code: 'POLICY_PARSE', message: expect.stringMatching(/bad\.yaml is not valid YAML: .*line/s) });
    const badJson = await write('bad.json', '{"revision": 1,}');
    await expect(loadPolicyFile(badJson)).rejects.toMatchObject({ code: 'POLICY_PARSE', message: expect.stringMatching(/bad\.json is not valid JSON: /) });
    expect(() => parseDocumentText('{', false, 'standard input')).toThrow(SecgroupError);
  });

  it('a missing file is STATE_IO', async () => {
    await expect(loadPolicyFile(join(tmpdir(), 'secgroup-no-such-file.json'))).rejects.toMatchObject({ code: 'STATE_IO' });
  });
});
