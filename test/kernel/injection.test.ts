/* eslint-disable @typescript-eslint/no-explicit-any -- API bodies and nft's JSON listing are untyped, checked by the assertions */
/**
 * Injection through the HTTP API (issue 12): descriptions, names and instance
 * names written to break out of nft text (`"; flush ruleset`, newlines,
 * quotes, backslashes, `#`, `}`, unicode, NUL, strings at the length limit)
 * are either refused by the API or stored and never rendered. The document
 * the controller compiles for the instance is rendered (library and
 * `secgroup render`), `nft --check` accepts it, and applied in the host
 * namespace of a test lab (created and removed here) the kernel holds
 * exactly our table with the rules the model has, next to a canary table
 * that an injected `flush ruleset` or `delete table` would have removed.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { compilePolicy } from '../../src/nft/compile.js';
import { renderScript } from '../../src/nft/render.js';
import { parsePolicy, type Policy } from '../../src/policy/schema.js';
import { runCli } from '../helpers/cli.js';
import { OBSERVE_TABLE } from '../helpers/netns.js';
import { describeKernel, useLab } from '../helpers/vitest-lab.js';
import { call, makeApi } from '../unit/controller-helpers.js';

const A = '/v3/proj-a';
const MARK = 'ZQX';
/** every description carries MARK, so any trace of one in nft text is found */
const HOSTILE = [
  '"; flush ruleset',
  '\nflush ruleset\ndelete table inet canary\n',
  `it's "quoted" \\" \\' and 'single'`,
  'back\\slash\\',
  '\\n\\t\\x00 escapes written out',
  '# comment } { ; } } }',
  'comment "x" } ; add rule inet canary input drop',
  '\u202e RTL \u200b zero width, ü 漢字 🔥',
  'nul \u0000 byte',
  '$(reboot) `id` ${x}',
].map((s) => `${MARK}${s}`);
/** at the limit of 255 characters: hostile text repeated (UTF-16 units, as zod counts) */
const LONG = (MARK + '"; flush ruleset\n}#\\'.repeat(20)).slice(0, 255);

describeKernel('hostile names and descriptions from the API never reach nft', () => {
  const lab = useLab();
  const dir = mkdtempSync(join(tmpdir(), 'sgt-inject-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));
  let policy: Policy;
  let documentText: string;
  let storedDescriptions: unknown[];

  beforeAll(async () => {
    const { app } = makeApi();
    const ok = async (method: 'POST' | 'PUT', url: string, body: object) => {
      const r = await call(app, method, url, body);
      expect(r.status, `${method} ${url}: ${r.text}`).toBeLessThan(300);
      return r.body;
    };
    await ok('POST', `${A}/vpc/security-groups`, { security_group: { id: 'sg-h', name: 'ü'.repeat(64), description: LONG } });
    await ok('POST', `${A}/vpc/address-groups`, { address_group: { id: 'ag-h', name: '漢'.repeat(64), description: HOSTILE[0], ip_version: 4, ip_set: ['198.18.5.0/24', '198.18.6.1'] } });
    await ok('PUT', `${A}/vpc/address-groups/ag-h`, { address_group: { description: LONG } });
    let port = 1000;
    for (const description of [...HOSTILE, LONG]) {
      await ok('POST', `${A}/vpc/security-group-rules`, {
        security_group_rule: { security_group_id: 'sg-h', direction: 'ingress', ethertype: 'IPv4', protocol: 'tcp', multiport: String(port++), remote_ip_prefix: '198.18.0.0/24', description },
      });
    }
    await ok('POST', `${A}/vpc/security-group-rules`, {
      security_group_rule: { security_group_id: 'sg-h', direction: 'ingress', ethertype: 'IPv4', protocol: 'udp', multiport: '53', remote_address_group_id: 'ag-h', description: HOSTILE[1] },
    });
    await ok('PUT', `${A}/vpc/security-groups/sg-h`, { security_group: { description: HOSTILE[6] } });
    await ok('POST', `${A}/instances`, { instance: { id: 'ecs-h', name: `${MARK}"; flush ruleset\n}`, addresses: ['198.18.0.10'], security_groups: ['sg-h', 'default'] } });
    const rules = (await call(app, 'GET', `${A}/vpc/security-group-rules?security_group_id=sg-h`)).body.security_group_rules;
    const group = (await call(app, 'GET', `${A}/vpc/security-groups/sg-h`)).body.security_group;
    const ag = (await call(app, 'GET', `${A}/vpc/address-groups/ag-h`)).body.address_group;
    storedDescriptions = [...rules.map((r: any) => r.description), group.description, ag.description];
    expect(storedDescriptions).toContain(HOSTILE[6]);
    const doc = await call(app, 'GET', `${A}/instances/ecs-h/policy`);
    expect(doc.status).toBe(200);
    documentText = doc.text;
    policy = parsePolicy(JSON.parse(documentText));
  });

  it('the API refuses hostile names, "<" ">" and descriptions over 255 characters, with 400 in its error shape', async () => {
    const { app } = makeApi();
    const refused: [string, string, object][] = [
      ['POST', `${A}/vpc/security-groups`, { security_group: { name: '"; flush ruleset' } }],
      ['POST', `${A}/vpc/security-groups`, { security_group: { name: 'a\nb' } }],
      ['POST', `${A}/vpc/security-groups`, { security_group: { name: 'ü'.repeat(65) } }],
      ['POST', `${A}/vpc/security-groups`, { security_group: { name: 'ok', description: LONG + 'x' } }],
      ['POST', `${A}/vpc/security-groups`, { security_group: { name: 'ok', description: '<script>' } }],
      ['POST', `${A}/vpc/address-groups`, { address_group: { name: 'x}#', ip_version: 4 } }],
      ['POST', `${A}/vpc/address-groups`, { address_group: { name: 'ok', description: 'a'.repeat(256), ip_version: 4 } }],
      ['POST', `${A}/vpc/security-groups`, { security_group: { id: 'sg"; flush', name: 'ok' } }],
      ['POST', `${A}/instances`, { instance: { id: 'ecs}', addresses: [] } }],
      ['POST', `${A}/instances`, { instance: { name: 'n'.repeat(65), addresses: [] } }],
    ];
    for (const [method, url, body] of refused) {
      const r = await call(app, method as 'POST', url, body);
      expect(r.status, `${url} ${JSON.stringify(body)}`).toBe(400);
      expect(Object.keys(r.body).sort()).toEqual(['error_code', 'error_msg', 'request_id']);
    }
  });

  it('the API keeps every hostile description as written; the policy document sent to agents carries none of them', () => {
    for (const d of [...HOSTILE, LONG]) expect(storedDescriptions).toContain(d);
    expect(documentText).not.toContain(MARK);
    expect(policy.security_groups.map((g) => g.id).sort()).toEqual(['default', 'sg-h']);
    // the hostile rules, LONG, the address-group rule, and the group's four default rules (Huawei's defaults; were two)
    expect(policy.security_groups.find((g) => g.id === 'sg-h')!.rules.length).toBe(HOSTILE.length + 2 + 4);
  });

  it('the rendered ruleset passes nft --check and, applied, holds exactly our table with the model\'s rules; nothing else changed', async () => {
    const compiled = compilePolicy(policy);
    const script = renderScript(compiled.table);
    expect(script).not.toContain(MARK);
    const check = await lab().exec('host', 'nft', ['--check', '-f', '-'], { input: script, reject: false });
    expect(check.exitCode, check.stderr).toBe(0);

    const canary = 'table inet canary {\n  chain input {\n    type filter hook input priority 10; policy accept;\n    counter\n    meta l4proto tcp counter\n  }\n}\n';
    await lab().applyScript(canary);
    await lab().applyScript(script);

    const listing = await lab().listRuleset();
    expect(listing).not.toContain(MARK);
    expect(listing).not.toMatch(/flush ruleset|reboot/);
    const tables = (await nftJson(['list', 'tables'])).filter((o: any) => o.table).map((o: any) => `${o.table.family} ${o.table.name}`);
    // the lab's own observer table is there from the start (test/helpers/observe.ts)
    expect(tables.sort()).toEqual(['inet canary', `inet ${compiled.table.name}`, `inet ${OBSERVE_TABLE}`].sort());
    const ours = await nftJson(['list', 'table', 'inet', compiled.table.name]);
    const expectedRules = compiled.table.chains.reduce((n, c) => n + c.rules.length, 0);
    expect(expectedRules).toBeGreaterThan(HOSTILE.length);
    expect(ours.filter((o: any) => o.rule).length).toBe(expectedRules);
    expect(ours.filter((o: any) => o.chain).map((o: any) => o.chain.name).sort()).toEqual(compiled.table.chains.map((c) => c.name).sort());
    const canaryRules = (await nftJson(['list', 'table', 'inet', 'canary'])).filter((o: any) => o.rule);
    expect(canaryRules).toHaveLength(2);
    await lab().clearRuleset(compiled.table.name);
    await lab().clearRuleset('canary');
  });

  it('`secgroup render` on the document prints a script nft --check accepts, without any of the hostile text', async () => {
    const file = join(dir, 'policy.json');
    writeFileSync(file, documentText);
    const r = await runCli(['render', file]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain(`table inet`);
    expect(r.stdout).not.toContain(MARK);
    const check = await lab().exec('host', 'nft', ['--check', '-f', '-'], { input: r.stdout, reject: false });
    expect(check.exitCode, check.stderr).toBe(0);
    const json = await runCli(['render', '--format', 'json', file]);
    expect(json.code, json.stderr).toBe(0);
    expect(json.stdout).not.toContain(MARK);
    const jsonFile = join(dir, 'ruleset.json');
    writeFileSync(jsonFile, json.stdout);
    const checkJson = await lab().exec('host', 'nft', ['-j', '--check', '-f', jsonFile], { reject: false });
    expect(checkJson.exitCode, checkJson.stderr).toBe(0);
  });

  async function nftJson(args: string[]): Promise<any[]> {
    const r = await lab().exec('host', 'nft', ['-j', ...args]);
    return JSON.parse(r.stdout).nftables;
  }
});
