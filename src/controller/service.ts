/**
 * The write path: load a project snapshot, run a pure mutation, compile the
 * policy documents of the instances it affects (on the state after the
 * change), and commit everything as one transaction; on a concurrent change
 * retry from a fresh snapshot. After a commit, instances whose document
 * changed are reported to `onPolicyChanged` (the agent hub pushes them).
 */
import type { Logger } from '../lib/logger.js';
import type { Clock } from '../lib/clock.js';
import { SecgroupError } from '../lib/errors.js';
import { applyOps, emptySnapshot, type ProjectSnapshot } from './model.js';
import { createProjectOps, type MutationContext, type Mutation, type Quotas } from './domain.js';
import { recompile, renderPolicyText, touchedBy } from './compile.js';
import { hashToken, type Random } from './tokens.js';
import type { Store } from './store/store.js';

/** `yyyy-MM-ddTHH:mm:ssZ`, the timestamp format of Huawei's v3 resources */
export function formatTime(ms: number): string {
  return new Date(ms).toISOString().replace(/\.\d{3}Z$/, 'Z');
}

export interface ServiceDeps {
  store: Store;
  clock: Clock;
  logger: Logger;
  quotas: Quotas;
  random: Random;
  onPolicyChanged?: (projectId: string, instanceIds: string[]) => void;
  onCompiled?: (stats: { compiled: number; bumped: number }) => void;
}

const MAX_ATTEMPTS = 20;

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
   * Runs `fn` against the current snapshot and commits its ops plus the
   * recompiled policies atomically. With `dryRun` nothing is written. Errors
   * thrown by `fn` propagate unchanged (nothing written).
   */
  async mutate<T>(projectId: string, fn: (snap: ProjectSnapshot, ctx: MutationContext) => Mutation<T>, opts: { dryRun?: boolean } = {}): Promise<T> {
    const { store, logger } = this.deps;
    for (let attempt = 1; ; attempt++) {
      const ctx = this.context();
      const stored = await store.loadProject(projectId);
      const pre = stored ? [] : createProjectOps(ctx.now);
      const snap = stored ?? applyOps(emptySnapshot(projectId), pre);
      const m = fn(snap, ctx);
      if (opts.dryRun) return m.result;
      const after = applyOps(snap, m.ops);
      const policies = recompile(after, touchedBy(snap, m.ops));
      const res = await store.commit(projectId, snap.version, [...pre, ...m.ops, ...policies.ops]);
      if (res.ok) {
        this.deps.onCompiled?.({ compiled: policies.compiled, bumped: res.revisions.size });
        if (res.revisions.size) {
          logger.info({ event: 'policy', project: projectId, instances: [...res.revisions.entries()].map(([id, revision]) => ({ id, revision })) }, 'policy revisions bumped');
          this.deps.onPolicyChanged?.(projectId, [...res.revisions.keys()]);
        }
        return m.result;
      }
      if (attempt >= MAX_ATTEMPTS) throw new SecgroupError('CONFLICT', `project ${projectId} changed ${attempt} times while this request was applied; try again`);
      logger.debug({ event: 'retry', project: projectId, attempt }, 'concurrent change, retrying');
    }
  }

  /** The instance's policy document exactly as its agent receives it, or null. */
  async policyText(projectId: string, instanceId: string): Promise<{ revision: number; text: string } | null> {
    const p = await this.deps.store.getPolicy(projectId, instanceId);
    return p ? { revision: p.revision, text: renderPolicyText(p.revision, p.body) } : null;
  }
}
