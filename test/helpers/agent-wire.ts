/* eslint-disable @typescript-eslint/no-explicit-any -- frames are untyped JSON, checked by the tests' assertions */
/**
 * A raw agent connection for controller tests (several replicas): every frame
 * it gets, parsed; it acks every policy it is sent, so a controller sees an
 * agent that applies what it gets. `closeAll()` in afterEach drops every
 * connection a test left open. `wsAgent` is a whole agent for the same tests.
 */
import { expect } from 'vitest';
import WebSocket from 'ws';
import { PROTOCOL_VERSION } from '../../src/protocol/messages.js';
import { createAgent, type Agent } from '../../src/agent/agent.js';
import { resolveConfig } from '../../src/agent/config.js';
import { MemoryStateStore } from '../../src/agent/state-store.js';
import { wsDialer } from '../../src/agent/ws-dialer.js';
import { systemClock } from '../../src/lib/clock.js';
import type { Logger } from '../../src/lib/logger.js';
import { ManualScheduler } from '../../src/lib/scheduler.js';
import { FakeNft } from '../../src/nft/fake.js';

const opened = new Set<WebSocket>();

/** Waits (bounded: 500 tries 10 ms apart, real time) until `ok` holds; fails naming `what`. Not a timing assertion. */
export async function waitFor(what: string, ok: () => Promise<boolean> | boolean, tries = 500): Promise<void> {
  let done = false;
  // `ok` may act (a write to retry): it is not called again once it held
  for (let i = 0; i < tries && !(done = await ok()); i++) await new Promise((r) => setTimeout(r, 10));
  expect(done, what).toBe(true);
}

export class Wire {
  readonly frames: any[] = [];
  /** ack every policy on arrival (false: the test sends its acks itself) */
  autoAck = true;
  readonly closed: Promise<{ code: number; reason: string }>;

  private constructor(readonly ws: WebSocket) {
    opened.add(ws);
    ws.on('message', (d) => {
      const m = JSON.parse(d.toString());
      this.frames.push(m);
      if (this.autoAck && (m.type === 'policy' || m.type === 'policy_delta')) {
        const revision = m.type === 'policy' ? m.policy.revision : m.revision;
        ws.send(JSON.stringify({ type: 'ack', revision, status: 'applied' }));
      }
    });
    this.closed = new Promise((resolve) => ws.on('close', (code, reason) => resolve({ code, reason: reason.toString() })));
    ws.once('close', () => opened.delete(ws));
  }

  /** An upgraded connection to `agentUrl` with the instance token (rejects when the upgrade is refused). */
  static open(agentUrl: string, token: string): Promise<Wire> {
    const ws = new WebSocket(agentUrl, { headers: { authorization: `Bearer ${token}` } });
    return new Promise((resolve, reject) => {
      ws.once('open', () => resolve(new Wire(ws)));
      ws.once('error', reject);
    });
  }

  static closeAll(): void {
    for (const ws of opened) ws.terminate();
    opened.clear();
  }

  hello(applied: number | null, instance = 'ecs-1'): void {
    this.ws.send(JSON.stringify({ type: 'hello', protocol: PROTOCOL_VERSION, instance_id: instance, agent_version: '0.1.0', applied_revision: applied }));
  }

  /** revisions of the documents pushed (full or delta), in order */
  get pushed(): number[] {
    return this.frames.filter((m) => m.type === 'policy' || m.type === 'policy_delta').map((m) => (m.type === 'policy' ? m.policy.revision : m.revision));
  }

  /** Waits (bounded) until a document with `revision` or higher was pushed; returns the pushed revisions. */
  async until(revision: number): Promise<number[]> {
    await waitFor(`a push of revision ${revision}`, () => this.pushed.some((r) => r >= revision));
    return this.pushed;
  }
}

/**
 * A whole agent (createAgent over a fake nft, real WebSockets, the system
 * clock) for `urls` with `token`: reconnects quickly (20-200 ms), logs to
 * `logger`. The caller starts and stops it.
 */
export function wsAgent(urls: string[], token: string, logger: Logger): Agent {
  return createAgent({
    config: resolveConfig({ instance_id: 'ecs-1', http_listen: null, controller: { urls, token, reconnect_initial_ms: 20, reconnect_max_ms: 200 } }, {}),
    nft: new FakeNft(),
    store: new MemoryStateStore(),
    clock: systemClock,
    logger,
    scheduler: new ManualScheduler(),
    resolver: { resolve: async () => [] },
    dialer: wsDialer({ token: () => token, maxPayload: 1 << 22, handshakeTimeoutMs: 2000 }),
    random: () => 0.5,
  });
}
