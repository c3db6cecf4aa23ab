/**
 * src/probe/member-change.ts: can a membership change alter a port report?
 * The agent reports at once when it can, and coalesces the report (30 s)
 * when it cannot, so a `false` must be safe: the property below checks, on
 * random policies, listeners and member changes, that whenever the answer is
 * false the new report rates every listening port exactly as the last one
 * did (status, allowed_by, denied_by) and lists the same not-listening ports.
 *
 * Replay a failure: SECGROUP_SEED=<seed> npx vitest run --project unit test/unit/probe-member-change.test.ts
 */
import { describe, expect, it } from 'vitest';
import { normalizeRules } from '../../src/policy/normalize.js';
import { checkPolicy, parsePolicy, type Policy } from '../../src/policy/schema.js';
import type { Listener } from '../../src/probe/listener.js';
import { memberChangeMatters, reportBasis } from '../../src/probe/member-change.js';
import { computePortStatus } from '../../src/probe/port-status.js';
import type { PortReport } from '../../src/protocol/messages.js';
import { listenersFor, randomChange, withChange } from '../helpers/member-changes.js';
import { createRng, randomPolicy } from '../helpers/random-policy.js';

const RUNS = Number(process.env.SECGROUP_RUNS ?? 300);
const REPLAY = process.env.SECGROUP_SEED === undefined ? undefined : Number(process.env.SECGROUP_SEED);
const OPTS = { source: 'ss', generatedAt: '2024-01-01T00:00:00.000Z' } as const;

const report = (p: Policy, listeners: Listener[]): PortReport => ({ ...computePortStatus(p, listeners, OPTS), revision: p.revision });

function doc(members: Record<string, string[]>, rules: Record<string, unknown>[]): Policy {
  return parsePolicy({
    revision: 1,
    instance: { id: 'ecs-1', addresses: ['198.18.0.10'] },
    security_groups: [{ id: 'sg-web', rules }],
    address_groups: [],
    group_members: members,
  });
}

const web80 = { id: 'r-http', direction: 'ingress', protocol: 'tcp', multiport: '80', remote_group_id: 'web' };
const db5432 = { id: 'r-db', direction: 'ingress', protocol: 'tcp', multiport: '5432', remote_group_id: 'db' };
const listener = (port: number, address = '0.0.0.0'): Listener => ({ protocol: 'tcp', family: address.includes(':') ? 6 : 4, address, port, process: 'srv' });

const listening = (r: PortReport) => JSON.stringify(r.entries.filter((e) => e.status === 'open' || e.status === 'blocked'));
const notListening = (r: PortReport) => JSON.stringify([...new Set(r.entries.filter((e) => e.status === 'not-listening').map((e) => `${e.protocol}/${e.port}`))].sort());

/** memberChangeMatters for `before` -> `after` (same rules, other members), the report of `before` as the basis */
function matters(before: Policy, after: Policy, listeners: Listener[], groups: string[] | null): boolean {
  const basis = reportBasis(report(before, listeners), normalizeRules(before));
  return memberChangeMatters(basis, normalizeRules(after), groups === null ? null : new Set(groups));
}

describe('memberChangeMatters', () => {
  const rules = [web80, db5432];
  const before = doc({ web: ['198.18.0.11'], db: ['198.18.0.21'] }, rules);

  it('is true when a changed group names a port that listens beyond loopback (open or blocked)', () => {
    const after = doc({ web: ['198.18.0.11', '198.18.0.12'], db: ['198.18.0.21'] }, rules);
    expect(matters(before, after, [listener(80)], ['web'])).toBe(true);
    expect(matters(before, after, [listener(80, '::')], ['web'])).toBe(false); // an IPv6 listener: the IPv4 rule does not cover it
  });

  it('is false when the changed group names only ports nothing listens on, or that listen on loopback only', () => {
    const after = doc({ web: ['198.18.0.11'], db: ['198.18.0.21', '198.18.0.22'] }, rules);
    expect(matters(before, after, [listener(80)], ['db'])).toBe(false);
    expect(matters(before, after, [listener(80), listener(5432, '127.0.0.1')], ['db'])).toBe(false);
  });

  it('is true when a changed group becomes empty or gets its first member of a family', () => {
    expect(matters(before, doc({ web: ['198.18.0.11'], db: [] }, rules), [], ['db'])).toBe(true);
    const emptyDb = doc({ web: ['198.18.0.11'], db: [] }, rules);
    expect(matters(emptyDb, before, [], ['db'])).toBe(true);
    // the first IPv6 member counts for an IPv6 rule on the group, not for the IPv4 ones
    expect(matters(before, doc({ web: ['198.18.0.11'], db: ['198.18.0.21', 'fd00:5ec::21'] }, rules), [], ['db'])).toBe(false);
    const both = [...rules, { ...db5432, id: 'r-db6', ethertype: 'IPv6' }];
    expect(matters(doc(before.group_members, both), doc({ web: ['198.18.0.11'], db: ['198.18.0.21', 'fd00:5ec::21'] }, both), [], ['db'])).toBe(true);
  });

  it('counts every group as changed when the groups are not known, and is true without a report to compare with', () => {
    const after = doc({ web: ['198.18.0.11', '198.18.0.12'], db: ['198.18.0.21'] }, rules);
    expect(matters(before, after, [listener(80)], null)).toBe(true);
    expect(memberChangeMatters(null, normalizeRules(after), new Set(['db']))).toBe(true);
  });

  it('when false, the new report rates the listening ports as the last one did (random policies, listeners, member changes)', () => {
    const seeds = REPLAY === undefined ? Array.from({ length: RUNS }, (_, i) => 9000 + i) : [REPLAY];
    let quiet = 0;
    let loud = 0;
    for (const seed of seeds) {
      const rng = createRng(seed);
      const checked = checkPolicy(randomPolicy(rng));
      if (!checked.ok) continue;
      let p = checked.policy;
      // fewer listeners than rules: many changes touch only ports nothing listens on
      const listeners = listenersFor(rng, p).filter(() => rng.bool(0.4));
      let last = report(p, listeners);
      let basis = reportBasis(last, normalizeRules(p));
      for (let step = 0; step < 4; step++) {
        const change = randomChange(rng, p);
        const next = withChange(p, change, p.revision + 1);
        const now = report(next, listeners);
        p = next;
        if (memberChangeMatters(basis, normalizeRules(next), new Set(Object.keys(change)))) {
          // reported at once: the agent's basis moves on
          loud++;
          last = now;
          basis = reportBasis(now, normalizeRules(next));
          continue;
        }
        // coalesced: the last report sent stays the basis, and must still be true of every listening port
        quiet++;
        const where = `seed ${seed}, step ${step}, change ${JSON.stringify(change)}`;
        expect(listening(now), where).toBe(listening(last));
        expect(notListening(now), where).toBe(notListening(last));
      }
    }
    // both answers came up often enough for the property to mean something
    if (REPLAY === undefined) {
      expect(quiet).toBeGreaterThan(RUNS / 4);
      expect(loud).toBeGreaterThan(RUNS / 4);
    }
  });
});
