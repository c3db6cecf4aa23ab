/**
 * How a hub learns of policies committed through other replicas (issue 16,
 * docs/protocol.md "Several controllers"): on every hint of the change feed
 * (change-feed.ts) it reads from the store the policies handed out after its
 * watermark (`policiesChangedSince`, page by page), offers each one to the hub
 * and advances the watermark. The feed only says "look"; what to push is read
 * from the store, so a lost hint costs a delay until the next one (a 'resync'
 * after the feed reconnects), never a change.
 *
 * Hints arriving while a catch-up runs are merged into one more run. A
 * failed run (store unavailable) keeps the watermark: the next hint retries
 * from it. The watermark starts at the revision counter when the hub starts
 * (agents connecting later read their current document at hello); if the
 * store cannot say, at 0 (the first catch-up then reads every policy once).
 * After a 'resync' (this replica's feed was down) the catch-up is followed by
 * an announcement of the newest revision: announcements this replica made
 * while its feed was down were lost, and the other replicas may have resynced
 * before it came back.
 * Paging by revision needs revisions to become visible in the order they are
 * handed out: every store hands them out from one counter whose update is
 * part of the committing transaction (a row lock held until commit), so a
 * reader that sees revision n also sees every revision below it.
 */
import { errorMessage } from '../lib/errors.js';
import type { Logger } from '../lib/logger.js';
import type { ChangeFeed } from './change-feed.js';
import type { PolicyChange, Store } from './store/store.js';

/** policies read per query (the contract's page size) */
export const CATCH_UP_PAGE = 1000;

export interface CatchUpOptions {
  store: Store;
  feed: ChangeFeed;
  logger: Logger;
  /** policies handed out after the watermark (one page): the hub pushes those whose agent is here and lacks them */
  offer: (changes: readonly PolicyChange[]) => void;
}

export class ReplicaCatchUp {
  private mark: number | null = null;
  private started: Promise<void> | null = null;
  private running: Promise<void> | null = null;
  private again = false;
  private unsubscribe: (() => void) | null = null;
  private stopped = false;

  constructor(private readonly o: CatchUpOptions) {}

  /** the highest revision looked at so far (null: not known yet) */
  get watermark(): number | null {
    return this.mark;
  }

  start(): void {
    this.started = this.o.store.revisionCounter().then(
      (n) => {
        this.mark ??= n;
      },
      (e: unknown) => {
        this.mark ??= 0;
        this.o.logger.warn({ event: 'catch_up_start', err: e }, `cannot read the revision counter (${errorMessage(e)}): the first catch-up reads every policy`);
      },
    );
    this.unsubscribe = this.o.feed.subscribe((hint) => {
      const done = this.run();
      // the feed was down: what this replica announced meanwhile is lost too, and the others may have resynced
      // before it came back: announce the newest revision again, so they catch up on it
      if (hint.kind === 'resync') void done.then(() => this.mark && !this.stopped && this.o.feed.announce(this.mark));
    });
  }

  /** Runs a catch-up now, or once more after the running one. Resolves when no run is left. */
  run(): Promise<void> {
    if (this.stopped) return Promise.resolve();
    if (this.running) {
      this.again = true;
      return this.running;
    }
    this.running = (async () => {
      await this.started;
      do {
        this.again = false;
        try {
          await this.drain();
        } catch (e) {
          this.o.logger.warn({ event: 'catch_up_failed', watermark: this.mark, err: e }, `cannot read policies changed by other replicas: ${errorMessage(e)} (retried on the next hint)`);
        }
      } while (this.again && !this.stopped);
    })().finally(() => {
      this.running = null;
    });
    return this.running;
  }

  private async drain(): Promise<void> {
    for (;;) {
      const page = await this.o.store.policiesChangedSince(this.mark ?? 0, CATCH_UP_PAGE);
      if (page.length) this.o.offer(page);
      if (page.length) this.mark = page[page.length - 1]!.revision;
      if (page.length < CATCH_UP_PAGE || this.stopped) return;
    }
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.unsubscribe?.();
    await this.running;
  }
}
