/**
 * Agent configuration: a YAML/JSON file (default /etc/secgroup/agent.yaml),
 * then environment variables, then command-line flags, each overriding the
 * one before; validated with zod. docs/agent-config.md lists every key.
 */
import { z } from 'zod';
import { ValidationError } from '../lib/errors.js';
import { validCron } from '../lib/scheduler.js';
import { MAX_MESSAGE_BYTES } from '../protocol/messages.js';
import { idSchema, zodIssues } from '../policy/schema.js';
import { DEFAULT_FLOW_MARK_MASK, portSpecSchema, type ControllerEndpoint, type PlatformOptions } from '../policy/platform.js';
import { parseFlowMask } from '../nft/flow-mark.js';

export const DEFAULT_CONFIG_PATH = '/etc/secgroup/agent.yaml';
export const DEFAULT_STATE_DIR = '/var/lib/secgroup';
/** where the packages install the agent's native parts (secgroup-nftwatch, secgroup-memtrim.node): the .deb's layout, then scripts/install.sh's */
export const AGENT_LIB_DIRS = ['/usr/lib/secgroup', '/usr/local/lib/secgroup'] as const;
/** where the packages install secgroup-nftwatch */
export const DRIFT_LISTENER_PATHS = AGENT_LIB_DIRS.map((d) => `${d}/secgroup-nftwatch`);

const listenSchema = z.string().regex(/^(?:\[[0-9a-fA-F:.]+\]|[0-9.]+|localhost):\d{1,5}$/, { message: 'must be ADDRESS:PORT, e.g. 127.0.0.1:9469 ([::1]:9469 for IPv6)' });

const controllerUrl = z.string().refine((s) => /^wss?:\/\/[^/]+/.test(s) && URL.canParse(s), { message: 'must be a wss:// (or ws:// for tests) URL' });

const controllerSchema = z.strictObject({
  /** one controller; `urls` for several (replicas), tried in order when a connection is lost */
  url: controllerUrl.optional(),
  urls: z.array(controllerUrl).min(1).max(64).optional(),
  token: z.string().min(1).optional(),
  token_file: z.string().min(1).optional(),
  ca_file: z.string().min(1).optional(),
  ping_interval_ms: z.int().min(1000).default(15_000),
  pong_timeout_ms: z.int().min(500).default(10_000),
  handshake_timeout_ms: z.int().min(500).default(10_000),
  reconnect_initial_ms: z.int().min(10).default(500),
  reconnect_max_ms: z.int().min(100).default(30_000),
  max_message_bytes: z.int().min(1024).max(MAX_MESSAGE_BYTES).default(MAX_MESSAGE_BYTES),
});

/** A 32-bit mask given as a number or as "0x..." text (flow-mark.ts parseFlowMask). */
export const flowMarkMaskSchema = z.union([z.int(), z.string()]).transform((x, ctx) => {
  const r = parseFlowMask(x);
  if (r.ok) return r.mask;
  ctx.addIssue({ code: 'custom', message: r.error });
  return z.NEVER;
});

const platformSchema = z.strictObject({
  loopback: z.boolean().default(true),
  icmpv6_nd: z.boolean().default(true),
  dhcp: z.boolean().default(true),
  controller_rule: z.boolean().default(true),
  failsafe_ingress: z.array(portSpecSchema).default([]),
  failsafe_egress: z.array(portSpecSchema).default([]),
  /**
   * the conntrack mark bits of the flow mark (nft/flow-mark.ts): an integer or a hex string
   * ("0xffff0000"), one run of at least 8 bits; 0 turns it off
   */
  flow_mark_mask: flowMarkMaskSchema.default(DEFAULT_FLOW_MARK_MASK),
});

export const agentConfigSchema = z.strictObject({
  instance_id: idSchema,
  state_dir: z.string().min(1).default(DEFAULT_STATE_DIR),
  table: z
    .string()
    .regex(/^[a-zA-Z][a-zA-Z0-9_]{0,31}$/, { message: 'must be a letter followed by letters, digits or "_" (at most 32)' })
    .default('secgroup'),
  log_level: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
  controller: controllerSchema.optional(),
  platform: platformSchema.default({ loopback: true, icmpv6_nd: true, dhcp: true, controller_rule: true, failsafe_ingress: [], failsafe_egress: [], flow_mark_mask: DEFAULT_FLOW_MARK_MASK }),
  drift_schedule: z.string().refine(validCron, { message: 'must be a cron expression, e.g. "*/30 * * * * *" (every 30 s)' }).default('*/30 * * * * *'),
  /** follow the change events of our table and repair a change to it as it happens (src/agent/drift-monitor.ts) */
  drift_monitor: z.boolean().default(true),
  /**
   * the drift monitor's listener of change events (native/secgroup-nftwatch.c): an absolute path,
   * `auto` (the first of DRIFT_LISTENER_PATHS that exists) or '' (`nft monitor` only). When it is
   * absent or cannot start: `nft monitor`, with one warning line
   */
  drift_listener: z.union([z.string().regex(/^\//), z.literal('auto'), z.literal('')], { message: 'must be an absolute path, "auto" or "" (nft monitor only)' }).default('auto'),
  /**
   * secgroup-nftload (native/secgroup-nftload.c), which sends a full apply (the table replaced, or
   * reloaded in place) as the netlink batch the agent encodes (nft/netlink-batch.ts) instead of `nft -f`
   * of its text: an absolute path (with any nft), `auto` (secgroup-nftload next to the program, then in
   * the packages' directories; only with the nft the batch is checked against, LOADER_NFT_VERSIONS) or ''
   * (`nft -f` only). Missing, failing, or a table it does not encode: `nft -f`, and a log line
   */
  nft_loader: z.union([z.string().regex(/^\//), z.literal('auto'), z.literal('')], { message: 'must be an absolute path, "auto" or "" (nft -f only)' }).default('auto'),
  retry_initial_ms: z.int().min(10).default(1000),
  retry_max_ms: z.int().min(100).default(60_000),
  incremental: z.boolean().default(true),
  /** an nft call that outlives this is killed and fails with NFT_TIMEOUT (the apply is retried with backoff) */
  nft_timeout_ms: z.int().min(100).default(60_000),
  http_listen: z.union([listenSchema, z.literal(''), z.null()]).default('127.0.0.1:9469'),
  ports_interval_ms: z.int().min(0).default(60_000),
  /**
   * Under systemd (Type=notify): with no last known good policy, how long the agent waits for the
   * controller's first policy before it reports ready anyway (unprotected, said in STATUS=)
   */
  ready_wait_ms: z.int().min(0).default(10_000),
});
export type AgentConfig = z.output<typeof agentConfigSchema>;

/** The listener `drift_listener` names: the path, `auto`'s first existing candidate (else the first, which fails and falls back), or null for `nft monitor` only. */
export function driftListenerPath(setting: string, exists: (path: string) => boolean): string | null {
  if (setting === '') return null;
  if (setting !== 'auto') return setting;
  return DRIFT_LISTENER_PATHS.find(exists) ?? DRIFT_LISTENER_PATHS[0]!;
}

/** Values from the environment (SECGROUP_*), as a partial config document. */
export function configFromEnv(env: Readonly<Record<string, string | undefined>>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  const ctl: Record<string, unknown> = {};
  const set = (o: Record<string, unknown>, key: string, v: string | undefined) => {
    if (v !== undefined && v !== '') o[key] = v;
  };
  set(out, 'instance_id', env.SECGROUP_INSTANCE_ID);
  set(out, 'state_dir', env.SECGROUP_STATE_DIR);
  set(out, 'log_level', env.SECGROUP_LOG_LEVEL);
  set(out, 'drift_schedule', env.SECGROUP_DRIFT_SCHEDULE);
  set(out, 'http_listen', env.SECGROUP_HTTP_LISTEN);
  set(out, 'table', env.SECGROUP_TABLE);
  setControllerUrl(ctl, env.SECGROUP_CONTROLLER_URL);
  set(ctl, 'token', env.SECGROUP_TOKEN);
  set(ctl, 'token_file', env.SECGROUP_TOKEN_FILE);
  set(ctl, 'ca_file', env.SECGROUP_CA_FILE);
  if (Object.keys(ctl).length) out.controller = ctl;
  return out;
}

export interface ConfigFlags {
  instanceId?: string;
  stateDir?: string;
  logLevel?: string;
  controller?: string;
  tokenFile?: string;
  caFile?: string;
  driftSchedule?: string;
  httpListen?: string;
  table?: string;
}

export function configFromFlags(f: ConfigFlags): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  const ctl: Record<string, unknown> = {};
  if (f.instanceId !== undefined) out.instance_id = f.instanceId;
  if (f.stateDir !== undefined) out.state_dir = f.stateDir;
  if (f.logLevel !== undefined) out.log_level = f.logLevel;
  if (f.driftSchedule !== undefined) out.drift_schedule = f.driftSchedule;
  if (f.httpListen !== undefined) out.http_listen = f.httpListen;
  if (f.table !== undefined) out.table = f.table;
  setControllerUrl(ctl, f.controller);
  if (f.tokenFile !== undefined) ctl.token_file = f.tokenFile;
  if (f.caFile !== undefined) ctl.ca_file = f.caFile;
  if (Object.keys(ctl).length) out.controller = ctl;
  return out;
}

function isPlainObject(x: unknown): x is Record<string, unknown> {
  return typeof x === 'object' && x !== null && !Array.isArray(x);
}

function merge(base: unknown, over: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = isPlainObject(base) ? { ...base } : {};
  for (const [k, v] of Object.entries(over)) out[k] = isPlainObject(v) && isPlainObject(out[k]) ? merge(out[k], v) : v;
  return out;
}

/** `over` on top of `base`; controllers given by `over` (url or urls) replace those of `base` rather than adding to them. */
function layer(base: unknown, over: Record<string, unknown>): Record<string, unknown> {
  const o = over.controller;
  if (isPlainObject(base) && isPlainObject(base.controller) && isPlainObject(o) && (o.url !== undefined || o.urls !== undefined)) {
    const { url: _url, urls: _urls, ...rest } = base.controller;
    return merge({ ...base, controller: rest }, over);
  }
  return merge(base, over);
}

/**
 * The effective configuration: `file` (parsed document or null), overridden by
 * env, overridden by flags. Throws ValidationError CONFIG_INVALID listing every problem.
 */
export function resolveConfig(file: unknown, env: Readonly<Record<string, string | undefined>>, flags: ConfigFlags = {}): AgentConfig {
  if (file !== null && file !== undefined && !isPlainObject(file)) {
    throw new ValidationError('CONFIG_INVALID', 'agent configuration', [{ path: '', message: 'the configuration file must hold a mapping of keys' }]);
  }
  const doc = layer(layer(file ?? {}, configFromEnv(env)), configFromFlags(flags));
  const r = agentConfigSchema.safeParse(doc);
  if (!r.success) throw new ValidationError('CONFIG_INVALID', 'agent configuration', zodIssues(r.error, doc));
  const c = r.data;
  if (c.controller && c.controller.token !== undefined && c.controller.token_file !== undefined) {
    throw new ValidationError('CONFIG_INVALID', 'agent configuration', [{ path: 'controller.token', message: 'set controller.token or controller.token_file, not both' }]);
  }
  if (c.controller && (c.controller.url === undefined) === (c.controller.urls === undefined)) {
    throw new ValidationError('CONFIG_INVALID', 'agent configuration', [{ path: 'controller.url', message: 'set exactly one of controller.url (one controller) and controller.urls (several)' }]);
  }
  return c;
}

/** The configured controllers, in order: `controller.urls`, or the one `controller.url`. */
export function controllerUrls(c: NonNullable<AgentConfig['controller']>): string[] {
  return [...new Set(c.urls ?? (c.url !== undefined ? [c.url] : []))];
}

/** A URL option from the environment or a flag: several separated by commas are `urls`. */
function setControllerUrl(ctl: Record<string, unknown>, v: string | undefined): void {
  if (v === undefined || v === '') return;
  const list = v.split(',').map((u) => u.trim()).filter(Boolean);
  if (list.length > 1) ctl.urls = list;
  else ctl.url = v;
}

/** Host and port of the controller URL; `host` without IPv6 brackets. */
export function controllerHostPort(url: string): { host: string; port: number } {
  const u = new URL(url);
  const host = u.hostname.replace(/^\[|\]$/g, '');
  const port = u.port ? Number(u.port) : u.protocol === 'wss:' ? 443 : 80;
  return { host, port };
}

/** The platform options (SEMANTICS section 4) for this configuration and the controller's resolved endpoint. */
export function platformOptions(config: AgentConfig, controller: ControllerEndpoint | null): PlatformOptions {
  const p = config.platform;
  return {
    loopback: p.loopback,
    icmpv6Nd: p.icmpv6_nd,
    dhcp: p.dhcp,
    controller: p.controller_rule ? controller : null,
    failsafeIngress: p.failsafe_ingress,
    failsafeEgress: p.failsafe_egress,
    flowMarkMask: p.flow_mark_mask,
  };
}
