/**
 * The renderer (src/nft/render.ts): golden nft scripts for the examples (for
 * reviewing output changes: UPDATE_GOLDEN=1 rewrites them), the JSON form, and
 * the promise that no user text reaches nft syntax: adversarial ids, names and
 * descriptions are rejected by the schema or never appear in the script.
 */
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { compilePolicy, type CompileOptions } from '../../src/nft/compile.js';
import { renderDeleteScript, renderJson, renderScript, renderTransaction, renderTransactionChunks } from '../../src/nft/render.js';
import { counterKey, ruleCounters } from '../../src/nft/counters.js';
import { counterObjectName, ruleChainName } from '../../src/nft/names.js';
import { reloadInPlaceTx, replaceTableTx } from '../../src/nft/transaction.js';
import { MARKER_SET } from '../../src/nft/model.js';
import { loadPolicyFile } from '../../src/policy/load.js';
import { DEFAULT_PLATFORM } from '../../src/policy/platform.js';
import { checkPolicy, ID_PATTERN, parsePolicy } from '../../src/policy/schema.js';
import { golden } from '../helpers/golden.js';
import { createRng, randomPolicy } from '../helpers/random-policy.js';

const ROOT = join(import.meta.dirname, '../..');
const EXAMPLES = readdirSync(join(ROOT, 'examples')).filter((f) => f.endsWith('.json'));

const WITH_PLATFORM: CompileOptions = {
  platform: {
    ...DEFAULT_PLATFORM,
    dhcp: false,
    controller: { addresses: ['198.18.1.1', 'fd00:5ec::1:1'], port: 8443, dns: true },
    failsafeIngress: [{ protocol: 6, from: 22, to: 22 }],
    failsafeEgress: [{ protocol: 17, from: 123, to: 123 }],
  },
};

describe('golden scripts', () => {
  it.each(EXAMPLES)('examples/%s', async (file) => {
    const policy = await loadPolicyFile(join(ROOT, 'examples', file));
    golden(file.replace(/\.json$/, '.nft'), renderScript(compilePolicy(policy).table));
  });

  it('examples/ipv6.yaml renders the same script as ipv6.json', async () => {
    const [yaml, json] = await Promise.all(['ipv6.yaml', 'ipv6.json'].map((f) => loadPolicyFile(join(ROOT, 'examples', f))));
    expect(renderScript(compilePolicy(yaml!).table)).toBe(renderScript(compilePolicy(json!).table));
  });

  it('examples/web.json with a controller (by name), failsafe ports and DHCP off', async () => {
    const policy = await loadPolicyFile(join(ROOT, 'examples/web.json'));
    golden('web-platform.nft', renderScript(compilePolicy(policy, WITH_PLATFORM).table));
  });

  it('examples/web.json as libnftables JSON', async () => {
    const policy = await loadPolicyFile(join(ROOT, 'examples/web.json'));
    golden('web.nft.json', JSON.stringify(renderJson(compilePolicy(policy).table), null, 2) + '\n');
  });
});

describe('script form', () => {
  it('replaces our table in one transaction: create-if-missing, delete, define', async () => {
    const script = renderScript(compilePolicy(await loadPolicyFile(join(ROOT, 'examples/web.json')), { table: 'sg_test' }).table);
    expect(script.split('\n').slice(0, 4)).toEqual(['# secgroup: replaces table inet sg_test in one transaction (nft -f)', 'table inet sg_test {}', 'delete table inet sg_test', 'table inet sg_test {']);
    expect(script.match(/^table /gm)).toHaveLength(2);
    expect(script).not.toMatch(/flush ruleset|^delete table (?!inet sg_test$)/m);
    expect(renderDeleteScript('inet', 'sg_test')).toBe('table inet sg_test {}\ndelete table inet sg_test\n');
  });

  it('the JSON form holds the same objects as the script', () => {
    for (let seed = 0; seed < 50; seed++) {
      const { table } = compilePolicy(parsePolicy(randomPolicy(createRng(seed))));
      const cmds = renderJson(table).nftables as Record<string, Record<string, Record<string, unknown>>>[];
      expect(cmds.slice(0, 3).map((c) => Object.keys(c)[0])).toEqual(['add', 'delete', 'add']);
      const adds = (kind: string) => cmds.filter((c) => c.add?.[kind]).map((c) => c.add![kind]!);
      // verdict maps and member sets, in the model's order (the generation marker set aside)
      const mapsAndSets = cmds.filter((c) => c.add?.map || (c.add?.set && c.add.set.name !== MARKER_SET)).map((c) => (c.add!.map ?? c.add!.set)!);
      expect(mapsAndSets.map((m) => m.name)).toEqual(table.maps.map((m) => m.name));
      expect(mapsAndSets.map((m) => ((m.elem as unknown[] | undefined) ?? []).length)).toEqual(table.maps.map((m) => m.elements.length));
      expect(adds('set').filter((m) => m.name !== MARKER_SET).map((m) => m.name)).toEqual(table.maps.filter((m) => m.set).map((m) => m.name));
      expect(adds('chain').map((c) => c.name)).toEqual(table.chains.map((c) => c.name));
      expect(adds('rule')).toHaveLength(table.chains.reduce((n, c) => n + c.rules.length, 0));
      expect(() => JSON.stringify(cmds)).not.toThrow();
    }
  });
});

describe('JSON form: named counters', () => {
  it('declares the counter objects of the script and has each counted rule count into the one the script names', () => {
    for (let seed = 0; seed < 30; seed++) {
      const { table } = compilePolicy(parsePolicy(randomPolicy(createRng(seed))));
      const script = renderScript(table);
      const cmds = renderJson(table).nftables as Record<string, Record<string, Record<string, unknown>>>[];
      const declared = cmds.filter((c) => c.add?.counter).map((c) => c.add!.counter!);
      expect(declared.map((c) => c.name)).toEqual([...script.matchAll(/^\tcounter (c_[0-9a-f]+) \{ \}$/gm)].map((m) => m[1]));
      expect(declared.every((c) => c.family === 'inet' && c.table === table.name)).toBe(true);
      // the rules, in order: the counter each names (or an anonymous one), as in the script's rule lines
      const jsonCounters = cmds.filter((c) => c.add?.rule).map((c) => {
        const counter = (c.add!.rule!.expr as Record<string, unknown>[]).find((e) => 'counter' in e)?.counter;
        return counter === undefined ? 'none' : typeof counter === 'string' ? counter : 'anonymous';
      });
      const scriptCounters = script
        .split('\n')
        .filter((l) => /^\t\t(?!type |comment |elements |flags )/.test(l) && !/^\t\t\t/.test(l) && !l.startsWith('\t\t}'))
        .map((l) => /counter name "(c_[0-9a-f]+)"/.exec(l)?.[1] ?? (/\bcounter\b/.test(l) ? 'anonymous' : 'none'));
      expect(jsonCounters).toEqual(scriptCounters);
      expect(jsonCounters.filter((c) => c.startsWith('c_')).length).toBe(declared.length);
    }
  });
});

// ---- no user text in nft syntax ----

/** Characters that could end a string, a statement or a block in nft syntax, or hide in a terminal. */
const NASTY = ['"', "'", ';', '\n', '\r', '\t', '}', '{', '#', '\\', '$', '`', '@', '*', ' ', '<', '>', 'é', '🔥', '\u202e', '\u0000', '\u00a0', '\u2028'];
/** Letters ids may use in this test; none of the markers below can be built from them. */
const ID_CHARS = ['a', 'b', 'c', '0', '1', '.', '_', ':', '-'];

const nastyString = (chars: string[], maxLength: number) => fc.array(fc.constantFrom(...chars), { minLength: 0, maxLength }).map((a) => a.join(''));
const idLike = fc.oneof(
  { arbitrary: nastyString(ID_CHARS, 12).filter((s) => s.length > 0), weight: 12 },
  { arbitrary: fc.constant('x'.repeat(64)), weight: 2 },
  { arbitrary: nastyString([...ID_CHARS, ...NASTY], 12), weight: 1 },
  { arbitrary: fc.constant('y'.repeat(65)), weight: 1 },
);
/** Free text carrying a marker that must never show up in a script. */
// (descriptions may not hold < or >: the schema test covers that rejection)
const marked = (marker: string) => nastyString([...NASTY.filter((c) => c !== '<' && c !== '>'), 'a', 'Z'], 20).map((s) => `${marker}${s}${marker}`);
const multiportLike = fc.constantFrom('22', '22, 80', '80,\t443', '80,\n443', '\u00a080', '1-1024 ,8080', '22', '80;443', '80}', '"80"', '80 # x');

/** What a rendered script may contain: printable ASCII, and quotes, semicolons and # only where we put them. */
function scriptProblems(script: string): string[] {
  const problems: string[] = [];
  if (/[^\x20-\x7e\t\n]/.test(script)) problems.push('a character outside printable ASCII');
  let depth = 0;
  for (const line of script.split('\n')) {
    const unquoted = line.replace(/"[A-Za-z0-9 ._:/,=()+#~-]*"/g, '""');
    if (unquoted.replace(/""/g, '').includes('"')) problems.push(`unbalanced or unsafe quote: ${line}`);
    if (unquoted.includes(';') && !/^\t\ttype filter hook (input|output) priority -?\d+; policy (accept|drop);$/.test(line)) problems.push(`semicolon: ${line}`);
    const hash = unquoted.indexOf('#');
    if (hash >= 0 && !line.startsWith('# secgroup: ') && !/ # [A-Za-z0-9._:-]+\/[A-Za-z0-9._:~-]+$/.test(line)) problems.push(`# outside a comment: ${line}`);
    for (const ch of unquoted.slice(0, hash >= 0 ? hash : undefined)) {
      if (ch === '{') depth++;
      if (ch === '}') depth--;
      if (depth < 0) problems.push(`unbalanced }: ${line}`);
    }
  }
  if (depth !== 0) problems.push('unbalanced braces');
  return problems;
}

describe('streamed scripts', () => {
  const big = () =>
    compilePolicy(
      parsePolicy({
        revision: 1,
        instance: { id: 'i-1', addresses: ['198.18.0.10'] },
        security_groups: [{ id: 'sg-a', rules: [{ id: 'r-1', direction: 'ingress', protocol: 'tcp', multiport: '443', remote_group_id: 'sg-big' }] }],
        group_members: { 'sg-big': Array.from({ length: 20_000 }, (_, i) => `198.18.${i >> 8}.${i & 255}`) },
      }),
    ).table;

  it('come in chunks of whole lines that join to the same script, none holding a whole 20k-member set', () => {
    const table = big();
    const chunks = [...renderTransactionChunks(replaceTableTx(table))];
    expect(chunks.join('')).toBe(renderTransaction(replaceTableTx(table)));
    expect(chunks.join('')).toBe(renderScript(table));
    expect(chunks.length).toBeGreaterThan(5);
    for (const c of chunks) expect(c.endsWith('\n')).toBe(true);
    const longest = Math.max(...chunks.map((c) => c.length));
    expect(longest).toBeLessThan(renderScript(table).length / 5);
  });

  it('refuse a transaction for another table before the first chunk', () => {
    const tx = replaceTableTx(big());
    expect(() => renderTransactionChunks({ ...tx, table: 'other' })).toThrow(/touches inet secgroup/);
  });
});

describe('counters carried over a full reload', () => {
  const web = () => compilePolicy(parsePolicy({ revision: 1, instance: { id: 'i-1', addresses: ['198.18.0.10'] }, security_groups: [{ id: 'sg-web', rules: [{ id: 'r-http', direction: 'ingress', protocol: 'tcp', multiport: '80' }, { id: 'r-ssh', direction: 'ingress', protocol: 'tcp', multiport: '22' }] }] })).table;

  it('a rule whose chain and comment are carried starts from its counts in its named counter; the others from zero', () => {
    const http = ruleChainName('sg-web', 'r-http');
    const ssh = ruleChainName('sg-web', 'r-ssh');
    const counters = new Map([
      [counterKey(http, 'sg-web/r-http'), { packets: 12, bytes: 3400 }],
      [counterKey('input', 'default: no rule matched'), { packets: 5, bytes: 300 }],
      [counterKey('r_gone', 'sg-web/r-gone'), { packets: 1, bytes: 1 }],
    ]);
    const script = renderTransaction(replaceTableTx(web(), counters));
    const chain = (name: string) => script.slice(script.indexOf(`\tchain ${name} {\n`), script.indexOf('\n\t}\n', script.indexOf(`\tchain ${name} {\n`)));
    const name = (chainName: string, comment: string) => counterObjectName(counterKey(chainName, comment));
    expect(chain(http)).toContain(`counter name "${name(http, 'sg-web/r-http')}" jump flow_allow comment "sg-web/r-http"`);
    expect(script).toContain(`\tcounter ${name(http, 'sg-web/r-http')} { packets 12 bytes 3400 }\n`);
    expect(chain(ssh)).toContain(`counter name "${name(ssh, 'sg-web/r-ssh')}" jump flow_allow comment "sg-web/r-ssh"`);
    expect(script).toContain(`\tcounter ${name(ssh, 'sg-web/r-ssh')} { }\n`);
    expect(chain('input')).toContain(`counter name "${name('input', 'default: no rule matched')}" drop comment "default: no rule matched"`);
    expect(script).toContain(`\tcounter ${name('input', 'default: no rule matched')} { packets 5 bytes 300 }\n`);
    expect(script).toContain(`\tcounter ${name('output', 'default: no rule matched')} { }\n`);
    expect(script).not.toContain('r_gone');
    expect(script).not.toContain(name('r_gone', 'sg-web/r-gone'));
    // without counters: the script as before
    expect(renderTransaction(replaceTableTx(web()))).toBe(renderScript(web()));
  });

  it('a reload in place deletes every object of the previous table but its counters that stay, and defines the new one without its comment', () => {
    const previous = web();
    const next = web();
    next.chains = next.chains.filter((c) => c.name !== ruleChainName('sg-web', 'r-ssh'));
    const script = renderTransaction(reloadInPlaceTx(next, previous));
    const lines = script.split('\n');
    expect(lines[1]).toBe('flush table inet secgroup');
    expect(script).not.toContain('delete table');
    for (const c of previous.chains) expect(lines).toContain(`delete chain inet secgroup ${c.name}`);
    for (const m of previous.maps) expect(lines).toContain(`delete ${m.set ? 'set' : 'map'} inet secgroup ${m.name}`);
    expect(lines).toContain('delete set inet secgroup sg_generation');
    const gone = counterObjectName(counterKey(ruleChainName('sg-web', 'r-ssh'), 'sg-web/r-ssh'));
    expect(lines.filter((l) => l.startsWith('delete counter'))).toEqual([`delete counter inet secgroup ${gone}`]);
    const body = script.slice(script.indexOf('table inet secgroup {\n'));
    expect(body).not.toMatch(/^\tcomment "/m);
    expect(body).toContain(`\tcounter ${counterObjectName(counterKey(ruleChainName('sg-web', 'r-http'), 'sg-web/r-http'))} { }\n`);
    expect(body).toBe(renderScript(next).slice(renderScript(next).indexOf('table inet secgroup {\n')).replace(/^\tcomment "[^"]*"\n/m, ''));
  });

  it('rules are identified by chain and comment; a comment seen twice in a chain, or none, identifies nothing; counts past 2^53 are not carried', () => {
    const counted = (comment: string | null, packets: number) => ({ comment, counter: { packets, bytes: packets * 100 } });
    const got = ruleCounters([
      { name: 'input', rules: [counted('a', 1), counted('b', 2), counted('b', 3), counted(null, 4), { comment: 'c', counter: null }] },
      { name: 'r_1', rules: [counted('sg/r', 7)] },
      { name: 'r_2', rules: [{ comment: 'sg/big', counter: { packets: 2 ** 60, bytes: 2 ** 62 } }] },
    ]);
    expect([...got]).toEqual([
      [counterKey('input', 'a'), { packets: 1, bytes: 100 }],
      [counterKey('r_1', 'sg/r'), { packets: 7, bytes: 700 }],
    ]);
  });

  it('a counter value that is not a safe non-negative integer is an internal error, never nft text', () => {
    const http = ruleChainName('sg-web', 'r-http');
    expect(() => renderTransaction(replaceTableTx(web(), new Map([[counterKey(http, 'sg-web/r-http'), { packets: -1, bytes: 0 }]])))).toThrow(/bad counter value/);
    expect(() => renderTransaction(replaceTableTx(web(), new Map([[counterKey(http, 'sg-web/r-http'), { packets: 1.5, bytes: 0 }]])))).toThrow(/bad counter value/);
  });
});

describe('no user-supplied text reaches nft syntax', () => {
  it('adversarial ids are rejected; names and descriptions never appear; whatever passes renders to a safe script', () => {
    let accepted = 0;
    let rejected = 0;
    fc.assert(
      fc.property(
        fc.record({
          groupId: idLike,
          ruleId: idLike,
          otherRuleId: idLike,
          agId: idLike,
          memberGroupId: idLike,
          instanceId: idLike,
          groupName: marked('QQNAMEQQ'),
          groupDescription: marked('QQGDESCQQ'),
          ruleDescription: marked('QQRDESCQQ'),
          agName: marked('QQAGNAMEQQ'),
          agDescription: marked('QQAGDESCQQ'),
          multiport: multiportLike,
        }),
        (v) => {
          const input = {
            revision: 1,
            instance: { id: v.instanceId, addresses: ['198.18.0.10'] },
            security_groups: [
              {
                id: v.groupId,
                name: v.groupName,
                description: v.groupDescription,
                rules: [
                  { id: v.ruleId, direction: 'ingress', protocol: 'tcp', multiport: v.multiport, remote_address_group_id: v.agId, description: v.ruleDescription },
                  { id: v.otherRuleId, direction: 'ingress', remote_group_id: v.memberGroupId },
                ],
              },
            ],
            address_groups: [{ id: v.agId, name: v.agName, description: v.agDescription, ip_version: 4, ip_set: ['203.0.113.0/24'] }],
            group_members: { [v.memberGroupId]: ['198.18.0.11'] },
          };
          const checked = checkPolicy(input);
          const ids = [v.groupId, v.ruleId, v.otherRuleId, v.agId, v.memberGroupId, v.instanceId];
          if (!checked.ok) {
            rejected++;
            // every id that breaks the rule is named in the issues
            for (const id of ids) if (!ID_PATTERN.test(id)) expect(checked.issues.some((i) => /\.id$|^group_members\.|remote_group_id$|remote_address_group_id$/.test(i.path))).toBe(true);
            return;
          }
          accepted++;
          for (const id of ids) expect(id).toMatch(ID_PATTERN);
          const script = renderScript(compilePolicy(checked.policy).table);
          expect(scriptProblems(script)).toEqual([]);
          expect(script).not.toMatch(/QQ/);
          const json = JSON.stringify(renderJson(compilePolicy(checked.policy).table));
          expect(json).not.toMatch(/QQ/);
        },
      ),
      { numRuns: 500 },
    );
    // both sides of the property were exercised
    expect(accepted).toBeGreaterThan(50);
    expect(rejected).toBeGreaterThan(50);
  });

  it('a name or description with quotes, newlines and braces is accepted by the schema and left out of the script', () => {
    const nasty = 'x" ; flush ruleset ; }\n# {';
    const policy = parsePolicy({
      revision: 1,
      instance: { id: 'i' },
      security_groups: [{ id: 'sg', name: nasty.slice(0, 20), description: nasty, rules: [{ id: 'r', direction: 'ingress', description: nasty }] }],
    });
    const script = renderScript(compilePolicy(policy).table);
    expect(script).not.toContain('flush');
    expect(scriptProblems(script)).toEqual([]);
  });

  it('multiport text with tabs or newlines around its items renders as plain numbers', () => {
    const policy = parsePolicy({ revision: 1, instance: { id: 'i' }, security_groups: [{ id: 'sg', rules: [{ id: 'r', direction: 'ingress', protocol: 'tcp', multiport: '80,\t443,\n8000-8080' }] }] });
    expect(renderScript(compilePolicy(policy).table)).toContain('comment "sg r: ingress allow IPv4 tcp 80,443,8000-8080 from 0.0.0.0/0"');
  });

  it('ids with nft syntax in them are rejected with the id rule', () => {
    const r = checkPolicy({ revision: 1, instance: { id: 'i' }, security_groups: [{ id: 'sg"; flush ruleset; "', rules: [] }] });
    expect(r.ok).toBe(false);
    expect(!r.ok && r.issues[0]!.path).toBe('security_groups[0].id');
  });

  it('the scripts of random policies are safe too', () => {
    for (let seed = 0; seed < 200; seed++) {
      const script = renderScript(compilePolicy(parsePolicy(randomPolicy(createRng(seed)))).table);
      expect(scriptProblems(script), `seed ${seed}`).toEqual([]);
    }
  });
});
