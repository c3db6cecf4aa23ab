/**
 * bench store: the controller's embedded store (SqliteStore, the store's own
 * code and statements) on two SQLite engines side by side: Node's built-in
 * `node:sqlite` (what the store uses, through src/controller/store/
 * sqlite-driver.ts) and better-sqlite3 (the native addon it used before;
 * its API is a superset of the driver's). Reference: better-sqlite3 (ratio =
 * node:sqlite / better-sqlite3). better-sqlite3 is no dependency any more:
 * `npm install --no-save better-sqlite3` (it compiles its addon) to measure
 * it; without it only the node:sqlite column is filled.
 *
 * Each engine runs in its own child process (fresh heap, its own module
 * cache), on a file in a temporary directory with the store's settings (WAL,
 * synchronous FULL unless BENCH_STORE_SYNC=NORMAL, foreign keys). The cases
 * are what the controller does: single-rule API writes (one transaction and
 * fsync each), loading a project snapshot (every API call and compile reads
 * one), a rule change that rewrites every instance's document in one
 * transaction, reading documents (agent connects), batched agent-state
 * updates (acks) and audit appends. Best of BENCH_STORE_ROUNDS (3) rounds.
 * Bounded: fixed counts, ~30 s in all.
 */
import { execFileSync, fork } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Op, RuleRow } from '../src/controller/model.js';
import type { Store } from '../src/controller/store/store.js';

export type Engine = 'better-sqlite3' | 'node:sqlite';

const RULES = 1000;
const INSTANCES = 1000;
const WRITES = 200;
const LOADS = 50;
const READS = 2000;
const ACKS = 2000;
const AUDIT = 2000;

export interface StoreCase {
  case: string;
  /** ms for the whole case */
  ms: number;
}

export interface StoreRow {
  case: string;
  'better-sqlite3 ms': number | null;
  'node:sqlite ms': number;
  'node:sqlite / better-sqlite3': number | null;
}

const NOW = '2026-01-01T00:00:00Z';

function rule(i: number): RuleRow {
  return {
    id: `r-${i}`,
    security_group_id: `sg-${i % 10}`,
    direction: i % 2 ? 'ingress' : 'egress',
    priority: 1 + (i % 100),
    action: i % 7 ? 'allow' : 'deny',
    ethertype: 'IPv4',
    protocol: 'tcp',
    multiport: String(1000 + i),
    icmp_type: null,
    icmp_code: null,
    remote_ip_prefix: `198.18.${i % 250}.0/24`,
    remote_group_id: null,
    remote_address_group_id: null,
    description: `rule ${i}`,
    created_at: NOW,
  } as RuleRow;
}

async function open(engine: Engine, file: string): Promise<Store> {
  const { MIGRATIONS, SqliteStore } = await import('../src/controller/store/sqlite.js');
  const { Database } = await import('../src/controller/store/sqlite-driver.js');
  // better-sqlite3's API is a superset of the driver's: one type for both
  const db = engine === 'node:sqlite' ? new Database(file) : (new (await betterSqlite3())!(file) as InstanceType<typeof Database>);
  db.pragma('journal_mode = WAL');
  db.pragma(`synchronous = ${process.env.BENCH_STORE_SYNC === 'NORMAL' ? 'NORMAL' : 'FULL'}`);
  db.pragma('foreign_keys = ON');
  for (let v = db.pragma('user_version', { simple: true }) as number; v < MIGRATIONS.length; v++) {
    db.transaction(() => {
      MIGRATIONS[v]!(db as never);
      db.pragma(`user_version = ${v + 1}`);
    }).immediate();
  }
  return new SqliteStore(db as never);
}

/** better-sqlite3's Database class, or null when it is not installed. */
async function betterSqlite3(): Promise<(new (file: string) => unknown) | null> {
  const name = 'better-sqlite3'; // not a dependency: resolved at run time only
  try {
    return ((await import(name)) as { default: new (file: string) => unknown }).default;
  } catch {
    return null;
  }
}

async function timed(name: string, out: StoreCase[], fn: () => Promise<void>): Promise<void> {
  const t0 = performance.now();
  await fn();
  out.push({ case: name, ms: performance.now() - t0 });
}

/** One round on a fresh database file; runs in the child. */
async function round(engine: Engine, dir: string): Promise<StoreCase[]> {
  const out: StoreCase[] = [];
  const file = join(dir, `${engine.replace(':', '-')}-${process.pid}-${Math.random().toString(16).slice(2)}.db`);
  let store!: Store;
  await timed('open + migrate', out, async () => {
    store = await open(engine, file);
  });
  const p = 'bench';
  await store.mutate(p, () => ({
    ops: [
      ...Array.from({ length: 10 }, (_, i): Op => ({ op: 'putGroup', group: { id: `sg-${i}`, name: `g${i}`, description: '', enterprise_project_id: '0', tags: [], created_at: NOW, updated_at: NOW } })),
      ...Array.from({ length: RULES }, (_, i): Op => ({ op: 'putRule', rule: rule(i) })),
      ...Array.from({ length: INSTANCES }, (_, i): Op => ({
        op: 'putInstance',
        instance: { id: `i-${i}`, name: `vm${i}`, addresses: [`198.18.${Math.floor(i / 250)}.${(i % 250) + 1}`], security_groups: [`sg-${i % 10}`], created_at: NOW, updated_at: NOW },
      })),
    ],
    value: null,
  }));
  await timed(`${WRITES} single-rule writes (1 tx each)`, out, async () => {
    for (let i = 0; i < WRITES; i++) await store.mutate(p, () => ({ ops: [{ op: 'putRule', rule: rule(RULES + i) }], value: null }));
  });
  await timed(`${LOADS} project loads (${RULES + WRITES} rules, ${INSTANCES} instances)`, out, async () => {
    for (let i = 0; i < LOADS; i++) if (!(await store.loadProject(p))) throw new Error('project missing');
  });
  const shared = JSON.stringify({ groups: Array.from({ length: 100 }, (_, i) => rule(i)) });
  const hash = 'x'.repeat(64);
  await timed(`${INSTANCES} documents rewritten (1 tx, shared tail)`, out, async () => {
    await store.mutate(p, () => ({
      ops: Array.from({ length: INSTANCES }, (_, i): Op => {
        const instance = `{"instance":{"id":"i-${i}"},`;
        return { op: 'setPolicy', instanceId: `i-${i}`, body: instance + shared, hash, parts: { instance, shared, sharedHash: hash, members: '[]' } };
      }),
      value: null,
    }));
  });
  await timed(`${READS} document reads`, out, async () => {
    for (let i = 0; i < READS; i++) if (!(await store.getPolicy(p, `i-${i % INSTANCES}`))) throw new Error('policy missing');
  });
  await timed(`${ACKS} agent-state updates (batched)`, out, async () => {
    await Promise.all(Array.from({ length: ACKS }, (_, i) => store.updateAgentState(p, `i-${i % INSTANCES}`, { applied_revision: i } as never)));
  });
  await timed(`${AUDIT} audit appends (batched)`, out, async () => {
    await Promise.all(
      Array.from({ length: AUDIT }, (_, i) =>
        store.appendAuditEvent({
          id: `a-${i}`, time: NOW, actor: 'bench', project_id: p, operation: 'CreateSecurityGroupRule', resource_type: 'security_group_rule',
          resource_ids: [`r-${i}`], request_id: null, status: 201, error_code: null, source_ip: '127.0.0.1', user_agent: null, detail: null,
        } as never),
      ),
    );
  });
  await store.close();
  return out;
}

/** Child entry: `store.ts <engine> <dir> <rounds>`: prints the best time per case as JSON. */
async function child(engine: Engine, dir: string, rounds: number): Promise<void> {
  const best = new Map<string, number>();
  for (let r = 0; r < rounds; r++) for (const c of await round(engine, dir)) best.set(c.case, Math.min(best.get(c.case) ?? Infinity, c.ms));
  process.send!([...best].map(([name, ms]) => ({ case: name, ms })));
}

function runChild(engine: Engine, dir: string, rounds: number): Promise<StoreCase[]> {
  return new Promise((resolve, reject) => {
    const c = fork(fileURLToPath(import.meta.url), [engine, dir, String(rounds)], { execArgv: ['--import', 'tsx'], stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
    let got: StoreCase[] | null = null;
    c.on('message', (m) => (got = m as StoreCase[]));
    c.on('error', reject);
    c.on('exit', (code) => (got ? resolve(got) : reject(new Error(`store bench child (${engine}) exited with ${code}`))));
  });
}

export async function runStoreBench(): Promise<StoreRow[]> {
  const rounds = Number(process.env.BENCH_STORE_ROUNDS ?? 3);
  const dir = mkdtempSync(join(tmpdir(), 'sg-bench-store-'));
  try {
    const n = await runChild('node:sqlite', dir, rounds);
    const b = (await betterSqlite3()) ? await runChild('better-sqlite3', dir, rounds) : null;
    if (!b) console.log('better-sqlite3 is not installed (npm install --no-save better-sqlite3 to compare): node:sqlite only');
    const r1 = (x: number) => Math.round(x * 10) / 10;
    return n.map((c, i) => ({
      case: c.case,
      'better-sqlite3 ms': b ? r1(b[i]!.ms) : null,
      'node:sqlite ms': r1(c.ms),
      'node:sqlite / better-sqlite3': b ? Math.round((c.ms / b[i]!.ms) * 100) / 100 : null,
    }));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

if (process.argv[1] === fileURLToPath(import.meta.url) && process.send) {
  await child(process.argv[2] as Engine, process.argv[3]!, Number(process.argv[4]));
} else if (process.argv[1] === fileURLToPath(import.meta.url)) {
  console.log(`node ${process.version}, sqlite ${execFileSync(process.execPath, ['-p', "require('node:sqlite') && process.versions.sqlite"], { encoding: 'utf8' }).trim()}`);
  console.table(await runStoreBench());
}
