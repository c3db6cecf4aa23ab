import { describe, expect, it } from 'vitest';
import { BURST_V8_FLAGS, MEMBERS_PER_RULE_FOR_MEMORY, burstMode, burstWork, burstsOver } from '../../../src/agent/footprint.js';
import { parsePolicy } from '../../../src/policy/schema.js';

describe('heap bursts (footprint.ts)', () => {
  const starts = (mode: 'memory' | 'throughput') => BURST_V8_FLAGS[mode].map(([start]) => start);
  const ends = (mode: 'memory' | 'throughput') => BURST_V8_FLAGS[mode].map(([, end]) => end);
  const RULES = { rules: 10_000, members: 100 };
  const MEMBERS = { rules: 11, members: 100_000 };

  it('sets the burst flags when the first burst starts and the agent flags back when the last one ends, once', () => {
    const set: string[] = [];
    const burst = burstsOver((f) => set.push(f));
    const endA = burst(RULES);
    expect(set).toEqual(starts('throughput'));
    // a nested burst keeps the first one's mode, whatever it compiles
    const endB = burst(MEMBERS);
    endA();
    endA();
    expect(set).toEqual(starts('throughput'));
    endB();
    expect(set).toEqual([...starts('throughput'), ...ends('throughput')]);
    burst(MEMBERS)();
    expect(set).toEqual([...starts('throughput'), ...ends('throughput'), ...starts('memory'), ...ends('memory')]);
  });

  it('keeps --optimize-for-size through a burst of big member sets and lifts it for many rules', () => {
    expect(BURST_V8_FLAGS.memory.flat()).not.toContain('--no-optimize-for-size');
    expect(BURST_V8_FLAGS.throughput).toContainEqual(['--no-optimize-for-size', '--optimize-for-size']);
    // both let the old generation double between full GCs, which bounds the heap
    for (const mode of ['memory', 'throughput'] as const) expect(BURST_V8_FLAGS[mode]).toContainEqual(['--heap-growing-percent=100', '--heap-growing-percent=0']);
    expect(burstMode(RULES)).toBe('throughput');
    expect(burstMode(MEMBERS)).toBe('memory');
    expect(burstMode({ rules: 10, members: 10 * MEMBERS_PER_RULE_FOR_MEMORY })).toBe('throughput');
    expect(burstMode({ rules: 10, members: 10 * MEMBERS_PER_RULE_FOR_MEMORY + 1 })).toBe('memory');
    expect(burstMode({ rules: 0, members: 0 })).toBe('throughput');
  });

  it('counts the rules of every group and the addresses of remote groups and address groups', () => {
    const policy = parsePolicy({
      revision: 1,
      instance: { id: 'i-1', addresses: ['198.18.0.10'] },
      security_groups: [
        { id: 'web', rules: [{ id: 'a', direction: 'ingress' }, { id: 'b', direction: 'egress' }] },
        { id: 'db', rules: [{ id: 'c', direction: 'ingress', remote_group_id: 'web' }] },
      ],
      address_groups: [{ id: 'office', ip_version: 4, ip_set: ['198.18.1.0/24', '198.18.2.1'] }],
      group_members: { web: ['198.18.0.10', '198.18.0.11', '198.18.0.12'], db: [] },
    });
    expect(burstWork(policy)).toEqual({ rules: 3, members: 5 });
  });
});
