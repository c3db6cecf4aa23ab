/**
 * `createController(deps)`: the controller as a startable object. `start()`
 * opens the store (unless one was given), serves the HTTP API and the agent
 * WebSocket on one port, and returns where it listens; `stop()` closes agent
 * connections, drains HTTP requests and closes what it opened. Nothing here
 * reads `process`; `secgroup controller` (src/cli) wires signals to `stop()`.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { AddressInfo } from 'node:net';
import type { FastifyInstance } from 'fastify';
import { systemClock, type Clock } from '../lib/clock.js';
import { createLogger, type Logger } from '../lib/logger.js';
import { SecgroupError } from '../lib/errors.js';
import { ensurePrivateDir, tightenFile } from '../lib/private-files.js';
import { cronSchedulerOn, type Scheduler } from '../lib/scheduler.js';
import { AGENT_PATH } from '../protocol/messages.js';
import type { AccessKey } from './api/aksk.js';
import { buildApi, type ApiToken } from './api/app.js';
import { AuditRecorder } from './audit.js';
import type { ControllerConfig } from './config.js';
import { ProjectEvents } from './events.js';
import { AgentHub } from './hub.js';
import { AcceptRateLimiter, AuthFailureLimiter } from './limits.js';
import { createMetrics, type ControllerMetrics } from './metrics.js';
import { ControllerService } from './service.js';
import { openSqliteStore } from './store/sqlite.js';
import type { Store } from './store/store.js';
import { cryptoRandom, hashToken, type Random } from './tokens.js';
import type { ChangeFeed } from './change-feed.js';

export interface ControllerDeps {
  config: ControllerConfig;
  clock?: Clock;
  logger?: Logger;
  /**
   * default: as `config.store.driver` says (SQLite file `controller.db` in
   * `config.data_dir`, or PostgreSQL at `config.store.url`), opened by
   * start() and closed by stop()
   */
  store?: Store;
  /** the environment (SECGROUP_STORE_PASSWORD); default none */
  env?: Readonly<Record<string, string | undefined>>;
  random?: Random;
  /** runs audit retention (default: cron on `clock`) */
  scheduler?: Scheduler;
  /** the built web console served at /console (the CLI finds it: src/cli/console-dir.ts); none: /console says it is not built */
  consoleDir?: string | null;
  /**
   * hints of policy changes committed by other replicas on the same database
   * (change-feed.ts); none: this controller is the only one. A given feed is
   * the caller's to close.
   */
  feed?: ChangeFeed;
  /** this replica's name in agent states (default: a random uuid with a feed, `local` without) */
  replicaId?: string;
}

export interface ControllerAddress {
  host: string;
  port: number;
  /** base URL of the HTTP API, e.g. http://127.0.0.1:8443 */
  url: string;
  /** the agents' endpoint, e.g. ws://127.0.0.1:8443/v1/agent */
  agentUrl: string;
}

export interface Controller {
  start(): Promise<ControllerAddress>;
  stop(): Promise<void>;
  /** the fastify app (for `inject`); available after start() */
  readonly app: FastifyInstance;
  readonly hub: AgentHub;
  /** the audit trail recorder; available after start() */
  readonly audit: AuditRecorder;
  readonly metrics: ControllerMetrics;
}

export const DB_FILE = 'controller.db';

export function apiTokens(config: ControllerConfig): ApiToken[] {
  return config.api.tokens.map((t) => ({ name: t.name, sha256: t.token_sha256 ?? hashToken(t.token!), projects: t.projects }));
}

/**
 * The configured access keys with their secrets: `secret_key_file` is read
 * (one line; a trailing newline is dropped) after being made 0600 if others
 * could read it (warn line `file_mode_tightened`). Throws CONFIG_INVALID
 * naming the entry and the file, never the secret.
 */
export async function readAccessKeys(config: ControllerConfig, logger?: Logger): Promise<AccessKey[]> {
  const keys: AccessKey[] = [];
  for (const [i, k] of config.api.access_keys.entries()) {
    let secret = k.secret_key;
    if (secret === undefined) {
      const file = k.secret_key_file!;
      secret = await readSecretFile(file, `api.access_keys[${i}].secret_key_file`, logger);
      if (secret.length < 16 || secret.length > 1024 || /[\r\n]/.test(secret)) {
        throw new SecgroupError('CONFIG_INVALID', `api.access_keys[${i}].secret_key_file ${file}: the secret key must be one line of 16-1024 characters`);
      }
    }
    keys.push({ name: k.name, access_key: k.access_key, secret_key: secret, projects: k.projects });
  }
  return keys;
}

/** A secret file's content without its trailing newline, after making it 0600 if others could read it; CONFIG_INVALID naming `what` and the file. */
async function readSecretFile(file: string, what: string, logger?: Logger): Promise<string> {
  try {
    tightenFile(file, logger);
    return (await readFile(file, 'utf8')).replace(/\r?\n$/, '');
  } catch (e) {
    throw new SecgroupError('CONFIG_INVALID', `cannot read ${what} ${file}: ${(e as Error).message}`, { cause: e });
  }
}

/** The PostgreSQL password: `store.password_file`, else SECGROUP_STORE_PASSWORD, else none (e.g. peer or certificate authentication). */
export async function readStorePassword(config: ControllerConfig, env: Readonly<Record<string, string | undefined>>, logger?: Logger): Promise<string | undefined> {
  if (config.store.password_file !== undefined) return readSecretFile(config.store.password_file, 'store.password_file', logger);
  return env.SECGROUP_STORE_PASSWORD || undefined;
}

/**
 * The store `config.store.driver` names, with its change feed: PostgreSQL's
 * LISTEN/NOTIFY for replicas on one database, none for the embedded SQLite
 * store (one controller). Logs `store_open` (driver, where; never a password).
 */
async function openConfiguredStore(config: ControllerConfig, env: Readonly<Record<string, string | undefined>>, clock: Clock, logger: Logger): Promise<{ store: Store; feed: ChangeFeed | null }> {
  if (config.store.driver === 'postgres') {
    const password = await readStorePassword(config, env, logger);
    const url = new URL(config.store.url!);
    // loaded only for this driver: an embedded controller never loads pg
    const { openPostgresStore, postgresClientConfig } = await import('./store/postgres.js');
    const { createPostgresFeed } = await import('./store/postgres-feed.js');
    logger.info({ event: 'store_open', driver: 'postgres', host: url.searchParams.get('host') ?? url.host, database: url.pathname.slice(1), pool_size: config.store.pool_size, statement_timeout_ms: config.store.statement_timeout_ms, lock_timeout_ms: config.store.lock_timeout_ms }, 'opening the PostgreSQL store');
    const options = {
      url: config.store.url!,
      password,
      poolSize: config.store.pool_size,
      connectTimeoutMs: config.store.connect_timeout_ms,
      statementTimeoutMs: config.store.statement_timeout_ms,
      lockTimeoutMs: config.store.lock_timeout_ms,
      logger,
    };
    const store = await openPostgresStore(options);
    return { store, feed: createPostgresFeed({ client: postgresClientConfig(options), clock, logger }) };
  }
  ensurePrivateDir(config.data_dir, logger);
  const file = join(config.data_dir, DB_FILE);
  logger.info({ event: 'store_open', driver: 'sqlite', file }, 'opening the SQLite store');
  return { store: openSqliteStore(file, { synchronous: config.store.synchronous, logger }), feed: null };
}

export function createController(deps: ControllerDeps): Controller {
  const { config } = deps;
  const clock = deps.clock ?? systemClock;
  const logger = deps.logger ?? createLogger({ level: config.log.level, name: 'secgroup-controller' });
  const random = deps.random ?? cryptoRandom;
  const metrics = createMetrics({ defaultMetrics: config.metrics.process_metrics });
  let app: FastifyInstance | null = null;
  let hub: AgentHub | null = null;
  let audit: AuditRecorder | null = null;
  let ownStore: Store | null = null;
  let ownFeed: ChangeFeed | null = null;
  let stopped: Promise<void> | null = null;

  return {
    get app() {
      if (!app) throw new SecgroupError('INTERNAL', 'the controller is not started');
      return app;
    },
    get hub() {
      if (!hub) throw new SecgroupError('INTERNAL', 'the controller is not started');
      return hub;
    },
    get audit() {
      if (!audit) throw new SecgroupError('INTERNAL', 'the controller is not started');
      return audit;
    },
    metrics,

    async start(): Promise<ControllerAddress> {
      if (app) throw new SecgroupError('INTERNAL', 'the controller is already started');
      // secrets first: a bad key file fails the start before anything is opened
      const accessKeys = await readAccessKeys(config, logger);
      let store = deps.store;
      let feed = deps.feed ?? null;
      if (!store) {
        const opened = await openConfiguredStore(config, deps.env ?? {}, clock, logger);
        store = ownStore = opened.store;
        feed ??= ownFeed = opened.feed;
      }
      let https: { cert: Buffer; key: Buffer } | null = null;
      if (config.tls) {
        try {
          https = { cert: await readFile(config.tls.cert), key: await readFile(config.tls.key) };
        } catch (e) {
          throw new SecgroupError('CONFIG_INVALID', `cannot read the TLS certificate or key: ${(e as Error).message}`, { cause: e });
        }
      }
      // one budget of failed authentications per source address for the API and the agents' upgrades
      const authLimiter = new AuthFailureLimiter(clock, { perMinute: config.http.auth_failures_per_minute, burst: config.http.auth_failure_burst });
      // live events for the console: the hub's instance state and port reports, the API's writes
      const events = new ProjectEvents();
      const recorder = (audit = new AuditRecorder({ store, clock, logger, random, retentionDays: config.audit.retention_days, events }));
      await recorder.startRetention(deps.scheduler ?? cronSchedulerOn(clock));
      const theHub = (hub = new AgentHub({
        audit: recorder,
        store,
        clock,
        logger,
        metrics,
        heartbeatIntervalMs: config.agents.heartbeat_interval_ms,
        helloTimeoutMs: config.agents.hello_timeout_ms,
        maxMessageBytes: config.agents.max_message_bytes,
        rate: { burst: config.agents.rate_burst, perSecond: config.agents.rate_per_second },
        deltas: config.agents.deltas,
        maxUnsentBytes: config.agents.max_unsent_bytes,
        authLimiter,
        events,
        acceptLimiter: new AcceptRateLimiter(clock, config.agents.accept_rate_per_s),
        ...(feed ? { feed, replicaId: deps.replicaId ?? random.uuid() } : deps.replicaId ? { replicaId: deps.replicaId } : {}),
      }));
      const service = new ControllerService({
        store,
        clock,
        logger,
        quotas: config.quotas,
        random,
        onPolicyChanged: (project, ids, docs) => theHub.notify(project, ids, docs),
        onCompiled: ({ compiled, bumped }) => {
          metrics.policiesCompiled.inc(compiled);
          metrics.revisionsBumped.inc(bumped);
        },
      });
      app = buildApi({ audit: recorder, service, store, presence: theHub, tokens: apiTokens(config), accessKeys, clock, logger, metrics, random, maxBodyBytes: config.api.max_body_bytes, https, http: config.http, authLimiter, events, consoleDir: deps.consoleDir ?? null });
      theHub.attach(app.server);
      await app.listen({ host: config.listen.host, port: config.listen.port });
      const addr = app.server.address() as AddressInfo;
      const host = addr.family === 'IPv6' ? `[${addr.address}]` : addr.address;
      const address: ControllerAddress = {
        host: addr.address,
        port: addr.port,
        url: `${https ? 'https' : 'http'}://${host}:${addr.port}`,
        agentUrl: `${https ? 'wss' : 'ws'}://${host}:${addr.port}${AGENT_PATH}`,
      };
      logger.info({ event: 'listen', url: address.url, agents: address.agentUrl, tls: !!https, replica: theHub.replicaId }, 'controller listening');
      return address;
    },

    stop(): Promise<void> {
      stopped ??= (async () => {
        logger.info({ event: 'stop' }, 'controller stopping');
        audit?.stop();
        await hub?.stop();
        await app?.close();
        await audit?.idle();
        await ownFeed?.close();
        await ownStore?.close();
        logger.info({ event: 'stopped' }, 'controller stopped');
      })();
      return stopped;
    },
  };
}
