import { describe, expect, it } from 'vitest';
import { applyPolicyDelta, diffGroupMembers, PolicyDeltaError } from '../../src/protocol/delta.js';
import { formatIp, parseIp } from '../../src/policy/address.js';
import { policyDeltaSchema } from '../../src/protocol/messages.js';

/** The controller's member order: deduplicated, IPv4 before IPv6, numerically ascending. */
function canonical(list: Iterable<string>): string[] {
  return [...new Set(list)]
    .map((a) => ({ a, k: parseIp(a) }))
    .sort((x, y) => (x.k.family !== y.k.family ? x.k.family - y.k.family : x.k.value < y.k.value ? -1 : x.k.value > y.k.value ? 1 : 0))
    .map((x) => x.a);
}

const doc = (revision: number, group_members: Record<string, string[]>) => ({
  revision,
  instance: { id: 'i-1', addresses: ['198.18.0.1'] },
  security_groups: [{ id: 'sg', name: 'sg', rules: [] }],
  address_groups: [],
  group_members,
});

/** A tiny deterministic PRNG (mulberry32) so failures reproduce. */
function rng(seed: number): () => number {
  let a = seed;
  return () => {
    a = (a + 0x6d2b79f5) | 0;
    let t = Math.imul(a ^ (a >>> 15), 1 | a);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

describe('diffGroupMembers', () => {
  it('lists per-group additions and removals, leaves unchanged groups out', () => {
    expect(diffGroupMembers({ a: ['10.0.0.1', '10.0.0.2'], b: ['10.0.1.1'] }, { a: ['10.0.0.2', '10.0.0.3'], b: ['10.0.1.1'] })).toEqual({
      a: { add: ['10.0.0.3'], remove: ['10.0.0.1'] },
    });
    expect(diffGroupMembers({ a: ['10.0.0.1'] }, { a: ['10.0.0.1'] })).toEqual({});
  });

  it('is null when a group is added or removed', () => {
    expect(diffGroupMembers({ a: [] }, { a: [], b: [] })).toBeNull();
    expect(diffGroupMembers({ a: [], b: [] }, { a: [] })).toBeNull();
    expect(diffGroupMembers({ a: [] }, { b: [] })).toBeNull();
  });
});

describe('applyPolicyDelta', () => {
  it('gives exactly the new document (bytes), keeps the rest and does not modify its input', () => {
    const before = doc(5, { '7': ['fd00::2'], default: ['198.18.0.1', '198.18.0.9', 'fd00::1'], other: ['10.0.0.1'] });
    const after = doc(9, { '7': ['fd00::2'], default: ['198.18.0.1', '198.18.0.10', 'fd00::1', 'fd00::1:0'], other: ['10.0.0.1'] });
    const copy = structuredClone(before);
    const d = diffGroupMembers(before.group_members, after.group_members)!;
    const msg = { type: 'policy_delta' as const, base_revision: 5, revision: 9, group_members: d };
    expect(policyDeltaSchema.parse(msg)).toEqual(msg);
    const out = applyPolicyDelta(before, msg);
    expect(JSON.stringify(out)).toBe(JSON.stringify(after));
    expect(before).toEqual(copy);
  });

  it('refuses a delta against another revision, one that does not go forward, and one naming an unknown group', () => {
    const d = doc(5, { a: ['10.0.0.1'] });
    expect(() => applyPolicyDelta(d, { base_revision: 4, revision: 6, group_members: {} })).toThrow(PolicyDeltaError);
    expect(() => applyPolicyDelta(d, { base_revision: 4, revision: 6, group_members: {} })).toThrow(/against revision 4.*revision 5/);
    expect(() => applyPolicyDelta(d, { base_revision: 5, revision: 5, group_members: {} })).toThrow(/not above/);
    expect(() => applyPolicyDelta(d, { base_revision: 5, revision: 6, group_members: { b: { add: ['10.0.0.2'], remove: [] } } })).toThrow(/group "b"/);
    expect(() => applyPolicyDelta(d, { base_revision: 5, revision: 6, group_members: { a: { add: ['nope'], remove: [] } } })).toThrow(/"nope" is not an IP address/);
  });

  it('ignores additions already present and removals not present', () => {
    const d = doc(1, { a: ['10.0.0.1', '10.0.0.3'] });
    const out = applyPolicyDelta(d, { base_revision: 1, revision: 2, group_members: { a: { add: ['10.0.0.3', '10.0.0.2', '10.0.0.2'], remove: ['10.9.9.9'] } } });
    expect(out.group_members.a).toEqual(['10.0.0.1', '10.0.0.2', '10.0.0.3']);
  });

  it('diff then apply reproduces random canonical lists (few and many changes, both families)', () => {
    const r = rng(42);
    const addr = () => (r() < 0.7 ? `10.${Math.floor(r() * 4)}.${Math.floor(r() * 256)}.${Math.floor(r() * 256)}` : formatIp(6, BigInt(Math.floor(r() * 5000)) + (0xfd00n << 112n)));
    for (let round = 0; round < 200; round++) {
      const size = Math.floor(r() * (round % 10 === 0 ? 2000 : 60));
      const groups = ['g1', 'g2', '3'];
      const before: Record<string, string[]> = {};
      const after: Record<string, string[]> = {};
      for (const g of groups) {
        const base = canonical(Array.from({ length: size }, addr));
        before[g] = base;
        const changes = Math.floor(r() * (r() < 0.5 ? 3 : size + 3));
        const next = new Set(base);
        for (let i = 0; i < changes; i++) {
          if (r() < 0.5 && base.length) next.delete(base[Math.floor(r() * base.length)]!);
          else next.add(addr());
        }
        after[g] = canonical(next);
      }
      const d = diffGroupMembers(before, after)!;
      const out = applyPolicyDelta(doc(round, before), { base_revision: round, revision: round + 1, group_members: d });
      expect(JSON.stringify(out), `round ${round}`).toBe(JSON.stringify(doc(round + 1, after)));
    }
  });

  it('a stream of deltas builds no member list until one is read, then exactly the list each delta applied in turn gives; documents already read stay as they were', () => {
    const r = rng(7);
    const addr = () => (r() < 0.6 ? `10.0.${Math.floor(r() * 8)}.${Math.floor(r() * 256)}` : formatIp(6, BigInt(Math.floor(r() * 3000)) + (0xfd00n << 112n)));
    for (let round = 0; round < 50; round++) {
      const start = doc(1, { a: canonical(Array.from({ length: 200 }, addr)), b: canonical(Array.from({ length: 5 }, addr)), c: [] });
      let lazy = start;
      let eager = start;
      const seen: { d: typeof start; json: string }[] = [];
      for (let rev = 1; rev <= 30; rev++) {
        // the next canonical lists: a few members leave, a few join (sometimes one that just left)
        const next: Record<string, string[]> = {};
        for (const [g, list] of Object.entries(eager.group_members)) {
          const set = new Set(list);
          for (let i = Math.floor(r() * 3); i > 0 && list.length; i--) set.delete(list[Math.floor(r() * list.length)]!);
          for (let i = Math.floor(r() * 3); i > 0; i--) set.add(addr());
          next[g] = canonical(set);
        }
        const delta = { base_revision: rev, revision: rev + 1, group_members: diffGroupMembers(eager.group_members, next)! };
        lazy = applyPolicyDelta(lazy, delta);
        eager = doc(rev + 1, next);
        // unread: a getter, no list built
        for (const g of Object.keys(delta.group_members)) expect(Object.getOwnPropertyDescriptor(lazy.group_members, g)?.get, `round ${round} rev ${rev} ${g}`).toBeDefined();
        if (r() < 0.2) {
          // read now and then: the list and the serialised document are exactly the eager ones
          expect(JSON.stringify(lazy), `round ${round} rev ${rev}`).toBe(JSON.stringify(eager));
          seen.push({ d: lazy, json: JSON.stringify(lazy) });
        }
      }
      expect(JSON.stringify(lazy), `round ${round}`).toBe(JSON.stringify(eager));
      expect({ ...lazy.group_members }).toEqual(eager.group_members);
      for (const x of seen) expect(JSON.stringify(x.d)).toBe(x.json);
    }
  });
});
