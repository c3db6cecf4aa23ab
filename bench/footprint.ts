/**
 * bench footprint: the real agent (the bundle dist-style `secgroup.cjs`, built
 * into a temp dir) in a lab namespace, pulling its policy over WebSocket from
 * the lab peer (test/helpers/lab-peer.ts) in the client namespace. Samples
 * /proc/<pid>/status VmRSS and /proc/<pid>/stat utime+stime (the agent
 * process alone: nft runs as a child of its helper shell and is not in
 * these figures): idle after the first apply, then under a steady stream of
 * one-member changes sent as the controller sends them, `policy_delta`
 * frames (src/controller/push-documents.ts): one member joins, the next
 * delta it leaves again, each on the revision before it. One fresh agent
 * per group size (1k, 10k, 100k members: BENCH_FOOTPRINT_SIZES). Reference:
 * a bare `node` process idling (the runtime's own floor) and the targets
 * (issue 18: <= 5 ms agent CPU per delta; <= 90 MB RSS at 10k members).
 * The agent gets the `Environment=` of systemd/secgroup-agent.service, its code
 * cache (NODE_COMPILE_CACHE) made before the first agent starts, as an installed
 * agent has it from its second start on, and secgroup-memtrim.node next to
 * the bundle, as scripts/install.sh and the .deb install it
 * (BENCH_FOOTPRINT_NO_MEMTRIM=1: without it, src/agent/memtrim.ts), and the
 * drift monitor's listener secgroup-nftwatch, built next to it too
 * (BENCH_FOOTPRINT_NFT_MONITOR=1: `nft monitor`, what the bench ran before).
 * Its nft helper's files go to /dev/shm (no systemd here to give it
 * /run/secgroup; the same kind of file system, src/nft/shell-spawner.ts). The note
 * of each row splits the RSS at its end into anonymous memory (V8's heap,
 * malloc's arenas) and mapped files (the node executable's pages).
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { AgentLab, CLIENT_ADDR, CONTROLLER_PORT, REPO, type Peer } from '../test/helpers/agent-lab.js';
import { parseIp } from '../src/policy/address.js';
import { syntheticPolicy } from './policies.js';
import { environment, parseUnit, values } from '../test/lib/systemd-unit.js';

const IDLE_S = Number(process.env.BENCH_FOOTPRINT_IDLE_S ?? 10);
const STREAM_S = Number(process.env.BENCH_FOOTPRINT_STREAM_S ?? 30);
const SIZES = (process.env.BENCH_FOOTPRINT_SIZES ?? '1000,10000,100000').split(',').map(Number);
const STREAM_EVERY_MS = 200;
/** a directory: the agent runs with --cpu-prof there (stopped with SIGTERM so the profile is written) */
const PROF_DIR = process.env.BENCH_FOOTPRINT_PROF;
/** extra node options for the agent (e.g. `--trace-gc`; its stdout goes to agent-N.out in BENCH_FOOTPRINT_PROF, or is dropped) */
const NODE_ARGS = (process.env.BENCH_FOOTPRINT_NODE_ARGS ?? '').split(' ').filter(Boolean);
const HZ = 100;
/** set: print each phase's CPU per thread of the agent (/proc/PID/task/TID/stat: main thread, V8 workers, libuv pool) */
const THREADS = process.env.BENCH_FOOTPRINT_THREADS !== undefined;
const NO_MEMTRIM = process.env.BENCH_FOOTPRINT_NO_MEMTRIM === '1';
/** the drift monitor as before round 8 of issue 18: `nft monitor` (BENCH_FOOTPRINT_NFT_MONITOR=1) */
const NFT_MONITOR = process.env.BENCH_FOOTPRINT_NFT_MONITOR === '1';
/** the agent with the flow mark off (BENCH_FOOTPRINT_NO_FLOW_MARK=1: platform.flow_mark_mask 0): what its two chain restores per delta cost */
const NO_FLOW_MARK = process.env.BENCH_FOOTPRINT_NO_FLOW_MARK === '1';

export interface FootprintRow {
  process: string;
  phase: string;
  reference: string;
  rssMb: number;
  peakRssMb: number;
  cpuPct: number;
  /** agent CPU (user + system) per delta sent, over the stream */
  cpuMsPerDelta: number | null;
  note: string;
}

function sample(pid: number): { rssKb: number; anonKb: number; fileKb: number; ticks: number } {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const kb = (field: string) => Number(new RegExp(`${field}:\\s+(\\d+)`).exec(status)?.[1] ?? 0);
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return { rssKb: kb('VmRSS'), anonKb: kb('RssAnon'), fileKb: kb('RssFile') + kb('RssShmem'), ticks: Number(f[11]) + Number(f[12]) };
}

/** CPU ticks of each thread of `pid` in user and system mode, by "tid name mode" */
function threadTicks(pid: number): Map<string, number> {
  const out = new Map<string, number>();
  for (const tid of readdirSync(`/proc/${pid}/task`)) {
    try {
      const stat = readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8');
      const name = stat.slice(stat.indexOf('(') + 1, stat.lastIndexOf(')'));
      const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      out.set(`${tid} ${name} user`, Number(f[11]));
      out.set(`${tid} ${name} system`, Number(f[12]));
    } catch {
      // the thread ended meanwhile
    }
  }
  return out;
}

async function watch(pid: number, seconds: number, during?: () => Promise<void>): Promise<{ rss: number; anon: number; file: number; peak: number; cpu: number; cpuMs: number }> {
  const a = sample(pid);
  const threadsBefore = THREADS ? threadTicks(pid) : null;
  const t0 = performance.now();
  let peak = a.rssKb;
  let stop = false;
  const poll = (async () => {
    while (!stop) {
      peak = Math.max(peak, sample(pid).rssKb);
      await new Promise((r) => setTimeout(r, 100));
    }
  })();
  if (during) await during();
  while (performance.now() - t0 < seconds * 1000) await new Promise((r) => setTimeout(r, 100));
  stop = true;
  await poll;
  const b = sample(pid);
  if (threadsBefore) {
    const used = [...threadTicks(pid)].map(([t, n]) => [t, ((n - (threadsBefore.get(t) ?? 0)) * 1000) / HZ] as const).filter(([, ms]) => ms > 0);
    process.stderr.write(`footprint threads over ${seconds} s (ms CPU): ${used.map(([t, ms]) => `${t}: ${ms}`).join(', ') || 'none'}\n`);
  }
  const secs = (performance.now() - t0) / 1000;
  return { rss: b.rssKb / 1024, anon: b.anonKb / 1024, file: b.fileKb / 1024, peak: Math.max(peak, b.rssKb) / 1024, cpu: ((b.ticks - a.ticks) / HZ / secs) * 100, cpuMs: ((b.ticks - a.ticks) * 1000) / HZ };
}

const r1 = (x: number) => Math.round(x * 10) / 10;

/** How the RSS at the end of a watch splits: the heap and malloc (anonymous) and the program's mapped files. */
const split = (w: { anon: number; file: number }) => `RSS ${r1(w.anon)} MB anonymous + ${r1(w.file)} MB mapped files`;

/** IPv4 before IPv6, numerically ascending (src/controller/policy-documents.ts memberList). */
function canonicalOrder(list: readonly string[]): string[] {
  const keyed = list.map((a) => ({ a, ip: parseIp(a) }));
  keyed.sort((x, y) => x.ip.family - y.ip.family || (x.ip.value < y.ip.value ? -1 : x.ip.value > y.ip.value ? 1 : 0));
  return keyed.map((k) => k.a);
}

/**
 * The `Environment=` assignments of the agent's systemd unit, read as systemd reads them: the agent runs here with
 * the environment it gets when installed. The unit's NODE_COMPILE_CACHE (its CacheDirectory=) becomes `cacheDir`, a
 * directory of the bench, or is left out without one: a bench never writes into the host's /var/cache.
 */
export function unitEnvironment(opts: { cacheDir?: string } = {}, unitText = readFileSync(join(REPO, 'systemd/secgroup-agent.service'), 'utf8')): Record<string, string> {
  const env = environment(values(parseUnit(unitText), 'Service', 'Environment'));
  if (env.NODE_COMPILE_CACHE !== undefined) {
    if (opts.cacheDir) env.NODE_COMPILE_CACHE = opts.cacheDir;
    else delete env.NODE_COMPILE_CACHE;
  }
  return env;
}

/**
 * The unit's environment with the code cache the installed agent has from its second start on (main.ts writes it
 * at the first): made once here by `PROGRAM --version`, which writes the same cache (main.ts writes it before the
 * command runs).
 */
export function warmedUnitEnvironment(program: string, cacheDir: string): Record<string, string> {
  const env = unitEnvironment({ cacheDir });
  execFileSync(process.execPath, [program, '--version'], { env: { PATH: process.env.PATH ?? '/usr/bin:/bin', ...env }, stdio: 'ignore' });
  return env;
}

const k = (n: number) => (n >= 1000 ? `${n / 1000}k` : String(n));

/** One agent, one group size: apply the base policy, idle, a stream of one-member deltas, idle again. */
async function runSize(lab: AgentLab, peer: Peer, bundle: string, dir: string, members: number, agentEnv: Record<string, string>): Promise<FootprintRow[]> {
  const rows: FootprintRow[] = [];
  const config = await lab.writeConfig({
    instance_id: 'bench-1',
    state_dir: `${lab.dir}/state-${members}`,
    log_level: 'warn',
    controller: { url: `ws://${CLIENT_ADDR}:${CONTROLLER_PORT}`, token: 'lab-token' },
    platform: { dhcp: false, ...(NO_FLOW_MARK ? { flow_mark_mask: 0 } : {}) },
    // as installed (the packages put the listener where `auto` finds it; here it is built next to the bundle)
    drift_listener: NFT_MONITOR ? '' : join(dir, 'secgroup-nftwatch'),
  });
  const from = peer.lines.length;
  // the peer's current policy: what it sends the agent after its hello
  const base = syntheticPolicy({ rules: 1000, members });
  // the controller sends member lists in its canonical order (protocol/delta.ts), which the agent's delta path relies on
  base.group_members = Object.fromEntries(Object.entries(base.group_members ?? {}).map(([g, list]) => [g, canonicalOrder(list)]));
  await peer.request({ cmd: 'policy', policy: base });
  const agent = execa('ip', ['netns', 'exec', lab.host, process.execPath, ...NODE_ARGS, ...(PROF_DIR && !process.env.BENCH_FOOTPRINT_NO_CPU_PROF ? ['--cpu-prof', '--cpu-prof-dir', PROF_DIR] : []), bundle, 'agent', '--config', config], { reject: false, buffer: false, stdio: PROF_DIR ? ['ignore', { file: join(PROF_DIR, `agent-${members}.out`) }, { file: join(PROF_DIR, `agent-${members}.log`) }] : 'ignore', env: { ...agentEnv, TMPDIR: dir } });
  const pid = agent.pid!;
  try {
    await peer.waitFor((l) => l.event === 'message' && (l.message as { type: string }).type === 'hello', 30_000, from, 'hello');
    await peer.waitFor((l) => l.event === 'message' && (l.message as { type: string; revision?: number; status?: string }).type === 'ack' && (l.message as { revision?: number }).revision === 1, 120_000, from, 'ack 1');
    await new Promise((r) => setTimeout(r, 2000));
    const idle = await watch(pid, IDLE_S);
    rows.push({ process: 'agent', phase: `${k(members)} members: idle ${IDLE_S} s after the full apply`, reference: 'bare node; ~0 % CPU', rssMb: r1(idle.rss), peakRssMb: r1(idle.peak), cpuPct: r1(idle.cpu), cpuMsPerDelta: null, note: `1k rules, one remote group; ${split(idle)}` });
    let rev = 1;
    let sent = 0;
    const joiner = 'fd00:5ec:ffff::1';
    const stream = await watch(pid, STREAM_S, async () => {
      const end = performance.now() + STREAM_S * 1000;
      while (performance.now() < end) {
        const joins = rev % 2 === 1;
        const delta = { type: 'policy_delta', base_revision: rev, revision: rev + 1, group_members: { 'sg-app': { add: joins ? [joiner] : [], remove: joins ? [] : [joiner] } } };
        rev++;
        sent++;
        await peer.request({ cmd: 'raw', frame: JSON.stringify(delta) });
        await new Promise((r) => setTimeout(r, STREAM_EVERY_MS));
      }
    });
    await peer.waitFor((l) => l.event === 'message' && (l.message as { type: string; revision?: number }).type === 'ack' && (l.message as { revision?: number }).revision === rev, 30_000, from, `ack ${rev}`).catch(() => null);
    const acks = peer.lines.slice(from).filter((l) => l.event === 'message' && (l.message as { type: string }).type === 'ack').map((l) => l.message as { revision: number; status: string });
    const applied = acks.filter((a) => a.revision > 1 && a.status === 'applied').length;
    const resyncs = peer.lines.slice(from).filter((l) => l.event === 'message' && (l.message as { type: string }).type === 'resync').length;
    rows.push({
      process: 'agent',
      phase: `${k(members)} members: one-member policy_delta every ${STREAM_EVERY_MS} ms for ${STREAM_S} s`,
      reference: `target <= 5 ms CPU per delta${members === 10_000 ? ', <= 90 MB RSS' : ''}`,
      rssMb: r1(stream.rss),
      peakRssMb: r1(stream.peak),
      cpuPct: r1(stream.cpu),
      cpuMsPerDelta: Math.round((stream.cpuMs / sent) * 100) / 100,
      note: `${sent} deltas sent, ${applied} acked applied, ${resyncs} resyncs (CPU per delta includes the idle floor); at the end ${split(stream)}`,
    });
    const after = await watch(pid, 5);
    rows.push({ process: 'agent', phase: `${k(members)} members: idle 5 s after the stream`, reference: 'idle', rssMb: r1(after.rss), peakRssMb: r1(after.peak), cpuPct: r1(after.cpu), cpuMsPerDelta: null, note: split(after) });
  } finally {
    // SIGTERM: a clean stop (the rules stay), so a CPU profile gets written; SIGKILL if it hangs
    process.kill(pid, 'SIGTERM'); // not execa's kill: it sends SIGKILL 5 s later
    const killer = setTimeout(() => agent.kill('SIGKILL'), PROF_DIR ? 120_000 : 10_000);
    await agent;
    clearTimeout(killer);
  }
  return rows;
}

export async function runFootprintBench(): Promise<FootprintRow[]> {
  const dir = mkdtempSync(join(tmpdir(), 'sgt-footprint-'));
  const bundle = join(dir, 'secgroup.cjs');
  execFileSync(process.execPath, [join(REPO, 'scripts/bundle.mjs'), '--outfile', bundle], { stdio: 'ignore' });
  // as installed: the drift monitor's listener and the addon that gives the free C heap back, next to the program
  execFileSync('bash', [join(REPO, 'scripts/build-native.sh'), dir], { stdio: 'ignore' });
  if (NO_MEMTRIM) rmSync(join(dir, 'secgroup-memtrim.node'));
  const agentEnv = warmedUnitEnvironment(bundle, join(dir, 'compile-cache'));
  const lab = await AgentLab.create('fp');
  const rows: FootprintRow[] = [];
  try {
    const bare = execa('ip', ['netns', 'exec', lab.host, process.execPath, '-e', 'setInterval(() => {}, 1 << 30)'], { reject: false });
    await new Promise((r) => setTimeout(r, 1000));
    const bareIdle = await watch(bare.pid!, 3);
    bare.kill('SIGKILL');
    rows.push({ process: 'bare node', phase: 'idle', reference: '-', rssMb: r1(bareIdle.rss), peakRssMb: r1(bareIdle.peak), cpuPct: r1(bareIdle.cpu), cpuMsPerDelta: null, note: `node -e setInterval: the runtime floor; ${split(bareIdle)}` });
    const peer = await lab.startPeer();
    for (const members of SIZES) {
      rows.push(...(await runSize(lab, peer, bundle, dir, members, agentEnv)));
      // the next agent starts on an empty host: its own table only
      await lab.nft(['delete', 'table', 'inet', 'secgroup'], { reject: false });
    }
  } finally {
    await lab.destroy();
    rmSync(dir, { recursive: true, force: true });
  }
  return rows;
}
