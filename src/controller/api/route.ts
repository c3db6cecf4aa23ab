/**
 * What the app hands to the route modules (routes.ts, audit-routes.ts) and
 * what they use from it: the API options, the `Route` registrar and its
 * per-request context, and the request-part parsers. Its own module so the
 * app imports the route table and the route modules import only this, not
 * the app (no import cycle).
 */
import type { FastifyReply, FastifyRequest } from 'fastify';
import type { z } from 'zod';
import type { Clock } from '../../lib/clock.js';
import type { Logger } from '../../lib/logger.js';
import { ID_PATTERN, zodIssues } from '../../policy/schema.js';
import type { AuditRecorder } from '../audit.js';
import type { ProjectEvents } from '../events.js';
import type { EventStreamLimits } from './events-route.js';
import type { AccessKey } from './aksk.js';
import { ApiError } from '../errors.js';
import type { AuthFailureLimiter, HttpLimits } from '../limits.js';
import type { ControllerMetrics } from '../metrics.js';
import type { ControllerService } from '../service.js';
import type { AgentState, Store } from '../store/store.js';
import type { Random } from '../tokens.js';

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
  /** connected to another replica, as the agent's stored state says (none: a single controller) */
  connectedElsewhere?(state: AgentState): boolean;
  readonly connectedCount: number;
  /** close the instance's agent connection (token rotated, instance deleted) */
  disconnect(projectId: string, instanceId: string, why: 'revoked' | 'deleted'): void;
}

export interface ApiOptions {
  service: ControllerService;
  store: Store;
  presence: AgentPresence;
  tokens: readonly ApiToken[];
  /** AK/SK credentials (`api.access_keys`); none when absent */
  accessKeys?: readonly AccessKey[];
  clock: Clock;
  logger: Logger;
  metrics: ControllerMetrics;
  random: Random;
  maxBodyBytes?: number;
  https?: { cert: Buffer | string; key: Buffer | string } | null;
  /** timeouts and connection limits (the `http` configuration section); defaults: HTTP_LIMIT_DEFAULTS */
  http?: Partial<HttpLimits>;
  /** failed authentications per source; shared with the agent hub (default: one from `http`) */
  authLimiter?: AuthFailureLimiter;
  /** records every write (src/controller/audit.ts); none when absent */
  audit?: AuditRecorder;
  /** live events for `GET /v3/{project_id}/events` (events.ts); absent: the streams carry heartbeats only */
  events?: ProjectEvents;
  /** heartbeat, buffer and lifetime of an event stream (default EVENT_STREAM_DEFAULTS) */
  eventStream?: Partial<EventStreamLimits>;
  /** the built web console (dist/console) served at /console; null or absent: /console says it is not built */
  consoleDir?: string | null;
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
 * an object (sent with `request_id` first; `{ dry_run: true, ...found }` becomes
 * the 202 dry-run answer, with `found`'s fields after Huawei's), a string (sent as JSON text, unchanged) or null (204).
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
