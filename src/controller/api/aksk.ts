/**
 * AK/SK request signatures (`SDK-HMAC-SHA256`) exactly as the official Huawei
 * Cloud SDKs compute them (huaweicloud-sdk-core `auth/AKSKSigner.js`, and
 * Huawei's "API Request Signing Guide"):
 *
 *   CanonicalRequest = METHOD \n CanonicalURI \n CanonicalQuery \n
 *                      CanonicalHeaders \n SignedHeaders \n hex(sha256(body))
 *   StringToSign     = "SDK-HMAC-SHA256" \n X-Sdk-Date \n hex(sha256(CanonicalRequest))
 *   Signature        = hex(hmac-sha256(secret key, StringToSign))
 *
 * - CanonicalURI: the path as sent (still percent-encoded), each segment
 *   encoded again with the signer's table (RFC 3986 unreserved characters
 *   stay), always ending in '/'.
 * - CanonicalQuery: keys and values decoded as the API reads them (`+` is a
 *   space), keys sorted, the values of a repeated key sorted, each encoded;
 *   `k=v` joined with '&'.
 * - CanonicalHeaders: `name:value\n` for each name in SignedHeaders (sorted,
 *   lower case), the value as received.
 *
 * Verification is split in two because the signature covers the body:
 * `checkSignedHeaders` runs on the headers alone (in the API's `onRequest`,
 * before any body is read): unknown AK, date, required signed headers,
 * project. It returns a `PendingSignature`; `verifyPayload` finishes with the
 * body's bytes (read by the API before JSON parsing). Pure: the time is a
 * parameter (`now`, from the injected clock), nothing is logged here.
 * Secrets are compared only through HMAC and constant-time equality.
 */
import { createHmac, timingSafeEqual } from 'node:crypto';
import type { IncomingHttpHeaders } from 'node:http';
import { sha256 } from '../../lib/hash.js';
import { ApiError } from '../errors.js';
import { findToken, hashToken } from '../tokens.js';

export const SIGNING_ALGORITHM = 'SDK-HMAC-SHA256';
/** a request's X-Sdk-Date may differ this much from the controller's clock (Huawei: 15 minutes) */
export const SIGNATURE_WINDOW_MS = 15 * 60 * 1000;
/** headers every signature must cover */
export const REQUIRED_SIGNED_HEADERS = ['host', 'x-sdk-date'] as const;

/** An access key as configured (the secret read from `secret_key` or `secret_key_file`). */
export interface AccessKey {
  name: string;
  access_key: string;
  secret_key: string;
  /** project ids, or '*' for all */
  projects: readonly string[];
}

/** What is left to check once the body is read. */
export interface PendingSignature {
  key: AccessKey;
  /** every line of the canonical request but the payload hash */
  canonicalHead: string;
  date: string;
  signature: string;
  /** X-Sdk-Content-Sha256 as sent, if any */
  contentSha256: string | null;
}

export interface SignedRequest {
  method: string;
  /** path and query exactly as received (`req.raw.url`) */
  url: string;
  headers: IncomingHttpHeaders;
  /** the project id of the route's path (decoded) */
  project: string;
}

/** The request carries an `Authorization: SDK-HMAC-SHA256 ...` header. */
export function isSignedRequest(headers: IncomingHttpHeaders): boolean {
  const a = headers.authorization;
  return typeof a === 'string' && a.startsWith(`${SIGNING_ALGORITHM} `);
}

const invalid = (why: string) => new ApiError('signatureInvalid', `Incorrect IAM authentication information: ${why}`);

/** `SDK-HMAC-SHA256 Access=..., SignedHeaders=a;b, Signature=hex`, or null. */
export function parseAuthorization(value: string): { access: string; signedHeaders: string[]; signature: string } | null {
  if (!value.startsWith(`${SIGNING_ALGORITHM} `)) return null;
  const fields = new Map<string, string>();
  for (const part of value.slice(SIGNING_ALGORITHM.length + 1).split(',')) {
    const eq = part.indexOf('=');
    if (eq < 0) return null;
    fields.set(part.slice(0, eq).trim(), part.slice(eq + 1).trim());
  }
  const access = fields.get('Access');
  const signed = fields.get('SignedHeaders');
  const signature = fields.get('Signature');
  if (!access || !signed || !signature) return null;
  return { access, signedHeaders: signed.split(';'), signature };
}

const HEX = '0123456789ABCDEF';

/** The signer's urlEncode: UTF-8, every byte outside A-Z a-z 0-9 - _ . ~ as %XY (upper-case hex). */
export function signerEncode(s: string): string {
  let out = '';
  for (const b of Buffer.from(s, 'utf8')) {
    const unreserved = (b >= 0x30 && b <= 0x39) || (b >= 0x41 && b <= 0x5a) || (b >= 0x61 && b <= 0x7a) || b === 0x2d || b === 0x2e || b === 0x5f || b === 0x7e;
    out += unreserved ? String.fromCharCode(b) : `%${HEX[b >> 4]}${HEX[b & 15]}`;
  }
  return out;
}

/** CanonicalURI of a raw (as sent) path: each segment encoded again, ending in '/'. */
export function canonicalUri(rawPath: string): string {
  const p = rawPath.split('/').map(signerEncode).join('/');
  return p.endsWith('/') ? p : `${p}/`;
}

function decodeQueryPart(s: string): string {
  return decodeURIComponent(s.replace(/\+/g, ' '));
}

/** CanonicalQueryString of a raw query string (without '?'); throws URIError on bad percent-encoding. */
export function canonicalQuery(rawQuery: string): string {
  const byKey = new Map<string, string[]>();
  for (const pair of rawQuery.split('&')) {
    if (pair === '') continue;
    const eq = pair.indexOf('=');
    const key = decodeQueryPart(eq < 0 ? pair : pair.slice(0, eq));
    const value = eq < 0 ? '' : decodeQueryPart(pair.slice(eq + 1));
    const values = byKey.get(key);
    if (values) values.push(value);
    else byKey.set(key, [value]);
  }
  const out: string[] = [];
  // default sort (UTF-16 code units), as the signer's Array.prototype.sort
  for (const key of [...byKey.keys()].sort()) for (const v of byKey.get(key)!.sort()) out.push(`${signerEncode(key)}=${signerEncode(v)}`);
  return out.join('&');
}

/** `YYYYMMDDTHHMMSSZ` as epoch ms, or null if malformed. */
export function parseSdkDate(value: string): number | null {
  const m = /^(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})Z$/.exec(value);
  if (!m) return null;
  const [y, mo, d, h, mi, s] = m.slice(1).map(Number) as [number, number, number, number, number, number];
  const t = Date.UTC(y, mo - 1, d, h, mi, s);
  const back = new Date(t);
  if (back.getUTCFullYear() !== y || back.getUTCMonth() !== mo - 1 || back.getUTCDate() !== d || back.getUTCHours() !== h || back.getUTCMinutes() !== mi || back.getUTCSeconds() !== s) return null;
  return t;
}

function headerValue(headers: IncomingHttpHeaders, name: string): string | undefined {
  const v = headers[name];
  return Array.isArray(v) ? v.join(',') : v;
}

/** The configured keys' AK digests, computed once per key list. */
const keyDigests = new WeakMap<readonly AccessKey[], { sha256: string; key: AccessKey }[]>();

/** The configured key with this AK: `findToken`'s constant-time search over the AKs' digests. */
export function findAccessKey(access: string, keys: readonly AccessKey[]): AccessKey | null {
  let digests = keyDigests.get(keys);
  if (!digests) keyDigests.set(keys, (digests = keys.map((key) => ({ sha256: hashToken(key.access_key), key }))));
  return findToken(access, digests)?.key ?? null;
}

/**
 * Everything that can be decided from the headers. Throws ApiError:
 * `signatureInvalid` (401) for a malformed Authorization, an unknown AK,
 * missing signed headers, a missing/malformed X-Sdk-Date or one outside
 * ±SIGNATURE_WINDOW_MS of `now`, `X-Sdk-Content-Sha256: UNSIGNED-PAYLOAD`;
 * `signatureForbidden` (403) for an X-Project-Id other than the path's or
 * a project the key may not use.
 */
export function checkSignedHeaders(req: SignedRequest, keys: readonly AccessKey[], now: number): PendingSignature {
  const auth = parseAuthorization(headerValue(req.headers, 'authorization') ?? '');
  if (!auth) throw invalid(`malformed Authorization header (expected "${SIGNING_ALGORITHM} Access=<AK>, SignedHeaders=<names>, Signature=<hex>")`);
  const key = findAccessKey(auth.access, keys);
  if (!key) throw invalid('unknown access key');
  const signed = auth.signedHeaders;
  for (const name of REQUIRED_SIGNED_HEADERS) if (!signed.includes(name)) throw invalid(`SignedHeaders must include ${name}`);
  const canonicalHeaders: string[] = [];
  for (const name of signed) {
    if (name === '' || name !== name.toLowerCase()) throw invalid(`SignedHeaders must be lower-case names separated by ";"`);
    const v = headerValue(req.headers, name);
    if (v === undefined) throw invalid(`signed header ${name} is not in the request`);
    canonicalHeaders.push(`${name}:${v}\n`);
  }
  const date = headerValue(req.headers, 'x-sdk-date')!;
  const t = parseSdkDate(date);
  if (t === null) throw invalid(`X-Sdk-Date ${JSON.stringify(date.slice(0, 40))} is not a date like 20240501T120000Z`);
  if (Math.abs(now - t) > SIGNATURE_WINDOW_MS) throw invalid(`signature expired: X-Sdk-Date ${date} is more than 15 minutes from the server's time`);
  const contentSha256 = headerValue(req.headers, 'x-sdk-content-sha256') ?? null;
  if (contentSha256 === 'UNSIGNED-PAYLOAD') throw invalid('unsigned payloads are not accepted (X-Sdk-Content-Sha256: UNSIGNED-PAYLOAD)');
  const projectHeader = headerValue(req.headers, 'x-project-id');
  if (projectHeader !== undefined && projectHeader !== req.project) {
    throw new ApiError('signatureForbidden', `X-Project-Id ${JSON.stringify(projectHeader.slice(0, 64))} is not the project of the path (${JSON.stringify(req.project)})`);
  }
  if (!key.projects.includes('*') && !key.projects.includes(req.project)) {
    throw new ApiError('signatureForbidden', `access key ${JSON.stringify(key.name)} may not access project ${JSON.stringify(req.project)}`);
  }
  const q = req.url.indexOf('?');
  const rawPath = q < 0 ? req.url : req.url.slice(0, q);
  let query: string;
  try {
    query = canonicalQuery(q < 0 ? '' : req.url.slice(q + 1));
  } catch {
    throw invalid('the query string is not valid percent-encoded UTF-8');
  }
  const canonicalHead = [req.method, canonicalUri(rawPath), query, canonicalHeaders.join(''), signed.join(';')].join('\n');
  return { key, canonicalHead, date, signature: auth.signature, contentSha256 };
}

/** Finishes the check with the body's bytes; throws ApiError `signatureInvalid` (401) on any mismatch. */
export function verifyPayload(p: PendingSignature, body: Buffer): AccessKey {
  const payloadHash = sha256(body);
  if (p.contentSha256 !== null && p.contentSha256 !== payloadHash) throw invalid('X-Sdk-Content-Sha256 is not the SHA-256 of the body');
  const canonicalRequest = `${p.canonicalHead}\n${payloadHash}`;
  const stringToSign = [SIGNING_ALGORITHM, p.date, sha256(canonicalRequest)].join('\n');
  const expected = Buffer.from(createHmac('sha256', p.key.secret_key).update(stringToSign).digest('hex'), 'utf8');
  const given = Buffer.from(p.signature, 'utf8');
  if (given.length !== expected.length || !timingSafeEqual(given, expected)) throw invalid('verify aksk signature fail');
  return p.key;
}
