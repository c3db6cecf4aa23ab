/**
 * Periodic jobs on a cron schedule (node-cron), injected like the clock: the
 * agent asks a `Scheduler`, tests use `ManualScheduler` and fire jobs by hand.
 */
import cron, { parse as parseCron } from 'node-cron';
import { systemClock, type Clock, type Timer } from './clock.js';

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

interface CronFields {
  second: ReadonlySet<number>;
  minute: ReadonlySet<number>;
  hour: ReadonlySet<number>;
  dayOfMonth: ReadonlySet<number>;
  month: ReadonlySet<number>;
  dayOfWeek: ReadonlySet<number>;
}

/**
 * node-cron's own reading of `expression` (nicknames, names, 5 or 6 fields,
 * ranges, steps, `?`), as sets of numbers; null when a field holds one of its
 * calendar tokens (L, W, #), which only node-cron itself evaluates.
 */
export function numericCronFields(expression: string): CronFields | null {
  const f = parseCron(expression) as unknown as Record<keyof CronFields, unknown[]>;
  const keys = ['second', 'minute', 'hour', 'dayOfMonth', 'month', 'dayOfWeek'] as const;
  if (!keys.every((k) => Array.isArray(f[k]) && f[k].every((v) => typeof v === 'number'))) return null;
  const set = (k: keyof CronFields) => new Set(f[k] as number[]);
  return { second: set('second'), minute: set('minute'), hour: set('hour'), dayOfMonth: set('dayOfMonth'), month: set('month'), dayOfWeek: set('dayOfWeek') };
}

/**
 * The first whole second after `afterMs` (local time) that every field
 * matches, as node-cron matches them (all six fields, day of month AND day of
 * week); null if none within ~270 years (e.g. February 31st).
 */
export function nextCronMatch(f: CronFields, afterMs: number): number | null {
  const d = new Date(afterMs);
  d.setMilliseconds(0);
  d.setSeconds(d.getSeconds() + 1);
  for (let guard = 0; guard < 100_000; guard++) {
    if (!f.month.has(d.getMonth() + 1)) {
      d.setMonth(d.getMonth() + 1, 1);
      d.setHours(0, 0, 0, 0);
    } else if (!f.dayOfMonth.has(d.getDate()) || !f.dayOfWeek.has(d.getDay())) {
      d.setDate(d.getDate() + 1);
      d.setHours(0, 0, 0, 0);
    } else if (!f.hour.has(d.getHours())) {
      d.setHours(d.getHours() + 1, 0, 0, 0);
    } else if (!f.minute.has(d.getMinutes())) {
      d.setMinutes(d.getMinutes() + 1, 0, 0);
    } else if (!f.second.has(d.getSeconds())) {
      d.setSeconds(d.getSeconds() + 1, 0);
    } else {
      return d.getTime();
    }
  }
  return null;
}

/**
 * Runs `fn` at every match of `fields` with plain timers, never overlapping
 * (a run still busy at the next match skips it, as node-cron's noOverlap).
 * Not node-cron's scheduler: that one formats every tick with
 * Intl.DateTimeFormat, which loads ICU's calendar and time zone data, about
 * 8 MB of the idle agent's RSS (bench/README.md, footprint).
 */
function timerSchedule(clock: Clock, fields: CronFields, fn: () => Promise<unknown> | void): ScheduledJob {
  let timer: Timer | null = null;
  let busy = false;
  let stopped = false;
  let last = 0;
  const arm = () => {
    if (stopped) return;
    const now = clock.now();
    // `last` keeps a match from running twice when a timer fires early; when the wall clock
    // was set back past it, it would instead hold every run until that time comes again
    if (last > now) last = 0;
    const at = nextCronMatch(fields, Math.max(now, last));
    if (at === null) return;
    // (the clock's timers do not keep the process alive, as node-cron's unref)
    timer = clock.setTimeout(() => {
      timer = null;
      // a timer may fire a little early: wait for the second itself
      if (clock.now() < at) return arm();
      last = at;
      if (!busy) {
        busy = true;
        void (async () => {
          try {
            await fn();
          } catch {
            // the job reports its own failures (as with node-cron, a failed run does not stop the schedule)
          } finally {
            busy = false;
          }
        })();
      }
      arm();
    }, Math.max(0, at - clock.now()));
  };
  arm();
  return {
    stop: () => {
      stopped = true;
      timer?.cancel();
      timer = null;
    },
  };
}

/** Schedules on `clock`'s timers when the expression is numeric (numericCronFields), else with node-cron. */
export function cronSchedulerOn(clock: Clock): Scheduler {
  return {
    schedule(expression, fn) {
      const fields = numericCronFields(expression);
      if (fields) return timerSchedule(clock, fields, fn);
      return nodeCronSchedule(expression, fn);
    },
  };
}

function nodeCronSchedule(expression: string, fn: () => Promise<unknown> | void): ScheduledJob {
  const task = cron.schedule(
    expression,
    async () => {
      await fn();
    },
    { noOverlap: true, unref: true },
  );
  return { stop: () => void task.stop() };
}

export const cronScheduler: Scheduler = cronSchedulerOn(systemClock);

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
