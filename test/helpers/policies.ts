/** Small builders for hand-written test policies and packets. */
import type { Packet } from '../../src/policy/packet.js';
import { parsePacketText } from '../../src/policy/packet-text.js';
import { checkPolicy, parsePolicy, type Policy, type PolicyInput, type RuleInput } from '../../src/policy/schema.js';
import { formatIssue, type Issue } from '../../src/lib/errors.js';

export const INSTANCE_V4 = '198.18.0.10';
export const INSTANCE_V6 = 'fd00:5ec::10';

export type GroupInput = { id: string; rules?: Partial<RuleInput>[]; [k: string]: unknown };

/** A document with the given groups (rules get ids r0, r1, ... and direction ingress unless given). */
export function doc(groups: GroupInput[], extra: Partial<Omit<PolicyInput, 'security_groups'>> & Record<string, unknown> = {}): PolicyInput {
  return {
    revision: 1,
    instance: { id: 'ecs-test', addresses: [INSTANCE_V4, INSTANCE_V6] },
    security_groups: groups.map((g) => ({
      ...g,
      rules: (g.rules ?? []).map((r, i) => ({ id: `r${i}`, direction: 'ingress', ...r }) as RuleInput),
    })),
    ...extra,
  } as PolicyInput;
}

/** A valid policy of one group `sg` with these rules. */
export function policyOf(rules: Partial<RuleInput>[], extra: Parameters<typeof doc>[1] = {}): Policy {
  return parsePolicy(doc([{ id: 'sg', rules }], extra));
}

/** The issues of an invalid document (fails the test if it is valid). */
export function issuesOf(input: unknown): Issue[] {
  const r = checkPolicy(input);
  if (r.ok) throw new Error('expected the document to be invalid, it is valid');
  return r.issues;
}

/** `path: message` lines as the CLI prints them, for compact assertions. */
export function issueLines(input: unknown): string[] {
  return issuesOf(input).map(formatIssue);
}

/** A packet in `secgroup explain` notation, with extra fields. */
export function pkt(text: string, extra: Partial<Packet> = {}): Packet {
  return { ...parsePacketText(text), ...extra };
}
