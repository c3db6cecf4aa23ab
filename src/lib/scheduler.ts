/**
 * Periodic jobs on a cron schedule (node-cron), injected like the clock: the
 * agent asks a `Scheduler`, tests use `ManualScheduler` and fire jobs by hand.
 */
import cron from 'node-cron';

export interface ScheduledJob {
  stop(): void;
}

export interface Scheduler {
  /** Runs `fn` on the 6-field cron `expression` (seconds first); a run that is still busy is skipped, never overlapped. */
  schedule(expression: string, fn: () => Promise<unknown> | void): ScheduledJob;
}

/** Is `expression` a cron expression node-cron accepts? */
export function validCron(expression: string): boolean {
  return cron.validate(expression);
}

export const cronScheduler: Scheduler = {
  schedule(expression, fn) {
    const task = cron.schedule(
      expression,
      async () => {
        await fn();
      },
      { noOverlap: true, unref: true },
    );
    return { stop: () => void task.stop() };
  },
};

/** Jobs run only when the test calls `fire()`. */
export class ManualScheduler implements Scheduler {
  readonly jobs: { expression: string; fn: () => Promise<unknown> | void; stopped: boolean }[] = [];

  schedule(expression: string, fn: () => Promise<unknown> | void): ScheduledJob {
    const job = { expression, fn, stopped: false };
    this.jobs.push(job);
    return { stop: () => void (job.stopped = true) };
  }

  /** Runs every live job once and waits for them. */
  async fire(): Promise<void> {
    for (const j of this.jobs) if (!j.stopped) await j.fn();
  }
}
