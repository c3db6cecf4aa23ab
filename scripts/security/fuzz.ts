/**
 * The long API fuzz run (issue 12; results in scripts/security/README.md).
 * Starts its own controller on 127.0.0.1 (port 0, SQLite in a temporary
 * state directory, removed at the end) and sends `--requests` requests drawn
 * from the served OpenAPI document by the schema-driven generator
 * (test/helpers/schema-fuzz.ts, the same one test/security/api-fuzz.test.ts
 * runs with a small count): every operation and every other method on every
 * path, bodies built from the request schemas and mutated (wrong types,
 * boundary numbers, huge strings, unicode, nulls, extra and missing fields,
 * deep nesting, text that is not JSON), hostile path and query parameters.
 *
 * Prints the requests per operation with their statuses, per mutation, and
 * the status histogram; exits 1 on any 5xx, any answer not in the API's
 * error shape, or a controller that stops answering (the first problems are
 * printed with the request that caused them, replayable with the same seed).
 * Bounded: at most 200000 requests, `--concurrency` (at most 16) in flight.
 *
 *   npx tsx scripts/security/fuzz.ts [--requests 5000] [--seed 1] [--concurrency 4]
 */
import { Agent, request } from 'node:http';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { parseControllerConfig } from '../../src/controller/config.js';
import { createController } from '../../src/controller/controller.js';
import { silentLogger } from '../../src/lib/logger.js';
import { FuzzStats, MUTATIONS, fuzzOperations, learnIds, newContext, nextRequest, seedRequests, type FuzzAnswer, type FuzzRequest } from '../../test/helpers/schema-fuzz.js';

const { values: args } = parseArgs({
  options: {
    requests: { type: 'string', default: '5000' },
    seed: { type: 'string', default: '1' },
    concurrency: { type: 'string', default: '4' },
  },
});
const REQUESTS = Math.max(1, Math.min(200_000, Number(args.requests)));
const SEED = Number(args.seed);
const CONCURRENCY = Math.max(1, Math.min(16, Number(args.concurrency)));
const ADMIN = 'admin-token-0123456789';
const PER_REQUEST_TIMEOUT_MS = 10_000;

function send(port: number, agent: Agent, req: FuzzRequest): Promise<FuzzAnswer> {
  return new Promise((resolve) => {
    const body = req.body === undefined ? undefined : Buffer.from(req.body);
    const headers = { ...req.headers, ...(body ? { 'content-length': String(body.length) } : {}) };
    const r = request({ host: '127.0.0.1', port, method: req.method, path: req.url, headers, agent, timeout: PER_REQUEST_TIMEOUT_MS }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (d: Buffer) => chunks.push(d));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, contentType: String(res.headers['content-type'] ?? ''), body: Buffer.concat(chunks).toString('utf8') }));
      res.on('error', (e) => resolve({ status: 0, contentType: '', body: `response error: ${e.message}` }));
    });
    r.on('timeout', () => r.destroy(new Error(`no answer within ${PER_REQUEST_TIMEOUT_MS} ms`)));
    r.on('error', (e) => resolve({ status: 0, contentType: '', body: `request error: ${e.message}` }));
    r.end(body);
  });
}

const pad = (s: string | number, n: number) => String(s).padEnd(n);

async function main(): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'sg-fuzz-'));
  const config = parseControllerConfig({
    listen: { host: '127.0.0.1', port: 0 },
    data_dir: dir,
    api: { tokens: [{ name: 'admin', token: ADMIN }] },
    metrics: { process_metrics: false },
  });
  const controller = createController({ config, logger: silentLogger() });
  const { port } = await controller.start();
  const agent = new Agent({ keepAlive: true, maxSockets: CONCURRENCY });
  const started = performance.now();
  let exitCode = 0;
  try {
    const headers = { 'x-auth-token': ADMIN };
    for (const req of seedRequests('proj-a', headers)) {
      const a = await send(port, agent, req);
      if (a.status !== 201) throw new Error(`seeding ${req.url} answered ${a.status}: ${a.body}`);
    }
    const doc = JSON.parse((await send(port, agent, { op: 'doc', mutation: 'valid', method: 'GET', url: '/openapi.json', headers: {} })).body);
    const ops = fuzzOperations(doc);
    const ctx = newContext(SEED, 'proj-a', headers);
    const stats = new FuzzStats();
    let issued = 0;
    // requests are drawn in order from one generator, so a seed gives the same requests whatever the concurrency
    const worker = async () => {
      while (issued < REQUESTS) {
        issued++;
        const req = nextRequest(ops, ctx);
        const answer = await send(port, agent, req);
        learnIds(ctx, answer);
        stats.add(req, answer);
      }
    };
    await Promise.all(Array.from({ length: CONCURRENCY }, worker));
    const health = await send(port, agent, { op: 'health', mutation: 'valid', method: 'GET', url: '/v3/proj-a/vpc/security-groups', headers });
    const seconds = (performance.now() - started) / 1000;

    console.log(`fuzz: ${stats.total} requests, seed ${SEED}, concurrency ${CONCURRENCY}, ${seconds.toFixed(1)} s (${(stats.total / seconds).toFixed(0)} req/s), ${ops.length} operations (${ops.filter((o) => o.declared).length} declared)`);
    console.log('\nper operation (requests: status x count)');
    for (const [op, st] of [...stats.byOp].sort((a, b) => a[0].localeCompare(b[0]))) {
      const n = [...st.values()].reduce((x, y) => x + y, 0);
      console.log(`  ${pad(op, 78)} ${pad(n, 5)} ${[...st].sort((a, b) => a[0] - b[0]).map(([s, c]) => `${s}x${c}`).join(' ')}`);
    }
    console.log('\nper mutation');
    console.log('  ' + MUTATIONS.map((m) => `${m} ${stats.byMutation.get(m) ?? 0}`).join(', '));
    console.log('\nstatus histogram');
    for (const [s, c] of [...stats.statuses].sort((a, b) => a[0] - b[0])) console.log(`  ${s}  ${c}`);
    if (health.status !== 200) {
      console.log(`\nthe controller no longer answers a plain list: ${health.status} ${health.body.slice(0, 200)}`);
      exitCode = 1;
    }
    console.log(`\nproblems: ${stats.problems.length} (5xx: ${[...stats.statuses].filter(([s]) => s >= 500).reduce((n, [, c]) => n + c, 0)})`);
    for (const p of stats.problems.slice(0, 20)) {
      console.log(`  ${p.problem}\n    ${p.req.method} ${p.req.url.slice(0, 300)} [${p.req.mutation}]\n    body: ${(p.req.body ?? '').slice(0, 300)}\n    answer: ${p.answer.body.slice(0, 300)}`);
    }
    if (stats.problems.length) exitCode = 1;
  } finally {
    agent.destroy();
    await controller.stop();
    await rm(dir, { recursive: true, force: true });
  }
  process.exitCode = exitCode;
}

main().catch((e: unknown) => {
  console.error(e);
  process.exitCode = 2;
});
