/**
 * bench converge: time from an API call to every affected agent's `applied`
 * ack, for 1 / 10 / 100 / 1000 connected agents.
 *
 * - Controller: in-process (`createController`), SQLite in a temporary data
 *   dir (synchronous FULL, the default), listening on 127.0.0.1 (loopback of
 *   the root namespace: no firewall, route or address is changed).
 * - Agents: real `createAgent` instances with the fake nft (`FakeNft`) and an
 *   in-memory state store, all in one child process (bench/converge-agents.ts)
 *   connected over real WebSockets. With 2 CPUs the controller has one and
 *   all agents share the other, so at large counts the agents' own
 *   validate/compile/apply work is serialised and part of the figure.
 * - Scenario (the worst case for the controller): every instance is in
 *   `sg-all`, whose ingress rule references `sg-all` itself (as `default`
 *   does), so every document lists every member. Each change adds a rule to
 *   `sg-all`: all N documents are recompiled and pushed.
 * - Converge time = API request sent -> the controller has received the Nth
 *   `applied` ack (counted where the hub counts acks). Also: the API's own
 *   response time, the time until the hub wrote the last push, and the
 *   reference: a rule added to a group no instance uses (API + commit, no
 *   document affected), on the same controller.
 * - Bounded: at most CHANGES changes per size and BUDGET_MS of changes.
 */
import { fork, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createController } from '../src/controller/controller.js';
import { parseControllerConfig } from '../src/controller/config.js';
import { createLogger, silentLogger } from '../src/lib/logger.js';

export const SIZES = [1, 10, 100, 1000];
const CHANGES = 20;
const REF_CALLS = 20;
const BUDGET_MS = 60_000;
export const ADMIN = 'bench-admin-token-0123456789';
const TARGETS: Record<number, number> = { 100: 250, 1000: 2000 };

/**
 * Processes the simulated agents are spread over: one up to 250 agents (more
 * processes only compete with the controller for the 2 cores), then one per
 * 250 (1000 agents of 1000 members each hold ~4 GB: one process ran out of heap).
 */
export const agentProcs = (n: number): number => Math.max(1, Number(process.env.BENCH_CONVERGE_PROCS ?? Math.ceil(n / 250)));

/** Instance j's address: odd host numbers, so no two members are adjacent (each stays a single-address element). */
export const memberAddress = (j: number, base = 0): string => `198.18.${base + Math.floor(j / 125)}.${2 * (j % 125) + 1}`;

export type ChangeKind = 'rule' | 'member';

export interface ConvergeRow {
  agents: number;
  change: ChangeKind;
  changes: number;
  'converge p50 ms': number;
  'converge p99 ms': number;
  'api p50 ms': number;
  'last push p50 ms': number;
  'last push p99 ms': number;
  'agent apply p50 ms': number;
  'agent apply p99 ms': number;
  'ref p50 ms': number;
  'ref p99 ms': number;
  'doc KiB': number;
  'est. 1 host/agent p99 ms': number;
  target: string;
  met: string;
  'met (est.)': string;
}

export const quantile = (xs: number[], q: number): number => {
  if (!xs.length) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.ceil(q * s.length) - 1)]!;
};
export const r1 = (x: number) => Math.round(x * 10) / 10;

export type ApiCall = (method: string, path: string, body?: unknown) => Promise<{ status: number; body: Record<string, unknown> }>;

/** Calls of the v3 API under `api` (http://host:port/v3/project) with the bench's admin token; a status >= 300 throws. */
export function apiCaller(api: string, token = ADMIN): ApiCall {
  return async (method, path, body) => {
    const r = await fetch(`${api}${path}`, {
      method,
      headers: { 'x-auth-token': token, ...(body ? { 'content-type': 'application/json' } : {}) },
      ...(body ? { body: JSON.stringify(body) } : {}),
    });
    const text = await r.text();
    if (r.status >= 300) throw new Error(`${method} ${path}: HTTP ${r.status} ${text}`);
    return { status: r.status, body: text ? (JSON.parse(text) as Record<string, unknown>) : {} };
  };
}

/** Forks `procs` agent processes (bench/converge-agents.ts). */
export function forkAgents(procs: number): ChildProcess[] {
  return Array.from({ length: procs }, () =>
    fork(fileURLToPath(new URL('./converge-agents.ts', import.meta.url)), [], {
      execArgv: ['--max-old-space-size=4096', '--import', 'tsx', ...(process.env.CONVERGE_AGENT_PROF ? ['--cpu-prof', '--cpu-prof-dir', process.env.CONVERGE_AGENT_PROF] : [])],
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
    }),
  );
}

/** Starts the agents, spread round-robin over the processes; resolves once every one applied a policy. */
export async function startAgents(children: ChildProcess[], url: string, agents: { id: string; token: string; urls?: string[] }[], report = false, kind: 'full' | 'protocol' = 'full'): Promise<void> {
  await Promise.all(
    children.map(
      (child, c) =>
        new Promise<void>((resolve, reject) => {
          const onMessage = (m: { event: string; message?: string }) => {
            if (m.event === 'ready') resolve();
            else if (m.event === 'error') reject(new Error(`agents: ${m.message ?? m.event}`));
            else return;
            child.off('message', onMessage);
          };
          child.on('message', onMessage);
          child.once('exit', (code) => reject(new Error(`agents process exited (${code})`)));
          child.send({ cmd: 'start', url, agents: agents.filter((_, k) => k % children.length === c), report, kind });
        }),
    ),
  );
}

/** Stops the agent processes (SIGKILL after 15 s). */
export async function stopAgents(children: ChildProcess[]): Promise<void> {
  await Promise.all(
    children.map(async (child) => {
      if (child.connected) child.send({ cmd: 'stop' });
      await new Promise<void>((resolve) => {
        if (child.exitCode !== null || child.signalCode !== null) return resolve();
        const t = setTimeout(() => child.kill('SIGKILL'), 15_000);
        child.once('exit', () => {
          clearTimeout(t);
          resolve();
        });
      });
    }),
  );
}

/** A bench controller's configuration: 127.0.0.1 on a free port, its state in `dir`, one API token `bench`, silent; `more` adds or replaces sections. */
export function benchControllerConfig(dir: string, token: string, more: Record<string, unknown> = {}): ReturnType<typeof parseControllerConfig> {
  return parseControllerConfig({
    listen: { host: '127.0.0.1', port: 0 },
    data_dir: dir,
    api: { tokens: [{ name: 'bench', token }] },
    log: { level: 'silent' },
    metrics: { process_metrics: false },
    ...more,
  });
}

async function runSize(n: number): Promise<ConvergeRow[]> {
  const dir = await mkdtemp(join(tmpdir(), 'secgroup-bench-converge-'));
  const config = benchControllerConfig(dir, ADMIN, {
    // all simulated agents share one process, which can be busy for seconds at 1000 agents: liveness is not what is measured
    agents: { hello_timeout_ms: 60_000, heartbeat_interval_ms: 600_000 },
    // every simulated agent connects from 127.0.0.1: the per-source cap (default 64) would refuse all but 64 of them
    http: { max_connections_per_source: 4096 },
  });
  const controller = createController({ config, logger: process.env.BENCH_LOG ? createLogger({ level: 'warn' }) : silentLogger() });
  const addr = await controller.start();
  const api = `${addr.url}/v3/bench`;
  const call = apiCaller(api);

  // Acks and pushes as the hub counts them, with the time they happened.
  let applied = 0;
  let failedAcks = 0;
  let lastAckAt = 0;
  let lastPushAt = 0;
  let waiter: { want: number; resolve: () => void } | null = null;
  const acks = controller.metrics.acks;
  const ackInc = acks.inc.bind(acks);
  acks.inc = ((labels: { status?: string }) => {
    if (labels.status === 'applied') {
      applied++;
      lastAckAt = performance.now();
      if (waiter && applied >= waiter.want) waiter.resolve();
    } else failedAcks++;
    ackInc(labels);
  }) as typeof acks.inc;
  const pushCounter = controller.metrics.pushes;
  const pushInc = pushCounter.inc.bind(pushCounter);
  pushCounter.inc = ((labels: { reason?: string }) => {
    lastPushAt = performance.now();
    pushInc(labels);
  }) as typeof pushCounter.inc;

  const children = forkAgents(Math.min(agentProcs(n), n));
  try {
    await call('POST', '/vpc/security-groups', { security_group: { id: 'sg-all', name: 'all' } });
    await call('POST', '/vpc/security-groups', { security_group: { id: 'sg-idle', name: 'idle' } });
    const agents: { id: string; token: string }[] = [];
    for (let i = 0; i < n; i += 8) {
      const batch = Array.from({ length: Math.min(8, n - i) }, (_, k) => i + k);
      const made = await Promise.all(
        batch.map((j) => call('POST', '/instances', { instance: { id: `i-${j}`, addresses: [memberAddress(j)], security_groups: ['sg-all'] } })),
      );
      for (const [k, m] of made.entries()) agents.push({ id: `i-${batch[k]!}`, token: m.body.token as string });
    }
    await startAgents(children, addr.agentUrl, agents);
    const agentApplyMs = async () =>
      (
        await Promise.all(
          children.map(
            (child) =>
              new Promise<number[]>((resolve) => {
                child.once('message', (m: { durations: number[] }) => resolve(m.durations));
                child.send({ cmd: 'stats' });
              }),
          ),
        )
      ).flat();

    const change = async (path: string, body: unknown): Promise<{ converge: number; api: number; push: number }> => {
      const want = applied + n;
      const done = new Promise<void>((resolve) => (waiter = { want, resolve }));
      const t0 = performance.now();
      await call('POST', path, body);
      const api = performance.now() - t0;
      const timeout = new Promise<never>((_, reject) => setTimeout(() => reject(new Error(`${n - (applied - (want - n))} of ${n} agents did not ack within 180 s (failed acks: ${failedAcks})`)), 180_000).unref());
      await Promise.race([done, timeout]);
      waiter = null;
      return { converge: lastAckAt - t0, api, push: lastPushAt - t0 };
    };
    // warm-up (not measured): the self-reference makes every document list every member
    await change('/vpc/security-group-rules', { security_group_rule: { security_group_id: 'sg-all', direction: 'ingress', remote_group_id: 'sg-all' } });

    // rule: a rule added to sg-all (every agent gets a full document and compiles it);
    // member: an instance (without an agent) joins sg-all (every agent gets a policy_delta: member fast path)
    const measure = async (kind: ChangeKind) => {
      await agentApplyMs();
      const converge: number[] = [];
      const apiMs: number[] = [];
      const pushMs: number[] = [];
      const started = performance.now();
      for (let i = 0; i < CHANGES && performance.now() - started < BUDGET_MS; i++) {
        const r =
          kind === 'rule'
            ? await change('/vpc/security-group-rules', { security_group_rule: { security_group_id: 'sg-all', direction: 'ingress', protocol: 'tcp', multiport: String(20000 + i), remote_ip_prefix: '198.18.200.0/24' } })
            : await change('/instances', { instance: { id: `joiner-${i}`, addresses: [memberAddress(i, 100)], security_groups: ['sg-all'] } });
        converge.push(r.converge);
        apiMs.push(r.api);
        pushMs.push(r.push);
      }
      return { converge, apiMs, pushMs, applyMs: await agentApplyMs() };
    };
    const runs = { rule: await measure('rule'), member: await measure('member') };
    const ref: number[] = [];
    for (let i = 0; i < REF_CALLS; i++) {
      const t0 = performance.now();
      await call('POST', '/vpc/security-group-rules', { security_group_rule: { security_group_id: 'sg-idle', direction: 'ingress', protocol: 'tcp', multiport: String(20000 + i) } });
      ref.push(performance.now() - t0);
    }
    const doc = await fetch(`${api}/instances/i-0/policy`, { headers: { 'x-auth-token': ADMIN } }).then((r) => r.text());
    const target = TARGETS[n];
    return (['rule', 'member'] as const).map((kind) => {
    const { converge, apiMs, pushMs, applyMs } = runs[kind];
    const p99 = quantile(converge, 0.99);
    // not measured: what converge would be if each agent had its own host (agents apply in parallel), nft time excluded
    const est = quantile(pushMs, 0.99) + quantile(applyMs, 0.99);
    return {
      agents: n,
      change: kind,
      changes: converge.length,
      'converge p50 ms': r1(quantile(converge, 0.5)),
      'converge p99 ms': r1(p99),
      'api p50 ms': r1(quantile(apiMs, 0.5)),
      'last push p50 ms': r1(quantile(pushMs, 0.5)),
      'last push p99 ms': r1(quantile(pushMs, 0.99)),
      'agent apply p50 ms': r1(quantile(applyMs, 0.5)),
      'agent apply p99 ms': r1(quantile(applyMs, 0.99)),
      'ref p50 ms': r1(quantile(ref, 0.5)),
      'ref p99 ms': r1(quantile(ref, 0.99)),
      'doc KiB': r1(Buffer.byteLength(doc) / 1024),
      'est. 1 host/agent p99 ms': r1(est),
      target: target ? `p99 <= ${target} ms` : '-',
      met: target ? (p99 <= target ? 'yes' : 'NO') : '-',
      'met (est.)': target ? (est <= target ? 'yes' : 'NO') : '-',
    };
    });
  } finally {
    await stopAgents(children);
    await controller.stop();
    await rm(dir, { recursive: true, force: true });
  }
}

/** Runs every size (or those in `sizes`) one after the other. */
export async function runConvergeBench(sizes: number[] = SIZES): Promise<ConvergeRow[]> {
  console.log(
    'agents: real createAgent instances with the FAKE nft (FakeNft, no kernel), one child process per 250 agents (BENCH_CONVERGE_PROCS); controller in-process on 127.0.0.1 (SQLite, synchronous FULL).\n' +
      'every instance in sg-all, which references itself: each change recompiles and pushes all N documents, each listing N members.\n' +
      'change rule = a rule added to sg-all (full documents, agents compile); change member = an instance without agent joins sg-all (policy_delta, agents take the member fast path).\n' +
      'converge = API call -> Nth applied ack received by the controller; api = the change\'s HTTP response; last push = API call -> last policy frame written;\n' +
      'agent apply = duration_ms of the agents\' applied acks (compile + check + apply + verify of ONE agent, FakeNft): with one host per agent, converge ~ last push + agent apply + real nft time.\n' +
      'est. 1 host/agent = last push p99 + agent apply p99 (an estimate, not a measurement; real nft adds ~10-40 ms). met = measured converge p99 vs target.\n' +
      `ref = a rule added to a group no instance uses (same controller, no push). At most ${CHANGES} changes or ${BUDGET_MS / 1000} s per size.`,
  );
  const rows: ConvergeRow[] = [];
  for (const n of sizes) {
    for (const row of await runSize(n)) {
      console.log(JSON.stringify(row));
      rows.push(row);
    }
  }
  return rows;
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const sizes = process.argv.slice(2).map(Number).filter((x) => x > 0);
  console.table(await runConvergeBench(sizes.length ? sizes : SIZES));
}
