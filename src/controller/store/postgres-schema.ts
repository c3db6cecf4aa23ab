/**
 * The PostgreSQL store's schema: versioned migrations in code (never edit a
 * released one, append a new one) and `migrate`, which runs them at open in
 * ONE transaction under a transaction-scoped advisory lock, so replicas that
 * start at the same moment migrate exactly once: the first takes the lock and
 * migrates, the others wait for it and then find the schema current.
 *
 * The tables mirror the SQLite store's (sqlite.ts), with three deliberate
 * differences: JSON columns are TEXT (read back byte for byte, key order
 * kept) except `agent_state.state` (JSONB: a batch of updates merges patches
 * with `||` in one statement); timestamps compared as text use COLLATE "C"
 * (byte order, whatever the database's locale); `audit_events.resource_ids`
 * is a TEXT[] (`= ANY(...)`). `instances_by_revision` makes
 * `policiesChangedSince` cheap, `instances_by_tail` the clean-up of unused
 * shared tails. `project_changes` (no SQLite counterpart: one process there)
 * is the change log replicas catch up by (./change-log.ts).
 */
import type pg from 'pg';
import type { Logger } from '../../lib/logger.js';

/** pg_advisory_xact_lock key of the schema migration ("sg" 0x5e c9 in a 64-bit key). */
export const MIGRATION_LOCK = 0x5ec95ec9;

export const MIGRATIONS: readonly string[] = [
  `
  CREATE TABLE meta (key TEXT PRIMARY KEY, value BIGINT NOT NULL);
  INSERT INTO meta (key, value) VALUES ('revision_counter', 0);
  CREATE TABLE projects (id TEXT PRIMARY KEY, version BIGINT NOT NULL);
  CREATE TABLE security_groups (
    seq BIGSERIAL PRIMARY KEY,
    project_id TEXT NOT NULL REFERENCES projects(id),
    id TEXT NOT NULL,
    name TEXT NOT NULL,
    description TEXT NOT NULL,
    enterprise_project_id TEXT NOT NULL,
    tags TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    UNIQUE (project_id, id)
  );
  CREATE TABLE rules (
    seq BIGSERIAL PRIMARY KEY,
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
    enabled BOOLEAN NOT NULL,
    created_at TEXT NOT NULL,
    UNIQUE (project_id, id),
    FOREIGN KEY (project_id, security_group_id) REFERENCES security_groups (project_id, id)
  );
  CREATE INDEX rules_by_group ON rules (project_id, security_group_id);
  CREATE TABLE address_groups (
    seq BIGSERIAL PRIMARY KEY,
    project_id TEXT NOT NULL REFERENCES projects(id),
    id TEXT NOT NULL,
    name TEXT NOT NULL,
    description TEXT NOT NULL,
    ip_version INTEGER NOT NULL,
    ip_set TEXT NOT NULL,
    ip_remarks TEXT NOT NULL,
    max_capacity INTEGER NOT NULL,
    enterprise_project_id TEXT NOT NULL,
    tags TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    UNIQUE (project_id, id)
  );
  CREATE TABLE instances (
    seq BIGSERIAL PRIMARY KEY,
    project_id TEXT NOT NULL REFERENCES projects(id),
    id TEXT NOT NULL,
    name TEXT NOT NULL,
    addresses TEXT NOT NULL,
    security_groups TEXT NOT NULL,
    token_sha256 TEXT UNIQUE,
    revision BIGINT,
    policy_hash TEXT,
    policy_body TEXT,
    policy_tail TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    UNIQUE (project_id, id)
  );
  CREATE INDEX instances_by_revision ON instances (revision) WHERE revision IS NOT NULL;
  CREATE TABLE policy_tails (
    project_id TEXT NOT NULL,
    hash TEXT NOT NULL,
    text TEXT NOT NULL,
    PRIMARY KEY (project_id, hash)
  );
  CREATE TABLE agent_state (
    project_id TEXT NOT NULL,
    instance_id TEXT NOT NULL,
    state JSONB NOT NULL,
    PRIMARY KEY (project_id, instance_id),
    FOREIGN KEY (project_id, instance_id) REFERENCES instances (project_id, id) ON DELETE CASCADE
  );
  CREATE TABLE audit_events (
    seq BIGSERIAL PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    time TEXT COLLATE "C" NOT NULL,
    actor TEXT NOT NULL,
    project_id TEXT,
    operation TEXT NOT NULL,
    resource_type TEXT NOT NULL,
    resource_ids TEXT[] NOT NULL,
    request_id TEXT,
    status INTEGER NOT NULL,
    error_code TEXT,
    source_ip TEXT,
    user_agent TEXT,
    detail TEXT
  );
  CREATE INDEX audit_by_project_time ON audit_events (project_id, time, seq);
  CREATE INDEX audit_by_time ON audit_events (time);
  `,
  // 2: a commit that replaced documents looks up, per shared tail, whether an instance still uses it
  `
  CREATE INDEX instances_by_tail ON instances (project_id, policy_tail) WHERE policy_tail IS NOT NULL;
  `,
  // 3: the change log: each commit's ops (documents left out), by project and version, so a replica whose cached snapshot
  // is a few versions behind catches up by them instead of reloading the project (postgres.ts, ./change-log.ts)
  `
  CREATE TABLE project_changes (
    project_id TEXT NOT NULL,
    version BIGINT NOT NULL,
    ops TEXT NOT NULL,
    revisions TEXT NOT NULL,
    PRIMARY KEY (project_id, version)
  );
  `,
];

/**
 * Brings the database to the current schema (see the design note); throws
 * when the database was written by a newer program. Logs `store_migrated`
 * when it applied anything.
 */
export async function migrate(client: pg.ClientBase, logger?: Logger): Promise<void> {
  await client.query('BEGIN');
  try {
    // no statement or lock timeout here: a replica waits for another's migration however long it takes
    await client.query('SET LOCAL statement_timeout = 0');
    await client.query('SET LOCAL lock_timeout = 0');
    await client.query('SELECT pg_advisory_xact_lock($1)', [MIGRATION_LOCK]);
    await client.query('CREATE TABLE IF NOT EXISTS secgroup_schema (version INTEGER NOT NULL)');
    const rows = (await client.query<{ version: number }>('SELECT version FROM secgroup_schema')).rows;
    const current = rows[0]?.version ?? 0;
    if (current > MIGRATIONS.length) {
      throw new Error(`database schema version ${current} is newer than this program (${MIGRATIONS.length}); refusing to open it`);
    }
    for (let v = current; v < MIGRATIONS.length; v++) await client.query(MIGRATIONS[v]!);
    if (!rows.length) await client.query('INSERT INTO secgroup_schema (version) VALUES ($1)', [MIGRATIONS.length]);
    else await client.query('UPDATE secgroup_schema SET version = $1', [MIGRATIONS.length]);
    await client.query('COMMIT');
    if (current < MIGRATIONS.length) logger?.info({ event: 'store_migrated', from: current, to: MIGRATIONS.length }, `database schema migrated from version ${current} to ${MIGRATIONS.length}`);
  } catch (e) {
    await client.query('ROLLBACK').catch(() => undefined);
    throw e;
  }
}
