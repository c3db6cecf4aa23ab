/** The execa nft runner against the real kernel, inside a namespace of its own. */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { compilePolicy, memberSetName } from '../../src/nft/compile.js';
import { planElementUpdate } from '../../src/nft/diff.js';
import { ExecaNftRunner } from '../../src/nft/exec.js';
import { elementList, sel, v } from '../../src/nft/model.js';
import { findDrift } from '../../src/nft/readback.js';
import { deleteTableTx, replaceTableTx } from '../../src/nft/transaction.js';
import { DEFAULT_PLATFORM } from '../../src/policy/platform.js';
import { kernelSkipReason } from '../helpers/agent-lab.js';
import { policy } from '../unit/agent/fixtures.js';

const skip = kernelSkipReason();

// direct: nft started by this process (CLI commands); helper: from the helper shell (the agent daemon)
describe.skipIf(skip !== null).each([{ mode: 'direct' }, { mode: 'helper' }])(`nft runner against the kernel, $mode${skip ? ` (skipped: ${skip})` : ''}`, ({ mode }) => {
  const ns = `sgt-nftrun${randomBytes(3).toString('hex')}`;
  const inNs = ['ip', 'netns', 'exec', ns];
  const nft = new ExecaNftRunner({ table: 'secgroup', command: [...inNs, 'nft'], helper: mode === 'helper' });
  const sh = (args: string[], input?: string) => execa(inNs[0]!, [...inNs.slice(1), 'nft', ...args], input === undefined ? {} : { input });

  beforeAll(async () => {
    await execa('ip', ['netns', 'add', ns]);
    await sh(['-f', '-'], 'table inet bystander {\n\tchain c {\n\t\ttype filter hook input priority 10; policy accept;\n\t}\n}\n');
  });
  afterAll(() => {
    nft.close();
    spawnSync('ip', ['netns', 'del', ns]);
  });

  it('probes nft and reports a missing table as null', async () => {
    expect(await nft.probe()).toEqual({ version: expect.stringMatching(/^\d+\.\d+/), tableExists: false });
    expect(await nft.readTable()).toBeNull();
    expect(await nft.readMarker()).toBeNull();
  });

  it('says clearly when nft is missing or permission is lacking', async () => {
    await expect(new ExecaNftRunner({ table: 'secgroup', command: ['/nonexistent/nft'] }).probe()).rejects.toMatchObject({ code: 'NFT_NOT_FOUND', message: expect.stringContaining('install nftables') });
    const unprivileged = new ExecaNftRunner({ table: 'secgroup', command: [...inNs, 'setpriv', '--reuid=65534', '--regid=65534', '--clear-groups', 'nft'] });
    await expect(unprivileged.probe()).rejects.toMatchObject({ code: 'NFT_PERMISSION', message: expect.stringContaining('needs CAP_NET_ADMIN') });
  });

  it('applies a table, reads it back as intended (comment, chains, map sizes), with a stable fingerprint', async () => {
    const c = compilePolicy(policy(1), { platform: DEFAULT_PLATFORM });
    await nft.check(replaceTableTx(c.table));
    expect(await nft.readTable()).toBeNull(); // check changes nothing
    await nft.apply(replaceTableTx(c.table));
    expect((await nft.probe()).tableExists).toBe(true);
    const rb = await nft.readTable();
    expect(rb?.comment).toBe(c.table.comment);
    expect(findDrift({ table: c.table, comment: c.table.comment! }, rb)).toBeNull();
    const again = await nft.readTable();
    expect(again!.fingerprint).toBe(rb!.fingerprint);
    expect(findDrift({ table: c.table, comment: c.table.comment!, fingerprint: rb!.fingerprint }, again)).toBeNull();
  });

  it('applies element changes in place and the result verifies against the new model', async () => {
    const from = compilePolicy(policy(1));
    const to = compilePolicy(policy(2, { members: ['198.18.0.10', '198.18.0.77', '198.18.0.90'], office: ['198.18.6.0/25', '198.18.6.200-198.18.6.210'] }));
    const plan = planElementUpdate(from.table, to.table)!;
    const tx = { family: 'inet' as const, table: 'secgroup', ops: plan.ops };
    await nft.check(tx);
    await nft.apply(tx);
    expect(findDrift({ table: to.table, comment: from.table.comment! }, await nft.readTable())).toBeNull();
    expect(await nft.readMarker()).toBe(to.table.marker);
    expect(to.table.marker).toMatch(/^secgroup digest=[0-9a-f]{16} revision=2 /);
  });

  it('sees a flushed table and a hand-edited one as drifted', async () => {
    const c = compilePolicy(policy(3));
    await nft.apply(replaceTableTx(c.table));
    const base = (await nft.readTable())!.fingerprint;
    await sh(['add', 'rule', 'inet', 'secgroup', 'output', 'tcp', 'dport', '9', 'accept']);
    expect(findDrift({ table: c.table, comment: c.table.comment!, fingerprint: base }, await nft.readTable())?.kind).toBe('structure');
    await nft.apply(replaceTableTx(c.table));
    const base2 = (await nft.readTable())!.fingerprint;
    // an element added and removed again by hand (in the member set of group web): no drift
    await sh(['add', 'element', 'inet', 'secgroup', memberSetName(4, 'web'), '{ 198.18.9.9 }']);
    await sh(['delete', 'element', 'inet', 'secgroup', memberSetName(4, 'web'), '{ 198.18.9.9 }']);
    expect(findDrift({ table: c.table, comment: c.table.comment!, fingerprint: base2 }, await nft.readTable())).toBeNull();
    // same counts, different content: one element swapped for another by hand
    const office = c.table.maps.find((m) => m.name === 'in4_l0_ports_ree')!;
    expect(office.elements.length).toBe(1);
    await sh(['delete', 'element', 'inet', 'secgroup', 'in4_l0_ports_ree', '{ 198.18.5.0/24 . tcp . 22 }']);
    await sh(['add', 'element', 'inet', 'secgroup', 'in4_l0_ports_ree', '{ 198.18.6.0/24 . tcp . 22 : accept }']);
    expect(findDrift({ table: c.table, comment: c.table.comment!, fingerprint: base2 }, await nft.readTable())?.kind).toBe('modified');
    await sh(['flush', 'table', 'inet', 'secgroup']);
    expect(findDrift({ table: c.table, comment: c.table.comment!, fingerprint: base2 }, await nft.readTable())?.kind).toBe('structure');
  });

  it('reads rule counters without the map elements', async () => {
    const c = compilePolicy(policy(6));
    await nft.apply(replaceTableTx(c.table));
    const counters = await nft.readCounters();
    expect(counters).not.toBeNull();
    for (const r of c.rules) expect(counters!.get(r.chain)).toEqual({ packets: 0, bytes: 0 });
    expect(counters!.get('input')).toBeDefined(); // the counted drop of invalid packets
  });

  it('reads the generation marker (the periodic check while the monitor covers the table) without asking the kernel for any other set\'s elements', async () => {
    const c = compilePolicy(policy(1));
    await nft.apply(replaceTableTx(c.table));
    expect(c.table.maps.length).toBeGreaterThan(1);
    // the same runner, with every nft call also run under --debug=mnl: nft prints each netlink request it sends
    const dir = mkdtempSync(join(tmpdir(), 'sgt-mnl-'));
    const log = join(dir, 'mnl.log');
    const traced = new ExecaNftRunner({ table: 'secgroup', command: [...inNs, 'sh', '-c', `nft --debug=mnl "$@" >>${log} 2>&1; exec nft "$@"`, 'mnl'], helper: mode === 'helper' });
    // GETSETELEM requests: (NFNL_SUBSYS_NFTABLES 10 << 8) | NFT_MSG_GETSETELEM 13 = 2573
    const elementDumps = () => (readFileSync(log, 'utf8').match(/\| 02573 \|/g) ?? []).length;
    try {
      expect(await traced.readMarker()).toBe(c.table.marker);
      expect(elementDumps()).toBe(1); // the one-element marker set only
      writeFileSync(log, '');
      await traced.readTable({ elements: false });
      expect(elementDumps()).toBeGreaterThan(c.table.maps.length); // any listing of the table dumps every set (nft 1.0.6, even with -t)
    } finally {
      traced.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('turns nft failures into typed errors and leaves the table as it was', async () => {
    const c = compilePolicy(policy(4));
    await nft.apply(replaceTableTx(c.table));
    const before = (await nft.readTable())!.fingerprint;
    const bogus = compilePolicy(policy(5));
    const op = { op: 'update-elements' as const, family: 'inet' as const, table: 'secgroup', map: 'in4_l0_ports', keyType: bogus.table.maps[0]!.keyType, remove: [{ key: elementList(bogus.table.maps[0]!)[0]!.key.map((k) => (k.kind === 'addr' ? { ...k, lo: 1n, hi: 1n } : k)), verdict: { kind: 'accept' as const } }], add: [] };
    await expect(nft.apply({ family: 'inet', table: 'secgroup', ops: [op] })).rejects.toMatchObject({ code: 'NFT_NOT_FOUND_OBJECT' });
    expect((await nft.readTable())!.fingerprint).toBe(before);
  });

  // a replacement big enough to be streamed in many chunks (5000 members: three slices of elements, ~100 KB)
  const big = () => compilePolicy(policy(6, { members: Array.from({ length: 5000 }, (_, i) => `198.18.${100 + (i >> 8)}.${i & 255}`) }));

  it('a streamed replacement that nft rejects at its end leaves the previous table whole', async () => {
    const c = compilePolicy(policy(4));
    await nft.apply(replaceTableTx(c.table));
    const before = (await nft.readTable())!.fingerprint;
    const b = big();
    const missing = { op: 'update-elements' as const, family: 'inet' as const, table: 'secgroup', map: 'no_such_map', keyType: ['ipv4_addr' as const], remove: [], add: [{ key: [{ kind: 'addr' as const, family: 4 as const, lo: 1n, hi: 1n }] }] };
    await expect(nft.apply({ family: 'inet', table: 'secgroup', ops: [...replaceTableTx(b.table).ops, missing] })).rejects.toMatchObject({ code: 'NFT_NOT_FOUND_OBJECT' });
    expect((await nft.readTable())!.fingerprint).toBe(before);
    expect(await nft.readMarker()).toBe(c.table.marker);
  });

  it('a replacement whose rendering fails part-way through the stream is never committed: the previous table stays whole', async () => {
    const c = compilePolicy(policy(4));
    await nft.apply(replaceTableTx(c.table));
    const before = (await nft.readTable())!.fingerprint;
    for (const at of ['head', 'tail'] as const) {
      const b = big().table;
      // an internal error while rendering: after the first chunk ("table ... {}" + "delete table ...", a valid script alone) or after every map
      const bad = { ...b, ...(at === 'head' ? { comment: 'bad "quote' } : { chains: [...b.chains, { name: 'r_bad', rules: [{ exprs: [{ kind: 'match' as const, left: sel.nfproto, op: '==' as const, right: v.num(-1) }] }] }] }) };
      await expect(nft.apply(replaceTableTx(bad))).rejects.toThrow(/internal: bad|comment/);
      expect((await nft.readTable())!.fingerprint).toBe(before);
      expect(await nft.readMarker()).toBe(c.table.marker);
    }
  });

  it('deletes our table and nothing else', async () => {
    await nft.apply(deleteTableTx('inet', 'secgroup'));
    await nft.apply(deleteTableTx('inet', 'secgroup')); // absent: no error
    expect(await nft.readTable()).toBeNull();
    expect(await nft.readCounters()).toBeNull();
    expect(String((await sh(['list', 'tables'])).stdout)).toContain('table inet bystander');
  });
});
