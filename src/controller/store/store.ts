/**
 * The controller's persistence boundary. Everything the controller keeps goes
 * through this interface, so a server database can replace the embedded
 * SQLite store (`sqlite.ts`) later; `memory.ts` is the in-memory fake.
 *
 * Consistency model: one writer per project at a time. `mutate` hands the
 * project's current state to a synchronous, pure function while holding the
 * project's write lock (SQLite: `BEGIN IMMEDIATE`; a server database: a row
 * lock) and commits the ops it returns in the same transaction. If the
 * function throws, or any op fails, nothing is written. A store may commit
 * several mutations in one transaction (SQLite: group commit, one fsync for
 * those that arrive together), each all-or-nothing under its own savepoint
 * and acknowledged only once the transaction committed; a store may cache
 * snapshots only by version (`snapshot-cache.ts`).
 *
 * Every method that cannot reach its database throws SecgroupError
 * `STORE_UNAVAILABLE` (cause attached): the API answers it with 503, the hub
 * keeps its agents on their last policy (docs/api.md, "Readiness").
 */
import { SecgroupError } from '../../lib/errors.js';
import type { Logger } from '../../lib/logger.js';
import { MAX_REVISION, type PortReport } from '../../protocol/messages.js';
import type { BodyParts, Op, ProjectSnapshot } from '../model.js';

/** One policy document handed out: for catching up on changes made by other replicas. */
export interface PolicyChange { projectId: string; instanceId: string; revision: number }

export interface StoredPolicy {
  revision: number;
  /** the document without `revision` (see `renderPolicyText`) */
  body: string;
  /**
   * Set on documents handed from a commit to the hub and on those read with
   * `getPolicies` (never by `getPolicy`): the body's parts, whose shared
   * strings let the hub recognise equal parts of documents cheaply and
   * encode them once.
   */
  parts?: BodyParts;
}

export interface TokenOwner {
  projectId: string;
  instanceId: string;
  tokenHash: string;
}

export interface AckRecord {
  revision: number;
  status: 'applied' | 'failed' | 'rejected';
  at: string;
  duration_ms: number | null;
  digest: string | null;
  error: { code: string; message: string } | null;
}

export interface AgentErrorRecord {
  revision: number | null;
  code: string;
  message: string;
  at: string;
}

/** What the controller knows about an instance's agent. */
export interface AgentState {
  applied_revision: number | null;
  last_ack: AckRecord | null;
  last_error: AgentErrorRecord | null;
  last_seen: string | null;
  agent_version: string | null;
  hostname: string | null;
  ports: PortReport | null;
  ports_received_at: string | null;
  /** the controller replica the agent is connected to (`HubOptions.replicaId`), null when it left; trust it only with a recent `last_seen` */
  connected_to: string | null;
}

/**
 * What `updateAgentState` found before it wrote its patch (the hub's hello
 * compares it with the revision the agent reports, without a read of its own).
 */
export interface AgentStateBefore {
  applied_revision: number | null;
}

export const EMPTY_AGENT_STATE: AgentState = {
  applied_revision: null,
  last_ack: null,
  last_error: null,
  last_seen: null,
  agent_version: null,
  hostname: null,
  ports: null,
  ports_received_at: null,
  connected_to: null,
};

/**
 * One audit trail entry (docs/api.md, "Audit events"): a write to the API,
 * accepted or refused, or an agent connection event. Never holds a token.
 */
export interface AuditEvent {
  /** unique; also the pagination marker */
  id: string;
  /** ISO 8601 with milliseconds, from the controller's clock */
  time: string;
  /** API token name, `agent:<instance id>`, or `anonymous` */
  actor: string;
  /** null only for events no project can be named for (an agent presenting an unknown token) */
  project_id: string | null;
  operation: string;
  resource_type: string;
  resource_ids: string[];
  /** null for agent events */
  request_id: string | null;
  /** HTTP status (agent events: 101 connected, 200 disconnected, 401 refused) */
  status: number;
  /** the answer's `error_code` (refusals, and `SYS.0202` for dry runs) */
  error_code: string | null;
  source_ip: string | null;
  user_agent: string | null;
  /** short free text (agent events: the close code) */
  detail: string | null;
}

/** A page of an audit event list: events after the one with id `after`, at most `limit` of them. */
export interface AuditPage {
  after?: string;
  limit?: number;
}

/** `listAuditEvents` was given a marker that is not an event of the project. */
export class AuditMarkerNotFound extends Error {
  constructor(readonly marker: string) {
    super(`audit event ${marker} not found`);
    this.name = 'AuditMarkerNotFound';
  }
}

/** Filters of an audit event list; each given one must match (the store contract). */
export interface AuditFilter {
  operation?: readonly string[];
  actor?: readonly string[];
  resource_id?: readonly string[];
  status?: readonly number[];
  result?: 'success' | 'failure';
  /** inclusive, ISO 8601 UTC with milliseconds (as `time`) */
  from?: string;
  /** exclusive */
  to?: string;
  request_id?: readonly string[];
}

/** Does `e` pass `f`? The definition both stores implement (memory: this function; SQLite: the same in SQL). */
export function auditEventMatches(e: AuditEvent, f: AuditFilter): boolean {
  const any = <T>(list: readonly T[] | undefined, test: (v: T) => boolean) => list === undefined || list.some(test);
  return (
    any(f.operation, (v) => v === e.operation) &&
    any(f.actor, (v) => v === e.actor) &&
    any(f.resource_id, (v) => e.resource_ids.includes(v)) &&
    any(f.status, (v) => v === e.status) &&
    any(f.request_id, (v) => v === e.request_id) &&
    (f.result === undefined || (f.result === 'success') === e.status < 400) &&
    (f.from === undefined || e.time >= f.from) &&
    (f.to === undefined || e.time < f.to)
  );
}

export interface MutateResult<T> {
  value: T;
  /** the project's version after the commit */
  version: number;
  /** revisions assigned by `setPolicy` ops, by instance id */
  revisions: Map<string, number>;
}

/**
 * Decides a change from the current state (null: the project was never
 * committed). Synchronous and pure. `after`, when the caller has it: the
 * state its ops make (`applyOps(current, ops)`, version aside), which the
 * store then caches instead of applying the ops a second time.
 */
export type ChangeFn<T> = (current: ProjectSnapshot | null) => { ops: readonly Op[]; value: T; after?: ProjectSnapshot };

export interface Store {
  /** The project's state, or null when it has never been committed. */
  loadProject(projectId: string): Promise<ProjectSnapshot | null>;
  /**
   * Runs `change` on the project's current state under its write lock and
   * commits the returned ops atomically; the project is created by its first
   * commit. Each `setPolicy` gets the next value of one store-wide counter
   * (+1, never moved by any outside value), so revisions per instance only
   * grow (also across restarts and delete/re-create) and stay <= MAX_REVISION.
   * Throws what `change` throws, REVISION_EXHAUSTED past MAX_REVISION, or on
   * storage failure; in every case nothing is written.
   */
  mutate<T>(projectId: string, change: ChangeFn<T>): Promise<MutateResult<T>>;
  /**
   * The instance's current document. Its revision is the highest ever handed
   * out for the instance (revisions only grow), so it bounds every revision
   * an agent may truthfully report for it.
   */
  getPolicy(projectId: string, instanceId: string): Promise<StoredPolicy | null>;
  /**
   * The current documents of several instances of one project, read together
   * (one query where the store has queries), by instance id; an instance
   * without a document (or unknown) is absent. Where the store keeps a
   * document's shared tail apart, the document comes with `parts` whose
   * `shared` is one string for all documents with that tail, so the hub
   * encodes it once for all of them (a change read by another replica).
   */
  getPolicies(projectId: string, instanceIds: readonly string[]): Promise<Map<string, StoredPolicy>>;
  findTokenOwner(tokenHash: string): Promise<TokenOwner | null>;
  /** null when the instance does not exist */
  getAgentState(projectId: string, instanceId: string): Promise<AgentState | null>;
  /** The agent state of every instance of the project, by instance id (one read, for fleet-wide views). */
  listAgentStates(projectId: string): Promise<Map<string, AgentState>>;
  /**
   * Merges `patch` into the instance's agent state; returns what the state
   * held right before this patch (updates of one instance apply in call
   * order), or null when the instance does not exist (nothing written).
   */
  updateAgentState(projectId: string, instanceId: string, patch: Partial<AgentState>): Promise<AgentStateBefore | null>;
  /** Appends an audit event (its id must be new). */
  appendAuditEvent(event: AuditEvent): Promise<void>;
  /**
   * The project's audit events that pass `filter`, newest first (by time,
   * then by the order they were appended); with `page.after`, only those
   * after that event in this order (keyset pagination: the store reads one
   * page, not the whole trail); at most `page.limit` of them. Throws
   * `AuditMarkerNotFound` when `page.after` is not an event of this project.
   */
  listAuditEvents(projectId: string, filter: AuditFilter, page?: AuditPage): Promise<AuditEvent[]>;
  /** Deletes every audit event (of every project) older than `before` (ISO); returns how many. */
  pruneAuditEvents(before: string): Promise<number>;
  /** Throws SecgroupError('STORE_UNAVAILABLE', ...) when the database cannot be reached (readiness). */
  ping(): Promise<void>;
  /** The highest revision handed out so far (the counter), 0 when none. */
  revisionCounter(): Promise<number>;
  /** Current policies with revision > `after`, ascending by revision, at most `limit` (an index makes this cheap). */
  policiesChangedSince(after: number, limit: number): Promise<PolicyChange[]>;
  close(): Promise<void>;
}

/** `getPolicies` for an in-process store: `read` each instance's document, those without one left out. */
export function policiesByInstance(instanceIds: readonly string[], read: (instanceId: string) => StoredPolicy | null): Map<string, StoredPolicy> {
  const out = new Map<string, StoredPolicy>();
  for (const id of instanceIds) {
    const p = read(id);
    if (p) out.set(id, p);
  }
  return out;
}

/** Throws REVISION_EXHAUSTED for a revision past MAX_REVISION (never handed out; the commit is abandoned). */
export function checkRevision(revision: number): number {
  if (revision > MAX_REVISION) {
    throw new SecgroupError('REVISION_EXHAUSTED', `the revision counter reached its bound ${MAX_REVISION}: no more revisions can be handed out (docs/protocol.md, "Revisions")`);
  }
  return revision;
}

/** A stored policy revision, for `planRevisionRepair` (bigint: read exactly, also above 2^53). */
export interface StoredRevision {
  projectId: string;
  instanceId: string;
  revision: bigint;
}

/** What `planRevisionRepair` decided: the new counter and the policies that get new revisions. */
export interface RevisionRepair {
  /** the counter before (decimal text: it may not fit a number exactly) */
  oldCounter: string;
  counter: number;
  renumbered: { projectId: string; instanceId: string; from: string; to: number }[];
}

/**
 * Repairs state left by the revision-poisoning bug (an agent-reported
 * revision once raised the counter): when the counter or any stored revision
 * is above MAX_REVISION, every revision above it is renumbered, in its
 * current order (`revisions` in commit order breaks ties), after the highest
 * revision at or below the bound; the counter continues after them. Revisions
 * at or below the bound are kept, so their agents see no change. Null when
 * nothing is above the bound. Pure.
 */
export function planRevisionRepair(counter: bigint, revisions: readonly StoredRevision[]): RevisionRepair | null {
  const bound = BigInt(MAX_REVISION);
  const over = revisions.filter((r) => r.revision > bound).sort((a, b) => (a.revision < b.revision ? -1 : a.revision > b.revision ? 1 : 0));
  if (counter <= bound && !over.length) return null;
  let next = 0;
  for (const r of revisions) if (r.revision <= bound && Number(r.revision) > next) next = Number(r.revision);
  if (counter <= bound && Number(counter) > next) next = Number(counter);
  const renumbered = over.map((r) => ({ projectId: r.projectId, instanceId: r.instanceId, from: r.revision.toString(), to: ++next }));
  return { oldCounter: counter.toString(), counter: next, renumbered };
}

/** The error-level line a store writes when it repaired a poisoned revision counter on open. */
export function logRevisionRepair(logger: Logger | undefined, plan: RevisionRepair): void {
  logger?.error(
    { event: 'revision_counter_repaired', old_counter: plan.oldCounter, new_counter: plan.counter, renumbered: plan.renumbered.length, instances: plan.renumbered.slice(0, 100) },
    `the revision counter was ${plan.oldCounter}, above the bound ${MAX_REVISION} (state left by an agent-reported revision): ${plan.renumbered.length} policies renumbered, the counter continues at ${plan.counter}; agents converge on their next connection`,
  );
}
