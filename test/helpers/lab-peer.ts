/**
 * The "client" side of the agent lab, run inside the client network namespace
 * (`ip netns exec <ns> tsx test/helpers/lab-peer.ts --listen ADDR:PORT`):
 *  - a small WebSocket controller on ADDR:PORT: welcomes agents, sends the
 *    current policy to an agent whose hello shows another revision, relays
 *    what agents send;
 *  - a packet prober: real TCP connects to the agent's host.
 * Commands arrive as JSON lines on stdin, events leave as JSON lines on stdout.
 */
import { createInterface } from 'node:readline';
import { tryConnect } from './tcp-connect.js';
import { WebSocketServer, type WebSocket } from 'ws';

const args = process.argv.slice(2);
const listen = args[args.indexOf('--listen') + 1] ?? '';
const [host, portText] = [listen.slice(0, listen.lastIndexOf(':')), listen.slice(listen.lastIndexOf(':') + 1)];

const emit = (e: Record<string, unknown>) => process.stdout.write(JSON.stringify(e) + '\n');

let wss: WebSocketServer | null = null;
let current: unknown = null;
let flap = false;
let connections = 0;
const agents = new Set<WebSocket>();

function up(): void {
  if (wss) return;
  wss = new WebSocketServer({ host, port: Number(portText), path: '/v1/agent' });
  wss.on('listening', () => emit({ event: 'listening' }));
  wss.on('connection', (ws, req) => {
    agents.add(ws);
    connections++;
    if (!flap || connections % 50 === 0) emit({ event: 'connection', auth: req.headers.authorization ?? null, n: connections });
    ws.on('message', (data) => {
      let m: { type?: string; applied_revision?: number | null };
      try {
        m = JSON.parse(String(data)) as typeof m;
      } catch {
        return;
      }
      if (!flap) emit({ event: 'message', message: m });
      if (m.type === 'hello') {
        if (flap) {
          // a flapping controller: accepts, welcomes, and drops the connection at once
          ws.send(JSON.stringify({ type: 'welcome', protocol: 1, instance_id: 'lab', desired_revision: null }));
          ws.close(1011, 'flap');
          return;
        }
        const rev = (current as { revision?: number } | null)?.revision ?? null;
        ws.send(JSON.stringify({ type: 'welcome', protocol: 1, instance_id: 'lab', desired_revision: rev }));
        if (current !== null && m.applied_revision !== rev) ws.send(JSON.stringify({ type: 'policy', policy: current }));
      }
    });
    ws.on('close', () => {
      agents.delete(ws);
      if (!flap) emit({ event: 'disconnect' });
    });
  });
}

function down(): Promise<void> {
  const s = wss;
  wss = null;
  for (const a of agents) a.terminate();
  agents.clear();
  return new Promise((resolve) => (s ? s.close(() => resolve()) : resolve()));
}

interface Command {
  id: number;
  cmd: string;
  policy?: unknown;
  frame?: string;
  host?: string;
  port?: number;
  ports?: number[];
  timeoutMs?: number;
  durationMs?: number;
  on?: boolean;
}

up();
const rl = createInterface({ input: process.stdin });
rl.on('line', (line) => {
  void (async () => {
    const c = JSON.parse(line) as Command;
    const reply = (r: Record<string, unknown>) => emit({ event: 'reply', id: c.id, ...r });
    switch (c.cmd) {
      case 'policy':
        current = c.policy;
        for (const a of agents) a.send(JSON.stringify({ type: 'policy', policy: c.policy }));
        return reply({ sent: agents.size });
      case 'raw':
        for (const a of agents) a.send(c.frame!);
        return reply({ sent: agents.size });
      case 'down':
        await down();
        return reply({});
      case 'flap':
        // on: every agent connection is welcomed and closed at once (only every 50th connection is reported)
        flap = c.on === true;
        return reply({ connections });
      case 'up':
        up();
        return reply({});
      case 'connect':
        return reply({ ok: await tryConnect(c.host!, c.port!, c.timeoutMs ?? 1000) });
      case 'hammer': {
        // connects to every port in turn until durationMs is over; counts successes per port
        const ok: Record<number, number> = {};
        const tries: Record<number, number> = {};
        const end = Date.now() + (c.durationMs ?? 1000);
        while (Date.now() < end) {
          for (const p of c.ports!) {
            tries[p] = (tries[p] ?? 0) + 1;
            if (await tryConnect(c.host!, p, c.timeoutMs ?? 300)) ok[p] = (ok[p] ?? 0) + 1;
          }
        }
        return reply({ ok, tries });
      }
      case 'exit':
        await down();
        reply({});
        process.exit(0);
    }
  })();
});
rl.on('close', () => process.exit(0));
