/**
 * The change log of a store shared by several replicas (PostgreSQL,
 * `project_changes`): each commit writes, in its own transaction, the ops it
 * applied and the revisions it handed out under the project's new version.
 * A replica whose cached snapshot is k versions behind (other replicas
 * committed since) replays those k entries on it (`applyOps`, as after its
 * own commits: `committedSnapshot`) instead of reloading the whole project
 * while it holds the project's lock (issue 16: three replicas writing into
 * one project of 5000 rules took turns on the lock, and each turn began with
 * a full reload).
 *
 * An entry keeps only what a snapshot holds: `setPolicy` without its
 * document (the snapshot has the hash; documents stay in `instances`),
 * `setToken` not at all. Entries are pruned beyond `CHANGE_LOG_KEEP`
 * versions; a replica further behind, or one that finds a version missing,
 * loads the project instead (`replayChanges` returns null). Pure.
 */
import type { Op, ProjectSnapshot } from '../model.js';
import { committedSnapshot } from './snapshot-cache.js';

/** Versions kept per project (a replica further behind reloads); older entries are pruned by the commits. */
export const CHANGE_LOG_KEEP = 64;

/** One commit's entry as stored (TEXT columns): its ops and the revisions it handed out. */
export interface ChangeEntry {
  version: number;
  ops: string;
  revisions: string;
}

/** The ops of a commit as the log keeps them (what a snapshot holds of them). */
export function loggedOps(ops: readonly Op[]): Op[] {
  const out: Op[] = [];
  for (const o of ops) {
    if (o.op === 'setToken') continue;
    out.push(o.op === 'setPolicy' ? { op: 'setPolicy', instanceId: o.instanceId, body: '', hash: o.hash } : o);
  }
  return out;
}

/** The entry of a commit at `version`. */
export function changeEntry(version: number, ops: readonly Op[], revisions: ReadonlyMap<string, number>): ChangeEntry {
  return { version, ops: JSON.stringify(loggedOps(ops)), revisions: JSON.stringify([...revisions]) };
}

/**
 * `base` brought to `version` by `entries` (those after `base.version`, in
 * version order); null when they are not exactly the versions
 * `base.version + 1 .. version` (pruned, or not all read).
 */
export function replayChanges(base: ProjectSnapshot, version: number, entries: readonly ChangeEntry[]): ProjectSnapshot | null {
  if (version <= base.version || entries.length !== version - base.version) return null;
  let snap = base;
  for (const [k, e] of entries.entries()) {
    if (e.version !== base.version + k + 1) return null;
    const revisions = new Map(JSON.parse(e.revisions) as [string, number][]);
    snap = committedSnapshot(base.projectId, snap, JSON.parse(e.ops) as Op[], e.version, revisions);
  }
  return snap;
}
