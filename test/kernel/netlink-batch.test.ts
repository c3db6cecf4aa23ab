/**
 * The netlink batch the agent encodes for a full apply (nft/netlink-batch.ts,
 * sent by native/secgroup-nftload) against nft's own, on the real kernel:
 *   - byte for byte the batch `nft -f` sends for the same table's script (as
 *     `nft --debug=mnl --check` prints it; set ids aside), for random policies
 *     on random platforms (controller, DNS, failsafe ports, flow mark off, on
 *     and armed), a rule-heavy policy, remote groups of both families and
 *     counters carried;
 *   - applied through the runner with the loader in one namespace and by
 *     `nft -f` in another: the same listing, text and JSON;
 *   - a reload in place over the table applied before (rules, sets, chains
 *     and the counters no rule counts into any more deleted, the rest kept):
 *     the same batch and the same table as nft's;
 *   - a table the encoder does not know, a loader that is missing and one
 *     that fails: the transaction goes through nft -f, and says why.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { groupPolicy, syntheticPolicy } from '../../bench/policies.js';
import { compilePolicy } from '../../src/nft/compile.js';
import { ExecaNftRunner } from '../../src/nft/exec.js';
import { setFlowGeneration } from '../../src/nft/flow-mark.js';
import { encodeReloadInPlace, encodeReplaceTable } from '../../src/nft/netlink-batch.js';
import { renderDeleteScript, renderReloadInPlace, renderScript } from '../../src/nft/render.js';
import { reloadInPlaceTx, replaceTableTx } from '../../src/nft/transaction.js';
import type { Table } from '../../src/nft/model.js';
import type { RuleCounters } from '../../src/nft/counters.js';
import { counterKey } from '../../src/nft/counters.js';
import { DEFAULT_PLATFORM, type PlatformOptions } from '../../src/policy/platform.js';
import { parsePolicy } from '../../src/policy/schema.js';
import { kernelSkipReason, REPO } from '../helpers/agent-lab.js';
import { batchMessages, batchText, mnlDumpMessages } from '../helpers/nft-mnl.js';
import { createRng, randomPolicy } from '../helpers/random-policy.js';

const skip = kernelSkipReason();

interface Case {
  name: string;
  table: Table;
  counters?: RuleCounters;
}

function randomCase(seed: number): Case {
  const rng = createRng(seed);
  const doc = randomPolicy(rng, { maxGroups: 4, maxRules: 10 });
  const controllers = [['198.18.9.1'], ['198.18.9.1', 'fd00:5ec::9'], ['fd00:5ec::9'], ['198.18.9.1', '198.18.9.2', 'fd00:5ec::9', 'fd00:5ec::a']];
  const platform: PlatformOptions = {
    ...DEFAULT_PLATFORM,
    loopback: rng.int(0, 3) > 0,
    icmpv6Nd: rng.int(0, 3) > 0,
    dhcp: rng.int(0, 3) > 0,
    controller:
      rng.int(0, 2) > 0
        ? { addresses: controllers[rng.int(0, 3)]!, port: 8443, dns: rng.int(0, 1) === 1, ...(rng.int(0, 2) === 0 ? { more: [{ addresses: ['198.18.9.3'], port: 9443 }] } : {}) }
        : null,
    failsafeIngress: rng.int(0, 2) === 0 ? [{ protocol: 6, from: 22, to: 22 }, { protocol: 17, from: 1000, to: 2000 }] : [],
    failsafeEgress: rng.int(0, 2) === 0 ? [{ protocol: 132, from: 5000, to: 5001 }] : [],
    flowMarkMask: [0, 0xffff0000, 0xff00][rng.int(0, 2)]!,
  };
  const { table } = compilePolicy(parsePolicy(doc), { platform });
  if (platform.flowMarkMask && rng.int(0, 1)) setFlowGeneration(table, rng.int(2, 200), true);
  return { name: `random policy, seed ${seed}`, table };
}

const bytesOf = (table: Table, counters?: RuleCounters) => Buffer.concat(Array.from(encodeReplaceTable(table, counters), (p) => Buffer.from(p)));

describe.skipIf(skip !== null)(`the netlink batch of a full apply against nft's own, in namespaces${skip ? ` (skipped: ${skip})` : ''}`, () => {
  const tag = randomBytes(3).toString('hex');
  const nsA = `sgt-nlA${tag}`;
  const nsB = `sgt-nlB${tag}`;
  const dir = mkdtempSync(join(tmpdir(), 'sgt-netlink-'));
  const loader = join(dir, 'secgroup-nftload');
  const nft = (ns: string, args: string[], input?: string) => execFileSync('ip', ['netns', 'exec', ns, 'nft', ...args], { encoding: 'utf8', maxBuffer: 1 << 30, ...(input === undefined ? {} : { input }) });
  const clear = (ns: string) => nft(ns, ['-f', '-'], renderDeleteScript('inet', 'secgroup'));
  // handles left out (each namespace numbers its tables apart); a hash set's elements sorted (the kernel lists them in
  // its hash table's order, which a resize running while they went in changes from one load to the next)
  const listing = (ns: string) => {
    const json = JSON.parse(nft(ns, ['-j', 'list', 'table', 'inet', 'secgroup'])) as { nftables: Record<string, { handle?: number; elem?: unknown[] }>[] };
    for (const o of json.nftables) {
      for (const v of Object.values(o)) {
        delete v.handle;
        v.elem?.sort((a, b) => (JSON.stringify(a) < JSON.stringify(b) ? -1 : 1));
      }
    }
    return { text: nft(ns, ['-t', 'list', 'table', 'inet', 'secgroup']), json };
  };

  beforeAll(() => {
    const b = spawnSync('bash', [join(REPO, 'scripts/build-native.sh'), dir], { encoding: 'utf8' });
    if (b.status !== 0) throw new Error(`build-native.sh: ${b.stderr}`);
    execFileSync('ip', ['netns', 'add', nsA]);
    execFileSync('ip', ['netns', 'add', nsB]);
  });
  afterAll(() => {
    spawnSync('ip', ['netns', 'del', nsA]);
    spawnSync('ip', ['netns', 'del', nsB]);
    rmSync(dir, { recursive: true, force: true });
  });

  /** nft's batch for the table's script, as `nft --debug=mnl --check` prints it */
  const nftBatch = (c: Case) => {
    const dump = execFileSync('ip', ['netns', 'exec', nsA, 'nft', '--debug=mnl', '--check', '-f', '-'], { input: renderScript(c.table, c.counters), encoding: 'utf8', maxBuffer: 1 << 30 });
    return batchText(mnlDumpMessages(dump), false);
  };

  const cases = (): Case[] => {
    const out: Case[] = [];
    for (let seed = 1; seed <= 40; seed++) out.push(randomCase(seed));
    out.push({ name: '1k rules', table: compilePolicy(parsePolicy({ ...syntheticPolicy({ rules: 1000, members: 100 }), revision: 1 })).table });
    const group = compilePolicy(parsePolicy(groupPolicy(3000, 10, 1))).table;
    out.push({ name: 'a 3000-member remote group', table: group });
    // IPv6 members, and counters carried into a replacement
    const v6 = randomPolicy(createRng(7), { maxGroups: 2, maxRules: 6 });
    const g = compilePolicy(parsePolicy({ ...v6, group_members: { ...(v6.group_members ?? {}), 'sg-0': Array.from({ length: 600 }, (_, i) => `fd00:5ec::${(i + 1).toString(16)}`) } }));
    const counters = new Map(g.table.chains.flatMap((ch) => ch.rules.filter((r) => r.comment !== undefined).map((r, i) => [counterKey(ch.name, r.comment!), { packets: 1000 + i, bytes: 64_000 + i }] as const)));
    out.push({ name: 'IPv6 members, counters carried', table: g.table, counters });
    return out;
  };

  it('is the batch nft sends for the same script, byte for byte', () => {
    for (const c of cases()) {
      const ours = batchText(batchMessages(bytesOf(c.table, c.counters)), false);
      expect(ours, c.name).toBe(nftBatch(c));
    }
  }, 300_000);

  it('makes the table nft makes: the same listing, text and JSON', async () => {
    const runner = new ExecaNftRunner({ table: 'secgroup', command: ['ip', 'netns', 'exec', nsA, 'nft'], helper: true, loader: ['ip', 'netns', 'exec', nsA, loader], onLoaderFallback: (why) => expect.fail(`fell back to nft -f: ${why}`) });
    try {
      // and 80k members: their list elements numbered past 16 bits, as libmnl stores them (nft's dump printer stops showing them there)
      const bigCase: Case = { name: 'an 80k-member remote group', table: compilePolicy(parsePolicy(groupPolicy(80_000, 10, 1))).table };
      for (const c of [...cases().filter((_, i) => i % 4 === 0 || i >= 40), bigCase]) {
        clear(nsA);
        clear(nsB);
        await runner.apply(replaceTableTx(c.table, c.counters));
        nft(nsB, ['-f', '-'], renderScript(c.table, c.counters));
        expect(listing(nsA), c.name).toEqual(listing(nsB));
      }
    } finally {
      runner.close();
    }
  }, 300_000);

  it('reloads in place as nft does: the same batch, the same table, counter objects kept', async () => {
    const runner = new ExecaNftRunner({ table: 'secgroup', command: ['ip', 'netns', 'exec', nsA, 'nft'], helper: true, loader: ['ip', 'netns', 'exec', nsA, loader], onLoaderFallback: (why) => expect.fail(`fell back to nft -f: ${why}`) });
    try {
      for (let seed = 100; seed < 112; seed++) {
        // a policy and the next one (rules, groups, members and the platform all change)
        const previous = randomCase(seed).table;
        const table = randomCase(seed + 1).table;
        for (const ns of [nsA, nsB]) {
          clear(ns);
          nft(ns, ['-f', '-'], renderScript(previous));
        }
        const dump = execFileSync('ip', ['netns', 'exec', nsA, 'nft', '--debug=mnl', '--check', '-f', '-'], { input: renderReloadInPlace(table, previous), encoding: 'utf8', maxBuffer: 1 << 30 });
        const ours = batchText(batchMessages(Buffer.concat(Array.from(encodeReloadInPlace(table, previous), (p) => Buffer.from(p)))), false);
        expect(ours, `seed ${seed}`).toBe(batchText(mnlDumpMessages(dump), false));
        await runner.apply(reloadInPlaceTx(table, previous));
        nft(nsB, ['-f', '-'], renderReloadInPlace(table, previous));
        expect(listing(nsA), `seed ${seed}`).toEqual(listing(nsB));
      }
    } finally {
      runner.close();
    }
  }, 300_000);

  it('goes through nft -f, and says why, when the table holds what it does not encode or the loader is missing or fails', async () => {
    const table = compilePolicy(parsePolicy({ ...syntheticPolicy({ rules: 20, members: 5 }), revision: 1 })).table;
    const expected = () => {
      clear(nsB);
      nft(nsB, ['-f', '-'], renderScript(table));
      return listing(nsB);
    };
    const want = expected();
    const seen: [string, string][] = [];
    const run = async (cmd: string[], t: Table) => {
      clear(nsA);
      const r = new ExecaNftRunner({ table: 'secgroup', command: ['ip', 'netns', 'exec', nsA, 'nft'], helper: true, loader: cmd, onLoaderFallback: (why, kind) => seen.push([kind, why]) });
      try {
        await r.apply(replaceTableTx(t));
        await r.apply(replaceTableTx(t));
      } finally {
        r.close();
      }
    };
    // missing: said once, not tried again
    await run([join(dir, 'no-such-loader')], table);
    expect(listing(nsA)).toEqual(want);
    expect(seen).toEqual([['missing', expect.stringMatching(/no-such-loader not found or not executable/)]]);
    // fails (the kernel refused, say): nft -f applies it, each time
    seen.length = 0;
    await run(['sh', '-c', 'cat >/dev/null; echo "error seq 3 type 2563 errno 22 Invalid argument" >&2; exit 1'], table);
    expect(listing(nsA)).toEqual(want);
    expect(seen.map(([k, w]) => [k, /failed \(exit 1\): error seq 3 type 2563 errno 22 Invalid argument/.test(w)])).toEqual([
      ['failed', true],
      ['failed', true],
    ]);
    // an interface other than lo (nft resolves its name): the encoder declines, nft -f applies it
    seen.length = 0;
    const odd: Table = { ...table, chains: table.chains.map((ch) => (ch.name === 'input' ? { ...ch, rules: [{ exprs: [{ kind: 'match', left: { kind: 'meta', key: 'iif' }, op: '==', right: { kind: 'str', value: 'lo' } }, { kind: 'verdict', verdict: { kind: 'accept' } }] }, { exprs: [{ kind: 'match', left: { kind: 'meta', key: 'iif' }, op: '==', right: { kind: 'str', value: 'eth9' } }, { kind: 'verdict', verdict: { kind: 'drop' } }] }, ...ch.rules] } : ch)) };
    clear(nsA);
    const r = new ExecaNftRunner({ table: 'secgroup', command: ['ip', 'netns', 'exec', nsA, 'nft'], helper: true, loader: ['ip', 'netns', 'exec', nsA, loader], onLoaderFallback: (why, kind) => seen.push([kind, why]) });
    try {
      // nft itself refuses an interface that does not exist; the point is that nft, not the loader, was asked
      await expect(r.apply(replaceTableTx(odd))).rejects.toThrow(/eth9|Interface does not exist/);
    } finally {
      r.close();
    }
    expect(seen).toEqual([['unsupported', expect.stringMatching(/does not produce \(interface .*eth9/)]]);
  }, 120_000);
});
