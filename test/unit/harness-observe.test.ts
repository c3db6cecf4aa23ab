/** Pure parts of the kernel harness: the address guards behind safety rule 2, probe validation, tags, verdicts. */
import { describe, expect, it } from 'vitest';
import type { Packet } from '../../src/policy/packet.js';
import {
  TagAllocator,
  assertTestAddress,
  inTestRange,
  interpret,
  observerScript,
  sameAddress,
  toProbe,
  unsupportedReason,
  type Probe,
} from '../helpers/observe.js';

describe('harness address guards', () => {
  it.each([
    ['198.18.0.0', true],
    ['198.19.255.255', true],
    ['198.17.255.255', false],
    ['198.20.0.0', false],
    ['10.0.0.1', false],
    ['fd00:5ec::1', true],
    ['fd00:5ec:0:ffff:ffff:ffff:ffff:ffff', true],
    ['FD00:05EC::abcd', true],
    ['fd00:5ec:1::1', false],
    ['fd00:5ed::1', false],
    ['::ffff:198.18.0.1', false],
    ['fe80::1', false],
    ['not an address', false],
  ])('%s in test range: %s', (addr, want) => {
    expect(inTestRange(addr)).toBe(want);
  });

  it('assertTestAddress checks family and range', () => {
    expect(() => assertTestAddress('198.18.1.1', 4)).not.toThrow();
    expect(() => assertTestAddress('198.18.1.1', 6)).toThrow(/not IPv6/);
    expect(() => assertTestAddress('8.8.8.8')).toThrow(/outside the test ranges/);
    expect(() => assertTestAddress('x')).toThrow(/not an IP address/);
  });

  it('compares IPv6 addresses by value', () => {
    expect(sameAddress('fd00:5ec::10', 'fd00:05ec:0:0:0:0:0:0010')).toBe(true);
    expect(sameAddress('fd00:5ec::10', 'fd00:5ec::11')).toBe(false);
    expect(sameAddress('198.18.0.10', 'fd00:5ec::10')).toBe(false);
  });
});

describe('probe validation', () => {
  const ctx = { hostAddrs: ['198.18.0.10', 'fd00:5ec::10'], hostIface: 'eth0' };
  const base: Packet = { direction: 'ingress', family: 4, protocol: 6, src: '198.18.1.1', dst: '198.18.0.10', sport: 1, dport: 22 };

  it('accepts ordinary probes', () => {
    expect(unsupportedReason(base, ctx)).toBeUndefined();
    expect(unsupportedReason({ ...base, direction: 'egress', src: '198.18.0.10', dst: '198.19.1.1' }, ctx)).toBeUndefined();
    expect(unsupportedReason({ ...base, family: 6, src: 'fd00:5ec::1:1', dst: 'fd00:5ec:0:0::10' }, ctx)).toBeUndefined();
    expect(unsupportedReason({ ...base, ct: 'new', ctDirection: 'original', iface: 'eth0' }, ctx)).toBeUndefined();
  });

  it.each<[string, Partial<Packet>, RegExp]>([
    ['address outside the ranges', { src: '192.0.2.1' }, /outside the test ranges/],
    ['family mismatch', { family: 6 }, /not an IPv6 address/],
    ['ingress to a non-host address', { dst: '198.18.0.11' }, /not an address of the host/],
    ['egress to the host itself', { direction: 'egress', dst: '198.18.0.10' }, /loopback/],
    ['ct state established', { ct: 'established' }, /only ct state new/],
    ['reply direction', { ctDirection: 'reply' }, /original/],
    ['loopback iface', { iface: 'lo' }, /no loopback/],
    ['bad port', { dport: 70000 }, /dport/],
    ['bad protocol', { protocol: 256 }, /protocol/],
    ['IPv6 extension header', { family: 6, protocol: 44, src: 'fd00:5ec::1', dst: 'fd00:5ec::10' }, /extension header/],
  ])('refuses %s', (_, patch, why) => {
    expect(unsupportedReason({ ...base, ...patch }, ctx)).toMatch(why);
  });

  it('keeps only the fields that belong to the protocol', () => {
    const tcp = toProbe({ ...base, icmpType: 8 }, 5);
    expect(tcp).toEqual({ ...base, tag: 5 });
    expect(tcp).not.toHaveProperty('icmpType');
    const icmp: Packet = { direction: 'ingress', family: 4, protocol: 1, src: '198.18.1.1', dst: '198.18.0.10', icmpType: 8, sport: 3 };
    expect(toProbe(icmp, 6)).toEqual({ direction: 'ingress', family: 4, protocol: 1, src: '198.18.1.1', dst: '198.18.0.10', icmpType: 8, tag: 6 });
  });
});

describe('tags and verdicts', () => {
  it('hands out tags 1..65535 and wraps', () => {
    const t = new TagAllocator();
    expect(t.take(3)).toEqual({ tags: [1, 2, 3], wrapped: false });
    t.take(65530);
    expect(t.take(3)).toEqual({ tags: [1, 2, 3], wrapped: true });
  });

  const probe = (tag: number, family: 4 | 6 = 4): Probe => ({
    direction: 'ingress',
    family,
    protocol: 6,
    src: family === 4 ? '198.18.1.1' : 'fd00:5ec::1:1',
    dst: family === 4 ? '198.18.0.10' : 'fd00:5ec::10',
    tag,
  });

  it('accepted = seen after the ruleset; ct state from the ct set', () => {
    const out = interpret(
      [probe(1), probe(2), probe(3, 6)],
      { pre4: [1, 2], pre6: [3], ok4: [2], ok6: [3], ct4: [[1, 'new'], [2, 'new']], ct6: [[3, 'untracked']] },
      {},
    );
    expect(out).toEqual([
      { accepted: false, ctState: 'new' },
      { accepted: true, ctState: 'new' },
      { accepted: true, ctState: 'untracked' },
    ]);
  });

  it('a probe that never arrived is a harness fault, not a drop', () => {
    expect(() => interpret([probe(1)], { pre4: [] }, { '0': 'EHOSTUNREACH' })).toThrow(/harness fault[\s\S]*EHOSTUNREACH/);
  });

  it('the observer runs after the ruleset under test', () => {
    const s = observerScript();
    expect(s).toMatch(/hook input priority 1000;/);
    expect(s).toMatch(/hook output priority 1000;/);
    expect(s).toMatch(/^delete table inet sgt_observe$/m);
  });
});
