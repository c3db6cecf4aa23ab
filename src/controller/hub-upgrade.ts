/**
 * Who may open an agent connection: the hub's `/v1/agent` upgrade decided
 * before any WebSocket handshake, cheapest refusal first (hub.ts carries the
 * connections that pass):
 *
 * 1. the path, then a stopping controller (503);
 * 2. the accept rate (`agents.accept_rate_per_s`, limits.ts
 *    `AcceptRateLimiter`): 503 `SG.0017` with Retry-After, before the token
 *    costs a database read: when a replica dies, its agents spread over the
 *    others' seconds instead of arriving at once;
 * 3. the failed-auth budget of the source (429, shared with the HTTP API),
 *    then the instance token (401, audited);
 * 4. a store that cannot be reached: 503 `SYS.0503` with Retry-After.
 *
 * A refusal is an HTTP answer with a Huawei-style error body (`reject`).
 */
import type { IncomingMessage } from 'node:http';
import type { Duplex } from 'node:stream';
import { isSecgroupError } from '../lib/errors.js';
import type { Logger } from '../lib/logger.js';
import { AGENT_PATH } from '../protocol/messages.js';
import { boundUserAgent, type AuditRecorder } from './audit.js';
import { API_ERROR_KINDS, STORE_RETRY_AFTER_S } from './errors.js';
import { authRefusal, sourceKey, type AcceptRateLimiter, type AuthFailureLimiter } from './limits.js';
import type { ControllerMetrics } from './metrics.js';
import type { Store, TokenOwner } from './store/store.js';
import { digestsEqual, hashToken, tokenFromHeaders } from './tokens.js';

/** An agent upgrade over `agents.accept_rate_per_s` (agents only: the API has no such answer). */
export const ACCEPT_RATE_CODE = 'SG.0017';

export interface Refusal {
  status: number;
  code: string;
  message: string;
  headers?: Record<string, string>;
}

/** Where an admitted connection comes from (for the audit trail). */
export interface UpgradeFacts {
  sourceIp: string | null;
  userAgent: string | null;
}

export type Admission = { ok: true; owner: TokenOwner; facts: UpgradeFacts } | { ok: false; refusal: Refusal };

export interface UpgradeGateOptions {
  store: Store;
  metrics: ControllerMetrics;
  log: Logger;
  authLimiter?: AuthFailureLimiter;
  acceptLimiter?: AcceptRateLimiter;
  audit?: AuditRecorder;
}

export class UpgradeGate {
  constructor(private readonly o: UpgradeGateOptions) {}

  /** Whether the upgrade `req` may become an agent connection; throws only what the store throws besides STORE_UNAVAILABLE. */
  async admit(req: IncomingMessage, stopping: boolean): Promise<Admission> {
    const no = (status: number, code: string, message: string, headers?: Record<string, string>): Admission => ({ ok: false, refusal: { status, code, message, ...(headers ? { headers } : {}) } });
    const path = (req.url ?? '/').split('?')[0];
    if (path !== AGENT_PATH) return no(404, API_ERROR_KINDS.noSuchApi.apiCode, `no WebSocket endpoint at ${path}; agents connect to ${AGENT_PATH}`);
    if (stopping) return no(503, 'SG.0500', 'the controller is shutting down');
    const pace = this.o.acceptLimiter?.take();
    if (pace && !pace.ok) {
      this.o.metrics.connectionsRejected.inc({ reason: 'accept_rate' });
      return no(503, ACCEPT_RATE_CODE, `more new agent connections than ${this.o.acceptLimiter!.perSecond}/s (agents.accept_rate_per_s): retry in ${pace.retryAfterSeconds} s`, {
        'Retry-After': String(pace.retryAfterSeconds),
      });
    }
    // a source over its failed-auth budget is refused before its token is looked at
    const source = sourceKey(req.socket.remoteAddress);
    const refused = this.o.authLimiter ? authRefusal(this.o.authLimiter, source, 'agent', { metrics: this.o.metrics, log: this.o.log }) : null;
    if (refused) return no(429, 'SG.0011', refused.message, { 'Retry-After': String(refused.retryAfterSeconds) });
    const facts = { sourceIp: req.socket.remoteAddress ?? null, userAgent: boundUserAgent(req.headers['user-agent']) };
    const token = tokenFromHeaders(req.headers);
    if (!token) {
      this.o.authLimiter?.failed(source);
      this.o.audit?.agent('refused', { ...facts, projectId: null, instanceId: null, detail: 'missing token' });
      return no(401, 'SG.0002', 'missing "Authorization: Bearer <instance token>"');
    }
    const hash = hashToken(token);
    let owner: TokenOwner | null;
    try {
      owner = await this.o.store.findTokenOwner(hash);
    } catch (e) {
      if (!isSecgroupError(e, 'STORE_UNAVAILABLE')) throw e;
      this.o.log.warn({ event: 'upgrade_refused', reason: 'store_unavailable', err: e }, 'agent upgrade refused: the controller database is unavailable');
      return no(503, API_ERROR_KINDS.unavailable.apiCode, `the controller database is unavailable (${e.message}); retry later or on another controller`, { 'Retry-After': String(STORE_RETRY_AFTER_S) });
    }
    if (!owner || !digestsEqual(owner.tokenHash, hash)) {
      this.o.authLimiter?.failed(source);
      this.o.metrics.agentMessagesRejected.inc({ reason: 'auth' });
      this.o.log.warn({ event: 'auth', remote: req.socket.remoteAddress }, 'agent presented an unknown token');
      this.o.audit?.agent('refused', { ...facts, projectId: null, instanceId: null, detail: 'unknown instance token' });
      return no(401, 'SG.0002', 'unknown instance token');
    }
    return { ok: true, owner, facts };
  }
}

/** Refuses an upgrade with an HTTP status and a Huawei-style error body. */
export function reject(socket: Duplex, r: Refusal): void {
  const body = JSON.stringify({ request_id: '', error_code: r.code, error_msg: r.message });
  const reason = { 401: 'Unauthorized', 404: 'Not Found', 429: 'Too Many Requests', 500: 'Internal Server Error', 503: 'Service Unavailable' }[r.status] ?? 'Error';
  const extra = Object.entries(r.headers ?? {}).map(([n, v]) => `${n}: ${v}\r\n`).join('');
  socket.end(`HTTP/1.1 ${r.status} ${reason}\r\nConnection: close\r\nContent-Type: application/json\r\n${extra}Content-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`);
}
