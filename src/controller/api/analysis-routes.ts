/**
 * The fleet analysis routes (issue 17): `GET .../reachability`,
 * `GET .../exposure`, and the `impact` of a dry-run rule change. Thin: parse
 * the query, read the snapshot and the agents' port reports, call the pure
 * analysis (`../analysis.ts`), shape the answer.
 *
 * The exposure list of a project is cached by what it is a function of: the
 * project's version (every commit bumps it) and each instance's port report
 * (`ports_received_at`). The agent states are read on every call (that is
 * how a new port report is seen); only the analysis is skipped when neither
 * changed.
 */
import { ApiError } from '../errors.js';
import { FleetView, AnalysisQueryError, changeImpact, exposure, reachability, type ChangeImpact, type ExposureList, type PortsOf, type PortsLookup } from '../analysis.js';
import type { ProjectSnapshot } from '../model.js';
import { affectedInstances, type Touched } from '../policy-documents.js';
import type { Store } from '../store/store.js';
import type { ApiOptions, Route } from './route.js';
import { parseWith } from './route.js';
import { exposureQuery, reachabilityQuery } from './schemas.js';

const NO_REPORT: PortsOf = { report: null, receivedAt: null };

/** The last port reports of `ids`, read once each. */
async function readPorts(store: Store, project: string, ids: readonly string[]): Promise<Map<string, PortsOf>> {
  const out = new Map<string, PortsOf>();
  for (const id of ids) {
    const st = await store.getAgentState(project, id);
    out.set(id, st ? { report: st.ports, receivedAt: st.ports_received_at } : NO_REPORT);
  }
  return out;
}

const lookup =
  (ports: ReadonlyMap<string, PortsOf>): PortsLookup =>
  (id) =>
    ports.get(id) ?? NO_REPORT;

/** The `impact` of a dry-run change: `preview` is what `ControllerService.preview` returned. */
export async function dryRunImpact(store: Store, preview: { before: ProjectSnapshot; after: ProjectSnapshot; touched: Touched }): Promise<ChangeImpact> {
  const after = new FleetView(preview.after);
  const candidates = affectedInstances(after.ix, preview.touched);
  const ports = await readPorts(
    store,
    preview.after.projectId,
    candidates.map((i) => i.id),
  );
  return changeImpact(new FleetView(preview.before), after, candidates, lookup(ports));
}

const MAX_CACHED_PROJECTS = 32;

interface CachedExposure {
  version: number;
  /** ports_received_at of every instance, in snapshot order */
  reports: string;
  list: ExposureList;
}

export function registerAnalysisRoutes(route: Route, o: ApiOptions): void {
  const { service, store } = o;
  const cache = new Map<string, CachedExposure>();

  route('GET', '/reachability', 200, async ({ project, query }) => {
    const q = parseWith(reachabilityQuery, query, 'query');
    const snap = await service.read(project);
    const view = new FleetView(snap);
    const ports = await readPorts(store, project, view.instance(q.to) ? [q.to] : []);
    try {
      return { reachability: reachability(view, q, lookup(ports)) };
    } catch (e) {
      if (e instanceof AnalysisQueryError) throw ApiError.invalid([{ path: e.field, message: e.message }]);
      throw e;
    }
  });

  route('GET', '/exposure', 200, async ({ project, query }) => {
    const q = parseWith(exposureQuery, query, 'query');
    const snap = await service.read(project);
    for (const id of q.instance_id ?? []) {
      if (!snap.instances.some((i) => i.id === id)) throw ApiError.invalid([{ path: 'instance_id', message: `${JSON.stringify(id)} is not an instance of this project` }]);
    }
    const ports = await readPorts(
      store,
      project,
      snap.instances.map((i) => i.id),
    );
    const reports = snap.instances.map((i) => ports.get(i.id)?.receivedAt ?? '').join('\n');
    let hit = cache.get(project);
    if (!hit || hit.version !== snap.version || hit.reports !== reports) {
      hit = { version: snap.version, reports, list: exposure(new FleetView(snap), lookup(ports)) };
      cache.delete(project);
      cache.set(project, hit);
      // the most recently computed projects only (a Map iterates in insertion order)
      if (cache.size > MAX_CACHED_PROJECTS) cache.delete(cache.keys().next().value!);
    }
    if (!q.instance_id) return { ...hit.list };
    const wanted = new Set(q.instance_id);
    return {
      exposure: hit.list.exposure.filter((e) => wanted.has(e.instance_id)),
      instances_without_report: hit.list.instances_without_report.filter((id) => wanted.has(id)),
    };
  });
}
