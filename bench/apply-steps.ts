/**
 * bench apply-steps: where a full apply's time goes, step by step, in one
 * process per case (`npx tsx bench/apply-steps.ts [case...]`, root: a scratch
 * namespace): compile, render (to text, as the script nft reads), the write
 * of the script and `nft -f` through the helper shell, the generation-marker
 * read, against `nft -f` of the same script file alone. Best of 3 per step;
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
import { renderDeleteScript, renderScript } from '../src/nft/render.js';
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
  const best: Record<string, number> = { compile: Infinity, render: Infinity, apply: Infinity, marker: Infinity, nftF: Infinity };
  const time = async <T>(step: string, f: () => T | Promise<T>): Promise<T> => {
    const t0 = performance.now();
    const r = await f();
    best[step] = Math.min(best[step]!, performance.now() - t0);
    return r;
  };
  for (let i = 0; i < 3; i++) {
    const compiled = await time('compile', () => compilePolicy(policy));
    const script = await time('render', () => renderScript(compiled.table));
    const f = join(dir, 'steps.nft');
    writeFileSync(f, script);
    await clear();
    await time('nftF', () => execa('ip', ['netns', 'exec', ns, 'nft', '-f', f]));
    await clear();
    await time('apply', () => runner.apply(replaceTableTx(compiled.table)));
    await time('marker', () => runner.readMarker());
  }
  runner.close();
  const r = (x: number) => Math.round(x * 10) / 10;
  return { case: name, compileMs: r(best.compile!), renderMs: r(best.render!), applyMs: r(best.apply!), markerMs: r(best.marker!), nftFMs: r(best.nftF!), sumOverNftF: r((best.compile! + best.render! + best.apply! + best.marker!) / best.nftF!) };
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
