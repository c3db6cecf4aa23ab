/**
 * The bounds on every value an agent sends (docs/security-agent-input.md):
 * each one is refused past its bound with a message naming the field, and
 * what the agent itself produces always fits them.
 */
import { describe, expect, it } from 'vitest';
import {
  MAX_REVISION,
  PORT_REPORT_LIMITS,
  agentMessageSchema,
  boundPortReport,
  boundText,
  controllerMessageSchema,
  decode,
  portReportSchema,
  type PortEntry,
  type PortReport,
} from '../../src/protocol/messages.js';

const hello = { type: 'hello', protocol: 1, instance_id: 'ecs-1', agent_version: '0.1.0', applied_revision: 7, hostname: 'web-1' };
const ack = { type: 'ack', revision: 7, status: 'failed', duration_ms: 12.5, digest: '0123456789abcdef', error: { code: 'NFT_FAILED', message: 'nft: line 1:\n  syntax error' } };
const entry = (over: Partial<PortEntry> = {}): PortEntry => ({
  protocol: 'tcp',
  port: 80,
  family: 4,
  status: 'open',
  listeners: [{ address: '0.0.0.0', process: 'nginx' }],
  allowed_by: [{ group_id: 'sg-web', rule_id: 'r-http', peers: '0.0.0.0/0' }],
  denied_by: [],
  ...over,
});
const report = (over: Partial<PortReport> = {}): PortReport => ({ revision: 7, source: 'ss', generated_at: '2024-05-01T12:00:00.000Z', entries: [entry()], ...over });
const ports = (r: unknown) => ({ type: 'ports', report: r });
const resync = { type: 'resync', have_revision: 7, reason: 'the base revision is not here' };

/** the error `decode` gives for `msg` (null: accepted) */
function refusal(msg: unknown): string | null {
  const d = decode(agentMessageSchema, JSON.stringify(msg));
  return d.ok ? null : d.error;
}

const many = <T>(n: number, f: (i: number) => T): T[] => Array.from({ length: n }, (_, i) => f(i));
const ref = (i: number) => ({ group_id: 'sg-web', rule_id: `r-${i}`, peers: '0.0.0.0/0' });

describe('agent message bounds', () => {
  it('accepts what a well-behaved agent sends, at every bound', () => {
    for (const m of [
      hello,
      { ...hello, applied_revision: Number.MAX_SAFE_INTEGER, hostname: 'h'.repeat(255), agent_version: 'v'.repeat(64), instance_id: 'i'.repeat(64) },
      ack,
      { ...ack, revision: Number.MAX_SAFE_INTEGER, duration_ms: 86_400_000, digest: 'f'.repeat(64), error: { code: 'A'.repeat(64), message: 'm'.repeat(4096) } },
      ports(report()),
      ports(report({ revision: null, generated_at: '2024-05-01T12:00:00Z' })),
      ports(report({ entries: many(PORT_REPORT_LIMITS.entries, (i) => entry({ port: i % 65536 })) })),
      ports(report({ entries: [entry({ listeners: many(PORT_REPORT_LIMITS.listeners, (i) => ({ address: `198.18.0.${i}`, process: 'p'.repeat(256) })), allowed_by: many(PORT_REPORT_LIMITS.rules, ref), denied_by: many(PORT_REPORT_LIMITS.rules, ref) })] })),
      ports(report({ entries: [entry({ allowed_by: [{ group_id: 'platform', rule_id: 'failsafe:tcp:1000-2000', peers: 'any' }] })] })),
      resync,
      { ...resync, have_revision: null, reason: 'r'.repeat(512) },
    ]) {
      expect(refusal(m), JSON.stringify(m).slice(0, 200)).toBeNull();
    }
  });

  it.each<[string, unknown, RegExp]>([
    // revisions: numbers past 2^53-1 cannot be told apart from their neighbours
    ['hello.applied_revision past 2^53-1', { ...hello, applied_revision: 2 ** 53 }, /^applied_revision: a revision is an integer from 0 to 9007199254740991/],
    ['hello.applied_revision negative', { ...hello, applied_revision: -1 }, /^applied_revision: a revision is never negative/],
    ['hello.applied_revision fractional', { ...hello, applied_revision: 1.5 }, /^applied_revision: a revision is an integer/],
    ['ack.revision past 2^53-1', { ...ack, revision: 2 ** 60 }, /^revision: a revision is an integer from 0 to 9007199254740991/],
    ['ports.report.revision past 2^53-1', ports(report({ revision: 2 ** 53 })), /^report\.revision: a revision is an integer from 0 to 9007199254740991/],
    ['resync.have_revision past 2^53-1', { ...resync, have_revision: 2 ** 53 }, /^have_revision: a revision is an integer from 0 to 9007199254740991/],
    // hello
    ['hello.instance_id over 64', { ...hello, instance_id: 'i'.repeat(65) }, /^instance_id: Too big/],
    ['hello.agent_version over 64', { ...hello, agent_version: 'v'.repeat(65) }, /^agent_version: Too big/],
    ['hello.agent_version with a control character', { ...hello, agent_version: '1.0\n' }, /^agent_version: must not contain control characters/],
    ['hello.hostname over 255', { ...hello, hostname: 'h'.repeat(256) }, /^hostname: Too big/],
    ['hello.hostname with an escape sequence', { ...hello, hostname: 'web\u001b[2J' }, /^hostname: must not contain control characters/],
    // ack
    ['ack.duration_ms over a day', { ...ack, duration_ms: 86_400_001 }, /^duration_ms: Too big/],
    ['ack.digest not hex', { ...ack, digest: 'not-a-digest' }, /^digest: a digest is 1-64 lowercase hex digits/],
    ['ack.digest over 64', { ...ack, digest: 'a'.repeat(65) }, /^digest: a digest is/],
    ['ack.error.code not a code', { ...ack, error: { code: 'NFT FAILED <b>', message: 'x' } }, /^error\.code: an error code is 1-64 characters/],
    ['ack.error.code over 64', { ...ack, error: { code: 'A'.repeat(65), message: 'x' } }, /^error\.code: an error code/],
    ['ack.error.message over 4096', { ...ack, error: { code: 'X', message: 'm'.repeat(4097) } }, /^error\.message: Too big/],
    // port report
    ['ports.report.entries over the limit', ports(report({ entries: many(PORT_REPORT_LIMITS.entries + 1, () => entry()) })), /^report\.entries: Too big/],
    ['ports listeners over the limit', ports(report({ entries: [entry({ listeners: many(PORT_REPORT_LIMITS.listeners + 1, () => ({ address: '0.0.0.0', process: null })) })] })), /^report\.entries\.0\.listeners: Too big/],
    ['ports allowed_by over the limit', ports(report({ entries: [entry({ allowed_by: many(PORT_REPORT_LIMITS.rules + 1, ref) })] })), /^report\.entries\.0\.allowed_by: Too big/],
    ['ports denied_by over the limit', ports(report({ entries: [entry({ denied_by: many(PORT_REPORT_LIMITS.rules + 1, ref) })] })), /^report\.entries\.0\.denied_by: Too big/],
    ['ports rule id not an id', ports(report({ entries: [entry({ allowed_by: [{ group_id: 'sg-web', rule_id: 'r http', peers: 'any' }] })] })), /^report\.entries\.0\.allowed_by\.0\.rule_id: a rule id is/],
    ['ports group id over 64', ports(report({ entries: [entry({ denied_by: [{ group_id: 'g'.repeat(65), rule_id: 'r', peers: 'any' }] })] })), /^report\.entries\.0\.denied_by\.0\.group_id: a group id is/],
    ['ports peers over 256', ports(report({ entries: [entry({ allowed_by: [{ group_id: 'g', rule_id: 'r', peers: 'p'.repeat(257) }] })] })), /peers: Too big/],
    ['ports listener address over 64', ports(report({ entries: [entry({ listeners: [{ address: 'a'.repeat(65), process: null }] })] })), /listeners\.0\.address: Too big/],
    ['ports process with a control character', ports(report({ entries: [entry({ listeners: [{ address: '0.0.0.0', process: 'x\u0007' }] })] })), /listeners\.0\.process: must not contain control characters/],
    ['ports process over 256', ports(report({ entries: [entry({ listeners: [{ address: '0.0.0.0', process: 'p'.repeat(257) }] })] })), /listeners\.0\.process: Too big/],
    ['ports generated_at not a time', ports(report({ generated_at: 'yesterday' })), /^report\.generated_at: generated_at must be an ISO 8601 UTC time/],
    ['ports generated_at not UTC', ports(report({ generated_at: '2024-05-01T12:00:00+02:00' })), /^report\.generated_at: generated_at must be/],
    // resync
    ['resync.reason over 512', { ...resync, reason: 'r'.repeat(513) }, /^reason: Too big/],
    ['resync.reason with a control character', { ...resync, reason: 'a\rb' }, /^reason: must not contain control characters/],
  ])('refuses %s, naming the field', (_what, msg, expected) => {
    expect(refusal(msg)).toMatch(expected);
  });
});

describe('controller message revisions', () => {
  it('refuse a revision past 2^53-1 in welcome and policy_delta', () => {
    const welcome = { type: 'welcome', protocol: 1, instance_id: 'ecs-1', desired_revision: 2 ** 53 };
    const delta = { type: 'policy_delta', base_revision: 3, revision: 2 ** 53, group_members: {} };
    expect(decode(controllerMessageSchema, JSON.stringify(welcome))).toMatchObject({ ok: false, error: expect.stringMatching(/^desired_revision: a revision is an integer from 0 to 9007199254740991/) });
    expect(decode(controllerMessageSchema, JSON.stringify(delta))).toMatchObject({ ok: false, error: expect.stringMatching(/^revision: a revision is an integer from 0 to 9007199254740991/) });
    expect(decode(controllerMessageSchema, JSON.stringify({ ...welcome, desired_revision: MAX_REVISION }))).toMatchObject({ ok: true });
  });
});

describe('boundPortReport', () => {
  it('gives an in-bounds report back as is', () => {
    const r = report();
    expect(boundPortReport(r)).toEqual({ report: r, clipped: 0 });
    expect(boundPortReport(r).report).toBe(r);
  });

  it('clips counts and cleans strings so that the controller accepts the report, and counts what it left out', () => {
    const over = report({
      entries: [
        entry({
          listeners: [...many(PORT_REPORT_LIMITS.listeners + 3, (i) => ({ address: `198.18.0.${i}`, process: 'p' })), { address: '0.0.0.0', process: null }],
          allowed_by: many(PORT_REPORT_LIMITS.rules + 2, ref),
        }),
        entry({ port: 81, listeners: [{ address: '0.0.0.0', process: 'evil\u001b[2J'.padEnd(300, 'x') }] }),
        ...many(PORT_REPORT_LIMITS.entries, (i) => entry({ port: 100 + i })),
      ],
    });
    expect(portReportSchema.safeParse(over).success).toBe(false);
    const { report: bounded, clipped } = boundPortReport(over);
    expect(portReportSchema.parse(bounded)).toEqual(bounded);
    // 2 entries too many, 4 listeners and 2 rule references
    expect(clipped).toBe(2 + 4 + 2);
    expect(bounded.entries).toHaveLength(PORT_REPORT_LIMITS.entries);
    expect(bounded.entries[1]!.listeners[0]!.process).toBe(`evil?[2J${'x'.repeat(248)}`);
  });

  it('leaves out not-listening entries, the last ones first, before any listening one, keeping the order', () => {
    const listening = (port: number) => entry({ port, status: 'open' });
    const idle = (port: number) => entry({ port, status: 'not-listening', listeners: [] });
    // more allowed ports than fit, and two listening ports after most of them
    const over = report({ entries: [listening(22), ...many(PORT_REPORT_LIMITS.entries + 10, (i) => idle(1000 + i)), listening(60000), listening(60001)] });
    const { report: bounded, clipped } = boundPortReport(over);
    expect(clipped).toBe(13);
    expect(bounded.entries).toHaveLength(PORT_REPORT_LIMITS.entries);
    expect(bounded.entries.filter((e) => e.status === 'open').map((e) => e.port)).toEqual([22, 60000, 60001]);
    expect(bounded.entries.filter((e) => e.status === 'not-listening').map((e) => e.port)).toEqual(many(PORT_REPORT_LIMITS.entries - 3, (i) => 1000 + i));
    expect(bounded.entries.map((e) => e.port)).toEqual([...bounded.entries.map((e) => e.port)].sort((a, b) => a - b));
  });

  it('boundText replaces control characters and cuts', () => {
    expect(boundText('a\nb\u007fc', 255)).toBe('a?b?c');
    expect(boundText('abcdef', 3)).toBe('abc');
  });
});
