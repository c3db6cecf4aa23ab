/**
 * The agent under faults, each a test: the real agent process with the real
 * nft in a test network namespace, a lab controller in a second namespace,
 * verdicts from real TCP connects (and the table read back where the point is
 * "which ruleset is it").
 *
 * Faults are injected from outside the agent only:
 *  - nft: a wrapper `nft` first on the agent's PATH; the file `mode` in the
 *    fault directory makes `nft -f` fail in the kernel (a batch with a bad
 *    last command), hang (never answers), or start late; every other call
 *    runs the real nft.
 *  - state directory: a 2 MiB tmpfs mounted on the lab's own temporary
 *    directory (filled up; remounted read-only), unmounted in afterAll.
 *  - kill -9 of the agent (and its nft) while nft applies a big policy.
 *  - a controller that welcomes and drops every connection at once.
 *  - a policy over the agent's frame limit, and an invalid policy.
 * Wall-clock jumps are covered at unit level (test/unit/agent/clock-jumps.test.ts,
 * test/unit/scheduler.test.ts): the machine's clock is never changed.
 */
import { spawnSync } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { platformOptions, resolveConfig } from '../../src/agent/config.js';
import { compilePolicy } from '../../src/nft/compile.js';
import { ExecaNftRunner } from '../../src/nft/exec.js';
import { findDrift } from '../../src/nft/readback.js';
import { parsePolicy } from '../../src/policy/schema.js';
import { AgentLab, CLIENT_ADDR, CONTROLLER_PORT, HOST_ADDR, kernelSkipReason, processTree, type AgentProcess, type Peer } from '../helpers/agent-lab.js';
import { FLOW_KNOWN, setFlowGeneration } from '../../src/nft/flow-mark.js';

const skip = kernelSkipReason();
const DRIFT_PERIOD_MS = 2000;
const NFT_TIMEOUT_MS = 1500;
const MAX_MESSAGE_BYTES = 1 << 20;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Allows tcp `ports` from the client; tcp 8001 from the `peers` group (`members` of them, from 198.18.128.0/17 after the client itself). */
function labPolicy(revision: number, ports: number[], members = 0) {
  const peers = [CLIENT_ADDR];
  for (let i = 0; i < members; i++) peers.push(`198.18.${128 + (i >> 8)}.${i & 255}`);
  return {
    revision,
    instance: { id: 'lab-1', addresses: [HOST_ADDR] },
    security_groups: [
      {
        id: 'sg-lab',
        rules: [
          { id: 'r-tcp', direction: 'ingress', protocol: 'tcp', multiport: ports.join(','), remote_ip_prefix: `${CLIENT_ADDR}/32` },
          { id: 'r-peers', direction: 'ingress', protocol: 'tcp', multiport: '8001', remote_group_id: 'peers' },
          { id: 'r-out', direction: 'egress' },
        ],
      },
    ],
    group_members: { peers },
  };
}

/** CPU seconds (user + system) and resident set (KiB) of a process. */
function cpuSeconds(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  const ticks = Number(spawnSync('getconf', ['CLK_TCK']).stdout.toString().trim()) || 100;
  return (Number(f[11]) + Number(f[12])) / ticks;
}
function rssKiB(pid: number): number {
  return Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))![1]);
}

describe.skipIf(skip !== null)(`agent faults, real nft in a namespace${skip ? ` (skipped: ${skip})` : ''}`, () => {
  let lab: AgentLab;
  let peer: Peer;
  let agent: AgentProcess;
  let configPath: string;
  let configDoc: Record<string, unknown>;
  let faults: string;
  let stateDir: string;
  let mounted = false;
  let env: Record<string, string>;

  const setMode = (mode: 'ok' | 'fail' | 'hang' | 'late') => writeFileSync(join(faults, 'mode'), mode);
  const appliesSeen = () => (existsSync(join(faults, 'applies')) ? readFileSync(join(faults, 'applies'), 'utf8').split('\n').filter(Boolean).length : 0);
  const marker = async () => {
    // the generation marker names the ruleset (a full reload in place keeps the table's comment)
    const r = await lab.nft(['list', 'set', 'inet', 'secgroup', 'sg_generation'], { reject: false });
    if (r.exitCode !== 0) return null;
    const m = /revision=(\d+)/.exec(String(r.stdout));
    return m ? Number(m[1]) : -1;
  };
  const verdicts = async (ports: number[]) => Object.fromEntries(await Promise.all(ports.map(async (p) => [p, await peer.canConnect(p)] as const)));
  const lkgRevision = async () => (JSON.parse(await readFile(join(stateDir, 'policy.json'), 'utf8')) as { policy: { revision: number } }).policy.revision;

  beforeAll(async () => {
    lab = await AgentLab.create('faults');
    await lab.startListeners([8000, 8001, 8002, 8003]);
    peer = await lab.startPeer();
    faults = join(lab.dir, 'faults');
    const bin = join(faults, 'bin');
    mkdirSync(bin, { recursive: true });
    const realNft = spawnSync('sh', ['-c', 'command -v nft']).stdout.toString().trim();
    // the fault-injecting nft: only `nft -f` (applies) is affected; reads run the real nft
    writeFileSync(
      join(bin, 'nft'),
      `#!/bin/sh
D=${faults}
mode=$(cat "$D/mode" 2>/dev/null)
case " $* " in *" -f "*)
  echo "$$ $mode" >> "$D/applies"
  case "$mode" in
    fail) { cat; echo 'delete table inet sgt_fault_missing'; } | ${realNft} "$@"; exit $? ;;
    hang) echo $$ >> "$D/hung.pids"; exec sleep 3600 ;;
    late) : > "$D/started"; sleep 0.5 ;;
  esac ;;
esac
exec ${realNft} "$@"
`,
    );
    chmodSync(join(bin, 'nft'), 0o755);
    setMode('ok');
    env = { PATH: `${bin}:${process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin'}` };
    stateDir = join(lab.dir, 'state');
    mkdirSync(stateDir);
    // a tiny file system of our own on the lab's temporary directory (never anywhere else)
    spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=2m,mode=0700', 'sgt-faults-state', stateDir], { stdio: 'inherit' });
    mounted = spawnSync('findmnt', ['-n', stateDir]).status === 0;
    expect(mounted).toBe(true);
    configDoc = {
      instance_id: 'lab-1',
      state_dir: stateDir,
      log_level: 'debug',
      // the faults are nft's: full applies through nft -f, not the netlink batch of secgroup-nftload (test/kernel/netlink-batch.test.ts: its fallbacks)
      nft_loader: '',
      controller: {
        url: `ws://${CLIENT_ADDR}:${CONTROLLER_PORT}`,
        token: 'lab-token',
        reconnect_initial_ms: 10,
        reconnect_max_ms: 200,
        ping_interval_ms: 1000,
        pong_timeout_ms: 1000,
        max_message_bytes: MAX_MESSAGE_BYTES,
      },
      drift_schedule: `*/${DRIFT_PERIOD_MS / 1000} * * * * *`,
      retry_initial_ms: 300,
      retry_max_ms: 1200,
      nft_timeout_ms: NFT_TIMEOUT_MS,
      http_listen: '127.0.0.1:9469',
      platform: { dhcp: false },
    };
    configPath = await lab.writeConfig(configDoc);
  }, 60_000);

  afterAll(async () => {
    if (mounted) {
      spawnSync('umount', [stateDir]);
      if (spawnSync('findmnt', ['-n', stateDir]).status === 0) spawnSync('umount', ['-l', stateDir]);
    }
    await lab?.destroy();
  }, 60_000);

  it('nft failing mid-apply: the batch is rolled back whole, the ack says failed with its code, and the apply is retried with backoff until it works', { timeout: 60_000 }, async () => {
    agent = lab.startAgent(configPath, [], env);
    await peer.request({ cmd: 'policy', policy: labPolicy(1, [8000]) });
    await peer.waitForAck(1, 'applied');
    expect(await verdicts([8000, 8002])).toEqual({ 8000: true, 8002: false });

    setMode('fail');
    const before = appliesSeen();
    await peer.request({ cmd: 'policy', policy: labPolicy(2, [8002]) });
    const ack = await peer.waitForAck(2, 'failed');
    expect(ack.error).toMatchObject({ code: 'NFT_NOT_FOUND_OBJECT', message: expect.stringContaining('nft -f failed') });
    // three attempts: the first and two retries, spaced by the growing backoff
    await agent.waitFor((l) => l.event === 'apply_failed' && l.revision === 2 && l.attempt === 3, 10_000, 0, 'third failed attempt');
    const failures = agent.events('apply_failed').filter((l) => l.revision === 2);
    expect(failures.slice(0, 3).map((l) => l.retryInMs)).toEqual([300, 600, 1200]);
    expect(failures.every((l) => l.code === 'NFT_NOT_FOUND_OBJECT')).toBe(true);
    expect(appliesSeen() - before).toBeGreaterThanOrEqual(3);
    // the flush and re-add of our table that came before the bad command did not happen
    expect(await marker()).toBe(1);
    expect(await verdicts([8000, 8002])).toEqual({ 8000: true, 8002: false });
    expect((await lab.httpGet(9469, '/readyz')).body).toContain('NFT_NOT_FOUND_OBJECT');

    setMode('ok');
    await peer.waitForAck(2, 'applied', 10_000);
    expect(await marker()).toBe(2);
    expect(await verdicts([8000, 8002])).toEqual({ 8000: false, 8002: true });
  });

  it('nft hanging mid-apply: it is killed after nft_timeout_ms, NFT_TIMEOUT is acked and logged, the last table stays enforced, the retry applies', { timeout: 60_000 }, async () => {
    setMode('hang');
    const from = agent.lines.length;
    await peer.request({ cmd: 'policy', policy: labPolicy(3, [8003]) });
    const ack = await peer.waitForAck(3, 'failed', 15_000);
    expect(ack.error).toMatchObject({ code: 'NFT_TIMEOUT', message: expect.stringContaining(`did not finish within ${NFT_TIMEOUT_MS} ms`) });
    const failed = await agent.waitFor((l) => l.event === 'apply_failed' && l.revision === 3, 5000, from, 'apply_failed');
    expect(failed).toMatchObject({ code: 'NFT_TIMEOUT', retryInMs: 300 });
    // the hung nft is gone (killed with the helper shell's process group)
    const hung = Number(readFileSync(join(faults, 'hung.pids'), 'utf8').split('\n')[0]);
    // (a killed process may linger as a zombie until the namespace's init reaps it)
    const running = (pid: number) => existsSync(`/proc/${pid}/stat`) && !/^\d+ \(.*\) Z /.test(readFileSync(`/proc/${pid}/stat`, 'utf8'));
    for (let i = 0; i < 20 && running(hung); i++) await sleep(50);
    expect(running(hung)).toBe(false);
    expect(await marker()).toBe(2);
    expect(await verdicts([8002, 8003])).toEqual({ 8002: true, 8003: false });
    // drift checks still run while applies hang (reads are not -f): no stuck mutex
    setMode('ok');
    await peer.waitForAck(3, 'applied', 15_000);
    expect(await marker()).toBe(3);
    expect(await verdicts([8002, 8003])).toEqual({ 8002: false, 8003: true });
  });

  it('an invalid policy and a policy over the frame limit are rejected with code and reason; the last policy stays enforced', async () => {
    const bad = labPolicy(4, [8000]) as { security_groups: { rules: Record<string, unknown>[] }[] };
    bad.security_groups[0]!.rules[0]!.multiport = '70000';
    await peer.request({ cmd: 'policy', policy: bad });
    expect(await peer.waitForAck(4)).toMatchObject({ status: 'rejected', error: { code: 'POLICY_INVALID', message: expect.stringContaining('multiport') } });

    const big = labPolicy(5, [8000], 70_000);
    expect(JSON.stringify(big).length).toBeGreaterThan(MAX_MESSAGE_BYTES);
    await peer.request({ cmd: 'policy', policy: big });
    const ack = await peer.waitForAck(5);
    expect(ack).toMatchObject({ status: 'rejected', error: { code: 'POLICY_TOO_LARGE', message: expect.stringContaining(`limit of ${MAX_MESSAGE_BYTES} bytes`) } });
    expect(await marker()).toBe(3);
    expect(await verdicts([8000, 8003])).toEqual({ 8000: false, 8003: true });
    // still connected: the next valid policy arrives on the same connection
    const connections = peer.lines.filter((l) => l.event === 'connection').length;
    await peer.request({ cmd: 'policy', policy: labPolicy(6, [8000]) });
    await peer.waitForAck(6, 'applied');
    expect(peer.lines.filter((l) => l.event === 'connection').length).toBe(connections);
    expect(await verdicts([8000, 8003])).toEqual({ 8000: true, 8003: false });
  });

  it('state directory full, then read-only: the new policy is enforced anyway, persist_failed and the metric report it, the old state file stays intact', async () => {
    for (let i = 0; i < 50 && (await lkgRevision().catch(() => -1)) !== 6; i++) await sleep(100);
    expect(await lkgRevision()).toBe(6);
    const good = await readFile(join(stateDir, 'policy.json'), 'utf8');
    // fill the file system
    spawnSync('dd', ['if=/dev/zero', `of=${join(stateDir, 'filler')}`, 'bs=4k'], { stdio: 'ignore' });
    let from = agent.lines.length;
    await peer.request({ cmd: 'policy', policy: labPolicy(7, [8002]) });
    await peer.waitForAck(7, 'applied');
    const full = await agent.waitFor((l) => l.event === 'persist_failed' && l.revision === 7, 5000, from, 'persist_failed (disk full)');
    expect(String((full.err as { message: string }).message)).toMatch(/ENOSPC/);
    expect(await verdicts([8000, 8002])).toEqual({ 8000: false, 8002: true });
    expect(await readFile(join(stateDir, 'policy.json'), 'utf8')).toBe(good);
    expect(readdirSync(stateDir).sort()).toEqual(['filler', 'policy.json']);

    // read-only
    spawnSync('rm', ['-f', join(stateDir, 'filler')]);
    expect(spawnSync('mount', ['-o', 'remount,ro', stateDir]).status).toBe(0);
    try {
      from = agent.lines.length;
      await peer.request({ cmd: 'policy', policy: labPolicy(8, [8003]) });
      await peer.waitForAck(8, 'applied');
      const ro = await agent.waitFor((l) => l.event === 'persist_failed' && l.revision === 8, 5000, from, 'persist_failed (read-only)');
      expect(String((ro.err as { message: string }).message)).toMatch(/EROFS/);
      expect(await verdicts([8002, 8003])).toEqual({ 8002: false, 8003: true });
      expect(await readFile(join(stateDir, 'policy.json'), 'utf8')).toBe(good);
      expect((await lab.httpGet(9469, '/metrics')).body).toMatch(/secgroup_state_errors_total\{code="STATE_IO"\} 2/);
    } finally {
      spawnSync('mount', ['-o', 'remount,rw', stateDir]);
    }
    // writable again: the next policy is the last known good
    await peer.request({ cmd: 'policy', policy: labPolicy(9, [8000]) });
    await peer.waitForAck(9, 'applied');
    for (let i = 0; i < 50 && (await lkgRevision()) !== 9; i++) await sleep(100);
    expect(await lkgRevision()).toBe(9);
    expect(readdirSync(stateDir)).toEqual(['policy.json']);
  });

  it('kill -9 of the agent (and its nft) during the apply of a big policy: after a restart the table is the old or the new policy whole, never a mix', { timeout: 150_000 }, async () => {
    const config = resolveConfig(configDoc, {});
    const platform = platformOptions(config, { addresses: [CLIENT_ADDR], port: CONTROLLER_PORT, dns: false });
    const nft = new ExecaNftRunner({ table: 'secgroup', command: ['ip', 'netns', 'exec', lab.host, 'nft'] });
    const outcomes: number[] = [];
    // three rounds, killed at different points of nft's run (0.5 s of the wrapper, then the real nft)
    for (const [round, killAfterMs] of [
      [0, 500],
      [1, 650],
      [2, 900],
    ] as const) {
      const oldRev = 10 + round * 2;
      const newRev = oldRev + 1;
      const oldPolicy = labPolicy(oldRev, [8000], 20_000);
      const newPolicy = labPolicy(newRev, [8002], 25_000);
      const from = agent.lines.length;
      await peer.request({ cmd: 'policy', policy: oldPolicy });
      await peer.waitForAck(oldRev, 'applied', 30_000);
      // after a full reload the drift monitor probes with marker transactions (`nft -f`) until its new
      // `nft monitor` reported one: let that settle, so the slowed `nft -f` below is the new policy's apply
      const restarted = agent.lines.findLastIndex((l, i) => i >= from && l.event === 'drift_monitor_started');
      if (restarted >= 0) await agent.waitFor((l) => l.event === 'drift_monitor_ready', 60_000, restarted, 'the restarted monitor reported a probe');
      setMode('late');
      if (existsSync(join(faults, 'started'))) spawnSync('rm', ['-f', join(faults, 'started')]);
      await peer.request({ cmd: 'policy', policy: newPolicy });
      for (let i = 0; i < 200 && !existsSync(join(faults, 'started')); i++) await sleep(10);
      expect(existsSync(join(faults, 'started'))).toBe(true);
      await sleep(killAfterMs);
      const pid = await agent.agentPid();
      // the agent, its helper shell and the nft it runs: all by their pids
      for (const p of processTree(agent.proc.pid!).concat(processTree(pid)).reverse()) {
        try {
          process.kill(p, 'SIGKILL');
        } catch {
          // already gone
        }
      }
      await agent.stop('SIGKILL', 2000);
      setMode('ok');

      // right after the kill, and again after the restart: one whole revision
      const check = async (when: string) => {
        const rb = await nft.readTable();
        const rev = Number(/revision=(\d+)/.exec(rb?.marker ?? '')?.[1]);
        expect([oldRev, newRev], `${when}: marker ${rb?.marker}`).toContain(rev);
        const compiled = compilePolicy(parsePolicy(rev === oldRev ? oldPolicy : newPolicy), { table: 'secgroup', platform });
        // flow_known as the agent left it: armed once its conntrack sweep ran (src/nft/flow-mark.ts)
        setFlowGeneration(compiled.table, 1, rb?.chains.find((c) => c.name === FLOW_KNOWN)?.rules.length === 1);
        // the marker names the revision (checked by findDrift too); the table comment is the last replacement's (a reload in place keeps it)
        expect(findDrift({ table: compiled.table, comment: rb?.comment ?? null }, rb), `${when}: table is revision ${rev} whole`).toBeNull();
        expect(await verdicts([8000, 8002]), when).toEqual(rev === oldRev ? { 8000: true, 8002: false } : { 8000: false, 8002: true });
        return rev;
      };
      outcomes.push(await check('after kill -9'));
      agent = lab.startAgent(configPath, [], env);
      await agent.waitFor((l) => l.event === 'apply' && l.revision === newRev, 30_000, 0, `revision ${newRev} applied after the restart`);
      expect(agent.events('state_corrupt')).toEqual([]);
      expect(await check('after restart')).toBe(newRev);
    }
    nft.close();
    // the kill points are meant to land inside nft's run: report what we saw
    console.log(`[faults] kill -9 during apply: table after the kill was ${outcomes.map((r, i) => (r % 2 === 0 ? `old (round ${i})` : `new (round ${i})`)).join(', ')}`);
  });

  it('a controller that drops every connection: 1000 reconnects with bounded CPU and no memory growth', { timeout: 150_000 }, async () => {
    const pid = await agent.agentPid();
    const conns = () => Number(peer.lines.filter((l) => l.event === 'connection').at(-1)?.n ?? 0);
    const base = (await peer.request({ cmd: 'flap', on: true })).connections as number;
    await peer.request({ cmd: 'down' });
    await peer.request({ cmd: 'up' });
    const waitConns = async (n: number) => peer.waitFor((l) => l.event === 'connection' && Number(l.n) >= base + n, 120_000, 0, `${n} reconnects`);
    await waitConns(50);
    const rss50 = rssKiB(pid);
    const cpu0 = cpuSeconds(pid);
    const t0 = performance.now();
    await waitConns(1000);
    const seconds = (performance.now() - t0) / 1000;
    const cpu = cpuSeconds(pid) - cpu0;
    const rss1000 = rssKiB(pid);
    const n = conns() - base - 50;
    await peer.request({ cmd: 'flap', on: false });
    console.log(
      `[faults] flapping controller: ${n} reconnects in ${seconds.toFixed(1)} s, agent CPU ${cpu.toFixed(2)} s (${((cpu / seconds) * 100).toFixed(0)} % of a core, ${((cpu / n) * 1000).toFixed(2)} ms per reconnect), RSS ${rss50} KiB after 50 -> ${rss1000} KiB after 1000`,
    );
    // every reconnect waited its backoff (no immediate re-dial), and the agent stayed usable
    const disconnects = agent.events('disconnect').slice(-900);
    expect(disconnects.length).toBe(900);
    expect(disconnects.every((l) => Number(l.retryInMs) >= 5)).toBe(true);
    expect(cpu / n).toBeLessThan(0.02);
    expect(rss1000).toBeLessThanOrEqual(rss50 * 1.1);
    // back to a normal controller: it reconnects and applies
    const latest = 16;
    await peer.request({ cmd: 'policy', policy: labPolicy(latest, [8003]) });
    await peer.waitForAck(latest, 'applied', 15_000);
    expect(await verdicts([8000, 8003])).toEqual({ 8000: false, 8003: true });
  });

  it('with the HTTP endpoint disabled, the agent outlives a controller outage (nothing else holds its event loop between dials)', { timeout: 60_000 }, async () => {
    await agent.stop('SIGTERM');
    await peer.request({ cmd: 'down' });
    const quiet = await lab.writeConfig({ ...configDoc, http_listen: '' });
    agent = lab.startAgent(quiet, [], env);
    await agent.waitFor((l) => l.event === 'boot', 30_000, 0, 'boot');
    await agent.waitFor((l) => l.event === 'disconnect' && Number(l.attempt) >= 3, 10_000, 0, 'three failed dials');
    await sleep(1000);
    expect(agent.proc.nodeChildProcess.exitCode ?? null).toBeNull();
    const from = peer.lines.length;
    await peer.request({ cmd: 'up' });
    await peer.waitFor((l) => l.event === 'connection', 15_000, from, 'reconnect');
    expect(await marker()).toBe(16);
    expect(await agent.stop('SIGTERM')).toBe(0);
  });
});
