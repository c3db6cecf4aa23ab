/**
 * The port report after member deltas (src/agent/port-reporter.ts `compiledRules`,
 * PortStatusOptions.rules): the agent rates its ports with the rules the
 * compiler laid out, whose peer lists the membership fast path edits in
 * place, instead of normalising the policy again (every member parsed: 0.1-0.2
 * s at 100k members). Property: after any sequence of random member changes
 * (each taken by the fast path, or compiled in full when it refuses), the
 * report from the compiled rules equals the report computed from scratch
 * from the new document.
 *
 * Replay a failure: SECGROUP_SEED=<seed> npx vitest run --project unit test/unit/port-report-members.test.ts
 */
import { describe, expect, it } from 'vitest';
import { compiledRules } from '../../src/agent/port-reporter.js';
import { compilePolicy, type Compiled } from '../../src/nft/compile.js';
import { applyMembershipChange } from '../../src/nft/membership.js';
import { checkPolicy } from '../../src/policy/schema.js';
import { computePortStatus } from '../../src/probe/port-status.js';
import { listenersFor, randomChange, withChange } from '../helpers/member-changes.js';
import { createRng, randomPolicy } from '../helpers/random-policy.js';

const RUNS = Number(process.env.SECGROUP_RUNS ?? 300);
const REPLAY = process.env.SECGROUP_SEED === undefined ? undefined : Number(process.env.SECGROUP_SEED);
const OPTS = { source: 'ss', generatedAt: '2024-01-01T00:00:00.000Z' } as const;

function checkSeed(seed: number): { fast: number; problem: string | null } {
  const rng = createRng(seed);
  const checked = checkPolicy(randomPolicy(rng));
  if (!checked.ok) return { fast: 0, problem: `seed ${seed}: invalid generated policy` };
  let doc = checked.policy;
  let compiled: Compiled = compilePolicy(doc);
  const listeners = listenersFor(rng, doc);
  let fast = 0;
  for (let step = 0; step < 4; step++) {
    const change = randomChange(rng, doc);
    const next = withChange(doc, change, doc.revision + 1);
    const r = applyMembershipChange(compiled, next, change);
    if (r.ok) fast++;
    compiled = r.ok ? r.compiled : compilePolicy(next);
    doc = next;
    const got = computePortStatus(doc, listeners, { ...OPTS, rules: compiledRules(compiled) });
    const want = computePortStatus(doc, listeners, OPTS);
    if (JSON.stringify(got) !== JSON.stringify(want)) {
      return { fast, problem: `seed ${seed}, step ${step}: change ${JSON.stringify(change)}\nfrom the compiled rules: ${JSON.stringify(got.entries)}\nfrom scratch: ${JSON.stringify(want.entries)}` };
    }
  }
  return { fast, problem: null };
}

describe('port report from the compiled rules after member deltas', () => {
  it('equals the report computed from scratch, on random policies and random sequences of member changes', () => {
    const seeds = REPLAY === undefined ? Array.from({ length: RUNS }, (_, i) => 5000 + i) : [REPLAY];
    let fast = 0;
    for (const seed of seeds) {
      const r = checkSeed(seed);
      expect(r.problem).toBeNull();
      fast += r.fast;
    }
    // the fast path took enough of the changes for the property to mean something
    if (REPLAY === undefined) expect(fast).toBeGreaterThan(RUNS);
  });
});
