/**
 * Child process of bench converge: runs many real agents (`createAgent`) in
 * one process against the controller, with the fake nft (`FakeNft`) and an
 * in-memory state store, so no kernel state is touched. Driven over IPC:
 * `{cmd: 'start', url, agents: [{id, token}]}` -> `{event: 'ready'}` once
 * every agent has applied a policy; `{cmd: 'stop'}` -> stops them and exits.
 */
import { createAgent, type Agent } from '../src/agent/agent.js';
import { resolveConfig } from '../src/agent/config.js';
import { AgentMetrics } from '../src/agent/metrics.js';
import { MemoryStateStore } from '../src/agent/state-store.js';
import { wsDialer } from '../src/agent/ws-dialer.js';
import type { Dialer } from '../src/agent/controller-client.js';
import { systemClock } from '../src/lib/clock.js';
import { createLogger, silentLogger } from '../src/lib/logger.js';
import { ManualScheduler } from '../src/lib/scheduler.js';
import { FakeNft } from '../src/nft/fake.js';
import { MAX_MESSAGE_BYTES } from '../src/protocol/messages.js';

type Command = { cmd: 'start'; url: string; agents: { id: string; token: string }[] } | { cmd: 'stats' } | { cmd: 'stop' };

const agents: Agent[] = [];
/** duration_ms of every applied ack sent (compile + check + apply + verify of one agent, FakeNft) */
let durations: number[] = [];
const send = (m: unknown) => process.send?.(m);

function recordingAcks(dial: Dialer): Dialer {
  return (events) => {
    const conn = dial(events);
    return {
      ...conn,
      send: (text: string) => {
        if (text.includes('"applied"')) {
          const m = JSON.parse(text) as { type?: string; status?: string; duration_ms?: number };
          if (m.type === 'ack' && m.status === 'applied' && typeof m.duration_ms === 'number') durations.push(m.duration_ms);
        }
        conn.send(text);
      },
    };
  };
}

async function start(url: string, list: { id: string; token: string }[]): Promise<void> {
  for (const a of list) {
    const config = resolveConfig(
      { instance_id: a.id, state_dir: '/nonexistent', controller: { url, token: a.token }, http_listen: null, ports_interval_ms: 0, platform: { dhcp: false } },
      {},
    );
    agents.push(
      createAgent({
        config,
        nft: new FakeNft({ table: config.table }),
        store: new MemoryStateStore(),
        clock: systemClock,
        logger: process.env.BENCH_LOG ? createLogger({ level: 'warn' }) : silentLogger(),
        scheduler: new ManualScheduler(),
        resolver: { resolve: () => Promise.resolve([]) },
        dialer: recordingAcks(wsDialer({ url, token: () => a.token, maxPayload: MAX_MESSAGE_BYTES, handshakeTimeoutMs: 10_000 })),
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
    start(m.url, m.agents).catch((e: unknown) => {
      send({ event: 'error', message: (e as Error).message });
    });
  } else if (m.cmd === 'stats') {
    send({ event: 'stats', durations });
    durations = [];
  } else {
    void Promise.all(agents.map((a) => a.stop())).finally(() => process.exit(0));
  }
});
process.on('disconnect', () => process.exit(0));
