/**
 * The agent against a flapping controller, for minutes: the real agent in a
 * test network namespace (198.18.0.0/15 only, removed at the end, also on
 * failure), a lab controller in a second one that alternates every
 * `--period-ms` between "accept, welcome, close at once" and "refuse"
 * (listener down). Prints the agent's reconnects, CPU seconds (from
 * /proc/PID/stat) and RSS (/proc/PID/status VmRSS) every 30 s and at the end.
 * Bounded: --seconds (default 180, at most 1800). Needs root.
 *
 *   npx tsx scripts/security/agent-flap.ts [--seconds 180] [--period-ms 100] [--reconnect-initial-ms 10] [--reconnect-max-ms 200]
 */
import { readFileSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import { AgentLab, CLIENT_ADDR, CONTROLLER_PORT, HOST_ADDR } from '../../test/helpers/agent-lab.js';

const arg = (name: string, def: number) => {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? Number(process.argv[i + 1]) : def;
};
const seconds = Math.min(1800, arg('seconds', 180));
const periodMs = Math.max(20, arg('period-ms', 100));
const initial = arg('reconnect-initial-ms', 10);
const max = arg('reconnect-max-ms', 200);
const TICKS = Number(spawnSync('getconf', ['CLK_TCK']).stdout.toString().trim()) || 100;

function cpu(pid: number): number {
  const s = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = s.slice(s.lastIndexOf(')') + 2).split(' ');
  return (Number(f[11]) + Number(f[12])) / TICKS;
}
const rss = (pid: number) => Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))![1]);

async function main(): Promise<void> {
  if (process.getuid?.() !== 0) throw new Error('needs root (network namespaces, nft)');
  const lab = await AgentLab.create('flap');
  try {
    const peer = await lab.startPeer();
    const config = await lab.writeConfig({
      instance_id: 'lab-1',
      state_dir: `${lab.dir}/state`,
      log_level: 'info',
      http_listen: null,
      controller: { url: `ws://${CLIENT_ADDR}:${CONTROLLER_PORT}`, token: 't', reconnect_initial_ms: initial, reconnect_max_ms: max },
      platform: { dhcp: false },
    });
    const agent = lab.startAgent(config);
    await peer.request({
      cmd: 'policy',
      policy: { revision: 1, instance: { id: 'lab-1', addresses: [HOST_ADDR] }, security_groups: [{ id: 'sg', rules: [{ id: 'r', direction: 'ingress', protocol: 'tcp', multiport: '22' }] }] },
    });
    await peer.waitForAck(1, 'applied', 30_000);
    const pid = await agent.agentPid();
    const cpu0 = cpu(pid);
    const rss0 = rss(pid);
    const t0 = performance.now();
    let up = true;
    let next = 30;
    let connections = 0;
    let rss50: number | null = null;
    await peer.request({ cmd: 'flap', on: true });
    console.log(`agent pid ${pid}: controller flaps every ${periodMs} ms (accept+close / refuse) for ${seconds} s; reconnect backoff ${initial}-${max} ms; RSS at start ${rss0} KiB`);
    while ((performance.now() - t0) / 1000 < seconds) {
      if (agent.proc.nodeChildProcess.exitCode !== null && agent.proc.nodeChildProcess.exitCode !== undefined) throw new Error(`the agent exited (${agent.proc.nodeChildProcess.exitCode}):\n${agent.raw.slice(-20).join('\n')}`);
      await new Promise((r) => setTimeout(r, periodMs));
      up = !up;
      const r = await peer.request({ cmd: up ? 'up' : 'down' });
      void r;
      connections = Number((await peer.request({ cmd: 'flap', on: true })).connections);
      if (rss50 === null && connections >= 50) rss50 = rss(pid);
      const t = (performance.now() - t0) / 1000;
      if (t >= next) {
        next += 30;
        console.log(`${t.toFixed(0)} s: ${connections} connections accepted, agent CPU ${(cpu(pid) - cpu0).toFixed(2)} s (${(((cpu(pid) - cpu0) / t) * 100).toFixed(1)} % of a core), RSS ${rss(pid)} KiB`);
      }
    }
    const t = (performance.now() - t0) / 1000;
    const c = cpu(pid) - cpu0;
    const disconnects = agent.lines.filter((l) => l.event === 'disconnect').length;
    console.log(
      `total: ${t.toFixed(0)} s, ${connections} connections accepted (+ refused dials; ${disconnects} disconnect log lines), agent CPU ${c.toFixed(2)} s = ${((c / t) * 100).toFixed(1)} % of a core, ` +
        `${connections ? ((c / connections) * 1000).toFixed(2) : '-'} ms per accepted connection; RSS start ${rss0} KiB, after 50 connections ${rss50 ?? '-'} KiB, end ${rss(pid)} KiB`,
    );
  } finally {
    await lab.destroy();
  }
}

main().catch((e: unknown) => {
  console.error(e);
  process.exitCode = 1;
});
