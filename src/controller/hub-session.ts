/**
 * One agent connection's state in the hub (hub.ts): what was handed out on
 * it (the bound of revisions the agent may report), the last document sent
 * (the base of deltas), its frame-rate bucket and its task queue.
 */
import type { WebSocket } from 'ws';
import type { Timer } from '../lib/clock.js';
import type { SentDocument } from './push-documents.js';
import type { StoredPolicy } from './store/store.js';

/** WebSocket close codes the hub uses (4000-4999 are application codes). */
export const CLOSE = {
  replaced: 4000,
  revoked: 4001,
  deleted: 4002,
  policyViolation: 1008,
  goingAway: 1001,
  /** RFC 6455 "Try Again Later": the controller cannot serve the hello now (its database is unavailable) */
  tryAgainLater: 1013,
} as const;

export class Session {
  helloed = false;
  alive = true;
  lastSeenMs: number;
  /**
   * The highest revision sent on this connection, or that the agent said at
   * hello it has applied when that is the current one: nothing at or below it
   * is ever pushed (a catch-up must not send the agent what it has).
   */
  lastSentRevision = -1;
  /** the instance's stored revision at hello (-1: none): with `lastSentRevision`, the bound of revisions the agent may report */
  handedOut = -1;
  /** the bound above when the store was last asked for a higher one (see `handedOut()`) */
  storeCheckedAt = -2;
  /** the newest document handed over by `notify` and not yet sent (null: none, or read it from the store) */
  pending: StoredPolicy | null = null;
  /** the last document sent, when deltas are enabled */
  lastDoc: SentDocument | null = null;
  queue: Promise<void> = Promise.resolve();
  tokens: number;
  /** frames the agent owes us (one ack per policy or delta sent): they do not draw on the rate limit */
  answers = 0;
  /** clock.monotonic() of the last refill */
  refilledAt: number;
  helloTimer: Timer | null = null;
  closed: Promise<void>;

  constructor(
    readonly key: string,
    readonly projectId: string,
    readonly instanceId: string,
    readonly ws: WebSocket,
    now: number,
    monotonicNow: number,
    burst: number,
  ) {
    this.lastSeenMs = now;
    this.tokens = burst;
    this.refilledAt = monotonicNow;
    this.closed = new Promise((resolve) => ws.once('close', () => resolve()));
  }
}

export function sessionKey(projectId: string, instanceId: string): string {
  return `${projectId}\u0000${instanceId}`;
}
