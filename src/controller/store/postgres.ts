/**
 * The server store: PostgreSQL through `pg` (a Pool), for several controller
 * replicas over one database (docs/ha.md). Same contract as the SQLite store
 * (store.ts); the schema and its migrations are in ./postgres-schema.ts.
 *
 * `mutate` is one transaction in READ COMMITTED, in this order: lock the
 * project (an upsert of its row that bumps `version` takes the row lock, so
 * writers of one project on every replica serialise, and a project's first
 * commit inserts it), read the version the project had, take the snapshot
 * (cached at that version; else the cached one brought forward by the
 * change log, `project_changes`, ./change-log.ts; else loaded), run
 * `change`, apply its ops and append them to the change log. Revisions come from one counter row
 * (`value = value + n RETURNING`): its row lock is held to the commit, so
 * no revision is handed out twice, they commit in the order they were handed
 * out (a catch-up by watermark, `policiesChangedSince`, never skips one that
 * commits later), and per instance they only grow (its project lock orders
 * the commits). A batch of `setPolicy` ops takes its revisions in one step
 * and writes its documents in one statement; the shared tail of documents is
 * kept once per project and hash, as in SQLite.
 *
 * Agent state updates and audit events arriving together are written in one
 * transaction per batch (one statement each), as the SQLite store batches
 * them; each caller's promise resolves after its row is committed.
 *
 * Failure contract: a method that cannot reach the database (refused, reset,
 * server shut down, pool timeout) throws SecgroupError STORE_UNAVAILABLE with
 * the cause attached, and the connection is dropped; the pool opens new ones
 * by itself on the next call. A lost connection during COMMIT also throws
 * STORE_UNAVAILABLE: the outcome is unknown to the caller, as with any
 * database. A statement cancelled by the connection's `statement_timeout` or
 * `lock_timeout` (./postgres-errors.ts) also throws STORE_UNAVAILABLE (log
 * `store_timeout`), rolled back, and its connection goes back to the pool.
 * Other database errors (a constraint) propagate unchanged; in every
 * failing case the transaction is rolled back. Nothing here logs the
 * connection's password (it never appears in a pg error message).
 *
 * Size: one Store implementation over one database, as sqlite.ts: the
 * statements of each transaction (the batched ones: rules, documents, agent
 * states, audit events) and the methods that run them read together.
 */
import pg from 'pg';
import { SecgroupError, isSecgroupError } from '../../lib/errors.js';
import type { Logger } from '../../lib/logger.js';
import type { AddressGroupRow, BodyParts, GroupRow, InstanceRow, Op, ProjectSnapshot, RuleRow } from '../model.js';
import { Batcher } from './batcher.js';
import { isUnreachable, storeError, timedOut } from './postgres-errors.js';
import { migrate } from './postgres-schema.js';
import { readPolicies } from './postgres-policies.js';
import { SnapshotCache } from './snapshot-cache.js';
import { CHANGE_LOG_KEEP, changeEntry, replayChanges, type ChangeEntry } from './change-log.js';
import { AuditMarkerNotFound, EMPTY_AGENT_STATE, checkRevision, type AgentState, type AgentStateBefore, type AuditEvent, type AuditFilter, type AuditPage, type ChangeFn, type MutateResult, type PolicyChange, type Store, type StoredPolicy, type TokenOwner } from './store.js';

export interface PostgresStoreOptions {
  /** postgres://user@host:port/database (a unix socket dir: `?host=/path`) */
  url: string;
  /** given apart from the URL (store.password_file, SECGROUP_STORE_PASSWORD) */
  password?: string;
  /** connections of the pool (default 10) */
  poolSize?: number;
  /** how long to wait for a connection (a new one, or a free one of the pool) before STORE_UNAVAILABLE (ms, default 5000) */
  connectTimeoutMs?: number;
  /** `statement_timeout` / `lock_timeout` of every connection (ms; 0 or absent: the server's): past it a statement fails with STORE_UNAVAILABLE */
  statementTimeoutMs?: number;
  lockTimeoutMs?: number;
  logger?: Logger;
}

/** BIGINT (revisions, versions, seq) as numbers: every value the store writes is below MAX_REVISION (2^48). */
const types = {
  getTypeParser: ((oid: number, format?: string) => (oid === pg.types.builtins.INT8 ? (v: string) => Number(v) : pg.types.getTypeParser(oid, format as 'text'))) as typeof pg.types.getTypeParser,
};

/** The pg connection settings of `opts` (also for the change feed's own client). */
export function postgresClientConfig(opts: PostgresStoreOptions): pg.ClientConfig {
  // pg lets the URL's fields override `password`, even an empty one: the password goes into the URL it connects with
  let connectionString = opts.url;
  if (opts.password !== undefined) {
    const u = new URL(opts.url);
    u.password = encodeURIComponent(opts.password);
    connectionString = u.toString();
  }
  // TCP keepalive: a database that vanished without closing the connection (a partition) is noticed by the kernel
  // statement and lock timeouts go in the startup packet: every connection of the pool (and the feed's) has them
  const timeouts = { ...(opts.statementTimeoutMs ? { statement_timeout: opts.statementTimeoutMs } : {}), ...(opts.lockTimeoutMs ? { lock_timeout: opts.lockTimeoutMs } : {}) };
  return { connectionString, types, connectionTimeoutMillis: opts.connectTimeoutMs ?? 5000, keepAlive: true, ...timeouts };
}

/** Opens a pool and migrates the database (./postgres-schema.ts); throws STORE_UNAVAILABLE or STATE_IO. */
export async function openPostgresStore(opts: PostgresStoreOptions): Promise<PostgresStore> {
  const pool = new pg.Pool({ ...postgresClientConfig(opts), max: opts.poolSize ?? 10 });
  pool.on('error', (e) => opts.logger?.warn({ event: 'store_connection_lost', error: e.message }, 'an idle PostgreSQL connection was lost; the pool opens a new one when needed'));
  // a connection lost while checked out (between the statements of a transaction) emits 'error' on its client, which has
  // no listener then: without this one that is an uncaught exception and the controller process dies with its database
  pool.on('connect', (client) => client.on('error', (e) => opts.logger?.warn({ event: 'store_connection_lost', error: e.message }, 'a PostgreSQL connection in use was lost; its statement fails with STORE_UNAVAILABLE')));
  try {
    const client = await pool.connect();
    try {
      await migrate(client, opts.logger);
    } finally {
      client.release();
    }
  } catch (e) {
    await pool.end().catch(() => undefined);
    const err = storeError(e);
    if (isSecgroupError(err)) throw err;
    throw new SecgroupError('STATE_IO', `cannot open the PostgreSQL store: ${(e as Error).message}`, { cause: e });
  }
  return new PostgresStore(pool, opts.logger);
}

type Row = Record<string, unknown>;
type Query = (sql: string, params?: unknown[]) => Promise<pg.QueryResult<Row>>;

const json = <T>(v: unknown): T => JSON.parse(v as string) as T;

function groupRow(r: Row): GroupRow {
  return { ...(r as unknown as GroupRow), tags: json(r.tags) };
}

function addressGroupRow(r: Row): AddressGroupRow {
  return { ...(r as unknown as AddressGroupRow), ip_set: json(r.ip_set), ip_remarks: json(r.ip_remarks), tags: json(r.tags) };
}

function instanceRow(r: Row): InstanceRow {
  return { ...(r as unknown as InstanceRow), addresses: json(r.addresses), security_groups: json(r.security_groups) };
}

const AUDIT_COLUMNS = ['id', 'time', 'actor', 'project_id', 'operation', 'resource_type', 'resource_ids', 'request_id', 'status', 'error_code', 'source_ip', 'user_agent', 'detail'] as const;

export class PostgresStore implements Store {
  private readonly agentStates = new Batcher<{ projectId: string; instanceId: string; patch: Partial<AgentState> }, AgentStateBefore | null>((items) => this.writeAgentStates(items));
  private readonly audits = new Batcher<AuditEvent, void>((items) => this.writeAuditEvents(items));

  /** snapshots by version (./snapshot-cache.ts): a write or read loads the project only when another replica moved its version */
  private readonly cache = new SnapshotCache();

  constructor(private readonly pool: pg.Pool, private readonly logger?: Logger) {}

  /** `storeError(e)`, logging a statement cancelled by a timeout (`store_timeout`: its connection goes back to the pool). */
  private failure(e: unknown): unknown {
    const timeout = timedOut(e);
    if (timeout) this.logger?.warn({ event: 'store_timeout', timeout, sqlstate: (e as { code: string }).code, error: (e as Error).message }, `a PostgreSQL statement was cancelled by its ${timeout} timeout; the request fails with STORE_UNAVAILABLE`);
    return storeError(e);
  }

  /** One statement on any pooled connection. */
  private async query(sql: string, params: unknown[] = []): Promise<pg.QueryResult<Row>> {
    try {
      return await this.pool.query<Row>(sql, params);
    } catch (e) {
      throw this.failure(e);
    }
  }

  /** `fn` in one transaction on one connection; rolled back when it throws (a connection lost on the way is dropped). */
  private async transaction<T>(fn: (q: Query) => Promise<T>): Promise<T> {
    let client: pg.PoolClient;
    try {
      client = await this.pool.connect();
    } catch (e) {
      throw storeError(e);
    }
    let broken = false;
    try {
      await client.query('BEGIN');
      const value = await fn((sql, params) => client.query<Row>(sql, params));
      await client.query('COMMIT');
      return value;
    } catch (e) {
      broken = isUnreachable(e);
      // a timed-out statement leaves a healthy connection: rolled back, it goes back to the pool
      if (!broken) await client.query('ROLLBACK').catch(() => (broken = true));
      throw this.failure(e);
    } finally {
      client.release(broken);
    }
  }

  private async load(q: Query, projectId: string, version: number): Promise<ProjectSnapshot> {
    const groups = await q('SELECT id, name, description, enterprise_project_id, tags, created_at, updated_at FROM security_groups WHERE project_id = $1 ORDER BY seq', [projectId]);
    const rules = await q(
      `SELECT id, security_group_id, direction, priority, action, ethertype, protocol, multiport, icmp_type, icmp_code,
              remote_ip_prefix, remote_group_id, remote_address_group_id, description, enabled, created_at
         FROM rules WHERE project_id = $1 ORDER BY seq`,
      [projectId],
    );
    const addressGroups = await q(
      `SELECT id, name, description, ip_version, ip_set, ip_remarks, max_capacity, enterprise_project_id, tags, created_at, updated_at
         FROM address_groups WHERE project_id = $1 ORDER BY seq`,
      [projectId],
    );
    const instances = await q('SELECT id, name, addresses, security_groups, revision, policy_hash, created_at, updated_at FROM instances WHERE project_id = $1 ORDER BY seq', [projectId]);
    return {
      projectId,
      version,
      groups: groups.rows.map(groupRow),
      rules: rules.rows as unknown as RuleRow[],
      addressGroups: addressGroups.rows.map(addressGroupRow),
      instances: instances.rows.map(instanceRow),
    };
  }

  /**
   * The cached snapshot brought to `version` by the change log
   * (./change-log.ts), or null when there is none to bring forward, it is
   * too far behind or the log misses a version. Inside `mutate`'s
   * transaction (the project locked), or on its own after `version` was read
   * committed: a version's entry commits with it and every earlier one
   * before it (the row lock orders them), so all of them are visible.
   */
  private async caughtUp(q: Query, projectId: string, version: number): Promise<ProjectSnapshot | null> {
    const base = this.cache.latest(projectId);
    if (!base || base.version >= version) return null;
    if (version - base.version > CHANGE_LOG_KEEP) {
      this.logger?.debug({ event: 'snapshot_reload', project_id: projectId, behind: version - base.version, reason: 'too_far_behind' }, 'the cached snapshot is too far behind the change log: loading the project');
      return null;
    }
    const r = await q('SELECT version, ops, revisions FROM project_changes WHERE project_id = $1 AND version > $2 AND version <= $3 ORDER BY version', [projectId, base.version, version]);
    const snap = replayChanges(base, version, r.rows as unknown as ChangeEntry[]);
    if (snap) this.cache.put(snap);
    this.logger?.debug(
      { event: snap ? 'snapshot_caught_up' : 'snapshot_reload', project_id: projectId, behind: version - base.version, ...(snap ? {} : { reason: 'log_pruned' }) },
      snap ? 'the cached snapshot caught up by the change log' : 'the change log misses versions: loading the project',
    );
    return snap;
  }

  async loadProject(projectId: string): Promise<ProjectSnapshot | null> {
    const head = await this.query('SELECT version FROM projects WHERE id = $1', [projectId]);
    const current = head.rows[0]?.version as number | undefined;
    if (current === undefined) return null;
    const hit = this.cache.get(projectId, current) ?? (await this.caughtUp((sql, params) => this.query(sql, params), projectId, current));
    if (hit) return hit;
    // REPEATABLE READ: the four reads see one commit
    const snap = await this.transaction(async (q) => {
      await q('SET TRANSACTION ISOLATION LEVEL REPEATABLE READ');
      const p = await q('SELECT version FROM projects WHERE id = $1', [projectId]);
      const version = p.rows[0]?.version as number | undefined;
      return version ? this.load(q, projectId, version) : null;
    });
    if (snap) this.cache.put(snap);
    return snap;
  }

  async mutate<T>(projectId: string, change: ChangeFn<T>): Promise<MutateResult<T>> {
    let before: ProjectSnapshot | null = null;
    let applied: readonly Op[] = [];
    let after: ProjectSnapshot | undefined;
    const result = await this.transaction(async (q) => {
      // lock: the upsert holds the project's row lock until the commit (every replica's writers of the project wait here)
      const locked = await q('INSERT INTO projects (id, version) VALUES ($1, 1) ON CONFLICT (id) DO UPDATE SET version = projects.version + 1 RETURNING version', [projectId]);
      const version = locked.rows[0]!.version as number;
      // the version the project had: 0 = never committed; the cached snapshot serves when no other replica wrote since
      const previous = version - 1;
      const cur = previous === 0 ? null : (this.cache.get(projectId, previous) ?? (await this.caughtUp(q, projectId, previous)) ?? (await this.load(q, projectId, previous)));
      const decided = change(cur);
      const revisions = await this.apply(q, projectId, decided.ops);
      // the change log entry (and, every 16th version, the pruning of entries beyond CHANGE_LOG_KEEP) in one statement
      const entry = changeEntry(version, decided.ops, revisions);
      await q(
        `WITH pruned AS (DELETE FROM project_changes WHERE project_id = $1 AND version <= $5)
         INSERT INTO project_changes (project_id, version, ops, revisions) VALUES ($1, $2, $3, $4)`,
        [projectId, version, entry.ops, entry.revisions, version % 16 === 0 ? version - CHANGE_LOG_KEEP : 0],
      );
      before = cur;
      applied = decided.ops;
      after = decided.after;
      const value = decided.value;
      return { value, version, revisions };
    });
    // committed: only now may the cache hold the new state
    this.cache.commit(projectId, before, applied, result.version, result.revisions, after);
    return result;
  }

  /**
   * Writes `ops` in order; a run of consecutive `setPolicy` ops, and one of
   * consecutive `putRule` ops (the service's batch of rule creates), is
   * written by one statement (one round trip while the project is locked).
   */
  private async apply(q: Query, project: string, ops: readonly Op[]): Promise<Map<string, number>> {
    const revisions = new Map<string, number>();
    let policies: Extract<Op, { op: 'setPolicy' }>[] = [];
    let rules: RuleRow[] = [];
    const flush = async () => {
      if (policies.length) await this.setPolicies(q, project, policies, revisions);
      if (rules.length) await this.putRules(q, project, rules);
      policies = [];
      rules = [];
    };
    for (const o of ops) {
      if (o.op === 'setPolicy') {
        if (rules.length) await flush();
        policies.push(o);
      } else if (o.op === 'putRule') {
        if (policies.length) await flush();
        rules.push(o.rule);
      } else {
        await flush();
        await this.applyOne(q, project, o);
      }
    }
    await flush();
    if (ops.some((o) => o.op === 'setPolicy' || o.op === 'deleteInstance')) {
      await q('DELETE FROM policy_tails t WHERE t.project_id = $1 AND NOT EXISTS (SELECT 1 FROM instances i WHERE i.project_id = $1 AND i.policy_tail = t.hash)', [project]);
    }
    return revisions;
  }

  /** Rules in one statement, in their order (a later one with the same id wins, as when written one by one). */
  private async putRules(q: Query, project: string, rules: readonly RuleRow[]): Promise<void> {
    const list = [...new Map(rules.map((r) => [r.id, r])).values()];
    const col = <K extends keyof RuleRow>(k: K) => list.map((r) => r[k]);
    await q(
      `INSERT INTO rules (project_id, id, security_group_id, direction, priority, action, ethertype, protocol, multiport, icmp_type, icmp_code,
                          remote_ip_prefix, remote_group_id, remote_address_group_id, description, enabled, created_at)
       SELECT $1, id, security_group_id, direction, priority, action, ethertype, protocol, multiport, icmp_type, icmp_code,
              remote_ip_prefix, remote_group_id, remote_address_group_id, description, enabled, created_at
         FROM unnest($2::text[], $3::text[], $4::text[], $5::int[], $6::text[], $7::text[], $8::text[], $9::text[], $10::int[], $11::int[],
                     $12::text[], $13::text[], $14::text[], $15::text[], $16::boolean[], $17::text[])
              WITH ORDINALITY AS x(id, security_group_id, direction, priority, action, ethertype, protocol, multiport, icmp_type, icmp_code,
                                   remote_ip_prefix, remote_group_id, remote_address_group_id, description, enabled, created_at, ord)
        ORDER BY ord
       ON CONFLICT (project_id, id) DO UPDATE SET security_group_id = excluded.security_group_id, direction = excluded.direction,
         priority = excluded.priority, action = excluded.action, ethertype = excluded.ethertype, protocol = excluded.protocol,
         multiport = excluded.multiport, icmp_type = excluded.icmp_type, icmp_code = excluded.icmp_code,
         remote_ip_prefix = excluded.remote_ip_prefix, remote_group_id = excluded.remote_group_id,
         remote_address_group_id = excluded.remote_address_group_id, description = excluded.description, enabled = excluded.enabled`,
      [project, col('id'), col('security_group_id'), col('direction'), col('priority'), col('action'), col('ethertype'), col('protocol'), col('multiport'), col('icmp_type'), col('icmp_code'),
        col('remote_ip_prefix'), col('remote_group_id'), col('remote_address_group_id'), col('description'), col('enabled'), col('created_at')],
    );
  }

  private async applyOne(q: Query, project: string, o: Exclude<Op, { op: 'setPolicy' | 'putRule' }>): Promise<void> {
    switch (o.op) {
      case 'putGroup': {
        const g = o.group;
        await q(
          `INSERT INTO security_groups (project_id, id, name, description, enterprise_project_id, tags, created_at, updated_at)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
           ON CONFLICT (project_id, id) DO UPDATE SET name = excluded.name, description = excluded.description,
             enterprise_project_id = excluded.enterprise_project_id, tags = excluded.tags, updated_at = excluded.updated_at`,
          [project, g.id, g.name, g.description, g.enterprise_project_id, JSON.stringify(g.tags), g.created_at, g.updated_at],
        );
        return;
      }
      case 'deleteGroup':
        await q('DELETE FROM rules WHERE project_id = $1 AND security_group_id = $2', [project, o.id]);
        await q('DELETE FROM security_groups WHERE project_id = $1 AND id = $2', [project, o.id]);
        return;
      case 'deleteRule':
        await q('DELETE FROM rules WHERE project_id = $1 AND id = $2', [project, o.id]);
        return;
      case 'putAddressGroup': {
        const a = o.addressGroup;
        await q(
          `INSERT INTO address_groups (project_id, id, name, description, ip_version, ip_set, ip_remarks, max_capacity, enterprise_project_id, tags, created_at, updated_at)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
           ON CONFLICT (project_id, id) DO UPDATE SET name = excluded.name, description = excluded.description, ip_set = excluded.ip_set,
             ip_remarks = excluded.ip_remarks, max_capacity = excluded.max_capacity, enterprise_project_id = excluded.enterprise_project_id,
             tags = excluded.tags, updated_at = excluded.updated_at`,
          [project, a.id, a.name, a.description, a.ip_version, JSON.stringify(a.ip_set), JSON.stringify(a.ip_remarks), a.max_capacity, a.enterprise_project_id, JSON.stringify(a.tags), a.created_at, a.updated_at],
        );
        return;
      }
      case 'deleteAddressGroup':
        await q('DELETE FROM address_groups WHERE project_id = $1 AND id = $2', [project, o.id]);
        return;
      case 'putInstance': {
        const i = o.instance;
        await q(
          `INSERT INTO instances (project_id, id, name, addresses, security_groups, created_at, updated_at)
           VALUES ($1, $2, $3, $4, $5, $6, $7)
           ON CONFLICT (project_id, id) DO UPDATE SET name = excluded.name, addresses = excluded.addresses,
             security_groups = excluded.security_groups, updated_at = excluded.updated_at`,
          [project, i.id, i.name, JSON.stringify(i.addresses), JSON.stringify(i.security_groups), i.created_at, i.updated_at],
        );
        await q('INSERT INTO agent_state (project_id, instance_id, state) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING', [project, i.id, JSON.stringify(EMPTY_AGENT_STATE)]);
        return;
      }
      case 'deleteInstance':
        await q('DELETE FROM instances WHERE project_id = $1 AND id = $2', [project, o.id]);
        return;
      case 'setToken':
        await q('UPDATE instances SET token_sha256 = $1 WHERE project_id = $2 AND id = $3', [o.tokenHash, project, o.instanceId]);
        return;
    }
  }

  /** The next `run.length` revisions in one step (+n and nothing else), then every document in one statement. */
  private async setPolicies(q: Query, project: string, run: Extract<Op, { op: 'setPolicy' }>[], revisions: Map<string, number>): Promise<void> {
    const top = (await q("UPDATE meta SET value = value + $1 WHERE key = 'revision_counter' RETURNING value", [run.length])).rows[0]!.value as number;
    checkRevision(top);
    const first = top - run.length + 1;
    const tails = new Map<string, string>();
    const rows = run.map((o, i) => {
      // the op promises body === instance + shared; a cheap check (not a full comparison) guards against misuse
      const parts: BodyParts | null = o.parts && o.parts.shared.length > 0 && o.parts.instance.length + o.parts.shared.length === o.body.length ? o.parts : null;
      if (parts) tails.set(parts.sharedHash, parts.shared);
      revisions.set(o.instanceId, first + i);
      return { id: o.instanceId, revision: first + i, hash: o.hash, body: parts ? parts.instance : o.body, tail: parts?.sharedHash ?? null };
    });
    if (tails.size) {
      await q('INSERT INTO policy_tails (project_id, hash, text) SELECT $1, h, t FROM unnest($2::text[], $3::text[]) AS x(h, t) ON CONFLICT DO NOTHING', [project, [...tails.keys()], [...tails.values()]]);
    }
    // a later op for the same instance wins, as when the ops are applied one by one
    const last = new Map(rows.map((r) => [r.id, r]));
    const list = [...last.values()];
    await q(
      `UPDATE instances i SET revision = x.revision, policy_hash = x.hash, policy_body = x.body, policy_tail = x.tail
         FROM unnest($2::text[], $3::bigint[], $4::text[], $5::text[], $6::text[]) AS x(id, revision, hash, body, tail)
        WHERE i.project_id = $1 AND i.id = x.id`,
      [project, list.map((r) => r.id), list.map((r) => r.revision), list.map((r) => r.hash), list.map((r) => r.body), list.map((r) => r.tail)],
    );
  }

  async getPolicy(projectId: string, instanceId: string): Promise<StoredPolicy | null> {
    const r = (
      await this.query(
        `SELECT i.revision, i.policy_body, i.policy_tail, t.text AS tail
           FROM instances i LEFT JOIN policy_tails t ON t.project_id = i.project_id AND t.hash = i.policy_tail
          WHERE i.project_id = $1 AND i.id = $2`,
        [projectId, instanceId],
      )
    ).rows[0] as { revision: number | null; policy_body: string | null; policy_tail: string | null; tail: string | null } | undefined;
    if (!r || r.revision === null || r.policy_body === null) return null;
    if (r.policy_tail === null) return { revision: r.revision, body: r.policy_body };
    if (r.tail === null) throw new SecgroupError('STATE_CORRUPT', `the policy of instance ${instanceId} refers to a missing shared part ${r.policy_tail}`);
    return { revision: r.revision, body: r.policy_body + r.tail };
  }

  /** Two queries whatever the number of instances (postgres-policies.ts). */
  getPolicies(projectId: string, instanceIds: readonly string[]): Promise<Map<string, StoredPolicy>> {
    return readPolicies((sql, params) => this.query(sql, params), projectId, instanceIds);
  }

  async findTokenOwner(tokenHash: string): Promise<TokenOwner | null> {
    const r = (await this.query('SELECT project_id, id, token_sha256 FROM instances WHERE token_sha256 = $1', [tokenHash])).rows[0];
    return r ? { projectId: r.project_id as string, instanceId: r.id as string, tokenHash: r.token_sha256 as string } : null;
  }

  async getAgentState(projectId: string, instanceId: string): Promise<AgentState | null> {
    const r = (await this.query('SELECT state FROM agent_state WHERE project_id = $1 AND instance_id = $2', [projectId, instanceId])).rows[0];
    return r ? { ...EMPTY_AGENT_STATE, ...(r.state as Partial<AgentState>) } : null;
  }

  async listAgentStates(projectId: string): Promise<Map<string, AgentState>> {
    const rows = (await this.query('SELECT instance_id, state FROM agent_state WHERE project_id = $1', [projectId])).rows;
    return new Map(rows.map((r) => [r.instance_id as string, { ...EMPTY_AGENT_STATE, ...(r.state as Partial<AgentState>) }]));
  }

  updateAgentState(projectId: string, instanceId: string, patch: Partial<AgentState>): Promise<AgentStateBefore | null> {
    return this.agentStates.add({ projectId, instanceId, patch });
  }

  /**
   * One statement for the batch: patches of one instance merged in their order, then `state || patch` per row.
   * The rows are read locked first (in key order) and their applied revision returned: what each item found is
   * that, after the patches before it in the batch.
   */
  private async writeAgentStates(items: { projectId: string; instanceId: string; patch: Partial<AgentState> }[]): Promise<(AgentStateBefore | null)[]> {
    const key = (p: string, i: string) => JSON.stringify([p, i]);
    const merged = new Map<string, { projectId: string; instanceId: string; patch: Partial<AgentState> }>();
    for (const it of items) {
      const k = key(it.projectId, it.instanceId);
      const m = merged.get(k);
      merged.set(k, m ? { ...m, patch: { ...m.patch, ...it.patch } } : it);
    }
    // in key order: two replicas' batches lock shared rows in the same order
    const list = [...merged.entries()].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)).map(([, v]) => v);
    const found = await this.transaction(async (q) => {
      // `old`: the rows as they were, locked (as the update would lock them) so no other write slips in between
      const r = await q(
        `WITH x AS (SELECT * FROM unnest($1::text[], $2::text[], $3::jsonb[]) AS u(project_id, instance_id, patch)),
              old AS (SELECT a.project_id, a.instance_id, a.state->'applied_revision' AS applied_revision
                        FROM agent_state a JOIN x USING (project_id, instance_id) ORDER BY 1, 2 FOR UPDATE OF a)
         UPDATE agent_state a SET state = a.state || x.patch
           FROM x JOIN old USING (project_id, instance_id)
          WHERE a.project_id = x.project_id AND a.instance_id = x.instance_id
          RETURNING a.project_id, a.instance_id, old.applied_revision`,
        [list.map((l) => l.projectId), list.map((l) => l.instanceId), list.map((l) => JSON.stringify(l.patch))],
      );
      return new Map(r.rows.map((row) => [key(row.project_id as string, row.instance_id as string), (row.applied_revision as number | null) ?? null]));
    });
    return items.map((it) => {
      const k = key(it.projectId, it.instanceId);
      if (!found.has(k)) return null;
      const before = { applied_revision: found.get(k)! };
      if (it.patch.applied_revision !== undefined) found.set(k, it.patch.applied_revision);
      return before;
    });
  }

  appendAuditEvent(event: AuditEvent): Promise<void> {
    return this.audits.add(event);
  }

  /** One INSERT per batch; a duplicate id fails alone (ON CONFLICT DO NOTHING, then not among the rows returned). */
  private async writeAuditEvents(events: AuditEvent[]): Promise<(undefined | Error)[]> {
    const inserted = await this.transaction(async (q) => {
      const ids: string[] = [];
      for (let at = 0; at < events.length; at += 1000) {
        const chunk = events.slice(at, at + 1000);
        const params: unknown[] = [];
        const values = chunk.map((e) => `(${AUDIT_COLUMNS.map((c) => `$${params.push(e[c])}`).join(', ')})`);
        const r = await q(`INSERT INTO audit_events (${AUDIT_COLUMNS.join(', ')}) VALUES ${values.join(', ')} ON CONFLICT (id) DO NOTHING RETURNING id`, params);
        ids.push(...r.rows.map((row) => row.id as string));
      }
      return ids;
    });
    const left = new Map<string, number>();
    for (const id of inserted) left.set(id, (left.get(id) ?? 0) + 1);
    return events.map((e) => {
      const n = left.get(e.id) ?? 0;
      if (!n) return new Error(`audit event ${e.id} already exists`);
      left.set(e.id, n - 1);
      return undefined;
    });
  }

  /** `auditEventMatches` in SQL; a keyset page on (time, seq) through the (project_id, time, seq) index. */
  async listAuditEvents(projectId: string, filter: AuditFilter, page: AuditPage = {}): Promise<AuditEvent[]> {
    await this.audits.idle();
    const params: unknown[] = [projectId];
    const p = (v: unknown) => `$${params.push(v)}`;
    const conds: string[] = ['project_id = $1'];
    const anyOf = (list: readonly unknown[] | undefined, cond: (param: string) => string) => {
      if (list !== undefined) conds.push(`(${list.map((v) => cond(p(v))).join(' OR ') || 'FALSE'})`);
    };
    anyOf(filter.operation, (x) => `operation = ${x}`);
    anyOf(filter.actor, (x) => `actor = ${x}`);
    anyOf(filter.resource_id, (x) => `${x} = ANY(resource_ids)`);
    anyOf(filter.status, (x) => `status = ${x}`);
    anyOf(filter.request_id, (x) => `request_id = ${x}`);
    if (filter.result !== undefined) conds.push(filter.result === 'success' ? 'status < 400' : 'status >= 400');
    if (filter.from !== undefined) conds.push(`time >= ${p(filter.from)}`);
    if (filter.to !== undefined) conds.push(`time < ${p(filter.to)}`);
    if (page.after !== undefined) {
      const marker = (await this.query('SELECT time, seq FROM audit_events WHERE project_id = $1 AND id = $2', [projectId, page.after])).rows[0];
      if (!marker) throw new AuditMarkerNotFound(page.after);
      conds.push(`(time, seq) < (${p(marker.time)}, ${p(marker.seq)})`);
    }
    const r = await this.query(
      `SELECT ${AUDIT_COLUMNS.join(', ')} FROM audit_events WHERE ${conds.join(' AND ')} ORDER BY time DESC, seq DESC LIMIT ${p(page.limit ?? null)}`,
      params,
    );
    return r.rows as unknown as AuditEvent[];
  }

  async pruneAuditEvents(before: string): Promise<number> {
    await this.audits.idle();
    return (await this.query('DELETE FROM audit_events WHERE time < $1', [before])).rowCount ?? 0;
  }

  async ping(): Promise<void> {
    await this.query('SELECT 1');
  }

  async revisionCounter(): Promise<number> {
    return ((await this.query("SELECT value FROM meta WHERE key = 'revision_counter'")).rows[0]?.value as number | undefined) ?? 0;
  }

  async policiesChangedSince(after: number, limit: number): Promise<PolicyChange[]> {
    const r = await this.query('SELECT project_id, id, revision FROM instances WHERE revision > $1 AND policy_body IS NOT NULL ORDER BY revision LIMIT $2', [after, limit]);
    return r.rows.map((row) => ({ projectId: row.project_id as string, instanceId: row.id as string, revision: row.revision as number }));
  }

  private closed = false;

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.agentStates.idle();
    await this.audits.idle();
    await this.pool.end();
  }
}
