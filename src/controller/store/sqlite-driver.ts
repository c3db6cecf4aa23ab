/**
 * The SQLite engine of the controller's store: Node's built-in `node:sqlite`
 * (`DatabaseSync`), so the controller needs no native addon (better-sqlite3's
 * had to be compiled for each Node ABI, and a Node upgrade on the machine
 * broke it). This module gives the store the small synchronous API it was
 * written against (better-sqlite3's): prepare/get/all/run, exec, pragma,
 * transaction(fn).immediate()/.deferred(), savepoint(fn), open, close.
 *
 * What it bridges: node:sqlite has no `pragma()` and no transaction helper
 * (BEGIN/COMMIT/ROLLBACK here; a transaction opened inside another runs as
 * part of the outer one), rejects named-parameter objects that carry keys
 * the statement does not use (the store binds whole rows), and returns rows
 * with a null prototype (harmless: the store spreads or reads them). One
 * difference it keeps: an integer beyond 2^53 read without `safeIntegers()`
 * throws (ERR_OUT_OF_RANGE) where better-sqlite3 silently rounded it.
 * Failure contract: every method throws node:sqlite's error (code
 * ERR_SQLITE_ERROR, `errcode`, `errstr`) unchanged; the store turns them
 * into SecgroupError STATE_IO where a caller needs a stable code. A failed
 * transaction is rolled back before the error propagates.
 * Node versions: what is used here exists from Node 22.15 on (isOpen,
 * setAllowUnknownNamedParameters); hence `engines` >= 22.15.
 */
import { DatabaseSync, type SQLInputValue, type StatementSync } from 'node:sqlite';

export interface RunResult {
  changes: number;
  lastInsertRowid: number;
}

/** A prepared statement; `P` the bind parameters (positional values, or one object of named ones), `R` a row. */
export class Statement<P extends unknown[] = unknown[], R = unknown> {
  constructor(private readonly st: StatementSync) {
    st.setAllowUnknownNamedParameters(true);
  }

  /** Integers are read as bigint (`true`) or as numbers (`false`, the default; one past 2^53 throws instead of rounding). */
  safeIntegers(on = true): this {
    this.st.setReadBigInts(on);
    return this;
  }

  get(...params: P): R | undefined {
    return this.st.get(...(params as SQLInputValue[])) as R | undefined;
  }

  all(...params: P): R[] {
    return this.st.all(...(params as SQLInputValue[])) as R[];
  }

  run(...params: P): RunResult {
    const r = this.st.run(...(params as SQLInputValue[]));
    return { changes: Number(r.changes), lastInsertRowid: Number(r.lastInsertRowid) };
  }
}

export class Database {
  private readonly db: DatabaseSync;
  private depth = 0;

  /** Opens (creating) the file; `':memory:'` for a private in-memory database. */
  constructor(file: string, opts: { readonly?: boolean } = {}) {
    this.db = new DatabaseSync(file, { readOnly: opts.readonly ?? false });
  }

  get open(): boolean {
    return this.db.isOpen;
  }

  prepare<P extends unknown[] = unknown[], R = unknown>(sql: string): Statement<P, R> {
    return new Statement<P, R>(this.db.prepare(sql));
  }

  exec(sql: string): void {
    this.db.exec(sql);
  }

  /** `pragma('name = value')` sets; with `{ simple: true }` returns the first column of the first row. */
  pragma(source: string, opts: { simple?: boolean } = {}): unknown {
    const rows = this.db.prepare(`PRAGMA ${source}`).all() as Record<string, unknown>[];
    if (!opts.simple) return rows;
    const first = rows[0];
    return first === undefined ? undefined : Object.values(first)[0];
  }

  /** `fn` in one transaction: `.immediate()` takes the write lock first (BEGIN IMMEDIATE), `.deferred()` on first use. */
  transaction<T>(fn: () => T): { immediate: () => T; deferred: () => T } {
    const run = (begin: string): T => {
      if (this.depth > 0) return fn();
      this.db.exec(begin);
      this.depth++;
      try {
        const value = fn();
        this.db.exec('COMMIT');
        return value;
      } catch (e) {
        try {
          this.db.exec('ROLLBACK');
        } catch {
          // SQLite already rolled it back (some errors end the transaction themselves)
        }
        throw e;
      } finally {
        this.depth--;
      }
    };
    return { immediate: () => run('BEGIN IMMEDIATE'), deferred: () => run('BEGIN DEFERRED') };
  }

  /**
   * `fn` inside the open transaction under a savepoint: when it throws, its
   * writes alone are undone and its error is returned (`ok: false`), the
   * transaction goes on. Throws only when the savepoint itself is gone
   * (SQLite ended the transaction on an I/O error): the caller must then
   * abandon the whole transaction.
   */
  savepoint<T>(fn: () => T): { ok: true; value: T } | { ok: false; error: unknown } {
    this.db.exec('SAVEPOINT sp');
    let value: T;
    try {
      value = fn();
    } catch (error) {
      this.db.exec('ROLLBACK TO sp');
      this.db.exec('RELEASE sp');
      return { ok: false, error };
    }
    this.db.exec('RELEASE sp');
    return { ok: true, value };
  }

  close(): void {
    this.db.close();
  }
}
