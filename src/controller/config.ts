/**
 * The controller's configuration file (YAML or JSON), documented key by key
 * in docs/controller-config.md. Unknown keys are rejected.
 */
import { readFile } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';
import { z } from 'zod';
import { ValidationError, SecgroupError, type Issue } from '../lib/errors.js';
import { isYamlPath, parseDocumentText } from '../policy/load.js';
import { ID_PATTERN, zodIssues } from '../policy/schema.js';
import { DEFAULT_QUOTAS } from './domain.js';
import { HTTP_LIMIT_DEFAULTS as H } from './limits.js';

const quota = (def: number) => z.int().min(1).max(1_000_000).default(def);

const projectsSchema = z
  .array(z.union([z.literal('*'), z.string().regex(ID_PATTERN)]))
  .min(1)
  .default(['*']);

const apiTokenSchema = z
  .strictObject({
    name: z.string().min(1).max(64),
    token: z.string().min(16, { message: 'must be at least 16 characters' }).optional(),
    token_sha256: z
      .string()
      .regex(/^[0-9a-f]{64}$/, { message: 'must be 64 lower-case hex digits (sha256sum of the token)' })
      .optional(),
    projects: projectsSchema,
  })
  .refine((t) => (t.token === undefined) !== (t.token_sha256 === undefined), { message: 'set exactly one of token and token_sha256' });

/** An AK/SK pair as the Huawei SDKs use it (src/controller/api/aksk.ts); the secret inline or in a file read at start. */
const accessKeySchema = z
  .strictObject({
    name: z.string().min(1).max(64),
    access_key: z.string().regex(/^[A-Za-z0-9._-]{8,128}$/, { message: 'must be 8-128 characters of letters, digits, ".", "_" or "-"' }),
    // a custom check: the generic length messages would quote the secret
    secret_key: z
      .string()
      .refine((v) => v.length >= 16 && v.length <= 1024, { message: 'must be 16-1024 characters (the value is not shown)' })
      .optional(),
    secret_key_file: z.string().min(1).optional(),
    projects: projectsSchema,
  })
  .refine((k) => (k.secret_key === undefined) !== (k.secret_key_file === undefined), { message: 'set exactly one of secret_key and secret_key_file' });

export const controllerConfigSchema = z.strictObject({
  listen: z
    .strictObject({
      host: z.string().min(1).default('127.0.0.1'),
      port: z.int().min(0).max(65535).default(8443),
    })
    .prefault({}),
  data_dir: z.string().min(1).default('/var/lib/secgroup-controller'),
  tls: z.strictObject({ cert: z.string().min(1), key: z.string().min(1) }).nullable().default(null),
  api: z
    .strictObject({
      tokens: z.array(apiTokenSchema).min(1, { message: 'at least one API token is needed (the API is closed otherwise)' }),
      access_keys: z
        .array(accessKeySchema)
        .default([])
        .superRefine((keys, ctx) => {
          const seen = new Map<string, number>();
          keys.forEach((k, i) => {
            const first = seen.get(k.access_key);
            if (first !== undefined) ctx.addIssue({ code: 'custom', path: [i, 'access_key'], message: `the same access key as access_keys[${first}]` });
            else seen.set(k.access_key, i);
          });
        }),
      max_body_bytes: z.int().min(1024).max(64 * 1024 * 1024).default(1024 * 1024),
    }),
  http: z
    .strictObject({
      request_timeout_ms: z.int().min(100).max(3_600_000).default(H.request_timeout_ms),
      headers_timeout_ms: z.int().min(100).max(3_600_000).default(H.headers_timeout_ms),
      keep_alive_timeout_ms: z.int().min(100).max(3_600_000).default(H.keep_alive_timeout_ms),
      max_connections_per_source: z.int().min(1).max(1_000_000).default(H.max_connections_per_source),
      max_connections: z.int().min(1).max(1_000_000).default(H.max_connections),
      auth_failures_per_minute: z.number().positive().max(1_000_000).default(H.auth_failures_per_minute),
      auth_failure_burst: z.int().min(1).max(1_000_000).default(H.auth_failure_burst),
    })
    .refine((h) => h.headers_timeout_ms <= h.request_timeout_ms, {
      message: 'headers_timeout_ms must not be larger than request_timeout_ms',
      path: ['headers_timeout_ms'],
    })
    .refine((h) => h.max_connections_per_source <= h.max_connections, {
      message: 'max_connections_per_source must not be larger than max_connections',
      path: ['max_connections_per_source'],
    })
    .prefault({}),
  quotas: z
    .strictObject({
      rules_per_group: quota(DEFAULT_QUOTAS.rules_per_group),
      groups_per_instance: quota(DEFAULT_QUOTAS.groups_per_instance),
      entries_per_address_group: quota(DEFAULT_QUOTAS.entries_per_address_group),
      security_groups_per_project: quota(DEFAULT_QUOTAS.security_groups_per_project),
      address_groups_per_project: quota(DEFAULT_QUOTAS.address_groups_per_project),
      instances_per_project: quota(DEFAULT_QUOTAS.instances_per_project),
    })
    .prefault({}),
  agents: z
    .strictObject({
      heartbeat_interval_ms: z.int().min(100).default(15_000),
      hello_timeout_ms: z.int().min(100).default(10_000),
      max_message_bytes: z.int().min(1024).max(64 * 1024 * 1024).default(4 * 1024 * 1024),
      rate_burst: z.int().min(1).default(30),
      rate_per_second: z.number().positive().default(5),
      deltas: z.boolean().default(true),
      max_unsent_bytes: z.int().min(1).max(1024 * 1024 * 1024).default(64 * 1024 * 1024),
      /** new agent connections accepted per second (a token bucket of one second's worth); the excess gets 503 + Retry-After */
      accept_rate_per_s: z.number().positive().max(1_000_000).default(200),
    })
    .prefault({}),
  store: z
    .strictObject({
      driver: z.enum(['sqlite', 'postgres']).default('sqlite'),
      synchronous: z.enum(['FULL', 'NORMAL']).default('FULL'),
      // custom checks: the generic messages would quote the URL, and a URL may hold a password
      url: z
        .string()
        .refine((v) => /^postgres(ql)?:\/\/./.test(v), { message: 'must be a postgres:// or postgresql:// URL (the value is not shown)' })
        .refine((v) => !hasUrlPassword(v), { message: 'must not contain a password: put it in store.password_file or the environment variable SECGROUP_STORE_PASSWORD (the value is not shown)' })
        .optional(),
      password_file: z.string().min(1).optional(),
      pool_size: z.int().min(1).max(1000).default(10),
      // postgres: a stuck statement (a lock held by a long transaction, a slow disk) fails with 503 instead of holding a pool connection
      statement_timeout_ms: z.int().min(0).max(3_600_000).default(15_000),
      lock_timeout_ms: z.int().min(0).max(3_600_000).default(5_000),
      /** postgres: longest wait for a connection (a new one, or a free one of the pool) */
      connect_timeout_ms: z.int().min(100).max(600_000).default(5_000),
    })
    .refine((st) => st.driver !== 'postgres' || st.url !== undefined, { message: 'store.driver postgres needs store.url', path: ['url'] })
    .refine((st) => st.driver === 'postgres' || (st.url === undefined && st.password_file === undefined), { message: 'store.url and store.password_file are for store.driver postgres', path: ['driver'] })
    .prefault({}),
  audit: z.strictObject({ retention_days: z.int().min(1).max(36_500).default(90) }).prefault({}),
  log: z.strictObject({ level: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info') }).prefault({}),
  metrics: z.strictObject({ process_metrics: z.boolean().default(true) }).prefault({}),
});

/** Does a postgres URL carry a password (`user:password@`)? Unparseable: treated as yes (refused, never echoed). */
export function hasUrlPassword(url: string): boolean {
  try {
    return new URL(url).password !== '';
  } catch {
    return true;
  }
}

export type ControllerConfig = z.output<typeof controllerConfigSchema>;
export type ControllerConfigInput = z.input<typeof controllerConfigSchema>;

/** Validates a parsed configuration; throws ValidationError CONFIG_INVALID listing every problem. */
export function parseControllerConfig(input: unknown): ControllerConfig {
  const r = controllerConfigSchema.safeParse(input ?? {});
  if (!r.success) {
    const issues: Issue[] = zodIssues(r.error, input);
    throw new ValidationError('CONFIG_INVALID', 'controller configuration', issues);
  }
  return r.data;
}

/** Reads a YAML/JSON configuration file; relative paths in it are relative to the file's directory. */
export async function loadControllerConfig(path: string): Promise<ControllerConfig> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (e) {
    throw new SecgroupError('CONFIG_INVALID', `cannot read controller configuration ${path}: ${(e as Error).message}`, { cause: e });
  }
  const cfg = parseControllerConfig(parseDocumentText(text, isYamlPath(path), path));
  const base = dirname(resolve(path));
  return {
    ...cfg,
    data_dir: resolve(base, cfg.data_dir),
    tls: cfg.tls ? { cert: resolve(base, cfg.tls.cert), key: resolve(base, cfg.tls.key) } : null,
    store: cfg.store.password_file === undefined ? cfg.store : { ...cfg.store, password_file: resolve(base, cfg.store.password_file) },
    api: { ...cfg.api, access_keys: cfg.api.access_keys.map((k) => (k.secret_key_file === undefined ? k : { ...k, secret_key_file: resolve(base, k.secret_key_file) })) },
  };
}
