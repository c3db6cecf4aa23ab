/**
 * bench apply-steps: where a full apply's time goes, step by step, in one
 * process per case (`npx tsx bench/apply-steps.ts [case...]`, root: a scratch
 * namespace): compile, render alone (the chunks consumed, nothing written),
 * the apply (render written into the script file, `nft -f` through the
 * helper shell: render included), the generation-marker
 * read (after the ack: not on a full apply's path), the read of the rule
 * counters a replacement carries (no table; with the table), against
 * `nft -f` of the same script file alone; and a full reload of the existing
 * table both ways the agent does one (nft/counters.ts): replaced, its
 * counters read first and carried (`reloadReplace`: read + apply), and in
 * place, keeping its counter objects without a read (`reloadInPlace`).
 * The counter read of a replacement (an agent restarted over its table;
 * after a start that found no table there is no read) is also timed as the
 * agent does it: asked for before the compile, so nft runs it while the
 * compile runs (`compileWithCounters`, here of no table). The ratios: a
 * first apply after a start that found no table (`firstApply`: compile +
 * apply), and one that reads counters first (`withCountersRead`:
 * compileWithCounters + apply), over `nft -f` alone.
 * Best of 3 per step; prints one row per case. Cases as bench/apply.ts names them.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { execa } from 'execa';
import { BenchLab } from './lab.js';
import { APPLY_CASES } from './policies.js';
import { compilePolicy } from '../src/nft/compile.js';
import { ExecaNftRunner } from '../src/nft/exec.js';
import { renderDeleteScript, renderScript, renderTransactionChunks } from '../src/nft/render.js';
import { reloadInPlaceTx, replaceTableTx } from '../src/nft/transaction.js';
import { parsePolicy } from '../src/policy/schema.js';


async function measure(name: string, ns: string, dir: string): Promise<Record<string, number | string>> {
  const runner = new ExecaNftRunner({ table: 'secgroup', command: ['ip', 'netns', 'exec', ns, 'nft'], timeoutMs: 600_000, helper: true });
  const clear = () => execa('ip', ['netns', 'exec', ns, 'nft', '-f', '-'], { input: renderDeleteScript('inet', 'secgroup') });
  const policy = parsePolicy(APPLY_CASES[name]!());
  const best: Record<string, number> = { compile: Infinity, compileWithCounters: Infinity, render: Infinity, countersNoTable: Infinity, apply: Infinity, marker: Infinity, countersTable: Infinity, reloadReplace: Infinity, reloadInPlace: Infinity, nftF: Infinity };
  const time = async <T>(step: string, f: () => T | Promise<T>): Promise<T> => {
    const t0 = performance.now();
    const r = await f();
    best[step] = Math.min(best[step]!, performance.now() - t0);
    return r;
  };
  for (let i = 0; i < 3; i++) {
    const compiled = await time('compile', () => compilePolicy(policy));
    await time('render', () => {
      let n = 0;
      for (const chunk of renderTransactionChunks(replaceTableTx(compiled.table))) n += chunk.length;
      return n;
    });
    const f = join(dir, 'steps.nft');
    writeFileSync(f, renderScript(compiled.table));
    await clear();
    await time('nftF', () => execa('ip', ['netns', 'exec', ns, 'nft', '-f', f]));
    await clear();
    await time('countersNoTable', () => runner.readRuleCounters());
    // what a first apply does now (reconciler.ts): the counter read asked for first, nft runs it while the compile runs
    await time('compileWithCounters', async () => {
      const read = runner.readRuleCounters();
      compilePolicy(policy);
      return read;
    });
    await time('apply', () => runner.apply(replaceTableTx(compiled.table)));
    await time('marker', () => runner.readMarker());
    await time('countersTable', () => runner.readRuleCounters());
    await time('reloadReplace', async () => {
      const counters = await runner.readRuleCounters();
      await runner.apply(counters?.size ? replaceTableTx(compiled.table, counters) : replaceTableTx(compiled.table));
    });
    await time('reloadInPlace', () => runner.apply(reloadInPlaceTx(compiled.table, compiled.table)));
  }
  runner.close();
  const r = (x: number, d = 1) => Math.round(x * 10 ** d) / 10 ** d;
  const firstApply = best.compile! + best.apply!;
  const withCountersRead = best.compileWithCounters! + best.apply!;
  return {
    case: name,
    compileMs: r(best.compile!),
    compileWithCountersMs: r(best.compileWithCounters!),
    renderMs: r(best.render!),
    countersNoTableMs: r(best.countersNoTable!),
    applyMs: r(best.apply!),
    markerMs: r(best.marker!),
    countersTableMs: r(best.countersTable!),
    reloadReplaceMs: r(best.reloadReplace!),
    reloadInPlaceMs: r(best.reloadInPlace!),
    nftFMs: r(best.nftF!),
    firstApplyOverNftF: r(firstApply / best.nftF!, 2),
    withCountersReadOverNftF: r(withCountersRead / best.nftF!, 2),
  };
}

if (process.argv.includes('--child')) {
  const at = process.argv.indexOf('--child');
  const [name, ns, dir] = process.argv.slice(at + 1, at + 4) as [string, string, string];
  process.stdout.write(JSON.stringify(await measure(name, ns, dir)));
} else {
  const names = process.argv.slice(2).length ? process.argv.slice(2) : ['1k rules', '10k rules', '10k members', '100k members'];
  const lab = await BenchLab.create();
  const dir = mkdtempSync(join(tmpdir(), 'sgt-steps-'));
  const rows = [];
  try {
    for (const n of names) {
      const out = execFileSync(process.execPath, ['--max-old-space-size=8192', '--import', 'tsx', fileURLToPath(import.meta.url), '--child', n, lab.host, dir], { encoding: 'utf8', timeout: 600_000, stdio: ['ignore', 'pipe', 'inherit'] });
      rows.push(JSON.parse(out));
    }
  } finally {
    await lab.destroy();
    rmSync(dir, { recursive: true, force: true });
  }
  console.table(rows);
}
