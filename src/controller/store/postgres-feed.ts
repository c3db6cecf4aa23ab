/**
 * The change feed (../change-feed.ts) over PostgreSQL LISTEN/NOTIFY on a
 * dedicated connection (not the store's pool: a LISTEN lives as long as its
 * connection). `announce` is `pg_notify('secgroup_policy', revision)`; each
 * notification, the replica's own included, becomes a 'revision' hint.
 *
 * Notifications are lost while the connection is down (and PostgreSQL drops
 * them for a listener that is away), so after every (re)connect the feed
 * emits 'resync' and the hub catches up from the store by revision. A lost
 * connection is re-opened with doubling backoff (initialMs .. maxMs, on the
 * injected clock) until `close()`. An announcement while disconnected is
 * dropped (logged at debug): the others' next resync covers it.
 *
 * Log lines: `feed_connected` (info), `feed_connection_lost` and
 * `feed_connect_failed` (warn, with the retry delay); never the password.
 */
import pg from 'pg';
import type { Clock, Timer } from '../../lib/clock.js';
import type { Logger } from '../../lib/logger.js';
import type { ChangeFeed, FeedHint } from '../change-feed.js';

export const FEED_CHANNEL = 'secgroup_policy';

export interface PostgresFeedOptions {
  /** the connection settings (`postgresClientConfig` of the store's options) */
  client: pg.ClientConfig;
  clock: Clock;
  logger: Logger;
  /** reconnect delays: doubling from `initialMs` up to `maxMs` (default 100 .. 5000) */
  backoff?: { initialMs: number; maxMs: number };
}

class PostgresFeed implements ChangeFeed {
  private client: pg.Client | null = null;
  private readonly listeners = new Set<(hint: FeedHint) => void>();
  private closed = false;
  private failures = 0;
  private retry: Timer | null = null;

  constructor(private readonly opts: PostgresFeedOptions) {
    void this.connect();
  }

  private emit(hint: FeedHint): void {
    for (const l of [...this.listeners]) {
      try {
        l(hint);
      } catch (e) {
        this.opts.logger.error({ event: 'feed_listener_failed', error: (e as Error).message }, 'a change feed listener threw');
      }
    }
  }

  private async connect(): Promise<void> {
    this.retry = null;
    if (this.closed) return;
    const c = new pg.Client(this.opts.client);
    let gone = false;
    const lost = (e?: Error) => {
      if (gone) return;
      gone = true;
      if (this.client === c) this.client = null;
      void c.end().catch(() => undefined);
      if (this.closed) return;
      this.opts.logger.warn({ event: 'feed_connection_lost', error: e?.message ?? 'connection ended', retry_ms: this.delay() }, 'the change feed lost its PostgreSQL connection; reconnecting');
      this.scheduleRetry();
    };
    c.on('error', lost);
    c.on('end', () => lost());
    c.on('notification', (n) => {
      if (n.channel !== FEED_CHANNEL) return;
      const revision = Number(n.payload);
      if (Number.isSafeInteger(revision) && revision > 0) this.emit({ kind: 'revision', revision });
    });
    try {
      await c.connect();
      await c.query(`LISTEN ${FEED_CHANNEL}`);
    } catch (e) {
      if (gone) return; // `lost` already scheduled the retry
      gone = true;
      void c.end().catch(() => undefined);
      if (this.closed) return;
      this.opts.logger.warn({ event: 'feed_connect_failed', error: (e as Error).message, retry_ms: this.delay() }, 'the change feed cannot reach PostgreSQL; retrying');
      this.scheduleRetry();
      return;
    }
    if (this.closed || gone) {
      if (!gone) void c.end().catch(() => undefined);
      return;
    }
    this.client = c;
    this.failures = 0;
    this.opts.logger.info({ event: 'feed_connected', channel: FEED_CHANNEL }, 'change feed listening');
    // announcements may have been missed while disconnected (or before the first connect)
    this.emit({ kind: 'resync' });
  }

  private delay(): number {
    const { initialMs, maxMs } = this.opts.backoff ?? { initialMs: 100, maxMs: 5000 };
    return Math.min(maxMs, initialMs * 2 ** Math.min(this.failures, 30));
  }

  private scheduleRetry(): void {
    if (this.closed || this.retry) return;
    const ms = this.delay();
    this.failures++;
    this.retry = this.opts.clock.setTimeout(() => void this.connect(), ms);
  }

  announce(revision: number): void {
    const c = this.client;
    if (!c) {
      this.opts.logger.debug({ event: 'feed_announce_dropped', revision }, 'change feed disconnected: announcement dropped (the others resync on reconnect)');
      return;
    }
    c.query('SELECT pg_notify($1, $2)', [FEED_CHANNEL, String(revision)]).catch((e: unknown) =>
      this.opts.logger.debug({ event: 'feed_announce_dropped', revision, error: (e as Error).message }, 'change feed announcement failed'),
    );
  }

  subscribe(listener: (hint: FeedHint) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  async close(): Promise<void> {
    this.closed = true;
    this.retry?.cancel();
    this.retry = null;
    this.listeners.clear();
    const c = this.client;
    this.client = null;
    await c?.end().catch(() => undefined);
  }
}

/** Starts connecting at once; the first 'resync' tells the connection is up. */
export function createPostgresFeed(opts: PostgresFeedOptions): ChangeFeed {
  return new PostgresFeed(opts);
}
