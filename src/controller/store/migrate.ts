/**
 * `secgroup controller migrate --from sqlite:FILE --to postgres://...`: copies
 * an embedded controller's state into an empty PostgreSQL database, for the
 * move to several replicas (docs/ha.md). Everything is copied: groups, rules,
 * address groups, instances with their token hashes and policy documents
 * (revisions and shared tails as stored), the revision counter, agent state
 * and the audit trail, each table in its original order (so listings and
 * markers keep their order).
 *
 * The SQLite file is first opened as the controller opens it (its schema
 * migrated, a poisoned revision counter repaired), then read. The copy is
 * ONE PostgreSQL transaction: the target must be empty (no project, no audit
 * event, counter 0; else CONFLICT and nothing written); after the inserts the
 * rows of every table are counted in the same transaction and compared with
 * the source, and a difference rolls everything back (STATE_CORRUPT). Stop
 * the SQLite controller first: writes made to it during the copy are not
 * carried over.
 */
import pg from 'pg';
import { SecgroupError } from '../../lib/errors.js';
import type { Logger } from '../../lib/logger.js';
import { openPostgresStore, postgresClientConfig, type PostgresStoreOptions } from './postgres.js';
import { storeError } from './postgres-errors.js';
import { Database } from './sqlite-driver.js';
import { openSqliteStore } from './sqlite.js';

interface TableCopy {
  name: string;
  columns: readonly string[];
  /** the source's order */
  order: string;
  convert?: Partial<Record<string, (v: unknown) => unknown>>;
}

const TABLES: readonly TableCopy[] = [
  { name: 'projects', columns: ['id', 'version'], order: 'rowid' },
  { name: 'security_groups', columns: ['project_id', 'id', 'name', 'description', 'enterprise_project_id', 'tags', 'created_at', 'updated_at'], order: 'seq' },
  {
    name: 'rules',
    columns: ['project_id', 'id', 'security_group_id', 'direction', 'priority', 'action', 'ethertype', 'protocol', 'multiport', 'icmp_type', 'icmp_code', 'remote_ip_prefix', 'remote_group_id', 'remote_address_group_id', 'description', 'enabled', 'created_at'],
    order: 'seq',
    convert: { enabled: (v) => v !== 0 },
  },
  { name: 'address_groups', columns: ['project_id', 'id', 'name', 'description', 'ip_version', 'ip_set', 'ip_remarks', 'max_capacity', 'enterprise_project_id', 'tags', 'created_at', 'updated_at'], order: 'seq' },
  { name: 'instances', columns: ['project_id', 'id', 'name', 'addresses', 'security_groups', 'token_sha256', 'revision', 'policy_hash', 'policy_body', 'policy_tail', 'created_at', 'updated_at'], order: 'seq' },
  { name: 'policy_tails', columns: ['project_id', 'hash', 'text'], order: 'project_id, hash' },
  { name: 'agent_state', columns: ['project_id', 'instance_id', 'state'], order: 'project_id, instance_id' },
  {
    name: 'audit_events',
    columns: ['id', 'time', 'actor', 'project_id', 'operation', 'resource_type', 'resource_ids', 'request_id', 'status', 'error_code', 'source_ip', 'user_agent', 'detail'],
    order: 'seq',
    convert: { resource_ids: (v) => JSON.parse(v as string) as string[] },
  },
];

/** Rows per table copied (and found in the target), and the revision counter. */
export type MigrationCounts = Record<string, number>;

/** Copies (see the design note); returns the verified counts. Throws CONFLICT, STATE_CORRUPT, STATE_IO or STORE_UNAVAILABLE. */
export async function migrateSqliteToPostgres(sqliteFile: string, target: PostgresStoreOptions, logger?: Logger): Promise<MigrationCounts> {
  // the controller's own open: schema current, revisions repaired
  await openSqliteStore(sqliteFile, { logger }).close();
  // the target's schema, migrated as a replica would
  await (await openPostgresStore(target)).close();
  const src = new Database(sqliteFile, { readonly: true });
  const client = new pg.Client(postgresClientConfig(target));
  try {
    await client.connect();
    await client.query('BEGIN');
    // no controller may write while the copy runs
    await client.query('LOCK TABLE projects, audit_events, meta IN SHARE ROW EXCLUSIVE MODE');
    const before = (await client.query<{ projects: string; audit: string; counter: string }>(
      "SELECT (SELECT count(*) FROM projects) AS projects, (SELECT count(*) FROM audit_events) AS audit, (SELECT value FROM meta WHERE key = 'revision_counter') AS counter",
    )).rows[0]!;
    if (Number(before.projects) || Number(before.audit) || Number(before.counter)) {
      throw new SecgroupError('CONFLICT', `the target database is not empty (${before.projects} projects, ${before.audit} audit events, revision counter ${before.counter}): migrate only into a new, empty database`);
    }
    const counts: MigrationCounts = {};
    for (const t of TABLES) {
      const rows = src.prepare<[], Record<string, unknown>>(`SELECT ${t.columns.join(', ')} FROM ${t.name} ORDER BY ${t.order}`).all();
      for (let at = 0; at < rows.length; at += 500) {
        const params: unknown[] = [];
        const values = rows.slice(at, at + 500).map((r) => `(${t.columns.map((c) => `$${params.push(t.convert?.[c] ? t.convert[c](r[c]) : r[c])}`).join(', ')})`);
        await client.query(`INSERT INTO ${t.name} (${t.columns.join(', ')}) VALUES ${values.join(', ')}`, params);
      }
      const copied = Number((await client.query<{ n: string }>(`SELECT count(*) AS n FROM ${t.name}`)).rows[0]!.n);
      if (copied !== rows.length) throw new SecgroupError('STATE_CORRUPT', `${t.name}: ${rows.length} rows read from ${sqliteFile} but ${copied} in the target; nothing was written`);
      counts[t.name] = copied;
    }
    const counter = src.prepare<[], { value: number }>("SELECT value FROM meta WHERE key = 'revision_counter'").get()!.value;
    await client.query("UPDATE meta SET value = $1 WHERE key = 'revision_counter'", [counter]);
    counts.revision_counter = Number((await client.query<{ value: string }>("SELECT value FROM meta WHERE key = 'revision_counter'")).rows[0]!.value);
    await client.query('COMMIT');
    logger?.info({ event: 'store_migrated_from_sqlite', file: sqliteFile, counts }, 'controller state copied from SQLite to PostgreSQL');
    return counts;
  } catch (e) {
    await client.query('ROLLBACK').catch(() => undefined);
    throw storeError(e);
  } finally {
    src.close();
    await client.end().catch(() => undefined);
  }
}
