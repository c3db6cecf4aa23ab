/**
 * The HTTP API as a fastify app: `buildApi(opts)` returns it unstarted, so
 * tests use `inject` and only the controller listens. Auth (admin tokens
 * from the configuration: `X-Auth-Token` or `Authorization: Bearer`),
 * Huawei-shaped errors, request ids, latency metrics, /healthz, /metrics and
 * /openapi.json live here; the v3 resources are in `routes.ts`.
 */
import Fastify, { LogController, type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import type { z } from 'zod';
import type { Clock } from '../../lib/clock.js';
import type { Logger } from '../../lib/logger.js';
import { ValidationError, isSecgroupError } from '../../lib/errors.js';
import { ID_PATTERN, zodIssues } from '../../policy/schema.js';
import { registerAuditHooks, type AuditRecorder } from '../audit.js';
import { ApiError, type ErrorBody } from '../errors.js';
import type { ControllerMetrics } from '../metrics.js';
import type { ControllerService } from '../service.js';
import type { Store } from '../store/store.js';
import { digestsEqual, hashToken, tokenFromHeaders, type Random } from '../tokens.js';
import { buildOpenApi } from './openapi.js';
import { registerRoutes } from './routes.js';

/** An admin token as configured, with its hash. */
export interface ApiToken {
  name: string;
  sha256: string;
  /** project ids, or '*' for all */
  projects: readonly string[];
}

/** What the API needs to know about agent connections (the hub). */
export interface AgentPresence {
  isConnected(projectId: string, instanceId: string): boolean;
  lastSeen(projectId: string, instanceId: string): string | null;
  readonly connectedCount: number;
  /** close the instance's agent connection (token rotated, instance deleted) */
  disconnect(projectId: string, instanceId: string, why: 'revoked' | 'deleted'): void;
}

export interface ApiOptions {
  service: ControllerService;
  store: Store;
  presence: AgentPresence;
  tokens: readonly ApiToken[];
  clock: Clock;
  logger: Logger;
  metrics: ControllerMetrics;
  random: Random;
  maxBodyBytes?: number;
  https?: { cert: Buffer | string; key: Buffer | string } | null;
  /** records every write (src/controller/audit.ts); none when absent */
  audit?: AuditRecorder;
}

/** Per-request context handed to resource handlers. */
export interface RouteContext {
  project: string;
  params: Record<string, string>;
  query: unknown;
  body: unknown;
  request: FastifyRequest;
  reply: FastifyReply;
}

/**
 * Registers a project-scoped route under `/v3/:project_id`. The handler returns
 * an object (sent with `request_id` first; `{ dry_run: true }` becomes the
 * 202 dry-run answer), a string (sent as JSON text, unchanged) or null (204).
 */
export type Route = (
  method: 'GET' | 'POST' | 'PUT' | 'DELETE',
  url: string,
  status: number,
  handler: (c: RouteContext) => Promise<Record<string, unknown> | string | null>,
) => void;

/** Parses a request part with a zod schema; a failure becomes a 400 naming every field. */
export function parseWith<S extends z.ZodType>(schema: S, input: unknown, what = 'request body'): z.output<S> {
  if (input === undefined && what === 'request body') throw ApiError.invalid([{ path: '', message: 'the request body is missing (expected a JSON object)' }]);
  const r = schema.safeParse(input);
  if (!r.success) throw ApiError.invalid(zodIssues(r.error, input));
  return r.data;
}

/** A path id: anything that cannot be an id cannot exist, so it is a 404. */
export function pathId(params: Record<string, string>, name: string, what: string): string {
  const id = params[name] ?? '';
  if (!ID_PATTERN.test(id)) throw ApiError.notFound(what, id);
  return id;
}

export function buildApi(o: ApiOptions): FastifyInstance {
  const app = Fastify({
    loggerInstance: o.logger.child({ component: 'api' }),
    logController: new LogController({ disableRequestLogging: true }),
    genReqId: () => o.random.requestId(),
    requestIdHeader: false,
    bodyLimit: o.maxBodyBytes ?? 1024 * 1024,
    ...(o.https ? { https: { cert: o.https.cert, key: o.https.key } } : {}),
  }) as unknown as FastifyInstance;

  if (o.audit) registerAuditHooks(app, o.audit, o.tokens);

  const started = new WeakMap<FastifyRequest, number>();
  app.addHook('onRequest', async (req, reply) => {
    started.set(req, o.clock.monotonic());
    void reply.header('X-Request-Id', req.id);
  });
  app.addHook('onResponse', async (req, reply) => {
    const t0 = started.get(req) ?? o.clock.monotonic();
    const seconds = (o.clock.monotonic() - t0) / 1000;
    const route = req.routeOptions.url ?? 'unmatched';
    o.metrics.apiLatency.observe({ method: req.method, route, status_code: String(reply.statusCode) }, seconds);
    req.log.info({ event: 'api', request_id: req.id, method: req.method, route, status: reply.statusCode, durationMs: Math.round(seconds * 1000) }, 'api request');
  });

  app.setErrorHandler((err: unknown, req, reply) => {
    let e: ApiError;
    const status = (err as { statusCode?: number }).statusCode;
    if (err instanceof ApiError) e = err;
    else if (err instanceof ValidationError) e = ApiError.invalid(err.issues);
    else if (isSecgroupError(err, 'CONFLICT')) e = new ApiError('inUse', err.message);
    else if (status === 413) e = new ApiError('tooLarge', `the request body is larger than ${o.maxBodyBytes ?? 1024 * 1024} bytes`);
    else if (typeof status === 'number' && status >= 400 && status < 500) e = new ApiError('invalid', (err as Error).message);
    else {
      req.log.error({ event: 'api_error', request_id: req.id, err }, 'internal error');
      e = new ApiError('internal', `internal error (request_id ${req.id}); see the controller log`);
    }
    const body: ErrorBody = { request_id: req.id, error_code: e.apiCode, error_msg: e.message };
    void reply.status(e.status).send(body);
  });
  app.setNotFoundHandler((req, reply) => {
    const body: ErrorBody = { request_id: req.id, error_code: 'SG.0004', error_msg: `no such API: ${req.method} ${req.url.split('?')[0]}` };
    void reply.status(404).send(body);
  });

  const authorize = (req: FastifyRequest, project: string): void => {
    const token = tokenFromHeaders(req.headers);
    if (!token) throw new ApiError('unauthorized', 'missing token: send "X-Auth-Token: <token>" or "Authorization: Bearer <token>"');
    const h = hashToken(token);
    let match: ApiToken | null = null;
    for (const t of o.tokens) if (digestsEqual(t.sha256, h)) match = t;
    if (!match) throw new ApiError('unauthorized', 'invalid token');
    if (!ID_PATTERN.test(project)) {
      throw ApiError.invalid([{ path: 'project_id', message: 'must be 1-64 characters of letters, digits, ".", "_", ":" or "-"' }]);
    }
    if (!match.projects.includes('*') && !match.projects.includes(project)) {
      throw new ApiError('forbidden', `token ${JSON.stringify(match.name)} may not access project ${JSON.stringify(project)}`);
    }
  };

  /** Registers a project-scoped route; the handler's object result gets `request_id` first. */
  const route: Route = (method, url, status, handler) => {
    app.route({
      method,
      url: `/v3/:project_id${url}`,
      handler: async (request, reply) => {
        const params = request.params as Record<string, string>;
        const project = params.project_id ?? '';
        authorize(request, project);
        const out = await handler({ project, params, query: request.query, body: request.body, request, reply });
        if (out === null) return reply.status(204).send();
        if (typeof out === 'string') return reply.status(status).type('application/json; charset=utf-8').send(out);
        if (out.dry_run === true) {
          return reply.status(202).send({ request_id: request.id, error_code: 'DryRunOperation', error_msg: 'the request is valid; nothing was changed (dry_run)' });
        }
        return reply.status(status).send({ request_id: request.id, ...out });
      },
    });
  };

  registerRoutes(route, o);

  let openapi: string | null = null;
  app.get('/openapi.json', async (_req, reply) => {
    openapi ??= JSON.stringify(buildOpenApi());
    return reply.type('application/json; charset=utf-8').send(openapi);
  });
  app.get('/healthz', async () => ({ status: 'ok', agents_connected: o.presence.connectedCount }));
  app.get('/metrics', async (_req, reply) => {
    const text = await o.metrics.registry.metrics();
    return reply.type(o.metrics.registry.contentType).send(text);
  });
  return app;
}

