/* eslint-disable @typescript-eslint/no-explicit-any -- response bodies are untyped JSON, checked by the assertions */
/**
 * Controller replicas on one real PostgreSQL (issue 16; a throwaway cluster,
 * test/helpers/postgres.ts): each replica opens its own store and change
 * feed (LISTEN/NOTIFY) from `store.driver: postgres`. A change through one
 * reaches the agent on the other; `kill -9` of a replica process while writes
 * stream loses no acknowledged write and its agent re-acks on the other; the
 * database stopped and started again: /readyz and the API answer 503, agents
 * keep their policy, and the replicas recover by themselves without a stale
 * push; restarted while writers stream through both replicas: never a 500,
 * no 201 lost; an ack and a port report that arrive while it is stopped are
 * written when it is back; writes stuck behind a row lock held by another
 * session are cancelled by the statement or lock timeout (503 SYS.0503,
 * Retry-After) and free their pool connections. Waits are bounded (real sockets, real server), never timing
 * assertions. Child controllers are killed in afterEach, also on failure.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { afterEach, describe, expect, it } from 'vitest';
import { parseControllerConfig } from '../../src/controller/config.js';
import { createController, type Controller } from '../../src/controller/controller.js';
import { silentLogger, type Logger } from '../../src/lib/logger.js';
import { Wire, waitFor, wsAgent } from '../helpers/agent-wire.js';
import { spawnController, type RunningController } from '../helpers/cli.js';
import { captureLogs } from '../helpers/log-capture.js';
import { usePostgres } from '../helpers/postgres.js';
import { ADMIN, rule } from './controller-helpers.js';

const P = '/v3/proj-a';
const cluster = usePostgres();

const cleanups: (() => Promise<unknown> | unknown)[] = [];
afterEach(async () => {
  Wire.closeAll();
  for (const c of cleanups.splice(0).reverse()) await c();
});

const storeConfig = (url: string) => ({
  listen: { host: '127.0.0.1', port: 0 },
  api: { tokens: [{ name: 'admin', token: ADMIN }] },
  store: { driver: 'postgres', url, pool_size: 4 },
  metrics: { process_metrics: false },
  log: { level: 'warn' },
});

/** Two in-process replicas on a new database (`loggers`: each replica's, default silent; `extra`: more configuration). */
async function twoReplicas(loggers: Logger[] = [], extra: object = {}): Promise<Controller[]> {
  const url = await cluster().createDatabase();
  const out: Controller[] = [];
  for (let i = 0; i < 2; i++) {
    const ctl = createController({ config: parseControllerConfig({ ...storeConfig(url), ...extra }), logger: loggers[i] ?? silentLogger() });
    await ctl.start();
    cleanups.push(() => ctl.stop());
    out.push(ctl);
  }
  return out;
}

/** status 0: no answer within 10 s (or no connection) */
async function http(base: string, method: 'GET' | 'POST', path: string, payload?: object): Promise<{ status: number; body: any; retryAfter: string | null }> {
  try {
    const r = await fetch(`${base}${path}`, { method, headers: { 'x-auth-token': ADMIN, ...(payload ? { 'content-type': 'application/json' } : {}) }, ...(payload ? { body: JSON.stringify(payload) } : {}), signal: AbortSignal.timeout(10_000) });
    const text = await r.text();
    return { status: r.status, body: text ? JSON.parse(text) : null, retryAfter: r.headers.get('retry-after') };
  } catch {
    return { status: 0, body: null, retryAfter: null };
  }
}

const urlOf = (ctl: Controller) => `http://127.0.0.1:${(ctl.app.server.address() as { port: number }).port}`;
const agentUrlOf = (base: string) => `${base.replace(/^http/, 'ws')}/v1/agent`;

/** Group sg-web and instance ecs-1 through `base`; the instance token. */
async function seed(base: string): Promise<string> {
  expect((await http(base, 'POST', `${P}/vpc/security-groups`, { security_group: { id: 'sg-web', name: 'web' } })).status).toBe(201);
  const i = await http(base, 'POST', `${P}/instances`, { instance: { id: 'ecs-1', addresses: ['198.18.0.10'], security_groups: ['sg-web'] } });
  expect(i.status).toBe(201);
  return i.body.token;
}

const addRule = (base: string, port: number, id?: string) =>
  http(base, 'POST', `${P}/vpc/security-group-rules`, { security_group_rule: { security_group_id: 'sg-web', ...(id ? { id } : {}), ...rule({ multiport: String(port) }) } });
const status = async (base: string) => (await http(base, 'GET', `${P}/instances/ecs-1/status`)).body?.status;

/** Two replicas, the seed through A, its agent on B with the first document. */
async function agentOnB(loggers: Logger[] = [], extra: object = {}): Promise<{ a: Controller; b: Controller; agent: Wire; first: number }> {
  const [a, b] = (await twoReplicas(loggers, extra)) as [Controller, Controller];
  const agent = await Wire.open(agentUrlOf(urlOf(b)), await seed(urlOf(a)));
  agent.hello(null);
  const first = (await status(urlOf(a))).desired_revision;
  await agent.until(first);
  return { a, b, agent, first };
}

describe('controller replicas on PostgreSQL', () => {
  it('a rule change through replica A reaches the agent connected to replica B (LISTEN/NOTIFY)', async () => {
    const { a, agent, first } = await agentOnB();
    expect((await addRule(urlOf(a), 443)).status).toBe(201);
    const next = (await status(urlOf(a))).desired_revision;
    expect(await agent.until(next)).toEqual([first, next]);
    await waitFor('the ack, stored by B, read through A', async () => (await status(urlOf(a))).applied_revision === next);
    expect(await status(urlOf(a))).toMatchObject({ connected: true, in_sync: true });
  }, 60_000);

  it('kill -9 of a replica process while writes stream: every acknowledged write is in the store, its agent re-acks on the other replica', async () => {
    const url = await cluster().createDatabase();
    const dir = mkdtempSync(join(tmpdir(), 'sg-replicas-'));
    cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
    const file = join(dir, 'controller.yaml');
    writeFileSync(file, JSON.stringify({ ...storeConfig(url), data_dir: dir, log: { level: 'info' } }));
    const children: RunningController[] = [];
    for (let i = 0; i < 2; i++) {
      const c = await spawnController(file);
      children.push(c);
      cleanups.push(async () => {
        c.child.kill('SIGKILL');
        await c.exited;
      });
    }
    const [one, two] = children.map((c) => `http://127.0.0.1:${c.port}`) as [string, string];
    const token = await seed(one);
    const log = captureLogs('info');
    const agent = wsAgent([agentUrlOf(one), agentUrlOf(two)], token, log.logger);
    cleanups.push(() => agent.stop());
    await agent.start();
    await waitFor('the agent applied through replica one', async () => (await status(one))?.in_sync === true, 1000);

    // four writers stream rules into replica one; it is killed while they write
    const acked: string[] = [];
    let stop = false;
    const writers = [0, 1, 2, 3].map(async (w) => {
      for (let i = 0; !stop; i++) {
        const id = `k9-${w}-${i}`;
        const r = await addRule(one, 1000 + w * 1000 + i, id);
        if (r.status === 201) acked.push(id);
        else if (r.status === 0) return;
      }
    });
    await waitFor('writes acknowledged before the kill', () => acked.length >= 20, 2000);
    children[0]!.child.kill('SIGKILL');
    await children[0]!.exited;
    stop = true;
    await Promise.all(writers);

    // every acknowledged write is there, read through the other replica
    const listed = await http(two, 'GET', `${P}/vpc/security-group-rules?security_group_id=sg-web&limit=2000`);
    expect(listed.status).toBe(200);
    const ids = new Set((listed.body.security_group_rules as { id: string }[]).map((r) => r.id));
    expect(acked.filter((id) => !ids.has(id))).toEqual([]);
    // the agent moved to replica two and acks there what changed meanwhile and after
    expect((await addRule(two, 60_000)).status).toBe(201);
    const desired = (await status(two)).desired_revision;
    await waitFor('the agent re-acked on replica two', async () => {
      const s = await status(two);
      return s?.applied_revision === desired && s.connected === true;
    }, 1000);
    expect(log.lines.some((l) => l.event === 'controller_switch' && l.to === agentUrlOf(two))).toBe(true);
  }, 120_000);

  // it stops and restarts the file's cluster
  it('an ack and a port report that arrive while PostgreSQL is stopped are written when it is back: visible through both replicas without a new frame', async () => {
    const logB = captureLogs('info');
    const { a, b, agent, first } = await agentOnB([silentLogger(), logB.logger]);
    await waitFor('the first ack stored', async () => (await status(urlOf(a))).applied_revision === first);
    // the agent gets the next document but answers only once the database is away
    agent.autoAck = false;
    expect((await addRule(urlOf(a), 443)).status).toBe(201);
    const next = (await status(urlOf(a))).desired_revision;
    await agent.until(next);

    await cluster().stop();
    const report = { revision: next, source: 'ss', generated_at: '2024-05-01T12:00:00.000Z', entries: [{ protocol: 'tcp', port: 443, family: null, status: 'open', listeners: [{ address: '0.0.0.0', process: 'nginx' }], allowed_by: [], denied_by: [] }] };
    agent.ws.send(JSON.stringify({ type: 'ack', revision: next, status: 'applied' }));
    agent.ws.send(JSON.stringify({ type: 'ports', report }));
    await waitFor('the ack held by replica B', () => logB.lines.some((l) => l.event === 'agent_states_held'));
    expect(agent.ws.readyState).toBe(agent.ws.OPEN);

    await cluster().start();
    // nothing more from the agent: replica B writes what it held once its store answers (the feed's reconnect)
    for (const base of [urlOf(a), urlOf(b)]) {
      await waitFor(`the held ack read through ${base}`, async () => (await status(base))?.applied_revision === next, 1500);
      expect(await status(base)).toMatchObject({ applied_revision: next, in_sync: true });
      const ports = await http(base, 'GET', `${P}/instances/ecs-1/ports`);
      expect(ports.body).toMatchObject({ instance_id: 'ecs-1', report });
    }
    expect(logB.lines.filter((l) => l.event === 'agent_states_flushed')).toEqual([expect.objectContaining({ written: 1, gone: 0, left: 0 })]);
    expect(agent.frames.filter((f) => f.type === 'error')).toEqual([]);
  }, 120_000);

  it.each([
    { timeout: 'lock', store: { lock_timeout_ms: 300 } },
    { timeout: 'statement', store: { lock_timeout_ms: 0, statement_timeout_ms: 300 } },
  ])(
    'writes stuck behind a row lock held by another session answer 503 SYS.0503 with Retry-After ($timeout timeout), give their connections back, and succeed once the lock is released',
    async ({ timeout, store }) => {
      const url = await cluster().createDatabase();
      const log = captureLogs('info');
      const base = storeConfig(url);
      const ctl = createController({ config: parseControllerConfig({ ...base, store: { ...base.store, pool_size: 2, ...store } }), logger: log.logger });
      await ctl.start();
      cleanups.push(() => ctl.stop());
      const api = urlOf(ctl);
      await seed(api);
      // a long transaction elsewhere (a forgotten psql session) holds the project's row lock
      const side = new pg.Client({ connectionString: url });
      await side.connect();
      cleanups.push(() => side.end());
      await side.query('BEGIN');
      await side.query("SELECT 1 FROM projects WHERE id = 'proj-a' FOR UPDATE");

      // twice as many writes as the pool has connections: each is cancelled and gives its connection back to the next
      const stuck = await Promise.all([22, 23, 24, 25].map((port) => addRule(api, port)));
      for (const w of stuck) {
        expect(w.status).toBe(503);
        expect(w.body).toMatchObject({ error_code: 'SYS.0503' });
        expect(w.retryAfter).toMatch(/^[1-9]\d*$/);
      }
      expect(log.lines.filter((l) => l.event === 'store_timeout' && l.timeout === timeout)).toHaveLength(4);
      // reads take no row lock: served meanwhile, on the connections the cancelled writes gave back
      expect((await http(api, 'GET', `${P}/vpc/security-groups/sg-web`)).status).toBe(200);

      await side.query('ROLLBACK');
      expect((await addRule(api, 80)).status).toBe(201);
      const rules = await http(api, 'GET', `${P}/vpc/security-group-rules?security_group_id=sg-web`);
      // nothing of the cancelled writes was kept (the group's default rules have no ports)
      expect((rules.body.security_group_rules as { multiport: string | null }[]).map((r) => r.multiport).filter((m) => m !== null)).toEqual(['80']);
    },
    60_000,
  );

  // it stops and restarts the file's cluster
  it('PostgreSQL restarted while writers stream through both replicas: never a 500, every 201 is stored, the replicas reconnect by themselves and the agent gets the newest revision', async () => {
    const { a, b, agent, first } = await agentOnB([], { quotas: { rules_per_group: 5000 } });
    const bases = [urlOf(a), urlOf(b)];
    const acked: string[] = [];
    const statuses = new Map<number, number>();
    const count = (code: number) => statuses.get(code) ?? 0;
    let stop = false;
    // four writers, two per replica; a 503 is retried after a pause, as a client honouring Retry-After would (shortened)
    const writers = [0, 1, 2, 3].map(async (w) => {
      for (let i = 0; !stop && i < 3000; i++) {
        const id = `rs-${w}-${i}`;
        const r = await addRule(bases[w % 2]!, 10_000 + w * 3000 + i, id);
        statuses.set(r.status, count(r.status) + 1);
        if (r.status === 201) acked.push(id);
        else await new Promise((done) => setTimeout(done, 20));
      }
    });
    try {
      await waitFor('writes acknowledged before the restart', () => acked.length >= 20, 2000);
      await cluster().stop();
      const refused = count(503);
      await waitFor('writes refused with 503 while the database is away', () => count(503) >= refused + 8, 2000);
      await cluster().start();
      const before = acked.length;
      await waitFor('writes acknowledged again through both replicas, without a restart of either', () => acked.length >= before + 20, 3000);
    } finally {
      stop = true;
      await Promise.all(writers);
    }
    expect([...statuses.keys()].filter((code) => code !== 201 && code !== 503)).toEqual([]);
    expect(acked.length).toBeLessThan(2000); // one page lists them all
    // every acknowledged write is stored, read through each replica
    for (const base of bases) {
      const listed = await http(base, 'GET', `${P}/vpc/security-group-rules?security_group_id=sg-web&limit=2000`);
      const ids = new Set((listed.body.security_group_rules as { id: string }[]).map((r) => r.id));
      expect(acked.filter((id) => !ids.has(id))).toEqual([]);
    }
    // the agent on B gets the newest document (written through A or B; the feeds resynced after the restart), revisions only growing
    const desired = (await status(bases[0]!)).desired_revision;
    const pushed = await agent.until(desired);
    expect(pushed[0]).toBe(first);
    pushed.forEach((r, i) => i > 0 && expect(r).toBeGreaterThan(pushed[i - 1]!));
    for (const base of bases) await waitFor(`the newest ack read through ${base}`, async () => (await status(base))?.applied_revision === desired, 1500);
  }, 120_000);

  // last: it stops and restarts the file's cluster
  it('PostgreSQL stopped: /readyz 503, API 503 SYS.0503, agents keep their policy; restarted: the replicas recover by themselves, no stale push', async () => {
    const { a, b, agent, first } = await agentOnB();

    await cluster().stop();
    for (const base of [urlOf(a), urlOf(b)]) {
      const ready = await http(base, 'GET', '/readyz');
      expect(ready.status).toBe(503);
      expect(ready.body).toMatchObject({ status: 'not_ready', error_code: 'SYS.0503' });
      const write = await addRule(base, 22);
      expect(write.status).toBe(503);
      expect(write.body).toMatchObject({ error_code: 'SYS.0503' });
    }
    // fail-static: the agent stays connected, with what it has
    expect(agent.ws.readyState).toBe(agent.ws.OPEN);
    expect(b.hub.isConnected('proj-a', 'ecs-1')).toBe(true);

    await cluster().start();
    for (const base of [urlOf(a), urlOf(b)]) await waitFor(`${base} ready again`, async () => (await http(base, 'GET', '/readyz')).status === 200, 1000);
    // a change through A reaches the agent on B once both feeds are back (their resync catches up what a lost notification missed)
    await waitFor('a write through A after the restart', async () => (await addRule(urlOf(a), 443)).status === 201, 1000);
    const next = (await status(urlOf(a))).desired_revision;
    const pushed = await agent.until(next);
    expect(pushed[0]).toBe(first);
    expect(pushed.at(-1)).toBe(next);
    // never a revision at or below one the agent had
    pushed.forEach((r, i) => i > 0 && expect(r).toBeGreaterThan(pushed[i - 1]!));
    expect(agent.ws.readyState).toBe(agent.ws.OPEN);
  }, 120_000);
});
