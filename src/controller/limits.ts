/**
 * Limits per source address that keep unauthenticated clients from
 * exhausting the controller (docs/security-http.md):
 *
 * - `AuthFailureLimiter`: a token bucket of failed authentications per source
 *   (HTTP API and agent WebSocket upgrades share it, so a source cannot
 *   double its budget). While a source's bucket is empty, its requests that
 *   need a token are refused with 429 *before* the token is looked at: a
 *   guesser learns nothing until the bucket refills.
 * - `ConnectionLimiter`: open TCP connections per source and in total (HTTP
 *   and WebSocket alike: an upgraded connection keeps its socket).
 * - `AcceptRateLimiter`: new agent connections per second, all sources
 *   together (`agents.accept_rate_per_s`): when a replica dies, its agents
 *   reconnect to the others at once; the excess is told to come back later
 *   (503, Retry-After) instead of overloading one replica with hellos.
 *
 * All are pure bookkeeping over the injected clock; the server edge
 * (api/edge.ts, hub.ts) decides what to do with the answer.
 */
import type { Clock } from '../lib/clock.js';
import type { Logger } from '../lib/logger.js';
import type { ControllerMetrics } from './metrics.js';

/** Defaults of the `http` section of the controller configuration. */
export const HTTP_LIMIT_DEFAULTS = {
  request_timeout_ms: 30_000,
  headers_timeout_ms: 10_000,
  keep_alive_timeout_ms: 5_000,
  max_connections_per_source: 64,
  max_connections: 16_384,
  auth_failures_per_minute: 10,
  auth_failure_burst: 20,
} as const;

/** The `http` section of the controller configuration. */
export type HttpLimits = { -readonly [K in keyof typeof HTTP_LIMIT_DEFAULTS]: number };

/** The source of a connection as one key: IPv4-mapped IPv6 addresses are folded to IPv4. */
export function sourceKey(address: string | undefined): string {
  if (!address) return 'unknown';
  const a = address.toLowerCase();
  return a.startsWith('::ffff:') && a.includes('.') ? a.slice(7) : a;
}

const EPSILON = 1e-9;

interface Bucket {
  tokens: number;
  /** clock.monotonic() of the last refill */
  at: number;
  /** a refusal was already reported (logged) since the source was last allowed */
  reported: boolean;
}

export type AuthCheck = { limited: false } | { limited: true; retryAfterSeconds: number; firstRefusal: boolean };

export class AuthFailureLimiter {
  private readonly buckets = new Map<string, Bucket>();
  private readonly perMs: number;

  constructor(
    private readonly clock: Clock,
    readonly opts: { perMinute: number; burst: number; maxSources?: number },
  ) {
    this.perMs = opts.perMinute / 60_000;
  }

  /** Whether `source` may try a token now; `firstRefusal` is true once per episode of refusals (log it then). */
  check(source: string): AuthCheck {
    const b = this.refill(source);
    // EPSILON: a refill by float steps must not leave a client that waited its Retry-After just short of a token
    if (!b || b.tokens >= 1 - EPSILON) {
      if (b) b.reported = false;
      return { limited: false };
    }
    const firstRefusal = !b.reported;
    b.reported = true;
    const seconds = (1 - b.tokens) / this.perMs / 1000;
    return { limited: true, retryAfterSeconds: Math.max(1, Math.ceil(seconds - EPSILON)), firstRefusal };
  }

  /** Records a failed authentication of `source` (takes one token). */
  failed(source: string): void {
    let b = this.refill(source);
    if (!b) {
      this.prune();
      b = { tokens: this.opts.burst, at: this.clock.monotonic(), reported: false };
      this.buckets.set(source, b);
    }
    b.tokens = Math.max(0, b.tokens - 1);
  }

  /** Sources with a bucket (full buckets are forgotten when the table grows). */
  get size(): number {
    return this.buckets.size;
  }

  private refill(source: string): Bucket | undefined {
    const b = this.buckets.get(source);
    if (!b) return undefined;
    const now = this.clock.monotonic();
    b.tokens = Math.min(this.opts.burst, b.tokens + (now - b.at) * this.perMs);
    b.at = now;
    return b;
  }

  /** Bounded memory: drop refilled buckets first, then the oldest. */
  private prune(): void {
    const max = this.opts.maxSources ?? 10_000;
    if (this.buckets.size < max) return;
    for (const key of [...this.buckets.keys()]) {
      const b = this.refill(key)!;
      if (b.tokens >= this.opts.burst) this.buckets.delete(key);
    }
    for (const key of this.buckets.keys()) {
      if (this.buckets.size < max) break;
      this.buckets.delete(key);
    }
  }
}

/** One token bucket for every new agent connection: `perSecond` refilled, at most `burst` (default: one second's worth). */
export class AcceptRateLimiter {
  private tokens: number;
  private at: number;
  readonly burst: number;

  constructor(
    private readonly clock: Clock,
    readonly perSecond: number,
    burst?: number,
  ) {
    this.burst = burst ?? Math.max(1, Math.ceil(perSecond));
    this.tokens = this.burst;
    this.at = clock.monotonic();
  }

  /** Takes a token for a new connection; refused, with the whole seconds until the next token, when none is left. */
  take(): { ok: true } | { ok: false; retryAfterSeconds: number } {
    const now = this.clock.monotonic();
    this.tokens = Math.min(this.burst, this.tokens + ((now - this.at) / 1000) * this.perSecond);
    this.at = now;
    if (this.tokens >= 1 - EPSILON) {
      this.tokens = Math.max(0, this.tokens - 1);
      return { ok: true };
    }
    return { ok: false, retryAfterSeconds: Math.max(1, Math.ceil((1 - this.tokens) / this.perSecond - EPSILON)) };
  }
}

export type ConnectionVerdict = 'ok' | 'per_source' | 'total';

export class ConnectionLimiter {
  private readonly bySource = new Map<string, number>();
  private total = 0;

  constructor(readonly opts: { perSource: number; total: number }) {}

  /** Counts a new connection of `source` unless it is over a limit; only an 'ok' connection must be `close`d later. */
  open(source: string): ConnectionVerdict {
    if (this.total >= this.opts.total) return 'total';
    const n = this.bySource.get(source) ?? 0;
    if (n >= this.opts.perSource) return 'per_source';
    this.bySource.set(source, n + 1);
    this.total++;
    return 'ok';
  }

  close(source: string): void {
    const n = this.bySource.get(source) ?? 0;
    if (n <= 1) this.bySource.delete(source);
    else this.bySource.set(source, n - 1);
    if (n > 0) this.total--;
  }

  get openCount(): number {
    return this.total;
  }

  count(source: string): number {
    return this.bySource.get(source) ?? 0;
  }
}

/**
 * The gate in front of every authentication (API and agent upgrade): null
 * while `source` has failed-auth budget left; else the refusal to answer with
 * (429 and Retry-After), counted in the metric and logged once per episode.
 */
export function authRefusal(
  limiter: AuthFailureLimiter,
  source: string,
  endpoint: 'api' | 'agent',
  d: { metrics: ControllerMetrics; log: Logger; requestId?: string },
): { retryAfterSeconds: number; message: string } | null {
  const limited = limiter.check(source);
  if (!limited.limited) return null;
  d.metrics.authRateLimited.inc({ endpoint });
  if (limited.firstRefusal) {
    d.log.warn(
      { event: 'auth_rate_limited', endpoint, source, retry_after_s: limited.retryAfterSeconds, ...(d.requestId ? { request_id: d.requestId } : {}) },
      'too many failed authentications from this address',
    );
  }
  return { retryAfterSeconds: limited.retryAfterSeconds, message: `too many failed authentications from ${source}; retry after ${limited.retryAfterSeconds} s` };
}
