/**
 * The HTTP API as a fastify app: `buildApi(opts)` returns it unstarted, so
 * tests use `inject` and only the controller listens. Auth (admin tokens
 * from the configuration: `X-Auth-Token` or `Authorization: Bearer`; or
 * AK/SK signatures as the Huawei SDKs send them, aksk.ts), Huawei-shaped
 * errors, request ids, latency metrics, /healthz, /readyz (the store
 * answers), /metrics and /openapi.json live here; the v3 resources are in `routes.ts` (what routes
 * get from the app, `Route` and `ApiOptions`, is in `route.ts`).
 *
 * Nothing unauthenticated costs more than reading headers
 * (docs/security-http.md): routing, auth, the failed-auth rate limit and
 * 404/405 are decided in `onRequest`, before fastify reads or parses a body,
 * and an answer given with the body unread closes the connection. Every
 * answer, the framework's and Node's parser errors included, has the error
 * shape `{"request_id","error_code","error_msg"}`. The Node server gets the
 * timeouts and the connection limits of the `http` configuration (edge.ts).
 *
 * AK/SK: the access key, the date window and the project are checked in
 * `onRequest` like a token. The signature covers the body, so it is
 * verified in a `preParsing` hook: the hook reads the raw body (bounded by
 * the body limit: a larger Content-Length is refused unread, a longer
 * stream is cut at the limit), hashes it, checks the signature and only
 * then hands the same bytes to fastify's JSON parser. A preParsing hook
 * rather than a hashing content-type parser because it runs for every
 * request, with or without a body or a Content-Type, so one path verifies
 * them all and nothing is parsed or validated unauthenticated. A failed
 * signature takes from the failed-auth budget and is audited like an
 * unknown token (actor `anonymous`); a verified one has the key's `name`
 * as its actor. A GET or DELETE that announces no body has its
 * Content-Type dropped before parsing (the SDKs send `application/json`
 * on bodyless DELETEs).
 */
import { Readable } from 'node:stream';
import Fastify, { LogController, type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import { ValidationError, isSecgroupError } from '../../lib/errors.js';
import { ID_PATTERN } from '../../policy/schema.js';
import { registerAuditHooks } from '../audit.js';
import { API_ERROR_KINDS, ApiError, DRY_RUN_CODE, STORE_RETRY_AFTER_S, type ApiErrorKind, type ErrorBody } from '../errors.js';
import { AuthFailureLimiter, ConnectionLimiter, HTTP_LIMIT_DEFAULTS, authRefusal, sourceKey, type HttpLimits } from '../limits.js';
import { findToken, tokenFromHeaders } from '../tokens.js';
import { clientErrorHandler, guardConnections, serverOptions } from './edge.js';
import { checkSignedHeaders, isSignedRequest, verifyPayload, type PendingSignature } from './aksk.js';
import { buildOpenApi } from './openapi.js';
import { registerConsoleRoutes } from './console-route.js';
import { registerEventsRoute } from './events-route.js';
import { ProjectEvents } from '../events.js';
import type { ApiOptions, Route } from './route.js';
import { registerRoutes } from './routes.js';

export type { AgentPresence, ApiOptions, ApiToken, Route, RouteContext } from './route.js';

const PROJECT_PREFIX = '/v3/:project_id/';

/** Framework errors by HTTP status, as API error kinds (any other 4xx is `invalid`). */
const KIND_BY_STATUS: Readonly<Record<number, ApiErrorKind>> = {
  404: 'noSuchApi',
  405: 'methodNotAllowed',
  408: 'timeout',
  413: 'tooLarge',
  414: 'uriTooLong',
  415: 'unsupportedMediaType',
  429: 'tooManyRequests',
  431: 'headersTooLarge',
};

/** The request has a body that nobody has read (yet). */
function bodyUnread(req: FastifyRequest): boolean {
  const h = req.headers;
  const announced = h['transfer-encoding'] !== undefined || (h['content-length'] !== undefined && h['content-length'] !== '0');
  return announced && !req.raw.complete;
}

export function buildApi(o: ApiOptions): FastifyInstance {
  const limits: HttpLimits = { ...HTTP_LIMIT_DEFAULTS, ...o.http };
  const authLimiter = o.authLimiter ?? new AuthFailureLimiter(o.clock, { perMinute: limits.auth_failures_per_minute, burst: limits.auth_failure_burst });
  const log = o.logger.child({ component: 'api' });
  const nodeOptions = serverOptions(limits);
  const app = Fastify({
    loggerInstance: log,
    logController: new LogController({ disableRequestLogging: true }),
    genReqId: () => o.random.requestId(),
    requestIdHeader: false,
    bodyLimit: o.maxBodyBytes ?? 1024 * 1024,
    requestTimeout: limits.request_timeout_ms,
    keepAliveTimeout: limits.keep_alive_timeout_ms,
    // a TLS handshake gets the same bound as the request headers (Node's default is 120 s)
    ...(o.https ? { https: { cert: o.https.cert, key: o.https.key, handshakeTimeout: limits.headers_timeout_ms, ...nodeOptions } } : { http: nodeOptions }),
    clientErrorHandler: clientErrorHandler({ clock: o.clock, logger: o.logger, metrics: o.metrics, random: o.random, limits }),
    frameworkErrors: (err, req, reply) => {
      const code = (err as { code?: string }).code;
      const path = req.url.split('?')[0] ?? '/';
      const e =
        code === 'FST_ERR_MAX_PARAM_LENGTH'
          ? new ApiError('uriTooLong', `a path parameter in ${JSON.stringify(path.slice(0, 200))} is longer than any id (64 characters)`)
          : code === 'FST_ERR_BAD_URL'
            ? new ApiError('invalid', `the URL ${JSON.stringify(path.slice(0, 200))} is malformed (bad percent-encoding)`)
            : new ApiError('internal', `internal error (request_id ${req.id}); see the controller log`);
      void sendError(req, reply, e);
    },
  }) as unknown as FastifyInstance;
  guardConnections(app.server, new ConnectionLimiter({ perSource: limits.max_connections_per_source, total: limits.max_connections }), {
    clock: o.clock,
    logger: o.logger,
    metrics: o.metrics,
  });

  function sendError(req: FastifyRequest, reply: FastifyReply, e: ApiError): FastifyReply {
    // the body was not read: close instead of draining it for a keep-alive
    if (bodyUnread(req)) void reply.header('connection', 'close');
    const body: ErrorBody = { request_id: req.id, error_code: e.apiCode, error_msg: e.message };
    return reply.status(e.status).header('x-request-id', req.id).send(body);
  }

  /** Route patterns with their methods, to tell 405 from 404. */
  const routeTable: { pattern: string; re: RegExp; methods: Set<string> }[] = [];
  const remember = (method: string, url: string): void => {
    const source = url.split('/').map((part) => (part.startsWith(':') ? '[^/]+' : part.replace(/[.*+?^${}()|[\]\\]/g, '\\$&'))).join('/');
    let entry = routeTable.find((r) => r.pattern === source);
    if (!entry) routeTable.push((entry = { pattern: source, re: new RegExp(`^${source}$`), methods: new Set() }));
    entry.methods.add(method);
    if (method === 'GET') entry.methods.add('HEAD');
  };
  const noRoute = (req: FastifyRequest, reply: FastifyReply): ApiError => {
    const path = req.url.split('?')[0] ?? '/';
    const methods = new Set<string>();
    for (const r of routeTable) if (r.re.test(path)) for (const m of r.methods) methods.add(m);
    if (methods.size === 0) {
      // Huawei VPC v3 operations on ports (AddSecurityGroups, RemoveSecurityGroups, port tags) are outside this surface
      const outside = /^\/v3\/[^/]+\/ports(\/|$)/.test(path)
        ? ': ports are outside secgroup\'s surface (AddSecurityGroups, RemoveSecurityGroups and port tags are not supported); associate security groups with an instance through /v3/{project_id}/instances'
        : '';
      return new ApiError('noSuchApi', `no such API: ${req.method} ${path}${outside}`);
    }
    const allow = [...methods].sort().join(', ');
    void reply.header('allow', allow);
    return new ApiError('methodNotAllowed', `${req.method} is not allowed on ${path} (allowed: ${allow})`);
  };

  /** AK/SK requests between onRequest and the body check */
  const pendingSignatures = new WeakMap<FastifyRequest, PendingSignature>();
  /** who authentication found the request to be (token name, or the verified access key's name): the audit actor */
  const actors = new WeakMap<FastifyRequest, string>();
  const bodyLimit = o.maxBodyBytes ?? 1024 * 1024;

  // requests refused before authentication ran (unknown route, rate limit) name their token's owner too
  const actorOf = (req: FastifyRequest): string => {
    const known = actors.get(req);
    if (known !== undefined) return known;
    const token = isSignedRequest(req.headers) ? null : tokenFromHeaders(req.headers);
    return (token && findToken(token, o.tokens)?.name) || 'anonymous';
  };
  if (o.audit) registerAuditHooks(app, o.audit, actorOf);

  const started = new WeakMap<FastifyRequest, number>();
  app.addHook('onRequest', async (req, reply) => {
    started.set(req, o.clock.monotonic());
    void reply.header('X-Request-Id', req.id);
    // decided before any body is read
    if (req.is404) throw noRoute(req, reply);
    if (req.routeOptions.url?.startsWith(PROJECT_PREFIX)) authorize(req, reply, (req.params as Record<string, string>).project_id ?? '');
  });
  app.addHook('preParsing', async (req, _reply, payload) => {
    const pending = pendingSignatures.get(req);
    let out = payload;
    if (pending) {
      pendingSignatures.delete(req);
      const body = await readBounded(payload, req);
      try {
        actors.set(req, verifyPayload(pending, body).name);
      } catch (e) {
        const source = sourceKey(req.socket.remoteAddress);
        authLimiter.failed(source);
        log.warn({ event: 'aksk_rejected', request_id: req.id, source, access_key_name: pending.key.name, reason: (e as Error).message }, 'AK/SK signature rejected');
        throw e;
      }
      out = Readable.from(body.length ? [body] : []);
    }
    const h = req.raw.headers;
    const noBody = h['transfer-encoding'] === undefined && (h['content-length'] === undefined || h['content-length'] === '0');
    if ((req.method === 'GET' || req.method === 'DELETE') && noBody) delete h['content-type'];
    return out;
  });

  /** The whole body, refused (413) past the body limit. */
  async function readBounded(payload: NodeJS.ReadableStream, req: FastifyRequest): Promise<Buffer> {
    const tooLarge = () => new ApiError('tooLarge', `the request body is larger than ${bodyLimit} bytes`);
    const announced = Number(req.headers['content-length'] ?? 0);
    if (announced > bodyLimit) throw tooLarge();
    const chunks: Buffer[] = [];
    let size = 0;
    for await (const chunk of payload) {
      const b = typeof chunk === 'string' ? Buffer.from(chunk) : (chunk as Buffer);
      size += b.length;
      if (size > bodyLimit) throw tooLarge();
      chunks.push(b);
    }
    return Buffer.concat(chunks);
  }

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
    else if (isSecgroupError(err, 'STORE_UNAVAILABLE')) {
      // the database is away: the client may retry (here or on another replica); nothing was half-written
      req.log.warn({ event: 'store_unavailable', request_id: req.id, err }, 'request failed: the controller database is unavailable');
      void reply.header('retry-after', String(STORE_RETRY_AFTER_S));
      e = new ApiError('unavailable', `the controller database is unavailable, nothing was changed; retry later (${err.message})`);
    }
    else if (status === 413) e = new ApiError('tooLarge', `the request body is larger than ${o.maxBodyBytes ?? 1024 * 1024} bytes`);
    else if (typeof status === 'number' && status >= 400 && status < 500) e = new ApiError(KIND_BY_STATUS[status] ?? 'invalid', (err as Error).message);
    else {
      req.log.error({ event: 'api_error', request_id: req.id, err }, 'internal error');
      e = new ApiError('internal', `internal error (request_id ${req.id}); see the controller log`);
    }
    void sendError(req, reply, e);
  });
  app.setNotFoundHandler((req, reply) => {
    void sendError(req, reply, noRoute(req, reply));
  });

  /**
   * Token, then project id, then scope. A source over its failed-auth budget
   * gets 429 before its token is looked at; a failure (no token, unknown
   * token) takes from the budget, a wrong project does not.
   */
  const authorize = (req: FastifyRequest, reply: FastifyReply, project: string): void => {
    const source = sourceKey(req.socket.remoteAddress);
    const refused = authRefusal(authLimiter, source, 'api', { metrics: o.metrics, log, requestId: req.id });
    if (refused) {
      void reply.header('retry-after', String(refused.retryAfterSeconds));
      throw new ApiError('tooManyRequests', refused.message);
    }
    if (isSignedRequest(req.headers)) {
      if (!ID_PATTERN.test(project)) {
        throw ApiError.invalid([{ path: 'project_id', message: 'must be 1-64 characters of letters, digits, ".", "_", ":" or "-"' }]);
      }
      try {
        pendingSignatures.set(req, checkSignedHeaders({ method: req.method, url: req.raw.url ?? req.url, headers: req.headers, project }, o.accessKeys ?? [], o.clock.now()));
      } catch (e) {
        if (e instanceof ApiError && e.kind === 'signatureInvalid') {
          authLimiter.failed(source);
          log.warn({ event: 'aksk_rejected', request_id: req.id, source, reason: e.message }, 'AK/SK signature rejected');
        }
        throw e;
      }
      return;
    }
    const token = tokenFromHeaders(req.headers);
    if (!token) {
      authLimiter.failed(source);
      throw new ApiError('unauthorized', 'missing token: send "X-Auth-Token: <token>" or "Authorization: Bearer <token>"');
    }
    const match = findToken(token, o.tokens);
    if (!match) {
      authLimiter.failed(source);
      throw new ApiError('unauthorized', 'invalid token');
    }
    actors.set(req, match.name);
    if (!ID_PATTERN.test(project)) {
      throw ApiError.invalid([{ path: 'project_id', message: 'must be 1-64 characters of letters, digits, ".", "_", ":" or "-"' }]);
    }
    if (!match.projects.includes('*') && !match.projects.includes(project)) {
      throw new ApiError('forbidden', `token ${JSON.stringify(match.name)} may not access project ${JSON.stringify(project)}`);
    }
  };

  /** Registers a project-scoped route; the handler's object result gets `request_id` first. */
  const route: Route = (method, url, status, handler) => {
    remember(method, `/v3/:project_id${url}`);
    app.route({
      method,
      url: `/v3/:project_id${url}`,
      handler: async (request, reply) => {
        const params = request.params as Record<string, string>;
        // authorized in onRequest, before the body was read
        const project = params.project_id ?? '';
        const out = await handler({ project, params, query: request.query, body: request.body, request, reply });
        if (out === null) return reply.status(204).send();
        if (typeof out === 'string') return reply.status(status).type('application/json; charset=utf-8').send(out);
        if (out.dry_run === true) {
          // what a dry run found out (a change preview's `impact`) follows the Huawei fields
          const { dry_run: _dryRun, ...found } = out;
          return reply.status(202).send({ request_id: request.id, error_code: DRY_RUN_CODE, error_msg: 'the request is valid; nothing was changed (dry_run)', ...found });
        }
        return reply.status(status).send({ request_id: request.id, ...out });
      },
    });
  };

  registerRoutes(route, o);
  remember('GET', '/v3/:project_id/events');
  // without a publisher (tests of the API alone) a stream only carries heartbeats
  const closeStreams = registerEventsRoute(app, { events: o.events ?? new ProjectEvents(), clock: o.clock, logger: log, metrics: o.metrics, limits: o.eventStream });
  // hijacked streams would hold app.close() until their lifetime ends
  app.addHook('preClose', async () => closeStreams());
  remember('GET', '/console');
  registerConsoleRoutes(app, o.consoleDir ?? null);

  for (const url of ['/openapi.json', '/healthz', '/readyz', '/metrics']) remember('GET', url);
  let openapi: string | null = null;
  app.get('/openapi.json', async (_req, reply) => {
    openapi ??= JSON.stringify(buildOpenApi());
    return reply.type('application/json; charset=utf-8').send(openapi);
  });
  app.get('/healthz', async () => ({ status: 'ok', agents_connected: o.presence.connectedCount }));
  // ready = the store answers: a load balancer takes a replica whose database is away out of rotation
  app.get('/readyz', async (req, reply) => {
    try {
      await o.store.ping();
      return { status: 'ready' };
    } catch (err) {
      const reason = `the controller database is unavailable: ${(err as Error).message}`;
      req.log.warn({ event: 'not_ready', err }, reason);
      return reply.status(503).header('retry-after', String(STORE_RETRY_AFTER_S)).send({ request_id: req.id, error_code: API_ERROR_KINDS.unavailable.apiCode, error_msg: reason, status: 'not_ready' });
    }
  });
  app.get('/metrics', async (_req, reply) => {
    const text = await o.metrics.registry.metrics();
    return reply.type(o.metrics.registry.contentType).send(text);
  });
  return app;
}


