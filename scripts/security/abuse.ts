/**
 * Unauthenticated abuse of the controller's HTTP API, measured (issue 12;
 * figures in docs/security-http.md). Starts its own controller on 127.0.0.1
 * (port 0, temporary state directory, removed at the end), then:
 *
 *  (a) slowloris: `--slow` connections of each kind, each kind from its own
 *      loopback source address (127.0.0.2-4): headers trickled one byte per
 *      interval; an unauthenticated POST whose body is trickled; the same
 *      with an admin token. Reports how many are still open after twice the
 *      timeout (`--timeout-ms`, used for the headers and request timeouts).
 *  (b) flood: `--flood-clients` clients on 127.0.0.5 send 0.9 MB
 *      unauthenticated POSTs for `--flood-seconds`, while one client on
 *      127.0.0.1 measures an authenticated GET (median, p99), compared with
 *      the same GET without the flood.
 *
 * Bounded in connections and time; prints its figures. Also runs against an
 * older controller without the `http` configuration section (then the
 * server has its old defaults): copy this file into a worktree of that
 * commit and run it there.
 *
 *   npx tsx scripts/security/abuse.ts [--timeout-ms 5000] [--slow 50] [--flood-clients 8] [--flood-seconds 10]
 */
import { Agent, request } from 'node:http';
import { connect, type Socket } from 'node:net';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { controllerConfigSchema, parseControllerConfig } from '../../src/controller/config.js';
import { createController } from '../../src/controller/controller.js';
import { silentLogger } from '../../src/lib/logger.js';

const { values: args } = parseArgs({
  options: {
    'timeout-ms': { type: 'string', default: '5000' },
    slow: { type: 'string', default: '50' },
    'flood-clients': { type: 'string', default: '8' },
    'flood-seconds': { type: 'string', default: '10' },
    'baseline-requests': { type: 'string', default: '300' },
  },
});
const TIMEOUT = Math.min(60_000, Number(args['timeout-ms']));
const SLOW = Math.min(60, Number(args.slow));
const FLOOD_CLIENTS = Math.min(32, Number(args['flood-clients']));
const FLOOD_SECONDS = Math.min(60, Number(args['flood-seconds']));
const BASELINE = Math.min(5000, Number(args['baseline-requests']));
const ADMIN = 'admin-token-0123456789';
// valid JSON, so an old controller parses all of it before it looks at the token
const BODY = Buffer.from(JSON.stringify({ security_group: { name: 'x', description: 'a'.repeat(900 * 1024 - 50) } }));

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

function quantile(sorted: number[], q: number): number {
  if (!sorted.length) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]!;
}

async function main(): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'sg-abuse-'));
  const hasHttpSection = 'http' in controllerConfigSchema.shape;
  const config = parseControllerConfig({
    listen: { host: '127.0.0.1', port: 0 },
    data_dir: dir,
    api: { tokens: [{ name: 'admin', token: ADMIN }] },
    ...(hasHttpSection ? { http: { request_timeout_ms: TIMEOUT, headers_timeout_ms: TIMEOUT } } : {}),
    log: { level: 'silent' },
    metrics: { process_metrics: false },
  });
  const controller = createController({ config, logger: silentLogger() });
  const addr = await controller.start();
  console.log(`controller ${addr.url} (http configuration section: ${hasHttpSection ? `yes, request and headers timeout ${TIMEOUT} ms` : 'no, old defaults'})`);
  try {
    await slowloris(addr.port);
    await flood(addr.port);
  } finally {
    await controller.stop();
    await rm(dir, { recursive: true, force: true });
  }
}

// ---- (a) slowloris ----

interface Slow {
  socket: Socket;
  closed: boolean;
  answer: string;
}

function openSlow(port: number, localAddress: string, head: string): Promise<Slow> {
  return new Promise((resolve) => {
    const s: Slow = { socket: connect({ host: '127.0.0.1', port, localAddress }), closed: false, answer: '' };
    s.socket.on('error', () => {});
    s.socket.on('close', () => (s.closed = true));
    s.socket.on('data', (d: Buffer) => {
      if (!s.answer) s.answer = d.toString('latin1').split('\r\n')[0] ?? '';
    });
    s.socket.once('connect', () => {
      s.socket.write(head);
      resolve(s);
    });
    s.socket.once('close', () => resolve(s));
  });
}

async function slowloris(port: number): Promise<void> {
  const kinds = [
    { name: 'headers trickled', source: '127.0.0.2', head: 'GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ' },
    { name: 'unauthenticated body trickled', source: '127.0.0.3', head: 'POST /v3/proj-a/vpc/security-groups HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n' },
    {
      name: 'authenticated body trickled',
      source: '127.0.0.4',
      head: `POST /v3/proj-a/vpc/security-groups HTTP/1.1\r\nHost: x\r\nX-Auth-Token: ${ADMIN}\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n`,
    },
  ];
  const interval = Math.max(200, Math.floor(TIMEOUT / 5));
  const all = await Promise.all(kinds.map(async (k) => ({ k, conns: await Promise.all(Array.from({ length: SLOW }, () => openSlow(port, k.source, k.head))) })));
  const t0 = performance.now();
  const ticker = setInterval(() => {
    for (const { conns } of all) for (const c of conns) if (!c.closed) c.socket.write('a');
  }, interval);
  await sleep(2 * TIMEOUT);
  clearInterval(ticker);
  console.log(`\n(a) slowloris: ${SLOW} connections per kind, one byte every ${interval} ms; after ${Math.round(performance.now() - t0)} ms (2x the ${TIMEOUT} ms timeout):`);
  for (const { k, conns } of all) {
    const open = conns.filter((c) => !c.closed).length;
    const answers = new Map<string, number>();
    for (const c of conns) if (c.answer) answers.set(c.answer, (answers.get(c.answer) ?? 0) + 1);
    console.log(`  ${k.name.padEnd(32)} still open ${String(open).padStart(3)}/${SLOW}  answers: ${[...answers].map(([a, n]) => `${n}x "${a}"`).join(', ') || 'none'}`);
    for (const c of conns) c.socket.destroy();
  }
}

// ---- (b) flood ----

function timedGet(port: number, agent: Agent): Promise<{ ms: number; status: number }> {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    const req = request({ host: '127.0.0.1', port, path: '/v3/proj-a/vpc/security-groups', headers: { 'x-auth-token': ADMIN }, agent }, (res) => {
      res.resume();
      res.on('end', () => resolve({ ms: performance.now() - t0, status: res.statusCode ?? 0 }));
    });
    req.on('error', reject);
    req.end();
  });
}

async function measure(port: number, until: () => boolean): Promise<number[]> {
  const agent = new Agent({ keepAlive: true, maxSockets: 1 });
  const times: number[] = [];
  try {
    while (until()) {
      const r = await timedGet(port, agent);
      if (r.status !== 200) throw new Error(`authenticated GET answered ${r.status}`);
      times.push(r.ms);
    }
  } finally {
    agent.destroy();
  }
  return times.sort((a, b) => a - b);
}

function floodPost(port: number): Promise<string> {
  return new Promise((resolve) => {
    const req = request(
      { host: '127.0.0.1', port, method: 'POST', path: '/v3/proj-a/vpc/security-groups', localAddress: '127.0.0.5', agent: false, headers: { 'content-type': 'application/json', 'content-length': BODY.length } },
      (res) => {
        res.resume();
        res.on('end', () => resolve(String(res.statusCode)));
        res.on('error', () => resolve(String(res.statusCode)));
      },
    );
    req.on('error', (e: NodeJS.ErrnoException) => resolve(e.code ?? 'error'));
    req.end(BODY);
  });
}

async function flood(port: number): Promise<void> {
  await timedGet(port, new Agent()); // creates the project's default group
  let n = 0;
  const base = await measure(port, () => n++ < BASELINE);
  console.log(`\n(b) flood of ${BODY.length}-byte unauthenticated POSTs, ${FLOOD_CLIENTS} clients on 127.0.0.5, ${FLOOD_SECONDS} s`);
  console.log(`  authenticated GET without flood: n=${base.length} median ${quantile(base, 0.5).toFixed(2)} ms, p99 ${quantile(base, 0.99).toFixed(2)} ms`);
  const end = performance.now() + FLOOD_SECONDS * 1000;
  const outcomes = new Map<string, number>();
  const clients = Array.from({ length: FLOOD_CLIENTS }, async () => {
    while (performance.now() < end) {
      const o = await floodPost(port);
      outcomes.set(o, (outcomes.get(o) ?? 0) + 1);
    }
  });
  await sleep(200);
  const during = await measure(port, () => performance.now() < end - 200);
  await Promise.all(clients);
  console.log(`  authenticated GET during flood:  n=${during.length} median ${quantile(during, 0.5).toFixed(2)} ms, p99 ${quantile(during, 0.99).toFixed(2)} ms`);
  const total = [...outcomes.values()].reduce((a, b) => a + b, 0);
  console.log(`  flood requests: ${total} (${(total / FLOOD_SECONDS).toFixed(0)}/s): ${[...outcomes].map(([o, k]) => `${o}: ${k}`).join(', ')}`);
}

main().catch((e: unknown) => {
  console.error(e);
  process.exitCode = 1;
});
