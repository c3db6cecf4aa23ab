/**
 * Child process of bench converge: runs many real agents (`createAgent`) in
 * one process against the controller, with the fake nft (`FakeNft`) and an
 * in-memory state store, so no kernel state is touched; with `kind:
 * 'protocol'` agents reduced to their control channel (`protocolAgent`).
 * Driven over IPC:
 * `{cmd: 'start', url, agents: [{id, token, urls?}], report?, kind?}` -> `{event: 'ready'}`
 * once every agent has applied a policy; `{cmd: 'stop'}` -> stops them and exits.
 * An agent with `urls` has several controllers (replicas, `controller.urls`).
 * With `report` the process also streams, every 20 ms, the wall-clock times
 * (performance.timeOrigin + now, comparable across processes) of the applied
 * acks it sent (`{event: 'acked', at}`) and of the `welcome`s its agents got
 * with the agent's id and the controller URL (`{event: 'welcomed', list: [[id, url, at]]}`): the HA
 * bench (converge-ha.ts) counts acks there, its controllers being other processes.
 * `{cmd: 'agents'}` -> `{event: 'agents', list: [[id, applied acks, last acked
 * revision, URL of the last welcome]]}` (who was left behind);
 * `{cmd: 'cpu'}` -> `{event: 'cpu', ms}`, this process's CPU time so far (the
 * agents' share of the machine's cores).
 */
import { createAgent } from '../src/agent/agent.js';
import { ControllerClient } from '../src/agent/controller-client.js';
import { VERSION } from '../src/lib/version.js';
import { controllerUrls, resolveConfig, type AgentConfig } from '../src/agent/config.js';
import { AgentMetrics } from '../src/agent/metrics.js';
import { MemoryStateStore } from '../src/agent/state-store.js';
import { wsDialer } from '../src/agent/ws-dialer.js';
import type { Dialer } from '../src/agent/controller-client.js';
import { systemClock } from '../src/lib/clock.js';
import { createLogger, silentLogger } from '../src/lib/logger.js';
import { ManualScheduler } from '../src/lib/scheduler.js';
import { FakeNft } from '../src/nft/fake.js';
import { MAX_MESSAGE_BYTES, PROTOCOL_VERSION, type PolicyDeltaMessage } from '../src/protocol/messages.js';

/** `protocol`: the agent's own control channel without the policy work (see `protocolAgent`) */
type Kind = 'full' | 'protocol';
type Command = { cmd: 'start'; url: string; agents: { id: string; token: string; urls?: string[] }[]; report?: boolean; kind?: Kind } | { cmd: 'stats' } | { cmd: 'agents' } | { cmd: 'cpu' } | { cmd: 'stop' };

interface SimAgent {
  start(): Promise<void>;
  stop(): Promise<void>;
  status(): { appliedRevision: number | null };
}
const agents: SimAgent[] = [];

/**
 * An agent reduced to its control channel: the real `ControllerClient` (the
 * same hello, failover over `controller.urls`, backoff and jitter as an
 * agent), but a document is not compiled or applied: a `policy` is acked as
 * applied at once, a `policy_delta` too when its base is the revision this
 * agent has (else it asks for a resync, as an agent does). On real VMs each
 * agent's compile and apply runs on its own CPU, in parallel; here thousands
 * of agents would share this machine's cores with the controllers, and their
 * work (about 1 ms per document each) would be most of what is measured.
 */
function protocolAgent(id: string, config: AgentConfig, dial: Dialer): SimAgent {
  let applied: number | null = null;
  let welcomed: () => void = () => undefined;
  const c = config.controller!;
  const ack = (revision: number) => {
    applied = revision;
    client.send({ type: 'ack', revision, status: 'applied', duration_ms: 0 });
  };
  const client: ControllerClient = new ControllerClient({
    dial,
    clock: systemClock,
    logger: silentLogger(),
    hello: () => ({ type: 'hello', protocol: PROTOCOL_VERSION, instance_id: id, agent_version: VERSION, applied_revision: applied }),
    onWelcome: () => welcomed(),
    onPolicy: (policy) => {
      const revision = (policy as { revision?: unknown }).revision;
      if (typeof revision === 'number') ack(revision);
    },
    onPolicyDelta: (d: PolicyDeltaMessage) => {
      if (d.base_revision === applied) ack(d.revision);
      else client.send({ type: 'resync', have_revision: applied, reason: `the delta's base ${d.base_revision} is not the applied revision ${String(applied)}` });
    },
    targets: () => controllerUrls(c).map((url) => ({ url })),
    pingIntervalMs: c.ping_interval_ms,
    pongTimeoutMs: c.pong_timeout_ms,
    reconnectInitialMs: c.reconnect_initial_ms,
    reconnectMaxMs: c.reconnect_max_ms,
    maxMessageBytes: c.max_message_bytes,
  });
  return {
    // resolves at the first welcome (at most 10 s): started in groups, agents come in at about the rate the
    // controllers admit them, as real agents busy with their first apply do, rather than all at once
    start: () =>
      new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, 10_000);
        welcomed = () => {
          clearTimeout(timer);
          welcomed = () => undefined;
          resolve();
        };
        client.start();
      }),
    stop: async () => client.stop(),
    status: () => ({ appliedRevision: applied }),
  };
}
/** duration_ms of every applied ack sent (compile + check + apply + verify of one agent, FakeNft) */
let durations: number[] = [];
const send = (m: unknown) => process.send?.(m);
const wallNow = () => performance.timeOrigin + performance.now();
let acked: number[] = [];
let welcomed: [string, string, number][] = [];
/** per agent: applied acks sent, the revision of the last one, the URL of the controller that last welcomed it */
const perAgent = new Map<string, { acks: number; revision: number | null; url: string | null }>();
let reporting: NodeJS.Timeout | null = null;
function flushReports(): void {
  if (acked.length) send({ event: 'acked', at: acked });
  if (welcomed.length) send({ event: 'welcomed', list: welcomed });
  acked = [];
  welcomed = [];
}

function recordingAcks(dial: Dialer, id: string, fallbackUrl: string): Dialer {
  return (events, target) => {
    const url = target?.url ?? fallbackUrl;
    const conn = dial(
      {
        ...events,
        message: (text, bytes) => {
          if (text.startsWith('{"type":"welcome"')) {
            perAgent.get(id)!.url = url;
            if (reporting) welcomed.push([id, url, wallNow()]);
          }
          events.message(text, bytes);
        },
      },
      target,
    );
    return {
      ...conn,
      send: (text: string) => {
        if (text.includes('"applied"')) {
          const m = JSON.parse(text) as { type?: string; status?: string; duration_ms?: number; revision?: number };
          if (m.type === 'ack' && m.status === 'applied' && typeof m.duration_ms === 'number') {
            durations.push(m.duration_ms);
            const a = perAgent.get(id)!;
            a.acks++;
            a.revision = m.revision ?? null;
            if (reporting) acked.push(wallNow());
          }
        }
        conn.send(text);
      },
    };
  };
}

async function start(url: string, list: { id: string; token: string; urls?: string[] }[], report: boolean, kind: Kind): Promise<void> {
  if (report) reporting = setInterval(flushReports, 20);
  for (const a of list) {
    perAgent.set(a.id, { acks: 0, revision: null, url: null });
    const controller = a.urls ? { urls: a.urls, token: a.token } : { url, token: a.token };
    const config = resolveConfig(
      { instance_id: a.id, state_dir: '/nonexistent', controller, http_listen: null, ports_interval_ms: 0, platform: { dhcp: false } },
      {},
    );
    const dialer = recordingAcks(wsDialer({ url, token: () => a.token, maxPayload: MAX_MESSAGE_BYTES, handshakeTimeoutMs: 10_000 }), a.id, url);
    if (kind === 'protocol') {
      agents.push(protocolAgent(a.id, config, dialer));
      continue;
    }
    agents.push(
      createAgent({
        config,
        nft: new FakeNft({ table: config.table }),
        store: new MemoryStateStore(),
        clock: systemClock,
        logger: process.env.BENCH_LOG ? createLogger({ level: 'warn' }) : silentLogger(),
        scheduler: new ManualScheduler(),
        resolver: { resolve: () => Promise.resolve([]) },
        dialer,
        metrics: new AgentMetrics({ processMetrics: false }),
      }),
    );
  }
  for (let i = 0; i < agents.length; i += 50) await Promise.all(agents.slice(i, i + 50).map((a) => a.start()));
  const deadline = performance.now() + 120_000;
  while (agents.some((a) => a.status().appliedRevision === null)) {
    if (performance.now() > deadline) throw new Error(`${agents.filter((a) => a.status().appliedRevision === null).length} agents applied nothing within 120 s`);
    await new Promise((r) => setTimeout(r, 50));
  }
  send({ event: 'ready' });
}

process.on('message', (m: Command) => {
  if (m.cmd === 'start') {
    start(m.url, m.agents, m.report === true, m.kind ?? 'full').catch((e: unknown) => {
      send({ event: 'error', message: (e as Error).message });
    });
  } else if (m.cmd === 'agents') {
    send({ event: 'agents', list: [...perAgent].map(([id, a]) => [id, a.acks, a.revision, a.url]) });
  } else if (m.cmd === 'cpu') {
    const u = process.cpuUsage();
    send({ event: 'cpu', ms: (u.user + u.system) / 1000 });
  } else if (m.cmd === 'stats') {
    send({ event: 'stats', durations });
    durations = [];
  } else {
    void Promise.all(agents.map((a) => a.stop())).finally(() => process.exit(0));
  }
});
process.on('disconnect', () => process.exit(0));
