/**
 * The policy document (SEMANTICS.md sections 1 and 8) as zod schemas, plus the
 * cross-field checks zod cannot express. `checkPolicy` never throws: it returns
 * every problem with its JSON path; `parsePolicy` throws a ValidationError.
 */
import { z } from 'zod';
import { ValidationError, type Issue } from '../lib/errors.js';
import { ipFamily, parsePrefix } from './address.js';

/** Ids are tokens: they may appear in nft comments, so nothing that could break out of one. */
export const ID_PATTERN = /^[A-Za-z0-9._:-]{1,64}$/;
export const idSchema = z.string().regex(ID_PATTERN, {
  message: 'must be 1-64 characters of letters, digits, ".", "_", ":" or "-"',
});

const descriptionSchema = z
  .string()
  .max(255, { message: 'must be at most 255 characters' })
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
  ip_version: z.union([z.literal(4), z.literal(6)]),
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
          message: value === undefined ? `is required (${iss.expected})` : `expected ${iss.expected}, got ${describeValue(value)}`,
        });
        break;
      case 'invalid_value': {
        const allowed = iss.values.map((v) => JSON.stringify(v)).join(', ');
        out.push({ path: formatPath(path), message: value === undefined ? `is required (one of ${allowed})` : `${describeValue(value)} is not one of ${allowed}` });
        break;
      }
      case 'too_big':
      case 'too_small':
        out.push({ path: formatPath(path), message: `${describeValue(value)}: ${iss.message.replace(/^Too (big|small): /, '')}` });
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
  const items = text.split(',').map((s) => s.trim());
  if (items.length > 20) return { ok: false, error: `has ${items.length} items; at most 20 are allowed` };
  const seen = new Set<string>();
  const ranges: PortRange[] = [];
  for (const item of items) {
    const m = /^(\d{1,5})(?:-(\d{1,5}))?$/.exec(item);
    if (!m) return { ok: false, error: `${JSON.stringify(item)} is not a port (1-65535) or a range "first-last"` };
    const a = Number(m[1]);
    const b = m[2] === undefined ? a : Number(m[2]);
    for (const p of [a, b]) if (p < 1 || p > 65535) return { ok: false, error: `${JSON.stringify(String(p))} is not a port (1-65535)` };
    if (a > b) return { ok: false, error: `${JSON.stringify(item)}: the first port is greater than the last` };
    const key = `${a}-${b}`;
    if (seen.has(key)) return { ok: false, error: `${JSON.stringify(item)} is listed twice` };
    seen.add(key);
    ranges.push([a, b]);
  }
  return { ok: true, ranges };
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

/** Rule-level cross-field checks (everything that does not need the rest of the document). */
export function checkRule(rule: Rule, path: string): Issue[] {
  const issues: Issue[] = [];
  const at = (field: string, message: string) => issues.push({ path: `${path}.${field}`, message });
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
  const remotes = (['remote_ip_prefix', 'remote_group_id', 'remote_address_group_id'] as const).filter(
    (k) => rule[k] !== undefined && rule[k] !== null && rule[k] !== '',
  );
  if (remotes.length > 1) at(remotes[1]!, `only one of remote_ip_prefix, remote_group_id, remote_address_group_id may be set (found ${remotes.join(' and ')})`);
  if (rule.remote_ip_prefix) {
    const pr = parsePrefix(rule.remote_ip_prefix);
    if (!pr.ok) at('remote_ip_prefix', pr.error);
    else if (pr.range.family !== family) {
      at('remote_ip_prefix', `${JSON.stringify(rule.remote_ip_prefix)} is IPv${pr.range.family} but the rule's ethertype is ${rule.ethertype}`);
    }
  }
  return issues;
}

export function checkAddressGroupEntries(ag: AddressGroup, path: string): Issue[] {
  const issues: Issue[] = [];
  ag.ip_set.forEach((entry, i) => {
    const pr = parsePrefix(entry, { allowRange: true });
    if (!pr.ok) issues.push({ path: `${path}.ip_set[${i}]`, message: pr.error });
    else if (pr.range.family !== ag.ip_version) {
      issues.push({ path: `${path}.ip_set[${i}]`, message: `${JSON.stringify(entry)} is IPv${pr.range.family} but the address group's ip_version is ${ag.ip_version}` });
    }
  });
  return issues;
}

function checkDocument(policy: Policy): Issue[] {
  const issues: Issue[] = [];
  policy.instance.addresses.forEach((a, i) => {
    if (!ipFamily(a)) issues.push({ path: `instance.addresses[${i}]`, message: `${JSON.stringify(a)} is not an IP address` });
  });
  const groupIds = new Map<string, number>();
  policy.security_groups.forEach((g, gi) => {
    if (groupIds.has(g.id)) issues.push({ path: `security_groups[${gi}].id`, message: `group ${JSON.stringify(g.id)} is listed twice (also security_groups[${groupIds.get(g.id)}])` });
    else groupIds.set(g.id, gi);
    const ruleIds = new Map<string, number>();
    g.rules.forEach((r, ri) => {
      const path = `security_groups[${gi}].rules[${ri}]`;
      if (ruleIds.has(r.id)) issues.push({ path: `${path}.id`, message: `rule id ${JSON.stringify(r.id)} is used twice in group ${JSON.stringify(g.id)} (also rules[${ruleIds.get(r.id)}])` });
      else ruleIds.set(r.id, ri);
      issues.push(...checkRule(r, path));
      if (r.remote_group_id && !(r.remote_group_id in policy.group_members)) {
        issues.push({ path: `${path}.remote_group_id`, message: `rule ${JSON.stringify(r.id)} references group ${JSON.stringify(r.remote_group_id)}, which has no entry in group_members` });
      }
      if (r.remote_address_group_id) {
        const ag = policy.address_groups.find((a) => a.id === r.remote_address_group_id);
        const family = r.ethertype === 'IPv4' ? 4 : 6;
        if (!ag) {
          issues.push({ path: `${path}.remote_address_group_id`, message: `rule ${JSON.stringify(r.id)} references address group ${JSON.stringify(r.remote_address_group_id)}, which is not in address_groups` });
        } else if (ag.ip_version !== family) {
          issues.push({ path: `${path}.remote_address_group_id`, message: `rule ${JSON.stringify(r.id)} is ${r.ethertype} but address group ${JSON.stringify(ag.id)} is IPv${ag.ip_version}` });
        }
      }
    });
  });
  const agIds = new Set<string>();
  policy.address_groups.forEach((ag, i) => {
    if (agIds.has(ag.id)) issues.push({ path: `address_groups[${i}].id`, message: `address group ${JSON.stringify(ag.id)} is listed twice` });
    agIds.add(ag.id);
    issues.push(...checkAddressGroupEntries(ag, `address_groups[${i}]`));
  });
  for (const [gid, members] of Object.entries(policy.group_members)) {
    members.forEach((m, i) => {
      if (!ipFamily(m)) issues.push({ path: `group_members.${gid}[${i}]`, message: `${JSON.stringify(m)} is not an IP address` });
    });
  }
  return issues;
}

/** When the document as a whole fails its shape, still report cross-field problems of every rule that parses alone. */
function checkRulesThatParse(input: unknown): Issue[] {
  const issues: Issue[] = [];
  const groups = (input as { security_groups?: unknown } | null)?.security_groups;
  if (!Array.isArray(groups)) return issues;
  groups.forEach((g: unknown, gi) => {
    const rules = (g as { rules?: unknown } | null)?.rules;
    if (!Array.isArray(rules)) return;
    rules.forEach((r: unknown, ri) => {
      const parsed = ruleSchema.safeParse(r);
      if (parsed.success) issues.push(...checkRule(parsed.data, `security_groups[${gi}].rules[${ri}]`));
    });
  });
  return issues;
}

export type PolicyCheck = { ok: true; policy: Policy } | { ok: false; issues: Issue[] };

/** Validates a parsed document (JSON value). Never throws. */
export function checkPolicy(input: unknown): PolicyCheck {
  const parsed = policySchema.safeParse(input);
  if (!parsed.success) return { ok: false, issues: [...zodIssues(parsed.error, input), ...checkRulesThatParse(input)] };
  const issues = checkDocument(parsed.data);
  return issues.length ? { ok: false, issues } : { ok: true, policy: parsed.data };
}

/** Validates a parsed document; throws ValidationError (code POLICY_INVALID) listing every problem. */
export function parsePolicy(input: unknown): Policy {
  const r = checkPolicy(input);
  if (!r.ok) throw new ValidationError('POLICY_INVALID', 'policy', r.issues);
  return r.policy;
}
