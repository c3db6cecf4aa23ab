/**
 * The v3 resources: security groups, security group rules, address groups
 * (paths and payloads of Huawei Cloud VPC API v3) and instances (secgroup's
 * own resource in the same style). Handlers parse, call a pure mutation
 * through the service, and shape the answer; nothing else.
 */
import { ApiError } from '../errors.js';
import {
  createGroup,
  createInstance,
  createRules,
  deleteGroup,
  deleteInstance,
  deleteRule,
  findAddressGroup,
  findGroup,
  findInstance,
  findRule,
  rotateToken,
  rulesOf,
  updateGroup,
  updateInstance,
  ruleCreate,
  type Mutation,
  type MutationContext,
} from '../domain.js';
import type { ProjectSnapshot } from '../model.js';
import { dryRunImpact, registerAnalysisRoutes } from './analysis-routes.js';
import { createAddressGroup, deleteAddressGroup, updateAddressGroup } from '../address-groups.js';
import { EMPTY_AGENT_STATE, type AgentState } from '../store/store.js';
import type { ApiOptions, Route } from './route.js';
import { parseWith, pathId } from './route.js';
import {
  batchCreateRulesBody,
  createAddressGroupBody,
  createGroupBody,
  createInstanceBody,
  createRuleBody,
  deleteRuleQuery,
  listAddressGroupsQuery,
  listGroupsQuery,
  listInstancesQuery,
  listRulesQuery,
  updateAddressGroupBody,
  updateGroupBody,
  updateInstanceBody,
} from './schemas.js';
import { registerAuditRoutes } from './audit-routes.js';
import { addressGroupView, groupView, instanceView, paginate, ruleView } from './views.js';


const matches = (filter: readonly string[] | undefined, value: string | null): boolean => filter === undefined || (value !== null && filter.includes(value));

/** Huawei's `enterprise_project_id` filter; `all_granted_eps` selects every enterprise project. */
function matchesEps(wanted: readonly string[] | undefined, value: string): boolean {
  return wanted === undefined || wanted.includes('all_granted_eps') || wanted.includes(value);
}

export function registerRoutes(route: Route, o: ApiOptions): void {
  const { service } = o;
  /** desired vs applied revision, connection and last error of one instance */
  /** `known`: the agent state when the caller read it already (a list of statuses reads them in one query) */
  const statusOf = async (project: string, inst: { id: string; revision: number | null }, known?: AgentState) => {
    const id = inst.id;
    const st = known ?? (await o.store.getAgentState(project, id)) ?? EMPTY_AGENT_STATE;
    return {
      instance_id: id,
      desired_revision: inst.revision,
      applied_revision: st.applied_revision,
      in_sync: inst.revision !== null && st.applied_revision === inst.revision,
      // connected here, or to another replica (its stored `connected_to`, kept fresh by heartbeats)
      connected: o.presence.isConnected(project, id) || (o.presence.connectedElsewhere?.(st) ?? false),
      last_seen: o.presence.lastSeen(project, id) ?? st.last_seen,
      last_ack: st.last_ack,
      last_error: st.last_error,
      agent: { version: st.agent_version, hostname: st.hostname },
    };
  };
  const DRY = { dry_run: true };
  /** A dry run that also answers what the change would do (`impact`, docs/api.md "Change preview"). */
  const previewed = async <T>(project: string, fn: (s: ProjectSnapshot, ctx: MutationContext) => Mutation<T>) => ({ ...DRY, impact: await dryRunImpact(o.store, await service.preview(project, fn)) });

  // ---- security groups ----

  route('POST', '/vpc/security-groups', 201, async ({ project, body }) => {
    const b = parseWith(createGroupBody, body);
    const sg = b.security_group;
    const r = await service.mutate(project, (s, ctx) => createGroup(s, { id: sg.id, name: sg.name, description: sg.description ?? '', enterprise_project_id: sg.enterprise_project_id, tags: sg.tags }, ctx), { dryRun: b.dry_run });
    return b.dry_run ? DRY : { security_group: groupView(project, r.group, r.rules) };
  });

  route('GET', '/vpc/security-groups', 200, async ({ project, query }) => {
    const q = parseWith(listGroupsQuery, query, 'query');
    const snap = await service.read(project);
    const items = snap.groups.filter(
      (g) => matches(q.id, g.id) && matches(q.name, g.name) && matches(q.description, g.description) && matchesEps(q.enterprise_project_id, g.enterprise_project_id),
    );
    const { page, page_info } = paginate(snap.groups, items, q.limit, q.marker);
    return { security_groups: page.map((g) => groupView(project, g)), page_info };
  });

  route('GET', '/vpc/security-groups/:id', 200, async ({ project, params }) => {
    const id = pathId(params, 'id', 'security group');
    const snap = await service.read(project);
    return { security_group: groupView(project, findGroup(snap, id), rulesOf(snap, id)) };
  });

  route('PUT', '/vpc/security-groups/:id', 200, async ({ project, params, body }) => {
    const id = pathId(params, 'id', 'security group');
    const b = parseWith(updateGroupBody, body);
    const r = await service.mutate(project, (s, ctx) => updateGroup(s, id, { name: b.security_group.name, description: b.security_group.description ?? undefined }, ctx));
    return { security_group: groupView(project, r.group, r.rules) };
  });

  route('DELETE', '/vpc/security-groups/:id', 204, async ({ project, params }) => {
    const id = pathId(params, 'id', 'security group');
    await service.mutate(project, (s) => deleteGroup(s, id));
    return null;
  });

  // ---- security group rules ----

  route('POST', '/vpc/security-group-rules', 201, async ({ project, body }) => {
    const b = parseWith(createRuleBody, body);
    const input = ruleCreate(b.security_group_rule.security_group_id, b.security_group_rule);
    const create = (s: ProjectSnapshot, ctx: MutationContext) => createRules(s, input.security_group_id, [input], ['security_group_rule'], ctx);
    if (b.dry_run) return previewed(project, create);
    const rules = await service.mutate(project, create);
    return { security_group_rule: ruleView(project, rules[0]!) };
  });

  route('POST', '/vpc/security-groups/:id/security-group-rules/batch-create', 201, async ({ project, params, body }) => {
    const id = pathId(params, 'id', 'security group');
    const b = parseWith(batchCreateRulesBody, body);
    const inputs = b.security_group_rules.map((r) => ruleCreate(id, r));
    const paths = inputs.map((_, i) => `security_group_rules[${i}]`);
    const create = (s: ProjectSnapshot, ctx: MutationContext) => createRules(s, id, inputs, paths, ctx, { ignoreDuplicates: b.ignore_duplicate });
    if (b.dry_run) return previewed(project, create);
    const rules = await service.mutate(project, create);
    return { security_group_rules: rules.map((r) => ruleView(project, r)) };
  });

  route('GET', '/vpc/security-group-rules', 200, async ({ project, query }) => {
    const q = parseWith(listRulesQuery, query, 'query');
    const snap = await service.read(project);
    const items = snap.rules.filter(
      (r) =>
        matches(q.id, r.id) &&
        matches(q.security_group_id, r.security_group_id) &&
        matches(q.protocol, r.protocol) &&
        matches(q.description, r.description) &&
        matches(q.remote_group_id, r.remote_group_id) &&
        matches(q.remote_address_group_id, r.remote_address_group_id) &&
        matches(q.remote_ip_prefix, r.remote_ip_prefix) &&
        matches(q.priority, String(r.priority)) &&
        (q.direction === undefined || q.direction === r.direction) &&
        (q.action === undefined || q.action === r.action) &&
        (q.ethertype === undefined || q.ethertype === r.ethertype) &&
        (q.enabled === undefined || q.enabled === r.enabled),
    );
    const { page, page_info } = paginate(snap.rules, items, q.limit, q.marker);
    return { security_group_rules: page.map((r) => ruleView(project, r)), page_info };
  });

  route('GET', '/vpc/security-group-rules/:id', 200, async ({ project, params }) => {
    const id = pathId(params, 'id', 'security group rule');
    const snap = await service.read(project);
    return { security_group_rule: ruleView(project, findRule(snap, id)) };
  });

  route('DELETE', '/vpc/security-group-rules/:id', 204, async ({ project, params, query }) => {
    const id = pathId(params, 'id', 'security group rule');
    if (parseWith(deleteRuleQuery, query, 'query').dry_run) return previewed(project, (s) => deleteRule(s, id));
    await service.mutate(project, (s) => deleteRule(s, id));
    return null;
  });

  // ---- address groups ----

  route('POST', '/vpc/address-groups', 201, async ({ project, body }) => {
    const b = parseWith(createAddressGroupBody, body);
    const a = b.address_group;
    const r = await service.mutate(
      project,
      (s, ctx) =>
        createAddressGroup(
          s,
          {
            id: a.id,
            name: a.name,
            description: a.description ?? '',
            ip_version: a.ip_version,
            ip_set: a.ip_set,
            ip_extra_set: a.ip_extra_set,
            max_capacity: a.max_capacity,
            enterprise_project_id: a.enterprise_project_id,
            tags: a.tags,
          },
          ctx,
        ),
      { dryRun: b.dry_run },
    );
    return b.dry_run ? DRY : { address_group: addressGroupView(project, r) };
  });

  route('GET', '/vpc/address-groups', 200, async ({ project, query }) => {
    const q = parseWith(listAddressGroupsQuery, query, 'query');
    const snap = await service.read(project);
    const items = snap.addressGroups.filter(
      (a) =>
        matches(q.id, a.id) &&
        matches(q.name, a.name) &&
        matches(q.description, a.description) &&
        matchesEps(q.enterprise_project_id, a.enterprise_project_id) &&
        (q.ip_version === undefined || Number(q.ip_version) === a.ip_version),
    );
    const { page, page_info } = paginate(snap.addressGroups, items, q.limit, q.marker);
    return { address_groups: page.map((a) => addressGroupView(project, a)), page_info };
  });

  route('GET', '/vpc/address-groups/:id', 200, async ({ project, params }) => {
    const id = pathId(params, 'id', 'address group');
    const snap = await service.read(project);
    return { address_group: addressGroupView(project, findAddressGroup(snap, id)) };
  });

  route('PUT', '/vpc/address-groups/:id', 200, async ({ project, params, body }) => {
    const id = pathId(params, 'id', 'address group');
    const b = parseWith(updateAddressGroupBody, body);
    const a = b.address_group;
    const r = await service.mutate(project, (s, ctx) => updateAddressGroup(s, id, { name: a.name, description: a.description ?? undefined, ip_set: a.ip_set, ip_extra_set: a.ip_extra_set, max_capacity: a.max_capacity }, ctx), {
      dryRun: b.dry_run,
    });
    return b.dry_run ? DRY : { address_group: addressGroupView(project, r) };
  });

  route('DELETE', '/vpc/address-groups/:id', 204, async ({ project, params }) => {
    const id = pathId(params, 'id', 'address group');
    await service.mutate(project, (s) => deleteAddressGroup(s, id));
    return null;
  });

  // Huawei's DeleteIpAddressGroupForce: the rules that reference the group are deleted with it
  route('DELETE', '/vpc/address-groups/:id/force', 204, async ({ project, params }) => {
    const id = pathId(params, 'id', 'address group');
    await service.mutate(project, (s) => deleteAddressGroup(s, id, { force: true }));
    return null;
  });

  // ---- instances ----

  route('POST', '/instances', 201, async ({ project, body }) => {
    const b = parseWith(createInstanceBody, body);
    const r = await service.mutate(project, (s, ctx) => createInstance(s, b.instance, ctx));
    return { instance: instanceView(project, r.instance), token: r.token };
  });

  route('GET', '/instances', 200, async ({ project, query }) => {
    const q = parseWith(listInstancesQuery, query, 'query');
    const snap = await service.read(project);
    const items = snap.instances.filter(
      (i) => matches(q.id, i.id) && matches(q.name, i.name) && (q.security_group_id === undefined || i.security_groups.some((g) => q.security_group_id!.includes(g))),
    );
    const { page, page_info } = paginate(snap.instances, items, q.limit, q.marker);
    return { instances: page.map((i) => instanceView(project, i)), page_info };
  });

  route('GET', '/instances/:id', 200, async ({ project, params }) => {
    const id = pathId(params, 'id', 'instance');
    const snap = await service.read(project);
    return { instance: instanceView(project, findInstance(snap, id)) };
  });

  route('PUT', '/instances/:id', 200, async ({ project, params, body }) => {
    const id = pathId(params, 'id', 'instance');
    const b = parseWith(updateInstanceBody, body);
    const r = await service.mutate(project, (s, ctx) => updateInstance(s, id, b.instance, ctx));
    return { instance: instanceView(project, r) };
  });

  route('DELETE', '/instances/:id', 204, async ({ project, params }) => {
    const id = pathId(params, 'id', 'instance');
    await service.mutate(project, (s) => deleteInstance(s, id));
    o.presence.disconnect(project, id, 'deleted');
    return null;
  });

  route('POST', '/instances/:id/rotate-token', 200, async ({ project, params }) => {
    const id = pathId(params, 'id', 'instance');
    const r = await service.mutate(project, (s, ctx) => rotateToken(s, id, ctx));
    o.presence.disconnect(project, id, 'revoked');
    return { instance_id: r.instanceId, token: r.token };
  });

  route('GET', '/instances/:id/policy', 200, async ({ project, params }) => {
    const id = pathId(params, 'id', 'instance');
    const snap = await service.read(project);
    findInstance(snap, id);
    const p = await service.policyText(project, id);
    if (!p) throw new ApiError('notFound', `instance ${JSON.stringify(id)} has no compiled policy yet`);
    return p.text;
  });

  route('GET', '/instances/:id/status', 200, async ({ project, params }) => {
    const id = pathId(params, 'id', 'instance');
    const snap = await service.read(project);
    const inst = snap.instances.find((i) => i.id === id);
    if (!inst) throw ApiError.notFound('instance', id);
    return { status: await statusOf(project, inst) };
  });

  // every instance's status in one answer (the console's overview), in the order of GET /instances
  route('GET', '/instance-statuses', 200, async ({ project }) => {
    const snap = await service.read(project);
    const states = await o.store.listAgentStates(project);
    const statuses = [];
    for (const inst of snap.instances) statuses.push(await statusOf(project, inst, states.get(inst.id) ?? EMPTY_AGENT_STATE));
    return { instance_statuses: statuses };
  });

  route('GET', '/instances/:id/ports', 200, async ({ project, params }) => {
    const id = pathId(params, 'id', 'instance');
    const snap = await service.read(project);
    findInstance(snap, id);
    const st = (await o.store.getAgentState(project, id)) ?? EMPTY_AGENT_STATE;
    return { instance_id: id, received_at: st.ports_received_at, report: st.ports };
  });

  // ---- audit trail ----

  registerAuditRoutes(route, o);

  // ---- fleet analysis ----

  registerAnalysisRoutes(route, o);
}
