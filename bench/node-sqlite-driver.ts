/**
 * The subset of better-sqlite3's synchronous API that the controller's store
 * (src/controller/store/sqlite.ts) uses, on Node's built-in `node:sqlite`
 * (`DatabaseSync`): prepare/get/all/run, exec, pragma, transaction(fn) with
 * .immediate()/.deferred(), open, close. The store bench runs the store's
 * own code over both engines with it, so the comparison is of the engines
 * under the same statements, not of two store implementations.
 *
 * Differences it bridges: node:sqlite has no `pragma()` and no transaction
 * helper (BEGIN/COMMIT/ROLLBACK by hand; a nested call runs inside the outer
 * transaction, as better-sqlite3's does without savepoints here), rejects
 * named-parameter objects with keys the statement does not use (the store
 * spreads whole rows into statements), and returns null-prototype rows.
 */
import { DatabaseSync, type SQLInputValue, type StatementSync } from 'node:sqlite';

type Params = unknown[];

export class NodeSqliteStatement {
  constructor(private readonly st: StatementSync) {
    st.setAllowUnknownNamedParameters(true);
  }
  get(...p: Params): unknown {
    return this.st.get(...(p as SQLInputValue[]));
  }
  all(...p: Params): unknown[] {
    return this.st.all(...(p as SQLInputValue[]));
  }
  run(...p: Params): { changes: number; lastInsertRowid: number } {
    const r = this.st.run(...(p as SQLInputValue[]));
    return { changes: Number(r.changes), lastInsertRowid: Number(r.lastInsertRowid) };
  }
}

export class NodeSqliteDatabase {
  private readonly db: DatabaseSync;
  private depth = 0;

  constructor(file: string) {
    this.db = new DatabaseSync(file);
  }

  get open(): boolean {
    return this.db.isOpen;
  }

  prepare(sql: string): NodeSqliteStatement {
    return new NodeSqliteStatement(this.db.prepare(sql));
  }

  exec(sql: string): void {
    this.db.exec(sql);
  }

  /** `pragma('x = y')` sets; `pragma('x', { simple: true })` returns the first column of the first row. */
  pragma(source: string, opts: { simple?: boolean } = {}): unknown {
    const rows = this.db.prepare(`PRAGMA ${source}`).all() as Record<string, unknown>[];
    if (!opts.simple) return rows;
    const first = rows[0];
    return first === undefined ? undefined : Object.values(first)[0];
  }

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
        if (this.db.isTransaction) this.db.exec('ROLLBACK');
        throw e;
      } finally {
        this.depth--;
      }
    };
    return { immediate: () => run('BEGIN IMMEDIATE'), deferred: () => run('BEGIN DEFERRED') };
  }

  close(): void {
    this.db.close();
  }
}
