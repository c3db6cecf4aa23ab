/**
 * Vitest glue for the kernel lab. Kept apart from netns.ts so that the lab can
 * also be used outside vitest (benchmarks, scripts).
 *
 *   import { describeKernel, useLab } from '../helpers/vitest-lab.js';
 *
 *   describeKernel('my ruleset', () => {
 *     const lab = useLab();
 *     it('drops telnet', async () => {
 *       await lab().applyScript(script);
 *       expect(await lab().observe([pkt])).toEqual([false]);
 *     });
 *   });
 */
import { afterAll, beforeAll, describe } from 'vitest';
import { canRunKernelTests, createLab, type Lab, type LabOptions } from './netns.js';

/**
 * `describe`, skipped with a visible reason (in the suite name and on stderr)
 * where kernel tests cannot run (not root, no nft, no `ip netns`).
 */
export function describeKernel(name: string, fn: () => void): void {
  const { ok, reason } = canRunKernelTests();
  if (!ok) console.warn(`[kernel tests skipped] ${name}: ${reason}`);
  describe.skipIf(!ok)(ok ? name : `${name} [SKIPPED: ${reason}]`, fn);
}

/**
 * One lab for the enclosing describe block: created in beforeAll, destroyed in
 * afterAll (which vitest runs also when tests or beforeAll fail). Returns a
 * getter because the lab only exists once beforeAll ran.
 */
export function useLab(opts: LabOptions = {}): () => Lab {
  let lab: Lab | undefined;
  beforeAll(async () => {
    lab = await createLab(opts);
  });
  afterAll(async () => {
    await lab?.destroy();
  });
  return () => {
    if (!lab) throw new Error('lab not ready: use it inside tests or hooks, not at collection time');
    return lab;
  };
}
