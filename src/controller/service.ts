/**
 * The write path: under the project's write lock, run a pure mutation on its
 * snapshot, compile the policy documents of the instances it affects (on the
 * state after the change), and commit everything as one transaction. After a
 * commit, instances whose document changed are reported to `onPolicyChanged`
 * (the agent hub pushes them).
 *
 * Writes to one project that arrive together (in one turn of the event loop,
 * while the previous batch commits) are committed together: one store
 * transaction runs each mutation on the state the ones before it left (a
 * mutation that throws is left out alone, nothing of it written), then
 * compiles the affected documents once for the whole batch and hands out one
 * revision per changed document (issue 16: 50 clients writing into a group
 * an instance uses made 50 compiles, 50 revisions and 50 pushes of the same
 * document; now one). A batch that fails as a whole (the compile, or the
 * database refusing an op) is retried member by member, so a bad write fails
 * alone; one whose outcome is unknown (STORE_UNAVAILABLE: the connection was
 * lost during COMMIT) is not retried. Each project has its own batcher: at
 * most one batch per project is being committed at a time, so a replica's
 * writers never queue on their own project's lock (PostgreSQL) and the
 * snapshot cache always has the state they start from, while a slow commit
 * of one project never holds back the writes of another. A project's batcher
 * exists only while it has writes queued or committing.
 */
import type { Logger } from '../lib/logger.js';
import type { Clock } from '../lib/clock.js';
import { SecgroupError, isSecgroupError } from '../lib/errors.js';
import { formatTime } from '../lib/time.js';
import { applyOps, emptySnapshot, type Op, type ProjectSnapshot } from './model.js';
import { createProjectOps, type MutationContext, type Mutation, type Quotas } from './domain.js';
import { recompile, renderPolicyText, touchedBy, type Touched } from './policy-documents.js';
import { hashToken, type Random } from './tokens.js';
import { Batcher } from './store/batcher.js';
import type { Store, StoredPolicy } from './store/store.js';

type MutationFn<T> = (snap: ProjectSnapshot, ctx: MutationContext) => Mutation<T>;

/** A member's failure, as the batcher takes it (an Error rejects that member alone). */
function asError(e: unknown): Error {
  return e instanceof Error ? e : new Error(String(e));
}

/** Thrown out of a batch's change when every member failed: nothing is committed, each member gets its own error. */
class NothingToCommit extends Error {
  constructor(readonly outcomes: Error[]) {
    super('every write of the batch failed');
  }
}

export interface ServiceDeps {
  store: Store;
  clock: Clock;
  logger: Logger;
  quotas: Quotas;
  random: Random;
  /** after a commit: the instances whose document changed, with their new documents (so the hub need not read them back) */
  onPolicyChanged?: (projectId: string, instanceIds: string[], policies: ReadonlyMap<string, StoredPolicy>) => void;
  onCompiled?: (stats: { compiled: number; bumped: number }) => void;
}

export class ControllerService {
  /** one batcher per project with writes queued or committing */
  private readonly writes = new Map<string, Batcher<MutationFn<unknown>, unknown>>();

  constructor(private readonly deps: ServiceDeps) {}

  private context(): MutationContext {
    const { random, clock, quotas } = this.deps;
    return {
      now: formatTime(clock.now()),
      newId: () => random.uuid(),
      newToken: () => {
        const token = random.token();
        return { token, hash: hashToken(token) };
      },
      quotas,
    };
  }

  /** The project's current state; a project seen for the first time is created (with its default group). */
  async read(projectId: string): Promise<ProjectSnapshot> {
    const snap = await this.deps.store.loadProject(projectId);
    if (snap) return snap;
    await this.mutate(projectId, () => ({ ops: [], result: null }));
    const created = await this.deps.store.loadProject(projectId);
    if (!created) throw new SecgroupError('INTERNAL', `project ${projectId} vanished after it was created`);
    return created;
  }

  /**
   * Runs `fn` on the project's current state and commits its ops plus the
   * recompiled policies in one transaction (under the project's write lock,
   * so concurrent requests serialise instead of retrying; writes that arrive
   * together share the transaction and the compile, see above). With
   * `dryRun` nothing is written. Errors thrown by `fn` propagate unchanged
   * (nothing of it written).
   */
  async mutate<T>(projectId: string, fn: MutationFn<T>, opts: { dryRun?: boolean } = {}): Promise<T> {
    if (opts.dryRun) return (await this.preview(projectId, fn)).result;
    let writes = this.writes.get(projectId);
    if (!writes) {
      const batcher = new Batcher<MutationFn<unknown>, unknown>(
        (fns) => this.commitProject(projectId, fns),
        () => {
          if (this.writes.get(projectId) === batcher) this.writes.delete(projectId);
        },
      );
      this.writes.set(projectId, (writes = batcher));
    }
    return (await writes.add(fn)) as T;
  }

  /** Projects with writes queued or committing (for tests and metrics). */
  get projectsWriting(): number {
    return this.writes.size;
  }

  /** One transaction for the project's writes; when it fails as a whole with a known outcome, each write alone. */
  private async commitProject(projectId: string, fns: MutationFn<unknown>[]): Promise<unknown[]> {
    try {
      return await this.commitTogether(projectId, fns);
    } catch (e) {
      // lost during COMMIT: it may have committed, so running the writes again could apply them twice
      if (fns.length === 1 || (isSecgroupError(e) && e.code === 'STORE_UNAVAILABLE')) return fns.map(() => asError(e));
      this.deps.logger.warn({ event: 'write_batch_split', project: projectId, writes: fns.length, error: (e as Error).message }, 'a batch of writes failed as a whole; committing each alone');
      return Promise.all(fns.map((fn) => this.commitTogether(projectId, [fn]).then((r) => r[0], asError)));
    }
  }

  /**
   * `fns` in one store transaction, each on the state the ones before it
   * left, then one compile of the documents they affect. One result per
   * write, an Error for a write that threw (nothing of it is committed).
   * Throws when the compile or the store fails (nothing committed).
   */
  private async commitTogether(projectId: string, fns: MutationFn<unknown>[]): Promise<unknown[]> {
    const { store, logger } = this.deps;
    const decide = (stored: ProjectSnapshot | null) => {
      const first = this.context();
      const pre = stored ? [] : createProjectOps(first.now);
      const before = stored ?? applyOps(emptySnapshot(projectId), pre);
      let snap = before;
      const ops: Op[] = [];
      let committed = 0;
      const outcomes = fns.map((fn, i) => {
        try {
          const m = fn(snap, i === 0 ? first : this.context());
          snap = applyOps(snap, m.ops);
          ops.push(...m.ops);
          committed++;
          return m.result;
        } catch (e) {
          return asError(e);
        }
      });
      if (!committed) throw new NothingToCommit(outcomes as Error[]);
      const policies = recompile(snap, touchedBy(before, ops));
      const docs = new Map<string, Omit<StoredPolicy, 'revision'>>();
      for (const o of policies.ops) if (o.op === 'setPolicy') docs.set(o.instanceId, o.parts ? { body: o.body, parts: o.parts } : { body: o.body });
      // the state the store caches: computed here already, so the store does not apply the batch's ops again
      const after = applyOps(snap, policies.ops);
      return { ops: [...pre, ...ops, ...policies.ops], value: { outcomes, compiled: policies.compiled, docs }, after };
    };
    let res;
    try {
      res = await store.mutate(projectId, decide);
    } catch (e) {
      if (e instanceof NothingToCommit) return e.outcomes;
      throw e;
    }
    this.deps.onCompiled?.({ compiled: res.value.compiled, bumped: res.revisions.size });
    if (res.revisions.size) {
      logger.info({ event: 'policy', project: projectId, writes: fns.length, instances: [...res.revisions].map(([id, revision]) => ({ id, revision })) }, 'policy revisions bumped');
      const docs = new Map<string, StoredPolicy>();
      for (const [id, revision] of res.revisions) {
        const doc = res.value.docs.get(id);
        if (doc) docs.set(id, { revision, ...doc });
      }
      this.deps.onPolicyChanged?.(projectId, [...res.revisions.keys()], docs);
    }
    return res.value.outcomes;
  }

  /**
   * A dry run: `fn`'s result on the project's current state, with the states
   * before and after its ops and what they touch (for the change preview).
   * Nothing is written, not even a project seen for the first time.
   */
  async preview<T>(projectId: string, fn: (snap: ProjectSnapshot, ctx: MutationContext) => Mutation<T>): Promise<{ result: T; before: ProjectSnapshot; after: ProjectSnapshot; touched: Touched }> {
    const ctx = this.context();
    const stored = await this.deps.store.loadProject(projectId);
    const before = stored ?? applyOps(emptySnapshot(projectId), createProjectOps(ctx.now));
    const m = fn(before, ctx);
    return { result: m.result, before, after: applyOps(before, m.ops), touched: touchedBy(before, m.ops) };
  }

  /** The instance's policy document exactly as its agent receives it, or null. */
  async policyText(projectId: string, instanceId: string): Promise<{ revision: number; text: string } | null> {
    const p = await this.deps.store.getPolicy(projectId, instanceId);
    return p ? { revision: p.revision, text: renderPolicyText(p.revision, p.body) } : null;
  }
}
