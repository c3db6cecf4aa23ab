/**
 * `secgroup controller --config FILE`: runs the controller until SIGTERM/SIGINT; `secgroup controller migrate`.
 * Only the options are declared here: what the commands do is in controller-main.ts, imported when one of them
 * runs, not when the program starts. In the bundle that is a file of its own (scripts/bundle.mjs): `secgroup agent`
 * and the policy commands neither load nor keep the controller's code.
 */
import type { Command } from 'commander';
import { CliExit, EXIT, type CliIo } from './io.js';

/** Ends the command with `code` (run.ts turns CliExit into the process's exit code). */
function exitWith(code: number): void {
  if (code !== EXIT.ok) throw new CliExit(code);
}

export function registerControllerCommand(program: Command, io: CliIo): void {
  const controller = program
    .command('controller')
    .summary('run the controller: the HTTP API and the agents\' WebSocket endpoint')
    .description(
      'Serve the security group API (Huawei VPC v3 paths, docs/api.md) and /v1/agent for agents, storing ' +
        'state in DATA_DIR/controller.db (or in PostgreSQL: store.driver postgres, docs/ha.md). Stops gracefully on SIGTERM or SIGINT. Logs are JSON lines on stderr.',
    )
    // not a required option: `controller migrate` does without it
    .option('--config <file>', 'configuration file, YAML or JSON (docs/controller-config.md); required')
    .option('--check', 'only validate the configuration file, then exit')
    .action(async (opts: { config?: string; check?: boolean }) => {
      const { runController } = await import('./controller-main.js');
      exitWith(await runController(opts, io));
    });

  controller
    .command('migrate')
    .summary('copy an embedded controller\'s state into an empty PostgreSQL database')
    .description(
      'Copy everything of a stopped SQLite controller (groups, rules, address groups, instances and their token hashes, ' +
        'policy documents with their revisions, the revision counter, agent state, audit trail) into an empty PostgreSQL ' +
        'database in one transaction, verify the row counts and print them (docs/ha.md). The password comes from ' +
        'SECGROUP_STORE_PASSWORD, never from the URL.',
    )
    .requiredOption('--from <source>', 'sqlite:FILE, the controller.db of a stopped controller')
    .requiredOption('--to <url>', 'postgres://USER@HOST:PORT/DATABASE (an empty database)')
    .action(async (opts: { from: string; to: string }) => {
      const { runMigrate } = await import('./controller-main.js');
      exitWith(await runMigrate(opts, io));
    });
}
