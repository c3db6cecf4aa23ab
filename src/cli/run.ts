/**
 * The `secgroup` command run against the real process: the only CLI file that
 * touches `process`. Entry points: main.ts (node, the bundle) and sea.ts (the
 * single executable, CommonJS without top-level await).
 */
import { fstatSync } from 'node:fs';
import { CommanderError } from 'commander';
import { stderrIsJournal } from '../lib/journal.js';
import { buildProgram } from './program.js';
import { CliExit, EXIT, type CliIo } from './io.js';

const io: CliIo = {
  out: (s) => void process.stdout.write(s),
  err: (s) => void process.stderr.write(s),
  env: process.env,
  pid: process.pid,
  stderrIsJournal: () => {
    try {
      return stderrIsJournal(process.env.JOURNAL_STREAM, fstatSync(2, { bigint: true }));
    } catch {
      return false;
    }
  },
  // `on`, not `once`: execa's child cleanup (signal-exit) re-raises a signal when its handler is the last one left,
  // so a `once` handler removed by the first SIGTERM let a stop that came while an `ss` or `nft` child ran end
  // the process with 143 before the agent had stopped (seen in the kernel fault suite)
  stopSignal: () => new Promise((resolve) => {
    for (const sig of ['SIGTERM', 'SIGINT'] as const) process.on(sig, () => resolve(sig));
  }),
};

export async function run(argv: string[], cliIo: CliIo = io): Promise<number> {
  const program = buildProgram(cliIo);
  try {
    await program.parseAsync(argv, { from: 'user' });
    return EXIT.ok;
  } catch (e) {
    if (e instanceof CliExit) return e.exitCode;
    if (e instanceof CommanderError) return e.exitCode === 0 ? EXIT.ok : EXIT.invalid;
    cliIo.err(`error: ${(e as Error).message}\n`);
    return EXIT.failure;
  }
}
