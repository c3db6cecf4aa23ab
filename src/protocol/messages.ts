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

export const PROTOCOL_VERSION = 1;
export const AGENT_PATH = '/v1/agent';
/** Largest frame either side accepts (a policy with 100k+ members fits). */
export const MAX_MESSAGE_BYTES = 64 * 1024 * 1024;

const errorInfo = z.strictObject({ code: z.string().max(64), message: z.string().max(4096) });

// ---- port status (SEMANTICS section 7) ----

export const PORT_STATUSES = ['open', 'blocked', 'local-only', 'not-listening'] as const;
export type PortStatus = (typeof PORT_STATUSES)[number];

export const ruleRefSchema = z.strictObject({
  group_id: z.string(),
  rule_id: z.string(),
  /** the peers the rule allows, as text: "0.0.0.0/0", "group default", "address group ag-office" */
  peers: z.string(),
});

export const portEntrySchema = z.strictObject({
  protocol: z.enum(['tcp', 'udp']),
  port: z.int().min(0).max(65535),
  /** family of the listener or of the rule; null = both */
  family: z.union([z.literal(4), z.literal(6), z.null()]),
  status: z.enum(PORT_STATUSES),
  /** listening sockets, e.g. "0.0.0.0", "[::]", "127.0.0.1" */
  listeners: z.array(z.strictObject({ address: z.string(), process: z.string().nullable() })),
  /** ingress allow rules that open this port */
  allowed_by: z.array(ruleRefSchema),
  /** deny rules that shadow an allow rule for the same port */
  denied_by: z.array(ruleRefSchema),
});
export type PortEntry = z.output<typeof portEntrySchema>;

export const portReportSchema = z.strictObject({
  /** policy revision the report was computed against (null: no policy applied) */
  revision: z.int().min(0).nullable(),
  /** which tool read the sockets */
  source: z.enum(['ss', 'netstat', 'proc']),
  generated_at: z.string(),
  entries: z.array(portEntrySchema),
});
export type PortReport = z.output<typeof portReportSchema>;

// ---- agent -> controller ----

export const helloSchema = z.strictObject({
  type: z.literal('hello'),
  protocol: z.int(),
  instance_id: z.string(),
  agent_version: z.string().max(64),
  /** revision currently enforced on the host (null: none) */
  applied_revision: z.int().min(0).nullable(),
  hostname: z.string().max(255).optional(),
});

export const ackSchema = z.strictObject({
  type: z.literal('ack'),
  revision: z.int().min(0),
  /** applied: enforced; failed: valid but nft failed (previous ruleset kept); rejected: invalid document (nothing applied) */
  status: z.enum(['applied', 'failed', 'rejected']),
  duration_ms: z.number().min(0).optional(),
  digest: z.string().max(64).optional(),
  error: errorInfo.optional(),
});

export const portsMessageSchema = z.strictObject({ type: z.literal('ports'), report: portReportSchema });

/** The agent cannot use a `policy_delta` (its newest document is not the delta's base): the controller answers with a full `policy`. */
export const resyncSchema = z.strictObject({
  type: z.literal('resync'),
  /** the newest revision the agent holds (null: none) */
  have_revision: z.int().min(0).nullable(),
  reason: z.string().max(512),
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
  /** the desired revision; the controller sends a `policy` right after if it differs from the agent's */
  desired_revision: z.int().min(0).nullable(),
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
  base_revision: z.int().min(0),
  revision: z.int().min(0),
  group_members: z.record(z.string(), z.strictObject({ add: z.array(z.string()), remove: z.array(z.string()) })),
});

export const errorMessageSchema = z.strictObject({ type: z.literal('error'), error: errorInfo });

export const controllerMessageSchema = z.discriminatedUnion('type', [welcomeSchema, policyMessageSchema, policyDeltaSchema, errorMessageSchema]);
export type ControllerMessage = z.output<typeof controllerMessageSchema>;
export type WelcomeMessage = z.output<typeof welcomeSchema>;
export type PolicyMessage = z.output<typeof policyMessageSchema>;
export type PolicyDeltaMessage = z.output<typeof policyDeltaSchema>;

/** Parses one frame; returns null (and the reason) for anything that is not a valid message. */
export function decode<T>(schema: z.ZodType<T>, data: string): { ok: true; message: T } | { ok: false; error: string } {
  let json: unknown;
  try {
    json = JSON.parse(data);
  } catch {
    return { ok: false, error: 'frame is not JSON' };
  }
  const r = schema.safeParse(json);
  if (!r.success) return { ok: false, error: r.error.issues.map((i) => `${i.path.join('.') || '(message)'}: ${i.message}`).join('; ') };
  return { ok: true, message: r.data };
}
