/**
 * The helper shell that starts nft for the agent (src/nft/shell-spawner.ts),
 * with stand-in commands: output, exit codes, input, order, timeouts, a dead
 * shell started again, unsafe arguments refused, cleanup; streamed calls
 * (openStream: the command started before its input, reading a FIFO).
 */
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { afterEach, describe, expect, it } from 'vitest';
import { PIPE_BUF } from '../../src/nft/fifo-stream.js';
import { removeStaleDirs, ShellSpawner, SpawnTimeoutError, type StreamCall } from '../../src/nft/shell-spawner.js';
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
    const before = new Set(readdirSync(tmpdir()).filter((d) => d.startsWith('secgroup-nft-')));
    const s = make(FAKE);
    await s.run([]);
    const mine = readdirSync(tmpdir()).filter((d) => d.startsWith('secgroup-nft-') && !before.has(d));
    expect(mine).toHaveLength(1);
    s.close();
    expect(existsSync(`${tmpdir()}/${mine[0]}`)).toBe(false);
    await expect(s.run([])).rejects.toThrow(/stopped/);
  });

  it("removes the directories of spawners whose process is gone, and only those", () => {
    let dead = 4_000_000;
    while (existsSync(`/proc/${dead}`)) dead--;
    const stale = join(tmpdir(), `secgroup-nft-${dead}-test`);
    const live = join(tmpdir(), `secgroup-nft-${process.ppid}-test`);
    const other = join(tmpdir(), 'secgroup-nft-notapid-test');
    for (const d of [stale, live, other]) mkdirSync(d, { recursive: true });
    try {
      removeStaleDirs();
      expect([existsSync(stale), existsSync(live), existsSync(other)]).toEqual([false, true, true]);
    } finally {
      for (const d of [stale, live, other]) rmSync(d, { recursive: true, force: true });
    }
  });

  it('through the nft runner: without a usable private directory, nft runs directly and the reason is kept', async () => {
    const saved = process.env.TMPDIR;
    process.env.TMPDIR = '/nonexistent/secgroup-test';
    let runner: ExecaNftRunner;
    try {
      runner = new ExecaNftRunner({ table: 'secgroup', command: ['sh', '-c', 'echo "nftables v1.0.6 (Lester Gooch #5)"', 'nft'], helper: true });
    } finally {
      if (saved === undefined) delete process.env.TMPDIR;
      else process.env.TMPDIR = saved;
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

  describe('streamed calls', () => {
    /** A scratch directory for flag files, removed afterwards. */
    const scratch = (): { dir: string; done: () => void } => {
      const dir = join(tmpdir(), `sgt-stream-${process.pid}-${Date.now()}-${Math.random().toString(36).slice(2)}`);
      mkdirSync(dir);
      return { dir, done: () => rmSync(dir, { recursive: true, force: true }) };
    };
    /** Waits (polling, at most 10 s) for `path` to exist. */
    const appears = async (path: string): Promise<boolean> => {
      for (let i = 0; i < 1000 && !existsSync(path); i++) await new Promise((r) => setTimeout(r, 10));
      return existsSync(path);
    };
    const open = (s: ShellSpawner, args: string[] = []): StreamCall => {
      const call = s.openStream(args);
      expect(call).not.toBeNull();
      return call!;
    };

    it('starts the command before its input exists, then feeds it the input as it is produced, whole and in order', async () => {
      const { dir, done } = scratch();
      try {
        // the FIFO's path is the last argument, as in `nft -f <pipe>`
        const s = make(['sh', '-c', `[ "$1" = warm ] && exit 0; echo "$1" > ${dir}/s.tmp; mv ${dir}/s.tmp ${dir}/started; cat "$2"`, 'fake-nft']);
        await s.run(['warm']); // the shell made its FIFO at its start
        const call = open(s, ['-f']);
        expect(await appears(join(dir, 'started'))).toBe(true);
        expect(readFileSync(join(dir, 'started'), 'utf8')).toBe('-f\n');
        function* chunks() {
          yield 'table inet secgroup {\n';
          // 3 MB: far more than the pipe holds, so the writes wait for the command to read
          for (let i = 0; i < 30_000; i++) yield `\tline ${i} ü ${'z'.repeat(i % 150)}\n`;
          yield '}\n';
        }
        const expected = [...chunks()].join('');
        const r = await call.send(chunks());
        expect(r.exitCode).toBe(0);
        expect(r.stdout.length).toBe(expected.length);
        expect(r.stdout === expected).toBe(true);
        // the shell serves the next call as before
        expect((await s.run(['warm'])).exitCode).toBe(0);
      } finally {
        done();
      }
    });

    it('starts the command within openStream, and write() feeds it while the caller is busy with synchronous work (the compile)', async () => {
      const { dir, done } = scratch();
      try {
        const got = join(dir, 'got');
        const s = make(['sh', '-c', `[ "$1" = warm ] && exit 0; echo > ${dir}/started; cat "$2" > ${got}`, 'fake-nft']);
        await s.run(['warm']);
        const call = open(s, ['-f']);
        const sleeper = new Int32Array(new SharedArrayBuffer(4));
        // no turn of the event loop from here until the command has read what write() gave it
        for (let i = 0; i < 2000 && !existsSync(join(dir, 'started')); i++) Atomics.wait(sleeper, 0, 0, 5);
        expect(existsSync(join(dir, 'started'))).toBe(true);
        for (let i = 0; i < 400; i++) Atomics.wait(sleeper, 0, 0, 5); // the command opened the FIFO
        const head = `table inet secgroup {\n${'\tchain r_x { }\n'.repeat(60_000)}`; // ~1 MB: far more than the pipe holds
        call.write(['table inet secgroup {\n', head.slice('table inet secgroup {\n'.length)].values());
        let size = 0;
        for (let i = 0; i < 4000 && size < head.length; i++) {
          Atomics.wait(sleeper, 0, 0, 5);
          size = existsSync(got) ? statSync(got).size : 0;
        }
        expect(size).toBe(head.length);
        const r = await call.send(['}\n'].values());
        expect(r.exitCode).toBe(0);
        expect(readFileSync(got, 'utf8')).toBe(`${head}}\n`);
      } finally {
        done();
      }
    });

    it('cancelled, the command reads an empty input; calls made meanwhile wait for it, in order', async () => {
      const s = make(['sh', '-c', '[ "$1" = warm ] && exit 0; printf "[%s]" "$(cat "${2:-/dev/stdin}")"', 'fake-nft']);
      await s.run(['warm'], '');
      const call = open(s, ['-f']);
      const later = s.run(['after'], 'next\n');
      let laterDone = false;
      void later.then(() => (laterDone = true));
      await new Promise((r) => setTimeout(r, 100));
      expect(laterDone).toBe(false);
      call.cancel();
      call.cancel(); // once is enough; again is a no-op
      expect((await later).stdout).toBe('[next]');
    });

    it('a chunk that throws part-way kills the command before its input ends: it never sees the end of a cut input', async () => {
      const { dir, done } = scratch();
      try {
        const s = make(['sh', '-c', `[ "$1" = warm ] && exit 0; cat "$2" > ${dir}/got; echo reached-the-end > ${dir}/end`, 'fake-nft']);
        await s.run(['warm']);
        for (const lines of [0, 3, 50_000]) {
          const call = open(s, ['-f']);
          function* failing() {
            yield 'table inet secgroup {\n';
            for (let i = 0; i < lines; i++) yield `\tline ${i} ${'x'.repeat(60)}\n`;
            throw new Error(`render failed after ${lines} lines`);
          }
          await expect(call.send(failing())).rejects.toThrow(`render failed after ${lines} lines`);
          // killed, not ended: give a surviving command time to finish, then look
          await new Promise((r) => setTimeout(r, 200));
          expect(existsSync(join(dir, 'end'))).toBe(false);
          // the killed shell took its FIFO along: no streamed call until a call starts it again
          expect(s.openStream(['-f'])).toBeNull();
          await s.run(['warm']);
        }
        expect((await s.run([], '')).exitCode).toBe(0);
        expect(await appears(join(dir, 'end'))).toBe(true);
      } finally {
        done();
      }
    });

    it(`writes the first chunk alone and refuses one over PIPE_BUF (${PIPE_BUF} bytes) before writing anything`, async () => {
      const { dir, done } = scratch();
      try {
        const s = make(['sh', '-c', `[ "$1" = warm ] && exit 0; cat "$2" > ${dir}/got; echo reached-the-end > ${dir}/end`, 'fake-nft']);
        await s.run(['warm']);
        const call = open(s, ['-f']);
        await expect(call.send(['x'.repeat(PIPE_BUF + 1), 'rest\n'].values())).rejects.toThrow(/first chunk .* over PIPE_BUF/);
        await new Promise((r) => setTimeout(r, 200));
        expect(existsSync(join(dir, 'end'))).toBe(false);
      } finally {
        done();
      }
    });

    it('a command that exits without reading its input ends the call with its exit code, however much input is left', async () => {
      const s = make(['sh', '-c', '[ "$1" = warm ] && exit 0; echo "no table" >&2; exit 3', 'fake-nft']);
      await s.run(['warm']);
      const call = open(s, ['-f']);
      function* big() {
        yield 'table inet secgroup {\n';
        for (let i = 0; i < 20_000; i++) yield `\tline ${i} ${'x'.repeat(200)}\n`;
      }
      expect(await call.send(big())).toEqual({ stdout: '', stderr: 'no table\n', exitCode: 3 });
      expect((await s.run([])).exitCode).toBe(3);
    });

    it('a streamed call that is never given its input is killed at the timeout, and the shell serves again', async () => {
      const s = make(['sh', '-c', '[ "$1" = warm ] && exit 0; cat "$1" >/dev/null; echo ok', 'fake-nft'], 300);
      await s.run(['warm'], '');
      const call = open(s);
      const next = s.run([], '');
      await expect(next).resolves.toMatchObject({ stdout: 'ok\n' });
      // the call itself failed at its timeout; sending afterwards reports that
      await expect(call.send(['x\n'].values())).rejects.toBeInstanceOf(SpawnTimeoutError);
    });
  });
});
