/**
 * The model interpreter is itself a test oracle, so it gets its own tests on
 * small hand-built tables: order, jumps and returns, vmap lookups, implicit
 * payload dependencies, and the mistakes it must refuse.
 */
import { describe, expect, it } from 'vitest';
import { ACCEPT, DROP, jump, sel, v, type Chain, type Rule, type Table, type VerdictMap } from '../../src/nft/model.js';
import { parseIp } from '../../src/policy/address.js';
import { parsePacketText } from '../../src/policy/packet-text.js';
import { checkTable, InterpreterError, NftInterpreter } from '../helpers/nft-interpreter.js';

const addr = (a: string) => {
  const ip = parseIp(a);
  return { kind: 'addr' as const, family: ip.family, lo: ip.value, hi: ip.value };
};

function table(inputRules: Rule[], extra: { chains?: Chain[]; maps?: VerdictMap[] } = {}): Table {
  return {
    family: 'inet',
    name: 't',
    maps: extra.maps ?? [],
    chains: [{ name: 'input', base: { type: 'filter', hook: 'input', priority: 0, policy: 'drop' }, rules: inputRules }, ...(extra.chains ?? [])],
  };
}

const acceptChain: Chain = { name: 'yes', rules: [{ exprs: [{ kind: 'counter' }, { kind: 'verdict', verdict: ACCEPT }], comment: 'yes' }] };
const returnChain: Chain = { name: 'back', rules: [{ exprs: [{ kind: 'verdict', verdict: { kind: 'return' } }] }] };

describe('NftInterpreter', () => {
  const tcp80 = parsePacketText('ingress tcp 198.18.0.2:40000 -> 198.18.0.1:80');

  it('applies the base chain policy when no rule decides', () => {
    const d = new NftInterpreter(table([])).run(tcp80);
    expect(d).toMatchObject({ verdict: 'drop', chain: 'input', rule: null });
  });

  it('packets of the other hook meet no chain of ours and pass', () => {
    expect(new NftInterpreter(table([])).run({ ...tcp80, direction: 'egress' }).verdict).toBe('accept');
  });

  it('runs rules in order and stops at the first verdict; counters count what reaches them', () => {
    const i = new NftInterpreter(
      table([
        { exprs: [{ kind: 'counter' }, { kind: 'match', left: sel.dport('tcp'), op: '==', right: v.num(22) }, { kind: 'verdict', verdict: DROP }] },
        { exprs: [{ kind: 'match', left: sel.dport('tcp'), op: '==', right: v.range(1, 100) }, { kind: 'counter' }, { kind: 'verdict', verdict: ACCEPT }] },
        { exprs: [{ kind: 'counter' }, { kind: 'verdict', verdict: DROP }] },
      ]),
    );
    expect(i.run(tcp80)).toMatchObject({ verdict: 'accept', rule: 1 });
    expect([i.counter('input', 0), i.counter('input', 1), i.counter('input', 2)]).toEqual([1, 1, 0]);
  });

  it('continues after a jump whose chain returns or ends, and stops at a verdict inside it', () => {
    const t = table(
      [
        { exprs: [{ kind: 'verdict', verdict: jump('back') }] },
        { exprs: [{ kind: 'match', left: sel.l4proto, op: '==', right: v.sym('udp') }, { kind: 'verdict', verdict: DROP }] },
        { exprs: [{ kind: 'verdict', verdict: jump('yes') }] },
      ],
      { chains: [returnChain, acceptChain] },
    );
    expect(new NftInterpreter(t).run(tcp80)).toMatchObject({ verdict: 'accept', chain: 'yes', rule: 0, path: ['input', 'back', 'yes'] });
  });

  it('looks up concatenated interval keys in a vmap', () => {
    const map: VerdictMap = {
      name: 'm',
      interval: true,
      keyType: ['ipv4_addr', 'inet_proto', 'inet_service'],
      elements: [
        { key: [{ ...addr('198.18.0.2'), hi: addr('198.18.0.9').lo }, { kind: 'num', lo: 6, hi: 6 }, { kind: 'num', lo: 80, hi: 80 }], verdict: jump('yes') },
        { key: [addr('198.18.0.2'), { kind: 'num', lo: 17, hi: 17 }, { kind: 'num', lo: 80, hi: 80 }], verdict: DROP },
      ],
    };
    const t = table(
      [
        {
          exprs: [
            { kind: 'match', left: sel.l4proto, op: '==', right: [v.sym('tcp'), v.sym('udp'), v.sym('sctp')] },
            { kind: 'vmap', key: [sel.addr(4, 'saddr'), sel.l4proto, sel.dport('th')], map: 'm' },
          ],
        },
      ],
      { chains: [acceptChain], maps: [map] },
    );
    expect(checkTable(t)).toEqual([]);
    const i = new NftInterpreter(t);
    expect(i.run(tcp80)).toMatchObject({ verdict: 'accept', chain: 'yes' });
    expect(i.run(parsePacketText('ingress udp 198.18.0.2 -> 198.18.0.1:80'))).toMatchObject({ verdict: 'drop', chain: 'input', rule: 0 });
    // no element: the rule does not match, the chain goes on (here: to its policy)
    expect(i.run(parsePacketText('ingress tcp 198.18.0.10 -> 198.18.0.1:80'))).toMatchObject({ verdict: 'drop', rule: null });
    expect(i.run(parsePacketText('ingress tcp 198.18.0.2 -> 198.18.0.1:81'))).toMatchObject({ verdict: 'drop', rule: null });
    // the l4proto guard keeps ICMP away from th dport
    expect(i.run(parsePacketText('ingress icmp 198.18.0.2 -> 198.18.0.1'))).toMatchObject({ verdict: 'drop', rule: null });
  });

  it('models implicit payload dependencies: ip saddr on IPv6, icmp type on TCP, tcp dport on UDP do not match', () => {
    const t = table([
      { exprs: [{ kind: 'match', left: sel.addr(4, 'saddr'), op: '!=', right: v.addr('203.0.113.0/24') }, { kind: 'verdict', verdict: ACCEPT }], comment: 'a' },
      { exprs: [{ kind: 'match', left: sel.icmp(4, 'type'), op: '!=', right: v.num(8) }, { kind: 'verdict', verdict: ACCEPT }], comment: 'b' },
      { exprs: [{ kind: 'match', left: sel.dport('tcp'), op: '!=', right: v.num(1) }, { kind: 'verdict', verdict: ACCEPT }], comment: 'c' },
    ]);
    const i = new NftInterpreter(t);
    expect(i.run(parsePacketText('ingress udp [fd00:5ec::2]:1 -> [fd00:5ec::1]:53')).verdict).toBe('drop');
    expect(i.run(parsePacketText('ingress icmp 203.0.113.1 -> 198.18.0.1 type 0'))).toMatchObject({ comment: 'b' });
    expect(i.run(parsePacketText('ingress tcp 203.0.113.1 -> 198.18.0.1:80'))).toMatchObject({ comment: 'c' });
  });

  it('iif exists only at input, oif only at output; ct direction not for untracked packets', () => {
    const t: Table = {
      family: 'inet',
      name: 't',
      maps: [],
      chains: [
        {
          name: 'output',
          base: { type: 'filter', hook: 'output', priority: 0, policy: 'drop' },
          rules: [
            { exprs: [{ kind: 'match', left: sel.iif, op: '==', right: v.str('lo') }, { kind: 'verdict', verdict: ACCEPT }] },
            { exprs: [{ kind: 'match', left: sel.ctDirection, op: '!=', right: v.sym('reply') }, { kind: 'verdict', verdict: ACCEPT }] },
          ],
        },
      ],
    };
    const p = { ...parsePacketText('egress tcp 198.18.0.1 -> 198.18.0.2:80'), iface: 'lo' };
    expect(new NftInterpreter(t).run({ ...p, ct: 'untracked' }).verdict).toBe('drop');
    expect(new NftInterpreter(t).run({ ...p, ct: 'new' })).toMatchObject({ verdict: 'accept', rule: 1 });
  });

  it('refuses th dport on a packet without ports, overlapping vmap elements, unknown symbols', () => {
    const unguarded = table([{ exprs: [{ kind: 'match', left: sel.dport('th'), op: '==', right: v.num(80) }, { kind: 'verdict', verdict: ACCEPT }] }]);
    expect(() => new NftInterpreter(unguarded).run(parsePacketText('ingress icmp 198.18.0.2 -> 198.18.0.1'))).toThrow(InterpreterError);

    const overlapping: VerdictMap = {
      name: 'm',
      interval: true,
      keyType: ['ipv4_addr'],
      elements: [
        { key: [{ ...addr('198.18.0.0'), hi: addr('198.18.0.255').lo }], verdict: ACCEPT },
        { key: [addr('198.18.0.2')], verdict: DROP },
      ],
    };
    const t = table([{ exprs: [{ kind: 'vmap', key: [sel.addr(4, 'saddr')], map: 'm' }] }], { maps: [overlapping] });
    expect(checkTable(t)).toEqual(['map m: elements 0 and 1 overlap']);
    expect(() => new NftInterpreter(t).run(tcp80)).toThrow(/2 elements match/);

    const badSym = table([{ exprs: [{ kind: 'match', left: sel.l4proto, op: '==', right: v.sym('tpc') }, { kind: 'verdict', verdict: ACCEPT }] }]);
    expect(() => new NftInterpreter(badSym).run(tcp80)).toThrow(/unknown protocol symbol/);
  });

  it('checkTable finds jumps to missing or base chains, loops, keys that do not fit their map', () => {
    const t = table(
      [
        { exprs: [{ kind: 'verdict', verdict: jump('nowhere') }] },
        { exprs: [{ kind: 'verdict', verdict: jump('input') }] },
        { exprs: [{ kind: 'vmap', key: [sel.addr(6, 'saddr')], map: 'm4' }] },
      ],
      {
        chains: [
          { name: 'a', rules: [{ exprs: [{ kind: 'verdict', verdict: jump('b') }] }] },
          { name: 'b', rules: [{ exprs: [{ kind: 'verdict', verdict: jump('a') }] }] },
        ],
        maps: [{ name: 'm4', interval: true, keyType: ['ipv4_addr'], elements: [{ key: [{ kind: 'num', lo: 0, hi: 300 }], verdict: ACCEPT }] }],
      },
    );
    const problems = checkTable(t).join('\n');
    expect(problems).toMatch(/jump to missing chain nowhere/);
    expect(problems).toMatch(/jump to base chain input/);
    expect(problems).toMatch(/jump loop/);
    expect(problems).toMatch(/key ipv6_addr does not fit map m4/);
    expect(problems).toMatch(/part 0 is not an IPv4 address/);
  });
});
