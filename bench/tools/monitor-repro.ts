/**
 * Does nft's `nft monitor` survive the agent's own transactions? A scratch
 * network namespace (bench/lab.ts), one `nft monitor` per variant following
 * it, and the transactions the agent sends, in the order it sends them: the
 * first apply (a replacement that creates the table), a full reload in place
 * (reloadInPlaceTx), a replacement carrying counters (a drift repair), a
 * member delta (element updates) and a last in-place reload. After each step
 * it prints, per monitor variant, whether it still runs (and the signal it
 * died of). Run as root: `npx tsx bench/tools/monitor-repro.ts [members]`.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { compilePolicy } from '../../src/nft/compile.js';
import { renderTransaction } from '../../src/nft/render.js';
import { reloadInPlaceTx, replaceTableTx, type NftTransaction } from '../../src/nft/transaction.js';
import { applyMembershipChange } from '../../src/nft/membership.js';
import { DEFAULT_PLATFORM } from '../../src/policy/platform.js';
import { parsePolicy } from '../../src/policy/schema.js';
import { BenchLab } from '../lab.js';
import { bigMember, groupPolicy } from '../policies.js';

const members = Number(process.argv[2] ?? 100_000);
const VARIANTS: Record<string, string[]> = {
  text: ['monitor'],
  json: ['-j', 'monitor'],
  'text rules': ['monitor', 'rules'],
  'text tables': ['monitor', 'tables'],
  'text chains': ['monitor', 'chains'],
  'text sets': ['monitor', 'sets'],
  'text elements': ['monitor', 'elements'],
};

interface Watch {
  name: string;
  child: ChildProcess;
  bytes: number;
  died: string | null;
}

const lab = await BenchLab.create();
const watches: Watch[] = [];
try {
  const compile = (revision: number, rules: number) => compilePolicy(parsePolicy(groupPolicy(members, rules, revision)), { table: 'secgroup', platform: DEFAULT_PLATFORM });
  for (const [name, args] of Object.entries(VARIANTS)) {
    const child = spawn('ip', ['netns', 'exec', lab.host, 'nft', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    const w: Watch = { name, child, bytes: 0, died: null };
    child.stdout!.on('data', (c: Buffer) => (w.bytes += c.length));
    child.on('close', (code, signal) => (w.died = signal ?? `code ${code}`));
    watches.push(w);
  }
  await new Promise((r) => setTimeout(r, 500));
  const c1 = compile(1, 10);
  const c2 = compile(2, 12);
  const c3 = compile(3, 11);
  // (a membership plan updates c3 in place: planned only once c3 is applied)
  let last = c3.table;
  const delta = (): NftTransaction => {
    const change = applyMembershipChange(c3, parsePolicy(groupPolicy(members, 11, 4, { index: 5, with: members + 5 })), { 'sg-big': { add: [bigMember(members + 5)], remove: [bigMember(5)] } });
    if (!change.ok) throw new Error(`member delta not planned: ${change.reason}`);
    last = change.compiled.table;
    return { family: 'inet', table: 'secgroup', ops: change.ops };
  };
  const steps: [string, () => NftTransaction][] = [
    ['first apply (replacement creating the table)', () => replaceTableTx(c1.table)],
    ['full reload in place (reloadInPlaceTx)', () => reloadInPlaceTx(c2.table, c1.table)],
    ['replacement (drift repair: replaceTableTx with counters)', () => replaceTableTx(c3.table, new Map())],
    ['member delta (element updates)', delta],
    ['full reload in place again', () => reloadInPlaceTx(c2.table, last)],
  ];
  for (const [what, tx] of steps) {
    const t0 = performance.now();
    await lab.nft(renderTransaction(tx()));
    const ms = Math.round(performance.now() - t0);
    await new Promise((r) => setTimeout(r, 3000));
    console.log(`${what} (${ms} ms): ${watches.map((w) => `${w.name}=${w.died ? `DIED ${w.died}` : `up (${w.bytes} B)`}`).join(', ')}`);
  }
} finally {
  for (const w of watches) if (!w.died) w.child.kill('SIGTERM');
  await lab.destroy();
}
