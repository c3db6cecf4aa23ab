/**
 * Canonical text of the values the controller's API stores (docs/api.md
 * "Stored values are canonical"): one spelling per meaning, so that what is
 * stored, returned and compared for duplicates does not depend on how a
 * client wrote it. Pure; the API calls it after `checkRule` /
 * `checkAddressGroupEntries` accepted a value.
 *
 * Stricter than the policy document on purpose: the document schema keeps
 * accepting what it accepted before (a stored last known good must stay
 * loadable), while the API refuses spellings that are ambiguous (leading
 * zeros) or can never match (IPv4-mapped IPv6).
 *
 * - multiport: items trimmed, joined by "," without spaces, `a-a` written `a`;
 *   the order of the items is kept (duplicate detection merges the ranges).
 * - an IP or CIDR: the network address (host bits cleared, as Neutron's
 *   `normalized_cidr`), always with a prefix length (bare IP = /32 or /128),
 *   IPv6 in RFC 5952 text (lower case, longest zero run compressed).
 * - a range `first-last` (address groups): both ends canonical, no spaces.
 * - a prefix length with a leading zero (`/08`) is refused, as dotted quads
 *   with leading zeros (`010.1.1.1`) already are: read as octal by some
 *   tools, as decimal by others.
 * - IPv6 inside ::ffff:0:0/96 (IPv4-mapped) or ::0.0.0.2-::255.255.255.255
 *   (IPv4-compatible, deprecated by RFC 4291) is refused: such packets never
 *   reach an IPv6 rule, so a rule written that way matches nothing.
 */
import { formatIp, parsePrefix, FAMILY_BITS, type AddrRange, type Family } from './address.js';
import { parseMultiport } from './schema.js';

export type Canonical = { ok: true; value: string } | { ok: false; error: string };

/** `" 22, 80-80 ,1000-2000"` -> `"22,80,1000-2000"`. */
export function canonicalMultiport(text: string): Canonical {
  const mp = parseMultiport(text);
  if (!mp.ok) return { ok: false, error: mp.error };
  return { ok: true, value: mp.ranges.map(([a, b]) => (a === b ? String(a) : `${a}-${b}`)).join(',') };
}

const MAPPED_LO = 0xffffn << 32n;
const MAPPED_HI = MAPPED_LO | 0xffffffffn;
const V4_MAX = 0xffffffffn;

/** The IPv4 range an IPv4-mapped or -compatible IPv6 range stands for, or null when it is an ordinary IPv6 range. */
export function embeddedIpv4(r: AddrRange): { kind: 'IPv4-mapped' | 'IPv4-compatible'; lo: bigint; hi: bigint } | null {
  if (r.family !== 6) return null;
  if (r.lo >= MAPPED_LO && r.hi <= MAPPED_HI) return { kind: 'IPv4-mapped', lo: r.lo & V4_MAX, hi: r.hi & V4_MAX };
  // `::` and `::1` (unspecified, loopback) are IPv6 addresses of their own
  if (r.lo >= 2n && r.hi <= V4_MAX) return { kind: 'IPv4-compatible', lo: r.lo, hi: r.hi };
  return null;
}

/** CIDR text of [lo, hi] when it is one block, else `first-last`. */
function rangeText(family: Family, lo: bigint, hi: bigint, single: 'cidr' | 'bare'): string {
  const size = hi - lo + 1n;
  if ((size & (size - 1n)) === 0n && (lo & (size - 1n)) === 0n) {
    const len = FAMILY_BITS[family] - (size.toString(2).length - 1);
    return single === 'bare' && size === 1n ? formatIp(family, lo) : `${formatIp(family, lo)}/${len}`;
  }
  return `${formatIp(family, lo)}-${formatIp(family, hi)}`;
}

function embeddedError(text: string, r: AddrRange, what: 'rule' | 'address group'): string | null {
  const e = embeddedIpv4(r);
  if (!e) return null;
  const v4 = rangeText(4, e.lo, e.hi, 'cidr');
  const fix = what === 'rule' ? `write an IPv4 rule with ${v4}` : `put ${v4} in an IPv4 address group`;
  return `${JSON.stringify(text)} is an ${e.kind} IPv6 address, which never matches IPv4 traffic: ${fix}`;
}

/**
 * `remote_ip_prefix` of an API rule: canonical CIDR, or why it is refused.
 * `text` has passed `checkRule` (a valid IP or CIDR of the rule's family).
 */
export function canonicalRemotePrefix(text: string): Canonical {
  const slash = text.indexOf('/');
  if (slash >= 0 && /^0\d/.test(text.slice(slash + 1))) {
    return { ok: false, error: `${JSON.stringify(text)}: the prefix length must be written without leading zeros` };
  }
  const p = parsePrefix(text);
  if (!p.ok) return { ok: false, error: p.error };
  const mapped = embeddedError(text, p.range, 'rule');
  if (mapped) return { ok: false, error: mapped };
  return { ok: true, value: rangeText(p.range.family, p.range.lo, p.range.hi, 'cidr') };
}

/**
 * One `ip_set` entry of an address group: a CIDR (bare IP = /32, /128) or a
 * range `first-last` with canonical ends. `text` has passed
 * `checkAddressGroupEntries`.
 */
export function canonicalIpSetEntry(text: string): Canonical {
  const slash = text.indexOf('/');
  if (slash >= 0 && /^0\d/.test(text.slice(slash + 1))) {
    return { ok: false, error: `${JSON.stringify(text)}: the prefix length must be written without leading zeros` };
  }
  const p = parsePrefix(text, { allowRange: true });
  if (!p.ok) return { ok: false, error: p.error };
  const mapped = embeddedError(text, p.range, 'address group');
  if (mapped) return { ok: false, error: mapped };
  const { family, lo, hi } = p.range;
  if (text.includes('-')) return { ok: true, value: `${formatIp(family, lo)}-${formatIp(family, hi)}` };
  return { ok: true, value: rangeText(family, lo, hi, 'cidr') };
}

/** The rule fields the API stores in canonical form; `""` and absent are stored as null. */
export interface CanonicalRuleFields {
  protocol: string | null;
  multiport: string | null;
  remote_ip_prefix: string | null;
  remote_group_id: string | null;
  remote_address_group_id: string | null;
}

/**
 * Canonical stored form of a rule's free-text fields. The rule has passed
 * `checkRule`; problems found here (only the API's stricter spellings) come
 * back as `{ field, message }`.
 */
export function canonicalRuleFields(r: {
  protocol?: string | null | undefined;
  multiport?: string | null | undefined;
  remote_ip_prefix?: string | null | undefined;
  remote_group_id?: string | null | undefined;
  remote_address_group_id?: string | null | undefined;
}): { ok: true; fields: CanonicalRuleFields } | { ok: false; field: string; message: string } {
  let multiport: string | null = null;
  if (r.multiport) {
    const c = canonicalMultiport(r.multiport);
    if (!c.ok) return { ok: false, field: 'multiport', message: c.error };
    multiport = c.value;
  }
  let remote_ip_prefix: string | null = null;
  if (r.remote_ip_prefix) {
    const c = canonicalRemotePrefix(r.remote_ip_prefix);
    if (!c.ok) return { ok: false, field: 'remote_ip_prefix', message: c.error };
    remote_ip_prefix = c.value;
  }
  return {
    ok: true,
    fields: {
      protocol: r.protocol || null,
      multiport,
      remote_ip_prefix,
      remote_group_id: r.remote_group_id || null,
      remote_address_group_id: r.remote_address_group_id || null,
    },
  };
}
