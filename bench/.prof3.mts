import { groupPolicy, syntheticPolicy } from './policies.js';
import { parsePolicy } from '../src/policy/schema.js';
import { compilePolicy } from '../src/nft/compile.js';
import { renderScript } from '../src/nft/render.js';
const which = process.argv[2] ?? 'members';
const p = parsePolicy(which === 'members' ? groupPolicy(100_000, 10, 1) : { ...syntheticPolicy({ rules: 10000, members: 100 }), revision: 1 });
for (let i = 0; i < 3; i++) {
  let t = performance.now();
  const c = compilePolicy(p); const tc = performance.now() - t; t = performance.now();
  const s = renderScript(c.table); const tr = performance.now() - t;
  console.log({ compile: tc.toFixed(0), render: tr.toFixed(0), bytes: s.length });
}
