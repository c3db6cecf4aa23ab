/**
 * Time, injected. Nothing else in src/ reads the clock or sets timers directly,
 * so tests drive time with `FakeClock`.
 */
export interface Timer {
  cancel(): void;
}

export interface Clock {
  /** milliseconds since the epoch */
  now(): number;
  /** monotonic milliseconds, for durations */
  monotonic(): number;
  setTimeout(fn: () => void, ms: number): Timer;
  setInterval(fn: () => void, ms: number): Timer;
  sleep(ms: number): Promise<void>;
}

export const systemClock: Clock = {
  now: () => Date.now(),
  monotonic: () => performance.now(),
  setTimeout(fn, ms) {
    const t = setTimeout(fn, ms);
    t.unref?.();
    return { cancel: () => clearTimeout(t) };
  },
  setInterval(fn, ms) {
    const t = setInterval(fn, ms);
    t.unref?.();
    return { cancel: () => clearInterval(t) };
  },
  sleep: (ms) => new Promise((resolve) => setTimeout(resolve, ms)),
};

/**
 * Keeps the process alive until `release()`. The system clock's timers are
 * unref'd, so a daemon whose only handles are those timers (HTTP endpoint
 * off, controller connection down between dials, or standalone) would
 * otherwise end with exit code 13 while it waits for its stop signal.
 */
export function holdProcess(): { release(): void } {
  const t = setInterval(() => undefined, 2 ** 30);
  return { release: () => clearInterval(t) };
}

interface Pending {
  at: number;
  seq: number;
  fn: () => void;
  every?: number;
  cancelled: boolean;
}

/** A clock that moves only when the test calls `advance`. */
export class FakeClock implements Clock {
  private t: number;
  private seq = 0;
  private pending: Pending[] = [];
  /** how far the wall clock was set away from the monotonic time (`jumpWall`) */
  private wallOffset = 0;

  constructor(start = 1_700_000_000_000) {
    this.t = start;
  }

  now(): number {
    return this.t + this.wallOffset;
  }

  /**
   * Sets the wall clock `ms` forward (negative: back), as an NTP step or an
   * operator's `date -s` would: `now()` jumps, `monotonic()` and the timers
   * (which run on monotonic time, as Node's do) do not move.
   */
  jumpWall(ms: number): void {
    this.wallOffset += ms;
  }

  monotonic(): number {
    return this.t;
  }

  setTimeout(fn: () => void, ms: number): Timer {
    const p: Pending = { at: this.t + Math.max(0, ms), seq: this.seq++, fn, cancelled: false };
    this.pending.push(p);
    return { cancel: () => void (p.cancelled = true) };
  }

  setInterval(fn: () => void, ms: number): Timer {
    const p: Pending = { at: this.t + Math.max(1, ms), seq: this.seq++, fn, every: Math.max(1, ms), cancelled: false };
    this.pending.push(p);
    return { cancel: () => void (p.cancelled = true) };
  }

  sleep(ms: number): Promise<void> {
    return new Promise((resolve) => this.setTimeout(resolve, ms));
  }

  /** Number of timers not yet fired or cancelled. */
  get timers(): number {
    return this.pending.filter((p) => !p.cancelled).length;
  }

  /** Moves time forward by `ms`, firing due timers in order and letting promises settle between them. */
  async advance(ms: number): Promise<void> {
    const end = this.t + ms;
    for (;;) {
      await flushMicrotasks();
      this.pending = this.pending.filter((p) => !p.cancelled);
      this.pending.sort((a, b) => a.at - b.at || a.seq - b.seq);
      const next = this.pending[0];
      if (!next || next.at > end) break;
      this.t = next.at;
      if (next.every !== undefined) next.at += next.every;
      else next.cancelled = true;
      next.fn();
    }
    this.t = end;
    await flushMicrotasks();
  }
}

async function flushMicrotasks(): Promise<void> {
  for (let i = 0; i < 20; i++) await new Promise<void>((r) => setImmediate(r));
}
