/**
 * Request and response shapes of the HTTP API as zod schemas: request bodies
 * are parsed with them, responses are typed by them, and /openapi.json is
 * generated from them (`openapi.ts`). Field names, nesting and defaults follow
 * Huawei Cloud VPC API v3; extensions are marked "(secgroup)".
 *
 * The rule fields reuse the policy document's rule schema, so the API and the
 * document can never disagree on what a rule is.
 */
import { z } from 'zod';
import { idSchema, ruleSchema } from '../../policy/schema.js';
import { portReportSchema } from '../../protocol/messages.js';

// ---- common ----

export const nameSchema = z.string().regex(/^[\p{L}\p{N}_.-]{1,64}$/u, {
  message: 'must be 1-64 characters of letters, digits, "_", "-" or "."',
});
const descriptionSchema = ruleSchema.shape.description;

/**
 * Huawei resource tags: at most 20 per resource, keys unique; a key is 1-128
 * and a value 0-255 characters of letters, digits, spaces and `_ . : = + - @`.
 */
const tagText = /^[\p{L}\p{N} _.:=+\-@]*$/u;
export const tagsSchema = z
  .array(
    z.strictObject({
      key: z.string().min(1).max(128).regex(tagText, { message: 'must be letters, digits, spaces or "_ . : = + - @"' }),
      value: z.string().max(255).regex(tagText, { message: 'must be letters, digits, spaces or "_ . : = + - @"' }),
    }),
  )
  .max(20)
  .refine((ts) => new Set(ts.map((t) => t.key)).size === ts.length, { message: 'keys must be unique' })
  .describe('at most 20 {key, value}; keys unique');
const enterpriseProjectId = z
  .string()
  .regex(/^(0|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})$/, { message: 'must be "0" or a UUID' })
  .describe('Huawei enterprise project: stored and returned ("0" = default), not enforced');
const dryRun = z.boolean().optional().describe('only validate the request; nothing is changed (HTTP 202)');

/** `priority` is a string in Huawei's SDK models and an integer in its examples: both are accepted. */
const priorityInput = z
  .union([z.int(), z.string().regex(/^\d{1,3}$/)])
  .transform(Number)
  .pipe(z.int().min(1).max(100))
  .default(1)
  .describe('1-100, 1 is the highest priority');

// ---- security group rules ----

const ruleOptionFields = {
  id: idSchema.optional().describe('(secgroup) choose the rule id; default: a generated UUID'),
  priority: priorityInput,
  enabled: z.boolean().default(true).describe('false: the rule is kept, listed and counted, but not enforced (SEMANTICS section 1)'),
  multiport: ruleSchema.shape.multiport.describe('ports or ranges "a-b", comma-separated; stored canonical: items trimmed, "a-a" as "a" (docs/api.md)'),
  remote_ip_prefix: ruleSchema.shape.remote_ip_prefix.describe(
    'IP or CIDR of the rule\'s ethertype; stored canonical: network address with a length (bare IP /32 or /128), RFC 5952 IPv6; leading zeros and IPv4-mapped IPv6 refused',
  ),
};

export const createRuleOptionSchema = ruleSchema.extend({ ...ruleOptionFields, security_group_id: idSchema });
export const batchRuleOptionSchema = ruleSchema.extend(ruleOptionFields);

export const createRuleBody = z.strictObject({ security_group_rule: createRuleOptionSchema, dry_run: dryRun });
export const batchCreateRulesBody = z.strictObject({
  security_group_rules: z.array(batchRuleOptionSchema).min(1).max(200),
  ignore_duplicate: z.boolean().default(false).describe('skip rules that duplicate existing ones (or each other) instead of failing'),
  dry_run: dryRun,
});

export const ruleView = z.object({
  id: z.string(),
  project_id: z.string(),
  security_group_id: z.string(),
  direction: z.enum(['ingress', 'egress']),
  protocol: z.string().nullable(),
  description: z.string(),
  created_at: z.string(),
  updated_at: z.string(),
  ethertype: z.enum(['IPv4', 'IPv6']),
  remote_ip_prefix: z.string().nullable().describe('canonical: network/length, e.g. "198.18.0.0/24"'),
  multiport: z.string().nullable().describe('canonical: e.g. "22,80,8000-8080"'),
  action: z.enum(['allow', 'deny']),
  priority: z.int(),
  remote_group_id: z.string().nullable(),
  remote_address_group_id: z.string().nullable(),
  enabled: z.boolean(),
  icmp_type: z.int().optional().describe('(secgroup) present only when set'),
  icmp_code: z.int().optional().describe('(secgroup) present only when set'),
});
export type RuleView = z.infer<typeof ruleView>;

// ---- security groups ----

export const createGroupBody = z.strictObject({
  security_group: z.strictObject({
    id: idSchema.optional().describe('(secgroup) choose the group id, e.g. "sg-web"; default: a generated UUID'),
    name: nameSchema,
    description: descriptionSchema,
    enterprise_project_id: enterpriseProjectId.optional(),
    tags: tagsSchema.optional(),
  }),
  dry_run: dryRun,
});

export const updateGroupBody = z.strictObject({
  security_group: z.strictObject({ name: nameSchema.optional(), description: descriptionSchema }),
});

export const groupView = z.object({
  id: z.string(),
  name: z.string(),
  project_id: z.string(),
  description: z.string(),
  enterprise_project_id: z.string(),
  tags: z.array(z.object({ key: z.string(), value: z.string() })),
  security_group_rules: z.array(ruleView).optional().describe('in single-group responses, not in lists'),
  created_at: z.string(),
  updated_at: z.string(),
});
export type GroupView = z.infer<typeof groupView>;

// ---- address groups ----

const ipSetSchema = z.array(z.string()).describe(
  'IP addresses, CIDRs or ranges "first-last" of ip_version; stored canonical (IPs and CIDRs as network/length, RFC 5952 IPv6); IPv4-mapped IPv6 refused',
);
const ipExtraSetSchema = z
  .array(z.strictObject({ ip: z.string(), remarks: z.string().max(255).refine((r) => !/[<>]/.test(r), { message: 'must not contain "<" or ">"' }).optional() }))
  .describe('entries with a remark; mutually exclusive with ip_set');
const maxCapacity = z.int().min(1).max(20000).describe('most entries the group may hold; default: the quota entries_per_address_group');

export const createAddressGroupBody = z.strictObject({
  address_group: z.strictObject({
    id: idSchema.optional().describe('(secgroup) choose the address group id; default: a generated UUID'),
    name: nameSchema,
    description: descriptionSchema,
    ip_version: z.union([z.literal(4), z.literal(6)]),
    ip_set: ipSetSchema.optional(),
    ip_extra_set: ipExtraSetSchema.optional(),
    max_capacity: maxCapacity.optional(),
    enterprise_project_id: enterpriseProjectId.optional(),
    tags: tagsSchema.optional(),
  }),
  dry_run: dryRun,
});

export const updateAddressGroupBody = z.strictObject({
  address_group: z.strictObject({
    name: nameSchema.optional(),
    description: descriptionSchema,
    ip_set: ipSetSchema.optional(),
    ip_extra_set: ipExtraSetSchema.optional(),
    max_capacity: maxCapacity.optional(),
  }),
  dry_run: dryRun,
});

export const addressGroupView = z.object({
  id: z.string(),
  name: z.string(),
  description: z.string(),
  max_capacity: z.int(),
  ip_set: z.array(z.string()),
  ip_version: z.union([z.literal(4), z.literal(6)]),
  created_at: z.string(),
  updated_at: z.string(),
  tenant_id: z.string(),
  enterprise_project_id: z.string(),
  tags: z.array(z.object({ key: z.string(), value: z.string() })),
  status: z.literal('NORMAL').describe('always NORMAL: changes are applied synchronously'),
  status_message: z.string(),
  ip_extra_set: z.array(z.object({ ip: z.string(), remarks: z.string().nullable() })).describe('every entry, with its remark (null without one)'),
});
export type AddressGroupView = z.infer<typeof addressGroupView>;

// ---- instances (secgroup's own resource) ----

const instanceNameSchema = z
  .string()
  .max(64)
  .refine((s) => !/[<>]/.test(s), { message: 'must not contain "<" or ">"' });
const addressesSchema = z.array(z.string()).describe('the instance\'s own IPv4 and IPv6 addresses');
const instanceGroupsSchema = z.array(idSchema).describe('ordered: rules of the first group are matched first');

export const createInstanceBody = z.strictObject({
  instance: z.strictObject({
    id: idSchema.optional().describe('default: a generated UUID'),
    name: instanceNameSchema.default(''),
    addresses: addressesSchema.default([]),
    security_groups: instanceGroupsSchema.default(['default']),
  }),
});

export const updateInstanceBody = z.strictObject({
  instance: z.strictObject({ name: instanceNameSchema.optional(), addresses: addressesSchema.optional(), security_groups: instanceGroupsSchema.optional() }),
});

export const instanceView = z.object({
  id: z.string(),
  name: z.string(),
  project_id: z.string(),
  addresses: z.array(z.string()),
  security_groups: z.array(z.string()),
  created_at: z.string(),
  updated_at: z.string(),
});
export type InstanceView = z.infer<typeof instanceView>;

const ackView = z.object({
  revision: z.int(),
  status: z.enum(['applied', 'failed', 'rejected']),
  at: z.string(),
  duration_ms: z.number().nullable(),
  digest: z.string().nullable(),
  error: z.object({ code: z.string(), message: z.string() }).nullable(),
});

export const instanceStatusView = z.object({
  instance_id: z.string(),
  desired_revision: z.int().nullable().describe('revision of the current policy document'),
  applied_revision: z.int().nullable().describe('last revision the agent reported as applied'),
  in_sync: z.boolean(),
  connected: z.boolean(),
  last_seen: z.string().nullable(),
  last_ack: ackView.nullable(),
  last_error: z.object({ revision: z.int().nullable(), code: z.string(), message: z.string(), at: z.string() }).nullable(),
  agent: z.object({ version: z.string().nullable(), hostname: z.string().nullable() }),
});

// ---- lists ----

const intParam = (min: number, max: number) =>
  z
    .string()
    .regex(/^\d+$/, { message: 'must be a non-negative integer' })
    .transform(Number)
    .pipe(z.int().min(min).max(max));
/** repeated query parameters (`?id=a&id=b`) filter by any of the values */
const multi = z
  .union([z.string(), z.array(z.string())])
  .transform((v) => (Array.isArray(v) ? v : [v]))
  .optional();

const pageQuery = {
  limit: intParam(0, 2000).optional().describe('page size 0-2000 (0 or absent: 2000)'),
  marker: z.string().optional().describe('id of the last resource of the previous page'),
};

export const listGroupsQuery = z.looseObject({ ...pageQuery, id: multi, name: multi, description: multi, enterprise_project_id: multi });
export const listRulesQuery = z.looseObject({
  ...pageQuery,
  id: multi,
  security_group_id: multi,
  protocol: multi,
  description: multi,
  remote_group_id: multi,
  remote_address_group_id: multi,
  remote_ip_prefix: multi,
  direction: z.enum(['ingress', 'egress']).optional(),
  action: z.enum(['allow', 'deny']).optional(),
  ethertype: z.enum(['IPv4', 'IPv6']).optional(),
  priority: multi,
  enabled: z
    .enum(['true', 'false'])
    .transform((v) => v === 'true')
    .optional(),
});
export const listAddressGroupsQuery = z.looseObject({
  ...pageQuery,
  id: multi,
  name: multi,
  description: multi,
  ip_version: z.enum(['4', '6']).optional(),
  enterprise_project_id: multi,
});
export const listInstancesQuery = z.looseObject({ ...pageQuery, id: multi, name: multi, security_group_id: multi });

/** an ISO 8601 time with a zone, normalised to the stored form (UTC, milliseconds) */
const auditTime = z.iso
  .datetime({ offset: true })
  .transform((v) => new Date(v).toISOString())
  .optional();

export const listAuditEventsQuery = z.looseObject({
  ...pageQuery,
  operation: multi,
  actor: multi,
  resource_id: multi,
  status: z
    .union([z.string(), z.array(z.string())])
    .transform((v) => (Array.isArray(v) ? v : [v]))
    .pipe(z.array(z.string().regex(/^\d{3}$/, { message: 'must be an HTTP status (3 digits)' }).transform(Number)))
    .optional(),
  result: z.enum(['success', 'failure']).optional().describe('success: status below 400; failure: 400 and above'),
  from: auditTime.describe('events at or after this time (ISO 8601 with zone)'),
  to: auditTime.describe('events before this time (ISO 8601 with zone)'),
  request_id: multi,
});

export const auditEventView = z.object({
  id: z.string(),
  time: z.string().describe('ISO 8601 UTC with milliseconds'),
  actor: z.string().describe('API token name, agent:<instance id>, or anonymous'),
  project_id: z.string().nullable(),
  operation: z.string().describe('e.g. CreateSecurityGroupRule, DeleteSecurityGroup, AgentConnected'),
  resource_type: z.string(),
  resource_ids: z.array(z.string()).describe('ids in the path, then the ids created'),
  request_id: z.string().nullable(),
  status: z.int().describe('HTTP status; agent events: 101 connected, 200 disconnected, 401 refused'),
  error_code: z.string().nullable().describe('the answer\'s error_code (refusals; SYS.0202 for dry runs)'),
  source_ip: z.string().nullable(),
  user_agent: z.string().nullable().describe('at most 256 characters'),
  detail: z.string().nullable().describe('agent events: the WebSocket close code'),
});

export const pageInfoView = z.object({
  previous_marker: z.string().optional().describe('id of the first resource of this page'),
  current_count: z.int(),
  next_marker: z.string().optional().describe('id of the last resource of this page; absent on the last page'),
});

export const errorView = z.object({ request_id: z.string(), error_code: z.string(), error_msg: z.string() });

export const portsView = z.object({
  request_id: z.string(),
  instance_id: z.string(),
  received_at: z.string().nullable(),
  report: portReportSchema.nullable(),
});

// ---- fleet analysis (analysis.ts) ----

const portParam = intParam(1, 65535);
const ethertypeSchema = z.enum(['IPv4', 'IPv6']);

export const reachabilityQuery = z
  .looseObject({
    from: z.string().min(1).max(100).describe('an instance id of this project, an IP address or a CIDR'),
    to: z.string().min(1).max(64).describe('an instance id of this project'),
    protocol: z.enum(['tcp', 'udp', 'icmp', 'any']).describe('icmp: an echo request; any: only rules for all protocols decide'),
    port: portParam.optional().describe('destination port 1-65535; required for tcp and udp, refused for icmp and any'),
    ethertype: ethertypeSchema.optional().describe('default: the family of from (an address or CIDR), else of the destination\'s first address'),
  })
  .superRefine((q, ctx) => {
    const ported = q.protocol === 'tcp' || q.protocol === 'udp';
    if (ported && q.port === undefined) ctx.addIssue({ code: 'custom', path: ['port'], message: `is required for ${q.protocol}` });
    if (!ported && q.port !== undefined) ctx.addIssue({ code: 'custom', path: ['port'], message: `must be absent for ${q.protocol}` });
  });

export const exposureQuery = z.looseObject({ instance_id: multi.describe('only these instances (repeatable)') });

export const deleteRuleQuery = z.looseObject({
  dry_run: z
    .enum(['true', 'false'])
    .transform((v) => v === 'true')
    .optional()
    .describe('true: answer 202 SYS.0202 with the impact; nothing is deleted'),
});

export const analysisRuleRefView = z.object({
  id: z.string(),
  security_group_id: z.string(),
  security_group_name: z.string(),
  direction: z.enum(['ingress', 'egress']),
  priority: z.int(),
  action: z.enum(['allow', 'deny']),
  protocol: z.string().nullable(),
  multiport: z.string().nullable(),
  remote_ip_prefix: z.string().nullable(),
  remote_group_id: z.string().nullable(),
  remote_address_group_id: z.string().nullable(),
});

const sideView = z.object({
  evaluated: z.boolean().describe('false: the source is not an instance (egress not evaluated)'),
  verdict: z.enum(['allow', 'deny']),
  reason: z.enum(['rule', 'default', 'not_evaluated']).describe('default: no rule matched (default drop)'),
  rule: analysisRuleRefView.nullable(),
});

export const reachabilityView = z.object({
  from: z.union([
    z.object({ kind: z.literal('instance'), instance_id: z.string(), address: z.string() }),
    z.object({ kind: z.literal('address'), address: z.string() }),
    z.object({ kind: z.literal('cidr'), cidr: z.string(), address: z.string().describe('the address evaluated: the CIDR\'s first') }),
  ]),
  to: z.object({ instance_id: z.string(), address: z.string() }),
  protocol: z.enum(['tcp', 'udp', 'icmp', 'any']),
  port: z.int().nullable(),
  ethertype: ethertypeSchema,
  verdict: z.enum(['allowed', 'denied']).describe('allowed only if both sides allow'),
  egress: sideView,
  ingress: sideView,
  listening: z.boolean().nullable().describe('the destination port per its last port report; null: no report (or icmp/any)'),
  ports_reported_at: z.string().nullable(),
});

export const exposureView = z.object({
  exposure: z.array(
    z.object({
      instance_id: z.string(),
      instance_name: z.string(),
      protocol: z.enum(['tcp', 'udp']),
      port: z.int(),
      ethertype: ethertypeSchema,
      listen_address: z.string(),
      process: z.string().nullable(),
      source: z.enum(['0.0.0.0/0', '::/0']),
      rule: analysisRuleRefView,
      risk: z.enum(['critical', 'high', 'medium', 'low']),
      risk_reason: z.string(),
    }),
  ),
  instances_without_report: z.array(z.string()),
});

const portRefView = z.object({ instance_id: z.string(), protocol: z.enum(['tcp', 'udp']), port: z.int(), ethertype: ethertypeSchema });

export const impactView = z.object({
  instances: z.array(z.string()).describe('instances whose policy document would change'),
  internet: z.object({
    opened: z.array(portRefView).describe('listening ports (per the last reports) that would become reachable from 0.0.0.0/0 or ::/0'),
    closed: z.array(portRefView).describe('listening ports that would stop being reachable from the internet'),
  }),
});
