#!/usr/bin/env node
/**
 * bench apply: the agent's full apply (the reconciler's real code path:
 * compile + render + nft --check + nft -f + read-back and verify) against
 * `nft -f` of the same script alone, in a scratch network namespace; then a
 * one-address change to a big remote group (element-only incremental update)
 * against a full reload of the same change. Each case runs in its own child
 * process, run as the agent runs (the code bundled by scripts/bundle.mjs, not
 * through tsx, with the agent's V8 flag set at run time as `secgroup agent`
 * sets it, and the Environment= of systemd/secgroup-agent.service), so
 * its peak RSS is that case's alone: the agent's peak during its
 * full applies is VmHWM from /proc/self/status read right after them (the
 * reference script is rendered by another child, so it is not in that
 * figure; that child also writes the document as JSON text, which this one
 * decodes as the agent decodes its `policy` frame); nft's peak RSS is taken
 * with /usr/bin/time over every nft the case ran. The reconciler is set up
 * as the agent's (createAgent): no separate --check, heap bursts while it
 * compiles (footprint.ts), its last known good written to a state directory
 * after each sync (FileStateStore, which writes long member lists a slice
 * at a time; an in-memory store would hold the whole document as one
 * string, which the agent never does); the time of a full apply runs to its ack (its
 * marker read follows the ack). Each full apply is a fresh reconciler's
 * first, after the probe the agent makes at start (it finds no table, so
 * no counters are read to carry). The runner sends full replacements as
 * the agent's does: the netlink batch it encodes, through
 * secgroup-nftload (dist/, scripts/build-native.sh; its peak RSS counted
 * with nft's); BENCH_APPLY_NFT_ONLY=1 measures the agent with `nft -f`
 * instead (no loader), as before it had one.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { BenchLab, bundleBench } from './lab.js';
import { bigMember, groupPolicy, syntheticPolicy } from './policies.js';
import { FileStateStore } from '../src/agent/state-store.js';
import { applyPolicyDelta } from '../src/protocol/delta.js';
import { controllerMessageSchema, decode } from '../src/protocol/messages.js';
import { compileBurst, tuneForFootprint } from '../src/agent/footprint.js';
import { unitEnvironment } from './footprint.js';
import { AgentMetrics } from '../src/agent/metrics.js';
import { Reconciler, type SyncOutcome } from '../src/agent/reconciler.js';
import { systemClock } from '../src/lib/clock.js';
import { createLogger, silentLogger } from '../src/lib/logger.js';
import { compilePolicy } from '../src/nft/compile.js';
import { ExecaNftRunner } from '../src/nft/exec.js';
import { renderScript, renderDeleteScript } from '../src/nft/render.js';
import { DEFAULT_PLATFORM } from '../src/policy/platform.js';
import { parseWithPackedMembers } from '../src/policy/packed-members.js';
import { parsePolicy, type Policy, type PolicyInput } from '../src/policy/schema.js';

interface Case {
  case: string;
  build: (revision: number, replace?: { index: number; with: number }) => PolicyInput;
  /** run the one-address change too (group cases) */
  change?: number;
  /** only when named in BENCH_APPLY_CASES */
  optIn?: boolean;
}

const CASES: Case[] = [
  { case: '1k rules', build: (rev) => ({ ...syntheticPolicy({ rules: 1000, members: 100 }), revision: rev }) },
  { case: '10k rules', build: (rev) => ({ ...syntheticPolicy({ rules: 10000, members: 100 }), revision: rev }) },
  // not in the default run (minutes under load); BENCH_APPLY_CASES='100k rules'
  { case: '100k rules', build: (rev) => ({ ...syntheticPolicy({ rules: 100_000, members: 100 }), revision: rev }), optIn: true },
  { case: '10k members', build: (rev, rep) => groupPolicy(10_000, 10, rev, rep), change: 10_000 },
  { case: '100k members', build: (rev, rep) => groupPolicy(100_000, 10, rev, rep), change: 100_000 },
  // not in the default run: ~4 min and ~5 GB of memory for the agent code (see bench/README.md);
  // run it with BENCH_APPLY_CASES='1M members'
  { case: '1M members', build: (rev, rep) => groupPolicy(1_000_000, 10, rev, rep), change: 1_000_000, optIn: true },
];

export interface ApplyRow {
  case: string;
  elements: number;
  what: string;
  reference: string;
  ms: number;
  referenceMs: number;
  ratio: number;
  /** full apply rows: VmHWM of the case's process after its full applies; change rows: its peak at the end */
  agentPeakRssMb: number;
  /**
   * the part of the case process's RSS that is mapped files when its peak is read (RssFile: node's own binary,
   * paged in as it runs, its optimizing compilers included; clean pages the kernel can drop and shares between
   * node processes); the rest of the peak is the process's own memory
   */
  agentFileRssMb: number;
  nftPeakRssMb: number;
  /** full apply rows: the first of the runs (a process that has not compiled yet) */
  firstMs?: number;
}

const round = (x: number, d = 1) => Math.round(x * 10 ** d) / 10 ** d;

/** A field of /proc/self/status, MB: VmHWM (the process's peak resident memory so far), RssFile. */
function statusMb(field: 'VmHWM' | 'RssFile'): number {
  const m = new RegExp(`^${field}:\\s+(\\d+) kB$`, 'm').exec(readFileSync('/proc/self/status', 'utf8'));
  return m ? Number(m[1]) / 1024 : 0;
}
const vmHwmMb = () => statusMb('VmHWM');

/** The `policy` frame of a document, as the controller sends it. */
const policyFrame = (doc: PolicyInput): string => JSON.stringify({ type: 'policy', policy: doc });

/**
 * A document as the agent gets it: a `policy` frame's text, decoded as the
 * agent decodes it (its long member lists read straight into packed sets,
 * src/policy/packed-members.ts), then validated.
 */
function decodedPolicy(frame: string): Policy {
  const m = decode(controllerMessageSchema, frame, parseWithPackedMembers);
  if (!m.ok || m.message.type !== 'policy') throw new Error('bench: bad policy frame');
  return parsePolicy(m.message.policy);
}

/**
 * The reference: the same script as the agent renders, written to `dir` by a
 * process of its own; and the case's `policy` frame (`policy.json`), which
 * the measuring child decodes as the agent decodes it.
 */
function writeReferenceScript(c: Case, dir: string): { file: string; elements: number } {
  const doc = c.build(1);
  writeFileSync(join(dir, 'policy.json'), policyFrame(doc));
  const compiled = compilePolicy(parsePolicy(doc));
  const file = join(dir, 'script.nft');
  writeFileSync(file, renderScript(compiled.table));
  return { file, elements: compiled.stats.elements };
}

async function measureCase(c: Case, ns: string, dir: string, reference: { file: string; elements: number }): Promise<ApplyRow[]> {
  const rssFile = join(dir, 'nft-rss');
  writeFileSync(rssFile, '');
  const nftCmd = ['/usr/bin/time', '-a', '-o', rssFile, '-f', '%M', 'ip', 'netns', 'exec', ns, 'nft'];
  const nftPeak = () => Math.max(0, ...readFileSync(rssFile, 'utf8').split('\n').filter((l) => /^\d+$/.test(l)).map(Number)) / 1024;
  // as the agent daemon runs nft: from a helper shell started while this process is small
  // native/secgroup-nftload of the checkout (the parent builds it and names it: this child runs bundled elsewhere)
  const loaderCmd = ['/usr/bin/time', '-a', '-o', rssFile, '-f', '%M', 'ip', 'netns', 'exec', ns, process.env.BENCH_APPLY_LOADER!];
  let fellBack: string | null = null;
  const runner = new ExecaNftRunner({
    table: 'secgroup',
    command: nftCmd,
    timeoutMs: 600_000,
    helper: true,
    ...(process.env.BENCH_APPLY_NFT_ONLY ? {} : { loader: loaderCmd, onLoaderFallback: (why: string) => (fellBack = why) }),
  });
  const nftF = async () => {
    const t0 = performance.now();
    await execa(nftCmd[0]!, [...nftCmd.slice(1), '-f', reference.file]);
    return performance.now() - t0;
  };
  const clear = () => execa('ip', ['netns', 'exec', ns, 'nft', '-f', '-'], { input: renderDeleteScript('inet', 'secgroup') });
  // the last known good written to disk after each sync, as the agent writes it (FileStateStore streams the member lists)
  const stateRoot = mkdtempSync(join(tmpdir(), 'secgroup-bench-state-'));
  const reconciler = (incremental: boolean) =>
    new Reconciler({ nft: runner, store: new FileStateStore(stateRoot, Date.now), clock: systemClock, logger: process.env.BENCH_LOG ? createLogger({ level: 'warn' }) : silentLogger(), metrics: new AgentMetrics(), platform: DEFAULT_PLATFORM, incremental, checkBeforeApply: false, heapBurst: compileBurst });
  const applied = (o: SyncOutcome) => {
    if (o.status !== 'applied') throw new Error(`${c.case}: sync ${o.status}: ${'error' in o ? o.error.message : ''}`);
    return o;
  };

  // the document as the agent gets it: a frame's text, decoded as the agent decodes it (not built here: 100k
  // strings made by template literals hold ~10 MB more than the same strings decoded from JSON)
  const policy: Policy = decodedPolicy(readFileSync(join(dir, 'policy.json'), 'utf8'));
  const elements = reference.elements;
  const best = { agent: Infinity, ref: Infinity };
  let firstAgent = 0;
  // best of 3: the agent daemon compiles in a warm process (the first apply after a start is also reported)
  for (let i = 0; i < 3; i++) {
    await clear();
    best.ref = Math.min(best.ref, await nftF());
    await clear();
    const r = reconciler(true);
    // as the agent starts: its probe lists the table (none here), so the first apply reads no counters to carry
    if (!(await runner.probe()).tableExists) r.noteTableAbsent();
    const t0 = performance.now();
    const o = applied(await r.submit(policy, 'local'));
    const agentMs = performance.now() - t0;
    if (i === 0) firstAgent = agentMs;
    best.agent = Math.min(best.agent, agentMs);
    if (o.kind !== 'full') throw new Error(`expected a full apply, got ${o.kind}`);
    await r.stop();
  }
  // a bench of the loader that fell back to nft would measure nft: say so, loudly
  if (fellBack) throw new Error(`${c.case}: the full apply went through nft -f: ${fellBack}`);
  const fullApplyPeak = round(vmHwmMb());
  const rows: ApplyRow[] = [
    {
      case: c.case,
      elements,
      what: process.env.BENCH_APPLY_NFT_ONLY ? 'agent full apply through nft -f (compile+render+nft -f, no separate --check), best of 3' : 'agent full apply (compile, netlink batch encoded and sent by secgroup-nftload), best of 3',
      reference: 'nft -f of the same script, best of 3',
      ms: round(best.agent),
      referenceMs: round(best.ref),
      ratio: round(best.agent / best.ref, 2),
      firstMs: round(firstAgent),
      agentPeakRssMb: fullApplyPeak,
      agentFileRssMb: round(statusMb('RssFile')),
      nftPeakRssMb: round(nftPeak()),
    },
  ];
  if (c.change && !process.env.BENCH_APPLY_FULL_ONLY) {
    // table holds revision 1 now (last agent apply); one reconciler per mode keeps its own applied state
    const inc = reconciler(true);
    applied(await inc.submit(policy, 'local'));
    const full = reconciler(false);
    let rev = 2;
    const incMs: number[] = [];
    const fullMs: number[] = [];
    for (let i = 0; i < 5; i++) {
      // member i is replaced by a new address: one element out, one in
      const p = decodedPolicy(policyFrame(c.build(rev++, { index: i, with: c.change + i })));
      const t0 = performance.now();
      const o = applied(await inc.submit(p, 'local'));
      incMs.push(performance.now() - t0);
      if (o.kind !== 'incremental') throw new Error(`expected an incremental update, got ${o.kind}`);
    }
    for (let i = 0; i < 3; i++) {
      const q = decodedPolicy(policyFrame(c.build(rev++, { index: 10 + i, with: c.change + 10 + i })));
      const t0 = performance.now();
      const o = applied(await full.submit(q, 'local'));
      if (i > 0) fullMs.push(performance.now() - t0);
      if (o.kind !== 'full') throw new Error(`expected a full reload, got ${o.kind}`);
    }
    // the same change as the controller sends it: a policy_delta frame, decoded, applied to the
    // newest document, member fast path, nft -f of the element ops, marker check, persisted to disk
    const stateDir = mkdtempSync(join(tmpdir(), 'secgroup-bench-state-'));
    // the agent sends its ack from onOutcome, before the last known good is written (reconciler loop)
    let outcomeAt = 0;
    const delta = new Reconciler({
      onOutcome: () => (outcomeAt = performance.now()),
      nft: runner,
      store: new FileStateStore(stateDir, Date.now),
      clock: systemClock,
      logger: process.env.BENCH_LOG ? createLogger({ level: 'debug' }) : silentLogger(),
      metrics: new AgentMetrics(),
      platform: DEFAULT_PLATFORM,
      checkBeforeApply: false,
      heapBurst: compileBurst,
    });
    applied(await delta.submit(decodedPolicy(policyFrame(c.build(rev))), 'local'));
    const deltaMs: number[] = [];
    const deltaPersistMs: number[] = [];
    for (let i = 0; i < 7; i++) {
      await delta.idle(); // the previous revision is written to disk (after its ack) before this change arrives
      const base = delta.newestPolicy!;
      const frame = JSON.stringify({ type: 'policy_delta', base_revision: base.revision, revision: base.revision + 1, group_members: { 'sg-big': { add: [bigMember(c.change + 20 + i)], remove: [bigMember(20 + i)] } } });
      const t0 = performance.now();
      const m = decode(controllerMessageSchema, frame);
      if (!m.ok || m.message.type !== 'policy_delta') throw new Error('bench: bad delta frame');
      const next = applyPolicyDelta(base, m.message);
      const t1 = performance.now();
      const o = applied(await delta.submit(next, 'controller', { base: m.message.base_revision, groups: m.message.group_members }));
      await delta.idle(); // the last known good is on disk
      const t2 = performance.now();
      if (i > 0) {
        // the first one warms up the code
        deltaMs.push(outcomeAt - t0);
        deltaPersistMs.push(t2 - t0);
      }
      if (process.env.BENCH_LOG) console.error(`  delta ${i}: decode+apply ${(t1 - t0).toFixed(1)} ms, sync ${o.durationMs.toFixed(1)} ms, to the ack ${(outcomeAt - t0).toFixed(1)} ms, persisted ${(t2 - t0).toFixed(1)} ms`);
      if (o.kind !== 'incremental') throw new Error(`expected the member fast path, got ${o.kind}`);
    }
    await delta.stop();
    rmSync(stateDir, { recursive: true, force: true });
    const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
    // each against the full reload of the same change (median of the change's runs)
    const changeRow = (what: string, xs: number[]): ApplyRow => ({
      case: c.case,
      elements,
      what,
      reference: 'full reload of the same change by the agent',
      ms: round(median(xs)),
      referenceMs: round(Math.min(...fullMs)),
      ratio: round(median(xs) / Math.min(...fullMs), 3),
      agentPeakRssMb: 0,
      agentFileRssMb: 0,
      nftPeakRssMb: round(nftPeak()),
    });
    rows.push(
      changeRow('one-address change as policy_delta, to the ack (decode, member fast path, nft -f, marker check)', deltaMs),
      changeRow('the same, until the last known good is on disk (written after the ack)', deltaPersistMs),
      changeRow('one-address change as a full document (compile + element diff)', incMs),
    );
    await inc.stop();
    await full.stop();
  }
  runner.close();
  rmSync(stateRoot, { recursive: true, force: true });
  const rss = round(vmHwmMb());
  const fileRss = round(statusMb('RssFile'));
  for (const r of rows.slice(1)) {
    r.agentPeakRssMb = rss;
    r.agentFileRssMb = fileRss;
  }
  return rows;
}

export async function runApplyBench(only?: string[]): Promise<ApplyRow[]> {
  execFileSync('bash', [join(import.meta.dirname, '../scripts/build-native.sh')], { stdio: 'inherit' });
  const lab = await BenchLab.create();
  const dir = mkdtempSync(join(tmpdir(), 'sgt-apply-'));
  const rows: ApplyRow[] = [];
  try {
    // the children run this file bundled, as the agent's program is (lab.ts bundleBench)
    const bundle = join(dir, 'apply-bench.cjs');
    bundleBench(import.meta.url, bundle);
    for (const c of CASES) {
      if (only ? !only.includes(c.case) : c.optIn) continue;
      const child = (mode: string, ...args: string[]) =>
        // as `secgroup agent` runs: its V8 flag set at run time (tuneForFootprint in the child, not on the command
        // line, which would also shrink the young generation the agent keeps), the unit's Environment=
        execFileSync(process.execPath, ['--max-old-space-size=8192', bundle, mode, c.case, ...args], {
          // (the code cache: written by the --script child at its exit, read by the --child)
          env: { ...process.env, ...unitEnvironment({ cacheDir: join(dir, 'compile-cache') }), BENCH_APPLY_LOADER: join(import.meta.dirname, '../dist/secgroup-nftload') },
          encoding: 'utf8',
          maxBuffer: 1 << 24,
          timeout: 600_000,
          stdio: ['ignore', 'pipe', 'inherit'],
        });
      const reference = child('--script', dir);
      const out = child('--child', lab.host, dir, reference);
      for (const r of JSON.parse(out) as ApplyRow[]) rows.push(r);
      process.stderr.write(`  ${c.case} done\n`);
    }
  } finally {
    await lab.destroy();
    rmSync(dir, { recursive: true, force: true });
  }
  return rows;
}

const caseNamed = (name: string | undefined): Case => {
  const c = CASES.find((x) => x.case === name);
  if (!c) throw new Error(`unknown case ${name}`);
  return c;
};

if (process.argv.includes('--script')) {
  const at = process.argv.indexOf('--script');
  const [name, dir] = process.argv.slice(at + 1, at + 3) as [string, string];
  process.stdout.write(JSON.stringify(writeReferenceScript(caseNamed(name), dir)));
} else if (process.argv.includes('--child')) {
  // as `secgroup agent` does (its flags are on this command line too): compileBurst acts only then
  tuneForFootprint();
  const at = process.argv.indexOf('--child');
  const [name, ns, dir, reference] = process.argv.slice(at + 1, at + 5) as [string, string, string, string];
  // no top-level await: the child runs as CommonJS
  void measureCase(caseNamed(name), ns, dir, JSON.parse(reference)).then((rows) => process.stdout.write(JSON.stringify(rows)));
}
