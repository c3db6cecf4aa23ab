/**
 * The OpenAPI 3.1 document served at /openapi.json, generated from the same
 * zod schemas that parse requests (`z.toJSONSchema`), so it cannot drift
 * from what the server accepts.
 */
import { z } from 'zod';
import { VERSION } from '../../lib/version.js';
import { API_ERROR_KINDS, DRY_RUN_CODE } from '../errors.js';
import { policySchema } from '../../policy/schema.js';
import {
  addressGroupView,
  auditEventView,
  batchCreateRulesBody,
  createAddressGroupBody,
  createGroupBody,
  createInstanceBody,
  createRuleBody,
  deleteRuleQuery,
  errorView,
  exposureQuery,
  exposureView,
  groupView,
  instanceStatusView,
  instanceView,
  listAddressGroupsQuery,
  listAuditEventsQuery,
  listGroupsQuery,
  listInstancesQuery,
  listRulesQuery,
  pageInfoView,
  impactView,
  portsView,
  reachabilityQuery,
  reachabilityView,
  ruleView,
  updateAddressGroupBody,
  updateGroupBody,
  updateInstanceBody,
} from './schemas.js';

type Json = Record<string, unknown>;

function schema(s: z.ZodType, io: 'input' | 'output'): Json {
  const j = z.toJSONSchema(s, { io, unrepresentable: 'any' }) as Json;
  delete j.$schema;
  return j;
}

const rid = { request_id: z.string() };
const responses = {
  securityGroup: z.object({ ...rid, security_group: groupView }),
  securityGroups: z.object({ ...rid, security_groups: z.array(groupView), page_info: pageInfoView }),
  rule: z.object({ ...rid, security_group_rule: ruleView }),
  rules: z.object({ ...rid, security_group_rules: z.array(ruleView), page_info: pageInfoView.optional() }),
  addressGroup: z.object({ ...rid, address_group: addressGroupView }),
  addressGroups: z.object({ ...rid, address_groups: z.array(addressGroupView), page_info: pageInfoView }),
  instanceCreated: z.object({ ...rid, instance: instanceView, token: z.string().describe('the agent token; shown only here') }),
  instance: z.object({ ...rid, instance: instanceView }),
  instances: z.object({ ...rid, instances: z.array(instanceView), page_info: pageInfoView }),
  token: z.object({ ...rid, instance_id: z.string(), token: z.string() }),
  status: z.object({ ...rid, status: instanceStatusView }),
  statuses: z.object({ ...rid, instance_statuses: z.array(instanceStatusView) }),
  ports: portsView,
  auditEvents: z.object({ ...rid, audit_events: z.array(auditEventView), page_info: pageInfoView }),
  error: errorView,
  reachability: z.object({ ...rid, reachability: reachabilityView }),
  exposure: z.object({ ...rid, ...exposureView.shape }),
  dryRunImpact: errorView.extend({ impact: impactView }),
};

interface Operation {
  method: 'get' | 'post' | 'put' | 'delete';
  path: string;
  summary: string;
  query?: z.ZodObject;
  body?: z.ZodType;
  ok: { status: number; schema: Json | null; description?: string; contentType?: string };
  dryRun?: boolean;
  /** the dry run's 202 answer carries the change preview (`impact`) */
  impact?: boolean;
}

// 429: the source address failed authentication too often (docs/api.md, Errors)
const ERRORS = [400, 401, 403, 404, 409, 429, 503];

/** "error_code: meaning" of every error kind with this status (Huawei's codes where Huawei has one). */
function errorCodes(status: number): string {
  const lines = Object.values(API_ERROR_KINDS)
    .filter((k) => k.status === status)
    .map((k) => `${k.apiCode}: ${k.what}`);
  return `error; error_code is one of: ${lines.join('; ')}`;
}

function operations(): Operation[] {
  const o = (s: z.ZodType) => schema(s, 'output');
  const P = '/v3/{project_id}';
  return [
    { method: 'post', path: `${P}/vpc/security-groups`, summary: 'Create a security group (with Huawei\'s four default rules: ingress from its own members, egress to all, IPv4 and IPv6, priority 100)', body: createGroupBody, ok: { status: 201, schema: o(responses.securityGroup) }, dryRun: true },
    { method: 'get', path: `${P}/vpc/security-groups`, summary: 'List security groups', query: listGroupsQuery, ok: { status: 200, schema: o(responses.securityGroups) } },
    { method: 'get', path: `${P}/vpc/security-groups/{id}`, summary: 'Show a security group and its rules', ok: { status: 200, schema: o(responses.securityGroup) } },
    { method: 'put', path: `${P}/vpc/security-groups/{id}`, summary: 'Update a security group\'s name or description', body: updateGroupBody, ok: { status: 200, schema: o(responses.securityGroup) } },
    { method: 'delete', path: `${P}/vpc/security-groups/{id}`, summary: 'Delete a security group (409 while referenced or associated)', ok: { status: 204, schema: null } },
    { method: 'post', path: `${P}/vpc/security-group-rules`, summary: 'Create a security group rule', body: createRuleBody, ok: { status: 201, schema: o(responses.rule) }, dryRun: true, impact: true },
    {
      method: 'post',
      path: `${P}/vpc/security-groups/{id}/security-group-rules/batch-create`,
      summary: 'Create rules in a security group, all or nothing',
      body: batchCreateRulesBody,
      ok: { status: 201, schema: o(responses.rules) },
      dryRun: true,
      impact: true,
    },
    { method: 'get', path: `${P}/vpc/security-group-rules`, summary: 'List security group rules', query: listRulesQuery, ok: { status: 200, schema: o(responses.rules) } },
    { method: 'get', path: `${P}/vpc/security-group-rules/{id}`, summary: 'Show a security group rule', ok: { status: 200, schema: o(responses.rule) } },
    {
      method: 'delete',
      path: `${P}/vpc/security-group-rules/{id}`,
      summary: 'Delete a security group rule (with ?dry_run=true: only the change preview)',
      query: deleteRuleQuery,
      ok: { status: 204, schema: null },
      dryRun: true,
      impact: true,
    },
    { method: 'post', path: `${P}/vpc/address-groups`, summary: 'Create an address group', body: createAddressGroupBody, ok: { status: 201, schema: o(responses.addressGroup) }, dryRun: true },
    { method: 'get', path: `${P}/vpc/address-groups`, summary: 'List address groups', query: listAddressGroupsQuery, ok: { status: 200, schema: o(responses.addressGroups) } },
    { method: 'get', path: `${P}/vpc/address-groups/{id}`, summary: 'Show an address group', ok: { status: 200, schema: o(responses.addressGroup) } },
    { method: 'put', path: `${P}/vpc/address-groups/{id}`, summary: 'Update an address group (name, description, ip_set or ip_extra_set, max_capacity)', body: updateAddressGroupBody, ok: { status: 200, schema: o(responses.addressGroup) }, dryRun: true },
    { method: 'delete', path: `${P}/vpc/address-groups/{id}`, summary: 'Delete an address group (409 VPC.9907 while referenced)', ok: { status: 204, schema: null } },
    { method: 'delete', path: `${P}/vpc/address-groups/{id}/force`, summary: 'Force-delete an address group with the rules that reference it (DeleteIpAddressGroupForce)', ok: { status: 204, schema: null } },
    { method: 'post', path: `${P}/instances`, summary: 'Create an instance; the response carries its agent token (once)', body: createInstanceBody, ok: { status: 201, schema: o(responses.instanceCreated) } },
    { method: 'get', path: `${P}/instances`, summary: 'List instances', query: listInstancesQuery, ok: { status: 200, schema: o(responses.instances) } },
    { method: 'get', path: `${P}/instances/{id}`, summary: 'Show an instance', ok: { status: 200, schema: o(responses.instance) } },
    { method: 'put', path: `${P}/instances/{id}`, summary: 'Change an instance\'s name, addresses or ordered security groups', body: updateInstanceBody, ok: { status: 200, schema: o(responses.instance) } },
    { method: 'delete', path: `${P}/instances/{id}`, summary: 'Delete an instance (its agent is disconnected)', ok: { status: 204, schema: null } },
    { method: 'post', path: `${P}/instances/{id}/rotate-token`, summary: 'Issue a new agent token; the old one stops working at once', ok: { status: 200, schema: o(responses.token) } },
    {
      method: 'get',
      path: `${P}/instances/{id}/policy`,
      summary: 'The compiled policy document (SEMANTICS section 8), byte-identical to what the agent receives',
      ok: { status: 200, schema: schema(policySchema, 'output') },
    },
    { method: 'get', path: `${P}/instances/{id}/status`, summary: 'Desired vs applied revision, last ack and error, connection', ok: { status: 200, schema: o(responses.status) } },
    { method: 'get', path: `${P}/instances/{id}/ports`, summary: 'The agent\'s last port report (open / blocked / local-only / not-listening)', ok: { status: 200, schema: o(responses.ports) } },
    { method: 'get', path: `${P}/instance-statuses`, summary: 'Every instance\'s status (as GET .../instances/{id}/status) in one answer, in list order', ok: { status: 200, schema: o(responses.statuses) } },
    {
      method: 'get',
      path: `${P}/events`,
      summary:
        'Live events (server-sent events): `instance` {instance_id, desired_revision, applied_revision, connected, last_error} on agent connect/ack/disconnect, `ports` {instance_id} on a port report, `change` {resource_type, operation, resource_ids} on a successful write; a `: heartbeat` comment every 15 s; closed after 15 minutes (reconnect to authenticate again) or when the client does not read',
      ok: { status: 200, schema: { type: 'string' }, contentType: 'text/event-stream', description: 'an event stream (text/event-stream), open until the client leaves' },
    },
    {
      method: 'get',
      path: `${P}/audit-events`,
      summary: 'The project\'s audit trail: every API write (accepted or refused) and agent connection event, newest first',
      query: listAuditEventsQuery,
      ok: { status: 200, schema: o(responses.auditEvents) },
    },
    {
      method: 'get',
      path: `${P}/reachability`,
      summary: 'Can a new connection from an instance, address or CIDR reach an instance? Both sides evaluated, with the deciding rules and whether the port listens',
      query: reachabilityQuery,
      ok: { status: 200, schema: o(responses.reachability) },
    },
    {
      method: 'get',
      path: `${P}/exposure`,
      summary: 'Listening ports reachable from 0.0.0.0/0 or ::/0, with the rule that opens each, riskiest first',
      query: exposureQuery,
      ok: { status: 200, schema: o(responses.exposure) },
    },
  ];
}

function queryParameters(q: z.ZodObject): Json[] {
  const j = schema(q, 'input') as { properties?: Record<string, Json>; required?: string[] };
  return Object.entries(j.properties ?? {}).map(([name, s]) => ({ name, in: 'query', required: (j.required ?? []).includes(name), schema: s, ...(s.description ? { description: s.description } : {}) }));
}

export function buildOpenApi(): Json {
  const paths: Record<string, Record<string, Json>> = {};
  const errorSchema = schema(responses.error, 'output');
  for (const op of operations()) {
    const parameters: Json[] = [{ name: 'project_id', in: 'path', required: true, schema: { type: 'string' } }];
    if (op.path.includes('{id}')) parameters.push({ name: 'id', in: 'path', required: true, schema: { type: 'string' } });
    if (op.query) parameters.push(...queryParameters(op.query));
    const res: Record<string, Json> = {
      [op.ok.status]: op.ok.schema
        ? { description: op.ok.description ?? 'success', content: { [op.ok.contentType ?? 'application/json']: { schema: op.ok.schema } } }
        : { description: 'success, no body' },
    };
    if (op.dryRun) {
      const answer = op.impact ? schema(responses.dryRunImpact, 'output') : errorSchema;
      const what = op.impact ? '; impact: the instances whose document would change and the listening ports it opens or closes to the internet' : '';
      res['202'] = { description: `dry_run: the request is valid, nothing changed (error_code ${DRY_RUN_CODE})${what}`, content: { 'application/json': { schema: answer } } };
    }
    for (const s of ERRORS) res[s] = { description: errorCodes(s), content: { 'application/json': { schema: errorSchema } } };
    paths[op.path] ??= {};
    paths[op.path]![op.method] = {
      summary: op.summary,
      parameters,
      ...(op.body ? { requestBody: { required: true, content: { 'application/json': { schema: schema(op.body, 'input') } } } } : {}),
      responses: res,
      security: [{ bearer: [] }, { authToken: [] }, { akskSignature: [] }],
    };
  }
  paths['/healthz'] = { get: { summary: 'Liveness', responses: { 200: { description: 'ok' } } } };
  paths['/readyz'] = {
    get: {
      summary: 'Readiness: the controller reaches its database (take a replica whose database is away out of rotation)',
      responses: {
        200: { description: '{"status":"ready"}' },
        503: { description: `not ready: error_code ${API_ERROR_KINDS.unavailable.apiCode}, status "not_ready", error_msg says why; Retry-After`, content: { 'application/json': { schema: errorSchema } } },
      },
    },
  };
  paths['/metrics'] = { get: { summary: 'Prometheus metrics', responses: { 200: { description: 'text exposition format' } } } };
  return {
    openapi: '3.1.0',
    info: {
      title: 'secgroup controller',
      version: VERSION,
      description: 'Security groups, rules and address groups as in Huawei Cloud VPC API v3, plus instances. See docs/api.md.',
    },
    components: {
      securitySchemes: {
        bearer: { type: 'http', scheme: 'bearer' },
        authToken: { type: 'apiKey', in: 'header', name: 'X-Auth-Token' },
        // OpenAPI has no scheme for request signatures: described here, verified in aksk.ts
        akskSignature: {
          type: 'apiKey',
          in: 'header',
          name: 'Authorization',
          description:
            'AK/SK as the Huawei Cloud SDKs sign: "SDK-HMAC-SHA256 Access=<AK>, SignedHeaders=<names incl. host;x-sdk-date>, Signature=<hex>" with X-Sdk-Date (within 15 minutes). Errors: 401 APIG.0301 (unknown AK, bad signature, date), 403 APIG.0302 (project). See docs/api.md.',
        },
      },
    },
    paths,
  };
}
