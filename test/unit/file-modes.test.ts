/** Files with policies and token hashes are created 0600 (directories 0700), whatever the umask; wider existing files are tightened with a warn line. */
import { chmod, mkdir, mkdtemp, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { FileStateStore } from '../../src/agent/state-store.js';
import { openSqliteStore } from '../../src/controller/store/sqlite.js';
import { createLogger, type Logger } from '../../src/lib/logger.js';
import { ensurePrivateDir } from '../../src/lib/private-files.js';
import { policy } from './agent/fixtures.js';

const modeOf = async (p: string) => (await stat(p)).mode & 0o777;

function capture(): { logger: Logger; lines: Record<string, unknown>[] } {
  const lines: Record<string, unknown>[] = [];
  const stream = new Writable({
    write(chunk: Buffer, _enc, cb) {
      for (const l of chunk.toString().split('\n')) if (l.trim()) lines.push(JSON.parse(l) as Record<string, unknown>);
      cb();
    },
  });
  return { logger: createLogger({ level: 'debug', destination: stream }), lines };
}

let dir: string;
let savedUmask: number;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'sg-modes-'));
  savedUmask = process.umask();
});
afterEach(async () => {
  process.umask(savedUmask);
  await rm(dir, { recursive: true, force: true });
});

describe('controller database', () => {
  it('is created 0600 with its -wal and -shm files, even with umask 000', async () => {
    process.umask(0o000);
    const file = join(dir, 'controller.db');
    const store = openSqliteStore(file);
    try {
      expect(await modeOf(file)).toBe(0o600);
      expect(await modeOf(`${file}-wal`)).toBe(0o600);
      expect(await modeOf(`${file}-shm`)).toBe(0o600);
    } finally {
      await store.close();
    }
  });

  it('is exactly 0600 with a umask that would take the owner\'s write bit', async () => {
    process.umask(0o277);
    const file = join(dir, 'controller.db');
    await openSqliteStore(file).close();
    expect(await modeOf(file)).toBe(0o600);
  });

  it('an existing database and -wal readable by others are tightened to 0600, with a warn line each', async () => {
    const file = join(dir, 'controller.db');
    await openSqliteStore(file).close();
    await writeFile(`${file}-wal`, '');
    await chmod(file, 0o644);
    await chmod(`${file}-wal`, 0o640);
    const { logger, lines } = capture();
    const store = openSqliteStore(file, { logger });
    await store.close();
    expect(await modeOf(file)).toBe(0o600);
    const warned = lines.filter((l) => l.event === 'file_mode_tightened');
    expect(warned.map((l) => [l.level, l.path, l.mode_was, l.mode])).toEqual([
      [40, file, '0644', '0600'],
      [40, `${file}-wal`, '0640', '0600'],
    ]);
  });
});

describe('data and state directories', () => {
  it('a directory we create is 0700, whatever the umask', async () => {
    process.umask(0o000);
    const d = join(dir, 'a', 'b');
    ensurePrivateDir(d);
    expect(await modeOf(d)).toBe(0o700);
  });

  it('an existing wide directory is left alone, with a warn line', async () => {
    const d = join(dir, 'shared');
    await mkdir(d);
    await chmod(d, 0o755);
    const { logger, lines } = capture();
    ensurePrivateDir(d, logger);
    expect(await modeOf(d)).toBe(0o755);
    expect(lines).toMatchObject([{ level: 40, event: 'dir_mode_wide', path: d, mode: '0755' }]);
  });
});

describe('agent state file (last known good)', () => {
  it('is written 0600 in a 0700 directory, whatever the umask', async () => {
    for (const umask of [0o000, 0o277]) {
      process.umask(umask);
      const d = join(dir, `state-${umask.toString(8)}`);
      const s = new FileStateStore(d, () => 0);
      await s.save(policy(1));
      process.umask(savedUmask);
      expect(await modeOf(d), `umask ${umask.toString(8)}`).toBe(0o700);
      expect(await modeOf(join(d, 'policy.json')), `umask ${umask.toString(8)}`).toBe(0o600);
    }
  });

  it('an existing state file readable by others is tightened at load, with a warn line', async () => {
    const { logger, lines } = capture();
    const s = new FileStateStore(dir, () => 0, logger);
    await s.save(policy(2));
    await chmod(s.path, 0o644);
    const r = await s.load();
    expect(r.kind).toBe('ok');
    expect(await modeOf(s.path)).toBe(0o600);
    expect(lines.filter((l) => l.event === 'file_mode_tightened')).toMatchObject([{ level: 40, path: s.path, mode_was: '0644', mode: '0600' }]);
  });
});
