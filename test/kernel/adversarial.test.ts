/**
 * Property: for random and adversarial policies (ids and descriptions full of
 * quotes, `;`, newlines, braces, `#`), `render` either rejects the input or
 * emits a script that nft accepts (`nft -c -f` in a test namespace) and that
 * contains none of the adversarial text.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { afterAll, expect, it } from 'vitest';
import { compilePolicy } from '../../src/nft/compile.js';
import { renderJson, renderScript } from '../../src/nft/render.js';
import { checkPolicy } from '../../src/policy/schema.js';
import { describeKernel, useLab } from '../helpers/vitest-lab.js';

const NASTY = ['"', "'", ';', '\n', '}', '{', '#', '\\', '$', '`', ' ', 'delete table inet secgroup', 'flush ruleset', '\u202e', 'é', '*/'];

const nastyString = fc
  .array(fc.oneof(fc.constantFrom(...NASTY), fc.string({ minLength: 1, maxLength: 6 }), fc.stringMatching(/^[A-Za-z0-9._:-]{1,12}$/)), { minLength: 1, maxLength: 5 })
  .map((parts) => parts.join(''));

const idLike = fc.oneof({ weight: 3, arbitrary: fc.stringMatching(/^[A-Za-z0-9._:-]{1,64}$/) }, { weight: 2, arbitrary: nastyString });

const rule = fc.record({
  id: idLike,
  direction: fc.constantFrom('ingress', 'egress'),
  priority: fc.integer({ min: 1, max: 100 }),
  action: fc.constantFrom('allow', 'deny'),
  protocol: fc.constantFrom(null, 'tcp', 'udp', '47'),
  multiport: fc.constantFrom(undefined, '22', '80,443', '8000-8080'),
  remote_ip_prefix: fc.constantFrom(undefined, '198.18.0.0/15', '198.18.4.4'),
  description: fc.option(nastyString.map((d) => `ZQX${d}`), { nil: undefined }),
});

const policy = fc.record({
  revision: fc.nat(),
  instance: fc.record({ id: idLike, addresses: fc.constant(['198.18.0.10']) }),
  security_groups: fc.array(fc.record({ id: idLike, name: fc.constant('g'), description: fc.option(nastyString.map((d) => `ZQX${d}`), { nil: undefined }), rules: fc.array(rule, { maxLength: 4 }) }), {
    minLength: 1,
    maxLength: 3,
  }),
});

describeKernel('adversarial input never reaches nft text', () => {
  const lab = useLab();
  const dir = mkdtempSync(join(tmpdir(), 'sgt-adv-'));
  const jsonFile = join(dir, 'ruleset.json');
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('render rejects or emits a script nft accepts, without the adversarial text', async () => {
    const seed = Number(process.env.SECGROUP_SEED ?? Date.now() % 1_000_000);
    console.log(`adversarial property seed=${seed}`);
    const samples = fc.sample(policy, { seed, numRuns: 400 });
    let rendered = 0;
    for (const input of samples) {
      // multiport only with tcp/udp: drop it elsewhere so more samples are valid
      for (const g of input.security_groups) for (const r of g.rules) if (r.protocol !== 'tcp' && r.protocol !== 'udp') r.multiport = undefined;
      const check = checkPolicy(input);
      const ids = [input.instance.id, ...input.security_groups.flatMap((g) => [g.id, ...g.rules.map((r) => r.id)])];
      if (!check.ok) continue;
      // accepted ids are tokens: nothing that could break out of an nft comment or name
      for (const id of ids) expect(NASTY.some((n) => id.includes(n)), `schema accepted ${JSON.stringify(id)}`).toBe(false);
      const compiled = compilePolicy(check.policy);
      const script = renderScript(compiled.table);
      const json = JSON.stringify(renderJson(compiled.table));
      // descriptions are never rendered at all
      expect(script.includes('ZQX')).toBe(false);
      expect(json.includes('ZQX')).toBe(false);
      const res = await lab().exec('host', 'nft', ['-c', '-f', '-'], { input: script, reject: false });
      expect(res.exitCode, `nft -c rejected the script (seed ${seed}):\n${res.stderr}\n${script}`).toBe(0);
      // nft reads JSON from a file only (it opens /dev/stdin, which fails on a pipe or socket)
      writeFileSync(jsonFile, json);
      const resJson = await lab().exec('host', 'nft', ['-j', '-c', '-f', jsonFile], { reject: false });
      expect(resJson.exitCode, `nft -j -c rejected the JSON rendering (seed ${seed}):\n${resJson.stderr}\n${json}`).toBe(0);
      rendered++;
    }
    expect(rendered).toBeGreaterThan(10);
  });
});
