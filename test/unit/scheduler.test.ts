/**
 * src/lib/scheduler.ts: cron expressions are read by node-cron's parser; plain
 * numeric ones run on our own timers (next match computed in local time, as
 * node-cron matches), calendar tokens (L, W, #) stay with node-cron.
 */
import { describe, expect, it } from 'vitest';
import { FakeClock } from '../../src/lib/clock.js';
import { cronSchedulerOn, nextCronMatch, numericCronFields } from '../../src/lib/scheduler.js';

const at = (s: string) => new Date(s).getTime(); // local time (no Z): what cron fields mean
const next = (expr: string, after: string) => {
  const f = numericCronFields(expr);
  if (!f) throw new Error(`${expr}: not numeric`);
  const t = nextCronMatch(f, at(after));
  return t === null ? null : new Date(t);
};

describe('numericCronFields', () => {
  it('reads plain, named, nickname and 5-field expressions; leaves calendar tokens to node-cron', () => {
    expect([...numericCronFields('*/30 * * * * *')!.second]).toEqual([0, 30]);
    expect([...numericCronFields('0 0 * * 7')!.dayOfWeek]).toEqual([0]);
    expect([...numericCronFields('0 0 0 ? * mon-fri')!.dayOfWeek]).toEqual([1, 2, 3, 4, 5]);
    expect([...numericCronFields('@hourly')!.minute]).toEqual([0]);
    expect(numericCronFields('0 0 12 L * *')).toBeNull();
    expect(numericCronFields('0 0 0 * * 5L')).toBeNull();
  });
});

describe('nextCronMatch', () => {
  it('the next matching whole second, strictly after the given time', () => {
    expect(next('*/30 * * * * *', '2026-03-10T10:00:00.000')).toEqual(new Date('2026-03-10T10:00:30.000'));
    expect(next('*/30 * * * * *', '2026-03-10T10:00:29.999')).toEqual(new Date('2026-03-10T10:00:30.000'));
    expect(next('*/30 * * * * *', '2026-03-10T10:00:30.000')).toEqual(new Date('2026-03-10T10:01:00.000'));
    expect(next('*/30 * * * * *', '2026-12-31T23:59:45.500')).toEqual(new Date('2027-01-01T00:00:00.000'));
  });

  it('carries over minutes, hours, days and months', () => {
    expect(next('15 */10 * * * *', '2026-03-10T10:59:20')).toEqual(new Date('2026-03-10T11:00:15'));
    expect(next('0 30 4 * * *', '2026-03-10T04:30:00')).toEqual(new Date('2026-03-11T04:30:00'));
    expect(next('0 0 0 1 * *', '2026-01-31T12:00:00')).toEqual(new Date('2026-02-01T00:00:00'));
    expect(next('0 0 9 29 2 *', '2026-03-01T00:00:00')).toEqual(new Date('2028-02-29T09:00:00'));
  });

  it('day of month AND day of week must both match (node-cron semantics)', () => {
    // Friday the 13th: 2026-02-13 and 2026-03-13 are Fridays
    expect(next('0 0 0 13 * fri', '2026-01-01T00:00:00')).toEqual(new Date('2026-02-13T00:00:00'));
    expect(next('0 0 0 13 * fri', '2026-02-13T00:00:00')).toEqual(new Date('2026-03-13T00:00:00'));
    expect(next('0 0 12 * * sat,sun', '2026-03-10T13:00:00')).toEqual(new Date('2026-03-14T12:00:00'));
  });

  it('an expression that never matches has no next run', () => {
    // (node-cron refuses "0 0 0 31 2 *" itself; the walk still ends)
    const f = { ...numericCronFields('0 0 0 31 * *')!, month: new Set([2]) };
    expect(nextCronMatch(f, at('2026-01-01T00:00:00'))).toBeNull();
  });
});

describe('cronSchedulerOn (timers of the clock)', () => {
  it('runs the job at each match and never overlaps a busy run', async () => {
    const clock = new FakeClock(at('2026-03-10T10:00:05.250'));
    const cronScheduler = cronSchedulerOn(clock);
    let runs = 0;
    let release: () => void = () => {};
    const job = cronScheduler.schedule('*/10 * * * * *', () => {
      runs++;
      return new Promise<void>((r) => (release = r));
    });
    await clock.advance(4_000); // 10:00:09.250
    expect(runs).toBe(0);
    await clock.advance(1_000); // 10:00:10 passed
    expect(runs).toBe(1);
    await clock.advance(20_000); // 10:00:20 and :30 pass while the first run is busy
    expect(runs).toBe(1);
    release();
    await clock.advance(10_000); // 10:00:40
    expect(runs).toBe(2);
    release();
    job.stop();
    await clock.advance(60_000);
    expect(runs).toBe(2);
  });
});

describe('cronSchedulerOn when the wall clock jumps', () => {
  it('keeps its period after the clock is set back an hour (no run is held back until the old time comes again)', async () => {
    const clock = new FakeClock(at('2026-03-10T10:00:00.500'));
    let runs = 0;
    const job = cronSchedulerOn(clock).schedule('*/2 * * * * *', () => void runs++);
    await clock.advance(10_000);
    expect(runs).toBe(5);
    clock.jumpWall(-3_600_000);
    await clock.advance(10_000);
    // one period may be lost across the jump, never more
    expect(runs).toBeGreaterThanOrEqual(9);
    expect(runs).toBeLessThanOrEqual(10);
    job.stop();
  });

  it('after the clock is set forward a day it runs once per period, not once per missed match, and arms one timer', async () => {
    const clock = new FakeClock(at('2026-03-10T10:00:00.500'));
    let runs = 0;
    const job = cronSchedulerOn(clock).schedule('*/2 * * * * *', () => void runs++);
    await clock.advance(10_000);
    expect(runs).toBe(5);
    clock.jumpWall(86_400_000);
    await clock.advance(10_000);
    expect(runs).toBeGreaterThanOrEqual(9);
    expect(runs).toBeLessThanOrEqual(11);
    expect(clock.timers).toBe(1);
    job.stop();
  });
});
