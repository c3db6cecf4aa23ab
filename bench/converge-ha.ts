/**
 * bench converge (HA cases): the same measurements for three deployments side
 * by side, each controller a separate process (`secgroup controller`, started
 * like the tests' spawnController) on 127.0.0.1:
 *   - `sqlite x1`: the embedded default, one process (the baseline);
 *   - `postgres x1` and `postgres x3`: one or three replicas on one PostgreSQL
 *     (a throwaway cluster from test/helpers/postgres.ts: initdb in a temp dir,
 *     unix socket only, fsync off, removed afterwards).
 * Agents: in child processes (converge-agents.ts), by default reduced to
 * their control channel (the real ControllerClient; documents acked, not
 * compiled), with BENCH_HA_AGENTS=full real `createAgent`s with the fake
 * nft; agent k's `controller.urls` listing the replicas
 * starting at k mod R, so they spread evenly. Acks are counted where the
 * agents send them (wall clock shared by all processes): the controllers are
 * other processes here.
 *
 * Scenario (every agent affected by every change, documents of bounded size,
 * so 3000 agents fit in memory: the `converge` part's self-referencing group
 * makes N documents of N members): every instance is in `sg-all`, whose only
 * ingress rule admits `sg-ops` (remote group, a bastion pattern).
 *   - rule change: a rule added to sg-all (every agent gets a full document);
 *   - membership change: an instance without agent joins sg-ops (every agent
 *     gets a policy_delta). API calls go round-robin over the replicas.
 *   - writes/s: 50 clients creating rules in a group no instance uses for
 *     WRITE_MS, round-robin over the replicas.
 *   - killed replica (R > 1): SIGKILL of replica 1 while 10 clients keep
 *     writing through every replica; time from the kill until every agent
 *     that was on it got a `welcome` from another replica (hello stored
 *     there); afterwards every write that was answered 201 is looked up
 *     (lost = answered 201 but absent).
 * Bounded: CHANGES changes or BUDGET_MS per kind and size, ACK_WAIT_MS per change.
 *
 * Evidence kept: every replica's log lines (JSON, info level unless
 * BENCH_HA_LOG_LEVEL says otherwise) go to a file in
 * a directory printed at the end (BENCH_HA_LOGS, else a new temp dir); with
 * BENCH_HA_PROF=DIR each replica runs with --cpu-prof into DIR (stopped with
 * SIGTERM so the profile is written). After the changes the agents that did
 * not ack every change are listed (count, replica, last acked revision
 * against the desired one), and the CPU time the controllers and the agent
 * processes used during the changes is reported: both share the machine's
 * cores, so the agents' share is what the figures owe to the simulation.
 */
import { readFileSync } from 'node:fs';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { ChildProcess } from 'node:child_process';
import { spawnController, type RunningController } from '../test/helpers/cli.js';
import { removeLeftoverClusters, startCluster, type PgCluster } from '../test/helpers/postgres.js';
import { agentProcs, apiCaller, forkAgents, memberAddress, quantile, startAgents, stopAgents, ADMIN, type ApiCall } from './converge.js';

export const HA_SIZES = [100, 1000, 3000];
const CHANGES = 10;
const BUDGET_MS = 45_000;
const WRITE_MS = 5_000;
const WRITE_CLIENTS = 50;
const KILL_WRITERS = 10;
/** How long one change may take until every agent acked; a change that takes longer counts as timed out. */
const ACK_WAIT_MS = 60_000;
const TARGET = { rule: 2000, member: 1000, rehome: 15_000 };
/**
 * BENCH_HA_AGENTS=full: real agents (compile, FakeNft apply); default
 * `protocol`: agents reduced to their control channel (converge-agents.ts
 * `protocolAgent`), so the figures are the controllers' and not the
 * simulation's (thousands of agents' compiles would share these 2 cores).
 */
const AGENT_KIND: 'full' | 'protocol' = process.env.BENCH_HA_AGENTS === 'full' ? 'full' : 'protocol';
/** agent processes: one per 250 real agents, one per 1000 protocol agents (BENCH_CONVERGE_PROCS overrides) */
const procsFor = (n: number) => (AGENT_KIND === 'full' || process.env.BENCH_CONVERGE_PROCS ? agentProcs(n) : Math.ceil(n / 1000));

type Kind = 'sqlite x1' | 'postgres x1' | 'postgres x3';
export const HA_DEPLOYMENTS: Kind[] = ['sqlite x1', 'postgres x1', 'postgres x3'];

export interface HaRow {
  deployment: Kind;
  agents: number;
  'rule p50 ms': number;
  'rule p99 ms': number;
  'member p50 ms': number;
  'member p99 ms': number;
  'writes/s': number;
  'write p99 ms': number;
  'killed: agents moved': number | string;
  'killed: all re-acked s': number | string;
  'lost writes': number | string;
  'changes timed out (acks missing)': number | string;
  /** agents with fewer applied acks than the others after the changes (of them, still not at the desired revision) */
  'agents behind (not converged)': number | string;
  /** CPU seconds used during the rule and member changes by the controller processes and by the agent processes */
  'cpu s: controllers/agents': string;
  met: string;
}

const wall = () => performance.timeOrigin + performance.now();
const r1 = (x: number) => Math.round(x * 10) / 10;

interface Deployment {
  replicas: (RunningController | null)[];
  kill(i: number): Promise<void>;
  stop(): Promise<void>;
}

/** Where the replicas' logs go (BENCH_HA_LOGS or a temp dir made once), and the profile option. */
interface Evidence {
  logs: string;
  profiles?: string;
}

/** CPU time (user + system, ms) of a process so far, from /proc (Linux). */
function procCpuMs(pid: number | undefined): number {
  if (pid === undefined) return 0;
  try {
    // fields after the command name: state is field 3, utime 14, stime 15 (in clock ticks, 100 per second)
    const f = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
    return (Number(f[11]) + Number(f[12])) * 10;
  } catch {
    return 0;
  }
}

/** Asks every agent process one question and collects the answers (converge-agents.ts). */
function askAgents<T>(children: ChildProcess[], cmd: 'agents' | 'cpu', event: string, pick: (m: Record<string, unknown>) => T): Promise<T[]> {
  return Promise.all(
    children.map(
      (child) =>
        new Promise<T>((resolve) => {
          const on = (m: Record<string, unknown>) => {
            if (m.event !== event) return;
            child.off('message', on);
            resolve(pick(m));
          };
          child.on('message', on);
          child.send({ cmd });
        }),
    ),
  );
}

async function deploy(kind: Kind, dir: string, n: number, ev: Evidence): Promise<Deployment> {
  const R = kind === 'postgres x3' ? 3 : 1;
  let cluster: PgCluster | null = null;
  let store: Record<string, unknown> = {};
  if (kind !== 'sqlite x1') {
    removeLeftoverClusters();
    cluster = await startCluster();
    store = { store: { driver: 'postgres', url: await cluster.createDatabase('bench') } };
  }
  const replicas: (RunningController | null)[] = [];
  const stopAll = async () => {
    // a profiled replica writes its profile when it exits by itself (SIGTERM), given 20 s
    for (const r of replicas) r?.child.kill(ev.profiles ? 'SIGTERM' : 'SIGKILL');
    const grace = setTimeout(() => replicas.forEach((r) => r?.child.kill('SIGKILL')), ev.profiles ? 20_000 : 0);
    await Promise.all(replicas.map((r) => r?.exited));
    clearTimeout(grace);
    await cluster?.destroy();
  };
  try {
    for (let i = 0; i < R; i++) {
      const config = {
        listen: { host: '127.0.0.1', port: 0 },
        data_dir: join(dir, `data-${i}`),
        ...store,
        api: { tokens: [{ name: 'bench', token: ADMIN }] },
        metrics: { process_metrics: false },
        // info (default: a line per push and per ack, as in production) or e.g. warn, to see what those lines cost
        log: { level: process.env.BENCH_HA_LOG_LEVEL ?? 'info' },
        // the write streams put tens of thousands of rules into one group
        quotas: { rules_per_group: 1_000_000 },
        // the simulated agents share a few processes that can be busy for seconds: liveness is not measured
        agents: { hello_timeout_ms: 60_000, heartbeat_interval_ms: 600_000 },
        // every simulated agent connects from 127.0.0.1
        http: { max_connections: 10_000, max_connections_per_source: 10_000 },
      };
      const file = join(dir, `controller-${i}.json`);
      await writeFile(file, JSON.stringify(config));
      // sequential: the schema migration runs once, the others find it done
      const logFile = join(ev.logs, `${kind.replace(' ', '-')}-${n}-replica-${i + 1}.log`);
      replicas.push(await spawnController(file, { logFile, ...(ev.profiles ? { nodeArgs: ['--cpu-prof', '--cpu-prof-dir', join(ev.profiles, `${kind.replace(' ', '-')}-${n}`)] } : {}) }));
    }
  } catch (e) {
    await stopAll();
    throw e;
  }
  return {
    replicas,
    async kill(i) {
      const r = replicas[i];
      replicas[i] = null;
      r?.child.kill('SIGKILL');
      await r?.exited;
    },
    stop: stopAll,
  };
}

/** Acks and welcomes streamed by the agent processes. */
class AgentEvents {
  applied = 0;
  lastAckAt = 0;
  /** acks still missing when a change's wait gave up */
  missing = 0;
  /** agent id -> [controller URL, wall time] of its latest welcome */
  readonly home = new Map<string, [string, number]>();
  private waiter: { want: number; resolve: () => void } | null = null;

  constructor(children: ChildProcess[]) {
    for (const child of children) {
      child.on('message', (m: { event: string; at?: number[]; list?: [string, string, number][] }) => {
        if (m.event === 'acked' && m.at) {
          this.applied += m.at.length;
          this.lastAckAt = Math.max(this.lastAckAt, ...m.at);
          if (this.waiter && this.applied >= this.waiter.want) this.waiter.resolve();
        } else if (m.event === 'welcomed' && m.list) {
          for (const [id, url, at] of m.list) this.home.set(id, [url, at]);
        }
      });
    }
  }

  /** Resolves true once `want` applied acks in all were counted, false after ACK_WAIT_MS with some missing (counted in `missing`). */
  async waitAcks(want: number): Promise<boolean> {
    if (this.applied >= want) return true;
    const done = new Promise<boolean>((resolve) => (this.waiter = { want, resolve: () => resolve(true) }));
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<boolean>((resolve) => {
      timer = setTimeout(() => resolve(false), ACK_WAIT_MS);
    });
    try {
      const ok = await Promise.race([done, timeout]);
      if (!ok) this.missing += want - this.applied;
      return ok;
    } finally {
      clearTimeout(timer);
      this.waiter = null;
    }
  }
}

/** `clients` concurrent writers creating rules in sg-idle round-robin over the live replicas until `stop()`; returns latencies and the ids answered 201. */
function writers(calls: () => ApiCall[], clients: number, firstPort: number) {
  let running = true;
  let next = firstPort;
  let failed = 0;
  const ok: string[] = [];
  const latency: number[] = [];
  const loops = Array.from({ length: clients }, async (_, c) => {
    for (let i = c; running; i++) {
      const live = calls();
      const call = live[i % live.length]!;
      const port = next++;
      const t0 = performance.now();
      try {
        const r = await call('POST', '/vpc/security-group-rules', { security_group_rule: { security_group_id: 'sg-idle', direction: 'ingress', protocol: 'tcp', multiport: String(port % 65535 || 1), remote_ip_prefix: `198.18.${(port >> 8) & 255}.${port & 255}/32` } });
        latency.push(performance.now() - t0);
        ok.push((r.body.security_group_rule as { id: string }).id);
      } catch {
        failed++;
      }
    }
  });
  return {
    ok,
    latency,
    get failed() {
      return failed;
    },
    async stop() {
      running = false;
      await Promise.all(loops);
    },
  };
}

/**
 * The agents left behind after the changes: those that acked fewer changes
 * than the most any agent acked (a change they never got, or got only
 * superseded), and among them those whose last acked revision is still not
 * the desired one the API reports (never converged); per replica (by the URL
 * of their last welcome), with a few examples.
 */
async function agentsBehind(children: ChildProcess[], replicaOf: (url: string | null) => string, call: ApiCall): Promise<{ behind: number; stale: number; summary: string; examples: string[] }> {
  const lists = await askAgents(children, 'agents', 'agents', (m) => m.list as [string, number, number | null, string | null][]);
  const all = lists.flat();
  const most = Math.max(0, ...all.map((a) => a[1]));
  const behind = all.filter((a) => a[1] < most);
  if (!behind.length) return { behind: 0, stale: 0, summary: '', examples: [] };
  const statuses = (await call('GET', '/instance-statuses')).body.instance_statuses as { instance_id: string; desired_revision: number | null }[];
  const desired = new Map(statuses.map((st) => [st.instance_id, st.desired_revision]));
  const stale = behind.filter(([id, , revision]) => desired.get(id) !== revision);
  const perReplica = new Map<string, [number, number]>();
  for (const a of behind) {
    const r = perReplica.get(replicaOf(a[3])) ?? [0, 0];
    r[0]++;
    if (stale.includes(a)) r[1]++;
    perReplica.set(replicaOf(a[3]), r);
  }
  const examples = [...stale, ...behind].slice(0, 5).map(([id, acks, revision, url]) => `${id} on ${replicaOf(url)}: ${acks}/${most} acks, last acked revision ${revision}, desired ${String(desired.get(id))}`);
  return { behind: behind.length, stale: stale.length, summary: [...perReplica].map(([r, [b, st]]) => `${r}: ${b} behind, ${st} not converged`).join('; '), examples };
}

async function runOne(kind: Kind, n: number, ev: Evidence): Promise<HaRow> {
  const dir = await mkdtemp(join(tmpdir(), 'secgroup-bench-ha-'));
  const d = await deploy(kind, dir, n, ev);
  const R = d.replicas.length;
  const live = () => d.replicas.filter((r): r is RunningController => r !== null);
  const apiOf = (r: RunningController) => apiCaller(`http://127.0.0.1:${r.port}/v3/bench`);
  const agentUrlOf = (i: number) => `ws://127.0.0.1:${d.replicas[i]!.port}`;
  const calls = () => live().map(apiOf);
  const children = forkAgents(Math.min(procsFor(n), n));
  try {
    const call = calls()[0]!;
    for (const id of ['sg-all', 'sg-ops', 'sg-idle']) await call('POST', '/vpc/security-groups', { security_group: { id, name: id } });
    // a new group admits its own members; here sg-all admits sg-ops only (documents stay small)
    const own = await call('GET', '/vpc/security-group-rules?security_group_id=sg-all&direction=ingress');
    for (const r of own.body.security_group_rules as { id: string }[]) await call('DELETE', `/vpc/security-group-rules/${r.id}`);
    await call('POST', '/vpc/security-group-rules', { security_group_rule: { security_group_id: 'sg-all', direction: 'ingress', remote_group_id: 'sg-ops' } });
    const agents: { id: string; token: string; urls: string[] }[] = [];
    for (let i = 0; i < n; i += 8) {
      const batch = Array.from({ length: Math.min(8, n - i) }, (_, k) => i + k);
      const made = await Promise.all(
        batch.map((j) => calls()[j % R]!('POST', '/instances', { instance: { id: `i-${j}`, addresses: [memberAddress(j)], security_groups: ['sg-all'] } })),
      );
      for (const [k, m] of made.entries()) {
        const j = batch[k]!;
        agents.push({ id: `i-${j}`, token: m.body.token as string, urls: Array.from({ length: R }, (_, r) => agentUrlOf((j + r) % R)) });
      }
    }
    const events = new AgentEvents(children);
    await startAgents(children, agentUrlOf(0), agents, true, AGENT_KIND);

    let changeNo = 0;
    let timedOut = 0;
    // a change whose acks did not all come within ACK_WAIT_MS counts as timed out (and its late acks are
    // not told apart from the next change's): the row says how many, and the acks missing then
    const change = async (path: string, body: unknown): Promise<number | null> => {
      const want = events.applied + n;
      const t0 = wall();
      await calls()[changeNo++ % live().length]!('POST', path, body);
      if (await events.waitAcks(want)) return events.lastAckAt - t0;
      timedOut++;
      return null;
    };
    const measure = async (make: (i: number) => [string, unknown]): Promise<number[]> => {
      const xs: number[] = [];
      const started = performance.now();
      for (let i = 0; i < CHANGES && performance.now() - started < BUDGET_MS; i++) {
        const x = await change(...make(i));
        if (x !== null) xs.push(x);
      }
      return xs;
    };
    await change('/instances', { instance: { id: 'ops-0', addresses: [memberAddress(0, 100)], security_groups: ['sg-ops'] } }); // warm-up
    const agentCpu = () => askAgents(children, 'cpu', 'cpu', (m) => m.ms as number).then((xs) => xs.reduce((a, b) => a + b, 0));
    const controllerCpu = () => live().reduce((a, r) => a + procCpuMs(r.child.pid), 0);
    const cpu0 = [controllerCpu(), await agentCpu()];
    const rule = await measure((i) => ['/vpc/security-group-rules', { security_group_rule: { security_group_id: 'sg-all', direction: 'ingress', protocol: 'tcp', multiport: String(20000 + i), remote_ip_prefix: '198.18.200.0/24' } }]);
    const member = await measure((i) => ['/instances', { instance: { id: `ops-${i + 1}`, addresses: [memberAddress(i + 1, 100)], security_groups: ['sg-ops'] } }]);
    const cpu = `${r1((controllerCpu() - cpu0[0]!) / 1000)}/${r1(((await agentCpu()) - cpu0[1]!) / 1000)}`;
    const replicaOf = (url: string | null) => {
      const i = d.replicas.findIndex((_, k) => url === agentUrlOf(k));
      return i >= 0 ? `replica ${i + 1}` : 'no welcome';
    };
    const behind = await agentsBehind(children, replicaOf, call);
    if (behind.behind) console.log(`${kind} at ${n} agents: ${behind.behind} agents missed a change, ${behind.stale} never converged (${behind.summary}); e.g. ${behind.examples.join('; ')}`);

    const w = writers(calls, WRITE_CLIENTS, 1);
    const wt0 = performance.now();
    await new Promise((r) => setTimeout(r, WRITE_MS));
    await w.stop();
    const writesPerS = w.ok.length / ((performance.now() - wt0) / 1000);

    let moved: number | string = '-';
    let rehome: number | string = '-';
    let lost: number | string = '-';
    if (R > 1) {
      await new Promise((r) => setTimeout(r, 2_000)); // every hello stored, every welcome reported
      const killedUrl = agentUrlOf(0);
      const onKilled = [...events.home].filter(([, [url]]) => url === killedUrl).map(([id]) => id);
      const stream = writers(calls, KILL_WRITERS, 30_000);
      await new Promise((r) => setTimeout(r, 1_000));
      const tKill = wall();
      await d.kill(0);
      const deadline = performance.now() + 60_000;
      const pending = () => onKilled.filter((id) => (events.home.get(id)?.[1] ?? 0) <= tKill || events.home.get(id)?.[0] === killedUrl);
      while (pending().length && performance.now() < deadline) await new Promise((r) => setTimeout(r, 100));
      const notBack = pending().length;
      await stream.stop();
      moved = onKilled.length - notBack;
      rehome = notBack ? `> 60 (${notBack} not back)` : r1((Math.max(...onKilled.map((id) => events.home.get(id)![1])) - tKill) / 1000);
      const ids = new Set<string>();
      for (let marker = ''; ; ) {
        const page = await calls()[0]!('GET', `/vpc/security-group-rules?security_group_id=sg-idle&limit=2000${marker ? `&marker=${marker}` : ''}`);
        const rules = page.body.security_group_rules as { id: string }[];
        for (const r of rules) ids.add(r.id);
        if (rules.length < 2000) break;
        marker = rules[rules.length - 1]!.id;
      }
      lost = [...w.ok, ...stream.ok].filter((id) => !ids.has(id)).length;
    }
    const p99 = (xs: number[]) => r1(quantile(xs, 0.99));
    const ok = timedOut === 0 && p99(rule) <= TARGET.rule && p99(member) <= TARGET.member && (typeof rehome !== 'number' || rehome * 1000 <= TARGET.rehome) && (lost === '-' || lost === 0);
    return {
      deployment: kind,
      agents: n,
      'rule p50 ms': r1(quantile(rule, 0.5)),
      'rule p99 ms': p99(rule),
      'member p50 ms': r1(quantile(member, 0.5)),
      'member p99 ms': p99(member),
      'writes/s': r1(writesPerS),
      'write p99 ms': p99(w.latency),
      'killed: agents moved': moved,
      'killed: all re-acked s': rehome,
      'lost writes': lost,
      'changes timed out (acks missing)': timedOut ? `${timedOut} (${events.missing})` : 0,
      'agents behind (not converged)': behind.behind ? `${behind.behind} (${behind.stale})` : 0,
      'cpu s: controllers/agents': cpu,
      met: ok ? 'yes' : 'NO',
    };
  } finally {
    await stopAgents(children);
    await d.stop();
    await rm(dir, { recursive: true, force: true });
  }
}

/** Every deployment at every size (BENCH_HA_SIZES, BENCH_HA_DEPLOYMENTS: comma lists), one after the other. */
export async function runConvergeHaBench(sizes = HA_SIZES, kinds = HA_DEPLOYMENTS): Promise<HaRow[]> {
  console.log(
    'HA cases: controllers as separate processes on 127.0.0.1; sqlite x1 (baseline) vs postgres x1 vs postgres x3 (one throwaway PostgreSQL 15, fsync off).\n' +
      (AGENT_KIND === 'full'
        ? 'agents: createAgent with the FAKE nft, one child process per 250, controller.urls rotated per agent; every instance in sg-all, which admits sg-ops.\n'
        : 'agents: the agent\'s control channel only (ControllerClient: hello, failover, backoff; a document is acked at once, not compiled: BENCH_HA_AGENTS=full for real agents), one child process per 1000, controller.urls rotated per agent; every instance in sg-all, which admits sg-ops.\n') +
      'rule = a rule added to sg-all (full documents); member = an instance joins sg-ops (policy_delta); both: API call -> last applied ack sent by an agent.\n' +
      `writes/s: ${WRITE_CLIENTS} clients creating rules in an unused group for ${WRITE_MS / 1000} s over all replicas. killed: SIGKILL of replica 1 under ${KILL_WRITERS} writing clients; ` +
      'time until every agent that was on it got a welcome from another replica; lost = writes answered 201 but not found afterwards.\n' +
      `targets (postgres x3 at 3000 agents): rule p99 <= ${TARGET.rule} ms, member p99 <= ${TARGET.member} ms, re-acked <= ${TARGET.rehome / 1000} s, 0 lost.`,
  );
  const ev: Evidence = { logs: process.env.BENCH_HA_LOGS ?? (await mkdtemp(join(tmpdir(), 'secgroup-bench-ha-logs-'))) };
  await mkdir(ev.logs, { recursive: true });
  if (process.env.BENCH_HA_PROF) ev.profiles = process.env.BENCH_HA_PROF;
  const rows: HaRow[] = [];
  for (const n of sizes) {
    for (const kind of kinds) {
      const row = await runOne(kind, n, ev);
      console.log(JSON.stringify(row));
      rows.push(row);
    }
  }
  console.log(`controller logs (one file per deployment, size and replica): ${ev.logs}${ev.profiles ? `; CPU profiles: ${ev.profiles}` : ''}`);
  return rows;
}

export function haSelection(env = process.env): [number[], Kind[]] {
  const sizes = env.BENCH_HA_SIZES?.split(',').map(Number).filter((x) => x > 0) ?? HA_SIZES;
  const kinds = (env.BENCH_HA_DEPLOYMENTS?.split(',').map((x) => x.trim()) ?? HA_DEPLOYMENTS).filter((k): k is Kind => (HA_DEPLOYMENTS as string[]).includes(k));
  return [sizes, kinds];
}

if (process.argv[1] === fileURLToPath(import.meta.url)) console.table(await runConvergeHaBench(...haSelection()));
