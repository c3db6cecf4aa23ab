/**
 * `GET /v3/{project_id}/audit-events`: the project's audit trail
 * (src/controller/audit.ts), newest first, with the filters of
 * `listAuditEventsQuery` and the marker pagination every list of this API
 * has (`paginate`). The store applies the filters; the marker event comes
 * back with the page whether it matches them or not, so `paginate` can place it.
 */
import { auditEventMatches, type AuditFilter } from '../store/store.js';
import type { ApiOptions, Route } from './route.js';
import { parseWith } from './route.js';
import { listAuditEventsQuery } from './schemas.js';
import { paginate } from './views.js';

export function registerAuditRoutes(route: Route, o: Pick<ApiOptions, 'store'>): void {
  route('GET', '/audit-events', 200, async ({ project, query }) => {
    const q = parseWith(listAuditEventsQuery, query, 'query');
    const filter: AuditFilter = {
      operation: q.operation,
      actor: q.actor,
      resource_id: q.resource_id,
      status: q.status,
      result: q.result,
      from: q.from,
      to: q.to,
      request_id: q.request_id,
    };
    for (const k of Object.keys(filter) as (keyof AuditFilter)[]) if (filter[k] === undefined) delete filter[k];
    const all = await o.store.listAuditEvents(project, filter, q.marker);
    const items = q.marker === undefined ? all : all.filter((e) => auditEventMatches(e, filter));
    const { page, page_info } = paginate(all, items, q.limit, q.marker);
    return { audit_events: page, page_info };
  });
}
