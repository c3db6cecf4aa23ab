/**
 * kill -9 during API writes (issue 12; results in scripts/security/README.md).
 *
 * Starts `secgroup controller` as a child process (src/cli/main.ts through
 * tsx) on 127.0.0.1, port 0, with a temporary state directory (removed at
 * the end). Each round: `--writers` concurrent clients create security
 * groups, rules and address groups with ids of their own; after a random
 * 0.3-3 s the controller is killed with SIGKILL in the middle of the writes.
 * The database is then opened on its own (`PRAGMA integrity_check` must say
 * ok), the controller restarted on it, and every write acknowledged so far
 * (answered 2xx, in this round or an earlier one) must be there. Prints
 * "round N: acknowledged X, lost Y" per round; exits 1 if anything was lost
 * or the database is damaged.
 *
 * Bounded: at most 10 rounds and 32 writers; the whole run is aborted (exit
 * 1) after 110 s.
 *
 *   npx tsx scripts/security/kill9-writes.ts [--rounds 3] [--writers 8] [--seed 1] [--synchronous FULL|NORMAL]
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { Agent, request } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { Database } from '../../src/controller/store/sqlite-driver.js';
import { DB_FILE } from '../../src/controller/controller.js';
import { spawnController, type RunningController } from '../../test/helpers/cli.js';

const { values: args } = parseArgs({
  options: {
    rounds: { type: 'string', default: '3' },
    writers: { type: 'string', default: '8' },
    seed: { type: 'string', default: '1' },
    synchronous: { type: 'string', default: 'FULL' },
  },
});
const ROUNDS = Math.max(1, Math.min(10, Number(args.rounds)));
const WRITERS = Math.max(1, Math.min(32, Number(args.writers)));
const SYNCHRONOUS = args.synchronous === 'NORMAL' ? 'NORMAL' : 'FULL';
const DEADLINE_MS = 110_000;
const ADMIN = 'admin-token-0123456789';
const P = '/v3/proj-a';

let seed = Number(args.seed) >>> 0;
function random(): number {
  seed = (seed + 0x6d2b79f5) >>> 0;
  let t = seed;
  t = Math.imul(t ^ (t >>> 15), t | 1);
  t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
}

type Kind = 'group' | 'rule' | 'address_group';
function call(port: number, agent: Agent, method: string, path: string, body?: unknown): Promise<{ status: number; body: string }> {
  return new Promise((resolve) => {
    const data = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
    const r = request(
      { host: '127.0.0.1', port, method, path, agent, timeout: 10_000, headers: { 'x-auth-token': ADMIN, ...(data ? { 'content-type': 'application/json', 'content-length': String(data.length) } : {}) } },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (d: Buffer) => chunks.push(d));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString() }));
        res.on('error', () => resolve({ status: 0, body: '' }));
      },
    );
    r.on('timeout', () => r.destroy());
    r.on('error', () => resolve({ status: 0, body: '' }));
    r.end(data);
  });
}

/** Every id of a list, following the marker pagination. */
async function listIds(port: number, agent: Agent, path: string, key: string): Promise<Set<string>> {
  const ids = new Set<string>();
  let marker: string | null = null;
  for (;;) {
    const r = await call(port, agent, 'GET', `${P}${path}?limit=2000${marker ? `&marker=${encodeURIComponent(marker)}` : ''}`);
    if (r.status !== 200) throw new Error(`GET ${path} answered ${r.status}: ${r.body}`);
    const page = (JSON.parse(r.body) as Record<string, { id: string }[]>)[key]!;
    for (const x of page) ids.add(x.id);
    if (page.length < 2000) return ids;
    marker = page.at(-1)!.id;
  }
}

/** One writer: its own group first, then groups, rules in its group and address groups, until `stop`. */
async function writer(port: number, agent: Agent, round: number, w: number, acked: Map<string, Kind>, stop: { now: boolean }): Promise<{ sent: number }> {
  const base = `k9-${round}-${w}`;
  let sent = 0;
  let ownGroup = false;
  for (let i = 0; !stop.now; i++) {
    let kind: Kind;
    let id: string;
    let r: { status: number; body: string };
    const pick = ownGroup ? random() : 0;
    sent++;
    if (pick < 0.4) {
      kind = 'group';
      id = ownGroup ? `${base}-g${i}` : `${base}-g`;
      r = await call(port, agent, 'POST', `${P}/vpc/security-groups`, { security_group: { id, name: id, description: `round ${round}` } });
      if (r.status === 201 && !ownGroup) ownGroup = true;
    } else if (pick < 0.8) {
      kind = 'rule';
      id = `${base}-r${i}`;
      const rule = { id, security_group_id: `${base}-g`, direction: 'ingress', protocol: 'tcp', multiport: String(1 + (i % 65535)), remote_ip_prefix: '198.18.0.0/24' };
      r = await call(port, agent, 'POST', `${P}/vpc/security-group-rules`, { security_group_rule: rule });
    } else {
      kind = 'address_group';
      id = `${base}-a${i}`;
      r = await call(port, agent, 'POST', `${P}/vpc/address-groups`, { address_group: { id, name: id, ip_version: 4, ip_set: [`198.18.${i % 256}.0/24`] } });
    }
    if (r.status >= 200 && r.status < 300) acked.set(id, kind);
    else if (r.status === 0) return { sent }; // the controller is gone
    else throw new Error(`${kind} ${id}: unexpected ${r.status} ${r.body}`);
  }
  return { sent };
}

function integrityCheck(file: string): string {
  const db = new Database(file);
  try {
    return (db.pragma('integrity_check') as { integrity_check: string }[]).map((r) => r.integrity_check).join('; ');
  } finally {
    db.close();
  }
}

async function main(): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'sg-kill9-'));
  const configFile = join(dir, 'controller.json');
  await writeFile(
    configFile,
    JSON.stringify({ listen: { host: '127.0.0.1', port: 0 }, data_dir: join(dir, 'state'), api: { tokens: [{ name: 'admin', token: ADMIN }] }, store: { synchronous: SYNCHRONOUS },
      // room for every write of every round
      quotas: { rules_per_group: 100_000, security_groups_per_project: 100_000, address_groups_per_project: 100_000 },
      log: { level: 'info' } }),
  );
  const dbFile = join(dir, 'state', DB_FILE);
  const acked = new Map<string, Kind>();
  let running: RunningController | null = null;
  let failed = false;
  const deadline = setTimeout(() => {
    console.log(`aborted: over ${DEADLINE_MS / 1000} s`);
    running?.child.kill('SIGKILL');
    process.exit(1);
  }, DEADLINE_MS);
  const started = performance.now();
  console.log(`kill9-writes: ${ROUNDS} rounds, ${WRITERS} writers, seed ${args.seed}, store.synchronous ${SYNCHRONOUS}`);
  try {
    for (let round = 1; round <= ROUNDS; round++) {
      running = await spawnController(configFile);
      const agent = new Agent({ keepAlive: true, maxSockets: WRITERS });
      const before = acked.size;
      const stop = { now: false };
      const writers = Array.from({ length: WRITERS }, (_, w) => writer(running!.port, agent, round, w, acked, stop));
      const killAfter = 300 + Math.floor(random() * 2700);
      await new Promise((r) => setTimeout(r, killAfter));
      running.child.kill('SIGKILL');
      stop.now = true;
      await running.exited;
      const sent = (await Promise.all(writers)).reduce((n, x) => n + x.sent, 0);
      agent.destroy();
      const integrity = integrityCheck(dbFile);

      running = await spawnController(configFile);
      const check = new Agent({ keepAlive: true, maxSockets: 1 });
      const present = {
        group: await listIds(running.port, check, '/vpc/security-groups', 'security_groups'),
        rule: await listIds(running.port, check, '/vpc/security-group-rules', 'security_group_rules'),
        address_group: await listIds(running.port, check, '/vpc/address-groups', 'address_groups'),
      };
      check.destroy();
      const lost = [...acked].filter(([id, kind]) => !present[kind].has(id));
      const inRound = acked.size - before;
      // writes in flight at the kill may or may not have been committed: either is correct
      const extra = [...present.group, ...present.rule, ...present.address_group].filter((id) => id.startsWith(`k9-${round}-`) && !acked.has(id)).length;
      console.log(
        `round ${round}: killed after ${killAfter} ms; sent ${sent}, acknowledged ${inRound} (${acked.size} in all), lost ${lost.length}; committed but unanswered ${extra}; integrity_check ${integrity}`,
      );
      for (const [id, kind] of lost.slice(0, 10)) console.log(`  lost ${kind} ${id}`);
      if (lost.length || integrity !== 'ok') failed = true;
      running.child.kill('SIGTERM');
      await running.exited;
      running = null;
    }
    console.log(`total: acknowledged ${acked.size}, lost ${failed ? 'some (see above)' : 0}, ${((performance.now() - started) / 1000).toFixed(1)} s`);
  } finally {
    clearTimeout(deadline);
    running?.child.kill('SIGKILL');
    await rm(dir, { recursive: true, force: true });
  }
  process.exitCode = failed ? 1 : 0;
}

main().catch((e: unknown) => {
  console.error(e);
  process.exitCode = 2;
});
