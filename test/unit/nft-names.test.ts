import { describe, expect, it } from 'vitest';
import { assertName } from '../../src/nft/model.js';
import { NameMemo, groupMapName, mapName, memberSetName, ruleChainName } from '../../src/nft/names.js';

describe('nft object names', () => {
  it('are valid nft names that depend only on what they name, whatever the ids hold', () => {
    const a = ruleChainName('sg web/ü', 'rule "1"');
    expect(assertName(a)).toMatch(/^r_[0-9a-f]{16}$/);
    expect(ruleChainName('sg web/ü', 'rule "1"')).toBe(a);
    expect(ruleChainName('sg web/ü', 'rule "2"')).not.toBe(a);
    // group and rule id are separated: ("ab", "c") is not ("a", "bc")
    expect(ruleChainName('ab', 'c')).not.toBe(ruleChainName('a', 'bc'));
    expect(assertName(memberSetName(6, 'sg-db'))).toMatch(/^g6_[0-9a-f]{12}$/);
    expect(mapName('egress', 4, 2, 'icmp', 'eex')).toBe('out4_l2_icmp_eex');
    expect(groupMapName('ingress', 6, 0, 'ports', 'sg-db', 'ee')).toBe(`in6_l0_ports_g${memberSetName(6, 'sg-db').slice(3)}_ee`);
  });

  it('memo: bounded, least recently used out first, and the same value after an eviction', () => {
    const computed: string[] = [];
    const memo = new NameMemo((k) => {
      computed.push(k);
      return `v(${k})`;
    }, 2);
    expect(memo.get('a')).toBe('v(a)');
    expect(memo.get('b')).toBe('v(b)');
    expect(memo.get('a')).toBe('v(a)'); // hit: a is now the most recent
    expect(memo.get('c')).toBe('v(c)'); // evicts b
    expect(memo.size).toBe(2);
    expect(memo.get('a')).toBe('v(a)');
    expect(memo.get('b')).toBe('v(b)'); // recomputed: the same value
    expect(computed).toEqual(['a', 'b', 'c', 'b']);
    expect(memo.size).toBe(2);
  });

  it('memo: a use that needs more values than a generation holds reserves room first, so using them again computes none', () => {
    let computed = 0;
    const memo = new NameMemo((k) => ((computed += 1), `v(${k})`), 4);
    const keys = Array.from({ length: 10 }, (_, i) => `k${i}`);
    for (const k of keys) memo.get(k);
    for (const k of keys) memo.get(k);
    expect(computed).toBe(20); // without room: every pass evicts what the next one uses
    memo.reserve(keys.length);
    for (const k of keys) memo.get(k);
    computed = 0;
    for (const k of keys) memo.get(k);
    expect(computed).toBe(0);
    expect(memo.size).toBeLessThanOrEqual(2 * keys.length);
  });
});
