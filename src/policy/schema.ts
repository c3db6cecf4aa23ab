/**
 * The policy document (SEMANTICS.md sections 1 and 8) as zod schemas, plus the
 * cross-field checks zod cannot express. `checkPolicy` never throws: it returns
 * every problem with its JSON path; `parsePolicy` throws a ValidationError.
 */
import { z } from 'zod';
import { ValidationError, type Issue } from '../lib/errors.js';
import { ipFamily, parsePrefix } from './address.js';
import { carryPacked } from './packed-members.js';

/** Ids are tokens: they may appear in nft comments, so nothing that could break out of one. */
export const ID_PATTERN = /^[A-Za-z0-9._:-]{1,64}$/;
export const idSchema = z.string().regex(ID_PATTERN, {
  message: 'must be 1-64 characters of letters, digits, ".", "_", ":" or "-"',
});

const descriptionSchema = z
  .string()
  .max(255)
  .refine((s) => !/[<>]/.test(s), { message: 'must not contain "<" or ">"' });

export const DIRECTIONS = ['ingress', 'egress'] as const;
export const ACTIONS = ['allow', 'deny'] as const;
export const ETHERTYPES = ['IPv4', 'IPv6'] as const;
export const PROTOCOL_NAMES = ['tcp', 'udp', 'sctp', 'icmp', 'icmpv6'] as const;
export type ProtocolName = (typeof PROTOCOL_NAMES)[number];
export const PROTOCOL_NUMBERS: Record<ProtocolName, number> = { icmp: 1, tcp: 6, udp: 17, sctp: 132, icmpv6: 58 };
export const PORT_PROTOCOLS = new Set<number>([6, 17, 132]);

export const ruleSchema = z.strictObject({
  id: idSchema,
  direction: z.enum(DIRECTIONS),
  priority: z.int().min(1).max(100).default(1),
  action: z.enum(ACTIONS).default('allow'),
  ethertype: z.enum(ETHERTYPES).default('IPv4'),
  protocol: z.string().nullish(),
  multiport: z.string().nullish(),
  icmp_type: z.int().min(0).max(255).nullish(),
  icmp_code: z.int().min(0).max(255).nullish(),
  remote_ip_prefix: z.string().nullish(),
  remote_group_id: idSchema.nullish(),
  remote_address_group_id: idSchema.nullish(),
  description: descriptionSchema.nullish(),
});
export type Rule = z.output<typeof ruleSchema>;
export type RuleInput = z.input<typeof ruleSchema>;

export const securityGroupSchema = z.strictObject({
  id: idSchema,
  name: z.string().max(64).default(''),
  description: descriptionSchema.nullish(),
  rules: z.array(ruleSchema).default([]),
});
export type SecurityGroup = z.output<typeof securityGroupSchema>;

export const addressGroupSchema = z.strictObject({
  id: idSchema,
  name: z.string().max(64).default(''),
  description: descriptionSchema.nullish(),
  ip_version: z.literal([4, 6]),
  ip_set: z.array(z.string()),
});
export type AddressGroup = z.output<typeof addressGroupSchema>;

export const instanceSchema = z.strictObject({
  id: idSchema,
  addresses: z.array(z.string()).default([]),
});

export const policySchema = z.strictObject({
  revision: z.int().min(0),
  instance: instanceSchema,
  security_groups: z.array(securityGroupSchema),
  address_groups: z.array(addressGroupSchema).default([]),
  group_members: z.record(idSchema, z.array(z.string())).default({}),
});
export type Policy = z.output<typeof policySchema>;
export type PolicyInput = z.input<typeof policySchema>;

/** `security_groups[0].rules[2].multiport` */
export function formatPath(path: readonly PropertyKey[]): string {
  let out = '';
  for (const p of path) {
    if (typeof p === 'number') out += `[${p}]`;
    else out += out ? `.${String(p)}` : String(p);
  }
  return out;
}

function describeValue(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'an array';
  if (typeof v === 'string') return `the string ${JSON.stringify(v.length > 40 ? v.slice(0, 40) + '…' : v)}`;
  return typeof v === 'object' ? 'an object' : `${typeof v} ${JSON.stringify(v)}`;
}

function valueAt(input: unknown, path: readonly PropertyKey[]): unknown {
  let cur: unknown = input;
  for (const p of path) {
    if (cur === null || typeof cur !== 'object') return undefined;
    cur = (cur as Record<PropertyKey, unknown>)[p];
  }
  return cur;
}

/** Turns zod issues into user-facing issues (one per problem, unknown keys one each). */
export function zodIssues(error: z.ZodError, input: unknown, prefix: readonly PropertyKey[] = []): Issue[] {
  const out: Issue[] = [];
  for (const iss of error.issues) {
    const path = [...prefix, ...iss.path];
    const value = valueAt(input, iss.path);
    switch (iss.code) {
      case 'unrecognized_keys':
        for (const k of iss.keys) out.push({ path: formatPath([...path, k]), message: 'unknown field (a typo must not silently change a policy)' });
        break;
      case 'invalid_type':
        out.push({
          path: formatPath(path),
          message:
            value === undefined
              ? `is required (${iss.expected === 'int' ? 'an integer' : iss.expected})`
              : iss.expected === 'int' && typeof value === 'number'
                ? `${value} is not an integer`
                : `expected ${iss.expected === 'int' ? 'an integer' : iss.expected}, got ${describeValue(value)}`,
        });
        break;
      case 'invalid_value': {
        const allowed = iss.values.map((v) => JSON.stringify(v)).join(', ');
        out.push({ path: formatPath(path), message: value === undefined ? `is required (one of ${allowed})` : `${describeValue(value)} is not one of ${allowed}` });
        break;
      }
      case 'too_big':
      case 'too_small': {
        const big = iss.code === 'too_big';
        const bound = String(big ? iss.maximum : iss.minimum);
        let message: string;
        // a schema's own message (e.g. "at least one API token") says more than a generic bound
        if (!/^Too (big|small)/.test(iss.message)) message = `${describeValue(value)}: ${iss.message}`;
        else if (typeof value === 'number') message = `${value} is ${big ? 'above the maximum' : 'below the minimum'} ${bound}`;
        else if (typeof value === 'string') message = `${describeValue(value)} is ${value.length} characters long; ${big ? 'at most' : 'at least'} ${bound} are allowed`;
        else if (Array.isArray(value)) message = `has ${value.length} items; ${big ? 'at most' : 'at least'} ${bound} are allowed`;
        else message = `${describeValue(value)}: ${iss.message.replace(/^Too (big|small): /, '')}`;
        out.push({ path: formatPath(path), message });
        break;
      }
      case 'invalid_key':
        out.push({ path: formatPath(path), message: `${JSON.stringify(String(path[path.length - 1]))} is not a valid key: ${iss.issues.map((i) => i.message).join('; ')}` });
        break;
      case 'invalid_union':
        out.push({ path: formatPath(path), message: `${describeValue(value)} is not valid here` });
        break;
      default:
        out.push({ path: formatPath(path), message: iss.message });
    }
  }
  return out;
}

export type PortRange = [number, number];

/** Parses `multiport`; returns ranges in input order or an error sentence. */
export function parseMultiport(text: string): { ok: true; ranges: PortRange[] } | { ok: false; error: string } {
  const items = text.split(',');
  if (items.length > 20) return { ok: false, error: `has ${items.length} items; at most 20 are allowed` };
  const ranges: PortRange[] = [];
  for (const raw of items) {
    const item = raw.trim();
    const r = portItem(item);
    if (r === null) return { ok: false, error: `${JSON.stringify(item)} is not a port (1-65535) or a range "first-last"` };
    const [a, b] = r;
    const bad = a < 1 || a > 65535 ? a : b < 1 || b > 65535 ? b : null;
    if (bad !== null) return { ok: false, error: `${JSON.stringify(String(bad))} is not a port (1-65535)` };
    if (a > b) return { ok: false, error: `${JSON.stringify(item)}: the first port is greater than the last` };
    // at most 20 items: a look back costs less than a set of keys
    for (const [x, y] of ranges) if (x === a && y === b) return { ok: false, error: `${JSON.stringify(item)} is listed twice` };
    ranges.push(r);
  }
  return { ok: true, ranges };
}

/**
 * `N` or `N-M` with 1-5 ASCII digits each (read without a regular
 * expression: every rule's ports are parsed twice per document), or null.
 */
function portItem(item: string): PortRange | null {
  let a = 0;
  let b = -1;
  let digits = 0;
  for (let i = 0; i < item.length; i++) {
    const c = item.charCodeAt(i);
    if (c >= 48 && c <= 57) {
      if (++digits > 5) return null;
      if (b < 0) a = a * 10 + c - 48;
      else b = b * 10 + c - 48;
    } else if (c === 45 && b < 0 && digits > 0) {
      b = 0;
      digits = 0;
    } else return null;
  }
  if (digits === 0) return null;
  return [a, b < 0 ? a : b];
}

/**
 * Protocol field -> IP protocol number, or null for "all". Numbers that have a
 * name (6, 17, 132, 1, 58) are the same protocol as the name.
 */
export function parseProtocol(p: string | null | undefined): { ok: true; proto: number | null } | { ok: false; error: string } {
  if (p === undefined || p === null || p === '') return { ok: true, proto: null };
  if ((PROTOCOL_NAMES as readonly string[]).includes(p)) return { ok: true, proto: PROTOCOL_NUMBERS[p as ProtocolName] };
  if (/^(0|[1-9]\d{0,2})$/.test(p) && Number(p) <= 255) return { ok: true, proto: Number(p) };
  return {
    ok: false,
    error: `${JSON.stringify(p)} is not a protocol: use tcp, udp, sctp, icmp, icmpv6, a number 0-255, or omit it (null) for all protocols`,
  };
}

/**
 * Rule-level cross-field checks (everything that does not need the rest of
 * the document). `path` may be a function: a document of 10k valid rules
 * then builds no path text.
 */
export function checkRule(rule: Rule, path: string | (() => string)): readonly Issue[] {
  // a valid rule allocates no issue list (a document holds up to tens of thousands)
  let issues: Issue[] | null = null;
  const at = (field: string, message: string) => (issues ??= []).push({ path: `${typeof path === 'string' ? path : path()}.${field}`, message });
  const family = rule.ethertype === 'IPv4' ? 4 : 6;
  const proto = parseProtocol(rule.protocol);
  if (!proto.ok) at('protocol', proto.error);
  const p = proto.ok ? proto.proto : undefined;
  if (p === 1 && family === 6) at('protocol', `${JSON.stringify(rule.protocol)} (ICMP for IPv4) needs ethertype IPv4; use icmpv6 for IPv6`);
  if (p === 58 && family === 4) at('protocol', `${JSON.stringify(rule.protocol)} (ICMPv6) needs ethertype IPv6; use icmp for IPv4`);
  if (rule.multiport !== undefined && rule.multiport !== null && rule.multiport !== '') {
    if (p !== undefined && (p === null || !PORT_PROTOCOLS.has(p))) {
      at('multiport', `ports need protocol tcp, udp or sctp (protocol is ${rule.protocol ? JSON.stringify(rule.protocol) : 'all'})`);
    } else {
      const mp = parseMultiport(rule.multiport);
      if (!mp.ok) at('multiport', mp.error);
    }
  }
  const hasType = rule.icmp_type !== undefined && rule.icmp_type !== null;
  const hasCode = rule.icmp_code !== undefined && rule.icmp_code !== null;
  if ((hasType || hasCode) && p !== undefined && p !== 1 && p !== 58) {
    at(hasType ? 'icmp_type' : 'icmp_code', `ICMP type and code need protocol icmp or icmpv6 (protocol is ${rule.protocol ? JSON.stringify(rule.protocol) : 'all'})`);
  }
  if (hasCode && !hasType) at('icmp_code', 'an ICMP code needs an ICMP type');
  const set = (k: (typeof REMOTE_FIELDS)[number]) => rule[k] !== undefined && rule[k] !== null && rule[k] !== '';
  if ((set('remote_ip_prefix') ? 1 : 0) + (set('remote_group_id') ? 1 : 0) + (set('remote_address_group_id') ? 1 : 0) > 1) {
    const remotes = REMOTE_FIELDS.filter(set);
    at(remotes[1]!, `only one of remote_ip_prefix, remote_group_id, remote_address_group_id may be set (found ${remotes.join(' and ')})`);
  }
  if (rule.remote_ip_prefix) {
    const pr = parsePrefix(rule.remote_ip_prefix);
    if (!pr.ok) at('remote_ip_prefix', pr.error);
    else if (pr.range.family !== family) {
      at('remote_ip_prefix', `${JSON.stringify(rule.remote_ip_prefix)} is IPv${pr.range.family} but the rule's ethertype is ${rule.ethertype}`);
    }
  }
  return issues ?? NO_ISSUES;
}

const REMOTE_FIELDS = ['remote_ip_prefix', 'remote_group_id', 'remote_address_group_id'] as const;
/** What checkRule returns for a valid rule (frozen: shared by every call). */
const NO_ISSUES: readonly Issue[] = Object.freeze([]);

/** Problems of one address group's `ip_set` entries (`ipVersion` null: the version itself is invalid, check syntax only). */
export function checkAddressGroupEntries(ag: { ip_version: 4 | 6 | null; ip_set: readonly unknown[] }, path: string): Issue[] {
  const issues: Issue[] = [];
  ag.ip_set.forEach((entry, i) => {
    if (typeof entry !== 'string') return; // the shape check reports it
    const pr = parsePrefix(entry, { allowRange: true });
    if (!pr.ok) issues.push({ path: `${path}.ip_set[${i}]`, message: pr.error });
    else if (ag.ip_version !== null && pr.range.family !== ag.ip_version) {
      issues.push({ path: `${path}.ip_set[${i}]`, message: `${JSON.stringify(entry)} is IPv${pr.range.family} but the address group's ip_version is ${ag.ip_version}` });
    }
  });
  return issues;
}

type Json = Record<string, unknown>;
const asObject = (v: unknown): Json | null => (v !== null && typeof v === 'object' && !Array.isArray(v) ? (v as Json) : null);
const asArray = (v: unknown): readonly unknown[] => (Array.isArray(v) ? v : []);
const asString = (v: unknown): string | null => (typeof v === 'string' ? v : null);

/** A rule with its unknown fields dropped: its other problems are still worth reporting next to the unknown field. */
const ruleFieldsSchema = z.object(ruleSchema.shape);

/**
 * Cross-field and reference checks. They walk the raw document, not the zod
 * output, so that one problem zod reports (a typo in a field name, a wrong
 * type) does not hide the others: every part that can be checked is. Parts
 * that are themselves malformed are skipped (zod reports them), and a
 * reference is only called dangling when the list it points into is readable.
 */
function checkDocument(input: unknown, parsed?: Policy): Issue[] {
  const issues: Issue[] = [];
  const doc = asObject(input);
  if (!doc) return issues;

  asArray(asObject(doc.instance)?.addresses).forEach((a, i) => {
    if (typeof a === 'string' && !ipFamily(a)) issues.push({ path: `instance.addresses[${i}]`, message: `${JSON.stringify(a)} is not an IP address` });
  });

  // group_members: absent = {}; not an object = unknown (no reference check against it)
  const members = doc.group_members === undefined ? {} : asObject(doc.group_members);
  if (members) {
    // zod drops a "__proto__" key of a record without a word; say so instead of losing the members silently
    if (Object.hasOwn(members, '__proto__')) issues.push({ path: 'group_members.__proto__', message: '"__proto__" cannot be used as a group id' });
    for (const [gid, list] of Object.entries(members)) {
      asArray(list).forEach((m, i) => {
        if (typeof m === 'string' && !ipFamily(m)) issues.push({ path: `group_members.${gid}[${i}]`, message: `${JSON.stringify(m)} is not an IP address` });
      });
    }
  }

  // address groups by id; the value is the version, or null when the group is malformed beyond its id
  const addressGroups = doc.address_groups === undefined ? [] : Array.isArray(doc.address_groups) ? doc.address_groups : null;
  const agVersion = new Map<string, 4 | 6 | null>();
  addressGroups?.forEach((raw, i) => {
    const ag = asObject(raw);
    const id = asString(ag?.id);
    const version = ag?.ip_version === 4 || ag?.ip_version === 6 ? ag.ip_version : null;
    if (id !== null) {
      if (agVersion.has(id)) issues.push({ path: `address_groups[${i}].id`, message: `address group ${JSON.stringify(id)} is listed twice` });
      else agVersion.set(id, version);
    }
    issues.push(...checkAddressGroupEntries({ ip_version: version, ip_set: asArray(ag?.ip_set) }, `address_groups[${i}]`));
  });

  const groupIds = new Map<string, number>();
  asArray(doc.security_groups).forEach((rawGroup, gi) => {
    const g = asObject(rawGroup);
    const gid = asString(g?.id);
    if (gid !== null) {
      if (groupIds.has(gid)) issues.push({ path: `security_groups[${gi}].id`, message: `group ${JSON.stringify(gid)} is listed twice (also security_groups[${groupIds.get(gid)}])` });
      else groupIds.set(gid, gi);
    }
    const ruleIds = new Map<string, number>();
    // the document's zod parse passed: its rules are this group's rules, parsed (no second parse per rule)
    const parsedRules = parsed?.security_groups[gi]?.rules;
    asArray(g?.rules).forEach((rawRule, ri) => {
      // built only for an issue: a valid document of 10k rules makes no path text
      const path = () => `security_groups[${gi}].rules[${ri}]`;
      const rid = asString(asObject(rawRule)?.id);
      if (rid !== null) {
        if (ruleIds.has(rid)) issues.push({ path: `${path()}.id`, message: `rule id ${JSON.stringify(rid)} is used twice in group ${JSON.stringify(gid)} (also rules[${ruleIds.get(rid)}])` });
        else ruleIds.set(rid, ri);
      }
      const fields = parsedRules?.[ri] ?? ruleFieldsSchema.safeParse(rawRule).data;
      if (fields) issues.push(...checkRule(fields, path));
      // references are checked on the raw fields: a wrong priority must not hide a dangling reference
      const rule = asObject(rawRule);
      const name = () => JSON.stringify(rid ?? `#${ri}`);
      const remoteGroup = asString(rule?.remote_group_id);
      if (remoteGroup && members && !Object.hasOwn(members, remoteGroup)) {
        issues.push({ path: `${path()}.remote_group_id`, message: `rule ${name()} references group ${JSON.stringify(remoteGroup)}, which has no entry in group_members` });
      }
      const remoteAg = asString(rule?.remote_address_group_id);
      if (remoteAg && addressGroups) {
        const ethertype = rule?.ethertype === undefined ? 'IPv4' : rule.ethertype;
        const family = ethertype === 'IPv4' ? 4 : ethertype === 'IPv6' ? 6 : null;
        const version = agVersion.get(remoteAg);
        if (!agVersion.has(remoteAg)) {
          issues.push({ path: `${path()}.remote_address_group_id`, message: `rule ${name()} references address group ${JSON.stringify(remoteAg)}, which is not in address_groups` });
        } else if (family !== null && version != null && version !== family) {
          issues.push({ path: `${path()}.remote_address_group_id`, message: `rule ${name()} is ${String(ethertype)} but address group ${JSON.stringify(remoteAg)} is IPv${version}` });
        }
      }
    });
  });
  return issues;
}

export type PolicyCheck = { ok: true; policy: Policy } | { ok: false; issues: Issue[] };

/** Validates a parsed document (JSON value) and lists every problem found. Never throws. */
export function checkPolicy(input: unknown): PolicyCheck {
  const parsed = policySchema.safeParse(input);
  const issues = [...(parsed.success ? [] : zodIssues(parsed.error, input)), ...checkDocument(input, parsed.data)];
  if (!parsed.success || issues.length) return { ok: false, issues };
  // member lists read packed out of the text (packed-members.ts parseWithPackedMembers): `[]` in `input`, given back here
  carryPacked(asObject(input)?.group_members, parsed.data.group_members);
  return { ok: true, policy: parsed.data };
}

/** Validates a parsed document; throws ValidationError (code POLICY_INVALID) listing every problem. */
export function parsePolicy(input: unknown): Policy {
  const r = checkPolicy(input);
  if (!r.ok) throw new ValidationError('POLICY_INVALID', 'policy', r.issues);
  return r.policy;
}
