/**
 * The layering of src/ (docs/architecture.md), checked on every run so it
 * stays true: imports only go down `lib -> policy -> nft, protocol -> probe ->
 * agent, controller -> cli`, there is no import cycle between files (type
 * imports included: a cycle of types today is a cycle of values tomorrow),
 * and no source file grows past 500 lines without a reason at its top.
 */
import { readFileSync, readdirSync, statSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';

const SRC = resolve(import.meta.dirname, '../../src');

/** Rank of each top-level directory of src/: a file may import its own directory or a lower rank. */
const LAYERS: Record<string, number> = { lib: 0, policy: 1, nft: 2, protocol: 2, probe: 3, agent: 4, controller: 4, cli: 5 };
const MAX_LINES = 500;
/** What a file over MAX_LINES says at its top to explain its size. */
const SIZE_REASON = /^\s*\*?\s*Size:/m;

function sourceFiles(dir: string): string[] {
  return readdirSync(dir).flatMap((name) => {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) return sourceFiles(p);
    return p.endsWith('.ts') ? [p] : [];
  });
}

const IMPORT = /(?:^|\n)\s*(?:import|export)\s[^'";]*?from\s+'([^']+)'|import\(\s*'([^']+)'\s*\)/g;

/** Relative imports of a file, resolved to absolute .ts paths. */
function importsOf(file: string): string[] {
  const text = readFileSync(file, 'utf8');
  const out: string[] = [];
  for (const m of text.matchAll(IMPORT)) {
    const spec = m[1] ?? m[2]!;
    if (!spec.startsWith('.')) continue;
    out.push(resolve(dirname(file), spec.replace(/\.js$/, '.ts')));
  }
  return out;
}

const layerOf = (file: string): string => relative(SRC, file).split('/')[0]!;
const files = sourceFiles(SRC);
const graph = new Map(files.map((f) => [f, importsOf(f)]));

describe('architecture of src/', () => {
  it('knows the layer of every top-level directory', () => {
    const unknown = [...new Set(files.map(layerOf))].filter((d) => !(d in LAYERS));
    expect(unknown, 'add new directories to LAYERS and docs/architecture.md').toEqual([]);
  });

  it('imports only resolve to files that exist', () => {
    const missing = [...graph].flatMap(([f, deps]) => deps.filter((d) => !graph.has(d)).map((d) => `${relative(SRC, f)} -> ${relative(SRC, d)}`));
    expect(missing).toEqual([]);
  });

  it('imports only go down the layers', () => {
    const upward: string[] = [];
    for (const [f, deps] of graph) {
      const from = layerOf(f);
      for (const d of deps) {
        const to = layerOf(d);
        if (to !== from && LAYERS[to]! >= LAYERS[from]!) upward.push(`${relative(SRC, f)} (${from}) -> ${relative(SRC, d)} (${to})`);
      }
    }
    expect(upward).toEqual([]);
  });

  it('has no import cycle', () => {
    const cycles: string[] = [];
    const state = new Map<string, 'open' | 'done'>();
    const stack: string[] = [];
    const visit = (f: string): void => {
      state.set(f, 'open');
      stack.push(f);
      for (const d of graph.get(f) ?? []) {
        if (state.get(d) === 'open') cycles.push([...stack.slice(stack.indexOf(d)), d].map((x) => relative(SRC, x)).join(' -> '));
        else if (!state.has(d) && graph.has(d)) visit(d);
      }
      stack.pop();
      state.set(f, 'done');
    };
    for (const f of files) if (!state.has(f)) visit(f);
    expect([...new Set(cycles)]).toEqual([]);
  });

  it(`has no file over ${MAX_LINES} lines without a reason at its top`, () => {
    const big = files.filter((f) => {
      const text = readFileSync(f, 'utf8');
      const lines = text.split('\n').length;
      const header = text.slice(0, text.indexOf('*/') + 2);
      return lines > MAX_LINES && !SIZE_REASON.test(header);
    });
    expect(big.map((f) => relative(SRC, f))).toEqual([]);
  });

  it('sees static, type, re-export and dynamic imports (the scanner itself)', () => {
    const sample = [
      "import { a } from './a.js';",
      "import type { B } from '../agent/b.js';",
      "export { c } from './c.js';",
      "const d = await import('./d.js');",
    ].join('\n');
    const specs = [...sample.matchAll(IMPORT)].map((m) => m[1] ?? m[2]);
    expect(specs).toEqual(['./a.js', '../agent/b.js', './c.js', './d.js']);
  });
});
