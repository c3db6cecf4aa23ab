/**
 * `secgroup controller --config FILE`: runs the controller until SIGTERM/SIGINT.
 * The controller code (fastify, ajv, the node:sqlite store, its schemas) is imported
 * when this command runs, not when the program starts: `secgroup agent` and
 * the policy commands never load it (in the bundle it stays unevaluated).
 */
import type { Command } from 'commander';
import { SecgroupError } from '../lib/errors.js';
import { fail } from './common.js';
import type { CliIo } from './io.js';

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
      try {
        if (opts.config === undefined) throw new SecgroupError('CONFIG_INVALID', "required option '--config <file>' not specified");
        const { loadControllerConfig } = await import('../controller/config.js');
        const config = await loadControllerConfig(opts.config);
        if (opts.check) {
          io.out(`${opts.config}: valid (listen ${config.listen.host}:${config.listen.port}, data_dir ${config.data_dir}, ${config.api.tokens.length} API token(s))\n`);
          return;
        }
        const { createController } = await import('../controller/controller.js');
        const { createLogger } = await import('../lib/logger.js');
        // under systemd, lines carry their `<N>` journal priority (src/lib/journal.ts)
        const logger = createLogger({ level: config.log.level, name: 'secgroup-controller', syslogPrefix: io.stderrIsJournal?.() ?? false });
        const { findConsoleDir } = await import('./console-dir.js');
        const consoleDir = findConsoleDir();
        if (!consoleDir) logger.warn({ event: 'console_missing' }, 'the web console is not built (npm run build): /console is not served');
        const controller = createController({ config, logger, env: io.env, consoleDir });
        await controller.start();
        // Without a signal source (tests, embedding) the command runs until the process ends.
        await (io.stopSignal?.() ?? new Promise<never>(() => {}));
        await controller.stop();
      } catch (e) {
        fail(io, e);
      }
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
      try {
        const file = /^sqlite:(.+)$/.exec(opts.from)?.[1];
        if (!file) throw new SecgroupError('CONFIG_INVALID', `--from must be sqlite:FILE (the controller.db of a stopped controller), not ${JSON.stringify(opts.from)}`);
        const { hasUrlPassword } = await import('../controller/config.js');
        if (!/^postgres(ql)?:\/\/./.test(opts.to)) throw new SecgroupError('CONFIG_INVALID', '--to must be a postgres:// or postgresql:// URL');
        if (hasUrlPassword(opts.to)) throw new SecgroupError('CONFIG_INVALID', '--to must not contain a password: set SECGROUP_STORE_PASSWORD (the value is not shown)');
        const { migrateSqliteToPostgres } = await import('../controller/store/migrate.js');
        const password = io.env.SECGROUP_STORE_PASSWORD || undefined;
        const counts = await migrateSqliteToPostgres(file, { url: opts.to, ...(password ? { password } : {}) });
        io.out(`copied ${file} into PostgreSQL and verified the row counts:\n`);
        for (const [table, n] of Object.entries(counts)) io.out(`  ${table.padEnd(17)} ${n}\n`);
      } catch (e) {
        fail(io, e);
      }
    });
}
