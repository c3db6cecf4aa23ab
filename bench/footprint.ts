/**
 * bench footprint: the real agent (the bundle dist-style `secgroup.mjs`, built
 * into a temp dir) in a lab namespace, pulling its policy over WebSocket from
 * the lab peer (test/helpers/lab-peer.ts) in the client namespace. Samples
 * /proc/<pid>/status VmRSS and /proc/<pid>/stat utime+stime: idle after the
 * first apply, then under a steady stream of one-member updates. Reference:
 * a bare `node` process idling (the runtime's own floor) and the targets.
 * The agent gets the `Environment=` of systemd/secgroup-agent.service.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { AgentLab, CLIENT_ADDR, CONTROLLER_PORT, REPO } from '../test/helpers/agent-lab.js';
import { syntheticPolicy } from './policies.js';

const IDLE_S = Number(process.env.BENCH_FOOTPRINT_IDLE_S ?? 10);
const STREAM_S = Number(process.env.BENCH_FOOTPRINT_STREAM_S ?? 10);
const STREAM_EVERY_MS = 200;
const HZ = 100;

export interface FootprintRow {
  process: string;
  phase: string;
  reference: string;
  rssMb: number;
  peakRssMb: number;
  cpuPct: number;
  note: string;
}

function sample(pid: number): { rssKb: number; ticks: number } {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const rssKb = Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? 0);
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return { rssKb, ticks: Number(f[11]) + Number(f[12]) };
}

async function watch(pid: number, seconds: number, during?: () => Promise<void>): Promise<{ rss: number; peak: number; cpu: number }> {
  const a = sample(pid);
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
  const secs = (performance.now() - t0) / 1000;
  return { rss: b.rssKb / 1024, peak: Math.max(peak, b.rssKb) / 1024, cpu: ((b.ticks - a.ticks) / HZ / secs) * 100 };
}

const r1 = (x: number) => Math.round(x * 10) / 10;

/** The `Environment=` assignments of the agent's systemd unit: the agent runs here with the environment it gets when installed. */
export function unitEnvironment(unitText = readFileSync(join(REPO, 'systemd/secgroup-agent.service'), 'utf8')): Record<string, string> {
  const env: Record<string, string> = {};
  for (const m of unitText.matchAll(/^Environment=(.*)$/gm)) {
    for (const a of m[1]!.trim().split(/\s+/)) {
      const eq = a.indexOf('=');
      if (eq > 0) env[a.slice(0, eq)] = a.slice(eq + 1);
    }
  }
  return env;
}

export async function runFootprintBench(): Promise<FootprintRow[]> {
  const dir = mkdtempSync(join(tmpdir(), 'sgt-footprint-'));
  const bundle = join(dir, 'secgroup.mjs');
  execFileSync(process.execPath, [join(REPO, 'scripts/bundle.mjs'), '--outfile', bundle], { stdio: 'ignore' });
  const lab = await AgentLab.create('fp');
  const rows: FootprintRow[] = [];
  try {
    const bare = execa('ip', ['netns', 'exec', lab.host, process.execPath, '-e', 'setInterval(() => {}, 1 << 30)'], { reject: false });
    await new Promise((r) => setTimeout(r, 1000));
    const bareIdle = await watch(bare.pid!, 3);
    bare.kill('SIGKILL');
    rows.push({ process: 'bare node', phase: 'idle', reference: '-', rssMb: r1(bareIdle.rss), peakRssMb: r1(bareIdle.peak), cpuPct: r1(bareIdle.cpu), note: 'node -e setInterval: the runtime floor' });

    const peer = await lab.startPeer();
    const config = await lab.writeConfig({
      instance_id: 'bench-1',
      state_dir: `${lab.dir}/state`,
      log_level: 'warn',
      controller: { url: `ws://${CLIENT_ADDR}:${CONTROLLER_PORT}`, token: 'lab-token' },
      platform: { dhcp: false },
    });
    const agent = execa('ip', ['netns', 'exec', lab.host, process.execPath, bundle, 'agent', '--config', config], { reject: false, buffer: false, stdio: 'ignore', env: { ...unitEnvironment(), TMPDIR: dir } });
    const pid = agent.pid!;
    try {
      await peer.waitFor((l) => l.event === 'message' && (l.message as { type: string }).type === 'hello', 30_000, 0, 'hello');
      const base = syntheticPolicy({ rules: 1000, members: 1000 });
      await peer.request({ cmd: 'policy', policy: base });
      await peer.waitForAck(1, 'applied', 60_000);
      await new Promise((r) => setTimeout(r, 2000));
      const idle = await watch(pid, IDLE_S);
      rows.push({ process: 'agent', phase: `idle ${IDLE_S} s after applying 1k rules`, reference: 'bare node; target <= 80 MB, ~0 % CPU', rssMb: r1(idle.rss), peakRssMb: r1(idle.peak), cpuPct: r1(idle.cpu), note: 'VmRSS at the end, peak of 100 ms samples' });
      let rev = 1;
      const stream = await watch(pid, STREAM_S, async () => {
        const end = performance.now() + STREAM_S * 1000;
        while (performance.now() < end) {
          rev++;
          const members = [...(base.group_members?.['sg-app'] ?? [])];
          members[rev % members.length] = `198.19.200.${rev % 250}`;
          await peer.request({ cmd: 'policy', policy: { ...base, revision: rev, group_members: { ...base.group_members, 'sg-app': members } } });
          await new Promise((r) => setTimeout(r, STREAM_EVERY_MS));
        }
      });
      const acked = peer.acks().filter((a) => a.status === 'applied').length;
      rows.push({
        process: 'agent',
        phase: `one-member update every ${STREAM_EVERY_MS} ms for ${STREAM_S} s`,
        reference: 'idle',
        rssMb: r1(stream.rss),
        peakRssMb: r1(stream.peak),
        cpuPct: r1(stream.cpu),
        note: `${rev - 1} revisions sent, ${acked - 1} acked applied (newer ones supersede older)`,
      });
      const after = await watch(pid, 5);
      rows.push({ process: 'agent', phase: 'idle 5 s after the stream', reference: 'idle', rssMb: r1(after.rss), peakRssMb: r1(after.peak), cpuPct: r1(after.cpu), note: '' });
    } finally {
      agent.kill('SIGKILL');
    }
  } finally {
    await lab.destroy();
    rmSync(dir, { recursive: true, force: true });
  }
  return rows;
}
