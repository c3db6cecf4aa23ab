/**
 * Agent <-> controller messages over WebSocket, defined once and validated on
 * both sides. Every frame is one JSON text message with a `type`. See
 * docs/protocol.md for the conversation.
 *
 * Connection: the agent opens `GET {controller}/v1/agent` (ws:// or wss://)
 * with `Authorization: Bearer <instance token>`; the controller derives the
 * instance from the token. Liveness uses WebSocket ping/pong frames.
 */
import { z } from 'zod';
import { ID_PATTERN } from '../policy/schema.js';

export const PROTOCOL_VERSION = 1;
export const AGENT_PATH = '/v1/agent';
/** Largest frame either side accepts (a policy with 100k+ members fits). */
export const MAX_MESSAGE_BYTES = 64 * 1024 * 1024;

/**
 * The largest revision a controller hands out. The controller's counter
 * advances by one per compiled document and never by an outside value, so
 * this bound (2^48, ~2.8e14: years at a million documents a second) is never
 * reached in practice; it keeps every revision far inside the range where a
 * JSON number is an exact integer (2^53 - 1), so `revision + 1` is always
 * exact. A store that finds a revision above it renumbers (store.ts).
 */
export const MAX_REVISION = 2 ** 48;

/**
 * A revision field on the wire: a non-negative safe integer. Revisions above
 * MAX_REVISION but still safe are accepted here (an agent that applied one
 * handed out before the bound existed must still be able to say so and
 * converge); anything beyond 2^53 - 1 cannot be told apart from its
 * neighbours and is refused.
 */
export const revisionSchema = z
  // z.int() accepts safe integers only: past 2^53 - 1 (and for fractions) this message
  .int({ error: `a revision is an integer from 0 to ${Number.MAX_SAFE_INTEGER} (2^53 - 1)` })
  .min(0, { error: 'a revision is never negative' });

// eslint-disable-next-line no-control-regex -- matching control characters is the point
const NO_CONTROL_CHARS = /^[^\u0000-\u001f\u007f]*$/;
/** Free text an agent sends that the controller stores or shows: bounded and without control characters. */
const text = (max: number) => z.string().max(max).regex(NO_CONTROL_CHARS, { error: 'must not contain control characters' });

/** An error code: a short token (`NFT_FAILED`, `POLICY_TOO_LARGE`). */
const ERROR_CODE = /^[A-Za-z0-9_.:-]{1,64}$/;
const errorInfo = z.strictObject({ code: z.string().regex(ERROR_CODE, { error: 'an error code is 1-64 characters of [A-Za-z0-9_.:-]' }), message: z.string().max(4096) });

/** An ack's `duration_ms` is at most a day: a longer figure is not the duration of one sync. */
export const MAX_ACK_DURATION_MS = 86_400_000;

/** Bounds of a port report (the agent clips to them, see `boundPortReport`). */
export const PORT_REPORT_LIMITS = {
  /** entries (protocol, port, family): more than any host listens on plus what its rules list one by one */
  entries: 4096,
  /** distinct (address, process) listeners of one entry */
  listeners: 64,
  /** rules named in `allowed_by` or `denied_by` of one entry */
  rules: 256,
} as const;

// ---- port status (SEMANTICS section 7) ----

export const PORT_STATUSES = ['open', 'blocked', 'local-only', 'not-listening'] as const;
export type PortStatus = (typeof PORT_STATUSES)[number];

export const ruleRefSchema = z.strictObject({
  group_id: z.string().regex(ID_PATTERN, { error: 'a group id is 1-64 characters of [A-Za-z0-9._:-]' }),
  rule_id: z.string().regex(ID_PATTERN, { error: 'a rule id is 1-64 characters of [A-Za-z0-9._:-]' }),
  /** the peers the rule allows, as text: "0.0.0.0/0", "group default", "address group ag-office" */
  peers: text(256),
});

export const portEntrySchema = z.strictObject({
  protocol: z.enum(['tcp', 'udp']),
  port: z.int().min(0).max(65535),
  /** family of the listener or of the rule; null = both */
  family: z.union([z.literal(4), z.literal(6), z.null()]),
  status: z.enum(PORT_STATUSES),
  /** listening sockets, e.g. "0.0.0.0", "[::]", "127.0.0.1" */
  listeners: z.array(z.strictObject({ address: text(64), process: text(256).nullable() })).max(PORT_REPORT_LIMITS.listeners),
  /** ingress allow rules that open this port */
  allowed_by: z.array(ruleRefSchema).max(PORT_REPORT_LIMITS.rules),
  /** deny rules that shadow an allow rule for the same port */
  denied_by: z.array(ruleRefSchema).max(PORT_REPORT_LIMITS.rules),
});
export type PortEntry = z.output<typeof portEntrySchema>;

export const portReportSchema = z.strictObject({
  /** policy revision the report was computed against (null: no policy applied) */
  revision: revisionSchema.nullable(),
  /** which tool read the sockets */
  source: z.enum(['ss', 'netstat', 'proc']),
  /** the agent's clock (ISO 8601 UTC); shown as the agent said, never used for ordering or expiry */
  generated_at: z.iso.datetime({ error: 'generated_at must be an ISO 8601 UTC time such as 2024-05-01T12:00:00.000Z' }),
  entries: z.array(portEntrySchema).max(PORT_REPORT_LIMITS.entries),
});
export type PortReport = z.output<typeof portReportSchema>;

// ---- agent -> controller ----

export const helloSchema = z.strictObject({
  type: z.literal('hello'),
  protocol: z.int(),
  instance_id: z.string().max(64),
  agent_version: text(64),
  /** revision currently enforced on the host (null: none); never trusted above what the controller handed out */
  applied_revision: revisionSchema.nullable(),
  hostname: text(255).optional(),
});

export const ackSchema = z.strictObject({
  type: z.literal('ack'),
  revision: revisionSchema,
  /** applied: enforced; failed: valid but nft failed (previous ruleset kept); rejected: invalid document (nothing applied) */
  status: z.enum(['applied', 'failed', 'rejected']),
  duration_ms: z.number().min(0).max(MAX_ACK_DURATION_MS).optional(),
  digest: z.string().regex(/^[0-9a-f]{1,64}$/, { error: 'a digest is 1-64 lowercase hex digits' }).optional(),
  error: errorInfo.optional(),
});

export const portsMessageSchema = z.strictObject({ type: z.literal('ports'), report: portReportSchema });

/** The agent cannot use a `policy_delta` (its newest document is not the delta's base): the controller answers with a full `policy`. */
export const resyncSchema = z.strictObject({
  type: z.literal('resync'),
  /** the newest revision the agent holds (null: none) */
  have_revision: revisionSchema.nullable(),
  reason: text(512),
});

export const agentMessageSchema = z.discriminatedUnion('type', [helloSchema, ackSchema, portsMessageSchema, resyncSchema]);
export type AgentMessage = z.output<typeof agentMessageSchema>;
export type HelloMessage = z.output<typeof helloSchema>;
export type AckMessage = z.output<typeof ackSchema>;
export type PortsMessage = z.output<typeof portsMessageSchema>;
export type ResyncMessage = z.output<typeof resyncSchema>;

// ---- controller -> agent ----

export const welcomeSchema = z.strictObject({
  type: z.literal('welcome'),
  protocol: z.int(),
  instance_id: z.string(),
  /**
   * the desired revision; the controller sends a `policy` right after if it differs from the agent's. Lower than
   * the agent's (a restored database): the agent accepts that revision on this connection (docs/protocol.md)
   */
  desired_revision: revisionSchema.nullable(),
});

/** A full policy snapshot. `policy` is validated by the agent with the policy schema (unknown there = rejected). */
export const policyMessageSchema = z.strictObject({ type: z.literal('policy'), policy: z.unknown() });

/**
 * A membership change against the last document the controller sent on this
 * connection: the document of `base_revision` with `revision` and the listed
 * `group_members` changes, everything else equal. Sent only when nothing but
 * remote-group members changed. An agent whose newest document is not
 * `base_revision` (it missed or rejected it) answers `resync` and gets a
 * full `policy`. Addresses are validated by the agent like any document.
 */
export const policyDeltaSchema = z.strictObject({
  type: z.literal('policy_delta'),
  base_revision: revisionSchema,
  revision: revisionSchema,
  group_members: z.record(z.string(), z.strictObject({ add: z.array(z.string()), remove: z.array(z.string()) })),
});

export const errorMessageSchema = z.strictObject({ type: z.literal('error'), error: errorInfo });

export const controllerMessageSchema = z.discriminatedUnion('type', [welcomeSchema, policyMessageSchema, policyDeltaSchema, errorMessageSchema]);
export type ControllerMessage = z.output<typeof controllerMessageSchema>;
export type WelcomeMessage = z.output<typeof welcomeSchema>;
export type PolicyMessage = z.output<typeof policyMessageSchema>;
export type PolicyDeltaMessage = z.output<typeof policyDeltaSchema>;

/**
 * Parses one frame; returns null (and the reason) for anything that is not a
 * valid message. `parse` reads the JSON (the agent's reads a policy's long
 * member lists straight into packed sets: policy/packed-members.ts).
 */
export function decode<T>(schema: z.ZodType<T>, data: string, parse: (text: string) => unknown = JSON.parse): { ok: true; message: T } | { ok: false; error: string } {
  let json: unknown;
  try {
    json = parse(data);
  } catch {
    return { ok: false, error: 'frame is not JSON' };
  }
  const r = schema.safeParse(json);
  if (!r.success) return { ok: false, error: r.error.issues.map((i) => `${i.path.join('.') || '(message)'}: ${i.message}`).join('; ') };
  return { ok: true, message: r.data };
}

/** `text` made to fit `text(max)`: control characters become `?`, then cut to `max`. */
export function boundText(t: string, max: number): string {
  // eslint-disable-next-line no-control-regex -- replacing control characters is the point
  return t.replace(/[\u0000-\u001f\u007f]/g, '?').slice(0, max);
}

/**
 * The report made to fit what the controller accepts (PORT_REPORT_LIMITS;
 * process names and addresses bounded and without control characters: a
 * process may name itself anything), and how many entries, listeners or rule
 * references were left out. Entries over the limit are taken from the
 * `not-listening` ones last in the report's order (a policy of thousands of
 * single-port rules names more ports than fit; what listens is what
 * matters), the order kept. Pure; an in-bounds report comes back as is.
 */
export function boundPortReport(report: PortReport): { report: PortReport; clipped: number } {
  const L = PORT_REPORT_LIMITS;
  let clipped = Math.max(0, report.entries.length - L.entries);
  let changed = clipped > 0;
  let kept = report.entries;
  if (clipped) {
    let room = L.entries - report.entries.filter((e) => e.status !== 'not-listening').length;
    kept = report.entries.filter((e) => e.status !== 'not-listening' || room-- > 0).slice(0, L.entries);
  }
  const entries = kept.map((e) => {
    const over = Math.max(0, e.listeners.length - L.listeners) + Math.max(0, e.allowed_by.length - L.rules) + Math.max(0, e.denied_by.length - L.rules);
    const listeners = e.listeners.slice(0, L.listeners).map((l) => {
      const address = boundText(l.address, 64);
      const process = l.process === null ? null : boundText(l.process, 256);
      return address === l.address && process === l.process ? l : { address, process };
    });
    const ref = (r: PortEntry['allowed_by'][number]) => (boundText(r.peers, 256) === r.peers ? r : { ...r, peers: boundText(r.peers, 256) });
    const allowed_by = e.allowed_by.slice(0, L.rules).map(ref);
    const denied_by = e.denied_by.slice(0, L.rules).map(ref);
    const same = (a: readonly unknown[], b: readonly unknown[]) => a.length === b.length && a.every((x, i) => x === b[i]);
    if (!over && same(listeners, e.listeners) && same(allowed_by, e.allowed_by) && same(denied_by, e.denied_by)) return e;
    clipped += over;
    changed = true;
    return { ...e, listeners, allowed_by, denied_by };
  });
  return changed ? { report: { ...report, entries }, clipped } : { report, clipped: 0 };
}
