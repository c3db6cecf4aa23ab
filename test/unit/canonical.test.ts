/** src/policy/canonical.ts: canonical text is idempotent and means the same addresses / ports as what was written. */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { formatIp, parsePrefix, FAMILY_BITS, type Family } from '../../src/policy/address.js';
import { canonicalIpSetEntry, canonicalMultiport, canonicalRemotePrefix, canonicalRuleFields, embeddedIpv4 } from '../../src/policy/canonical.js';
import { mergePorts } from '../../src/policy/normalize.js';
import { parseMultiport, parsePolicy } from '../../src/policy/schema.js';

const MAPPED = 0xffffn << 32n;
const u32 = fc.bigInt({ min: 0n, max: (1n << 32n) - 1n });
const u128 = fc.oneof(
  fc.bigInt({ min: 0n, max: (1n << 128n) - 1n }),
  fc.array(fc.constantFrom(0, 0, 0, 1, 0xffff, 0x5ec), { minLength: 8, maxLength: 8 }).map((gs) => gs.reduce((a, g) => (a << 16n) | BigInt(g), 0n)),
);
/** an address in some spelling: canonical, upper case, or (IPv6) fully expanded */
const spelled = (family: Family, value: bigint, style: number): string => {
  const c = formatIp(family, value);
  if (family === 4) return c;
  if (style === 1) return c.toUpperCase();
  if (style === 2) return Array.from({ length: 8 }, (_, i) => ((value >> BigInt(112 - 16 * i)) & 0xffffn).toString(16).padStart(4, '0')).join(':');
  return c;
};
const addr = fc.oneof(
  u32.map((v) => ({ family: 4 as Family, value: v })),
  u128.map((v) => ({ family: 6 as Family, value: v })),
);
/** an IP (bare), a CIDR (maybe with host bits) or a range, in some spelling */
const entry = fc
  .tuple(addr, fc.nat(128), fc.nat(2), fc.nat(2), u128)
  .map(([a, len, kind, style, other]) => {
    const bits = FAMILY_BITS[a.family];
    if (kind === 0) return spelled(a.family, a.value, style);
    if (kind === 1) return `${spelled(a.family, a.value, style)}/${len % (bits + 1)}`;
    const b = a.family === 4 ? other & ((1n << 32n) - 1n) : other;
    const [lo, hi] = a.value <= b ? [a.value, b] : [b, a.value];
    return `${spelled(a.family, lo, style)}-${spelled(a.family, hi, style)}`;
  });

const rangeOf = (text: string) => {
  const p = parsePrefix(text, { allowRange: true });
  if (!p.ok) throw new Error(p.error);
  return p.range;
};

describe('canonicalIpSetEntry / canonicalRemotePrefix', () => {
  it('is idempotent and keeps the set of matched addresses (or refuses an IPv4-mapped/-compatible range)', () => {
    fc.assert(
      fc.property(entry, (text) => {
        const c = canonicalIpSetEntry(text);
        const r = rangeOf(text);
        if (!c.ok) {
          expect(embeddedIpv4(r), `${text}: ${c.error}`).not.toBeNull();
          return;
        }
        const back = rangeOf(c.value);
        expect({ family: back.family, lo: back.lo, hi: back.hi }).toEqual({ family: r.family, lo: r.lo, hi: r.hi });
        expect(canonicalIpSetEntry(c.value)).toEqual(c);
        if (!text.includes('-')) {
          const p = canonicalRemotePrefix(text);
          expect(p).toEqual(c);
          expect(canonicalRemotePrefix(c.value)).toEqual(c);
        }
      }),
      { numRuns: 2000 },
    );
  });

  it('refuses exactly the ranges inside ::ffff:0:0/96 and ::0.0.0.2-::255.255.255.255', () => {
    fc.assert(
      fc.property(fc.bigInt({ min: 0n, max: (1n << 32n) - 1n }), fc.nat(32), fc.boolean(), (v4, len, mapped) => {
        const value = mapped ? MAPPED | v4 : v4;
        const text = `${formatIp(6, value)}/${96 + len}`;
        const c = canonicalRemotePrefix(text);
        const r = rangeOf(text);
        const ordinary = !mapped && r.lo < 2n; // a block that holds :: or ::1
        expect(c.ok, text).toBe(ordinary);
      }),
    );
    expect(canonicalRemotePrefix('::/0')).toEqual({ ok: true, value: '::/0' });
    expect(canonicalRemotePrefix('::1')).toEqual({ ok: true, value: '::1/128' });
    expect(canonicalRemotePrefix('::ffff:1:0:0/96')).toEqual({ ok: true, value: '::ffff:1:0:0/96' });
  });

  it('examples', () => {
    expect(canonicalRemotePrefix('198.18.0.5/24')).toEqual({ ok: true, value: '198.18.0.0/24' });
    expect(canonicalRemotePrefix('198.18.0.5')).toEqual({ ok: true, value: '198.18.0.5/32' });
    expect(canonicalRemotePrefix('FD00:5EC::1')).toEqual({ ok: true, value: 'fd00:5ec::1/128' });
    expect(canonicalRemotePrefix('198.18.0.0/08')).toMatchObject({ ok: false, error: expect.stringMatching(/leading zeros/) });
    expect(canonicalIpSetEntry('198.18.0.1 - 198.18.0.3')).toEqual({ ok: true, value: '198.18.0.1-198.18.0.3' });
  });
});

describe('canonicalMultiport', () => {
  const item = fc.tuple(fc.integer({ min: 1, max: 65535 }), fc.integer({ min: 0, max: 3 }), fc.constantFrom('', ' ', '  '));
  it('is idempotent and keeps the set of ports', () => {
    fc.assert(
      fc.property(fc.uniqueArray(item, { minLength: 1, maxLength: 20, selector: ([a, w]) => `${a}-${w}` }), (items) => {
        const text = items.map(([a, w, sp]) => `${sp}${w === 0 && a % 2 ? `${a}-${a}` : w === 0 ? a : `${a}-${Math.min(65535, a + w)}`}${sp}`).join(',');
        const before = parseMultiport(text);
        fc.pre(before.ok);
        const c = canonicalMultiport(text);
        expect(c.ok).toBe(true);
        if (!c.ok || !before.ok) return;
        expect(c.value).not.toMatch(/\s/);
        expect(canonicalMultiport(c.value)).toEqual(c);
        const after = parseMultiport(c.value);
        expect(after.ok && mergePorts(after.ranges)).toEqual(mergePorts(before.ranges));
      }),
    );
  });
});

describe('canonicalRuleFields', () => {
  it('"" and absent become null; names the field it refuses', () => {
    expect(canonicalRuleFields({ protocol: '', multiport: '', remote_ip_prefix: '', remote_group_id: '' })).toEqual({
      ok: true,
      fields: { protocol: null, multiport: null, remote_ip_prefix: null, remote_group_id: null, remote_address_group_id: null },
    });
    expect(canonicalRuleFields({ remote_ip_prefix: '::ffff:198.18.0.1' })).toMatchObject({ ok: false, field: 'remote_ip_prefix' });
  });
});

describe('the policy document stays as lenient as before (documents a controller stored earlier remain valid)', () => {
  it('accepts non-canonical spellings and IPv4-mapped IPv6 that the API now refuses or rewrites', () => {
    const doc = {
      revision: 1,
      instance: { id: 'i1', addresses: ['198.18.0.10'] },
      security_groups: [
        {
          id: 'sg',
          rules: [
            { id: 'a', direction: 'ingress', protocol: 'tcp', multiport: ' 22, 80-80', remote_ip_prefix: '198.18.0.5/24' },
            { id: 'b', direction: 'ingress', remote_ip_prefix: '198.18.0.0/08' },
            { id: 'c', direction: 'ingress', ethertype: 'IPv6', remote_ip_prefix: '::ffff:198.18.0.1' },
          ],
        },
      ],
      address_groups: [{ id: 'ag', ip_version: 6, ip_set: ['::ffff:198.18.0.0/120'] }],
    };
    expect(parsePolicy(doc).security_groups[0]!.rules.map((r) => r.remote_ip_prefix)).toEqual(['198.18.0.5/24', '198.18.0.0/08', '::ffff:198.18.0.1']);
  });
});
