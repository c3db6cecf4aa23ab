/**
 * API errors: each kind has one HTTP status and one stable `error_code`
 * (the catalogue in docs/api.md). The body is Huawei-shaped:
 * `{"request_id", "error_code", "error_msg"}`.
 *
 * Codes are Huawei's wherever Huawei VPC v3 documents one (`VPC.99xx`, the
 * V3 rows of the VPC error-code appendix; `SYS.0202` for a dry run; API
 * Gateway `APIG.*` for requests the gateway refuses), so that SDK code
 * branching on `error_code` works; `SG.xxxx` only where Huawei has none.
 */
import { SecgroupError, formatIssue, type ErrorCode, type Issue } from '../lib/errors.js';

export const API_ERROR_KINDS = {
  invalid: { status: 400, apiCode: 'SG.0001', code: 'REQUEST_INVALID', what: 'a field is missing, malformed or inconsistent' },
  unauthorized: { status: 401, apiCode: 'SG.0002', code: 'UNAUTHORIZED', what: 'no token, or an unknown token' },
  forbidden: { status: 403, apiCode: 'SG.0003', code: 'FORBIDDEN', what: 'the token may not access this project' },
  signatureInvalid: {
    status: 401,
    apiCode: 'APIG.0301',
    code: 'UNAUTHORIZED',
    what: 'AK/SK: unknown access key, wrong signature (body, query, path or signed headers changed), X-Sdk-Date missing, malformed or more than 15 minutes off, unsigned payload',
  },
  signatureForbidden: { status: 403, apiCode: 'APIG.0302', code: 'FORBIDDEN', what: 'AK/SK: the access key may not access this project, or X-Project-Id is not the project of the path' },
  ruleEthertype: { status: 400, apiCode: 'VPC.9902', code: 'REQUEST_INVALID', what: 'the rule\'s ethertype disagrees with its protocol, remote_ip_prefix or remote address group' },
  ipSetInvalid: { status: 400, apiCode: 'VPC.9901', code: 'REQUEST_INVALID', what: 'an address group\'s ip_set (or ip_extra_set) has an invalid or duplicate entry' },
  notFound: { status: 404, apiCode: 'VPC.9904', code: 'NOT_FOUND', what: 'no such resource in this project' },
  noSuchApi: { status: 404, apiCode: 'APIG.0101', code: 'NOT_FOUND', what: 'no such API (path), or an operation outside this surface (the message names it)' },
  inUse: { status: 409, apiCode: 'VPC.9902', code: 'CONFLICT', what: 'the security group is referenced by another group\'s rule or associated with an instance, or is the default group' },
  addressGroupInUse: { status: 409, apiCode: 'VPC.9907', code: 'CONFLICT', what: 'the address group is referenced by a rule (DELETE .../force deletes those rules with it)' },
  duplicate: { status: 409, apiCode: 'VPC.9902', code: 'CONFLICT', what: 'the rule duplicates an existing rule of the group' },
  ruleConflict: { status: 409, apiCode: 'VPC.9902', code: 'CONFLICT', what: 'the rule differs from an existing rule only in its action' },
  quota: { status: 409, apiCode: 'VPC.9905', code: 'QUOTA', what: 'a quota would be exceeded' },
  exists: { status: 409, apiCode: 'SG.0009', code: 'CONFLICT', what: 'a resource with this id already exists' },
  tooLarge: { status: 413, apiCode: 'SG.0010', code: 'REQUEST_INVALID', what: 'the request body is too large' },
  tooManyRequests: { status: 429, apiCode: 'SG.0011', code: 'RATE_LIMITED', what: 'too many failed authentications from this address; retry after `Retry-After` seconds' },
  methodNotAllowed: { status: 405, apiCode: 'SG.0012', code: 'REQUEST_INVALID', what: 'the path exists, but not with this method (`Allow` lists the methods)' },
  unsupportedMediaType: { status: 415, apiCode: 'SG.0013', code: 'REQUEST_INVALID', what: 'the body is not `application/json`' },
  uriTooLong: { status: 414, apiCode: 'SG.0014', code: 'REQUEST_INVALID', what: 'a path parameter is longer than any id can be' },
  headersTooLarge: { status: 431, apiCode: 'SG.0015', code: 'REQUEST_INVALID', what: 'the request headers are too large' },
  timeout: { status: 408, apiCode: 'SG.0016', code: 'REQUEST_INVALID', what: 'the request (headers or body) was not received in time' },
  unavailable: { status: 503, apiCode: 'SYS.0503', code: 'STORE_UNAVAILABLE', what: 'the controller cannot reach its database, or it did not answer within the store timeouts; retry after `Retry-After` seconds (or on another replica)' },
  internal: { status: 500, apiCode: 'SG.0500', code: 'INTERNAL', what: 'an internal error (see the controller log)' },
} as const satisfies Record<string, { status: number; apiCode: string; code: ErrorCode; what: string }>;

export type ApiErrorKind = keyof typeof API_ERROR_KINDS;

export class ApiError extends SecgroupError {
  readonly kind: ApiErrorKind;
  readonly status: number;
  readonly apiCode: string;

  constructor(kind: ApiErrorKind, message: string, opts: { cause?: unknown; details?: unknown } = {}) {
    const k = API_ERROR_KINDS[kind];
    super(k.code, message, opts);
    this.name = 'ApiError';
    this.kind = kind;
    this.status = k.status;
    this.apiCode = k.apiCode;
  }

  /** 400 listing every problem, each prefixed with its field path. */
  static invalid(issues: readonly Issue[], kind: 'invalid' | 'ruleEthertype' | 'ipSetInvalid' = 'invalid'): ApiError {
    return new ApiError(kind, issues.map(formatIssue).join('; '), { details: issues });
  }

  static notFound(what: string, id: string): ApiError {
    return new ApiError('notFound', `${what} ${JSON.stringify(id)} not found`);
  }
}

/** Seconds a client (API or agent upgrade) is told to wait (`Retry-After`) while the database is unavailable. */
export const STORE_RETRY_AFTER_S = 5;

/** The answer of a valid dry run (Huawei: 202 with `SYS.0202`). */
export const DRY_RUN_CODE = 'SYS.0202';

export interface ErrorBody {
  request_id: string;
  error_code: string;
  error_msg: string;
}
