/**
 * Giving the free C heap back after bursts (src/agent/memtrim.ts,
 * native/secgroup-memtrim.c): when the trimmer trims, how the addon is found
 * and loaded (the real one, built by scripts/build-native.sh), and that the
 * agent asks for a trim after its syncs.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { createAgent } from '../../../src/agent/agent.js';
import { AGENT_LIB_DIRS, resolveConfig } from '../../../src/agent/config.js';
import { loadMemTrim, MEMTRIM_FILE, memtrimCandidates, MemoryTrimmer, TRIM_DELAY_MS } from '../../../src/agent/memtrim.js';
import { MemoryStateStore } from '../../../src/agent/state-store.js';
import { FakeClock } from '../../../src/lib/clock.js';
import { silentLogger } from '../../../src/lib/logger.js';
import { ManualScheduler } from '../../../src/lib/scheduler.js';
import { FakeNft } from '../../../src/nft/fake.js';
import { captureLogs } from '../../helpers/log-capture.js';
import { policy } from './fixtures.js';

const REPO = join(import.meta.dirname, '../../..');
const dir = mkdtempSync(join(tmpdir(), 'sgt-memtrim-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function trimmer(trim: () => boolean = () => true) {
  const clock = new FakeClock();
  const { logger, lines } = captureLogs();
  const calls: number[] = [];
  const t = new MemoryTrimmer({
    trim: () => {
      calls.push(clock.monotonic());
      return trim();
    },
    clock,
    logger,
  });
  return { t, clock, calls, lines };
}

describe('MemoryTrimmer', () => {
  it('trims once, TRIM_DELAY_MS after the first sync of a burst, however many syncs the burst has', async () => {
    const { t, clock, calls, lines } = trimmer();
    const start = clock.monotonic();
    t.noteWork();
    await clock.advance(1000);
    t.noteWork();
    t.noteWork();
    await clock.advance(TRIM_DELAY_MS - 1001);
    expect(calls).toEqual([]);
    await clock.advance(1);
    expect(calls).toEqual([start + TRIM_DELAY_MS]);
    await clock.advance(60_000);
    expect(calls).toHaveLength(1);
    expect(lines).toContainEqual(expect.objectContaining({ event: 'memory_trim', released: true }));
  });

  it('trims at most once per TRIM_DELAY_MS under a steady stream of syncs', async () => {
    const { t, clock, calls } = trimmer(() => false);
    for (let i = 0; i < 100; i++) {
      t.noteWork();
      await clock.advance(200);
    }
    // 20 s of syncs every 200 ms
    expect(calls).toHaveLength(Math.floor(20_000 / TRIM_DELAY_MS));
  });

  it('trims nothing after stop()', async () => {
    const { t, clock, calls } = trimmer();
    t.noteWork();
    t.stop();
    t.noteWork();
    await clock.advance(60_000);
    expect(calls).toEqual([]);
    expect(clock.timers).toBe(0);
  });

  it('gives up for good, with one warning, when a trim throws', async () => {
    const { t, clock, calls, lines } = trimmer(() => {
      throw new Error('boom');
    });
    t.noteWork();
    await clock.advance(TRIM_DELAY_MS);
    t.noteWork();
    await clock.advance(60_000);
    expect(calls).toHaveLength(1);
    expect(lines.filter((l) => l.event === 'memory_trim_failed')).toEqual([expect.objectContaining({ level: 40, msg: expect.stringContaining('boom') })]);
  });
});

describe('loadMemTrim', () => {
  it('looks next to the program, in dist/ of a checkout, then where the packages install it', () => {
    expect(memtrimCandidates(pathToFileURL('/usr/local/lib/secgroup/secgroup.cjs').href)).toEqual([
      `/usr/local/lib/secgroup/${MEMTRIM_FILE}`,
      `/usr/lib/secgroup/${MEMTRIM_FILE}`,
    ]);
    // the .deb's single executable
    expect(memtrimCandidates(pathToFileURL('/usr/bin/secgroup').href)).toEqual([`/usr/bin/${MEMTRIM_FILE}`, ...AGENT_LIB_DIRS.map((d) => `${d}/${MEMTRIM_FILE}`)]);
    // a checkout: the bundle in dist/, this module run from src/ (tsx) or dist/agent (tsc)
    for (const from of ['dist/secgroup.cjs', 'src/agent/memtrim.ts', 'dist/agent/memtrim.js']) {
      expect(memtrimCandidates(pathToFileURL(join(REPO, from)).href)[0]).toBe(join(REPO, 'dist', MEMTRIM_FILE));
    }
  });

  it('is null when no candidate exists', () => {
    expect(loadMemTrim([join(dir, 'none.node')])).toBeNull();
  });

  it('throws for a file that is not a Node-API addon', () => {
    const bad = join(dir, 'bad.node');
    writeFileSync(bad, 'not an ELF file');
    expect(() => loadMemTrim([join(dir, 'none.node'), bad])).toThrow();
  });

  it('loads the addon that scripts/build-native.sh builds, whose trim() answers whether malloc_trim gave memory back', () => {
    const out = join(dir, 'built');
    execFileSync('bash', [join(REPO, 'scripts/build-native.sh'), out], { stdio: 'pipe' });
    const m = loadMemTrim([join(dir, 'none.node'), join(out, MEMTRIM_FILE)]);
    expect(m?.path).toBe(join(out, MEMTRIM_FILE));
    // whether there was free memory to give back depends on this process's heap: a boolean, each time
    expect([m!.trim(), m!.trim()].map((r) => typeof r)).toEqual(['boolean', 'boolean']);
  });
});

describe('the agent and its trimmer', () => {
  it('asks for a trim after each sync outcome and stops it with the agent', async () => {
    const noted: string[] = [];
    const fake = { noteWork: () => noted.push('work'), stop: () => noted.push('stop') } as unknown as MemoryTrimmer;
    const config = resolveConfig({ instance_id: 'ecs-1', http_listen: null }, {});
    const agent = createAgent({ config, nft: new FakeNft(), store: new MemoryStateStore(policy(3)), clock: new FakeClock(), logger: silentLogger(), scheduler: new ManualScheduler(), resolver: { resolve: async () => [] }, dialer: null, trimmer: fake });
    await agent.start();
    expect(agent.status().appliedRevision).toBe(3);
    expect(noted).toEqual(['work']);
    await agent.stop();
    expect(noted).toEqual(['work', 'stop']);
  });
});
