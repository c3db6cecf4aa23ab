/**
 * Writes that arrive together go to the database together: a `Batcher`
 * collects items while the event loop handles the I/O already received
 * (setImmediate), then runs one `flush` over all of them, at most one flush
 * at a time; each caller's promise settles with its own item's result. An
 * idle process writes at once, a busy one groups (the PostgreSQL store's
 * agent state updates and audit events: one transaction per batch).
 */
/** Items written together: `flush` runs at most once at a time, over everything that arrived meanwhile. */
export class Batcher<I, R> {
  private pending: { item: I; resolve: (r: R) => void; reject: (e: unknown) => void }[] = [];
  private running: Promise<void> | null = null;
  private scheduled = false;

  /** `flush` returns one result per item, an Error for an item that failed alone; `onIdle` runs each time the last flush ended with nothing left to write. */
  constructor(
    private readonly flush: (items: I[]) => Promise<(R | Error)[]>,
    private readonly onIdle?: () => void,
  ) {}

  add(item: I): Promise<R> {
    return new Promise<R>((resolve, reject) => {
      this.pending.push({ item, resolve, reject });
      this.schedule();
    });
  }

  private schedule(): void {
    if (this.running || this.scheduled || !this.pending.length) return;
    this.scheduled = true;
    // after the I/O already received: an idle controller writes at once, a busy one groups
    setImmediate(() => {
      this.scheduled = false;
      const batch = this.pending;
      this.pending = [];
      this.running = this.flush(batch.map((b) => b.item)).then(
        (results) => batch.forEach((b, i) => (results[i] instanceof Error ? b.reject(results[i]) : b.resolve(results[i] as R))),
        (e: unknown) => batch.forEach((b) => b.reject(e)),
      );
      void this.running.then(() => {
        this.running = null;
        this.schedule();
        if (!this.busy) this.onIdle?.();
      });
    });
  }

  /** Something is queued or being written. */
  get busy(): boolean {
    return this.running !== null || this.scheduled || this.pending.length > 0;
  }

  /** Resolves when everything added so far is written (or failed). */
  async idle(): Promise<void> {
    while (this.running || this.scheduled || this.pending.length) {
      if (this.running) await this.running;
      else await new Promise((r) => setImmediate(r));
    }
  }
}
