#!/usr/bin/env node
/**
 * bench apply-profile: where the reconciler's own full apply spends its
 * time (the path bench/apply.ts measures: `Reconciler.submit` of a fresh
 * policy, no table yet), as a timeline of the nft calls it makes, seen
 * through a runner that records when each call starts and ends.
 *
 *   node scripts/bundle.mjs --entry bench/apply-profile.ts --outfile /tmp/p.mjs
 *   node [--cpu-prof] /tmp/p.mjs '10k rules' [runs]
 *
 * The agent's V8 flags are set at run time as `secgroup agent` sets them
 * (footprint.ts; SECGROUP_BENCH_NO_TUNE=1 leaves V8's defaults), with the
 * agent's heap bursts while it compiles.
 * Each run is a fresh reconciler's first apply after the agent's start-up
 * probe, which finds no table (SECGROUP_BENCH_READ_COUNTERS=1: the counter
 * read a replacement of an existing table makes is kept on the path).
 * (root: a scratch namespace). Prints per run: submit -> ack, and when each
 * nft call started and ended (ms after submit); "before apply" is the
 * compile and everything else the agent does before nft -f starts, "after"
 * what follows nft's exit until the ack.
 */
import { BenchLab } from './lab.js';
import { APPLY_CASES } from './policies.js';
import { compileBurst, tuneForFootprint } from '../src/agent/footprint.js';
import { AgentMetrics } from '../src/agent/metrics.js';
import { Reconciler } from '../src/agent/reconciler.js';
import { MemoryStateStore } from '../src/agent/state-store.js';
import { systemClock } from '../src/lib/clock.js';
import { silentLogger } from '../src/lib/logger.js';
import { ExecaNftRunner } from '../src/nft/exec.js';
import type { NftRunner } from '../src/nft/runner.js';
import { renderDeleteScript } from '../src/nft/render.js';
import { DEFAULT_PLATFORM } from '../src/policy/platform.js';
import { parsePolicy } from '../src/policy/schema.js';
import { execa } from 'execa';
import { readFileSync } from 'node:fs';


/** Records [name, start, end] of every call, relative to `t0`. */
function timed(nft: NftRunner, log: [string, number, number][], t0: () => number): NftRunner {
  const wrap =
    <A extends unknown[], R>(name: string, f: (...a: A) => Promise<R>) =>
    async (...a: A): Promise<R> => {
      const s = performance.now() - t0();
      try {
        return await f(...a);
      } finally {
        log.push([name, s, performance.now() - t0()]);
      }
    };
  return {
    family: nft.family,
    table: nft.table,
    probe: wrap('probe', () => nft.probe()),
    check: wrap('check', (tx) => nft.check(tx)),
    apply: wrap('apply', (tx) => nft.apply(tx)),
    readTable: wrap('readTable', (o) => nft.readTable(o)),
    readCounters: wrap('readCounters', () => nft.readCounters()),
    readRuleCounters: wrap('readRuleCounters', () => nft.readRuleCounters()),
    readMarker: wrap('readMarker', () => nft.readMarker()),
  };
}

// as `secgroup agent` runs (SECGROUP_BENCH_NO_TUNE=1: V8's defaults)
if (!process.env.SECGROUP_BENCH_NO_TUNE) tuneForFootprint();
const name = process.argv[2] ?? '10k rules';
const runs = Number(process.argv[3] ?? 3);
const lab = await BenchLab.create();
try {
  const real = new ExecaNftRunner({ table: 'secgroup', command: ['ip', 'netns', 'exec', lab.host, 'nft'], timeoutMs: 600_000, helper: true });
  const clear = () => execa('ip', ['netns', 'exec', lab.host, 'nft', '-f', '-'], { input: renderDeleteScript('inet', 'secgroup') });
  const policy = parsePolicy(APPLY_CASES[name]!());
  for (let i = 0; i < runs; i++) {
    await clear();
    const log: [string, number, number][] = [];
    let t0 = 0;
    const nft = timed(real, log, () => t0);
    const r = new Reconciler({ nft, store: new MemoryStateStore(), clock: systemClock, logger: silentLogger(), metrics: new AgentMetrics(), platform: DEFAULT_PLATFORM, checkBeforeApply: false, heapBurst: compileBurst });
    // as the agent starts (SECGROUP_BENCH_READ_COUNTERS=1: as a restart over an existing table would, reading them)
    if (!process.env.SECGROUP_BENCH_READ_COUNTERS && !(await real.probe()).tableExists) r.noteTableAbsent();
    t0 = performance.now();
    const o = await r.submit(policy, 'local');
    const total = performance.now() - t0;
    if (o.status !== 'applied') throw new Error(`not applied: ${o.status}`);
    const apply = log.find((l) => l[0] === 'apply')!;
    const calls = log.map(([n, s, e]) => `${n} ${s.toFixed(1)}-${e.toFixed(1)}`).join(', ');
    console.log(`${name} run ${i}: ${total.toFixed(1)} ms; before apply ${apply[1].toFixed(1)}, apply ${(apply[2] - apply[1]).toFixed(1)}, after ${(total - apply[2]).toFixed(1)}; ${calls}`);
    await r.stop();
  }
  real.close();
  console.log('VmHWM', /VmHWM:\s+(\d+)/.exec(readFileSync('/proc/self/status', 'utf8'))![1], 'kB');
} finally {
  await lab.destroy();
}
