/**
 * Runs commands through one long-lived `/bin/sh`, started while the agent is
 * still small. Why: Node (libuv) starts a child with fork(), whose cost grows
 * with the parent's resident memory; an agent holding a 1M-member group
 * (~5 GB) paid ~25 ms per nft call for the fork alone, twice per member
 * change (apply, then the marker read). The shell is a few MB, so its forks
 * cost the same at any group size.
 *
 * One request at a time: the input is written to a file in a private
 * directory (small input, such as a member delta's few element updates, in
 * one synchronous write, so the request leaves within the call; bigger input
 * gathered into 64 KB pieces, each one synchronous write, with a turn of the
 * event loop after every MB: `writePieces`)
 * (mode 0700, `secgroup-nft-<pid>-*` in a memory file system, `helperBaseDir`:
 * removed on exit, or by the next agent when its process was killed), one line
 * `<id> <args...>` goes to the shell's stdin, the shell
 * runs `<command> <args...> <in >out 2>err` and answers `<id> <exit code>`.
 * Arguments are tokens our code builds (flags, table and set names), never
 * user text; the shell splits them on spaces with globbing off. A request
 * that outlives its timeout kills the shell's whole process group (the
 * command included); a dead shell is started again on the next request.
 *
 * Why a memory file system: every call truncates and rewrites `in`, `out`
 * and `err`. On a disk file system (ext4 with its journal) the truncation of
 * a file just written took ~0.35 ms in the median and up to
 * several ms, against ~0.03 ms on tmpfs (a member delta's call: measured
 * side by side, bench/README.md "Issue 18 round 9"), and a full apply's
 * script of megabytes would go to disk for nothing. Big inputs and outputs
 * are emptied after their call, so they hold no memory between calls.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { accessSync, closeSync, constants, mkdtempSync, openSync, readFileSync, readdirSync, rmSync, statSync, statfsSync, truncateSync, writeFileSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { processAlive } from '../lib/pid.js';

export interface SpawnResult {
  stdout: string;
  stderr: string;
  exitCode: number;
}

/** Thrown when the command did not answer in time (the shell and the command were killed). */
export class SpawnTimeoutError extends Error {
  override name = 'SpawnTimeoutError';
  readonly timedOut = true;
}

const ARG_RE = /^[A-Za-z0-9_./:=-]+$/;

const LOOP = `set -f
D=$1
shift
while IFS= read -r line; do
  id=\${line%% *}
  args=\${line#* }
  [ "$args" = "$line" ] && args=
  "$@" $args <"$D/in" >"$D/out" 2>"$D/err"
  echo "$id $?"
done`;

const DIR_PREFIX = 'secgroup-nft-';

/**
 * Input of at most this many characters is written to the shell's file with
 * one synchronous write (a member delta's script is a few hundred bytes: the
 * stream machinery and its thread-pool round trips cost more than the write);
 * more is written in pieces (a full table: megabytes; `writePieces`).
 */
export const SMALL_INPUT_CHARS = 64 * 1024;

/** Characters gathered into one write(2) of a bigger input. */
const WRITE_PIECE_CHARS = 64 * 1024;
/** Characters written between two turns of the event loop. */
const YIELD_EVERY_CHARS = 1024 * 1024;

/**
 * Writes the chunks of a bigger input to `file`: gathered into pieces of
 * WRITE_PIECE_CHARS, each written at once, with a turn of the event loop
 * after every YIELD_EVERY_CHARS, so timers and sockets are served while a
 * big script renders (1M members: ~30 MB). A stream pipeline did the same
 * with a thread-pool round trip per chunk: at 10k rules (~100 chunks) it
 * took the render plus 10-17 ms, these writes the render plus 6-10 ms.
 * Throws what the chunks or the writes throw (the file is
 * then never handed to the shell).
 */
async function writePieces(file: string, chunks: Iterable<string | Uint8Array>): Promise<void> {
  const fd = openSync(file, 'w');
  try {
    let piece = '';
    let sinceTurn = 0;
    const writeAll = (bytes: Uint8Array) => {
      for (let off = 0; off < bytes.length; ) off += writeSync(fd, bytes, off);
    };
    const write = () => {
      writeAll(Buffer.from(piece, 'utf8'));
      sinceTurn += piece.length;
      piece = '';
    };
    const turn = async () => {
      if (sinceTurn < YIELD_EVERY_CHARS) return;
      sinceTurn = 0;
      await new Promise<void>((resolve) => setImmediate(resolve));
    };
    for (const chunk of chunks) {
      if (typeof chunk !== 'string') {
        // bytes (a netlink batch, nft/netlink-batch.ts): written as they come, in the producer's buffers
        if (piece) write();
        writeAll(chunk);
        sinceTurn += chunk.length;
        await turn();
        continue;
      }
      piece += chunk;
      if (piece.length < WRITE_PIECE_CHARS) continue;
      write();
      await turn();
    }
    if (piece) write();
  } finally {
    closeSync(fd);
  }
}

/** The input of one call: all of it (small), or the chunks to write in pieces (bigger, or bytes). */
type Input = string | Iterable<string | Uint8Array>;

/**
 * `input` as one string when it is small text, else an iterable of its chunks
 * (the ones already taken first); bytes (a netlink batch) are never joined.
 * Throws what the chunks throw.
 */
function prepareInput(input: string | Iterable<string> | Iterable<Uint8Array>): Input {
  if (typeof input === 'string') return input.length <= SMALL_INPUT_CHARS ? input : [input];
  const it: Iterator<string | Uint8Array> = input[Symbol.iterator]();
  const head: (string | Uint8Array)[] = [];
  let size = 0;
  for (;;) {
    const r = it.next();
    if (r.done) return head.every((c) => typeof c === 'string') ? head.join('') : head;
    head.push(r.value);
    size += r.value.length;
    if (typeof r.value !== 'string' || size > SMALL_INPUT_CHARS) break;
  }
  return (function* () {
    yield* head;
    for (let r = it.next(); !r.done; r = it.next()) yield r.value;
  })();
}
/** statfs f_type of tmpfs (linux/magic.h TMPFS_MAGIC). */
const TMPFS_MAGIC = 0x01021994;

/**
 * Free space /dev/shm must have to be used: room many times over for the
 * biggest script or listing (a 1M-member script measured 25.3 MB; one call
 * at a time, emptied after it). A container's /dev/shm (Docker: 64 MB) is
 * too small to count on.
 */
export const SHM_MIN_FREE_BYTES = 256 * 1024 * 1024;

/** Is `dir` a directory on tmpfs that this process may create entries in, with `minFree` bytes free? */
function isWritableTmpfs(dir: string, minFree: number): boolean {
  try {
    accessSync(dir, constants.W_OK | constants.X_OK);
    if (!statSync(dir).isDirectory()) return false;
    const fs = statfsSync(dir);
    return fs.type === TMPFS_MAGIC && fs.bavail * fs.bsize >= minFree;
  } catch {
    return false;
  }
}

/**
 * Where the helper's private directory goes: the service's runtime
 * directory (`$RUNTIME_DIRECTORY`, /run/secgroup: RuntimeDirectory= of
 * systemd/secgroup-agent.service; its first entry when several are given),
 * else /dev/shm when it is a writable tmpfs with SHM_MIN_FREE_BYTES free,
 * else the temporary directory (os.tmpdir(): $TMPDIR, /tmp). See the module
 * comment for why memory.
 */
export function helperBaseDir(env: NodeJS.ProcessEnv = process.env, shm = '/dev/shm', shmMinFree = SHM_MIN_FREE_BYTES): string {
  const runtime = env.RUNTIME_DIRECTORY?.split(':')[0];
  if (runtime && runtime.startsWith('/')) return runtime;
  return isWritableTmpfs(shm, shmMinFree) ? shm : tmpdir();
}

/** Output of at least this many bytes is emptied after its call, as is input given in chunks (a memory file system would hold it until the next call). */
const EMPTY_AFTER_BYTES = SMALL_INPUT_CHARS;

/** Empties `file` (best effort: the next call truncates it anyway). */
function empty(file: string): void {
  try {
    truncateSync(file, 0);
  } catch {
    // the next call's write truncates it
  }
}

let staleChecked = false;

/**
 * Removes the directories of spawners whose process is gone (killed before
 * its exit hook ran: SIGKILL, a crash) in `base`, once per process: only our own user's,
 * only when the pid in the name is not a live process.
 */
export function removeStaleDirs(base: string = helperBaseDir()): void {
  try {
    const uid = process.getuid?.();
    for (const name of readdirSync(base)) {
      const m = new RegExp(`^${DIR_PREFIX}(\\d+)-`).exec(name);
      if (!m || Number(m[1]) === process.pid || processAlive(Number(m[1]))) continue;
      const path = join(base, name);
      if (uid !== undefined && statSync(path).uid !== uid) continue;
      rmSync(path, { recursive: true, force: true });
    }
  } catch {
    // best effort: a directory we cannot list or remove is left as it is
  }
}

/** Directories of live spawners, removed when the process exits. */
const liveDirs = new Set<string>();
let exitHook = false;

export class ShellSpawner {
  private child: ChildProcess | null = null;
  private dir: string | null = null;
  private seq = 0;
  /** calls accepted and not settled yet */
  private running = 0;
  private queue: Promise<unknown> = Promise.resolve();
  private waiting: { id: number; resolve: (code: number) => void; reject: (e: Error) => void } | null = null;
  private closed = false;

  constructor(
    private readonly command: readonly string[],
    private readonly timeoutMs: number,
  ) {
    if (!command.length) throw new Error('internal: empty command');
    this.start(); // now, while the process is small
  }

  /**
   * Runs `command args...` with `input` (text, or chunks of it) on stdin; resolves with its output and exit code (any code).
   * When nothing else is running and the input is small (a read, a member delta's element updates), the
   * request is on its way to the shell when run() returns: the command runs while the caller goes on with
   * synchronous work (the agent reads the counters to carry while it compiles). Chunks that throw (a render
   * error) reject the call before anything reaches the shell.
   */
  run(args: readonly string[], input: string | Iterable<string> | Iterable<Uint8Array> = ''): Promise<SpawnResult> {
    for (const a of args) if (!ARG_RE.test(a)) throw new Error(`internal: unsafe argument ${JSON.stringify(a)}`);
    let prepared: Input;
    try {
      prepared = prepareInput(input);
    } catch (e) {
      return Promise.reject(e instanceof Error ? e : new Error(String(e)));
    }
    const p = this.running === 0 && typeof prepared === 'string' ? this.runOne(args, prepared) : this.queue.then(() => this.runOne(args, prepared));
    this.running++;
    this.queue = p.then(
      () => void this.running--,
      () => void this.running--,
    );
    return p;
  }

  /** Stops the shell and removes its directory. */
  close(): void {
    this.closed = true;
    this.kill();
  }

  private start(): ChildProcess {
    if (!this.dir) {
      const base = helperBaseDir();
      if (!staleChecked) {
        staleChecked = true;
        removeStaleDirs(base);
      }
      this.dir = mkdtempSync(join(base, `${DIR_PREFIX}${process.pid}-`));
      liveDirs.add(this.dir);
      if (!exitHook) {
        exitHook = true;
        process.once('exit', () => {
          for (const d of liveDirs) rmSync(d, { recursive: true, force: true });
        });
      }
    }
    // own process group: a timeout kills the shell and whatever it runs
    const child = spawn('/bin/sh', ['-c', LOOP, 'secgroup-nft', this.dir, ...this.command], { stdio: ['pipe', 'pipe', 'ignore'], detached: true });
    const lines = createInterface({ input: child.stdout! });
    lines.on('line', (line) => {
      const [id, code] = line.split(' ');
      const w = this.waiting;
      if (w && Number(id) === w.id) {
        this.waiting = null;
        w.resolve(Number(code));
      }
    });
    const gone = (why: string) => {
      if (this.child !== child) return;
      this.child = null;
      const w = this.waiting;
      this.waiting = null;
      w?.reject(new Error(`the nft helper shell ${why}`));
    };
    child.on('exit', (code, signal) => gone(`exited (${signal ?? `code ${code}`})`));
    child.on('error', (e) => gone(`failed: ${e.message}`));
    child.stdin!.on('error', () => undefined); // EPIPE when it died: reported by 'exit'
    this.idle(child);
    this.child = child;
    return child;
  }

  /** The shell must not keep the process alive while nothing is asked of it. */
  private idle(child: ChildProcess): void {
    child.unref();
    (child.stdout as unknown as { unref?: () => void }).unref?.();
    (child.stdin as unknown as { unref?: () => void }).unref?.();
  }

  private busy(child: ChildProcess): void {
    child.ref();
    (child.stdout as unknown as { ref?: () => void }).ref?.();
  }

  private kill(): void {
    const child = this.child;
    this.child = null;
    if (child?.pid) {
      try {
        process.kill(-child.pid, 'SIGKILL');
      } catch {
        // already gone
      }
    }
    const w = this.waiting;
    this.waiting = null;
    w?.reject(new Error('the nft helper shell was stopped'));
    if (this.closed && this.dir) {
      rmSync(this.dir, { recursive: true, force: true });
      liveDirs.delete(this.dir);
      this.dir = null;
    }
  }

  private async runOne(args: readonly string[], input: Input): Promise<SpawnResult> {
    if (this.closed) throw new Error('the nft helper shell was stopped');
    const child = this.child ?? this.start();
    const dir = this.dir!;
    // small input: one synchronous write, so the request is handed to the shell within this call (see run)
    const inFile = join(dir, 'in');
    try {
      if (typeof input === 'string') writeFileSync(inFile, input);
      else await writePieces(inFile, input);
    } catch (e) {
      if (typeof input !== 'string') empty(inFile);
      // a file system's error (no space left, say) names the file; a render error goes on as it is
      if ((e as NodeJS.ErrnoException).syscall !== undefined) throw new Error(`cannot write nft's input to ${inFile}: ${(e as Error).message}`, { cause: e });
      throw e;
    }
    const id = ++this.seq;
    this.busy(child);
    let timer: NodeJS.Timeout | undefined;
    try {
      const exitCode = await new Promise<number>((resolve, reject) => {
        this.waiting = { id, resolve, reject };
        timer = setTimeout(() => {
          this.waiting = null;
          this.kill();
          reject(new SpawnTimeoutError(`timed out after ${this.timeoutMs} ms`));
        }, this.timeoutMs);
        child.stdin!.write(`${id} ${args.join(' ')}\n`);
      });
      // read at once: the files are in memory, nft just wrote them (a thread-pool round trip per file cost more than the read)
      const stdout = readFileSync(join(dir, 'out'), 'utf8');
      if (stdout.length >= EMPTY_AFTER_BYTES) empty(join(dir, 'out'));
      return { stdout, stderr: readFileSync(join(dir, 'err'), 'utf8'), exitCode };
    } finally {
      if (typeof input !== 'string') empty(inFile);
      clearTimeout(timer);
      if (this.child === child) this.idle(child);
    }
  }
}
