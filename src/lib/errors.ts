/**
 * One catalogue of errors. Every error the program raises on purpose is a
 * `SecgroupError` with a stable `code` (for logs, metrics and API bodies), a
 * message a user can act on, and an optional `cause`.
 */
export type ErrorCode =
  | 'POLICY_INVALID'
  | 'POLICY_PARSE'
  | 'POLICY_TOO_LARGE'
  | 'CONFIG_INVALID'
  | 'PACKET_INVALID'
  | 'NFT_NOT_FOUND'
  | 'NFT_PERMISSION'
  | 'NFT_SYNTAX'
  | 'NFT_NOT_FOUND_OBJECT'
  | 'NFT_EXISTS'
  | 'NFT_FAILED'
  | 'NFT_TIMEOUT'
  | 'STATE_CORRUPT'
  | 'STATE_IO'
  | 'STORE_UNAVAILABLE'
  | 'PROTOCOL'
  | 'STALE_REVISION'
  | 'REVISION_AHEAD'
  | 'REVISION_EXHAUSTED'
  | 'VERIFY_FAILED'
  | 'PROBE_PARSE'
  | 'PROBE_FAILED'
  | 'REQUEST_INVALID'
  | 'NOT_FOUND'
  | 'CONFLICT'
  | 'QUOTA'
  | 'UNAUTHORIZED'
  | 'FORBIDDEN'
  | 'RATE_LIMITED'
  | 'INTERNAL';

export class SecgroupError extends Error {
  readonly code: ErrorCode;
  readonly details: unknown;

  constructor(code: ErrorCode, message: string, opts: { cause?: unknown; details?: unknown } = {}) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.name = 'SecgroupError';
    this.code = code;
    this.details = opts.details;
  }
}

/** One problem in a document, located by its JSON path (e.g. `security_groups[0].rules[2].multiport`). */
export interface Issue {
  path: string;
  message: string;
}

/** A document (policy, config, API body) with one or more problems; `issues` lists every one. */
export class ValidationError extends SecgroupError {
  readonly issues: Issue[];

  constructor(code: ErrorCode, what: string, issues: Issue[]) {
    super(code, `${what} is invalid:\n${issues.map((i) => `  ${formatIssue(i)}`).join('\n')}`, { details: issues });
    this.issues = issues;
  }
}

export function formatIssue(i: Issue): string {
  return i.path ? `${i.path}: ${i.message}` : i.message;
}

export function isSecgroupError(e: unknown, code?: ErrorCode): e is SecgroupError {
  return e instanceof SecgroupError && (code === undefined || e.code === code);
}

/** `e` as it is when a SecgroupError, else an INTERNAL one saying it happened `during` (e.g. "sync"), `e` as its cause. */
export function asSecgroupError(e: unknown, during: string): SecgroupError {
  return isSecgroupError(e) ? e : new SecgroupError('INTERNAL', `internal error during ${during}: ${errorMessage(e)}`, { cause: e });
}

/** Error message of anything thrown, for logs. */
export function errorMessage(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}
