/**
 * In-memory Store: the fake for unit tests (same contract as the SQLite store,
 * nothing survives the process). `dump()` and `MemoryStore.open(dump)` stand
 * for a backup and a restart on it: opening repairs revisions as the SQLite
 * store does on open. `unavailable = true` stands for a database that cannot
 * be reached: every method throws STORE_UNAVAILABLE until it is false again.
 * One MemoryStore shared by several controllers stands for replicas on one
 * database.
 */
import { SecgroupError } from '../../lib/errors.js';
import type { Logger } from '../../lib/logger.js';
import { MAX_REVISION } from '../../protocol/messages.js';
import type { ProjectSnapshot } from '../model.js';
import { committedSnapshot } from './snapshot-cache.js';
import { AuditMarkerNotFound, EMPTY_AGENT_STATE, auditEventMatches, checkRevision, logRevisionRepair, policiesByInstance, planRevisionRepair, type AgentState, type AgentStateBefore, type AuditEvent, type AuditFilter, type AuditPage, type ChangeFn, type MutateResult, type PolicyChange, type Store, type StoredPolicy, type TokenOwner } from './store.js';

interface InstanceExtra {
  body: string | null;
  tokenHash: string | null;
  agent: AgentState;
}

/** Everything a MemoryStore holds but its audit trail (a deep copy). */
export interface MemoryStoreDump {
  counter: number;
  projects: ProjectSnapshot[];
  /** by `${projectId}\u0000${instanceId}` */
  instances: [string, InstanceExtra][];
}

export class MemoryStore implements Store {
  private projects = new Map<string, ProjectSnapshot>();
  private extra = new Map<string, InstanceExtra>();
  private counter = 0;
  private closed = false;
  /** the database cannot be reached: every method throws STORE_UNAVAILABLE */
  unavailable = false;
  /** in append order */
  private audit: AuditEvent[] = [];

  private key(projectId: string, instanceId: string): string {
    return `${projectId}\u0000${instanceId}`;
  }

  private check(): void {
    if (this.closed) throw new Error('store is closed');
    if (this.unavailable) throw new SecgroupError('STORE_UNAVAILABLE', 'the controller database cannot be reached (memory store marked unavailable)', { cause: new Error('ECONNREFUSED') });
  }

  dump(): MemoryStoreDump {
    return structuredClone({ counter: this.counter, projects: [...this.projects.values()], instances: [...this.extra] });
  }

  /** A store holding `dump`, with revisions above MAX_REVISION repaired (logged as `revision_counter_repaired`). */
  static open(dump: MemoryStoreDump, logger?: Logger): MemoryStore {
    const s = new MemoryStore();
    const d = structuredClone(dump);
    s.counter = d.counter;
    s.projects = new Map(d.projects.map((p) => [p.projectId, p]));
    s.extra = new Map(d.instances);
    const revisions = d.projects.flatMap((p) => p.instances.flatMap((i) => (i.revision === null ? [] : [{ projectId: p.projectId, instanceId: i.id, revision: BigInt(i.revision) }])));
    const plan = planRevisionRepair(BigInt(d.counter), revisions);
    if (plan) {
      const to = new Map(plan.renumbered.map((r) => [s.key(r.projectId, r.instanceId), r.to]));
      for (const [id, p] of s.projects) s.projects.set(id, { ...p, instances: p.instances.map((i) => (to.has(s.key(id, i.id)) ? { ...i, revision: to.get(s.key(id, i.id))! } : i)) });
      for (const x of s.extra.values()) if (x.agent.applied_revision !== null && x.agent.applied_revision > MAX_REVISION) x.agent.applied_revision = null;
      s.counter = plan.counter;
      logRevisionRepair(logger, plan);
    }
    return s;
  }

  async loadProject(projectId: string): Promise<ProjectSnapshot | null> {
    this.check();
    return this.projects.get(projectId) ?? null;
  }

  async mutate<T>(projectId: string, change: ChangeFn<T>): Promise<MutateResult<T>> {
    this.check();
    const cur = this.projects.get(projectId) ?? null;
    const { ops, value, after } = change(cur);
    // checked before anything is written: a commit past the bound writes nothing
    checkRevision(this.counter + ops.filter((o) => o.op === 'setPolicy').length);
    const revisions = new Map<string, number>();
    for (const o of ops) {
      if (o.op === 'putInstance' && !this.extra.has(this.key(projectId, o.instance.id))) {
        this.extra.set(this.key(projectId, o.instance.id), { body: null, tokenHash: null, agent: { ...EMPTY_AGENT_STATE } });
      } else if (o.op === 'deleteInstance') {
        this.extra.delete(this.key(projectId, o.id));
      } else if (o.op === 'setToken') {
        const x = this.extra.get(this.key(projectId, o.instanceId));
        if (x) x.tokenHash = o.tokenHash;
      } else if (o.op === 'setPolicy') {
        const x = this.extra.get(this.key(projectId, o.instanceId));
        if (x) x.body = o.body;
        revisions.set(o.instanceId, ++this.counter);
      }
    }
    const next = committedSnapshot(projectId, cur, ops, (cur?.version ?? 0) + 1, revisions, after);
    this.projects.set(projectId, next);
    return { value, version: next.version, revisions };
  }

  async getPolicy(projectId: string, instanceId: string): Promise<StoredPolicy | null> {
    this.check();
    return this.policy(projectId, instanceId);
  }

  private policy(projectId: string, instanceId: string): StoredPolicy | null {
    const inst = this.projects.get(projectId)?.instances.find((i) => i.id === instanceId);
    const body = this.extra.get(this.key(projectId, instanceId))?.body;
    if (!inst || inst.revision === null || !body) return null;
    return { revision: inst.revision, body };
  }

  async getPolicies(projectId: string, instanceIds: readonly string[]): Promise<Map<string, StoredPolicy>> {
    this.check();
    return policiesByInstance(instanceIds, (id) => this.policy(projectId, id));
  }

  async findTokenOwner(tokenHash: string): Promise<TokenOwner | null> {
    this.check();
    for (const [k, x] of this.extra) {
      if (x.tokenHash === tokenHash) {
        const [projectId, instanceId] = k.split('\u0000') as [string, string];
        return { projectId, instanceId, tokenHash };
      }
    }
    return null;
  }

  async getAgentState(projectId: string, instanceId: string): Promise<AgentState | null> {
    this.check();
    const x = this.extra.get(this.key(projectId, instanceId));
    return x ? { ...x.agent } : null;
  }

  async listAgentStates(projectId: string): Promise<Map<string, AgentState>> {
    this.check();
    const out = new Map<string, AgentState>();
    const prefix = this.key(projectId, '');
    for (const [k, x] of this.extra) if (k.startsWith(prefix)) out.set(k.slice(prefix.length), { ...x.agent });
    return out;
  }

  async updateAgentState(projectId: string, instanceId: string, patch: Partial<AgentState>): Promise<AgentStateBefore | null> {
    this.check();
    const x = this.extra.get(this.key(projectId, instanceId));
    if (!x) return null;
    const before = { applied_revision: x.agent.applied_revision };
    x.agent = { ...x.agent, ...patch };
    return before;
  }

  async appendAuditEvent(event: AuditEvent): Promise<void> {
    this.check();
    if (this.audit.some((e) => e.id === event.id)) throw new Error(`audit event ${event.id} already exists`);
    this.audit.push({ ...event, resource_ids: [...event.resource_ids] });
  }

  async listAuditEvents(projectId: string, filter: AuditFilter, page: AuditPage = {}): Promise<AuditEvent[]> {
    this.check();
    const seq = new Map(this.audit.map((e, i) => [e, i]));
    const newestFirst = (a: AuditEvent, b: AuditEvent) => (a.time < b.time ? 1 : a.time > b.time ? -1 : seq.get(b)! - seq.get(a)!);
    let events = this.audit.filter((e) => e.project_id === projectId && auditEventMatches(e, filter));
    if (page.after !== undefined) {
      const marker = this.audit.find((e) => e.id === page.after && e.project_id === projectId);
      if (!marker) throw new AuditMarkerNotFound(page.after);
      events = events.filter((e) => newestFirst(marker, e) < 0);
    }
    return events
      .sort(newestFirst)
      .slice(0, page.limit ?? Infinity)
      .map((e) => ({ ...e, resource_ids: [...e.resource_ids] }));
  }

  async pruneAuditEvents(before: string): Promise<number> {
    this.check();
    const n = this.audit.length;
    this.audit = this.audit.filter((e) => e.time >= before);
    return n - this.audit.length;
  }

  async ping(): Promise<void> {
    this.check();
  }

  async revisionCounter(): Promise<number> {
    this.check();
    return this.counter;
  }

  async policiesChangedSince(after: number, limit: number): Promise<PolicyChange[]> {
    this.check();
    const out: PolicyChange[] = [];
    for (const p of this.projects.values()) {
      for (const i of p.instances) if (i.revision !== null && i.revision > after) out.push({ projectId: p.projectId, instanceId: i.id, revision: i.revision });
    }
    return out.sort((a, b) => a.revision - b.revision).slice(0, limit);
  }

  async close(): Promise<void> {
    this.closed = true;
  }
}
