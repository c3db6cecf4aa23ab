/**
 * The example policies are valid, the YAML twin says the same as its JSON, and
 * every `explain` command in examples/README.md gives the verdict written
 * under it.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { compilePolicy } from '../../src/nft/compile.js';
import { renderScript } from '../../src/nft/render.js';
import { prefixRange } from '../../src/policy/address.js';
import { evaluate } from '../../src/policy/evaluate.js';
import { loadPolicyFile } from '../../src/policy/load.js';
import { parsePacketText } from '../../src/policy/packet-text.js';

const DIR = join(import.meta.dirname, '../../examples');
const FILES = readdirSync(DIR).filter((f) => /\.(json|ya?ml)$/.test(f));

/** Addresses allowed in examples: test ranges and documentation ranges. */
const ALLOWED = ['198.18.0.0/15', 'fd00:5ec::/48', '203.0.113.0/24', '198.51.100.0/24', '2001:db8::/32'].map((p) => prefixRange(p));
const ANY = new Set(['0.0.0.0/0', '::/0']);

function addressesIn(text: string): string[] {
  const out: string[] = [];
  for (const m of text.matchAll(/"([0-9a-fA-F:.]+(?:\/\d+)?(?:-[0-9a-fA-F:.]+)?)"/g)) {
    const s = m[1]!;
    if (/^\d+(-\d+)?(,\d+)*$/.test(s) || !/[.:]/.test(s) || /^\d+\.\d+$/.test(s)) continue;
    out.push(s);
  }
  return out;
}

describe('examples/', () => {
  it('has the policies the README describes', () => {
    expect(FILES.sort()).toEqual(['address-group.json', 'deny-over-allow.json', 'group-order.json', 'ipv6.json', 'ipv6.yaml', 'remote-group.json', 'web.json']);
  });

  it.each(FILES)('%s is valid and renders', async (file) => {
    const policy = await loadPolicyFile(join(DIR, file));
    expect(renderScript(compilePolicy(policy).table)).toContain('table inet secgroup {');
  });

  it.each(FILES.filter((f) => f.endsWith('.json')))('%s only uses test and documentation addresses', (file) => {
    for (const a of addressesIn(readFileSync(join(DIR, file), 'utf8'))) {
      if (ANY.has(a)) continue;
      const r = prefixRange(a);
      expect(ALLOWED.some((x) => x.family === r.family && x.lo <= r.lo && r.hi <= x.hi), `${file}: ${a}`).toBe(true);
    }
  });

  it('ipv6.yaml is the same policy as ipv6.json', async () => {
    expect(await loadPolicyFile(join(DIR, 'ipv6.yaml'))).toEqual(await loadPolicyFile(join(DIR, 'ipv6.json')));
  });

  const readme = readFileSync(join(DIR, 'README.md'), 'utf8');
  const cases = [...readme.matchAll(/^npx tsx src\/cli\/main\.ts explain (\S+) --packet "([^"]+)"\n# -> (ACCEPT|DROP) by (rule \S+|platform rule \S+|default drop)$/gm)].map((m) => ({
    file: m[1]!,
    packet: m[2]!,
    verdict: m[3]!,
    by: m[4]!,
  }));

  it('the README has an explain command with its verdict for every example', () => {
    expect(new Set(cases.map((c) => c.file.replace(/^examples\//, '')))).toEqual(new Set(FILES));
    // every explain command in the README is one of the checked ones
    expect(readme.match(/^npx tsx src\/cli\/main\.ts explain .*--packet/gm)!.length).toBe(cases.length + 1);
  });

  it.each(cases)('README: $file "$packet" -> $verdict by $by', async ({ file, packet, verdict, by }) => {
    const policy = await loadPolicyFile(join(DIR, '..', file));
    const result = evaluate(policy, parsePacketText(packet));
    expect(result.verdict.toUpperCase()).toBe(verdict);
    const reason = result.reason;
    const actual =
      reason.kind === 'rule' ? `rule ${reason.ruleId}` : reason.kind === 'platform' ? `platform rule ${reason.name}` : reason.kind === 'default' ? 'default drop' : reason.kind;
    expect(actual).toBe(by);
  });
});
