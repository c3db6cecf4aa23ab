/**
 * The "first attempt" rendering the packet benchmark compares against: one
 * nft rule per policy rule and peer prefix, in first-match order, in the
 * same base chains and behind the same platform and conntrack rules as
 * secgroup's own rendering. Remote groups become one named interval set per
 * group (one rule per rule referencing it): writing one rule per member would
 * make the naive ruleset millions of rules long, not a fair first attempt.
 */
import { formatRangeNft } from '../src/policy/address.js';
import { peerRanges } from '../src/policy/address-set.js';
import { normalizeRules, type NormalizedRule } from '../src/policy/normalize.js';
import type { Policy } from '../src/policy/schema.js';

function match(r: NormalizedRule, peer: string): string {
  const fam = r.family === 4 ? 'ip' : 'ip6';
  const parts = [`meta nfproto ${r.family === 4 ? 'ipv4' : 'ipv6'}`];
  if (peer) parts.push(`${fam} ${r.direction === 'ingress' ? 'saddr' : 'daddr'} ${peer}`);
  if (r.protocol !== null) parts.push(`meta l4proto ${r.protocol}`);
  if (r.ports) parts.push(`th dport { ${r.ports.map(([a, b]) => (a === b ? `${a}` : `${a}-${b}`)).join(', ')} }`);
  if (r.icmpType !== null) parts.push(`${r.family === 4 ? 'icmp' : 'icmpv6'} type ${r.icmpType}`);
  if (r.icmpCode !== null) parts.push(`${r.family === 4 ? 'icmp' : 'icmpv6'} code ${r.icmpCode}`);
  return parts.join(' ');
}

export interface NaiveRendering {
  script: string;
  /** nft rules in the input and output chains (excluding sets) */
  rules: { input: number; output: number };
}

/** Table `inet <table>`: linear rules, policy drop. */
export function renderNaive(policy: Policy, table = 'secgroup'): NaiveRendering {
  const sets = new Map<string, { family: 4 | 6; elems: string[] }>();
  const chains = { input: [] as string[], output: [] as string[] };
  for (const r of normalizeRules(policy)) {
    if (r.peers.length === 0) continue;
    const verdict = r.action === 'allow' ? 'accept' : 'drop';
    const chain = r.direction === 'ingress' ? chains.input : chains.output;
    if (r.remote.kind === 'group' || r.remote.kind === 'address_group') {
      const name = `g${r.family}_${r.remote.id.replace(/[^A-Za-z0-9_]/g, '_')}`;
      if (!sets.has(name)) sets.set(name, { family: r.family, elems: peerRanges(r.peers).map(formatRangeNft) });
      chain.push(`${match(r, `@${name}`)} ${verdict}`);
      continue;
    }
    for (const p of peerRanges(r.peers)) {
      const full = p.lo === 0n && p.hi === (r.family === 4 ? (1n << 32n) - 1n : (1n << 128n) - 1n);
      chain.push(`${match(r, full ? '' : formatRangeNft(p))} ${verdict}`);
    }
  }
  const out = [`table inet ${table} {}`, `delete table inet ${table}`, `table inet ${table} {`];
  for (const [name, s] of sets) {
    out.push(`\tset ${name} {`, `\t\ttype ${s.family === 4 ? 'ipv4_addr' : 'ipv6_addr'}`, '\t\tflags interval');
    if (s.elems.length) out.push(`\t\telements = { ${s.elems.join(', ')} }`);
    out.push('\t}');
  }
  out.push('\tchain input {', '\t\ttype filter hook input priority 0; policy drop;', '\t\tiif "lo" accept');
  out.push('\t\tct state invalid counter drop', '\t\tct direction reply ct state established accept', '\t\tct state related accept');
  for (const l of chains.input) out.push(`\t\t${l}`);
  out.push('\t\tcounter drop', '\t}');
  out.push('\tchain output {', '\t\ttype filter hook output priority 0; policy drop;', '\t\toif "lo" accept');
  out.push('\t\tct state invalid counter drop', '\t\tct state established,related accept');
  for (const l of chains.output) out.push(`\t\t${l}`);
  out.push('\t\tcounter drop', '\t}', '}');
  return { script: out.join('\n') + '\n', rules: { input: chains.input.length, output: chains.output.length } };
}
