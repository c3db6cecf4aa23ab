/**
 * Bearer tokens: agent tokens are 256 random bits, stored only as their
 * SHA-256 (a fast hash is enough for secrets with that much entropy);
 * comparisons are constant-time.
 */
import { randomBytes, randomUUID, timingSafeEqual } from 'node:crypto';
import { sha256 } from '../lib/hash.js';

export const AGENT_TOKEN_PREFIX = 'sgi_';

export function hashToken(token: string): string {
  return sha256(token);
}

/** Constant-time equality of two hex digests (false for different lengths). */
export function digestsEqual(a: string, b: string): boolean {
  const x = Buffer.from(a, 'hex');
  const y = Buffer.from(b, 'hex');
  return x.length === y.length && x.length > 0 && timingSafeEqual(x, y);
}

/** The token in `Authorization: Bearer <token>` or `X-Auth-Token: <token>` (Huawei's header); null if neither. */
export function tokenFromHeaders(headers: Record<string, string | string[] | undefined>): string | null {
  const auth = headers.authorization;
  if (typeof auth === 'string') {
    const m = /^Bearer\s+(\S+)\s*$/i.exec(auth);
    if (m) return m[1]!;
  }
  const x = headers['x-auth-token'];
  if (typeof x === 'string' && x.trim()) return x.trim();
  return null;
}

/** The configured token whose SHA-256 matches `token` (every entry compared in constant time), or null. */
export function findToken<T extends { sha256: string }>(token: string, tokens: readonly T[]): T | null {
  const h = hashToken(token);
  let match: T | null = null;
  for (const t of tokens) if (digestsEqual(t.sha256, h)) match = t;
  return match;
}

/** Randomness the controller uses: ids and tokens (tests pass a deterministic one). */
export interface Random {
  uuid(): string;
  token(): string;
  /** 32 hex characters, Huawei's request_id format */
  requestId(): string;
}

export const cryptoRandom: Random = {
  uuid: () => randomUUID(),
  token: () => AGENT_TOKEN_PREFIX + randomBytes(32).toString('base64url'),
  requestId: () => randomBytes(16).toString('hex'),
};
