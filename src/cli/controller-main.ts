/**
 * What `secgroup controller` and `secgroup controller migrate` do (their options are declared in
 * controller-command.ts, which loads this file only when one of them runs). In the bundle this file and everything
 * only it imports (the controller: fastify, ajv, pg, the node:sqlite store, the API's schemas) are a second file,
 * secgroup-controller.cjs, or in the single executable an asset of it (scripts/bundle.mjs): the agent neither loads
 * nor keeps the controller's code (~2 MB of its RSS, bench/README.md "Issue 18 round 5").
 *
 * That part carries its own copies of the modules it shares with the rest (the error classes among them), so what
 * crosses over is plain: the CliIo in, an exit code out. Errors are printed here, as every command prints them.
 */
import { SecgroupError } from '../lib/errors.js';
import { fail } from './common.js';
import { CliExit, EXIT, type CliIo } from './io.js';

export interface ControllerOptions {
  config?: string;
  check?: boolean;
}

export interface MigrateOptions {
  from: string;
  to: string;
}

/** Runs `body`; an error is printed as every command prints it and becomes the exit code. */
async function exitCode(io: CliIo, body: () => Promise<void>): Promise<number> {
  try {
    await body();
    return EXIT.ok;
  } catch (e) {
    try {
      fail(io, e);
    } catch (exit) {
      if (exit instanceof CliExit) return exit.exitCode;
      throw exit;
    }
  }
}

/** `secgroup controller --config FILE [--check]`: runs the controller until SIGTERM/SIGINT. */
export function runController(opts: ControllerOptions, io: CliIo): Promise<number> {
  return exitCode(io, async () => {
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
  });
}

/** `secgroup controller migrate --from sqlite:FILE --to postgres://...` */
export function runMigrate(opts: MigrateOptions, io: CliIo): Promise<number> {
  return exitCode(io, async () => {
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
  });
}
