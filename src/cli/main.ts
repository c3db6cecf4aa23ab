#!/usr/bin/env node
/** Entry point of the `secgroup` command: the only CLI file that touches `process`. */
import { CommanderError } from 'commander';
import { buildProgram } from './program.js';
import { CliExit, EXIT, type CliIo } from './io.js';

const io: CliIo = {
  out: (s) => void process.stdout.write(s),
  err: (s) => void process.stderr.write(s),
  env: process.env,
  stopSignal: () => new Promise((resolve) => {
    for (const sig of ['SIGTERM', 'SIGINT'] as const) process.once(sig, () => resolve(sig));
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

process.exitCode = await run(process.argv.slice(2));
