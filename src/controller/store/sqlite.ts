/**
 * The embedded store: one SQLite file (Node's built-in node:sqlite through
 * ./sqlite-driver.ts, no native addon; WAL, synchronous=FULL
 * by default so an acknowledged commit survives kill -9 and power loss).
 * Every mutation is committed by one `BEGIN IMMEDIATE` transaction (read, decide, write), which it
 * shares with the mutations that arrived in the same event-loop turn (group commit: one fsync,
 * each mutation under its own savepoint, see `mutate`); schema migrations are
 * versioned in code (`PRAGMA user_version`) and each runs in its own
 * transaction.
 *
 * Snapshots are cached by version (./snapshot-cache.ts): `mutate` and
 * `loadProject` read the project's version (one row) and load the whole
 * project only when the cached snapshot is not at that version, so a write
 * does not cost the size of the project; another process writing the same
 * file bumps the version and is seen.
 *
 * The engine is synchronous: each transaction runs to completion in one
 * call, so calls from one process never interleave inside a transaction
 * (mutations, agent state updates and audit appends are queued and flushed
 * on the next turn, in one transaction per kind). Other processes on the same file wait on
 * the write lock (`busy_timeout`).
 *
 * Size: one Store implementation over one database; its schema migrations,
 * its prepared statements and the methods that run them in transactions
 * read together (a split would put the SQL of one transaction in two files).
 */
import { Database, type Statement } from './sqlite-driver.js';
import { SecgroupError } from '../../lib/errors.js';
import type { Logger } from '../../lib/logger.js';
import { ensurePrivateFile, tightenFile } from '../../lib/private-files.js';
import type { AddressGroupRow, GroupRow, InstanceRow, Op, ProjectSnapshot, RuleRow, Tag } from '../model.js';
import { MAX_REVISION } from '../../protocol/messages.js';
import { SnapshotCache, committedSnapshot } from './snapshot-cache.js';
import { AuditMarkerNotFound, EMPTY_AGENT_STATE, checkRevision, logRevisionRepair, policiesByInstance, planRevisionRepair, type AgentState, type AgentStateBefore, type AuditEvent, type AuditFilter, type AuditPage, type ChangeFn, type MutateResult, type PolicyChange, type Store, type StoredPolicy, type TokenOwner } from './store.js';

type Db = Database;

/** Schema migrations, in order; never edit a released one, append a new one. */
export const MIGRATIONS: readonly ((db: Db) => void)[] = [
  (db) => {
    db.exec(`
      CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) STRICT;
      INSERT INTO meta (key, value) VALUES ('revision_counter', 0);
      CREATE TABLE projects (
        id TEXT PRIMARY KEY,
        version INTEGER NOT NULL
      ) STRICT;
      CREATE TABLE security_groups (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        project_id TEXT NOT NULL REFERENCES projects(id),
        id TEXT NOT NULL,
        name TEXT NOT NULL,
        description TEXT NOT NULL,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        UNIQUE (project_id, id)
      ) STRICT;
      CREATE TABLE rules (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        project_id TEXT NOT NULL,
        id TEXT NOT NULL,
        security_group_id TEXT NOT NULL,
        direction TEXT NOT NULL,
        priority INTEGER NOT NULL,
        action TEXT NOT NULL,
        ethertype TEXT NOT NULL,
        protocol TEXT,
        multiport TEXT,
        icmp_type INTEGER,
        icmp_code INTEGER,
        remote_ip_prefix TEXT,
        remote_group_id TEXT,
        remote_address_group_id TEXT,
        description TEXT NOT NULL,
        created_at TEXT NOT NULL,
        UNIQUE (project_id, id),
        FOREIGN KEY (project_id, security_group_id) REFERENCES security_groups (project_id, id)
      ) STRICT;
      CREATE INDEX rules_by_group ON rules (project_id, security_group_id);
      CREATE TABLE address_groups (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        project_id TEXT NOT NULL REFERENCES projects(id),
        id TEXT NOT NULL,
        name TEXT NOT NULL,
        description TEXT NOT NULL,
        ip_version INTEGER NOT NULL,
        ip_set TEXT NOT NULL,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        UNIQUE (project_id, id)
      ) STRICT;
      CREATE TABLE instances (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        project_id TEXT NOT NULL REFERENCES projects(id),
        id TEXT NOT NULL,
        name TEXT NOT NULL,
        addresses TEXT NOT NULL,
        security_groups TEXT NOT NULL,
        token_sha256 TEXT UNIQUE,
        revision INTEGER,
        policy_hash TEXT,
        policy_body TEXT,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        UNIQUE (project_id, id)
      ) STRICT;
      CREATE TABLE agent_state (
        project_id TEXT NOT NULL,
        instance_id TEXT NOT NULL,
        state TEXT NOT NULL,
        PRIMARY KEY (project_id, instance_id),
        FOREIGN KEY (project_id, instance_id) REFERENCES instances (project_id, id) ON DELETE CASCADE
      ) STRICT;
    `);
  },
  // 2: the shared part of policy documents (everything after the instance: groups, address groups, members) is kept once
  // per project and text, not once per instance; policy_body is then only the instance's own beginning.
  (db) => {
    db.exec(`
      CREATE TABLE policy_tails (
        project_id TEXT NOT NULL,
        hash TEXT NOT NULL,
        text TEXT NOT NULL,
        PRIMARY KEY (project_id, hash)
      ) STRICT;
      ALTER TABLE instances ADD COLUMN policy_tail TEXT;
    `);
  },
  // 3: the audit trail (src/controller/audit.ts). Not tied to the projects table by a foreign key: events of refused
  // requests name projects that may not exist, and events outlive deleted resources until pruned by time.
  (db) => {
    db.exec(`
      CREATE TABLE audit_events (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        time TEXT NOT NULL,
        actor TEXT NOT NULL,
        project_id TEXT,
        operation TEXT NOT NULL,
        resource_type TEXT NOT NULL,
        resource_ids TEXT NOT NULL,
        request_id TEXT,
        status INTEGER NOT NULL,
        error_code TEXT,
        source_ip TEXT,
        user_agent TEXT,
        detail TEXT
      ) STRICT;
      CREATE INDEX audit_by_project_time ON audit_events (project_id, time);
      CREATE INDEX audit_by_time ON audit_events (time);
    `);
  },
  // 4: complete Huawei v3 shapes (issue 14): rules' `enabled`; groups' and address groups' `enterprise_project_id` and
  // `tags` (JSON); address groups' `max_capacity` and entry remarks (`ip_extra_set`, JSON object by canonical entry).
  (db) => {
    db.exec(`
      ALTER TABLE rules ADD COLUMN enabled INTEGER NOT NULL DEFAULT 1;
      ALTER TABLE security_groups ADD COLUMN enterprise_project_id TEXT NOT NULL DEFAULT '0';
      ALTER TABLE security_groups ADD COLUMN tags TEXT NOT NULL DEFAULT '[]';
      ALTER TABLE address_groups ADD COLUMN enterprise_project_id TEXT NOT NULL DEFAULT '0';
      ALTER TABLE address_groups ADD COLUMN tags TEXT NOT NULL DEFAULT '[]';
      ALTER TABLE address_groups ADD COLUMN max_capacity INTEGER NOT NULL DEFAULT 20;
      ALTER TABLE address_groups ADD COLUMN ip_remarks TEXT NOT NULL DEFAULT '{}';
    `);
  },
  // 5: whether a shared document part is still used is one index lookup per replaced part, not a scan of the
  // project's instances on every commit (issue 16: writes must not cost the size of the project)
  (db) => {
    db.exec('CREATE INDEX instances_by_tail ON instances (project_id, policy_tail)');
  },
  // 6: replicas catch up on policies changed by others by revision (Store.policiesChangedSince)
  (db) => {
    db.exec('CREATE INDEX instances_by_revision ON instances (revision)');
  },
];

export interface SqliteStoreOptions {
  /** `FULL` (default) survives power loss; `NORMAL` survives process crashes only */
  synchronous?: 'FULL' | 'NORMAL';
  /** how long a writer waits for another process's write lock (ms) */
  busyTimeoutMs?: number;
  /** where a warning goes when an existing database file was readable by others and is tightened to 0600 */
  logger?: Logger;
}

interface RuleDbRow extends Omit<RuleRow, 'direction' | 'action' | 'ethertype' | 'enabled'> {
  direction: string;
  action: string;
  ethertype: string;
  enabled: number;
}
type GroupDbRow = Omit<GroupRow, 'tags'> & { tags: string };
type AddressGroupDbRow = Omit<AddressGroupRow, 'ip_set' | 'ip_version' | 'tags' | 'ip_remarks'> & { ip_set: string; ip_version: number; tags: string; ip_remarks: string };

type AuditDbRow = Omit<AuditEvent, 'resource_ids'> & { resource_ids: string };

/** Opens (creating it with mode 0600 if needed) and migrates the database; throws SecgroupError STATE_IO. */
export function openSqliteStore(file: string, opts: SqliteStoreOptions = {}): SqliteStore {
  let db: Db;
  try {
    if (file !== ':memory:') {
      // created 0600 before SQLite opens it; SQLite gives the -wal and -shm files the database file's mode
      ensurePrivateFile(file, opts.logger);
      for (const side of [`${file}-wal`, `${file}-shm`, `${file}-journal`]) tightenFile(side, opts.logger);
    }
    db = new Database(file);
    // first: the pragmas after it may need a lock another process holds (switching to WAL does), and without a
    // busy timeout SQLite answers "database is locked" at once (a writer process failed to open so, CI 2026-12-06)
    db.pragma(`busy_timeout = ${opts.busyTimeoutMs ?? 30_000}`);
    db.pragma('journal_mode = WAL');
    db.pragma(`synchronous = ${opts.synchronous ?? 'FULL'}`);
    db.pragma('foreign_keys = ON');
    migrate(db);
    repairRevisions(db, opts.logger);
  } catch (e) {
    throw new SecgroupError('STATE_IO', `cannot open the controller database ${file}: ${(e as Error).message}`, { cause: e });
  }
  return new SqliteStore(db);
}

/** A stored agent state (JSON) with the fields added since it was written filled in. */
function agentState(text: string): AgentState {
  return { ...EMPTY_AGENT_STATE, ...(JSON.parse(text) as Partial<AgentState>) };
}

function migrate(db: Db): void {
  const current = db.pragma('user_version', { simple: true }) as number;
  if (current > MIGRATIONS.length) {
    throw new Error(`database schema version ${current} is newer than this program (${MIGRATIONS.length}); refusing to open it`);
  }
  for (let v = current; v < MIGRATIONS.length; v++) {
    db.transaction(() => {
      MIGRATIONS[v]!(db);
      db.pragma(`user_version = ${v + 1}`);
    }).immediate();
  }
}

/**
 * State left by the revision-poisoning bug (a counter or stored revisions
 * above MAX_REVISION) is renumbered as `planRevisionRepair` decides, in one
 * transaction, and logged at error level. Read with safe integers: values
 * past 2^53 would otherwise be rounded.
 */
function repairRevisions(db: Db, logger: Logger | undefined): void {
  const counterOf = () => db.prepare<[], { value: bigint }>("SELECT value FROM meta WHERE key = 'revision_counter'").safeIntegers(true).get()?.value ?? 0n;
  const poisoned = (counter: bigint) =>
    counter > BigInt(MAX_REVISION) || db.prepare<[number], { n: number }>('SELECT count(*) AS n FROM instances WHERE revision > ?').get(MAX_REVISION)!.n > 0;
  // the usual case, nothing to repair, is decided by reads alone: no write lock at start-up
  if (!poisoned(counterOf())) return;
  db.transaction(() => {
    const counter = counterOf();
    if (!poisoned(counter)) return;
    const rows = db
      .prepare<[], { project_id: string; id: string; revision: bigint }>('SELECT project_id, id, revision FROM instances WHERE revision IS NOT NULL ORDER BY revision, seq')
      .safeIntegers(true)
      .all();
    const plan = planRevisionRepair(counter, rows.map((r) => ({ projectId: r.project_id, instanceId: r.id, revision: r.revision })));
    if (!plan) return;
    const setRevision = db.prepare('UPDATE instances SET revision = ? WHERE project_id = ? AND id = ?');
    for (const r of plan.renumbered) setRevision.run(r.to, r.projectId, r.instanceId);
    // the renumbered projects' snapshots changed: another process's snapshot cache must not reuse them
    const bump = db.prepare('UPDATE projects SET version = version + 1 WHERE id = ?');
    for (const p of new Set(plan.renumbered.map((r) => r.projectId))) bump.run(p);
    db.prepare("UPDATE meta SET value = ? WHERE key = 'revision_counter'").run(plan.counter);
    // an applied revision above the bound was never handed out by this store as it is now: unknown until the agent acks again
    db.prepare("UPDATE agent_state SET state = json_set(state, '$.applied_revision', json('null')) WHERE json_extract(state, '$.applied_revision') > ?").run(MAX_REVISION);
    logRevisionRepair(logger, plan);
  }).immediate();
}

export class SqliteStore implements Store {
  private readonly stmt;
  private readonly snapshots = new SnapshotCache();

  constructor(private readonly db: Db) {
    this.stmt = {
      projectVersion: db.prepare<[string], { version: number }>('SELECT version FROM projects WHERE id = ?'),
      insertProject: db.prepare('INSERT INTO projects (id, version) VALUES (?, 1)'),
      bumpProject: db.prepare('UPDATE projects SET version = version + 1 WHERE id = ?'),
      groups: db.prepare<[string], GroupDbRow>(
        'SELECT id, name, description, enterprise_project_id, tags, created_at, updated_at FROM security_groups WHERE project_id = ? ORDER BY seq',
      ),
      rules: db.prepare<[string], RuleDbRow>(
        `SELECT id, security_group_id, direction, priority, action, ethertype, protocol, multiport, icmp_type, icmp_code,
                remote_ip_prefix, remote_group_id, remote_address_group_id, description, enabled, created_at
           FROM rules WHERE project_id = ? ORDER BY seq`,
      ),
      addressGroups: db.prepare<[string], AddressGroupDbRow>(
        `SELECT id, name, description, ip_version, ip_set, ip_remarks, max_capacity, enterprise_project_id, tags, created_at, updated_at
           FROM address_groups WHERE project_id = ? ORDER BY seq`,
      ),
      instances: db.prepare<[string], Omit<InstanceRow, 'addresses' | 'security_groups'> & { addresses: string; security_groups: string }>(
        'SELECT id, name, addresses, security_groups, revision, policy_hash, created_at, updated_at FROM instances WHERE project_id = ? ORDER BY seq',
      ),
      putGroup: db.prepare(
        `INSERT INTO security_groups (project_id, id, name, description, enterprise_project_id, tags, created_at, updated_at)
         VALUES (@project_id, @id, @name, @description, @enterprise_project_id, @tags, @created_at, @updated_at)
         ON CONFLICT (project_id, id) DO UPDATE SET name = excluded.name, description = excluded.description,
           enterprise_project_id = excluded.enterprise_project_id, tags = excluded.tags, updated_at = excluded.updated_at`,
      ),
      deleteGroupRules: db.prepare('DELETE FROM rules WHERE project_id = ? AND security_group_id = ?'),
      deleteGroup: db.prepare('DELETE FROM security_groups WHERE project_id = ? AND id = ?'),
      putRule: db.prepare(
        `INSERT INTO rules (project_id, id, security_group_id, direction, priority, action, ethertype, protocol, multiport, icmp_type, icmp_code,
                            remote_ip_prefix, remote_group_id, remote_address_group_id, description, enabled, created_at)
         VALUES (@project_id, @id, @security_group_id, @direction, @priority, @action, @ethertype, @protocol, @multiport, @icmp_type, @icmp_code,
                 @remote_ip_prefix, @remote_group_id, @remote_address_group_id, @description, @enabled, @created_at)
         ON CONFLICT (project_id, id) DO UPDATE SET security_group_id = excluded.security_group_id, direction = excluded.direction,
           priority = excluded.priority, action = excluded.action, ethertype = excluded.ethertype, protocol = excluded.protocol,
           multiport = excluded.multiport, icmp_type = excluded.icmp_type, icmp_code = excluded.icmp_code,
           remote_ip_prefix = excluded.remote_ip_prefix, remote_group_id = excluded.remote_group_id,
           remote_address_group_id = excluded.remote_address_group_id, description = excluded.description, enabled = excluded.enabled`,
      ),
      deleteRule: db.prepare('DELETE FROM rules WHERE project_id = ? AND id = ?'),
      putAddressGroup: db.prepare(
        `INSERT INTO address_groups (project_id, id, name, description, ip_version, ip_set, ip_remarks, max_capacity, enterprise_project_id, tags, created_at, updated_at)
         VALUES (@project_id, @id, @name, @description, @ip_version, @ip_set, @ip_remarks, @max_capacity, @enterprise_project_id, @tags, @created_at, @updated_at)
         ON CONFLICT (project_id, id) DO UPDATE SET name = excluded.name, description = excluded.description, ip_set = excluded.ip_set,
           ip_remarks = excluded.ip_remarks, max_capacity = excluded.max_capacity, enterprise_project_id = excluded.enterprise_project_id,
           tags = excluded.tags, updated_at = excluded.updated_at`,
      ),
      deleteAddressGroup: db.prepare('DELETE FROM address_groups WHERE project_id = ? AND id = ?'),
      putInstance: db.prepare(
        `INSERT INTO instances (project_id, id, name, addresses, security_groups, created_at, updated_at)
         VALUES (@project_id, @id, @name, @addresses, @security_groups, @created_at, @updated_at)
         ON CONFLICT (project_id, id) DO UPDATE SET name = excluded.name, addresses = excluded.addresses,
           security_groups = excluded.security_groups, updated_at = excluded.updated_at`,
      ),
      insertAgentState: db.prepare('INSERT OR IGNORE INTO agent_state (project_id, instance_id, state) VALUES (?, ?, ?)'),
      deleteInstance: db.prepare('DELETE FROM instances WHERE project_id = ? AND id = ?'),
      setToken: db.prepare('UPDATE instances SET token_sha256 = ? WHERE project_id = ? AND id = ?'),
      // +1 and nothing else: no outside value ever moves the counter (docs/protocol.md, "Revisions")
      nextRevision: db.prepare<[], { value: number }>("UPDATE meta SET value = value + 1 WHERE key = 'revision_counter' RETURNING value"),
      setPolicy: db.prepare('UPDATE instances SET revision = ?, policy_hash = ?, policy_body = ?, policy_tail = ? WHERE project_id = ? AND id = ?'),
      putTail: db.prepare('INSERT OR IGNORE INTO policy_tails (project_id, hash, text) VALUES (?, ?, ?)'),
      tailOf: db.prepare<[string, string], { policy_tail: string | null }>('SELECT policy_tail FROM instances WHERE project_id = ? AND id = ?'),
      dropTailIfUnused: db.prepare(
        'DELETE FROM policy_tails WHERE project_id = @p AND hash = @h AND NOT EXISTS (SELECT 1 FROM instances WHERE project_id = @p AND policy_tail = @h)',
      ),
      getPolicy: db.prepare<[string, string], { revision: number | null; policy_body: string | null; policy_tail: string | null; tail: string | null }>(
        `SELECT i.revision, i.policy_body, i.policy_tail, t.text AS tail
           FROM instances i LEFT JOIN policy_tails t ON t.project_id = i.project_id AND t.hash = i.policy_tail
          WHERE i.project_id = ? AND i.id = ?`,
      ),
      tokenOwner: db.prepare<[string], { project_id: string; id: string; token_sha256: string }>(
        'SELECT project_id, id, token_sha256 FROM instances WHERE token_sha256 = ?',
      ),
      getAgentState: db.prepare<[string, string], { state: string }>('SELECT state FROM agent_state WHERE project_id = ? AND instance_id = ?'),
      listAgentStates: db.prepare<[string], { instance_id: string; state: string }>('SELECT instance_id, state FROM agent_state WHERE project_id = ?'),
      setAgentState: db.prepare('UPDATE agent_state SET state = ? WHERE project_id = ? AND instance_id = ?'),
      appendAudit: db.prepare(
        `INSERT INTO audit_events (id, time, actor, project_id, operation, resource_type, resource_ids, request_id, status, error_code, source_ip, user_agent, detail)
         VALUES (@id, @time, @actor, @project_id, @operation, @resource_type, @resource_ids, @request_id, @status, @error_code, @source_ip, @user_agent, @detail)`,
      ),
      pruneAudit: db.prepare('DELETE FROM audit_events WHERE time < ?'),
      revisionCounter: db.prepare<[], { value: number }>("SELECT value FROM meta WHERE key = 'revision_counter'"),
      changedSince: db.prepare<[number, number], { project_id: string; id: string; revision: number }>(
        'SELECT project_id, id, revision FROM instances WHERE revision > ? AND policy_body IS NOT NULL ORDER BY revision LIMIT ?',
      ),
      auditMarker: db.prepare<[string, string], { time: string; seq: number }>('SELECT time, seq FROM audit_events WHERE project_id = ? AND id = ?'),
    };
  }

  private load(projectId: string): ProjectSnapshot | null {
    const p = this.stmt.projectVersion.get(projectId);
    if (!p) return null;
    return {
      projectId,
      version: p.version,
      groups: this.stmt.groups.all(projectId).map((g) => ({ ...g, tags: JSON.parse(g.tags) as Tag[] })),
      rules: this.stmt.rules.all(projectId).map((r) => ({ ...r, enabled: r.enabled !== 0 }) as RuleRow),
      addressGroups: this.stmt.addressGroups.all(projectId).map((a) => ({
        ...a,
        ip_version: a.ip_version as 4 | 6,
        ip_set: JSON.parse(a.ip_set) as string[],
        ip_remarks: JSON.parse(a.ip_remarks) as Record<string, string>,
        tags: JSON.parse(a.tags) as Tag[],
      })),
      instances: this.stmt.instances.all(projectId).map((i) => ({
        ...i,
        addresses: JSON.parse(i.addresses) as string[],
        security_groups: JSON.parse(i.security_groups) as string[],
      })),
    };
  }

  /** The committed snapshot (in a transaction): the cached one when its version is current. */
  private current(projectId: string): ProjectSnapshot | null {
    return this.snapshots.at(projectId, this.stmt.projectVersion.get(projectId)?.version ?? null, () => this.load(projectId));
  }

  async loadProject(projectId: string): Promise<ProjectSnapshot | null> {
    return this.db.transaction(() => this.current(projectId)).deferred();
  }

  /**
   * Group commit: mutations arriving together (in one turn of the event
   * loop) are committed by one `BEGIN IMMEDIATE ... COMMIT`, so by one fsync
   * (with synchronous=FULL an fsync per commit bounded writes to ~200/s on a
   * disk with 5 ms fsyncs, whatever the CPU did). Each mutation runs under
   * its own savepoint, on the state its predecessors in the batch left: one
   * that throws is undone alone and rejects alone; each caller's promise
   * settles only after the COMMIT, and when the COMMIT fails every caller
   * of the batch gets its error and nothing is written. A mutation is never
   * split over transactions, and no reader sees part of one.
   */
  mutate<T>(projectId: string, change: ChangeFn<T>): Promise<MutateResult<T>> {
    return new Promise<MutateResult<T>>((resolve, reject) => {
      this.pendingMutations.push({ projectId, change, resolve: resolve as (r: MutateResult<unknown>) => void, reject });
      if (this.pendingMutations.length === 1) setImmediate(() => this.flushMutations());
    });
  }

  private pendingMutations: { projectId: string; change: ChangeFn<unknown>; resolve: (r: MutateResult<unknown>) => void; reject: (e: unknown) => void }[] = [];

  private flushMutations(): void {
    const batch = this.pendingMutations;
    this.pendingMutations = [];
    if (!batch.length) return;
    // the state each project is in after the batch's mutations so far (committed with it, or not at all)
    const working = new Map<string, ProjectSnapshot | null>();
    let outcomes: ({ ok: true; value: MutateResult<unknown> } | { ok: false; error: unknown })[];
    try {
      if (!this.db.open) throw new SecgroupError('STATE_IO', 'the controller database is closed');
      // IMMEDIATE takes the write lock before reading, so the state a change sees is the state its ops apply to.
      outcomes = this.db.transaction(() => batch.map(({ projectId, change }) => this.db.savepoint(() => this.mutateOne(projectId, change, working)))).immediate();
    } catch (e) {
      for (const b of batch) b.reject(e);
      return;
    }
    // committed: only now does the cache hold the new states
    for (const snap of working.values()) if (snap) this.snapshots.put(snap);
    batch.forEach((b, i) => {
      const o = outcomes[i]!;
      if (o.ok) b.resolve(o.value);
      else b.reject(o.error);
    });
  }

  /** One mutation inside the batch's transaction; `working` is advanced only when it succeeds. */
  private mutateOne<T>(projectId: string, change: ChangeFn<T>, working: Map<string, ProjectSnapshot | null>): MutateResult<T> {
    const version = this.stmt.projectVersion.get(projectId)?.version ?? null;
    let cur = working.get(projectId);
    if (cur === undefined) {
      // not written by this batch yet: what is read is committed, so the cache may keep it
      cur = this.current(projectId);
      working.set(projectId, cur);
    } else if ((cur?.version ?? null) !== version) throw new SecgroupError('INTERNAL', `project ${projectId} changed inside a transaction`);
    const { ops, value, after } = change(cur);
    if (!cur) this.stmt.insertProject.run(projectId);
    else this.stmt.bumpProject.run(projectId);
    const revisions = new Map<string, number>();
    const tails = new Set<string>();
    const replaced = new Set<string>();
    for (const o of ops) this.apply(projectId, o, revisions, tails, replaced);
    // shared parts that documents stopped using (only those replaced here can have become unused)
    for (const h of replaced) this.stmt.dropTailIfUnused.run({ p: projectId, h });
    const next = (cur?.version ?? 0) + 1;
    // after the last write: a savepoint that failed leaves `working` as it was
    working.set(projectId, committedSnapshot(projectId, cur, ops, next, revisions, after));
    return { value, version: next, revisions };
  }

  /** `tails`: shared document parts already written by this transaction; `replaced`: gets the parts documents stopped referring to */
  private apply(project_id: string, o: Op, revisions: Map<string, number>, tails: Set<string>, replaced: Set<string>): void {
    if (o.op === 'setPolicy' || o.op === 'deleteInstance') {
      const old = this.stmt.tailOf.get(project_id, o.op === 'setPolicy' ? o.instanceId : o.id)?.policy_tail;
      if (old) replaced.add(old);
    }
    switch (o.op) {
      case 'putGroup':
        this.stmt.putGroup.run({ project_id, ...o.group, tags: JSON.stringify(o.group.tags) });
        break;
      case 'deleteGroup':
        this.stmt.deleteGroupRules.run(project_id, o.id);
        this.stmt.deleteGroup.run(project_id, o.id);
        break;
      case 'putRule':
        this.stmt.putRule.run({ project_id, ...o.rule, enabled: o.rule.enabled ? 1 : 0 });
        break;
      case 'deleteRule':
        this.stmt.deleteRule.run(project_id, o.id);
        break;
      case 'putAddressGroup':
        this.stmt.putAddressGroup.run({
          project_id,
          ...o.addressGroup,
          ip_set: JSON.stringify(o.addressGroup.ip_set),
          ip_remarks: JSON.stringify(o.addressGroup.ip_remarks),
          tags: JSON.stringify(o.addressGroup.tags),
        });
        break;
      case 'deleteAddressGroup':
        this.stmt.deleteAddressGroup.run(project_id, o.id);
        break;
      case 'putInstance':
        this.stmt.putInstance.run({
          project_id,
          ...o.instance,
          addresses: JSON.stringify(o.instance.addresses),
          security_groups: JSON.stringify(o.instance.security_groups),
        });
        this.stmt.insertAgentState.run(project_id, o.instance.id, JSON.stringify(EMPTY_AGENT_STATE));
        break;
      case 'deleteInstance':
        this.stmt.deleteInstance.run(project_id, o.id);
        break;
      case 'setToken':
        this.stmt.setToken.run(o.tokenHash, project_id, o.instanceId);
        break;
      case 'setPolicy': {
        const revision = checkRevision(this.stmt.nextRevision.get()!.value);
        // the op promises body === instance + shared; a cheap check (not a full comparison) guards against misuse
        const parts = o.parts && o.parts.shared.length > 0 && o.parts.instance.length + o.parts.shared.length === o.body.length ? o.parts : null;
        if (parts && !tails.has(parts.sharedHash)) {
          this.stmt.putTail.run(project_id, parts.sharedHash, parts.shared);
          tails.add(parts.sharedHash);
        }
        this.stmt.setPolicy.run(revision, o.hash, parts ? parts.instance : o.body, parts?.sharedHash ?? null, project_id, o.instanceId);
        revisions.set(o.instanceId, revision);
        break;
      }
    }
  }

  /** The stored document (its own beginning plus the shared tail, if any). */
  private policy(projectId: string, instanceId: string): StoredPolicy | null {
    const r = this.stmt.getPolicy.get(projectId, instanceId);
    if (!r || r.revision === null || r.policy_body === null) return null;
    if (r.policy_tail === null) return { revision: r.revision, body: r.policy_body };
    if (r.tail === null) throw new SecgroupError('STATE_CORRUPT', `the policy of instance ${instanceId} refers to a missing shared part ${r.policy_tail}`);
    return { revision: r.revision, body: r.policy_body + r.tail };
  }

  async getPolicy(projectId: string, instanceId: string): Promise<StoredPolicy | null> {
    return this.policy(projectId, instanceId);
  }

  /** One read per instance (in-process, no round trips). */
  async getPolicies(projectId: string, instanceIds: readonly string[]): Promise<Map<string, StoredPolicy>> {
    return policiesByInstance(instanceIds, (id) => this.policy(projectId, id));
  }

  async findTokenOwner(tokenHash: string): Promise<TokenOwner | null> {
    const r = this.stmt.tokenOwner.get(tokenHash);
    return r ? { projectId: r.project_id, instanceId: r.id, tokenHash: r.token_sha256 } : null;
  }

  async getAgentState(projectId: string, instanceId: string): Promise<AgentState | null> {
    const r = this.stmt.getAgentState.get(projectId, instanceId);
    return r ? agentState(r.state) : null;
  }

  async listAgentStates(projectId: string): Promise<Map<string, AgentState>> {
    return new Map(this.stmt.listAgentStates.all(projectId).map((r) => [r.instance_id, agentState(r.state)]));
  }

  /**
   * Agent state updates (acks, port reports, last seen) arriving together are
   * written in one transaction: with synchronous=FULL each commit is an
   * fsync, and one per ack serialised a change's acks behind N fsyncs (1000
   * agents: seconds per change). The batch is flushed once the event loop has
   * handled the I/O already received (setImmediate), so an idle controller
   * writes at once and a busy one groups; each caller's promise resolves
   * after its update is committed, and in-order per caller.
   */
  updateAgentState(projectId: string, instanceId: string, patch: Partial<AgentState>): Promise<AgentStateBefore | null> {
    return new Promise<AgentStateBefore | null>((resolve, reject) => {
      this.pendingAgentState.push({ projectId, instanceId, patch, resolve, reject });
      if (this.pendingAgentState.length === 1) setImmediate(() => this.flushAgentState());
    });
  }

  private pendingAgentState: { projectId: string; instanceId: string; patch: Partial<AgentState>; resolve: (before: AgentStateBefore | null) => void; reject: (e: unknown) => void }[] = [];

  private flushAgentState(): void {
    const batch = this.pendingAgentState;
    this.pendingAgentState = [];
    if (!batch.length) return;
    let results: (AgentStateBefore | null)[];
    try {
      if (!this.db.open) throw new SecgroupError('STATE_IO', 'the controller database is closed');
      results = this.db.transaction((): (AgentStateBefore | null)[] =>
        batch.map(({ projectId, instanceId, patch }) => {
          const r = this.stmt.getAgentState.get(projectId, instanceId);
          if (!r) return null;
          const prev = { ...EMPTY_AGENT_STATE, ...(JSON.parse(r.state) as Partial<AgentState>) };
          this.stmt.setAgentState.run(JSON.stringify({ ...prev, ...patch }), projectId, instanceId);
          return { applied_revision: prev.applied_revision };
        }),
      ).immediate();
    } catch (e) {
      for (const b of batch) b.reject(e);
      return;
    }
    batch.forEach((b, i) => b.resolve(results[i]!));
  }

  /**
   * Audit events arriving together are written in one transaction, as agent
   * state updates are (one fsync per batch, not per event: every API write
   * records one); the promise resolves once the event is committed.
   */
  appendAuditEvent(event: AuditEvent): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      this.pendingAudit.push({ event, resolve, reject });
      if (this.pendingAudit.length === 1) setImmediate(() => this.flushAudit());
    });
  }

  private pendingAudit: { event: AuditEvent; resolve: () => void; reject: (e: unknown) => void }[] = [];

  private flushAudit(): void {
    const batch = this.pendingAudit;
    this.pendingAudit = [];
    if (!batch.length) return;
    const failed = new Map<number, unknown>();
    try {
      if (!this.db.open) throw new SecgroupError('STATE_IO', 'the controller database is closed');
      this.db.transaction(() =>
        batch.forEach(({ event }, i) => {
          // one bad event (a duplicate id) must not lose the others
          try {
            this.stmt.appendAudit.run({ ...event, resource_ids: JSON.stringify(event.resource_ids) });
          } catch (e) {
            failed.set(i, e);
          }
        }),
      ).immediate();
    } catch (e) {
      for (const b of batch) b.reject(e);
      return;
    }
    batch.forEach((b, i) => (failed.has(i) ? b.reject(failed.get(i)) : b.resolve()));
  }

  /**
   * The filter is `auditEventMatches` in SQL; the page is a keyset on
   * (time, seq) read through the (project_id, time) index, so a page costs
   * the same whatever the trail's length. Statements are cached by the set
   * of filters given.
   */
  async listAuditEvents(projectId: string, filter: AuditFilter, page: AuditPage = {}): Promise<AuditEvent[]> {
    this.flushAudit();
    const conds: string[] = [];
    const args: Record<string, unknown> = { project: projectId, limit: page.limit ?? -1 };
    const anyOf = (key: string, list: readonly unknown[] | undefined, cond: (param: string) => string) => {
      if (list === undefined) return;
      conds.push(`(${list.map((v, i) => ((args[`${key}${i}`] = v), cond(`@${key}${i}`))).join(' OR ') || '0'})`);
    };
    anyOf('op', filter.operation, (p) => `operation = ${p}`);
    anyOf('actor', filter.actor, (p) => `actor = ${p}`);
    anyOf('rid', filter.resource_id, (p) => `EXISTS (SELECT 1 FROM json_each(resource_ids) WHERE value = ${p})`);
    anyOf('status', filter.status, (p) => `status = ${p}`);
    anyOf('req', filter.request_id, (p) => `request_id = ${p}`);
    if (filter.result !== undefined) conds.push(filter.result === 'success' ? 'status < 400' : 'status >= 400');
    if (filter.from !== undefined) {
      conds.push('time >= @from');
      args.from = filter.from;
    }
    if (filter.to !== undefined) {
      conds.push('time < @to');
      args.to = filter.to;
    }
    if (page.after !== undefined) {
      const marker = this.stmt.auditMarker.get(projectId, page.after);
      if (!marker) throw new AuditMarkerNotFound(page.after);
      conds.push('(time < @mtime OR (time = @mtime AND seq < @mseq))');
      args.mtime = marker.time;
      args.mseq = marker.seq;
    }
    const sql = `SELECT id, time, actor, project_id, operation, resource_type, resource_ids, request_id, status, error_code, source_ip, user_agent, detail
                   FROM audit_events WHERE project_id = @project AND ${conds.length ? conds.join(' AND ') : '1'}
                   ORDER BY time DESC, seq DESC LIMIT @limit`;
    let st = this.auditQueries.get(sql);
    if (!st) {
      st = this.db.prepare<[Record<string, unknown>], AuditDbRow>(sql);
      if (this.auditQueries.size < 256) this.auditQueries.set(sql, st);
    }
    return st.all(args).map((r) => ({ ...r, resource_ids: JSON.parse(r.resource_ids) as string[] }));
  }

  private readonly auditQueries = new Map<string, Statement<[Record<string, unknown>], AuditDbRow>>();

  async pruneAuditEvents(before: string): Promise<number> {
    this.flushAudit();
    return this.stmt.pruneAudit.run(before).changes;
  }

  async ping(): Promise<void> {
    if (!this.db.open) throw new SecgroupError('STORE_UNAVAILABLE', 'the controller database is closed');
    this.stmt.revisionCounter.get();
  }

  async revisionCounter(): Promise<number> {
    return this.stmt.revisionCounter.get()?.value ?? 0;
  }

  async policiesChangedSince(after: number, limit: number): Promise<PolicyChange[]> {
    return this.stmt.changedSince.all(after, limit).map((r) => ({ projectId: r.project_id, instanceId: r.id, revision: r.revision }));
  }

  async close(): Promise<void> {
    this.flushMutations();
    this.flushAgentState();
    this.flushAudit();
    if (this.db.open) this.db.close();
  }
}
