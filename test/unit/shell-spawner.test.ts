/**
 * The helper shell that starts nft for the agent (src/nft/shell-spawner.ts),
 * with stand-in commands: output, exit codes, input, order, timeouts, a dead
 * shell started again, unsafe arguments refused, where its files go, cleanup.
 */
import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { afterEach, describe, expect, it } from 'vitest';
import { helperBaseDir, removeStaleDirs, ShellSpawner, SpawnTimeoutError } from '../../src/nft/shell-spawner.js';
import { ExecaNftRunner } from '../../src/nft/exec.js';

const spawners: ShellSpawner[] = [];
const make = (command: string[], timeoutMs = 5000) => {
  const s = new ShellSpawner(command, timeoutMs);
  spawners.push(s);
  return s;
};
afterEach(() => {
  for (const s of spawners.splice(0)) s.close();
});

/** Runs `fn` with $RUNTIME_DIRECTORY set to a fresh directory (where spawners made meanwhile put their files); restores it and removes the directory and those spawners after. */
async function inRuntimeDirectory(fn: (base: string) => Promise<void>): Promise<void> {
  const base = mkdtempSync(join(tmpdir(), 'sgt-spawn-base-'));
  const saved = process.env.RUNTIME_DIRECTORY;
  process.env.RUNTIME_DIRECTORY = base;
  try {
    await fn(base);
  } finally {
    if (saved === undefined) delete process.env.RUNTIME_DIRECTORY;
    else process.env.RUNTIME_DIRECTORY = saved;
    for (const s of spawners.splice(0)) s.close();
    rmSync(base, { recursive: true, force: true });
  }
}

// a stand-in for nft: prints its arguments and stdin, writes to stderr, exits with $EXIT (default 0)
const FAKE = ['sh', '-c', 'echo "args:$*"; cat; echo "to stderr" >&2; exit "${EXIT:-0}"', 'fake-nft'];

describe('ShellSpawner', () => {
  it('runs the command with the arguments and input, and returns stdout, stderr and the exit code', async () => {
    const s = make(FAKE);
    expect(await s.run(['-j', 'list', 'set', 'inet', 'secgroup', 'sg_generation'], 'add element x\n')).toEqual({ stdout: 'args:-j list set inet secgroup sg_generation\nadd element x\n', stderr: 'to stderr\n', exitCode: 0 });
    expect(await s.run([])).toEqual({ stdout: 'args:\n', stderr: 'to stderr\n', exitCode: 0 });
  });

  it('streams input given as chunks into the command, in order, whole', async () => {
    const s = make(['sh', '-c', 'cat']);
    function* chunks() {
      for (let i = 0; i < 2000; i++) yield `line ${i} ${'x'.repeat(100)}\n`;
    }
    const expected = [...chunks()].join('');
    expect(await s.run(['-f', '-'], chunks())).toEqual({ stdout: expected, stderr: '', exitCode: 0 });
  });

  it('writes bytes as they are, in the producer\'s pieces, each one before the next is asked for (a netlink batch reuses its buffer)', async () => {
    const s = make(['sh', '-c', 'od -An -tx1 -v | tr -d " \\n"']);
    const reused = Buffer.alloc(3);
    function* pieces() {
      for (let i = 0; i < 5; i++) {
        reused.fill(i);
        yield reused; // the same buffer each time: written out before the next is made
      }
    }
    const r = await s.run([], pieces());
    expect(r).toEqual({ stdout: '000000010101020202030303040404', stderr: '', exitCode: 0 });
    // one small piece of bytes is written as bytes too, not joined as text
    expect((await s.run([], [Uint8Array.of(0xff, 0x00, 0x41)])).stdout).toBe('ff0041');
  });

  it('writes a big chunked input whole (multi-byte text across its pieces), turning the event loop while it writes', async () => {
    const s = make(['sh', '-c', 'cat']);
    let turned = false;
    let turnedBeforeTheEnd = false;
    function* chunks() {
      setImmediate(() => (turned = true));
      // 4 MB in chunks of odd sizes, with a two-byte character straddling piece boundaries
      for (let i = 0; i < 40_000; i++) yield `${i} ü ${'y'.repeat(i % 200)}\n`;
      turnedBeforeTheEnd = turned;
    }
    const expected = [...chunks()].join('');
    turned = false;
    const r = await s.run(['-f', '-'], chunks());
    expect(r.exitCode).toBe(0);
    expect(r.stdout.length).toBe(expected.length);
    expect(r.stdout === expected).toBe(true);
    expect(turnedBeforeTheEnd).toBe(true);
  });

  it('through the nft runner without the helper, chunked input reaches the command too', async () => {
    const runner = new ExecaNftRunner({ table: 'secgroup', command: ['sh', '-c', 'cat >&2; exit 1', 'fake-nft'] });
    const table = { family: 'inet' as const, name: 'secgroup', maps: [], chains: [{ name: 'input', rules: [] }] };
    await expect(runner.apply({ family: 'inet', table: 'secgroup', ops: [{ op: 'replace-table', table }] })).rejects.toMatchObject({ details: { stderr: expect.stringContaining('delete table inet secgroup\ntable inet secgroup {\n\tchain input {') } });
  });

  /** Calls `start` with a command that leaves a flag file, then blocks the event loop (as a compile does) until the flag is there, at most 20 s: was the command handed over within the call? */
  async function ranWithinCall(start: (s: ShellSpawner) => Promise<{ exitCode: number }>): Promise<void> {
    const dir = join(tmpdir(), `sgt-spawn-${process.pid}-${Date.now()}`);
    mkdirSync(dir);
    try {
      const flag = join(dir, 'ran');
      const p = start(make(['sh', '-c', `cat > ${flag}.in; echo ran > ${flag}`]));
      const sleeper = new Int32Array(new SharedArrayBuffer(4));
      for (let i = 0; i < 2000 && !existsSync(flag); i++) Atomics.wait(sleeper, 0, 0, 10);
      expect(existsSync(flag)).toBe(true);
      expect((await p).exitCode).toBe(0);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }

  it('hands a read (no input) to the shell within run(): it runs while the caller is busy with synchronous work', async () => {
    await ranWithinCall((s) => s.run(['-t', 'list']));
  });

  it('hands a small script given as chunks (a member delta) to the shell within run() too, written whole', async () => {
    const chunks = ['add element inet secgroup s { 198.18.0.1 }\n', 'add element inet secgroup s { 198.18.0.2 }\n'];
    await ranWithinCall((s) => s.run(['-f', '-'], chunks.values()));
    const s = make(['sh', '-c', 'cat']);
    expect((await s.run(['-f', '-'], chunks.values())).stdout).toBe(chunks.join(''));
  });

  it('never hands the shell input whose chunks threw part-way, small or streamed, and keeps serving', async () => {
    const dir = join(tmpdir(), `sgt-spawn-${process.pid}-${Date.now()}-throw`);
    mkdirSync(dir);
    try {
      const flag = join(dir, 'ran');
      const s = make(['sh', '-c', `cat > /dev/null; echo ran >> ${flag}`]);
      for (const lines of [2, 5000]) {
        function* failing() {
          for (let i = 0; i < lines; i++) yield `line ${i} ${'x'.repeat(40)}\n`;
          throw new Error(`render failed after ${lines} lines`);
        }
        await expect(s.run(['-f', '-'], failing())).rejects.toThrow(`render failed after ${lines} lines`);
      }
      expect(existsSync(flag)).toBe(false);
      expect((await s.run(['-f', '-'], 'ok\n')).exitCode).toBe(0);
      expect(existsSync(flag)).toBe(true);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('passes a failing exit code through, and keeps serving', async () => {
    const s = make(['sh', '-c', 'exit 3']);
    expect((await s.run(['-f', '-'])).exitCode).toBe(3);
    expect((await s.run(['-f', '-'])).exitCode).toBe(3);
  });

  it('answers concurrent calls in order, one at a time', async () => {
    const s = make(['sh', '-c', 'cat']);
    const out = await Promise.all(Array.from({ length: 20 }, (_, i) => s.run([], `call ${i}\n`)));
    expect(out.map((o) => o.stdout)).toEqual(Array.from({ length: 20 }, (_, i) => `call ${i}\n`));
  });

  it('kills a command that outlives the timeout, then starts a new shell for the next call', async () => {
    const s = make(['sh', '-c', 'if [ "$1" = slow ]; then sleep 30; fi; echo done', 'x'], 300);
    const t0 = Date.now();
    await expect(s.run(['slow'])).rejects.toBeInstanceOf(SpawnTimeoutError);
    expect(Date.now() - t0).toBeLessThan(5000);
    expect((await s.run(['fast'])).stdout).toBe('done\n');
  });

  it('refuses arguments that are not plain tokens (no shell syntax can reach the helper)', () => {
    const s = make(FAKE);
    for (const bad of ['a b', '$(reboot)', '`x`', 'a;b', '*', '', 'x\ny']) expect(() => s.run([bad])).toThrow(/unsafe argument/);
  });

  it('removes its private directory on close', async () => {
    const base = helperBaseDir();
    const before = new Set(readdirSync(base).filter((d) => d.startsWith('secgroup-nft-')));
    const s = make(FAKE);
    await s.run([]);
    const mine = readdirSync(base).filter((d) => d.startsWith('secgroup-nft-') && !before.has(d));
    expect(mine).toHaveLength(1);
    expect(statSync(join(base, mine[0]!)).mode & 0o777).toBe(0o700);
    s.close();
    expect(existsSync(`${base}/${mine[0]}`)).toBe(false);
    await expect(s.run([])).rejects.toThrow(/stopped/);
  });

  it("puts its files in the service's runtime directory, else in /dev/shm when that is a writable tmpfs with room, else in the temporary directory", () => {
    expect(helperBaseDir({ RUNTIME_DIRECTORY: '/run/secgroup' })).toBe('/run/secgroup');
    // systemd joins several runtime directories with ':'; a relative one is ignored
    expect(helperBaseDir({ RUNTIME_DIRECTORY: '/run/secgroup:/run/other' })).toBe('/run/secgroup');
    const fallback = helperBaseDir({ RUNTIME_DIRECTORY: 'relative' }, '/nonexistent/shm');
    expect(fallback).toBe(tmpdir());
    // a directory that is not tmpfs (the repository's) is not taken for /dev/shm
    expect(helperBaseDir({}, process.cwd())).toBe(tmpdir());
    if (existsSync('/dev/shm') && statSync('/dev/shm').isDirectory()) {
      expect(helperBaseDir({}, '/dev/shm', 0)).toBe('/dev/shm');
      // a tmpfs without room for a big script (a container's 64 MB /dev/shm) is not used
      expect(helperBaseDir({}, '/dev/shm', Number.MAX_SAFE_INTEGER)).toBe(tmpdir());
    }
  });

  it('empties a big input and a big output after the call (a memory file system would hold them), and keeps small ones for the next call to overwrite', async () => {
    await inRuntimeDirectory(async (base) => {
      const s = make(['sh', '-c', 'cat']);
      const dir = () => join(base, readdirSync(base).find((d) => d.startsWith('secgroup-nft-'))!);
      function* big() {
        for (let i = 0; i < 1000; i++) yield `${'z'.repeat(99)}\n`;
      }
      const r = await s.run(['-f', '-'], big());
      expect(r.stdout.length).toBe(100_000);
      expect([statSync(join(dir(), 'in')).size, statSync(join(dir(), 'out')).size]).toEqual([0, 0]);
      expect((await s.run(['-f', '-'], 'small\n')).stdout).toBe('small\n');
      expect([statSync(join(dir(), 'in')).size, statSync(join(dir(), 'out')).size]).toEqual([6, 6]);
    });
  });

  it('says which file it could not write when the file system refuses the input (no space left, say), and works again once it can', async () => {
    await inRuntimeDirectory(async (base) => {
      const s = make(['sh', '-c', 'cat']);
      expect((await s.run(['-f', '-'], 'one\n')).stdout).toBe('one\n');
      const inFile = join(base, readdirSync(base).find((d) => d.startsWith('secgroup-nft-'))!, 'in');
      // a directory where the input file goes: every write fails, as on a full file system
      rmSync(inFile);
      mkdirSync(inFile);
      await expect(s.run(['-f', '-'], 'two\n')).rejects.toThrow(`cannot write nft's input to ${inFile}: EISDIR`);
      rmSync(inFile, { recursive: true });
      expect((await s.run(['-f', '-'], 'three\n')).stdout).toBe('three\n');
    });
  });

  it("removes the directories of spawners whose process is gone, and only those", () => {
    let dead = 4_000_000;
    while (existsSync(`/proc/${dead}`)) dead--;
    const stale = join(tmpdir(), `secgroup-nft-${dead}-test`);
    const live = join(tmpdir(), `secgroup-nft-${process.ppid}-test`);
    const other = join(tmpdir(), 'secgroup-nft-notapid-test');
    for (const d of [stale, live, other]) mkdirSync(d, { recursive: true });
    try {
      removeStaleDirs(tmpdir());
      expect([existsSync(stale), existsSync(live), existsSync(other)]).toEqual([false, true, true]);
    } finally {
      for (const d of [stale, live, other]) rmSync(d, { recursive: true, force: true });
    }
  });

  it('through the nft runner: without a usable private directory, nft runs directly and the reason is kept', async () => {
    const saved = process.env.RUNTIME_DIRECTORY;
    process.env.RUNTIME_DIRECTORY = '/nonexistent/secgroup-test';
    let runner: ExecaNftRunner;
    try {
      runner = new ExecaNftRunner({ table: 'secgroup', command: ['sh', '-c', 'echo "nftables v1.0.6 (Lester Gooch #5)"', 'nft'], helper: true });
    } finally {
      if (saved === undefined) delete process.env.RUNTIME_DIRECTORY;
      else process.env.RUNTIME_DIRECTORY = saved;
    }
    expect(runner.helperError).toMatch(/ENOENT/);
    expect(await runner.probe()).toEqual({ version: '1.0.6', tableExists: true });
    runner.close();
  });

  it('through the nft runner: a missing command is NFT_NOT_FOUND, a failure a typed nft error', async () => {
    const missing = new ExecaNftRunner({ table: 'secgroup', command: ['/nonexistent/nft'], helper: true });
    await expect(missing.probe()).rejects.toMatchObject({ code: 'NFT_NOT_FOUND' });
    missing.close();
    const failing = new ExecaNftRunner({ table: 'secgroup', command: ['sh', '-c', 'echo "Error: Could not process rule: No such file or directory" >&2; exit 1', 'nft'], helper: true });
    await expect(failing.readMarker()).resolves.toBeNull(); // the table does not exist
    await expect(failing.apply({ family: 'inet', table: 'secgroup', ops: [{ op: 'delete-table', family: 'inet', name: 'secgroup' }] })).rejects.toMatchObject({ code: 'NFT_NOT_FOUND_OBJECT' });
    failing.close();
  });

  it.each([{ helper: true }, { helper: false }])('through the nft runner (helper: $helper): a hung nft is killed after timeoutMs and reported as NFT_TIMEOUT, and the next call works', async ({ helper }) => {
    const runner = new ExecaNftRunner({ table: 'secgroup', command: ['sh', '-c', 'if [ "$1" = -f ]; then exec sleep 30; fi; echo "nftables v1.0.6 (Lester Gooch #5)"', 'nft'], helper, timeoutMs: 300 });
    try {
      const t0 = Date.now();
      await expect(runner.apply({ family: 'inet', table: 'secgroup', ops: [{ op: 'delete-table', family: 'inet', name: 'secgroup' }] })).rejects.toMatchObject({
        code: 'NFT_TIMEOUT',
        message: expect.stringContaining('did not finish within 300 ms'),
      });
      expect(Date.now() - t0).toBeLessThan(10_000);
      expect(await runner.probe()).toEqual({ version: '1.0.6', tableExists: true });
    } finally {
      runner.close();
    }
  });
});
