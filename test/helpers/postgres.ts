/**
 * A throwaway PostgreSQL cluster for tests, from Debian's `postgresql`
 * package (scripts/setup.sh --tests installs it): `initdb` in a temp dir as
 * an unprivileged user (PostgreSQL refuses to run as root: as root the
 * binaries run as the `postgres` system user via `runuser`), listening only
 * on a unix socket in that dir (no TCP unless asked, then 127.0.0.1 only),
 * on its own port, trust authentication (the socket dir is private to the
 * cluster). `pg_ctl start -w`; a fresh database per test file
 * (`createDatabase`); `destroy()` stops it with `pg_ctl stop -m immediate`
 * and removes the dir. A process exit hook does the same for clusters a
 * crashed test left running, so no server outlives the test process.
 * `stop()`/`start()` stop and restart the server on the same data and port
 * (fault tests: the database away under load).
 *
 * Temp dirs are named `sg-pg-<pid>-...` so a leftover from a killed run can
 * be found: `removeLeftoverClusters()` stops and removes those whose test
 * process is gone.
 */
import { execFileSync } from 'node:child_process';
import { chownSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import pg from 'pg';
import { afterAll, beforeAll } from 'vitest';

const PREFIX = 'sg-pg-';

/** The newest PostgreSQL server binaries under /usr/lib/postgresql/<version>/bin, or null. */
export function postgresBinDir(): string | null {
  const base = '/usr/lib/postgresql';
  if (!existsSync(base)) return null;
  const versions = readdirSync(base)
    .filter((v) => existsSync(join(base, v, 'bin', 'initdb')))
    .sort((a, b) => Number(b) - Number(a));
  return versions.length ? join(base, versions[0]!, 'bin') : null;
}

/** Why PostgreSQL tests cannot run here, or null when they can. */
export function postgresUnavailableReason(): string | null {
  if (!postgresBinDir()) return 'PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin (apt-get install postgresql; scripts/setup.sh --tests)';
  if (process.getuid?.() === 0) {
    try {
      execFileSync('id', ['-u', 'postgres'], { stdio: 'ignore' });
    } catch {
      return 'running as root but there is no `postgres` system user to run the server as';
    }
  }
  return null;
}

export interface PgCluster {
  readonly dir: string;
  readonly socketDir: string;
  readonly port: number;
  /** A connection URL for `database` (user postgres over the unix socket). */
  url(database?: string): string;
  /** Creates a new, empty database and returns its URL. */
  createDatabase(name?: string): Promise<string>;
  /** Stops the server at once (`pg_ctl stop -m immediate`, as a crash); the data stays. */
  stop(): Promise<void>;
  /** Starts it again on the same data and port; resolves when it accepts connections. */
  start(): Promise<void>;
  /** Stops (immediate) and removes everything. Idempotent. */
  destroy(): Promise<void>;
}

const live = new Set<string>();
let exitHook = false;

/** Runs a server binary as the unprivileged owner of the cluster. */
function asOwner(bin: string, args: string[]): [string, string[]] {
  return process.getuid?.() === 0 ? ['runuser', ['-u', 'postgres', '--', bin, ...args]] : [bin, args];
}

function stopNow(binDir: string, data: string): void {
  try {
    const [cmd, args] = asOwner(join(binDir, 'pg_ctl'), ['stop', '-D', data, '-m', 'immediate', '-w']);
    execFileSync(cmd, args, { stdio: 'ignore', timeout: 30_000 });
  } catch {
    // not running
  }
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const port = (srv.address() as { port: number }).port;
      srv.close(() => resolve(port));
    });
  });
}

/** Creates and starts a cluster. `tcp`: also listen on 127.0.0.1:port (default: the unix socket only). */
export async function startCluster(opts: { tcp?: boolean } = {}): Promise<PgCluster> {
  const binDir = postgresBinDir();
  const why = postgresUnavailableReason();
  if (!binDir || why) throw new Error(`cannot start a PostgreSQL cluster: ${why}`);
  const dir = mkdtempSync(join(tmpdir(), `${PREFIX}${process.pid}-`));
  const data = join(dir, 'data');
  const socketDir = dir;
  if (process.getuid?.() === 0) {
    const uid = Number(execFileSync('id', ['-u', 'postgres']).toString().trim());
    const gid = Number(execFileSync('id', ['-g', 'postgres']).toString().trim());
    chownSync(dir, uid, gid);
  }
  live.add(data);
  if (!exitHook) {
    exitHook = true;
    process.once('exit', () => {
      for (const d of live) stopNow(binDir, d);
    });
  }
  const port = await freePort();
  const run = async (bin: string, args: string[]) => {
    const [cmd, argv] = asOwner(join(binDir, bin), args);
    await execa(cmd, argv, { timeout: 120_000, cwd: dir });
  };
  const destroy = async () => {
    stopNow(binDir, data);
    live.delete(data);
    rmSync(dir, { recursive: true, force: true });
  };
  try {
    await run('initdb', ['-D', data, '-U', 'postgres', '--auth=trust', '--encoding=UTF8', '--locale=C', '--no-sync', '--no-instructions']);
    const options = [
      `-c listen_addresses=${opts.tcp ? '127.0.0.1' : "''"}`,
      `-c unix_socket_directories=${socketDir}`,
      `-p ${port}`,
      // a test cluster: no fsync of data files (a crash of the machine loses it anyway), few resources
      '-c fsync=off',
      '-c full_page_writes=off',
      '-c max_connections=200',
      '-c shared_buffers=32MB',
    ].join(' ');
    const start = () => run('pg_ctl', ['start', '-D', data, '-w', '-t', '60', '-l', join(dir, 'server.log'), '-o', options]);
    await start();
    const url = (database = 'postgres') => `postgres://postgres@localhost:${port}/${database}?host=${encodeURIComponent(socketDir)}`;
    let n = 0;
    return {
      dir,
      socketDir,
      port,
      url,
      async createDatabase(name = `t${process.pid}_${++n}`) {
        const c = new pg.Client({ connectionString: url() });
        await c.connect();
        try {
          await c.query(`CREATE DATABASE ${pg.escapeIdentifier(name)}`);
        } finally {
          await c.end();
        }
        return url(name);
      },
      async stop() {
        stopNow(binDir, data);
      },
      start,
      destroy,
    };
  } catch (e) {
    const log = existsSync(join(dir, 'server.log')) ? readFileSync(join(dir, 'server.log'), 'utf8').slice(-2000) : '';
    await destroy();
    throw new Error(`cannot start a PostgreSQL cluster: ${(e as Error).message}\n${log}`, { cause: e });
  }
}

/** Clusters of test processes that no longer exist (killed runs): stopped and removed. */
export function removeLeftoverClusters(): string[] {
  const binDir = postgresBinDir();
  const removed: string[] = [];
  for (const name of readdirSync(tmpdir())) {
    const m = new RegExp(`^${PREFIX}(\\d+)-`).exec(name);
    if (!m || Number(m[1]) === process.pid) continue;
    try {
      process.kill(Number(m[1]), 0);
      continue; // its test process still runs
    } catch {
      // gone
    }
    const dir = join(tmpdir(), name);
    if (binDir) stopNow(binDir, join(dir, 'data'));
    rmSync(dir, { recursive: true, force: true });
    removed.push(dir);
  }
  return removed;
}

/** One cluster for the calling test file (beforeAll/afterAll), removed also when tests fail. */
export function usePostgres(opts: { tcp?: boolean } = {}): () => PgCluster {
  let cluster: PgCluster | null = null;
  beforeAll(async () => {
    removeLeftoverClusters();
    cluster = await startCluster(opts);
  }, 120_000);
  afterAll(async () => {
    await cluster?.destroy();
  }, 60_000);
  return () => {
    if (!cluster) throw new Error('the PostgreSQL cluster is not started (usePostgres runs in beforeAll)');
    return cluster;
  };
}
