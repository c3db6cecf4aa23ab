/**
 * How controller replicas tell each other that policies changed (issue 16):
 * a hint only, the store stays the truth. On any hint the hub catches up with
 * `Store.policiesChangedSince(watermark, ...)`. PostgreSQL: LISTEN/NOTIFY
 * (store/postgres-feed.ts).
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
