/**
 * A version-checked cache of project snapshots, for any store: loading a
 * project reads every row of it, and doing that on every write made a write
 * cost the size of the project (issue 16). The store reads the project's
 * version (one row) under its write lock, and `at` hands back the cached
 * snapshot when it has that version, else the loaded one; after a commit the
 * store records `commit(...)`: the snapshot the ops made, with the new
 * version and the revisions it handed out.
 *
 * Correct with other writers (another process on the same SQLite file,
 * another replica on the same database) because a project's version is
 * bumped by every commit and only committed versions are read: a snapshot is
 * reused only for the version it was built at. A commit that fails is never
 * recorded (the store calls `commit` after the transaction committed).
 * Snapshots are shared, never copied: callers must not mutate them (they are
 * `readonly` by type). Pure data structure; bounded by `maxProjects`
 * (least recently used first out).
 */
import { applyOps, emptySnapshot, type Op, type ProjectSnapshot } from '../model.js';

/**
 * The state after a commit of `ops` on `before` (null: the project's first
 * commit): `applyOps` (or `after`, that state as the change computed it), the
 * new version, and on every instance that got a revision that revision (its
 * `policy_hash` comes from the `setPolicy` op).
 */
export function committedSnapshot(projectId: string, before: ProjectSnapshot | null, ops: readonly Op[], version: number, revisions: ReadonlyMap<string, number>, after?: ProjectSnapshot): ProjectSnapshot {
  const applied = after ?? applyOps(before ?? emptySnapshot(projectId), ops);
  const instances = revisions.size ? applied.instances.map((i) => (revisions.has(i.id) ? { ...i, revision: revisions.get(i.id)! } : i)) : applied.instances;
  return { ...applied, version, instances };
}

export class SnapshotCache {
  /** insertion order = least recently used first */
  private readonly snaps = new Map<string, ProjectSnapshot>();

  constructor(private readonly maxProjects = 64) {}

  /**
   * The project's snapshot at `version` (null: the project is not stored):
   * the cached one when it has that version, else `load()`, which is then
   * cached (when its version is `version`).
   */
  at(projectId: string, version: number | null, load: () => ProjectSnapshot | null): ProjectSnapshot | null {
    if (version === null) {
      this.snaps.delete(projectId);
      return null;
    }
    const hit = this.snaps.get(projectId);
    if (hit && hit.version === version) {
      this.touch(projectId, hit);
      return hit;
    }
    const loaded = load();
    if (loaded && loaded.version === version) this.touch(projectId, loaded);
    else this.snaps.delete(projectId);
    return loaded;
  }

  /** The cached snapshot at `version`, or undefined (for stores whose load is asynchronous). */
  get(projectId: string, version: number): ProjectSnapshot | undefined {
    const hit = this.snaps.get(projectId);
    return hit && hit.version === version ? hit : undefined;
  }

  /** The cached snapshot of the project at whatever version it has (a store may bring it forward: ./change-log.ts). */
  latest(projectId: string): ProjectSnapshot | undefined {
    return this.snaps.get(projectId);
  }

  /** Records a loaded snapshot. */
  put(snap: ProjectSnapshot): void {
    this.touch(snap.projectId, snap);
  }

  /** After a committed transaction: caches and returns `committedSnapshot(...)`. */
  commit(projectId: string, before: ProjectSnapshot | null, ops: readonly Op[], version: number, revisions: ReadonlyMap<string, number>, after?: ProjectSnapshot): ProjectSnapshot {
    const next = committedSnapshot(projectId, before, ops, version, revisions, after);
    this.touch(projectId, next);
    return next;
  }

  /** Forgets the project (e.g. when a transaction's outcome is unknown). */
  drop(projectId: string): void {
    this.snaps.delete(projectId);
  }

  clear(): void {
    this.snaps.clear();
  }

  private touch(projectId: string, snap: ProjectSnapshot): void {
    this.snaps.delete(projectId);
    this.snaps.set(projectId, snap);
    if (this.snaps.size > this.maxProjects) this.snaps.delete(this.snaps.keys().next().value!);
  }
}
