/** src/policy/address.ts: parsing, canonical text, prefixes, ranges, merging, CIDR cover. */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  canonicalIp,
  formatIp,
  formatRangeNft,
  fullRange,
  ipFamily,
  mergeRanges,
  parseIp,
  parsePrefix,
  prefixRange,
  rangeContains,
  rangeToCidrs,
  type AddrRange,
  type Family,
} from '../../src/policy/address.js';

const r = (family: Family, lo: string, hi: string): AddrRange => ({ family, lo: parseIp(lo).value, hi: parseIp(hi).value });
const v4 = (lo: string, hi = lo) => r(4, lo, hi);
const v6 = (lo: string, hi = lo) => r(6, lo, hi);
const show = (x: AddrRange) => `${formatIp(x.family, x.lo)}-${formatIp(x.family, x.hi)}`;

const u32 = fc.bigInt({ min: 0n, max: (1n << 32n) - 1n });
const u128 = fc.oneof(
  fc.bigInt({ min: 0n, max: (1n << 128n) - 1n }),
  // many zero groups, so that compression has something to do
  fc.array(fc.constantFrom(0, 0, 0, 1, 0xffff, 0x5ec), { minLength: 8, maxLength: 8 }).map((gs) => gs.reduce((a, g) => (a << 16n) | BigInt(g), 0n)),
);

describe('ipFamily / parseIp', () => {
  it('tells IPv4 from IPv6 and rejects everything else', () => {
    expect(['198.18.0.1', 'fd00:5ec::1', '::', '::ffff:198.18.0.1'].map(ipFamily)).toEqual([4, 6, 6, 6]);
    for (const bad of ['198.18.0', '198.18.0.256', '198.18.0.1/32', 'fd00:5ec::1%eth0', 'fd00::5ec::1', 'example.com', '', ' 198.18.0.1', '0x7f.1']) {
      expect(ipFamily(bad), bad).toBeNull();
      expect(() => parseIp(bad), bad).toThrow(/is not an IP address/);
    }
  });

  it('parses IPv4 and IPv6 to numbers', () => {
    expect(parseIp('198.18.0.10')).toEqual({ family: 4, value: 0xc612000an });
    expect(parseIp('0.0.0.0').value).toBe(0n);
    expect(parseIp('255.255.255.255').value).toBe(0xffffffffn);
    expect(parseIp('::').value).toBe(0n);
    expect(parseIp('::1').value).toBe(1n);
    expect(parseIp('1::').value).toBe(1n << 112n);
    expect(parseIp('fd00:5ec::10').value).toBe((0xfd00n << 112n) | (0x5ecn << 96n) | 0x10n);
    expect(parseIp('FD00:5EC::10').value).toBe(parseIp('fd00:5ec::10').value);
    expect(parseIp('fd00:05ec:0000:0000:0000:0000:0000:0010').value).toBe(parseIp('fd00:5ec::10').value);
  });

  it('parses IPv6 with an embedded IPv4 tail', () => {
    expect(parseIp('::ffff:198.18.0.1').value).toBe((0xffffn << 32n) | 0xc6120001n);
    expect(parseIp('::198.18.0.1').value).toBe(0xc6120001n);
    expect(parseIp('64:ff9b::198.51.100.1').value).toBe((0x64n << 112n) | (0xff9bn << 96n) | 0xc6336401n);
    expect(parseIp('1:2:3:4:5:6:198.18.0.1').value).toBe(parseIp('1:2:3:4:5:6:c612:1').value);
    expect(parseIp('fd00:5ec::1:198.18.0.1').value).toBe(parseIp('fd00:5ec::1:c612:1').value);
  });
});

describe('formatIp / canonicalIp', () => {
  it('compresses the longest run of zero groups (RFC 5952), leftmost on ties, never a single group', () => {
    expect(canonicalIp('fd00:05ec:0000:0000:0000:0000:0000:0010')).toBe('fd00:5ec::10');
    expect(canonicalIp('1:0:0:2:0:0:0:3')).toBe('1:0:0:2::3');
    expect(canonicalIp('1:0:0:2:0:0:3:4')).toBe('1::2:0:0:3:4');
    expect(canonicalIp('1:0:2:3:4:5:6:7')).toBe('1:0:2:3:4:5:6:7');
    expect(canonicalIp('0:0:0:0:0:0:0:0')).toBe('::');
    expect(canonicalIp('0:0:0:0:0:0:0:1')).toBe('::1');
    expect(canonicalIp('1:0:0:0:0:0:0:0')).toBe('1::');
    expect(canonicalIp('FD00:5EC::A')).toBe('fd00:5ec::a');
  });

  it('writes an embedded IPv4 tail in hex (same address)', () => {
    expect(canonicalIp('::ffff:198.18.0.1')).toBe('::ffff:c612:1');
  });

  it('formats IPv4 as a dotted quad', () => {
    expect(formatIp(4, 0xc612000an)).toBe('198.18.0.10');
    expect(formatIp(4, 0n)).toBe('0.0.0.0');
  });

  it('round-trips every IPv4 and IPv6 value, and agrees with the WHATWG URL serializer for IPv6', () => {
    fc.assert(fc.property(u32, (v) => parseIp(formatIp(4, v)).value === v));
    fc.assert(
      fc.property(u128, (v) => {
        const text = formatIp(6, v);
        expect(parseIp(text).value).toBe(v);
        expect(text).toBe(new URL(`http://[${text}]/`).hostname.slice(1, -1));
      }),
    );
  });
});

describe('parsePrefix', () => {
  it('parses CIDRs and bare addresses (/32, /128)', () => {
    expect(prefixRange('198.18.0.0/15')).toEqual(v4('198.18.0.0', '198.19.255.255'));
    expect(prefixRange('198.18.0.10')).toEqual(v4('198.18.0.10'));
    expect(prefixRange('0.0.0.0/0')).toEqual(fullRange(4));
    expect(prefixRange('fd00:5ec::/48')).toEqual(v6('fd00:5ec::', 'fd00:5ec:0:ffff:ffff:ffff:ffff:ffff'));
    expect(prefixRange('fd00:5ec::10')).toEqual(v6('fd00:5ec::10'));
    expect(prefixRange('::/0')).toEqual(fullRange(6));
  });

  it('masks host bits, as the clouds do', () => {
    expect(prefixRange('198.18.0.77/24')).toEqual(v4('198.18.0.0', '198.18.0.255'));
    expect(prefixRange('198.18.0.77/31')).toEqual(v4('198.18.0.76', '198.18.0.77'));
    expect(prefixRange('fd00:5ec::77/120')).toEqual(v6('fd00:5ec::', 'fd00:5ec::ff'));
  });

  it('parses ranges "first-last" only where allowed', () => {
    expect(parsePrefix('198.51.100.5-198.51.100.9', { allowRange: true })).toEqual({ ok: true, range: v4('198.51.100.5', '198.51.100.9') });
    expect(parsePrefix('198.51.100.5 - 198.51.100.9', { allowRange: true })).toEqual({ ok: true, range: v4('198.51.100.5', '198.51.100.9') });
    expect(parsePrefix('fd00:5ec::1-fd00:5ec::1', { allowRange: true })).toEqual({ ok: true, range: v6('fd00:5ec::1') });
    expect(parsePrefix('198.51.100.5-198.51.100.9')).toEqual({ ok: false, error: '"198.51.100.5-198.51.100.9" is a range; only an IP address or CIDR is allowed here' });
  });

  it.each([
    ['198.18.0.0/33', '"198.18.0.0/33" has an invalid prefix length (0-32)'],
    ['198.18.0.0/', '"198.18.0.0/" has an invalid prefix length (0-32)'],
    ['198.18.0.0/-1', '"198.18.0.0/-1" is not a range of two IP addresses "first-last"'],
    ['fd00::/129', '"fd00::/129" has an invalid prefix length (0-128)'],
    ['198.18.0.0/15/16', '"198.18.0.0/15/16" has an invalid prefix length (0-32)'],
    ['10.0.0.0/8x', '"10.0.0.0/8x" has an invalid prefix length (0-32)'],
    ['host/24', '"host/24" is not an IP address or CIDR'],
    ['', '"" is not an IP address or CIDR'],
    ['1'.repeat(101), `"${'1'.repeat(101)}" is not an IP address or CIDR`],
    ['198.51.100.9-198.51.100.5', '"198.51.100.9-198.51.100.5": the first address is greater than the last'],
    ['198.51.100.9-fd00::1', '"198.51.100.9-fd00::1" mixes IPv4 and IPv6'],
    ['198.51.100.0/24-198.51.101.0', '"198.51.100.0/24-198.51.101.0" is not a range of two IP addresses "first-last"'],
  ])('rejects %s', (text, error) => {
    expect(parsePrefix(text, { allowRange: true })).toEqual({ ok: false, error });
  });
});

describe('mergeRanges', () => {
  it('merges overlapping, contained and adjacent intervals, sorts, keeps families apart', () => {
    const input = [
      v4('198.18.0.20', '198.18.0.30'),
      v6('fd00:5ec::1', 'fd00:5ec::5'),
      v4('198.18.0.1', '198.18.0.9'),
      v4('198.18.0.10', '198.18.0.12'), // adjacent to .1-.9
      v4('198.18.0.25', '198.18.0.40'), // overlaps .20-.30
      v4('198.18.0.21'), // contained
      v4('198.18.0.42'), // gap of one address (.41): stays apart
      v6('fd00:5ec::6', 'fd00:5ec::9'),
    ];
    const before = JSON.stringify(input, (_k, x: unknown) => (typeof x === 'bigint' ? x.toString() : x));
    expect(mergeRanges(input).map(show)).toEqual([
      '198.18.0.1-198.18.0.12',
      '198.18.0.20-198.18.0.40',
      '198.18.0.42-198.18.0.42',
      'fd00:5ec::1-fd00:5ec::9',
    ]);
    expect(JSON.stringify(input, (_k, x: unknown) => (typeof x === 'bigint' ? x.toString() : x))).toBe(before);
  });

  it('covers exactly the addresses of its input (property)', () => {
    const interval = fc.tuple(fc.integer({ min: 0, max: 60 }), fc.integer({ min: 0, max: 8 })).map(([lo, len]) => ({ family: 4 as const, lo: BigInt(lo), hi: BigInt(lo + len) }));
    fc.assert(
      fc.property(fc.array(interval, { maxLength: 8 }), (ranges) => {
        const merged = mergeRanges(ranges);
        for (let i = 1; i < merged.length; i++) expect(merged[i]!.lo).toBeGreaterThan(merged[i - 1]!.hi + 1n);
        for (let a = 0n; a < 72n; a++) {
          expect(merged.some((m) => rangeContains(m, 4, a))).toBe(ranges.some((x) => rangeContains(x, 4, a)));
        }
      }),
    );
  });
});

describe('rangeToCidrs / formatRangeNft', () => {
  it('covers a range with the largest aligned blocks', () => {
    expect(rangeToCidrs(v4('198.51.100.5', '198.51.100.9'))).toEqual(['198.51.100.5/32', '198.51.100.6/31', '198.51.100.8/31']);
    expect(rangeToCidrs(v4('198.18.0.0', '198.19.255.255'))).toEqual(['198.18.0.0/15']);
    expect(rangeToCidrs(fullRange(4))).toEqual(['0.0.0.0/0']);
    expect(rangeToCidrs(fullRange(6))).toEqual(['::/0']);
    expect(rangeToCidrs(v6('fd00:5ec::10', 'fd00:5ec::1f'))).toEqual(['fd00:5ec::10/124']);
    expect(rangeToCidrs(v6('fd00:5ec::ffff', 'fd00:5ec::1:0'))).toEqual(['fd00:5ec::ffff/128', 'fd00:5ec::1:0/128']);
  });

  it('covers exactly the range, with aligned blocks (property)', () => {
    fc.assert(
      fc.property(u32, u32, (a, b) => {
        const range: AddrRange = { family: 4, lo: a < b ? a : b, hi: a < b ? b : a };
        const cidrs = rangeToCidrs(range).map((c) => prefixRange(c));
        expect(cidrs.length).toBeLessThanOrEqual(62);
        expect(cidrs[0]!.lo).toBe(range.lo);
        expect(cidrs[cidrs.length - 1]!.hi).toBe(range.hi);
        for (let i = 1; i < cidrs.length; i++) expect(cidrs[i]!.lo).toBe(cidrs[i - 1]!.hi + 1n);
      }),
    );
  });

  it('prints an address, a CIDR or first-last for nft', () => {
    expect(formatRangeNft(v4('198.18.0.10'))).toBe('198.18.0.10');
    expect(formatRangeNft(v4('198.18.0.0', '198.18.0.255'))).toBe('198.18.0.0/24');
    expect(formatRangeNft(v4('198.51.100.5', '198.51.100.9'))).toBe('198.51.100.5-198.51.100.9');
    expect(formatRangeNft(fullRange(6))).toBe('::/0');
    expect(formatRangeNft(v6('fd00:5ec::1', 'fd00:5ec::2'))).toBe('fd00:5ec::1-fd00:5ec::2');
  });

  it('rangeContains checks the family', () => {
    expect(rangeContains(fullRange(4), 6, 1n)).toBe(false);
    expect(rangeContains(fullRange(6), 6, 1n)).toBe(true);
  });
});
