import { describe, expect, it } from 'vitest';
import { BURST_V8_FLAGS, burstsOver } from '../../../src/agent/footprint.js';

describe('heap bursts (footprint.ts)', () => {
  const starts = BURST_V8_FLAGS.map(([start]) => start);
  const ends = BURST_V8_FLAGS.map(([, end]) => end);

  it('sets the burst flags when the first burst starts and the agent flags back when the last one ends, once', () => {
    const set: string[] = [];
    const burst = burstsOver((f) => set.push(f));
    const endA = burst();
    expect(set).toEqual(starts);
    const endB = burst();
    endA();
    endA();
    expect(set).toEqual(starts);
    endB();
    expect(set).toEqual([...starts, ...ends]);
    burst()();
    expect(set).toEqual([...starts, ...ends, ...starts, ...ends]);
  });
});
