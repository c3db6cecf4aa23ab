/**
 * bench apply-steps: where a full apply's time goes, step by step, in one
 * process per case (`npx tsx bench/apply-steps.ts [case...]`, root: a scratch
 * namespace): compile, render alone (the chunks consumed, nothing written),
 * the apply (render streamed into the script file, `nft -f` through the
 * helper shell: render included), the generation-marker
 * read, the read of the rule counters a full reload carries (no table: what
 * a first apply pays; with the table: what a reload of it pays), against
 * `nft -f` of the same script file alone. Best of 3 per step;
 * prints one row per case. Cases as bench/apply.ts names them.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { execa } from 'execa';
import { BenchLab } from './lab.js';
import { groupPolicy, syntheticPolicy } from './policies.js';
import { compilePolicy } from '../src/nft/compile.js';
import { ExecaNftRunner } from '../src/nft/exec.js';
import { renderDeleteScript, renderScript, renderTransactionChunks } from '../src/nft/render.js';
import { replaceTableTx } from '../src/nft/transaction.js';
import { parsePolicy, type PolicyInput } from '../src/policy/schema.js';

const CASES: Record<string, () => PolicyInput> = {
  '1k rules': () => syntheticPolicy({ rules: 1000, members: 100 }),
  '10k rules': () => syntheticPolicy({ rules: 10000, members: 100 }),
  '10k members': () => groupPolicy(10_000, 10),
  '100k members': () => groupPolicy(100_000, 10),
  '1M members': () => groupPolicy(1_000_000, 10),
};

async function measure(name: string, ns: string, dir: string): Promise<Record<string, number | string>> {
  const runner = new ExecaNftRunner({ table: 'secgroup', command: ['ip', 'netns', 'exec', ns, 'nft'], timeoutMs: 600_000, helper: true });
  const clear = () => execa('ip', ['netns', 'exec', ns, 'nft', '-f', '-'], { input: renderDeleteScript('inet', 'secgroup') });
  const policy = parsePolicy(CASES[name]!());
  const best: Record<string, number> = { compile: Infinity, render: Infinity, countersNoTable: Infinity, apply: Infinity, marker: Infinity, countersTable: Infinity, nftF: Infinity };
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
    await time('apply', () => runner.apply(replaceTableTx(compiled.table)));
    await time('marker', () => runner.readMarker());
    await time('countersTable', () => runner.readRuleCounters());
  }
  runner.close();
  const r = (x: number, d = 1) => Math.round(x * 10 ** d) / 10 ** d;
  const firstApply = best.compile! + best.countersNoTable! + best.apply! + best.marker!;
  return {
    case: name,
    compileMs: r(best.compile!),
    renderMs: r(best.render!),
    countersNoTableMs: r(best.countersNoTable!),
    applyMs: r(best.apply!),
    markerMs: r(best.marker!),
    countersTableMs: r(best.countersTable!),
    nftFMs: r(best.nftF!),
    firstApplyOverNftF: r(firstApply / best.nftF!, 2),
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
