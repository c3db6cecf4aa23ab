/**
 * bench drift-steps: where the time of a drift repair goes, per tamper, at
 * one size (`npx tsx bench/drift-steps.ts [members]`, root, default 100000
 * members of bench/policies.ts groupPolicy; a scratch namespace). For each
 * tamper of bench/drift.ts (table deleted, chain flushed, rule inserted,
 * member removed, member set flushed), twice: the repair as before issue 18
 * round 6 (`before`: a deleted table compiled and replaced with its counters
 * read first, anything else reloaded in place over the applied table) and
 * as now (`now`: agent/repair-plan.ts, restored or recreated from the
 * applied state). Steps, in ms: the tamper's own `nft` run; the listener
 * (secgroup-nftwatch) reporting it, counted from the tamper's start; the
 * plan (the compile for a replacement, repair-plan.ts now); the counter
 * read (a replacement only; started before the compile, as the agent did:
 * what is left of it after the compile); the render alone (chunks consumed, nothing
 * written); the apply (render streamed into `nft -f` through the helper
 * shell, nft's own time included); the generation-marker read that verifies
 * it. One run per tamper and way (the figures of one run are noisy: run it
 * side by side with `uptime`, as bench/README.md says).
 */
import { execa } from 'execa';
import { join } from 'node:path';
import { planRepair, repairHow } from '../src/agent/repair-plan.js';
import { reloadApplied } from '../src/agent/sync-plan.js';
import { compilePolicy, memberSetName, type Compiled } from '../src/nft/compile.js';
import { ExecaNftRunner } from '../src/nft/exec.js';
import type { MonitorBatch } from '../src/nft/monitor.js';
import { ProcessNftWatch } from '../src/nft/nftwatch.js';
import { driftOf } from '../src/agent/drift-monitor.js';
import { renderTransactionChunks } from '../src/nft/render.js';
import { replaceTableTx, type NftTransaction } from '../src/nft/transaction.js';
import { parsePolicy } from '../src/policy/schema.js';
import { BenchLab } from './lab.js';
import { TAMPERS } from './drift.js';
import { groupPolicy } from './policies.js';

const MEMBERS = Number(process.argv[2] ?? 100_000);
const LISTENER = join(import.meta.dirname, '../dist/secgroup-nftwatch');
const r1 = (x: number) => Math.round(x * 10) / 10;

async function timed<T>(fn: () => T | Promise<T>): Promise<[T, number]> {
  const t0 = performance.now();
  const v = await fn();
  return [v, r1(performance.now() - t0)];
}

function renderOnly(tx: NftTransaction): number {
  let n = 0;
  for (const chunk of renderTransactionChunks(tx)) n += chunk.length;
  return n;
}

async function main(): Promise<void> {
  await execa('bash', [join(import.meta.dirname, '../scripts/build-native.sh')]);
  const lab = await BenchLab.create();
  const prefix = ['nsenter', `--net=/run/netns/${lab.host}`];
  const nft = new ExecaNftRunner({ table: 'secgroup', command: [...prefix, 'nft'], timeoutMs: 600_000, helper: true });
  const policy = parsePolicy(groupPolicy(MEMBERS, 10, 1));
  let pending: ((b: MonitorBatch) => void) | null = null;
  let own = '';
  const session = new ProcessNftWatch({ table: 'secgroup', path: LISTENER, prefix }).follow({
    onEvent: (e) => {
      if (e.kind === 'batch' && !e.batch.markers.includes(own)) pending?.(e.batch);
    },
    onExit: (reason) => console.error(`listener exited: ${reason}`),
  });
  const rows: Record<string, string | number>[] = [];
  try {
    const compiled: Compiled = compilePolicy(policy);
    own = compiled.table.marker!;
    await nft.apply(replaceTableTx(compiled.table));
    const applied = { revision: 1, compiled, tableComment: compiled.table.comment ?? null, fingerprint: '' };
    const set = memberSetName(6, 'sg-big');
    const tampers = TAMPERS(set);
    for (const [what, args] of tampers) {
      for (const way of ['before', 'now'] as const) {
        const seen = new Promise<[MonitorBatch, number]>((res) => (pending = (b) => res([b, performance.now()])));
        const t0 = performance.now();
        const [, tamperMs] = await timed(() => lab.exec('host', ['nft', ...args]));
        const [batch, seenAt] = await seen;
        pending = null;
        const d = driftOf(batch);
        let planMs = 0;
        let countersMs = 0;
        let tx: NftTransaction;
        let how: string;
        if (way === 'before') {
          if (d.inPlace) {
            tx = reloadApplied(applied).tx;
            how = 'in-place reload';
          } else {
            // as the agent did: the counter read asked for first, nft runs it while the compile runs
            const read = nft.readRuleCounters();
            const [again, ms] = await timed(() => compilePolicy(policy));
            planMs = ms;
            const [counters, cms] = await timed(() => read);
            countersMs = cms;
            tx = counters?.size ? replaceTableTx(again.table, counters) : replaceTableTx(again.table);
            how = 'replacement (compiled, counters read)';
          }
        } else {
          const [planned, ms] = await timed(() => planRepair(applied, d)!);
          planMs = ms;
          tx = planned.kind === 'noop' ? replaceTableTx(compiled.table) : planned.tx;
          how = repairHow(planned);
        }
        const [chars, renderMs] = await timed(() => renderOnly(tx));
        const [, applyMs] = await timed(() => nft.apply(tx));
        const [marker, markerMs] = await timed(() => nft.readMarker());
        if (marker !== own) throw new Error(`${what} (${way}): marker ${marker} after the repair`);
        rows.push({
          members: MEMBERS,
          tamper: what,
          way,
          how,
          tamperNftMs: tamperMs,
          seenMs: r1(seenAt - t0),
          planMs,
          countersMs,
          renderMs,
          scriptKB: Math.round(chars / 1024),
          applyMs,
          markerMs,
          repairMs: r1(planMs + countersMs + applyMs + markerMs),
          totalMs: r1(performance.now() - t0),
        });
      }
    }
  } finally {
    session.stop();
    nft.close();
    await lab.destroy();
  }
  console.table(rows);
}

await main();
