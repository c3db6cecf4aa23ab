/**
 * src/controller/store/sqlite-driver.ts: the better-sqlite3-shaped API the
 * store uses, over node:sqlite. The Store contract tests run the store on it;
 * these pin the driver's own promises (transactions, binding, integers).
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { Database } from '../../src/controller/store/sqlite-driver.js';

let dir: string;
let db: Database;

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'sg-sqlite-driver-'));
  db = new Database(join(dir, 'd.db'));
  db.exec('CREATE TABLE t (id TEXT PRIMARY KEY, n INTEGER) STRICT');
});

afterEach(() => {
  if (db.open) db.close();
  rmSync(dir, { recursive: true, force: true });
});

const count = () => (db.prepare<[], { c: number }>('SELECT count(*) AS c FROM t').get()!.c);

describe('sqlite driver (node:sqlite)', () => {
  it('a transaction whose function throws leaves nothing written, and the next one works', () => {
    const insert = db.prepare('INSERT INTO t (id, n) VALUES (?, ?)');
    expect(() =>
      db.transaction(() => {
        insert.run('a', 1);
        throw new Error('decided against it');
      }).immediate(),
    ).toThrow('decided against it');
    expect(count()).toBe(0);
    // a constraint failure inside: rolled back whole as well
    expect(() =>
      db.transaction(() => {
        insert.run('b', 1);
        insert.run('b', 2);
      }).immediate(),
    ).toThrow(/UNIQUE/);
    expect(count()).toBe(0);
    expect(db.transaction(() => insert.run('c', 3).changes).immediate()).toBe(1);
    expect(count()).toBe(1);
  });

  it('a transaction opened inside another is part of it (rolled back with it)', () => {
    const insert = db.prepare('INSERT INTO t (id, n) VALUES (?, ?)');
    expect(() =>
      db.transaction(() => {
        db.transaction(() => insert.run('inner', 1)).immediate();
        throw new Error('outer fails');
      }).deferred(),
    ).toThrow('outer fails');
    expect(count()).toBe(0);
  });

  it('binds an object of named parameters that carries more keys than the statement uses', () => {
    db.prepare('INSERT INTO t (id, n) VALUES (@id, @n)').run({ id: 'x', n: 7, unrelated: 'ignored' });
    expect(db.prepare<[string], { id: string; n: number }>('SELECT id, n FROM t WHERE id = ?').get('x')).toEqual({ id: 'x', n: 7 });
  });

  it('pragma sets and reads, simple or as rows', () => {
    db.pragma('user_version = 3');
    expect(db.pragma('user_version', { simple: true })).toBe(3);
    expect(db.pragma('journal_mode = WAL', { simple: true })).toBe('wal');
    expect(db.pragma('user_version')).toEqual([{ user_version: 3 }]);
  });

  it('integers past 2^53: exact as bigint with safeIntegers(), an error (never a rounded number) without', () => {
    db.prepare('INSERT INTO t (id, n) VALUES (?, ?)').run('big', 2n ** 60n + 1n);
    expect(db.prepare<[], { n: bigint }>('SELECT n FROM t').safeIntegers(true).get()!.n).toBe(2n ** 60n + 1n);
    expect(() => db.prepare('SELECT n FROM t').get()).toThrow();
  });

  it('open is false after close, and run reports the changed rows', () => {
    expect(db.prepare('INSERT INTO t (id, n) VALUES (?, ?)').run('a', 1)).toMatchObject({ changes: 1 });
    db.close();
    expect(db.open).toBe(false);
  });
});
