/**
 * bench render: compile + render time and peak memory of `secgroup render`'s
 * work for growing policies. Each size runs in its own child process so peak
 * RSS is that size's alone. Reference: the same policy's JSON.parse +
 * validation alone (what any consumer pays before compiling).
 */
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { syntheticPolicy } from './policies.js';
import { parsePolicy } from '../src/policy/schema.js';
import { compilePolicy } from '../src/nft/compile.js';
import { renderScript } from '../src/nft/render.js';

export interface RenderRow {
  case: string;
  rules: number;
  members: number;
  validateMs: number;
  compileMs: number;
  renderMs: number;
  totalMs: number;
  elements: number;
  layers: number;
  scriptBytes: number;
  peakRssMb: number;
}

export const CASES = [
  { case: '100 rules', rules: 100, members: 100 },
  { case: '1k rules', rules: 1000, members: 1000 },
  { case: '10k rules', rules: 10000, members: 1000 },
  { case: '100k members', rules: 100, members: 100000 },
];

/** Runs one case in this process (called in the child). */
export function measureOne(c: (typeof CASES)[number]): RenderRow {
  const doc = JSON.parse(JSON.stringify(syntheticPolicy({ rules: c.rules, members: c.members })));
  const t0 = performance.now();
  const policy = parsePolicy(doc);
  const t1 = performance.now();
  const compiled = compilePolicy(policy);
  const t2 = performance.now();
  const script = renderScript(compiled.table);
  const t3 = performance.now();
  return {
    case: c.case,
    rules: c.rules,
    members: c.members,
    validateMs: round(t1 - t0),
    compileMs: round(t2 - t1),
    renderMs: round(t3 - t2),
    totalMs: round(t3 - t0),
    elements: compiled.stats.elements,
    layers: Math.max(...Object.values(compiled.stats.layers), 0),
    scriptBytes: script.length,
    peakRssMb: round(process.resourceUsage().maxRSS / 1024),
  };
}

function round(x: number): number {
  return Math.round(x * 10) / 10;
}

export function runRenderBench(): RenderRow[] {
  const self = fileURLToPath(import.meta.url);
  return CASES.map((c) => {
    const out = execFileSync(process.execPath, ['--import', 'tsx', self, '--child', c.case], { encoding: 'utf8', maxBuffer: 1 << 20 });
    return JSON.parse(out) as RenderRow;
  });
}

if (process.argv.includes('--child')) {
  const name = process.argv[process.argv.indexOf('--child') + 1];
  const c = CASES.find((x) => x.case === name);
  if (!c) throw new Error(`unknown case ${name}`);
  process.stdout.write(JSON.stringify(measureOne(c)));
}
