/**
 * bench apply-memory: what the agent's heap holds at each step of a full
 * apply, so the peak RSS figure of `bench apply` (VmHWM) can be taken apart
 * (issue 18 item 2). Run directly, no root, nothing applied:
 * `npx tsx bench/apply-memory.ts [case...]` (cases: '10k members',
 * '100k members', '1M members'; default the first two).
 *
 * One child process per case, started with the agent's V8 flags and
 * `--expose-gc`. The policy arrives as the agent receives it, one `policy`
 * frame of JSON text; then the frame is decoded as the agent decodes it
 * (a long member list read straight into packed sets: the member list
 * comes out of the frame's text, src/policy/packed-members.ts), the
 * document parsed (parsePolicy: zod plus checks), compiled and rendered as the runner
 * streams it (chunks consumed, nothing written). After each step a full GC
 * runs and the live heap (heapUsed) is read: `live*Mb` is what the objects
 * kept so far hold, the differences are what each step keeps. `renderPeakMb`
 * is the highest heapUsed seen between chunks while rendering (garbage
 * included: the transient cost of the stream). `memberSetMb` is what the
 * remote group's members hold once compiled: one packed AddressSet, the
 * member set's elements and the rules' peers at once (measured by detaching
 * both after the run; live heap plus array buffers, where the packed words
 * live; before issue 18 round 4 these were two lists of objects, ~25 MB at
 * 100k members).
 * `baseRssMb` is the process's RSS before the policy exists (node, the
 * code, tsx's loader: tsx holds ~20 MB more than the agent's bundle, so
 * compare heap figures here, and take VmHWM from `bench apply`).
 */
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { groupPolicy } from './policies.js';
import { AGENT_V8_FLAGS } from '../src/agent/footprint.js';
import { compilePolicy, type Compiled } from '../src/nft/compile.js';
import { renderTransactionChunks } from '../src/nft/render.js';
import { replaceTableTx } from '../src/nft/transaction.js';
import { controllerMessageSchema, decode, type ControllerMessage as Message } from '../src/protocol/messages.js';
import { parseWithPackedMembers } from '../src/policy/packed-members.js';
import { parsePolicy, type Policy } from '../src/policy/schema.js';

const CASES: Record<string, number> = { '10k members': 10_000, '100k members': 100_000, '1M members': 1_000_000 };

const MB = 1024 * 1024;
const r1 = (x: number) => Math.round(x * 10) / 10;

function statusMb(field: 'VmHWM' | 'VmRSS'): number {
  const m = new RegExp(`^${field}:\\s+(\\d+) kB$`, 'm').exec(readFileSync('/proc/self/status', 'utf8'));
  return m ? Number(m[1]) / 1024 : 0;
}

/** The live heap, MB: two full GCs first (one leaves some of what the last step dropped). */
function live(): number {
  const gc = (globalThis as { gc?: () => void }).gc!;
  gc();
  gc();
  return process.memoryUsage().heapUsed / MB;
}

/** live() plus the memory of array buffers (typed arrays' contents are outside the heap). */
function liveWithBuffers(): number {
  return live() + process.memoryUsage().arrayBuffers / MB;
}

function measure(name: string): Record<string, number | string> {
  const members = CASES[name];
  if (members === undefined) throw new Error(`unknown case ${name}`);
  const baseRss = statusMb('VmRSS');
  const base = live();
  // what the agent holds at each step; a step drops what it no longer needs (delete), as the agent's scopes do
  const held: { frame?: string; decoded?: ReturnType<typeof decode<Message>>; message?: unknown; policy?: Policy; compiled?: Compiled } = {};
  held.frame = JSON.stringify({ type: 'policy', policy: groupPolicy(members, 10, 1) });
  const liveFrame = live();
  held.decoded = decode(controllerMessageSchema, held.frame, parseWithPackedMembers);
  if (!held.decoded.ok || held.decoded.message.type !== 'policy') throw new Error('bench: bad policy frame');
  held.message = held.decoded.message.policy;
  delete held.decoded;
  const liveDecoded = live();
  held.policy = parsePolicy(held.message);
  delete held.frame;
  delete held.message;
  const liveParsed = live();
  held.compiled = compilePolicy(held.policy);
  const liveCompiled = live();
  let peak = 0;
  let text = 0;
  for (const chunk of renderTransactionChunks(replaceTableTx(held.compiled.table))) {
    text += chunk.length;
    peak = Math.max(peak, process.memoryUsage().heapUsed / MB);
  }
  const withMembers = liveWithBuffers();
  const set = held.compiled.table.maps.find((x) => x.set);
  if (!set) throw new Error('bench: no member set');
  set.elements = [];
  const rules = [...held.compiled.layout.values()].flatMap((l) => l.rules).filter((x) => x.peers.length > 1000);
  for (const x of rules) x.peers = [];
  const withoutMembers = liveWithBuffers();
  const elementCount = held.compiled.stats.elements;
  delete held.compiled;
  const withoutCompiled = live();
  delete held.policy;
  const withoutPolicy = live();
  return {
    case: name,
    elements: elementCount,
    baseRssMb: r1(baseRss),
    baseHeapMb: r1(base),
    frameMb: r1(liveFrame - base),
    decodedMb: r1(liveDecoded - base),
    documentMb: r1(withoutCompiled - withoutPolicy),
    leftAfterParseMb: r1(liveParsed - base),
    compiledMb: r1(liveCompiled - liveParsed),
    memberSetMb: r1(withMembers - withoutMembers),
    renderPeakOverLiveMb: r1(peak - liveCompiled),
    scriptMb: r1(text / MB),
    hwmMb: r1(statusMb('VmHWM')),
  };
}

if (process.argv.includes('--child')) {
  const name = process.argv[process.argv.indexOf('--child') + 1]!;
  process.stdout.write(JSON.stringify(measure(name)));
} else {
  const names = process.argv.slice(2).length ? process.argv.slice(2) : ['10k members', '100k members'];
  const rows = names.map((n) =>
    JSON.parse(
      execFileSync(process.execPath, [...AGENT_V8_FLAGS, '--expose-gc', '--max-old-space-size=8192', '--import', 'tsx', fileURLToPath(import.meta.url), '--child', n], {
        encoding: 'utf8',
        env: { ...process.env, MALLOC_ARENA_MAX: '2' },
        timeout: 600_000,
        stdio: ['ignore', 'pipe', 'inherit'],
      }),
    ),
  );
  console.table(rows);
}
