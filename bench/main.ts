/**
 * `npm run bench [-- PART...]`: runs the benchmark parts (all by default),
 * prints one table per part and writes bench/results/latest.json.
 * Parts: render, packet, apply, converge (slot), footprint, store, analysis, api-writes, drift, sweep, console.
 */
import { mkdirSync, writeFileSync, readFileSync, existsSync } from 'node:fs';
import { runRenderBench } from './render.js';
import { runConvergeBench } from './converge.js';
import { haSelection, runConvergeHaBench } from './converge-ha.js';
import { runPacketBench } from './packet.js';
import { runApplyBench } from './apply.js';
import { runFootprintBench } from './footprint.js';
import { runStoreBench } from './store.js';
import { runAnalysisBench } from './analysis.js';
import { runApiWritesBench } from './api-writes.js';
import { runDriftBench } from './drift.js';
import { runConsoleBench } from './console.js';
import { runSweepBench } from './sweep.js';
import { runStateWriteBench } from './state-write.js';

type Part = { name: string; what: string; run: () => Promise<Record<string, unknown>[]> | Record<string, unknown>[] };

const PARTS: Part[] = [
  {
    name: 'render',
    what: 'compile + render of synthetic policies (reference: validation alone), one child process per size',
    run: () => runRenderBench() as unknown as Record<string, unknown>[],
  },
  {
    name: 'packet',
    what: 'conn/s, request/response latency and throughput through 10k rules: secgroup and naive rendering vs no firewall (reference), best of rounds',
    run: async () => (await runPacketBench()) as unknown as Record<string, unknown>[],
  },
  {
    name: 'apply',
    what: 'agent full apply vs nft -f of the same script; one-address change to a remote group vs full reload; peak RSS',
    run: async () => (await runApplyBench(process.env.BENCH_APPLY_CASES?.split(','))) as unknown as Record<string, unknown>[],
  },
  {
    name: 'converge',
    what:
      'API call -> every affected agent applied (1/10/100/1000 real agents with the fake nft; reference: a write affecting no instance); ' +
      'then the HA cases (converge-ha.ts): sqlite x1 vs postgres x1 vs postgres x3 controller processes at 100/1000/3000 agents (BENCH_HA_SIZES, BENCH_HA_DEPLOYMENTS): ' +
      'rule and membership change to last ack, API writes/s, a killed replica\'s agents re-acked elsewhere, lost writes',
    run: async () => [...(await runConvergeBench()), ...(await runConvergeHaBench(...haSelection()))] as unknown as Record<string, unknown>[],
  },
  {
    name: 'footprint',
    what: 'the real agent (bundle) in a namespace: RSS and CPU idle and under a stream of updates over WebSocket',
    run: async () => (await runFootprintBench()) as unknown as Record<string, unknown>[],
  },
  {
    name: 'drift',
    what: 'drift watching with the agent code (secgroup-nftwatch or nft monitor, BENCH_DRIFT_SOURCES, + periodic check): the start of the monitor until it covers the table, the cheap periodic check vs its floor and a full read-back, tamper -> repaired vs the check period; 1k, 10k and 100k members',
    run: async () => (await runDriftBench()) as unknown as Record<string, unknown>[],
  },
  {
    name: 'sweep',
    what: "the flow mark's conntrack sweep on a big table (still, or changing while it runs): secgroup-ctmark vs conntrack -U (reference), 1k marked entries still (BENCH_SWEEP_STATIC_SIZES), 20k/100k/200k with new connections made meanwhile (BENCH_SWEEP_SIZES), BENCH_SWEEP_ROUNDS (3) rounds each",
    run: async () => (await runSweepBench()) as unknown as Record<string, unknown>[],
  },
  {
    name: 'state-write',
    what: "the agent's write of its last known good, one remote group of 10k / 100k / 1M members (BENCH_STATE_SIZES): FileStateStore.save (long lists a slice at a time) vs the document as one string and one write (reference); CPU per write (median of BENCH_STATE_WRITES, 7) and the peak RSS the writes add, one child process each",
    run: async () => (await runStateWriteBench()) as unknown as Record<string, unknown>[],
  },
  {
    name: 'store',
    what: "the controller's store (SqliteStore) on node:sqlite and on better-sqlite3 (reference, when installed), same statements, best of BENCH_STORE_ROUNDS (3) rounds",
    run: async () => (await runStoreBench()) as unknown as Record<string, unknown>[],
  },
  {
    name: 'analysis',
    what: 'fleet analysis API over HTTP on 127.0.0.1, 1000 instances / 200 groups / 5000 rules / a port report each: exposure (cached and after a new report) and reachability, p50/p99; reference: GET instances',
    run: async () => (await runAnalysisBench()) as unknown as Record<string, unknown>[],
  },
  {
    name: 'api-writes',
    what: 'API rule creates by 50 concurrent clients into a used and an idle group, 100 rules / 10 instances vs 5000 rules / 1000 instances (reference: listing groups)',
    run: async () => (await runApiWritesBench()) as unknown as Record<string, unknown>[],
  },
  {
    name: 'console',
    what: 'the web console in Chromium, 1000 instances / 200 groups / 5000 rules / a port report each: navigation start to the page rendered with its data (performance mark), median of fresh loads; reference: the console without API reads',
    run: async () => (await runConsoleBench()) as unknown as Record<string, unknown>[],
  },
];

async function main(): Promise<void> {
  const wanted = process.argv.slice(2).filter((a) => !a.startsWith('-'));
  const unknown = wanted.filter((w) => !PARTS.some((p) => p.name === w));
  if (unknown.length) {
    console.error(`unknown part(s): ${unknown.join(', ')}; parts: ${PARTS.map((p) => p.name).join(', ')}`);
    process.exit(2);
  }
  const parts = wanted.length ? PARTS.filter((p) => wanted.includes(p.name)) : PARTS;
  const file = 'bench/results/latest.json';
  const results: Record<string, unknown> = existsSync(file) ? JSON.parse(readFileSync(file, 'utf8')) : {};
  for (const p of parts) {
    console.log(`\n## ${p.name}: ${p.what}`);
    const t0 = performance.now();
    const rows = await p.run();
    console.table(rows);
    console.log(`(${p.name}: ${((performance.now() - t0) / 1000).toFixed(1)} s)`);
    results[p.name] = { at: new Date().toISOString(), rows };
  }
  mkdirSync('bench/results', { recursive: true });
  writeFileSync(file, JSON.stringify(results, null, 2) + '\n');
  console.log(`\nwritten ${file}`);
}

await main();
