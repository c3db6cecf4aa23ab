/**
 * Stored rows -> API resources (Huawei field order), and v3-style
 * marker pagination. Pure.
 */
import type { AddressGroupRow, GroupRow, InstanceSpec, RuleRow } from '../model.js';
import { ApiError } from '../errors.js';
import type { AddressGroupView, GroupView, InstanceView, RuleView } from './schemas.js';

export function ruleView(projectId: string, r: RuleRow): RuleView {
  const v: RuleView = {
    id: r.id,
    project_id: projectId,
    security_group_id: r.security_group_id,
    direction: r.direction,
    protocol: r.protocol,
    description: r.description,
    created_at: r.created_at,
    updated_at: r.created_at,
    ethertype: r.ethertype,
    remote_ip_prefix: r.remote_ip_prefix,
    multiport: r.multiport,
    action: r.action,
    priority: r.priority,
    remote_group_id: r.remote_group_id,
    remote_address_group_id: r.remote_address_group_id,
    enabled: r.enabled,
  };
  if (r.icmp_type !== null) v.icmp_type = r.icmp_type;
  if (r.icmp_code !== null) v.icmp_code = r.icmp_code;
  return v;
}

/** With `rules` the single-group form (`security_group_rules` included), without it the list form. */
export function groupView(projectId: string, g: GroupRow, rules?: readonly RuleRow[]): GroupView {
  return {
    id: g.id,
    name: g.name,
    project_id: projectId,
    description: g.description,
    enterprise_project_id: g.enterprise_project_id,
    tags: g.tags,
    ...(rules ? { security_group_rules: rules.map((r) => ruleView(projectId, r)) } : {}),
    created_at: g.created_at,
    updated_at: g.updated_at,
  };
}

export function addressGroupView(projectId: string, a: AddressGroupRow): AddressGroupView {
  return {
    id: a.id,
    name: a.name,
    description: a.description,
    max_capacity: a.max_capacity,
    ip_set: a.ip_set,
    ip_version: a.ip_version,
    created_at: a.created_at,
    updated_at: a.updated_at,
    tenant_id: projectId,
    enterprise_project_id: a.enterprise_project_id,
    tags: a.tags,
    status: 'NORMAL',
    status_message: '',
    ip_extra_set: a.ip_set.map((ip) => ({ ip, remarks: a.ip_remarks[ip] ?? null })),
  };
}

export function instanceView(projectId: string, i: InstanceSpec): InstanceView {
  return {
    id: i.id,
    name: i.name,
    project_id: projectId,
    addresses: i.addresses,
    security_groups: i.security_groups,
    created_at: i.created_at,
    updated_at: i.updated_at,
  };
}

export interface PageInfo {
  previous_marker?: string;
  current_count: number;
  next_marker?: string;
}

/** The page size of a list without `limit` (or with `limit=0`). */
const DEFAULT_PAGE = 2000;

/** The page size `limit` asks for. */
export const pageSize = (limit: number | undefined): number => (limit === undefined || limit === 0 ? DEFAULT_PAGE : limit);

/** The 400 for a marker that is not in the list. */
export const unknownMarker = (marker: string): ApiError =>
  ApiError.invalid([{ path: 'marker', message: `${JSON.stringify(marker)} is not the id of a resource in this list` }]);

/** The first `size` of `rest` (what follows the marker) and its page_info. */
export function pageOf<T extends { id: string }>(rest: readonly T[], size: number): { page: T[]; page_info: PageInfo } {
  const page = rest.slice(0, size);
  const page_info: PageInfo = page.length ? { previous_marker: page[0]!.id, current_count: page.length } : { current_count: 0 };
  if (rest.length > page.length) page_info.next_marker = page[page.length - 1]!.id;
  return { page, page_info };
}

/**
 * One page of `items` (already filtered; a subsequence of `all`, which is in
 * creation order). `marker` is the id of the last resource of the previous
 * page; it need not match the filters, only exist.
 */
export function paginate<T extends { id: string }>(all: readonly T[], items: readonly T[], limit: number | undefined, marker: string | undefined): { page: T[]; page_info: PageInfo } {
  let rest = items;
  if (marker !== undefined) {
    const pos = new Map(all.map((x, i) => [x.id, i]));
    const m = pos.get(marker);
    if (m === undefined) throw unknownMarker(marker);
    rest = items.filter((x) => pos.get(x.id)! > m);
  }
  return pageOf(rest, pageSize(limit));
}
