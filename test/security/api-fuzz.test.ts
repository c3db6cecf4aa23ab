/**
 * Issue 12, point 1 (first step): every operation of the served OpenAPI document,
 * fed seeded random bodies and odd path parameters, never answers 5xx and always JSON.
 * Seed printed by fast-check on failure (fc.assert reports seed and path).
 */
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { ADMIN, makeApi } from '../unit/controller-helpers.js';
import { FuzzStats, fuzzOperations, isEventStream, learnIds, newContext, nextRequest, seedRequests, type FuzzAnswer, type FuzzRequest } from '../helpers/schema-fuzz.js';

const hostile = fc.oneof(
  fc.constant(null),
  fc.integer(),
  fc.double(),
  fc.string(),
  fc.string({ unit: 'grapheme', maxLength: 50 }),
  fc.constant('x'.repeat(100_000)),
  fc.constant('"; flush ruleset\n#}'),
  fc.anything({ maxDepth: 4 }),
);

describe('api fuzz', () => {
  it('no operation answers 5xx or a non-JSON body', async () => {
    const { app } = makeApi();
    const doc = (await app.inject({ method: 'GET', url: '/openapi.json' })).json();
    const ops: { method: string; path: string }[] = [];
    for (const [path, item] of Object.entries(doc.paths as Record<string, Record<string, unknown>>))
      for (const method of Object.keys(item))
        if (['get', 'post', 'put', 'delete', 'patch'].includes(method) && !isEventStream(item[method] as Parameters<typeof isEventStream>[0])) ops.push({ method, path });
    expect(ops.length).toBeGreaterThan(5);
    for (const op of ops) {
      await fc.assert(
        fc.asyncProperty(fc.string({ maxLength: 40 }), hostile, async (param, body) => {
          const url = op.path.replace(/\{[^}]+\}/g, () => encodeURIComponent(param) || 'x');
          const r = await app.inject({
            method: op.method.toUpperCase() as 'GET',
            url,
            headers: { 'x-auth-token': ADMIN, 'content-type': 'application/json' },
            payload: op.method === 'get' || op.method === 'delete' ? undefined : JSON.stringify({ x: body }),
          });
          expect(r.statusCode, `${op.method} ${url}`).toBeLessThan(500);
          // /metrics is Prometheus text by design; everything else is JSON.
          const ct = String(r.headers['content-type'] ?? '');
          if (r.body && !ct.startsWith('text/plain')) expect(() => JSON.parse(r.body)).not.toThrow();
          if (r.statusCode >= 400) expect(Object.keys(r.json()).sort(), `${op.method} ${url}`).toEqual(['error_code', 'error_msg', 'request_id']);
        }),
        { numRuns: 20, seed: 12 },
      );
    }
    // State still consistent: the OpenAPI document and a list still answer.
    expect((await app.inject({ method: 'GET', url: '/openapi.json' })).statusCode).toBe(200);
  });

  it('schema-driven requests (scripts/security/fuzz.ts, seeded, 600 requests): no 5xx, every error in the API shape', async () => {
    const { app } = makeApi();
    const send = async (req: FuzzRequest): Promise<FuzzAnswer> => {
      const r = await app.inject({ method: req.method as 'GET', url: req.url, headers: req.headers, ...(req.body === undefined ? {} : { payload: req.body }) });
      return { status: r.statusCode, contentType: String(r.headers['content-type'] ?? ''), body: r.body };
    };
    const headers = { 'x-auth-token': ADMIN };
    for (const req of seedRequests('proj-a', headers)) expect((await send(req)).status, req.url).toBe(201);
    const ops = fuzzOperations((await app.inject({ method: 'GET', url: '/openapi.json' })).json());
    const ctx = newContext(12, 'proj-a', headers);
    const stats = new FuzzStats();
    for (let i = 0; i < 600; i++) {
      const req = nextRequest(ops, ctx);
      const answer = await send(req);
      learnIds(ctx, answer);
      stats.add(req, answer);
    }
    expect(stats.problems.map((p) => `${p.problem}: ${p.req.method} ${p.req.url} (${p.req.mutation}) ${p.req.body?.slice(0, 200) ?? ''}`)).toEqual([]);
    // the generator reaches the operations and gets past validation: some writes succeed, most mutations are refused
    expect(stats.byOp.size).toBeGreaterThan(60);
    expect([...stats.statuses.keys()].filter((s) => s >= 200 && s < 300).length).toBeGreaterThan(1);
    expect(stats.statuses.get(400) ?? 0).toBeGreaterThan(100);
    expect(stats.statuses.get(201) ?? 0).toBeGreaterThan(0);
  });
});
