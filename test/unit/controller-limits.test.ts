import { describe, expect, it } from 'vitest';
import { FakeClock } from '../../src/lib/clock.js';
import { AuthFailureLimiter, ConnectionLimiter, sourceKey } from '../../src/controller/limits.js';

describe('failed authentications per source (token bucket)', () => {
  it('a burst of failures, then refused until one failure has refilled; Retry-After rounds up', async () => {
    const clock = new FakeClock();
    const l = new AuthFailureLimiter(clock, { perMinute: 10, burst: 3 });
    for (let i = 0; i < 3; i++) {
      expect(l.check('198.18.0.1').limited).toBe(false);
      l.failed('198.18.0.1');
    }
    expect(l.check('198.18.0.1')).toEqual({ limited: true, retryAfterSeconds: 6, firstRefusal: true });
    expect(l.check('198.18.0.1')).toEqual({ limited: true, retryAfterSeconds: 6, firstRefusal: false });
    expect(l.check('198.18.0.2').limited).toBe(false);
    await clock.advance(5_000);
    expect(l.check('198.18.0.1')).toEqual({ limited: true, retryAfterSeconds: 1, firstRefusal: false });
    await clock.advance(1_000);
    expect(l.check('198.18.0.1').limited).toBe(false);
    l.failed('198.18.0.1');
    // a new episode is reported again
    expect(l.check('198.18.0.1')).toMatchObject({ limited: true, firstRefusal: true });
  });

  it('keeps a bounded table: refilled buckets go first, then the oldest', async () => {
    const clock = new FakeClock();
    const l = new AuthFailureLimiter(clock, { perMinute: 60, burst: 2, maxSources: 3 });
    l.failed('a');
    l.failed('b');
    await clock.advance(1_000);
    l.failed('c');
    l.failed('d'); // a and b have refilled: dropped
    expect(l.size).toBe(2);
    l.failed('e');
    l.failed('e');
    l.failed('f'); // table full of non-refilled buckets: the oldest (c) goes
    expect(l.size).toBe(3);
    expect(l.check('e')).toMatchObject({ limited: true });
  });
});

describe('connections per source', () => {
  it('counts per source and in total; a close frees a place', () => {
    const l = new ConnectionLimiter({ perSource: 2, total: 3 });
    expect([l.open('a'), l.open('a'), l.open('a')]).toEqual(['ok', 'ok', 'per_source']);
    expect([l.open('b'), l.open('c')]).toEqual(['ok', 'total']);
    l.close('a');
    expect([l.count('a'), l.openCount]).toEqual([1, 2]);
    expect(l.open('c')).toBe('ok');
  });

  it('IPv4-mapped IPv6 sources are the IPv4 address', () => {
    expect(sourceKey('::ffff:198.18.0.1')).toBe('198.18.0.1');
    expect(sourceKey('FD00:5EC::1')).toBe('fd00:5ec::1');
    expect(sourceKey(undefined)).toBe('unknown');
  });
});
