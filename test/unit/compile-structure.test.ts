/**
 * The shape of the compiled table (src/nft/compile.ts): layers hold
 * non-overlapping rules so their maps have disjoint keys; the number of
 * lookups does not grow with the number of rules, ports or peers; per-rule
 * chains and counters; digests.
 */
import { describe, expect, it } from 'vitest';
import { compilePolicy } from '../../src/nft/compile.js';
import { assignLayers, findShadowed, layerRules, matchesEveryAddress, ruleCovers, rulesOverlap } from '../../src/nft/layering.js';
import { groupMapName, memberSetName, ruleChainName } from '../../src/nft/names.js';
import type { Chain, Table } from '../../src/nft/model.js';
import { renderScript } from '../../src/nft/render.js';
import { formatIp, parseIp } from '../../src/policy/address.js';
import { AddressSet } from '../../src/policy/address-set.js';
import { normalizeRules, type NormalizedRule } from '../../src/policy/normalize.js';
import { DEFAULT_PLATFORM } from '../../src/policy/platform.js';
import { setFlowGeneration } from '../../src/nft/flow-mark.js';
import { parsePolicy, type RuleInput } from '../../src/policy/schema.js';
import { checkTable, overlappingElements } from '../helpers/nft-interpreter.js';
import { doc, policyOf } from '../helpers/policies.js';
import { createRng, randomPolicy } from '../helpers/random-policy.js';

const SEEDS = Array.from({ length: 300 }, (_, i) => i * 7919 + 1);

const chain = (t: Table, name: string): Chain => {
  const c = t.chains.find((x) => x.name === name);
  if (!c) throw new Error(`no chain ${name}`);
  return c;
};
const vmapRules = (c: Chain) => c.rules.filter((r) => r.exprs.some((e) => e.kind === 'vmap'));

/** The definition of the layers, written the slow and obvious way. */
function naiveLayers(rules: readonly NormalizedRule[]): (number | null)[] {
  const layers: (number | null)[] = [];
  rules.forEach((r, i) => {
    if (r.peers.length === 0) return layers.push(null);
    let layer = 0;
    for (let j = 0; j < i; j++) {
      const lj = layers[j];
      if (lj !== null && lj !== undefined && rulesOverlap(rules[j]!, r)) layer = Math.max(layer, lj + 1);
    }
    return layers.push(layer);
  });
  return layers;
}

/** Shadowed rules by their definition (an earlier rule covers them; group rules only as compile.ts allows), the slow way. */
function naiveShadowed(rules: readonly NormalizedRule[]): boolean[] {
  return rules.map((r, i) => {
    if (r.peers.length === 0) return false;
    for (let j = 0; j < i; j++) {
      const q = rules[j]!;
      const qGroup = q.remote.kind === 'group' ? q.remote.id : null;
      const rGroup = r.remote.kind === 'group' ? r.remote.id : null;
      const allowed = qGroup !== null ? qGroup === rGroup : rGroup === null || matchesEveryAddress(q);
      if (allowed && q.peers.length > 0 && ruleCovers(q, r)) return true;
    }
    return false;
  });
}

describe('layers', () => {
  it('rulesOverlap on a big member list against a few ranges (binary search) agrees with a brute-force check', () => {
    const rng = createRng(77);
    const ranges = (n: number, width: number, start: number): { family: 4; lo: bigint; hi: bigint }[] => {
      const out: { family: 4; lo: bigint; hi: bigint }[] = [];
      let at = BigInt(start);
      for (let i = 0; i < n; i++) {
        const lo = at + BigInt(rng.int(1, 40));
        const hi = lo + BigInt(rng.int(0, width));
        out.push({ family: 4, lo, hi });
        at = hi + 1n;
      }
      return out;
    };
    const base = normalizeRules(policyOf([{ id: 'a' }, { id: 'b' }]))[0]!;
    const seen = new Set<boolean>();
    for (let k = 0; k < 500; k++) {
      const many = ranges(rng.int(17, 300), 0, 0);
      const few = ranges(rng.int(1, 3), 30, rng.int(0, 15_000));
      const brute = many.some((x) => few.some((y) => x.lo <= y.hi && y.lo <= x.hi));
      seen.add(brute);
      expect(rulesOverlap({ ...base, peers: many }, { ...base, peers: few })).toBe(brute);
      expect(rulesOverlap({ ...base, peers: few }, { ...base, peers: many })).toBe(brute);
    }
    expect([...seen].sort()).toEqual([false, true]);
  });

  it('rules of one layer never overlap, each rule sits above every earlier rule it overlaps, and every map has disjoint keys (random policies)', () => {
    for (const seed of SEEDS) {
      const policy = parsePolicy(randomPolicy(createRng(seed)));
      const compiled = compilePolicy(policy);
      expect(checkTable(compiled.table), `seed ${seed}`).toEqual([]);
      for (const m of compiled.table.maps) expect(overlappingElements(m), `seed ${seed} map ${m.name}`).toEqual([]);
      const all = normalizeRules(policy);
      for (const direction of ['ingress', 'egress'] as const) {
        for (const family of [4, 6] as const) {
          const rules = all.filter((r) => r.direction === direction && r.family === family);
          const layers = assignLayers(rules);
          expect(layers, `seed ${seed}: the index gives the layers of the definition`).toEqual(naiveLayers(rules));
          expect(findShadowed(rules), `seed ${seed}: the index finds the shadowed rules of the definition`).toEqual(naiveShadowed(rules));
          // the compiler's one pass: the same shadowed rules, and the layers of the rules with the shadowed ones matching nothing
          const shadowed = naiveShadowed(rules);
          expect(layerRules(rules), `seed ${seed}: one pass`).toEqual({ shadowed, layers: naiveLayers(rules.map((r, i) => (shadowed[i] ? { ...r, peers: [] } : r))) });
          rules.forEach((a, i) =>
            rules.forEach((b, j) => {
              if (i < j && layers[i] !== null && layers[i] === layers[j]) expect(rulesOverlap(a, b), `seed ${seed}: ${a.ruleId} / ${b.ruleId}`).toBe(false);
            }),
          );
        }
      }
    }
  });

  it('IPv6 /64s that share an index key (they differ only in their top 12 bits) stay apart: the key only adds candidates', () => {
    // the index keys an IPv6 /64 by its low 52 bits (layering.ts addrBucketsOf): these four prefixes share one key
    const prefixes = ['2001:db8:0:1::/64', '3001:db8:0:1::/64', 'f001:db8:0:1::/64', '2001:db8:0:1::/120'];
    const rules = normalizeRules(
      policyOf(prefixes.map((p, i) => ({ id: `r${i}`, ethertype: 'IPv6', protocol: 'tcp', multiport: '443', remote_ip_prefix: p }))),
    );
    // the first three are disjoint: one layer; the /120 lies inside the first /64: shadowed by it
    expect(layerRules(rules)).toEqual({ shadowed: [false, false, false, true], layers: [0, 0, 0, null] });
    expect(layerRules(rules)).toEqual({ shadowed: naiveShadowed(rules), layers: naiveLayers(rules.map((r, i) => (i === 3 ? { ...r, peers: [] } : r))) });
  });

  it('overlapping rules go one layer up; disjoint rules share a layer; rules matching nothing get none', () => {
    const policy = policyOf(
      [
        { id: 'http', protocol: 'tcp', multiport: '80' },
        { id: 'https', protocol: 'tcp', multiport: '443' },
        { id: 'web-deny', action: 'deny', priority: 2, protocol: 'tcp', multiport: '80,443', remote_ip_prefix: '203.0.113.0/24' },
        { id: 'all-from-app', priority: 3, remote_group_id: 'sg-app' },
        { id: 'nobody', priority: 4, remote_group_id: 'sg-empty' },
        { id: 'ping', priority: 5, protocol: 'icmp', icmp_type: 8 },
      ],
      { group_members: { 'sg-app': ['198.18.0.11'], 'sg-empty': [] } },
    );
    const info = Object.fromEntries(compilePolicy(policy).rules.map((r) => [r.ruleId, [r.layer, r.elements]]));
    expect(info).toEqual({
      http: [0, 1],
      https: [0, 1],
      'web-deny': [1, 2], // overlaps both
      'all-from-app': [1, 3], // overlaps http/https (any port from anywhere), not web-deny (other peers): ports, icmp, proto
      nobody: [null, 0],
      ping: [2, 1], // overlaps all-from-app (layer 1) only
    });
  });

  it('the family chain looks layers up in order, ports/icmp/proto within a layer', () => {
    const { table } = compilePolicy(parsePolicy(doc([{ id: 'sg', rules: [{ protocol: 'tcp', multiport: '80' }, { priority: 2 }] }])));
    // layer 0: tcp 80 from anywhere, a hash map keyed l4proto . dport (the address is a wildcard);
    // layer 1: all protocols from anywhere, no key at all: one unguarded jump (the three shapes' guards cover every packet), after layer 0
    const rules = chain(table, 'ingress_v4').rules;
    expect(rules.map((r) => r.exprs.flatMap((e) => (e.kind === 'vmap' ? [e.map] : e.kind === 'verdict' ? ['jump'] : [])))).toEqual([['in4_l0_ports_xee'], ['jump']]);
    expect(rules[1]!.exprs).toHaveLength(1);
    expect(table.maps.find((m) => m.name === 'in4_l0_ports_xee')).toMatchObject({ interval: false, keyType: ['inet_proto', 'inet_service'] });
  });
});

describe('scale by construction: lookups do not grow with rules, ports or peers', () => {
  it('10k rules with distinct ports from 0.0.0.0/0: one lookup in ingress_v4', () => {
    const rules: Partial<RuleInput>[] = Array.from({ length: 10_000 }, (_, i) => ({ id: `r${i}`, protocol: i % 2 ? 'tcp' : 'udp', multiport: String(i + 1), remote_ip_prefix: '0.0.0.0/0' }));
    const compiled = compilePolicy(policyOf(rules));
    const lookups = vmapRules(chain(compiled.table, 'ingress_v4'));
    expect(lookups).toHaveLength(1);
    expect(compiled.stats.layers.ingress_v4).toBe(1);
    expect(compiled.table.maps.find((m) => m.name === 'in4_l0_ports_xee')).toMatchObject({ interval: false });
    expect(compiled.table.maps.find((m) => m.name === 'in4_l0_ports_xee')!.elements).toHaveLength(10_000);
    // and a rule per rule chain, each with its own counter
    expect(compiled.table.chains.filter((c) => c.name.startsWith('r_'))).toHaveLength(10_000);
  }, 60_000);

  it('a remote group of 100k members: one member set, one lookup per shape (ports, icmp, proto), whatever the size', () => {
    const base = parseIp('198.18.0.0').value;
    const members = Array.from({ length: 100_000 }, (_, i) => formatIp(4, base + BigInt(2 * i)));
    const compiled = compilePolicy(
      policyOf([{ id: 'from-big', remote_group_id: 'big' }, { id: 'ssh-from-big', priority: 2, protocol: 'tcp', multiport: '22', remote_group_id: 'big' }], { group_members: { big: members } }),
    );
    const set = memberSetName(4, 'big');
    const lookups = chain(compiled.table, 'ingress_v4').rules.filter((r) => r.exprs.some((e) => e.kind === 'match' && !Array.isArray(e.right) && e.right.kind === 'setref' && e.right.name === set));
    // layer 0: from-big (every port and protocol: one set lookup, no map after it); ssh-from-big is shadowed by from-big (same group)
    expect(lookups).toHaveLength(1);
    expect(lookups[0]!.exprs.map((e) => e.kind)).toEqual(['match', 'verdict']);
    expect(compiled.table.maps.map((m) => [m.name, m.elements.length, m.interval, m.set ?? false])).toEqual([[set, 100_000, false, true]]);
    expect(compiled.rules.find((r) => r.ruleId === 'ssh-from-big')?.layer).toBeNull();
    // packed: 4 bytes a member, no element object per member (issue 18 item 2), and one copy: the rules' peers are the set
    expect(compiled.table.maps[0]!.elements).toBeInstanceOf(AddressSet);
    const onBig = compiled.layout.get('ingress4')!.rules.filter((r) => r.remote.kind === 'group');
    expect(onBig.map((r) => r.ruleId)).toEqual(['from-big', 'ssh-from-big']);
    for (const r of onBig) expect(r.peers).toBe(compiled.table.maps[0]!.elements);
  }, 60_000);

  it('a member set is written in canonical form, however the document spelled its members', () => {
    const compiled = compilePolicy(policyOf([{ id: 'g6', ethertype: 'IPv6', remote_group_id: 'sg' }], { group_members: { sg: ['FD00:5EC:0:0:0:0:0:10', 'fd00:5ec::0:9'] } }));
    const script = renderScript(compiled.table);
    expect(script).toContain('\t\t\tfd00:5ec::9,\n\t\t\tfd00:5ec::10\n');
    expect(script).not.toMatch(/FD00|5ec::0:9/);
  });

  it('members are single elements of a hash set, neighbours too; the rest of the key goes to a small map after the set', () => {
    const members = [...Array.from({ length: 256 }, (_, i) => `198.18.1.${i}`), '198.18.9.1', '198.18.9.3'];
    const compiled = compilePolicy(policyOf([{ id: 'g', protocol: 'udp', remote_group_id: 'sg' }], { group_members: { sg: members } }));
    const set = memberSetName(4, 'sg');
    expect(compiled.table.maps.map((m) => [m.name, m.interval, m.elements.length])).toEqual([
      [set, false, 258],
      [groupMapName('ingress', 4, 0, 'ports', 'sg', 'ex'), false, 1],
    ]);
    const script = renderScript(compiled.table);
    expect(script).toContain(`set ${set} {\n\t\ttype ipv4_addr\n`);
    expect(script).toContain('\t\t\t198.18.1.255,\n');
    expect(script).toContain(`ip saddr @${set} meta l4proto vmap @${groupMapName('ingress', 4, 0, 'ports', 'sg', 'ex')}`);
    expect(script).toContain('udp : jump');
  });
});

describe('rule chains, counters, digests', () => {
  it('every rule gets its own chain with a counter and its verdict, named by a hash of group and rule id', () => {
    const compiled = compilePolicy(policyOf([{ id: 'a' }, { id: 'b', action: 'deny', priority: 2 }]));
    const a = chain(compiled.table, ruleChainName('sg', 'a'));
    const b = chain(compiled.table, ruleChainName('sg', 'b'));
    // an ingress allow accepts through flow_allow, which marks the connection (nft/flow-mark.ts)
    expect(a.rules).toEqual([{ exprs: [{ kind: 'counter' }, { kind: 'verdict', verdict: { kind: 'jump', chain: 'flow_allow' } }], comment: 'sg/a' }]);
    expect(b.rules[0]!.exprs[1]).toEqual({ kind: 'verdict', verdict: { kind: 'drop' } });
    expect(ruleChainName('sg', 'a')).toMatch(/^r_[0-9a-f]{16}$/);
    expect(ruleChainName('sg', 'a')).not.toBe(ruleChainName('sga', ''));
    expect(compiled.rules.map((r) => [r.ruleId, r.chain])).toEqual([
      ['a', a.name],
      ['b', b.name],
    ]);
  });

  it('base chains drop by default, count default drops, and jump to the family chains', () => {
    const { table } = compilePolicy(policyOf([{ id: 'a' }, { id: 'b', direction: 'egress', ethertype: 'IPv6' }]));
    const input = chain(table, 'input');
    expect(input.base).toEqual({ type: 'filter', hook: 'input', priority: 0, policy: 'drop' });
    expect(input.rules[input.rules.length - 1]).toEqual({ exprs: [{ kind: 'counter' }, { kind: 'verdict', verdict: { kind: 'drop' } }], comment: 'default: no rule matched' });
    expect(table.chains.map((c) => c.name).filter((n) => !n.startsWith('r_'))).toEqual(['input', 'output', 'flow_known', 'flow_allow', 'ingress_v4', 'egress_v6']);
  });

  it('the flow mark: established packets from the peer go to flow_known, ingress allows accept through flow_allow; with mask 0 none of it', () => {
    const rules = [{ id: 'a' }, { id: 'out', direction: 'egress' as const }];
    const on = compilePolicy(policyOf(rules)).table;
    const input = chain(on, 'input');
    const entry = input.rules.findIndex((r) => r.comment === 'flow mark: connections the current rules allowed');
    // after the stateful rules, before the family jumps
    expect(input.rules[entry - 1]!.comment).toBe('stateful: related (ICMP errors, expectations)');
    expect(input.rules[entry]!.exprs.at(-1)).toEqual({ kind: 'verdict', verdict: { kind: 'jump', chain: 'flow_known' } });
    // compiled as an epoch's first apply: flow_known empty, flow_allow keeping the field at 0 (nothing marked before the sweep)
    expect(chain(on, 'flow_known').rules).toEqual([]);
    expect(chain(on, 'flow_allow').rules[0]!.exprs[0]).toEqual({ kind: 'ct-mark-set', mask: 0xffff0000, value: 0 });
    expect(renderScript(on)).toContain('ct mark set ct mark and 0x0000ffff or 0x00000000 accept');
    // armed (what the agent sends after its sweep): generation 1 accepted and written
    setFlowGeneration(on, 1, true);
    expect(chain(on, 'flow_known').rules[0]!.exprs[0]).toEqual({ kind: 'match', left: { kind: 'ct', key: 'mark', mask: 0xffff0000 }, op: '==', right: { kind: 'num', value: 0x00010000 } });
    expect(renderScript(on)).toContain('ct mark set ct mark and 0x0000ffff or 0x00010000 accept');
    // egress allows and the output chain are not marked: outbound connections are never re-evaluated (SEMANTICS section 3)
    expect(chain(on, ruleChainName('sg', 'out')).rules[0]!.exprs[1]).toEqual({ kind: 'verdict', verdict: { kind: 'accept' } });
    expect(chain(on, 'output').rules.some((r) => r.comment?.startsWith('flow mark'))).toBe(false);

    const off = compilePolicy(policyOf(rules), { platform: { ...DEFAULT_PLATFORM, flowMarkMask: 0 } }).table;
    expect(off.chains.map((c) => c.name)).not.toContain('flow_known');
    expect(renderScript(off)).not.toContain('flow');
    expect(chain(off, ruleChainName('sg', 'a')).rules[0]!.exprs[1]).toEqual({ kind: 'verdict', verdict: { kind: 'accept' } });
    // another mask: the field and the generation's bits follow it
    const byte = compilePolicy(policyOf(rules), { platform: { ...DEFAULT_PLATFORM, flowMarkMask: 0x00ff0000 } }).table;
    setFlowGeneration(byte, 3, true);
    expect(renderScript(byte)).toContain('ct mark set ct mark and 0xff00ffff or 0x00030000 accept');
  });

  it('the digest depends on the ruleset only: not on the revision, the order of map construction or names', () => {
    const a = doc([{ id: 'sg', name: 'one', rules: [{ protocol: 'tcp', multiport: '22' }] }]);
    const b = { ...doc([{ id: 'sg', name: 'two', description: 'other words', rules: [{ protocol: 'tcp', multiport: '22', description: 'ssh' }] }]), revision: 99 };
    const c = doc([{ id: 'sg', rules: [{ protocol: 'tcp', multiport: '23' }] }]);
    const digest = (d: unknown) => compilePolicy(parsePolicy(d)).digest;
    expect(digest(a)).toMatch(/^[0-9a-f]{16}$/);
    expect(digest(b)).toBe(digest(a));
    expect(digest(c)).not.toBe(digest(a));
    expect(compilePolicy(parsePolicy(b)).table.comment).toBe(`secgroup digest=${digest(a)} revision=99 instance=ecs-test`);
  });

  it('long ids make comments that are cut to 128 characters and still render', () => {
    const long = 'x'.repeat(64);
    const compiled = compilePolicy(parsePolicy(doc([{ id: long, rules: [{ id: 'y'.repeat(64), protocol: 'tcp', multiport: '1,2,3,4,5,6,7,8,9,10' }] }])));
    const comments = compiled.table.chains.flatMap((c) => [c.comment, ...c.rules.map((r) => r.comment)]).filter((c): c is string => c !== undefined);
    for (const c of comments) expect(c.length).toBeLessThanOrEqual(128);
    expect(comments.some((c) => c.endsWith('~'))).toBe(true);
    expect(() => renderScript(compiled.table)).not.toThrow();
  });

  it('uses the table name it is given', () => {
    expect(compilePolicy(policyOf([]), { table: 'sg_test' }).table.name).toBe('sg_test');
    expect(() => compilePolicy(policyOf([]), { table: 'bad name' })).toThrow(/not a safe nft name/);
  });
});

describe('shadowed rules get no map elements', () => {
  it('a repeated rule and a narrower rule after a wider one are shadowed; a wider rule after a narrower one is not', () => {
    const compiled = compilePolicy(
      policyOf([
        { id: 'wide', protocol: 'tcp', multiport: '80,443', remote_ip_prefix: '198.18.0.0/16' },
        { id: 'repeat', priority: 2, protocol: 'tcp', multiport: '80,443', remote_ip_prefix: '198.18.0.0/16' },
        { id: 'narrow', priority: 3, action: 'deny', protocol: 'tcp', multiport: '443', remote_ip_prefix: '198.18.7.7' },
        { id: 'wider', priority: 4, protocol: 'tcp', remote_ip_prefix: '198.18.0.0/15' },
      ]),
    );
    const layer = (id: string) => compiled.rules.find((r) => r.ruleId === id)?.layer;
    expect(layer('wide')).toBe(0);
    expect(layer('repeat')).toBeNull();
    expect(layer('narrow')).toBeNull();
    expect(layer('wider')).toBe(1);
  });
});
