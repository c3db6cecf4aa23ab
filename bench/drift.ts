/**
 * bench drift: what watching our table costs, with the agent's real code
 * (Reconciler + DriftMonitor over ExecaNftRunner and a monitor source) in a
 * scratch network namespace, for remote groups of 1k, 10k and 100k members
 * (bench/policies.ts groupPolicy). nft runs in the namespace through
 * `nsenter --net` (setns only, as cheap as the agent's own exec of nft;
 * `ip netns exec` also sets up a mount namespace and remounts /sys, tens of
 * ms per call on a loaded machine). Per size:
 * - the monitor's start until it covers the table (it reported a probe and
 *   the full check after it ran), vs the full read-back alone;
 * - the periodic check while the monitor covers the table (generation
 *   marker only; median of 10) vs the floor of any check that runs nft
 *   (the same read of a table that does not exist, through the same kind of
 *   helper shell; median of 10) and vs the
 *   full read-back it replaces (the whole table with its elements; median
 *   of 3) — target <= 20 ms at 100k, and flat over the sizes;
 * - tamper -> repaired: from the start of a hand-made `nft` command (table
 *   deleted, chain flushed, rule inserted, member removed, member set
 *   flushed) to the end of the repair (verified by its marker read; the note
 *   splits it: when the monitor reported it, how long the repair took), vs the
 *   periodic period it replaces (30 s) — target <= 1 s. Each tamper waits
 *   until the monitor covers the table again after the previous repair
 *   (`nft monitor` is restarted around a repair that reloads the table, the
 *   listener is not).
 * Sources (BENCH_DRIFT_SOURCES, default `listener`; `listener,nft-monitor`
 * runs both side by side per size): `listener` is the agent's default,
 * secgroup-nftwatch (native/secgroup-nftwatch.c, built into dist/ by
 * scripts/build-native.sh) behind the same FallbackMonitor as the agent's, so
 * a row says which source actually ran; `nft-monitor` is `nft monitor` alone
 * (the fallback, and the previous round's source).
 */
import { execa } from 'execa';
import { join } from 'node:path';
import { AgentMetrics } from '../src/agent/metrics.js';
import { Reconciler } from '../src/agent/reconciler.js';
import { DriftMonitor, type DriftWatch } from '../src/agent/drift-monitor.js';
import { MemoryStateStore } from '../src/agent/state-store.js';
import { systemClock } from '../src/lib/clock.js';
import { createLogger, silentLogger } from '../src/lib/logger.js';
import { memberSetName } from '../src/nft/compile.js';
import { ExecaNftRunner } from '../src/nft/exec.js';
import { ProcessNftMonitor, type NftMonitor } from '../src/nft/monitor.js';
import { FallbackMonitor, ProcessNftWatch } from '../src/nft/nftwatch.js';
import type { Drift } from '../src/nft/readback.js';
import { DEFAULT_PLATFORM } from '../src/policy/platform.js';
import { parsePolicy } from '../src/policy/schema.js';
import { BenchLab } from './lab.js';
import { bigMember, groupPolicy } from './policies.js';

/** The hand edits both drift benches make (`nft` arguments), on the member set `set` of the big group: issue 18 item 4's list. */
export const TAMPERS = (set: string): [string, string[]][] => [
  ['table deleted', ['delete', 'table', 'inet', 'secgroup']],
  ['chain flushed', ['flush', 'chain', 'inet', 'secgroup', 'input']],
  ['rule inserted', ['insert', 'rule', 'inet', 'secgroup', 'input', 'tcp', 'dport', '9', 'accept']],
  ['member removed', ['delete', 'element', 'inet', 'secgroup', set, `{ ${bigMember(7)} }`]],
  ['member set flushed', ['flush', 'set', 'inet', 'secgroup', set]],
];


const SIZES = (process.env.BENCH_DRIFT_SIZES ?? '1000,10000,100000').split(',').map(Number);
const SOURCES = (process.env.BENCH_DRIFT_SOURCES ?? 'listener').split(',') as Source[];
type Source = 'listener' | 'nft-monitor';
const LISTENER = join(import.meta.dirname, '../dist/secgroup-nftwatch');
const LOADER = join(import.meta.dirname, '../dist/secgroup-nftload');
/** how long to wait for the monitor to cover the table (it loads every element before it subscribes) */
const COVER_WAIT_MS = 180_000;

export interface DriftRow {
  members: number;
  /** the source that ran: secgroup-nftwatch, or nft monitor (asked for, or the listener's fallback) */
  source: string;
  what: string;
  ms: number;
  reference: string;
  referenceMs: number;
  ratio: number;
  note: string;
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const r1 = (x: number) => Math.round(x * 10) / 10;

async function timed(fn: () => Promise<unknown>): Promise<number> {
  const t0 = performance.now();
  await fn();
  return performance.now() - t0;
}

/** Resolves with the ms until `dm` covers the table, or null after COVER_WAIT_MS. */
async function covered(dm: DriftMonitor): Promise<number | null> {
  const t0 = performance.now();
  while (!dm.watching) {
    if (performance.now() - t0 > COVER_WAIT_MS) return null;
    await new Promise((res) => setTimeout(res, 20));
  }
  return performance.now() - t0;
}

async function measure(lab: BenchLab, members: number, asked: Source): Promise<DriftRow[]> {
  const rows: DriftRow[] = [];
  const prefix = ['nsenter', `--net=/run/netns/${lab.host}`];
  const command = [...prefix, 'nft'];
  const nftMonitor = new ProcessNftMonitor({ table: 'secgroup', command });
  let fellBack: string | null = null;
  const source: NftMonitor =
    asked === 'listener' ? new FallbackMonitor(new ProcessNftWatch({ table: 'secgroup', path: LISTENER, prefix }), nftMonitor, (reason) => (fellBack = reason)) : nftMonitor;
  const ran = () => (asked === 'listener' && fellBack === null ? 'secgroup-nftwatch' : `nft monitor${fellBack ? ` (listener failed: ${fellBack})` : ''}`);
  // full applies as the agent sends them: the netlink batch through secgroup-nftload (BENCH_DRIFT_NFT_ONLY=1: nft -f)
  let loaderFellBack: string | null = null;
  const loader = process.env.BENCH_DRIFT_NFT_ONLY ? {} : { loader: [...prefix, LOADER], onLoaderFallback: (why: string) => (loaderFellBack = why) };
  const nft = new ExecaNftRunner({ table: 'secgroup', command, timeoutMs: 600_000, helper: true, ...loader });
  const metrics = new AgentMetrics();
  // BENCH_LOG=1: the agent code's log lines (debug) on stderr
  const logger = process.env.BENCH_LOG ? createLogger({ level: 'debug' }) : silentLogger();
  const r = new Reconciler({ nft, store: new MemoryStateStore(), clock: systemClock, logger, metrics, platform: DEFAULT_PLATFORM, checkBeforeApply: false });
  let repaired: ((d: Drift) => void) | null = null;
  /** when the last repair was asked for (the monitor reported the change) and how long it took (what agent/repair-plan.ts planned: restore, recreate, ...; bench/drift-steps.ts splits it) */
  let seenAt = 0;
  let repairMs = 0;
  const target = {
    isOwnMarker: (m: string) => r.isOwnMarker(m),
    setDriftWatch: (w: DriftWatch | null) => r.setDriftWatch(w),
    checkDrift: (o?: { elements?: boolean }) => r.checkDrift(o),
    probeMonitor: () => r.probeMonitor(),
    repairDrift: async (d: Drift) => {
      seenAt = performance.now();
      await r.repairDrift(d);
      repairMs = performance.now() - seenAt;
      repaired?.(d);
    },
  };
  const dm = new DriftMonitor({ monitor: source, target, clock: systemClock, logger, metrics });
  try {
    dm.start();
    const o = await r.submit(parsePolicy(groupPolicy(members, 10, 1)), 'controller');
    if (o.status !== 'applied') throw new Error(`apply failed: ${JSON.stringify(o)}`);
    const coverMs = await covered(dm);
    if (coverMs === null) throw new Error(`the monitor does not cover the table ${COVER_WAIT_MS} ms after the apply`);
    const full: number[] = [];
    for (let i = 0; i < 3; i++) full.push(await timed(() => r.checkDrift()));
    rows.push({
      members,
      source: ran(),
      what: 'monitor started before the apply -> covers the table (said ready or reported a probe; full check done)',
      ms: r1(coverMs),
      reference: 'full read-back with elements (median of 3)',
      referenceMs: r1(median(full)),
      ratio: Math.round((coverMs / median(full)) * 1000) / 1000,
      note: 'nft monitor loads every element before it subscribes; the listener has no cache',
    });
    const cheap: number[] = [];
    for (let i = 0; i < 10; i++) cheap.push(await timed(() => dm.periodicCheck()));
    if (!dm.watching) throw new Error('the monitor stopped covering the table during the checks');
    // the floor: the same read through the same helper shell, of a table that does not exist (nft starts, finds nothing)
    const none = new ExecaNftRunner({ table: 'sgnone', command, timeoutMs: 60_000, helper: true });
    const floor: number[] = [];
    try {
      for (let i = 0; i < 10; i++) floor.push(await timed(() => none.readMarker()));
    } finally {
      none.close();
    }
    rows.push({
      members,
      source: ran(),
      what: 'periodic check while the monitor covers the table (generation marker; median of 10)',
      ms: r1(median(cheap)),
      reference: 'the same marker read of a table that does not exist (median of 10)',
      referenceMs: r1(median(floor)),
      ratio: Math.round((median(cheap) / median(full)) * 1000) / 1000,
      note: `target <= 20 ms at 100k; ratio is vs the full read-back (${r1(median(full))} ms)`,
    });
    const set = memberSetName(6, 'sg-big');
    const tampers = TAMPERS(set);
    for (const [what, args] of tampers) {
      const waitMs = await covered(dm);
      if (waitMs === null) {
        rows.push({ members, source: ran(), what: `tamper -> repaired: ${what}`, ms: NaN, reference: 'periodic check period', referenceMs: 30_000, ratio: NaN, note: `not measured: the monitor did not cover the table within ${COVER_WAIT_MS} ms of the last repair` });
        continue;
      }
      const done = new Promise<Drift>((res) => (repaired = res));
      const t0 = performance.now();
      await lab.exec('host', ['nft', ...args]);
      let timer: NodeJS.Timeout | undefined;
      const d = await Promise.race([done, new Promise<null>((res) => (timer = setTimeout(() => res(null), 60_000)))]);
      clearTimeout(timer); // (a pending 60 s timer kept the bench process alive after its last row)
      const ms = performance.now() - t0;
      repaired = null;
      await r.idle();
      rows.push({
        members,
        source: ran(),
        what: `tamper -> repaired by the monitor: ${what}`,
        ms: r1(ms),
        reference: 'periodic check period',
        referenceMs: 30_000,
        ratio: Math.round((ms / 30_000) * 1000) / 1000,
        note: `${d ? `kind ${d.kind}; seen after ${r1(seenAt - t0)} ms, the repair took ${r1(repairMs)} ms; target <= 1 s` : 'NOT repaired within 60 s'}; the monitor covered the table again ${r1(waitMs)} ms after the previous step`,
      });
    }
  } finally {
    await dm.stop();
    await r.stop();
    nft.close();
  }
  // a repair measured through nft -f when the loader was asked for would measure the wrong thing: say so
  if (loaderFellBack) throw new Error(`drift bench: a full apply went through nft -f: ${loaderFellBack}`);
  return rows;
}

export async function runDriftBench(): Promise<DriftRow[]> {
  const rows: DriftRow[] = [];
  // the listener and the loader (secgroup-nftwatch, secgroup-nftload)
  await execa('bash', [join(import.meta.dirname, '../scripts/build-native.sh')]);
  for (const members of SIZES) {
    for (const asked of SOURCES) {
      const lab = await BenchLab.create();
      try {
        rows.push(...(await measure(lab, members, asked)));
      } finally {
        await lab.destroy();
      }
    }
  }
  return rows;
}
