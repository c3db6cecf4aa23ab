/**
 * Server-side timings of `bench api-writes` (the diagnosis of issue 16's
 * write stalls): a `Store` wrapper that records, per mutation, how long it
 * waited before its change ran (queue: the group-commit batch forming, or
 * the project lock), how long the change ran (`decide`: the mutation, its
 * compile and everything the service does before the store writes) and the
 * whole `mutate` call (queue + the transaction and its commit); the sizes of
 * the batches whose changes ran in one synchronous stretch (SQLite's group
 * commit); the event loop's delay (perf_hooks.monitorEventLoopDelay), GC
 * pauses (PerformanceObserver 'gc'), and each HTTP request from its arrival
 * at the server (`request` event) to its answer written (`finish`). `take()` answers the figures since the
 * last `take()`. Bench code only: it reads the wall clock.
 */
import type { Server } from 'node:http';
import { monitorEventLoopDelay, PerformanceObserver } from 'node:perf_hooks';
import type { ChangeFn, Store } from '../src/controller/store/store.js';

export interface WriteStats {
  /** store transactions: the service commits the writes that arrive together in one */
  'store mutations': number;
  'queue p50/p99 ms': string;
  'decide p50/p99 ms': string;
  'mutate p50/p99/max ms': string;
  'request p50/p99/max ms': string;
  'batches (mean / max size)': string;
  'loop delay p50/p99/max ms': string;
  'gc ms (pauses, max)': string;
}

const q = (xs: number[], p: number): number => {
  if (!xs.length) return 0;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(p * s.length))]!;
};
const f = (x: number) => (Math.round(x * 10) / 10).toString();

export class WriteTrace {
  readonly store: Store;
  private queue: number[] = [];
  private decide: number[] = [];
  private total: number[] = [];
  private batches: number[] = [];
  private requests: number[] = [];
  private inBatch = false;
  private gc: number[] = [];
  private readonly loop: ReturnType<typeof monitorEventLoopDelay> = monitorEventLoopDelay({ resolution: 5 });
  private readonly gcObserver = new PerformanceObserver((list) => {
    for (const e of list.getEntries()) this.gc.push(e.duration);
  });

  constructor(inner: Store) {
    const mutate = async <T>(projectId: string, change: ChangeFn<T>) => {
      const t0 = performance.now();
      const traced: ChangeFn<T> = (cur) => {
        const t1 = performance.now();
        this.queue.push(t1 - t0);
        if (!this.inBatch) {
          this.inBatch = true;
          this.batches.push(0);
          queueMicrotask(() => (this.inBatch = false));
        }
        this.batches[this.batches.length - 1]!++;
        try {
          return change(cur);
        } finally {
          this.decide.push(performance.now() - t1);
        }
      };
      try {
        return await inner.mutate(projectId, traced);
      } finally {
        this.total.push(performance.now() - t0);
      }
    };
    this.store = new Proxy(inner, {
      get: (target, key, receiver) => {
        if (key === 'mutate') return mutate;
        const v = Reflect.get(target, key, receiver) as unknown;
        return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
      },
    });
    this.loop.enable();
    this.gcObserver.observe({ entryTypes: ['gc'] });
  }

  take(): WriteStats {
    const ms = (ns: number) => ns / 1e6;
    const stats: WriteStats = {
      'store mutations': this.total.length,
      'queue p50/p99 ms': `${f(q(this.queue, 0.5))} / ${f(q(this.queue, 0.99))}`,
      'decide p50/p99 ms': `${f(q(this.decide, 0.5))} / ${f(q(this.decide, 0.99))}`,
      'mutate p50/p99/max ms': `${f(q(this.total, 0.5))} / ${f(q(this.total, 0.99))} / ${f(Math.max(0, ...this.total))}`,
      'request p50/p99/max ms': `${f(q(this.requests, 0.5))} / ${f(q(this.requests, 0.99))} / ${f(Math.max(0, ...this.requests))}`,
      'batches (mean / max size)': `${this.batches.length} (${f(this.batches.reduce((a, b) => a + b, 0) / (this.batches.length || 1))} / ${Math.max(0, ...this.batches)})`,
      'loop delay p50/p99/max ms': `${f(ms(this.loop.percentile(50)))} / ${f(ms(this.loop.percentile(99)))} / ${f(ms(this.loop.max))}`,
      'gc ms (pauses, max)': `${f(this.gc.reduce((a, b) => a + b, 0))} (${this.gc.length}, ${f(Math.max(0, ...this.gc))})`,
    };
    this.queue = [];
    this.decide = [];
    this.total = [];
    this.batches = [];
    this.requests = [];
    this.gc = [];
    this.loop.reset();
    return stats;
  }

  /** Times the server's requests from arrival to answer. */
  watch(server: Server): void {
    server.on('request', (_req, res) => {
      const t0 = performance.now();
      res.once('finish', () => this.requests.push(performance.now() - t0));
    });
  }

  stop(): void {
    this.loop.disable();
    this.gcObserver.disconnect();
  }
}
