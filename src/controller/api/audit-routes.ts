/**
 * `GET /v3/{project_id}/audit-events`: the project's audit trail
 * (src/controller/audit.ts), newest first, with the filters of
 * `listAuditEventsQuery` and the marker pagination every list of this API
 * has (the same `page_info` as `paginate`). The store applies the filters and
 * the page (a keyset after the marker, one row more than the page to know
 * whether there is a next one): a page never reads the whole trail.
 */
import { AuditMarkerNotFound, type AuditEvent, type AuditFilter } from '../store/store.js';
import type { ApiOptions, Route } from './route.js';
import { parseWith } from './route.js';
import { listAuditEventsQuery } from './schemas.js';
import { pageOf, pageSize, unknownMarker } from './views.js';

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
    const size = pageSize(q.limit);
    let rows: AuditEvent[];
    try {
      rows = await o.store.listAuditEvents(project, filter, { after: q.marker, limit: size + 1 });
    } catch (e) {
      if (e instanceof AuditMarkerNotFound) throw unknownMarker(e.marker);
      throw e;
    }
    const { page, page_info } = pageOf(rows, size);
    return { audit_events: page, page_info };
  });
}
