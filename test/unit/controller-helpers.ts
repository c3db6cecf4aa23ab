/* eslint-disable @typescript-eslint/no-explicit-any -- response bodies are untyped JSON, checked by the assertions */
/** Shared setup for the controller tests: an API over a real store, deterministic ids, a fake agent presence. */
import type { FastifyInstance } from 'fastify';
import { expect } from 'vitest';
import { FakeClock } from '../../src/lib/clock.js';
import { silentLogger, type Logger } from '../../src/lib/logger.js';
import { AuditRecorder } from '../../src/controller/audit.js';
import { buildApi, type AgentPresence, type ApiOptions } from '../../src/controller/api/app.js';
import type { AccessKey } from '../../src/controller/api/aksk.js';
import { createMetrics } from '../../src/controller/metrics.js';
import { ControllerService } from '../../src/controller/service.js';
import { DEFAULT_QUOTAS, type Quotas } from '../../src/controller/domain.js';
import { hashToken, type Random } from '../../src/controller/tokens.js';
import { MemoryStore } from '../../src/controller/store/memory.js';
import { openSqliteStore } from '../../src/controller/store/sqlite.js';
import type { Store } from '../../src/controller/store/store.js';

export const ADMIN = 'admin-token-0123456789';
export const SCOPED = 'scoped-token-0123456789';
export const AUTH = { 'x-auth-token': ADMIN };

/** Ids and tokens that are predictable: uuid-1, uuid-2, ... */
export function countingRandom(): Random {
  let n = 0;
  return {
    uuid: () => `00000000-0000-4000-8000-${String(++n).padStart(12, '0')}`,
    token: () => `sgi_test_token_${++n}`,
    requestId: () => (++n).toString(16).padStart(32, '0'),
  };
}

export class FakePresence implements AgentPresence {
  connected = new Set<string>();
  disconnects: { project: string; instance: string; why: string }[] = [];
  isConnected(p: string, i: string): boolean {
    return this.connected.has(`${p}/${i}`);
  }
  lastSeen(): string | null {
    return null;
  }
  get connectedCount(): number {
    return this.connected.size;
  }
  disconnect(project: string, instance: string, why: 'revoked' | 'deleted'): void {
    this.disconnects.push({ project, instance, why });
  }
}

export interface TestApi {
  app: FastifyInstance;
  store: Store;
  clock: FakeClock;
  presence: FakePresence;
  pushed: { project: string; instances: string[] }[];
  service: ControllerService;
  audit: AuditRecorder;
}

/** `random`: another replica's ids (default `countingRandom()`: two apps over one store would make the same ids). */
export function makeApi(opts: { store?: Store; quotas?: Partial<Quotas>; sqlite?: boolean; logger?: Logger; accessKeys?: readonly AccessKey[]; random?: Random; extra?: Partial<ApiOptions> } = {}): TestApi {
  const store = opts.store ?? (opts.sqlite ? openSqliteStore(':memory:') : new MemoryStore());
  const clock = new FakeClock(Date.UTC(2024, 4, 1, 12, 0, 0));
  const presence = new FakePresence();
  const pushed: TestApi['pushed'] = [];
  const random = opts.random ?? countingRandom();
  const service = new ControllerService({
    store,
    clock,
    logger: silentLogger(),
    quotas: { ...DEFAULT_QUOTAS, ...opts.quotas },
    random,
    onPolicyChanged: (project, instances) => pushed.push({ project, instances }),
  });
  const audit = new AuditRecorder({ store, clock, logger: opts.logger ?? silentLogger(), random, retentionDays: 90 });
  const app = buildApi({
    audit,
    service,
    store,
    presence,
    tokens: [
      { name: 'admin', sha256: hashToken(ADMIN), projects: ['*'] },
      { name: 'scoped', sha256: hashToken(SCOPED), projects: ['proj-a'] },
    ],
    ...(opts.accessKeys ? { accessKeys: opts.accessKeys } : {}),
    clock,
    logger: opts.logger ?? silentLogger(),
    metrics: createMetrics({ defaultMetrics: false }),
    random,
    maxBodyBytes: 64 * 1024,
    ...opts.extra,
  });
  return { app, store, clock, presence, pushed, service, audit };
}

type Method = 'GET' | 'POST' | 'PUT' | 'DELETE';

/** An authenticated request; returns status and parsed JSON body (null when empty). */
export async function call(
  app: FastifyInstance,
  method: Method,
  url: string,
  payload?: unknown,
  headers: Record<string, string> = AUTH,
): Promise<{ status: number; body: any; text: string }> {
  const r = await app.inject({ method, url, headers, ...(payload === undefined ? {} : { payload: payload as object }) });
  return { status: r.statusCode, body: r.body ? JSON.parse(r.body) : null, text: r.body };
}

/** A Huawei-shaped error answer with this status and error_code (and a message matching `msg`). */
export function expectError(r: { status: number; body: any }, status: number, code: string, msg?: RegExp): void {
  expect(r.status).toBe(status);
  expect(Object.keys(r.body)).toEqual(['request_id', 'error_code', 'error_msg']);
  expect(r.body.request_id).toMatch(/^[0-9a-f]{32}$/);
  expect(r.body.error_code).toBe(code);
  if (msg) expect(r.body.error_msg).toMatch(msg);
}

export const rule = (over: Record<string, unknown> = {}) => ({
  direction: 'ingress',
  ethertype: 'IPv4',
  protocol: 'tcp',
  multiport: '80',
  remote_ip_prefix: '0.0.0.0/0',
  ...over,
});

/** The seed: group sg-web with "inbound TCP 80 from 0.0.0.0/0", instance ecs-web-1 in [sg-web, default]. Returns the agent token. */
export async function seed(app: FastifyInstance, project = 'proj-a'): Promise<string> {
  const base = `/v3/${project}`;
  const g = await call(app, 'POST', `${base}/vpc/security-groups`, { security_group: { id: 'sg-web', name: 'web' } });
  if (g.status !== 201) throw new Error(g.text);
  const r = await call(app, 'POST', `${base}/vpc/security-group-rules`, { security_group_rule: { security_group_id: 'sg-web', id: 'r-http', ...rule() } });
  if (r.status !== 201) throw new Error(r.text);
  const i = await call(app, 'POST', `${base}/instances`, {
    instance: { id: 'ecs-web-1', name: 'web-1', addresses: ['198.18.0.10', 'fd00:5ec::10'], security_groups: ['sg-web', 'default'] },
  });
  if (i.status !== 201) throw new Error(i.text);
  return i.body.token as string;
}
