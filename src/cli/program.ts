/** The `secgroup` command tree. Commands register themselves here; main.ts runs it. */
import { Command } from 'commander';
import { registerPolicyCommands } from './policy-commands.js';
import { registerPortsCommand } from './ports-command.js';
import { registerAgentCommands } from './agent-commands.js';
import { registerControllerCommand } from './controller-command.js';
import type { CliIo } from './io.js';
import { VERSION } from '../lib/version.js';

export function buildProgram(io: CliIo): Command {
  const program = new Command('secgroup')
    .description('Cloud-style security groups for Linux hosts, enforced with nftables.')
    .version(VERSION)
    .showHelpAfterError('(run with --help for usage)')
    .configureOutput({ writeOut: (s) => io.out(s), writeErr: (s) => io.err(s) })
    .exitOverride();
  registerPolicyCommands(program, io);
  registerPortsCommand(program, io);
  registerAgentCommands(program, io);
  registerControllerCommand(program, io);
  return program;
}
