/**
 * `npm run demo`: the seed's example on this machine, in about 15 seconds, as root.
 *
 * Five network namespaces (no Docker), joined by a bridge that lives in a
 * namespace of its own; nothing is added to the root namespace (no address,
 * route, firewall rule or sysctl), every address is in 198.18.50.0/24:
 *
 *   <p>-ctl     198.18.50.10  the real controller (`secgroup controller`, temp data dir)
 *   <p>-a       198.18.50.11  agent web-a (`secgroup agent`) + a web server on :80
 *   <p>-b       198.18.50.12  agent web-b
 *   <p>-client  198.18.50.20  the client that tries to connect
 *   <p>-sw      bridge br0 with one veth per namespace above
 *
 * The demo talks to the controller's HTTP API (Huawei VPC v3 paths) and makes
 * connection attempts through a small helper process inside the namespace
 * concerned (JSON lines over stdin/stdout). Everything is removed at the end,
 * also on failure and on Ctrl-C (SIGINT) or SIGTERM.
 *
 * Environment: SECGROUP_DEMO_PREFIX (default sgdemo-<pid>), SECGROUP_DEMO_VERBOSE=1
 * (print the components' logs at the end), SECGROUP_DEMO_LOGS=<dir> (keep the
 * components' whole logs, and what the demo saw of web-a's port report, in
 * <dir>/<prefix>/).
 *
 * `npm run demo -- --console`: afterwards the rule is created again and the demo
 * keeps running (until Ctrl-C) with the web console reachable at
 * http://127.0.0.1:8443/console (SECGROUP_DEMO_CONSOLE_PORT): a listening socket
 * on the machine's loopback, bridged through a Unix socket to the controller in
 * its namespace (test/helpers/ns-bridge.ts; no address or route is added).
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { closeSync, copyFileSync, mkdirSync, mkdtempSync, openSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { loopbackToUnix } from '../test/helpers/ns-bridge.js';

const REPO = resolve(import.meta.dirname, '..');
const TSX = join(REPO, 'node_modules/.bin/tsx');
const MAIN = join(REPO, 'src/cli/main.ts');
const PREFIX = process.env.SECGROUP_DEMO_PREFIX ?? `sgdemo-${process.pid}`;
const NET = '198.18.50';
const ADDR = { ctl: `${NET}.10`, a: `${NET}.11`, b: `${NET}.12`, client: `${NET}.20` } as const;
type Node = keyof typeof ADDR;
const NODES = Object.keys(ADDR) as Node[];
const NS = (n: Node | 'sw') => `${PREFIX}-${n}`;
const ADMIN = `demo-admin-${process.pid}-0123456789`;
const PORT = 8443;
const PROJECT = 'demo';
const CONSOLE = process.argv.includes('--console');
const CONSOLE_PORT = Number(process.env.SECGROUP_DEMO_CONSOLE_PORT ?? 8443);
const t0 = performance.now();

type Json = Record<string, unknown>;

// ---------------------------------------------------------------- output
const tty = process.stdout.isTTY;
const paint = (code: string, s: string) => (tty ? `\x1b[${code}m${s}\x1b[0m` : s);
const bold = (s: string) => paint('1', s);
const green = (s: string) => paint('32', s);
const red = (s: string) => paint('31', s);
const dim = (s: string) => paint('2', s);
const elapsed = () => `${((performance.now() - t0) / 1000).toFixed(1)}s`;
const say = (s: string) => console.log(`${dim(`[${elapsed().padStart(5)}]`)} ${s}`);

/**
 * What the demo's polls of web-a's port report returned, each change once with the time it was first seen:
 * printed when the demo fails, so a wait that times out shows whether the report was missing, behind the
 * applied revision, or current but with another status (and how old it was).
 */
const seen: string[] = [];
function saw(what: string): void {
  if (seen.at(-1)?.endsWith(` ${what}`)) return;
  seen.push(`[${elapsed().padStart(5)}] ${what}`);
  if (seen.length > 60) seen.shift();
}

// ---------------------------------------------------------------- cleanup
const procs: ChildProcess[] = [];
let dir = '';
let cleaned = false;

function ip(args: string[], check = true): string {
  const r = spawnSync('ip', args, { encoding: 'utf8' });
  if (check && r.status !== 0) throw new Error(`ip ${args.join(' ')}: ${r.stderr.trim()}`);
  return r.stdout;
}

function cleanup(): void {
  if (cleaned) return;
  cleaned = true;
  for (const p of procs) if (p.exitCode === null && p.signalCode === null) p.kill('SIGKILL');
  for (const n of [...NODES, 'sw'] as const) {
    // whatever still runs in our namespaces (children of `ip netns exec`) goes too
    for (const pid of ip(['netns', 'pids', NS(n)], false).split('\n').filter(Boolean)) {
      try {
        process.kill(Number(pid), 'SIGKILL');
      } catch {
        /* already gone */
      }
    }
    ip(['netns', 'del', NS(n)], false);
  }
  if (dir && process.env.SECGROUP_DEMO_LOGS) {
    // the components' whole logs, for a run to look into afterwards
    const to = join(process.env.SECGROUP_DEMO_LOGS, PREFIX);
    mkdirSync(to, { recursive: true });
    for (const f of readdirSync(dir)) if (f.endsWith('.log')) copyFileSync(join(dir, f), join(to, f));
    writeFileSync(join(to, 'ports-seen.log'), seen.join('\n') + '\n');
  }
  if (dir) rmSync(dir, { recursive: true, force: true });
}

for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
  process.on(sig, () => {
    console.log(`\n${sig}: cleaning up`);
    cleanup();
    process.exit(130);
  });
}
process.on('exit', cleanup);

// ---------------------------------------------------------------- topology
function topology(): void {
  for (const n of [...NODES, 'sw'] as const) ip(['netns', 'add', NS(n)]);
  const sw = NS('sw');
  ip(['-n', sw, 'link', 'add', 'br0', 'type', 'bridge']);
  ip(['-n', sw, 'link', 'set', 'br0', 'up']);
  for (const n of NODES) {
    ip(['-n', sw, 'link', 'add', `v-${n}`, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', NS(n)]);
    ip(['-n', sw, 'link', 'set', `v-${n}`, 'master', 'br0', 'up']);
    ip(['-n', NS(n), 'addr', 'add', `${ADDR[n]}/24`, 'dev', 'eth0']);
    ip(['-n', NS(n), 'link', 'set', 'eth0', 'up']);
    ip(['-n', NS(n), 'link', 'set', 'lo', 'up']);
  }
}

/** A process in namespace `n`, its output appended to <dir>/<name>.log. */
function start(n: Node, name: string, cmd: string[], stdio: 'log' | 'pipe' = 'log'): ChildProcess {
  const log = openSync(join(dir, `${name}.log`), 'a');
  const p = spawn('ip', ['netns', 'exec', NS(n), ...cmd], {
    cwd: REPO,
    stdio: stdio === 'log' ? ['ignore', log, log] : ['pipe', 'pipe', log],
    // temporary files (the agents' nft helper directories) go with the demo's directory
    env: { ...process.env, TMPDIR: dir },
  });
  closeSync(log);
  procs.push(p);
  return p;
}

// A helper inside a namespace: {id, op: "fetch"|"connect", ...} per line in, {id, ...} per line out.
const HELPER = `
const net = require('node:net');
require('node:readline').createInterface({ input: process.stdin }).on('line', async (line) => {
  const m = JSON.parse(line);
  const out = (o) => process.stdout.write(JSON.stringify({ id: m.id, ...o }) + '\\n');
  if (m.op === 'fetch') {
    try {
      const r = await fetch(m.url, { method: m.method, headers: m.headers, body: m.body });
      const t = await r.text();
      out({ status: r.status, body: t ? JSON.parse(t) : {} });
    } catch (e) { out({ status: 0, body: { error: String(e) } }); }
  } else if (m.op === 'connect') {
    const t0 = performance.now();
    const c = net.connect({ host: m.host, port: m.port, timeout: m.timeoutMs });
    let reply = '';
    const done = (result) => { c.destroy(); out({ result, ms: Math.round(performance.now() - t0), reply: reply.trim() }); };
    c.on('connect', () => { c.write('GET / HTTP/1.0\\r\\n\\r\\n'); });
    c.on('data', (d) => { reply += d; });
    c.on('end', () => done('connected'));
    c.on('timeout', () => done(reply ? 'connected' : 'timeout'));
    c.on('error', (e) => done(e.code));
  }
});`;

class Helper {
  private next = 1;
  private waiting = new Map<number, (v: Json) => void>();
  constructor(readonly proc: ChildProcess) {
    createInterface({ input: proc.stdout! }).on('line', (l) => {
      const m = JSON.parse(l) as Json;
      this.waiting.get(m.id as number)?.(m);
      this.waiting.delete(m.id as number);
    });
  }
  call(msg: Json): Promise<Json> {
    const id = this.next++;
    return new Promise((res, rej) => {
      const timer = setTimeout(() => rej(new Error(`helper: no answer to ${JSON.stringify(msg)}`)), 15_000);
      this.waiting.set(id, (v) => {
        clearTimeout(timer);
        res(v);
      });
      this.proc.stdin!.write(JSON.stringify({ id, ...msg }) + '\n');
    });
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
async function until<T>(what: string, fn: () => Promise<T | undefined>, timeoutMs = 20_000): Promise<T> {
  const end = performance.now() + timeoutMs;
  for (;;) {
    const v = await fn().catch(() => undefined);
    if (v !== undefined) return v;
    if (performance.now() > end) throw new Error(`timed out after ${timeoutMs / 1000}s waiting for ${what}`);
    await sleep(200);
  }
}

// ---------------------------------------------------------------- the demo
async function main(): Promise<void> {
  if (process.getuid?.() !== 0) throw new Error('the demo needs root (network namespaces and nft)');
  for (const [cmd, arg] of [['ip', '-V'], ['nft', '--version']]) {
    if (spawnSync(cmd!, [arg!], { stdio: 'ignore' }).status !== 0) throw new Error(`${cmd} not found (run scripts/setup.sh)`);
  }
  dir = mkdtempSync(join(tmpdir(), `${PREFIX}-`));
  console.log(bold('secgroup demo: security groups enforced with nftables, in network namespaces'));
  topology();
  say(`namespaces ${NODES.map((n) => `${NS(n)} (${ADDR[n]})`).join(', ')}, bridge in ${NS('sw')}`);

  // controller
  writeFileSync(
    join(dir, 'controller.yaml'),
    [`listen: { host: 0.0.0.0, port: ${PORT} }`, `data_dir: ${join(dir, 'controller-data')}`, 'agents: { heartbeat_interval_ms: 2000 }', 'log: { level: debug }', 'api:', '  tokens:', `    - { name: demo, token: ${ADMIN} }`].join('\n'),
  );
  start('ctl', 'controller', [TSX, MAIN, 'controller', '--config', join(dir, 'controller.yaml')]);
  const ctl = new Helper(start('ctl', 'ctl-helper', [process.execPath, '-e', HELPER], 'pipe'));
  const client = new Helper(start('client', 'client-helper', [process.execPath, '-e', HELPER], 'pipe'));
  const api = async (method: string, path: string, body?: Json): Promise<{ status: number; body: Json }> => {
    const r = await ctl.call({
      op: 'fetch',
      method,
      url: `http://127.0.0.1:${PORT}/v3/${PROJECT}${path}`,
      headers: { 'X-Auth-Token': ADMIN, ...(body ? { 'Content-Type': 'application/json' } : {}) },
      ...(body ? { body: JSON.stringify(body) } : {}),
    });
    return r as { status: number; body: Json };
  };
  const must = async (method: string, path: string, body: Json | undefined, want: number) => {
    const r = await api(method, path, body);
    if (r.status !== want) throw new Error(`${method} ${path}: HTTP ${r.status} ${JSON.stringify(r.body)}`);
    return r.body;
  };
  await until('the controller API', async () => ((await api('GET', '/vpc/security-groups')).status === 200 ? true : undefined));
  say(`controller up in ${NS('ctl')}, http://${ADDR.ctl}:${PORT} (data in ${dir})`);

  // groups, instances, agents
  await must('POST', '/vpc/security-groups', { security_group: { id: 'sg-web', name: 'web', description: 'web servers' } }, 201);
  // Huawei's defaults: egress allow-all, and ingress from the group's own members; the web tier does not
  // talk to itself, so only the rule this demo adds opens a port
  const ingress = await must('GET', '/vpc/security-group-rules?security_group_id=sg-web&direction=ingress', undefined, 200);
  for (const r of ingress.security_group_rules as Json[]) await must('DELETE', `/vpc/security-group-rules/${String(r.id)}`, undefined, 204);
  say('POST /v3/demo/vpc/security-groups            -> sg-web (Huawei\'s four default rules)');
  say('DELETE its two ingress-from-own-members rules -> sg-web: egress allow-all, no ingress');
  const tokens: Record<string, string> = {};
  for (const [id, n, groups] of [
    ['web-a', 'a', ['sg-web']],
    ['web-b', 'b', ['default']],
  ] as const) {
    const b = await must('POST', '/instances', { instance: { id, name: id, addresses: [ADDR[n]], security_groups: groups } }, 201);
    tokens[id] = b.token as string;
    say(`POST /v3/demo/instances                      -> ${id} ${ADDR[n]} in [${groups.join(', ')}], agent token ${String(b.token).slice(0, 8)}...`);
  }
  for (const [id, n] of [
    ['web-a', 'a'],
    ['web-b', 'b'],
  ] as const) {
    writeFileSync(join(dir, `${id}.token`), tokens[id]!, { mode: 0o600 });
    writeFileSync(
      join(dir, `${id}.yaml`),
      [`instance_id: ${id}`, `state_dir: ${join(dir, `${id}-state`)}`, 'ports_interval_ms: 1000', 'log_level: debug', 'controller:', `  url: ws://${ADDR.ctl}:${PORT}`, `  token_file: ${join(dir, `${id}.token`)}`].join('\n'),
    );
    start(n, `agent-${id}`, [TSX, MAIN, 'agent', '--config', join(dir, `${id}.yaml`)]);
  }
  start('a', 'web', [process.execPath, '-e', `require('http').createServer((q, s) => s.end('hello from web-a')).listen(80, '0.0.0.0', () => console.log(new Date().toISOString() + ' listening on 0.0.0.0:80'))`]);

  const status = async (id: string) => (await must('GET', `/instances/${id}/status`, undefined, 200)).status as Json;
  const synced = (id: string, above = 0) =>
    until(`${id} to apply its policy`, async () => {
      const s = await status(id);
      const rev = s.applied_revision as number | null;
      return s.in_sync === true && rev !== null && rev > above ? rev : undefined;
    });
  const port80 = (rev: number, want?: string) =>
    until(`the port report of web-a (revision ${rev})`, async () => {
      const r = await must('GET', '/instances/web-a/ports', undefined, 200);
      const report = r.report as { revision: number; generated_at: string; entries: Json[] } | null;
      const e = report?.entries.find((x) => x.protocol === 'tcp' && x.port === 80 && x.family !== 6);
      const st = (e?.status as string | undefined) ?? 'no entry';
      saw(report ? `revision ${report.revision}, generated ${report.generated_at}, received ${String(r.received_at)}, port 80 ${st}, ${report.entries.length} entries` : 'no report yet');
      if (!report || report.revision < rev) return undefined;
      return want === undefined || st === want ? st : undefined;
    });
  const attempt = async () => {
    const r = await client.call({ op: 'connect', host: ADDR.a, port: 80, timeoutMs: 1500 });
    return r.result === 'connected' ? green(`connected (${r.ms} ms): "${String(r.reply).split('\n').pop()}"`) : red(`${r.result === 'timeout' ? 'timed out, dropped' : String(r.result)} (${r.ms} ms)`);
  };
  const revs = { a: await synced('web-a'), b: await synced('web-b') };
  say(`agents connected and applied: web-a revision ${revs.a}, web-b revision ${revs.b}`);
  await until('the web server on web-a:80', async () => ((await port80(revs.a)) === 'blocked' ? true : undefined));

  const rows: string[][] = [];
  const row = async (step: string, rev: number, want: string) => {
    const st = await port80(rev, want);
    rows.push([step, String(rev), st === 'open' ? green(st) : st === 'blocked' ? red(st) : st, await attempt()]);
    say(`${step}: revision ${rev}, port 80 ${st}`);
  };
  await row('1. no ingress rule yet', revs.a, 'blocked');

  const rule = (await must(
    'POST',
    '/vpc/security-group-rules',
    { security_group_rule: { security_group_id: 'sg-web', direction: 'ingress', ethertype: 'IPv4', protocol: 'tcp', multiport: '80', remote_ip_prefix: '0.0.0.0/0' } },
    201,
  )).security_group_rule as Json;
  say(`POST /v3/demo/vpc/security-group-rules       -> rule ${String(rule.id).slice(0, 8)}... ingress TCP 80 from 0.0.0.0/0`);
  revs.a = await synced('web-a', revs.a);
  await row('2. rule "ingress TCP 80 from 0.0.0.0/0" created', revs.a, 'open');

  await must('DELETE', `/vpc/security-group-rules/${String(rule.id)}`, undefined, 204);
  say(`DELETE /v3/demo/vpc/security-group-rules/${String(rule.id).slice(0, 8)}...`);
  revs.a = await synced('web-a', revs.a);
  await row('3. rule deleted', revs.a, 'blocked');

  // the table
  const head = ['step', 'applied revision (web-a)', 'port 80 status', 'client 198.18.50.20 -> web-a:80'];
  // eslint-disable-next-line no-control-regex
  const width = (s: string) => s.replace(/\x1b\[[0-9;]*m/g, '').length;
  const w = head.map((h, i) => Math.max(width(h), ...rows.map((r) => width(r[i]!))));
  const line = (r: string[]) => '| ' + r.map((c, i) => c + ' '.repeat(w[i]! - width(c))).join(' | ') + ' |';
  console.log('');
  console.log(line(head.map(bold)));
  console.log('|' + w.map((x) => '-'.repeat(x + 2)).join('|') + '|');
  for (const r of rows) console.log(line(r));
  console.log('');
  const ok = rows.map((r) => r[3]!.includes('connected'));
  if (ok.join() !== 'false,true,false') throw new Error(`unexpected connection results: ${ok.join(', ')}`);
  say(bold('demo done: the rule opened port 80 and its deletion closed it again'));
  if (CONSOLE) await keepForConsole(must);
}

/** --console: the rule again (so something is exposed), the console on the loopback, until Ctrl-C. */
async function keepForConsole(must: (method: string, path: string, body: Json | undefined, want: number) => Promise<Json>): Promise<void> {
  await must(
    'POST',
    '/vpc/security-group-rules',
    { security_group_rule: { security_group_id: 'sg-web', direction: 'ingress', ethertype: 'IPv4', protocol: 'tcp', multiport: '80', remote_ip_prefix: '0.0.0.0/0', description: 'web from anywhere' } },
    201,
  );
  say('rule "ingress TCP 80 from 0.0.0.0/0" created again, for the console');
  const sock = join(dir, 'console.sock');
  const bridge = start('ctl', 'console-bridge', [TSX, join(REPO, 'test/helpers/ns-bridge.ts'), sock, '127.0.0.1', String(PORT)], 'pipe');
  await new Promise<void>((resolveReady, reject) => {
    createInterface({ input: bridge.stdout! }).on('line', (l) => l === 'ready' && resolveReady());
    bridge.once('exit', () => reject(new Error('the console bridge exited')));
  });
  const b = await loopbackToUnix(sock, CONSOLE_PORT);
  console.log('');
  say(bold(`web console: open ${b.url}/console and sign in with project "${PROJECT}" and token ${ADMIN}`));
  say('press Ctrl-C to stop the demo and remove everything');
  await new Promise<never>(() => {});
}

main()
  .then(() => {
    if (process.env.SECGROUP_DEMO_VERBOSE === '1') printLogs();
    cleanup();
    say(`cleaned up (namespaces ${PREFIX}-* removed)`);
    process.exit(0);
  })
  .catch((e: unknown) => {
    console.error(red(`demo failed: ${e instanceof Error ? e.message : String(e)}`));
    if (seen.length > 0) console.error(dim(`--- GET /v3/${PROJECT}/instances/web-a/ports, each change as the demo saw it\n${seen.join('\n')}`));
    printLogs();
    cleanup();
    process.exit(1);
  });

/**
 * The components' last log lines. Routine lines (the demo's own API polls, each port report sent and received,
 * logged at debug) would fill the tail: they are left out of it and summed up instead, each kind with its
 * count and its last line, so a report that stopped flowing shows.
 */
const ROUTINE = new Set(['api', 'ports', 'ports_sent']);
function printLogs(): void {
  if (!dir) return;
  for (const name of ['controller', 'agent-web-a', 'agent-web-b', 'web']) {
    let text: string;
    try {
      text = readFileSync(join(dir, `${name}.log`), 'utf8');
    } catch {
      continue;
    }
    const rest: string[] = [];
    const routine = new Map<string, { count: number; last: string }>();
    for (const line of text.trim().split('\n')) {
      const event = /"event":"([^"]+)"/.exec(line)?.[1];
      if (event === undefined || !ROUTINE.has(event)) {
        rest.push(line);
        continue;
      }
      routine.set(event, { count: (routine.get(event)?.count ?? 0) + 1, last: line });
    }
    console.error(dim(`--- ${name}.log (last lines)`));
    console.error(dim(rest.slice(-10).join('\n')));
    for (const [event, r] of routine) console.error(dim(`(${r.count} "${event}" lines left out; the last: ${r.last})`));
  }
}
