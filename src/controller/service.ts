/**
 * The write path: under the project's write lock, run a pure mutation on its
 * snapshot, compile the policy documents of the instances it affects (on the
 * state after the change), and commit everything as one transaction. After a
 * commit, instances whose document changed are reported to `onPolicyChanged`
 * (the agent hub pushes them).
 */
import type { Logger } from '../lib/logger.js';
import type { Clock } from '../lib/clock.js';
import { SecgroupError } from '../lib/errors.js';
import { formatTime } from '../lib/time.js';
import { applyOps, emptySnapshot, type ProjectSnapshot } from './model.js';
import { createProjectOps, type MutationContext, type Mutation, type Quotas } from './domain.js';
import { recompile, renderPolicyText, touchedBy, type Touched } from './policy-documents.js';
import { hashToken, type Random } from './tokens.js';
import type { Store, StoredPolicy } from './store/store.js';

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
   * so concurrent requests serialise instead of retrying). With `dryRun`
   * nothing is written. Errors thrown by `fn` propagate unchanged (nothing
   * written).
   */
  async mutate<T>(projectId: string, fn: (snap: ProjectSnapshot, ctx: MutationContext) => Mutation<T>, opts: { dryRun?: boolean } = {}): Promise<T> {
    const { store, logger } = this.deps;
    const decide = (stored: ProjectSnapshot | null) => {
      const ctx = this.context();
      const pre = stored ? [] : createProjectOps(ctx.now);
      const snap = stored ?? applyOps(emptySnapshot(projectId), pre);
      const m = fn(snap, ctx);
      const policies = recompile(applyOps(snap, m.ops), touchedBy(snap, m.ops));
      const docs = new Map<string, Omit<StoredPolicy, 'revision'>>();
      for (const o of policies.ops) if (o.op === 'setPolicy') docs.set(o.instanceId, o.parts ? { body: o.body, parts: o.parts } : { body: o.body });
      return { ops: [...pre, ...m.ops, ...policies.ops], value: { result: m.result, compiled: policies.compiled, docs } };
    };
    if (opts.dryRun) return (await this.preview(projectId, fn)).result;
    const res = await store.mutate(projectId, decide);
    this.deps.onCompiled?.({ compiled: res.value.compiled, bumped: res.revisions.size });
    if (res.revisions.size) {
      logger.info({ event: 'policy', project: projectId, instances: [...res.revisions].map(([id, revision]) => ({ id, revision })) }, 'policy revisions bumped');
      const docs = new Map<string, StoredPolicy>();
      for (const [id, revision] of res.revisions) {
        const doc = res.value.docs.get(id);
        if (doc) docs.set(id, { revision, ...doc });
      }
      this.deps.onPolicyChanged?.(projectId, [...res.revisions.keys()], docs);
    }
    return res.value.result;
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
