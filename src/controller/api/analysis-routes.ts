/**
 * The fleet analysis routes (issue 17): `GET .../reachability`,
 * `GET .../exposure`, and the `impact` of a dry-run rule change. Thin: parse
 * the query, read the snapshot and the agents' port reports, call the pure
 * analysis (`../analysis.ts`), shape the answer.
 *
 * The exposure list of a project is kept by what it is a function of
 * (`ExposureTracker`): the project's version (every commit bumps it: the
 * analysis starts over) and each instance's port report (`ports_received_at`:
 * that instance is analysed again). The agent states are read on every call
 * (one read: that is how a new port report is seen).
 */
import { ApiError } from '../errors.js';
import { FleetView, AnalysisQueryError, ExposureTracker, changeImpact, reachability, type ChangeImpact, type PortsOf, type PortsLookup } from '../analysis.js';
import type { ProjectSnapshot } from '../model.js';
import { affectedInstances, type Touched } from '../policy-documents.js';
import type { Store } from '../store/store.js';
import type { ApiOptions, Route } from './route.js';
import { parseWith } from './route.js';
import { exposureQuery, reachabilityQuery } from './schemas.js';

const NO_REPORT: PortsOf = { report: null, receivedAt: null };

/** The last port reports of `ids` (all of the project's when more than a few: one read). */
async function readPorts(store: Store, project: string, ids: readonly string[]): Promise<Map<string, PortsOf>> {
  const out = new Map<string, PortsOf>();
  const states = ids.length > 8 ? await store.listAgentStates(project) : null;
  for (const id of ids) {
    const st = states ? states.get(id) : await store.getAgentState(project, id);
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

/** Projects whose exposure analysis is kept (the most recently asked). */
const MAX_CACHED_PROJECTS = 32;

export function registerAnalysisRoutes(route: Route, o: ApiOptions): void {
  const { service, store } = o;
  const trackers = new Map<string, ExposureTracker>();

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
    const tracker = trackers.get(project) ?? new ExposureTracker();
    // the most recently asked projects only (a Map iterates in insertion order)
    trackers.delete(project);
    trackers.set(project, tracker);
    if (trackers.size > MAX_CACHED_PROJECTS) trackers.delete(trackers.keys().next().value!);
    const list = tracker.current(snap, lookup(ports));
    if (!q.instance_id) return { ...list };
    const wanted = new Set(q.instance_id);
    return {
      exposure: list.exposure.filter((e) => wanted.has(e.instance_id)),
      instances_without_report: list.instances_without_report.filter((id) => wanted.has(id)),
    };
  });
}
