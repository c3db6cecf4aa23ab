/**
 * The audit trail (as Huawei CTS / AWS CloudTrail): every write to the API,
 * accepted or refused, and every agent connection event becomes one
 * `AuditEvent`, stored (Store.appendAuditEvent) and logged as one
 * `event: "audit"` line. docs/api.md ("Audit events") is the contract.
 *
 * - Recording never holds up or fails a request: the HTTP event is built in
 *   fastify's `onResponse` hook (after the answer is sent) and stored
 *   without being awaited; a store failure is logged (`audit_store_failed`),
 *   the log line is written either way.
 * - The operation name of a route comes from one table, `API_OPERATIONS`,
 *   keyed by method and route as registered; `registerAuditHooks` refuses to
 *   build an app with a write route missing from it.
 * - Tokens and secret keys are never recorded: the actor is the configured
 *   token's name, the name of the access key whose AK/SK signature was
 *   verified, or `anonymous` when the request carries no known token and no
 *   valid signature.
 * - Events older than `retentionDays` are deleted at start and hourly
 *   (AUDIT_PRUNE_SCHEDULE) on the injected scheduler, by the injected clock.
 */
import type { FastifyInstance, FastifyRequest } from 'fastify';
import type { Clock } from '../lib/clock.js';
import type { Logger } from '../lib/logger.js';
import type { ScheduledJob, Scheduler } from '../lib/scheduler.js';
import type { ProjectEvents } from './events.js';
import type { AuditEvent, Store } from './store/store.js';
import type { Random } from './tokens.js';

/** Minute 17 of every hour (6-field cron, seconds first). */
export const AUDIT_PRUNE_SCHEDULE = '0 17 * * * *';
export const USER_AGENT_MAX = 256;
/** bound on ids and project ids taken from a path (valid ones are at most 64) */
const PATH_PART_MAX = 128;
const DAY_MS = 86_400_000;

export type AuditInput = Omit<AuditEvent, 'id' | 'time'>;

interface OperationSpec {
  operation: string;
  resource_type: string;
  /** the ids a successful answer created */
  created?: (body: Record<string, unknown>) => unknown[];
}

const idOf = (key: string) => (b: Record<string, unknown>) => [(b[key] as { id?: unknown } | undefined)?.id];

/**
 * Write operations by `METHOD route` (the route below `/v3/:project_id`, as
 * routes.ts registers it). Names are Huawei VPC v3's where Huawei has the
 * operation; instances are secgroup's own resource, named in the same style.
 */
export const API_OPERATIONS: Readonly<Record<string, OperationSpec>> = {
  'POST /vpc/security-groups': { operation: 'CreateSecurityGroup', resource_type: 'security_group', created: idOf('security_group') },
  'PUT /vpc/security-groups/:id': { operation: 'UpdateSecurityGroup', resource_type: 'security_group' },
  'DELETE /vpc/security-groups/:id': { operation: 'DeleteSecurityGroup', resource_type: 'security_group' },
  'POST /vpc/security-group-rules': { operation: 'CreateSecurityGroupRule', resource_type: 'security_group_rule', created: idOf('security_group_rule') },
  'POST /vpc/security-groups/:id/security-group-rules/batch-create': {
    operation: 'BatchCreateSecurityGroupRules',
    resource_type: 'security_group_rule',
    created: (b) => (Array.isArray(b.security_group_rules) ? b.security_group_rules.map((r: { id?: unknown }) => r.id) : []),
  },
  'DELETE /vpc/security-group-rules/:id': { operation: 'DeleteSecurityGroupRule', resource_type: 'security_group_rule' },
  'POST /vpc/address-groups': { operation: 'CreateAddressGroup', resource_type: 'address_group', created: idOf('address_group') },
  'PUT /vpc/address-groups/:id': { operation: 'UpdateAddressGroup', resource_type: 'address_group' },
  'DELETE /vpc/address-groups/:id': { operation: 'DeleteAddressGroup', resource_type: 'address_group' },
  'DELETE /vpc/address-groups/:id/force': { operation: 'DeleteIpAddressGroupForce', resource_type: 'address_group' },
  'POST /instances': { operation: 'CreateInstance', resource_type: 'instance', created: idOf('instance') },
  'PUT /instances/:id': { operation: 'UpdateInstance', resource_type: 'instance' },
  'DELETE /instances/:id': { operation: 'DeleteInstance', resource_type: 'instance' },
  'POST /instances/:id/rotate-token': { operation: 'RotateInstanceToken', resource_type: 'instance' },
};

/** A write that matched no route (404 from the not-found handler). */
const UNKNOWN: OperationSpec = { operation: 'Unknown', resource_type: 'unknown' };
const PREFIX = '/v3/:project_id';
const WRITES = new Set(['POST', 'PUT', 'DELETE', 'PATCH']);

export interface AuditRecorderOptions {
  store: Store;
  clock: Clock;
  logger: Logger;
  random: Random;
  /** events older than this many days are deleted */
  retentionDays: number;
  /** successful API writes are also published here as `change` events (events.ts); none when absent */
  events?: ProjectEvents;
}

export type AgentAuditKind = 'connected' | 'disconnected' | 'refused';

export interface AgentAuditFacts {
  projectId: string | null;
  instanceId: string | null;
  sourceIp: string | null;
  userAgent: string | null;
  detail: string | null;
}

export class AuditRecorder {
  private readonly log: Logger;
  private readonly pending = new Set<Promise<void>>();
  private job: ScheduledJob | null = null;

  constructor(private readonly o: AuditRecorderOptions) {
    this.log = o.logger.child({ component: 'audit' });
  }

  /** Logs and stores one event; never throws, never waits (`idle()` waits for the store). */
  record(input: AuditInput): void {
    const e: AuditEvent = { id: this.o.random.uuid(), time: new Date(this.o.clock.now()).toISOString(), ...input };
    // pino writes its own `time`; the event's goes out as `event_time` so a line has no duplicate keys
    const { time, ...rest } = e;
    const fields = { ...rest, event_time: time };
    this.log.info({ event: 'audit', ...fields }, `audit ${e.operation} ${e.status}`);
    const p: Promise<void> = Promise.resolve()
      .then(() => this.o.store.appendAuditEvent(e))
      .catch((err: unknown) => this.log.error({ event: 'audit_store_failed', ...fields, err }, 'could not store an audit event'))
      .finally(() => this.pending.delete(p));
    this.pending.add(p);
  }

  /** A write that succeeded (2xx, not a dry run), as a console `change` event of its project. */
  changed(projectId: string, change: { resource_type: string; operation: string; resource_ids: unknown[] }): void {
    this.o.events?.publish(projectId, { type: 'change', data: change });
  }

  /** An agent connection event (actor `agent:<instance id>`; `anonymous` for an unknown token). */
  agent(kind: AgentAuditKind, f: AgentAuditFacts): void {
    const status = kind === 'connected' ? 101 : kind === 'disconnected' ? 200 : 401;
    this.record({
      actor: f.instanceId ? `agent:${f.instanceId}` : 'anonymous',
      project_id: f.projectId,
      operation: kind === 'connected' ? 'AgentConnected' : kind === 'disconnected' ? 'AgentDisconnected' : 'AgentRefused',
      resource_type: 'instance',
      resource_ids: f.instanceId ? [f.instanceId] : [],
      request_id: null,
      status,
      error_code: kind === 'refused' ? 'SG.0002' : null,
      source_ip: f.sourceIp,
      user_agent: boundUserAgent(f.userAgent),
      detail: f.detail,
    });
  }

  /** Resolves when every event recorded so far is stored (or its failure logged). */
  async idle(): Promise<void> {
    while (this.pending.size) await Promise.all([...this.pending]);
  }

  /** Deletes events older than the retention; failures are logged, not thrown. Returns how many were deleted. */
  async prune(): Promise<number> {
    const before = new Date(this.o.clock.now() - this.o.retentionDays * DAY_MS).toISOString();
    try {
      const removed = await this.o.store.pruneAuditEvents(before);
      if (removed > 0) this.log.info({ event: 'audit_pruned', removed, before }, 'old audit events deleted');
      return removed;
    } catch (err) {
      this.log.error({ event: 'audit_prune_failed', before, err }, 'could not delete old audit events');
      return 0;
    }
  }

  /** Prunes now, then on AUDIT_PRUNE_SCHEDULE until `stop()`. */
  async startRetention(scheduler: Scheduler): Promise<void> {
    await this.prune();
    this.job?.stop();
    this.job = scheduler.schedule(AUDIT_PRUNE_SCHEDULE, () => this.prune());
  }

  stop(): void {
    this.job?.stop();
    this.job = null;
  }
}

export function boundUserAgent(ua: string | string[] | undefined | null): string | null {
  const v = Array.isArray(ua) ? ua[0] : ua;
  return typeof v === 'string' ? v.slice(0, USER_AGENT_MAX) : null;
}

interface Answer {
  error_code: string | null;
  created: string[];
}

function specOf(req: FastifyRequest): OperationSpec {
  const url = req.routeOptions.url;
  if (!url?.startsWith(PREFIX)) return UNKNOWN;
  return API_OPERATIONS[`${req.method} ${url.slice(PREFIX.length)}`] ?? UNKNOWN;
}

const isAudited = (req: FastifyRequest) => WRITES.has(req.method) && req.url.startsWith('/v3/');

/** Reads what the event needs from an answer body (only answers that can carry it are parsed). */
function readAnswer(spec: OperationSpec, status: number, payload: unknown): Answer {
  const answer: Answer = { error_code: null, created: [] };
  const wanted = status >= 400 || status === 202 || (status < 300 && spec.created !== undefined);
  if (!wanted || typeof payload !== 'string') return answer;
  let body: unknown;
  try {
    body = JSON.parse(payload);
  } catch {
    return answer;
  }
  if (typeof body !== 'object' || body === null) return answer;
  const b = body as Record<string, unknown>;
  if (typeof b.error_code === 'string') answer.error_code = b.error_code;
  else if (spec.created && status < 300) answer.created = spec.created(b).filter((x): x is string => typeof x === 'string');
  return answer;
}

/**
 * Adds the audit hooks to `app`; call before any route is registered (a
 * write route under /v3/:project_id missing from API_OPERATIONS is refused
 * at registration).
 */
export function registerAuditHooks(
  app: FastifyInstance,
  recorder: AuditRecorder,
  /** who sent the request: the name authentication found (token or access key), or `anonymous` */
  actorOf: (req: FastifyRequest) => string,
): void {
  const answers = new WeakMap<FastifyRequest, Answer>();
  app.addHook('onRoute', (r) => {
    const methods = Array.isArray(r.method) ? r.method : [r.method];
    for (const m of methods) {
      if (WRITES.has(m) && r.url.startsWith(PREFIX) && !API_OPERATIONS[`${m} ${r.url.slice(PREFIX.length)}`]) {
        throw new Error(`write route ${m} ${r.url} has no audit operation name (src/controller/audit.ts API_OPERATIONS)`);
      }
    }
  });
  app.addHook('onSend', async (req, reply, payload) => {
    if (isAudited(req)) answers.set(req, readAnswer(specOf(req), reply.statusCode, payload));
    return payload;
  });
  app.addHook('onResponse', async (req, reply) => {
    if (!isAudited(req)) return;
    const spec = specOf(req);
    const params = (req.params ?? {}) as Record<string, string | undefined>;
    const project = params.project_id ?? /^\/v3\/([^/?]+)/.exec(req.url)?.[1] ?? null;
    const answer = answers.get(req) ?? { error_code: null, created: [] };
    const status = reply.statusCode;
    const pathIds = spec === UNKNOWN || params.id === undefined ? [] : [params.id.slice(0, PATH_PART_MAX)];
    recorder.record({
      actor: actorOf(req),
      project_id: project === null ? null : safeDecode(project).slice(0, PATH_PART_MAX),
      operation: spec.operation,
      resource_type: spec.resource_type,
      resource_ids: [...pathIds, ...answer.created],
      request_id: req.id,
      status,
      error_code: answer.error_code ?? (status >= 400 ? `HTTP_${status}` : null),
      source_ip: req.ip ?? null,
      user_agent: boundUserAgent(req.headers['user-agent']),
      detail: null,
    });
    if (spec !== UNKNOWN && project !== null && (status === 200 || status === 201 || status === 204)) {
      recorder.changed(safeDecode(project), { resource_type: spec.resource_type, operation: spec.operation, resource_ids: [...pathIds, ...answer.created] });
    }
  });
}

function safeDecode(s: string): string {
  try {
    return decodeURIComponent(s);
  } catch {
    return s;
  }
}
