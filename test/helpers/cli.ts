/**
 * Runs the `secgroup` command in-process with a fake CliIo (main.ts runs
 * itself at import, so it is not imported here): the same program, the same
 * mapping of errors to exit codes as `run()` in main.ts.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, openSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { CommanderError } from 'commander';
import { buildProgram } from '../../src/cli/program.js';
import { CliExit, EXIT, type CliIo } from '../../src/cli/io.js';

export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

export const ROOT = join(import.meta.dirname, '../..');

export async function runCli(argv: string[], env: Record<string, string | undefined> = {}): Promise<CliResult> {
  let stdout = '';
  let stderr = '';
  const io: CliIo = { out: (s) => void (stdout += s), err: (s) => void (stderr += s), env };
  let code: number = EXIT.ok;
  try {
    await buildProgram(io).parseAsync(argv, { from: 'user' });
  } catch (e) {
    if (e instanceof CliExit) code = e.exitCode;
    else if (e instanceof CommanderError) code = e.exitCode === 0 ? EXIT.ok : EXIT.invalid;
    else {
      stderr += `error: ${(e as Error).message}\n`;
      code = EXIT.failure;
    }
  }
  return { code, stdout, stderr };
}

/** Runs the real entry point (src/cli/main.ts through tsx) as a child process. */
export function spawnCli(argv: string[]): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--import', 'tsx', join(ROOT, 'src/cli/main.ts'), ...argv], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code: code ?? -1, stdout, stderr }));
  });
}

/** A `secgroup controller` child process and the port it listens on. */
export interface RunningController {
  child: ChildProcess;
  port: number;
  exited: Promise<void>;
}

/** The port of the first `listen` log line in `text` (JSON lines), if any; `text` may end in a partial line. */
function listenPort(text: string): number | null {
  for (const line of text.split('\n')) {
    try {
      const l = JSON.parse(line) as { event?: string; url?: string };
      if (l.event === 'listen' && l.url) return Number(new URL(l.url).port);
    } catch {
      // not a (complete) log line
    }
  }
  return null;
}

/**
 * Starts the controller and waits for its `listen` log line (JSON lines on
 * stderr). `logFile`: stderr is that file (appended, opened here: the
 * controller writes its lines straight into it, never waiting for a reader),
 * else a pipe whose lines after `listen` are discarded; `nodeArgs`: extra
 * node options (e.g. `--cpu-prof`).
 */
export function spawnController(configFile: string, opts: { logFile?: string; nodeArgs?: string[] } = {}): Promise<RunningController> {
  const fd = opts.logFile ? openSync(opts.logFile, 'a') : null;
  const child = spawn(process.execPath, [...(opts.nodeArgs ?? []), '--import', 'tsx', join(ROOT, 'src/cli/main.ts'), 'controller', '--config', configFile], { cwd: ROOT, stdio: ['ignore', 'ignore', fd ?? 'pipe'] });
  if (fd !== null) closeSync(fd);
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  return new Promise((resolve, reject) => {
    let buf = '';
    let poll: NodeJS.Timeout | undefined;
    const found = (port: number) => {
      clearInterval(poll);
      resolve({ child, port, exited });
    };
    if (opts.logFile) {
      const file = opts.logFile;
      poll = setInterval(() => {
        buf = readFileSync(file, 'utf8');
        const port = listenPort(buf);
        if (port !== null) found(port);
      }, 50);
    } else {
      const onData = (d: Buffer) => {
        buf += d.toString();
        const port = listenPort(buf);
        if (port === null) return;
        child.stderr!.off('data', onData);
        child.stderr!.resume();
        found(port);
      };
      child.stderr!.on('data', onData);
    }
    child.once('exit', (code) => {
      clearInterval(poll);
      reject(new Error(`the controller exited (${code}) before listening: ${buf.slice(-2000)}`));
    });
  });
}
