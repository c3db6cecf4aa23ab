/**
 * The compiler against the reference evaluator, without a kernel: random
 * policies x random packets, each packet traced through the compiled table by
 * the model interpreter (test/helpers/nft-interpreter.ts). Verdicts must be
 * equal, and the rule that decides in the table must be one the evaluator
 * could have picked: same group, same priority, same action, and it matches
 * the packet (SEMANTICS section 2 leaves the order of same-priority,
 * same-action rules free).
 *
 * Replay a failure: SECGROUP_SEED=<seed> npx vitest run --project unit test/unit/compile-interpreter.test.ts
 * More runs:        SECGROUP_RUNS=5000 npx vitest run ...
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { compilePolicy, type Compiled } from '../../src/nft/compile.js';
import { renderScript } from '../../src/nft/render.js';
import { FLOW_ALLOW } from '../../src/nft/flow-mark.js';
import type { Table } from '../../src/nft/model.js';
import { evaluate, ruleMatches, type Evaluation, type Reason } from '../../src/policy/evaluate.js';
import type { Packet } from '../../src/policy/packet.js';
import { formatPacket } from '../../src/policy/packet-text.js';
import { DEFAULT_PLATFORM, type PlatformOptions } from '../../src/policy/platform.js';
import { checkPolicy, type Policy, type PolicyInput } from '../../src/policy/schema.js';
import { checkTable, NftInterpreter, type Decision } from '../helpers/nft-interpreter.js';
import { createRng, randomAnyPacket, randomPackets, randomPlatform, randomPolicy } from '../helpers/random-policy.js';

const RUNS = Number(process.env.SECGROUP_RUNS ?? 300);
const REPLAY = process.env.SECGROUP_SEED === undefined ? undefined : Number(process.env.SECGROUP_SEED);
const PACKETS_PER_POLICY = 60;

/**
 * An allow rule's accept is given by flow_allow (the flow mark, nft/flow-mark.ts), which the rule's
 * chain jumps to after its counter: the decision is the rule's.
 */
function viaFlowAllow(d: Decision, table: Table): Decision {
  if (d.chain !== FLOW_ALLOW) return d;
  const from = d.path[d.path.length - 2];
  const chain = table.chains.find((c) => c.name === from);
  if (!chain) return d;
  return { ...d, chain: chain.name, rule: 0, ...(chain.rules[0]?.comment !== undefined ? { comment: chain.rules[0].comment } : {}) };
}

/** What the interpreter's deciding rule is, in the evaluator's terms. */
function classify(d: Decision, compiled: Compiled): Reason['kind'] | 'policy' {
  if (d.rule === null) return 'policy';
  if (compiled.rules.some((r) => r.chain === d.chain)) return 'rule';
  const c = d.comment ?? '';
  if (c.startsWith('platform:')) return 'platform';
  if (c.startsWith('stateful:')) return 'stateful';
  if (c.startsWith('default:')) return 'default';
  return 'policy';
}

/** Names a platform/stateful rule comment may carry for each evaluator reason name. */
const REASON_COMMENTS: Record<string, RegExp> = {
  loopback: /^platform: loopback$/,
  'icmpv6-nd': /^platform: IPv6 neighbour discovery/,
  dhcp: /^platform: DHCP(v6)? client$/,
  controller: /^platform: controller channel$/,
  dns: /^platform: DNS/,
  failsafe: /^platform: failsafe/,
  invalid: /^stateful: invalid/,
  reply: /^stateful: replies/,
  related: /^stateful: (related|established and related)/,
  established: /^stateful: established and related/,
};

function mismatch(policy: Policy, packet: Packet, expected: Evaluation, got: Decision | undefined, compiled: Compiled | undefined): string | null {
  if (!got || !compiled) return 'no decision';
  if (got.verdict !== expected.verdict) return `verdict ${got.verdict}, evaluator says ${expected.verdict}`;
  const kind = classify(got, compiled);
  if (kind !== expected.reason.kind) return `decided by a ${kind} rule, evaluator: ${expected.reason.kind}`;
  const reason = expected.reason;
  if (reason.kind === 'platform' || reason.kind === 'stateful') {
    if (!REASON_COMMENTS[reason.name]!.test(got.comment ?? '')) return `decided by "${got.comment}", evaluator: ${reason.kind} ${reason.name}`;
  }
  if (reason.kind === 'rule') {
    const info = compiled.rules.find((r) => r.chain === got.chain)!;
    const group = policy.security_groups.find((g) => g.id === info.groupId)!;
    const rule = group.rules.find((r) => r.id === info.ruleId)!;
    if (info.groupId !== reason.groupId || rule.priority !== reason.priority || info.action !== reason.action) {
      return `decided by ${info.groupId}/${info.ruleId} (priority ${rule.priority}, ${info.action}), evaluator: ${reason.groupId}/${reason.ruleId} (priority ${reason.priority}, ${reason.action})`;
    }
    if (!ruleMatches(policy, rule, packet)) return `decided by ${info.groupId}/${info.ruleId}, which does not match the packet`;
  }
  return null;
}

function report(seed: number, doc: PolicyInput, platform: PlatformOptions, packet: Packet, problem: string, expected?: Evaluation, got?: Decision, compiled?: Compiled): string {
  let script = '(not rendered)';
  try {
    if (compiled) script = renderScript(compiled.table);
  } catch (e) {
    script = `(render failed: ${(e as Error).message})`;
  }
  return [
    `seed ${seed}: ${problem}`,
    `replay: SECGROUP_SEED=${seed} npx vitest run --project unit test/unit/compile-interpreter.test.ts`,
    `packet: ${formatPacket(packet)} ${JSON.stringify(packet)}`,
    `evaluator: ${JSON.stringify(expected)}`,
    `interpreter: ${JSON.stringify(got)}`,
    `platform: ${JSON.stringify(platform)}`,
    `policy: ${JSON.stringify(doc)}`,
    `ruleset:\n${script}`,
  ].join('\n');
}

/** Checks one seed; returns a failure report or null. */
function checkSeed(seed: number, mode: 'kernel-safe' | 'any'): string | null {
  const rng = createRng(seed);
  const doc = randomPolicy(rng);
  const checked = checkPolicy(doc);
  if (!checked.ok) return `seed ${seed}: the generator made an invalid policy: ${JSON.stringify(checked.issues)}\n${JSON.stringify(doc)}`;
  const policy = checked.policy;
  const platform = mode === 'any' ? randomPlatform(rng) : DEFAULT_PLATFORM;
  const packets = mode === 'any' ? Array.from({ length: PACKETS_PER_POLICY }, () => randomAnyPacket(rng, policy, platform)) : randomPackets(rng, policy, PACKETS_PER_POLICY);
  let compiled: Compiled;
  try {
    compiled = compilePolicy(policy, { platform });
  } catch (e) {
    return `seed ${seed}: compilePolicy threw ${(e as Error).stack}\n${JSON.stringify(doc)}`;
  }
  const problems = checkTable(compiled.table);
  if (problems.length) return report(seed, doc, platform, packets[0]!, `table problems: ${problems.join('; ')}`, undefined, undefined, compiled);
  for (const packet of packets) {
    const expected = evaluate(policy, packet, platform);
    const interp = new NftInterpreter(compiled.table);
    let got: Decision;
    try {
      got = viaFlowAllow(interp.run(packet), compiled.table);
    } catch (e) {
      return report(seed, doc, platform, packet, `interpreter: ${(e as Error).message}`, expected, undefined, compiled);
    }
    const problem = mismatch(policy, packet, expected, got, compiled);
    if (problem) return report(seed, doc, platform, packet, problem, expected, got, compiled);
    if (got.rule !== null && interp.counter(got.chain, got.rule) !== 1 && compiled.rules.some((r) => r.chain === got.chain)) {
      return report(seed, doc, platform, packet, `the deciding rule's counter did not count the packet`, expected, got, compiled);
    }
  }
  return null;
}

function property(mode: 'kernel-safe' | 'any'): void {
  if (REPLAY !== undefined) {
    const failure = checkSeed(REPLAY, mode);
    if (failure) console.error(failure);
    expect(failure).toBeNull();
    return;
  }
  fc.assert(
    fc.property(fc.integer({ min: 0, max: 0x7fffffff }), (seed) => {
      const failure = checkSeed(seed, mode);
      if (failure) {
        console.error(failure);
        throw new Error(failure.split('\n').slice(0, 6).join('\n'));
      }
    }),
    { numRuns: RUNS, endOnFailure: true },
  );
}

describe('compiled table traced by the model interpreter == reference evaluator', () => {
  it('first packets a kernel test can send (ct new), default platform rules', () => property('kernel-safe'), 60_000);
  it('any packet (conntrack states, loopback, ICMP types, DHCP/DNS ports), random platform switches', () => property('any'), 60_000);

  it('the generators are deterministic: one seed, one policy, the same packets', () => {
    const a = createRng(42);
    const b = createRng(42);
    const pa = randomPolicy(a);
    const pb = randomPolicy(b);
    expect(pb).toEqual(pa);
    expect(randomPackets(b, pb, 20)).toEqual(randomPackets(a, pa, 20));
  });

  it('the packets stay inside the test ranges, are new, and use ICMP types conntrack sees as new', () => {
    const rng = createRng(7);
    for (let i = 0; i < 50; i++) {
      const doc = randomPolicy(rng);
      const own = new Set(checkPolicy(doc).ok ? (doc.instance.addresses ?? []) : []);
      for (const p of randomPackets(rng, doc, 40)) {
        for (const a of [p.src, p.dst]) expect(a.startsWith('198.18.') || a.startsWith('198.19.') || a.startsWith('fd00:5ec:')).toBe(true);
        expect(own.has(p.direction === 'ingress' ? p.dst : p.src)).toBe(true);
        expect(own.has(p.direction === 'ingress' ? p.src : p.dst)).toBe(false);
        expect(p.ct).toBe('new');
        if (p.protocol === 1) expect([8, 13]).toContain(p.icmpType);
        if (p.protocol === 58) expect(p.icmpType).toBe(128);
      }
    }
  });
});
