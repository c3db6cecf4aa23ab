#!/usr/bin/env node
/**
 * `npm run bench -- state-write`: the agent's write of its last known good
 * (src/agent/state-store.ts), a policy with one remote group of N members
 * (10k, 100k, 1M; BENCH_STATE_SIZES): `FileStateStore.save`, which writes
 * the long lists a slice at a time (`writeStateText`), against the same
 * document written as one string (`renderStateText` + one write: the
 * reference, as the agent wrote it until round 12 of issue 18), into
 * /dev/shm, each with fsync and rename as `save` does. Each (size, way)
 * runs in a child process of its own, bundled and with the agent's V8
 * flags (footprint.ts), so its figures are its own: CPU (user + system)
 * per write, the median of BENCH_STATE_WRITES (7) after one warm-up, and
 * how much the writes raised the process's peak RSS (VmHWM after the
 * writes minus before the first, the warm-up). A delta stream makes the agent write one per
 * 30 s (state-writer.ts); a full reload one each.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { open, rename } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FileStateStore, renderStateText } from '../src/agent/state-store.js';
import { tuneForFootprint } from '../src/agent/footprint.js';
import { parsePolicy, type Policy } from '../src/policy/schema.js';
import { bundleBench } from './lab.js';
import { groupPolicy } from './policies.js';

const SIZES = (process.env.BENCH_STATE_SIZES ?? '10000,100000,1000000').split(',').map(Number);
const WRITES = Number(process.env.BENCH_STATE_WRITES ?? 7);

export interface StateWriteRow {
  members: number;
  way: string;
  file_mb: number;
  cpu_ms_per_write: number;
  peak_rss_raised_mb: number;
}

const hwmMb = () => Number(/^VmHWM:\s+(\d+) kB$/m.exec(readFileSync('/proc/self/status', 'utf8'))![1]) / 1024;
const round = (x: number, d = 1) => Math.round(x * 10 ** d) / 10 ** d;

/** The reference: the whole document as one string, one write, fsync, rename (what save did before). */
async function oneString(dir: string, policy: Policy): Promise<void> {
  const tmp = join(dir, 'policy.json.tmp');
  const fh = await open(tmp, 'w', 0o600);
  try {
    await fh.writeFile(renderStateText(policy, new Date().toISOString()), 'utf8');
    await fh.sync();
  } finally {
    await fh.close();
  }
  await rename(tmp, join(dir, 'policy.json'));
}

async function child(members: number, way: 'slices' | 'one string', dir: string): Promise<StateWriteRow> {
  tuneForFootprint();
  // as the agent holds it: decoded from JSON text
  const policy = parsePolicy(JSON.parse(JSON.stringify(groupPolicy(members))));
  const store = new FileStateStore(dir, Date.now);
  const write = way === 'slices' ? () => store.save(policy) : () => oneString(dir, policy);
  const before = hwmMb();
  await write();
  const cpu: number[] = [];
  for (let i = 0; i < WRITES; i++) {
    const c0 = process.cpuUsage();
    await write();
    const c = process.cpuUsage(c0);
    cpu.push((c.user + c.system) / 1000);
    // as between the agent's writes: the event loop turns, idle-time GC runs
    await new Promise((r) => setTimeout(r, 100));
  }
  cpu.sort((a, b) => a - b);
  const size = readFileSync(join(dir, 'policy.json')).length;
  return { members, way, file_mb: round(size / 1e6, 2), cpu_ms_per_write: round(cpu[Math.floor(cpu.length / 2)]!), peak_rss_raised_mb: round(hwmMb() - before) };
}

export async function runStateWriteBench(): Promise<StateWriteRow[]> {
  const work = mkdtempSync(join(tmpdir(), 'sgt-state-write-'));
  const rows: StateWriteRow[] = [];
  try {
    const bundle = join(work, 'state-write.cjs');
    bundleBench(import.meta.url, bundle);
    for (const members of SIZES) {
      for (const way of ['slices', 'one string'] as const) {
        // in memory, as the agent's state directory's writes cost no disk here either way
        const dir = mkdtempSync(join('/dev/shm', 'sgt-state-'));
        try {
          const out = execFileSync(process.execPath, ['--max-old-space-size=8192', bundle, '--child', String(members), way, dir], { encoding: 'utf8', timeout: 600_000 });
          rows.push(JSON.parse(out) as StateWriteRow);
        } finally {
          rmSync(dir, { recursive: true, force: true });
        }
      }
    }
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
  return rows.map((r) => ({ ...r, way: r.way === 'one string' ? 'one string (reference)' : 'slices (FileStateStore.save)' }));
}

if (process.argv.includes('--child')) {
  const at = process.argv.indexOf('--child');
  const [members, way, dir] = process.argv.slice(at + 1, at + 4) as [string, 'slices' | 'one string', string];
  // no top-level await: the child runs as CommonJS
  void child(Number(members), way, dir).then((row) => process.stdout.write(JSON.stringify(row)));
}
