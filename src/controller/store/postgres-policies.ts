/**
 * Reading many policy documents of one project from PostgreSQL at once
 * (`Store.getPolicies`, the PostgreSQL store in postgres.ts): two queries
 * whatever the number of instances, their own parts, then each distinct
 * shared tail once. Documents with one tail share its string and come with
 * `parts` (model.ts `storedParts`), so the hub encodes the tail once for all
 * of them (a change another replica committed, read by a catch-up).
 *
 * Failure contract: the query function's errors propagate unchanged (the
 * store maps an unreachable database to STORE_UNAVAILABLE); a document that
 * refers to a missing tail throws STATE_CORRUPT.
 */
import type pg from 'pg';
import { SecgroupError } from '../../lib/errors.js';
import { storedParts, type BodyParts } from '../model.js';
import type { StoredPolicy } from './store.js';

type Query = (sql: string, params: unknown[]) => Promise<pg.QueryResult<Record<string, unknown>>>;

/** The current documents of `instanceIds` in `projectId`, by instance id; those without a document are absent. */
export async function readPolicies(query: Query, projectId: string, instanceIds: readonly string[]): Promise<Map<string, StoredPolicy>> {
  const out = new Map<string, StoredPolicy>();
  if (!instanceIds.length) return out;
  const rows = (
    await query('SELECT id, revision, policy_body, policy_tail FROM instances WHERE project_id = $1 AND id = ANY($2::text[]) AND policy_body IS NOT NULL', [projectId, [...instanceIds]])
  ).rows as { id: string; revision: number; policy_body: string; policy_tail: string | null }[];
  const hashes = [...new Set(rows.map((r) => r.policy_tail).filter((h): h is string => h !== null))];
  // per tail: its text and its parts (found once; the instance part is filled in per document)
  const tails = new Map<string, { text: string; parts: BodyParts | null }>();
  if (hashes.length) {
    for (const t of (await query('SELECT hash, text FROM policy_tails WHERE project_id = $1 AND hash = ANY($2::text[])', [projectId, hashes])).rows) {
      tails.set(t.hash as string, { text: t.text as string, parts: storedParts('', t.text as string, t.hash as string) });
    }
  }
  for (const r of rows) {
    if (r.policy_tail === null) {
      out.set(r.id, { revision: r.revision, body: r.policy_body });
      continue;
    }
    const tail = tails.get(r.policy_tail);
    if (tail === undefined) throw new SecgroupError('STATE_CORRUPT', `the policy of instance ${r.id} refers to a missing shared part ${r.policy_tail}`);
    out.set(r.id, { revision: r.revision, body: r.policy_body + tail.text, ...(tail.parts ? { parts: { ...tail.parts, instance: r.policy_body } } : {}) });
  }
  return out;
}
