/**
 * API errors: each kind has one HTTP status and one stable `error_code`
 * (the catalogue in docs/api.md). The body is Huawei-shaped:
 * `{"request_id", "error_code", "error_msg"}`.
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
  notFound: { status: 404, apiCode: 'SG.0004', code: 'NOT_FOUND', what: 'no such resource (or path) in this project' },
  inUse: { status: 409, apiCode: 'SG.0005', code: 'CONFLICT', what: 'the resource is referenced, or is the default group' },
  duplicate: { status: 409, apiCode: 'SG.0006', code: 'CONFLICT', what: 'the rule duplicates an existing rule of the group' },
  ruleConflict: { status: 409, apiCode: 'SG.0007', code: 'CONFLICT', what: 'the rule differs from an existing rule only in its action' },
  quota: { status: 409, apiCode: 'SG.0008', code: 'QUOTA', what: 'a quota would be exceeded' },
  exists: { status: 409, apiCode: 'SG.0009', code: 'CONFLICT', what: 'a resource with this id already exists' },
  tooLarge: { status: 413, apiCode: 'SG.0010', code: 'REQUEST_INVALID', what: 'the request body is too large' },
  tooManyRequests: { status: 429, apiCode: 'SG.0011', code: 'RATE_LIMITED', what: 'too many failed authentications from this address; retry after `Retry-After` seconds' },
  methodNotAllowed: { status: 405, apiCode: 'SG.0012', code: 'REQUEST_INVALID', what: 'the path exists, but not with this method (`Allow` lists the methods)' },
  unsupportedMediaType: { status: 415, apiCode: 'SG.0013', code: 'REQUEST_INVALID', what: 'the body is not `application/json`' },
  uriTooLong: { status: 414, apiCode: 'SG.0014', code: 'REQUEST_INVALID', what: 'a path parameter is longer than any id can be' },
  headersTooLarge: { status: 431, apiCode: 'SG.0015', code: 'REQUEST_INVALID', what: 'the request headers are too large' },
  timeout: { status: 408, apiCode: 'SG.0016', code: 'REQUEST_INVALID', what: 'the request (headers or body) was not received in time' },
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
  static invalid(issues: readonly Issue[]): ApiError {
    return new ApiError('invalid', issues.map(formatIssue).join('; '), { details: issues });
  }

  static notFound(what: string, id: string): ApiError {
    return new ApiError('notFound', `${what} ${JSON.stringify(id)} not found`);
  }
}

export interface ErrorBody {
  request_id: string;
  error_code: string;
  error_msg: string;
}
