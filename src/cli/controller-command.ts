/**
 * `secgroup controller --config FILE`: runs the controller until SIGTERM/SIGINT.
 * The controller code (fastify, ajv, the node:sqlite store, its schemas) is imported
 * when this command runs, not when the program starts: `secgroup agent` and
 * the policy commands never load it (in the bundle it stays unevaluated).
 */
import type { Command } from 'commander';
import { fail } from './common.js';
import type { CliIo } from './io.js';

export function registerControllerCommand(program: Command, io: CliIo): void {
  program
    .command('controller')
    .summary('run the controller: the HTTP API and the agents\' WebSocket endpoint')
    .description(
      'Serve the security group API (Huawei VPC v3 paths, docs/api.md) and /v1/agent for agents, storing ' +
        'state in DATA_DIR/controller.db. Stops gracefully on SIGTERM or SIGINT. Logs are JSON lines on stderr.',
    )
    .requiredOption('--config <file>', 'configuration file, YAML or JSON (docs/controller-config.md)')
    .option('--check', 'only validate the configuration file, then exit')
    .action(async (opts: { config: string; check?: boolean }) => {
      try {
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
        const controller = createController({ config, logger, consoleDir });
        await controller.start();
        // Without a signal source (tests, embedding) the command runs until the process ends.
        await (io.stopSignal?.() ?? new Promise<never>(() => {}));
        await controller.stop();
      } catch (e) {
        fail(io, e);
      }
    });
}
