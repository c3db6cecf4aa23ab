/**
 * How controller replicas tell each other that policies changed (issue 16).
 * A feed carries hints only: the store is the truth, and a replica that gets
 * a hint reads what changed from it (`Store.policiesChangedSince`, by its
 * watermark), so a lost hint delays a push but never loses it once the next
 * hint ('resync' after a reconnect) arrives.
 *
 * Implementations: `noopFeed` for the single-process controller (SQLite: the
 * commit path pushes directly, there is nobody to tell), `MemoryFeedBus` for
 * tests (several feeds in one process, messages dropped on demand), and the
 * PostgreSQL feed on LISTEN/NOTIFY (store/postgres-feed.ts).
 */

/** Hints that other replicas committed policy changes; never carries data that must not be lost (the store is the truth). */
export type FeedHint = { kind: 'revision'; revision: number } | { kind: 'resync' };

export interface ChangeFeed {
  /** After a local commit that handed out revisions: tell the other replicas (PostgreSQL: pg_notify('secgroup_policy', String(revision))). */
  announce(revision: number): void;
  /** 'revision' per announcement from any replica (own ones included is fine); 'resync' after (re)connecting, when announcements may have been lost. */
  subscribe(listener: (hint: FeedHint) => void): () => void;
  close(): Promise<void>;
}

/** The feed of a controller that is the only one: announcements go nowhere, no hint ever arrives. */
export const noopFeed: ChangeFeed = {
  announce: () => {},
  subscribe: () => () => {},
  close: async () => {},
};

/**
 * Feeds in one process sharing a bus, as replicas share a database: an
 * announcement reaches every open feed (its own included) on a later tick,
 * unless the bus is told to drop it. `resync()` stands for every feed
 * reconnecting.
 */
export class MemoryFeedBus {
  private readonly feeds = new Set<MemoryFeed>();
  /** announcements still to drop (`dropNext`) */
  private dropping = 0;
  /** announcements dropped so far */
  dropped = 0;
  /** announcements delivered so far */
  delivered = 0;

  /** A new feed on this bus (a replica connecting). */
  feed(): ChangeFeed {
    const f = new MemoryFeed(this);
    this.feeds.add(f);
    return f;
  }

  /** The next `n` announcements reach no feed (lost notifications); 0 delivers again. */
  dropNext(n = 1): void {
    this.dropping = n;
  }

  /** Every open feed, or only `feed`, gets a 'resync' hint (as after a reconnect). */
  resync(feed?: ChangeFeed): void {
    for (const f of this.feeds) if (!feed || f === feed) f.emit({ kind: 'resync' });
  }

  /** @internal */
  publish(revision: number): void {
    if (this.dropping > 0) {
      this.dropping--;
      this.dropped++;
      return;
    }
    this.delivered++;
    // asynchronous like a database notification: never inside the committing call
    queueMicrotask(() => {
      for (const f of this.feeds) f.emit({ kind: 'revision', revision });
    });
  }

  /** @internal */
  remove(f: MemoryFeed): void {
    this.feeds.delete(f);
  }
}

class MemoryFeed implements ChangeFeed {
  private readonly listeners = new Set<(hint: FeedHint) => void>();
  private closed = false;

  constructor(private readonly bus: MemoryFeedBus) {}

  announce(revision: number): void {
    if (!this.closed) this.bus.publish(revision);
  }

  subscribe(listener: (hint: FeedHint) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  emit(hint: FeedHint): void {
    for (const l of this.listeners) l(hint);
  }

  async close(): Promise<void> {
    this.closed = true;
    this.listeners.clear();
    this.bus.remove(this);
  }
}
