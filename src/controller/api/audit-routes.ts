/**
 * `GET /v3/{project_id}/audit-events`: the project's audit trail
 * (src/controller/audit.ts), newest first, with the filters of
 * `listAuditEventsQuery` and the marker pagination every list of this API
 * has (the same `page_info` as `paginate`). The store applies the filters and
 * the page (a keyset after the marker, one row more than the page to know
 * whether there is a next one): a page never reads the whole trail.
 */
import { AuditMarkerNotFound, type AuditEvent, type AuditFilter } from '../store/store.js';
import { ApiError } from '../errors.js';
import type { ApiOptions, Route } from './route.js';
import { parseWith } from './route.js';
import { listAuditEventsQuery } from './schemas.js';
import { DEFAULT_PAGE, type PageInfo } from './views.js';

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
    const size = q.limit === undefined || q.limit === 0 ? DEFAULT_PAGE : q.limit;
    let rows: AuditEvent[];
    try {
      rows = await o.store.listAuditEvents(project, filter, { after: q.marker, limit: size + 1 });
    } catch (e) {
      if (e instanceof AuditMarkerNotFound) throw ApiError.invalid([{ path: 'marker', message: `${JSON.stringify(e.marker)} is not the id of a resource in this list` }]);
      throw e;
    }
    const page = rows.slice(0, size);
    const page_info: PageInfo = page.length ? { previous_marker: page[0]!.id, current_count: page.length } : { current_count: 0 };
    if (rows.length > size) page_info.next_marker = page[page.length - 1]!.id;
    return { audit_events: page, page_info };
  });
}
