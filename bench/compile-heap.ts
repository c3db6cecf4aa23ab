#!/usr/bin/env node
/**
 * bench compile-heap: what the agent's V8 heap settings (src/agent/footprint.ts)
 * cost a full sync's compile + render, in CPU (process.cpuUsage: the main
 * thread and V8's GC threads) and in peak RSS (VmHWM), one child process per
 * setting and case, each compiling and rendering the policy 5 times as a
 * warm agent does (no nft: the CPU is the agent's alone, so the figures hold
 * up on a loaded machine better than wall times):
 *
 *   npx tsx bench/compile-heap.ts ['10k rules' '100k members' ...]
 *
 * Settings: `agent` (`--optimize-for-size` set at run time, as `secgroup
 * agent` does), `agent + burst` (the same with compileBurst() around each
 * compile + render: what the reconciler does now, in the mode the policy
 * gets, footprint.ts burstMode), `agent + memory burst` and `agent +
 * throughput burst` (each mode forced), and `V8 defaults`. Each child runs
 * but `V8 defaults` with the Environment= of systemd/secgroup-agent.service
 * (its 1 MB young generation), as the agent runs. Medians and best of the 5 rounds after
 * the first.
 */
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { setFlagsFromString } from 'node:v8';
import { groupPolicy, syntheticPolicy } from './policies.js';
import { BURST_V8_FLAGS, burstWork, compileBurst, tuneForFootprint, type BurstMode } from '../src/agent/footprint.js';
import { unitEnvironment } from './footprint.js';
import { compilePolicy } from '../src/nft/compile.js';
import { renderTransactionChunks } from '../src/nft/render.js';
import { replaceTableTx } from '../src/nft/transaction.js';
import { parsePolicy, type PolicyInput } from '../src/policy/schema.js';

const CASES: Record<string, () => PolicyInput> = {
  '1k rules': () => syntheticPolicy({ rules: 1000, members: 100 }),
  '10k rules': () => syntheticPolicy({ rules: 10000, members: 100 }),
  '10k members': () => groupPolicy(10_000, 10),
  '100k members': () => groupPolicy(100_000, 10),
};

const SETTINGS = ['agent', 'agent + burst', 'agent + memory burst', 'agent + throughput burst', 'V8 defaults'] as const;
type Setting = (typeof SETTINGS)[number];

async function measure(name: string, setting: Setting): Promise<Record<string, string | number>> {
  if (setting !== 'V8 defaults') tuneForFootprint();
  const policy = parsePolicy(CASES[name]!());
  const forced = (mode: BurstMode): (() => void) => {
    for (const [start] of BURST_V8_FLAGS[mode]) setFlagsFromString(start);
    return () => {
      for (const [, end] of BURST_V8_FLAGS[mode]) setFlagsFromString(end);
    };
  };
  const burst = (): (() => void) => {
    if (setting === 'agent + burst') return compileBurst(burstWork(policy));
    if (setting === 'agent + memory burst') return forced('memory');
    if (setting === 'agent + throughput burst') return forced('throughput');
    return () => undefined;
  };
  const cpu: number[] = [];
  for (let i = 0; i < 6; i++) {
    const c0 = process.cpuUsage();
    const end = burst();
    const compiled = compilePolicy(policy);
    let n = 0;
    for (const chunk of renderTransactionChunks(replaceTableTx(compiled.table))) n += chunk.length;
    end();
    const c = process.cpuUsage(c0);
    if (i > 0) cpu.push((c.user + c.system) / 1000);
    if (n === 0) throw new Error('empty script');
    await new Promise((r) => setTimeout(r, 50));
  }
  const hwm = Number(/^VmHWM:\s+(\d+) kB$/m.exec(readFileSync('/proc/self/status', 'utf8'))?.[1] ?? 0) / 1024;
  const sorted = [...cpu].sort((a, b) => a - b);
  return { case: name, setting, cpuMedianMs: Math.round(sorted[sorted.length >> 1]!), cpuBestMs: Math.round(sorted[0]!), peakRssMb: Math.round(hwm) };
}

if (process.argv.includes('--child')) {
  const at = process.argv.indexOf('--child');
  const [name, setting] = process.argv.slice(at + 1, at + 3) as [string, Setting];
  process.stdout.write(JSON.stringify(await measure(name, setting)));
} else {
  const names = process.argv.slice(2).length ? process.argv.slice(2) : ['1k rules', '10k rules', '10k members', '100k members'];
  const rows = [];
  for (const n of names) {
    for (const s of SETTINGS) {
      const out = execFileSync(process.execPath, ['--import', 'tsx', fileURLToPath(import.meta.url), '--child', n, s], { encoding: 'utf8', timeout: 600_000, stdio: ['ignore', 'pipe', 'inherit'], env: { ...process.env, ...(s === 'V8 defaults' ? {} : unitEnvironment()) } });
      rows.push(JSON.parse(out));
    }
  }
  console.table(rows);
}
