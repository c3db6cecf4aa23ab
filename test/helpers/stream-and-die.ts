/**
 * A process that dies part-way through a streamed replacement (the agent
 * killed mid-apply): it starts nft through the helper shell before the table
 * exists (ExecaNftRunner.prepareApply), hands it a big replacement of our
 * table, and SIGKILLs itself after `chunks` chunks of the script. Used by
 * test/kernel/agent-nft-runner.test.ts: nft must then refuse the cut script
 * whole.
 *
 *   node --import tsx test/helpers/stream-and-die.ts <netns> <chunks>
 */
import { existsSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { compilePolicy } from '../../src/nft/compile.js';
import { ExecaNftRunner } from '../../src/nft/exec.js';
import { replaceTableTx } from '../../src/nft/transaction.js';
import { policy } from '../unit/agent/fixtures.js';
import { policyOf } from './policies.js';

const [ns, after] = process.argv.slice(2);
if (after === 'head') {
  const nft = new ExecaNftRunner({ table: 'secgroup', command: ['ip', 'netns', 'exec', ns!, 'nft'], helper: true });
  await nft.probe();
  const prepared = nft.prepareApply();
  if (!prepared?.begin) throw new Error('no prepared apply with begin()');
  // a policy whose rule chains alone are ~1 MB: far more than a pipe holds
  const rules = Array.from({ length: 3000 }, (_, i) => ({ protocol: 'tcp' as const, multiport: String(1000 + i), remote_ip_prefix: `198.18.${i >> 8}.${i & 255}/32` }));
  // nft started and this process holds the FIFO for writing: the helper unlinks it then (shell-spawner.ts runStream)
  const dir = readdirSync(tmpdir()).find((d) => d.startsWith(`secgroup-nft-${process.pid}-`));
  for (let i = 0; i < 500 && dir && existsSync(join(tmpdir(), dir, 'pipe')); i++) await new Promise((r) => setTimeout(r, 10));
  process.stdout.write(`pid ${process.pid} head\n`);
  compilePolicy(policyOf(rules), {
    onRuleChains: (chains) => {
      prepared.begin!('secgroup', chains);
      process.kill(process.pid, 'SIGKILL');
    },
  });
}
const nft = new ExecaNftRunner({ table: 'secgroup', command: ['ip', 'netns', 'exec', ns!, 'nft'], helper: true });
await nft.probe(); // the helper shell made its FIFO
const prepared = nft.prepareApply();
if (!prepared) throw new Error('no prepared apply: the helper has no FIFO');
// 20k members: a script of ~600 KB, many pieces
const table = compilePolicy(policy(9, { members: Array.from({ length: 20_000 }, (_, i) => `198.18.${64 + (i >> 8)}.${i & 255}`) })).table;
const tx = replaceTableTx(table);
// the runner's rendering of the script, cut: after `after` chunks the process kills itself (no exit hook, no
// cleanup), with the stream open and whatever libuv wrote so far in the FIFO (the first chunk at least)
type Scripted = { script(t: typeof tx): Iterable<string> };
const render = (nft as unknown as Scripted).script.bind(nft);
const total = [...render(tx)].length;
const cut = after === 'half' ? Math.floor(total / 2) : Number(after);
if (!(cut >= 1 && cut < total)) throw new Error(`cannot cut a script of ${total} chunks after ${after}`);
(nft as unknown as Scripted).script = (t) =>
  (function* () {
    let n = 0;
    for (const c of render(t)) {
      yield c;
      if (++n >= cut) process.kill(process.pid, 'SIGKILL');
    }
  })();
process.stdout.write(`pid ${process.pid} cut ${cut} of ${total}\n`);
await prepared.apply(tx);
