/**
 * How the PostgreSQL store (postgres.ts) and the SQLite -> PostgreSQL copy
 * (migrate.ts) classify a failed statement: a database that cannot be
 * reached, or a statement the server cancelled after the connection's
 * `statement_timeout` / `lock_timeout`, becomes SecgroupError
 * STORE_UNAVAILABLE (the API answers 503 SYS.0503 with Retry-After); any
 * other error (a constraint) is the caller's. Pure.
 */
import { SecgroupError, isSecgroupError } from '../../lib/errors.js';

const UNREACHABLE_CODES = new Set(['ECONNREFUSED', 'ECONNRESET', 'ENOENT', 'EPIPE', 'ETIMEDOUT', 'EHOSTUNREACH', 'ENETUNREACH', 'EAI_AGAIN', 'ENOTFOUND', 'ECONNABORTED']);

/** Is `e` a lost or impossible connection (as opposed to an error of the statement)? */
export function isUnreachable(e: unknown): boolean {
  if (!(e instanceof Error)) return false;
  const code = (e as { code?: unknown }).code;
  if (typeof code === 'string') {
    if (UNREACHABLE_CODES.has(code)) return true;
    // SQLSTATE class 08 (connection exception), 57P01-57P03 (admin/crash shutdown, cannot connect now)
    if (/^08...$/.test(code) || /^57P0[123]$/.test(code)) return true;
  }
  return /Connection terminated|connection timeout|timeout exceeded when trying to connect|Client has encountered a connection error|Cannot use a pool after calling end|Client was closed|not queryable/i.test(e.message);
}

/** SQLSTATEs of a statement the server cancelled after `statement_timeout` (57014) or `lock_timeout` (55P03). */
const TIMEOUT_CODES: Readonly<Record<string, 'statement' | 'lock'>> = { '57014': 'statement', '55P03': 'lock' };

/** Which timeout cancelled the statement that failed with `e` (the connection stays usable), or null. */
export function timedOut(e: unknown): 'statement' | 'lock' | null {
  const code = e instanceof Error ? (e as { code?: unknown }).code : undefined;
  return typeof code === 'string' ? (TIMEOUT_CODES[code] ?? null) : null;
}

/**
 * STORE_UNAVAILABLE for an unreachable database or a statement cancelled by
 * its statement or lock timeout (the database is too slow to answer now: a
 * client may retry, as when it is away), `e` unchanged otherwise.
 */
export function storeError(e: unknown): unknown {
  if (isSecgroupError(e)) return e;
  const timeout = timedOut(e);
  if (timeout) {
    const key = timeout === 'lock' ? 'store.lock_timeout_ms' : 'store.statement_timeout_ms';
    return new SecgroupError('STORE_UNAVAILABLE', `the PostgreSQL database did not answer in time (${key}): ${(e as Error).message}`, { cause: e });
  }
  if (!isUnreachable(e)) return e;
  return new SecgroupError('STORE_UNAVAILABLE', `the PostgreSQL database cannot be reached: ${(e as Error).message}`, { cause: e });
}
