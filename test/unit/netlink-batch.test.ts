/**
 * The netlink batch of a full apply (src/nft/netlink-batch.ts), without a
 * kernel: its framing (begin, whole messages, end; pieces of whole messages
 * that reuse one buffer), the split of long element lists at the 64 KB of a
 * nested attribute with the elements numbered across messages as nft numbers
 * them, counters carried into the counter objects, and what it declines
 * (UnsupportedError: the runner then uses nft -f); the runner's gate on
 * nft's version (the loader only with the nft the batch is checked
 * against, once the probe found it). That it is nft's own
 * batch, byte for byte, is test/kernel/netlink-batch.test.ts.
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { groupPolicy, syntheticPolicy } from '../../bench/policies.js';
import { compilePolicy } from '../../src/nft/compile.js';
import { counterKey } from '../../src/nft/counters.js';
import type { Expr, Table } from '../../src/nft/model.js';
import { ExecaNftRunner, LOADER_NFT_VERSIONS } from '../../src/nft/exec.js';
import { UnsupportedError, encodeReplaceTable } from '../../src/nft/netlink-batch.js';
import { replaceTableTx } from '../../src/nft/transaction.js';
import { parsePolicy } from '../../src/policy/schema.js';
import { batchMessages, batchText } from '../helpers/nft-mnl.js';

const bytes = (t: Table, counters?: Parameters<typeof encodeReplaceTable>[1]) => Buffer.concat(Array.from(encodeReplaceTable(t, counters), (p) => Buffer.from(p)));
const NEWSETELEM = (10 << 8) | 12;

/** the top-level attributes of a message body (after its nfgenmsg) */
function attrs(body: Buffer): Map<number, Buffer> {
  const out = new Map<number, Buffer>();
  for (let o = 4; o + 4 <= body.length; ) {
    const len = body.readUInt16LE(o);
    out.set(body.readUInt16LE(o + 2) & 0x3fff, body.subarray(o + 4, o + len));
    o += (len + 3) & ~3;
  }
  return out;
}

/** the nested attribute types in `b` */
function nestedTypes(b: Buffer): number[] {
  const out: number[] = [];
  for (let o = 0; o + 4 <= b.length; ) {
    const len = b.readUInt16LE(o);
    out.push(b.readUInt16LE(o + 2) & 0x3fff);
    o += (len + 3) & ~3;
  }
  return out;
}

describe('the netlink batch of a full apply', () => {
  it('is one batch of whole messages: begin, the table replaced (create, delete, define), end', () => {
    const t = compilePolicy(parsePolicy({ ...syntheticPolicy({ rules: 50, members: 10 }), revision: 3 })).table;
    const msgs = batchMessages(bytes(t));
    expect(msgs[0]!.type).toBe(0x10);
    expect(msgs.at(-1)!.type).toBe(0x11);
    expect(msgs.slice(1, 4).map((m) => m.type & 0xff)).toEqual([0, 2, 0]);
    // the table's comment rides on the second NEWTABLE (user data, comment record 0)
    expect(attrs(msgs[3]!.body).get(6)!.subarray(2).toString('latin1')).toBe(`${t.comment}\0`);
    const text = batchText(msgs);
    expect(text.match(/^msg 10:3 /gm)!.length).toBe(t.chains.length);
  });

  it('hands the batch over in pieces of whole messages of about 256 KB, reusing one buffer', () => {
    const t = compilePolicy(parsePolicy({ ...syntheticPolicy({ rules: 10_000, members: 100 }), revision: 1 })).table;
    const pieces: Buffer[] = [];
    const seen = new Set<ArrayBufferLike>();
    for (const p of encodeReplaceTable(t)) {
      seen.add(p.buffer);
      pieces.push(Buffer.from(p));
    }
    expect(pieces.length).toBeGreaterThan(3);
    for (const p of pieces) {
      expect(p.length).toBeLessThan(256 * 1024 + 2 * 65536);
      // each piece holds whole messages
      let o = 0;
      while (o < p.length) o += (p.readUInt32LE(o) + 3) & ~3;
      expect(o).toBe(p.length);
    }
    expect(seen.size).toBe(1);
  });

  it('splits a long element list where the nest of 64 KB is full, numbering the elements across messages as nft does', () => {
    // IPv6 members: 28 bytes each in the list, 2340 fit in one message
    const doc = groupPolicy(10, 2, 1);
    const members = Array.from({ length: 5000 }, (_, i) => `fd00:5ec::${(i + 1).toString(16)}`);
    const t = compilePolicy(parsePolicy({ ...doc, group_members: { ...doc.group_members, 'sg-big': members } })).table;
    const set = t.maps.find((m) => m.name.startsWith('g6_'))!;
    const msgs = batchMessages(bytes(t)).filter((m) => m.type === NEWSETELEM && attrs(m.body).get(2)!.toString('latin1') === `${set.name}\0`);
    const lists = msgs.map((m) => attrs(m.body).get(3)!);
    // 2340 + 2340 + the 320 left, 28 bytes each
    expect(lists.map((l) => l.length)).toEqual([2340 * 28, 2340 * 28, 320 * 28]);
    expect(nestedTypes(lists[0]!)[0]).toBe(1);
    expect(nestedTypes(lists[0]!).at(-1)).toBe(2340);
    // the element that did not fit is counted: the next message starts one further on
    expect(nestedTypes(lists[1]!)[0]).toBe(2342);
  });

  it('carries counts into the counter objects', () => {
    const t = compilePolicy(parsePolicy({ ...syntheticPolicy({ rules: 3, members: 2 }), revision: 1 })).table;
    const chain = t.chains.find((c) => c.name.startsWith('r_'))!;
    const counters = new Map([[counterKey(chain.name, chain.rules[0]!.comment!), { packets: 7, bytes: 9000 }]]);
    const objs = batchMessages(bytes(t, counters)).filter((m) => (m.type & 0xff) === 18);
    const data = objs.map((m) => attrs(m.body).get(4)!);
    // NFTA_OBJ_DATA { bytes, packets } (64-bit, network order)
    const carried = data.filter((d) => d.readBigUInt64BE(4) !== 0n);
    expect(carried.map((d) => [d.readBigUInt64BE(4), d.readBigUInt64BE(16)])).toEqual([[9000n, 7n]]);
  });

  it('declines what it does not encode: an interface other than lo (nft resolves its name), a set of values no rule of ours uses', () => {
    const t = compilePolicy(parsePolicy({ ...syntheticPolicy({ rules: 3, members: 2 }), revision: 1 })).table;
    const withRule = (exprs: Expr[]): Table => ({ ...t, chains: t.chains.map((c) => (c.name === 'input' ? { ...c, rules: [{ exprs: [...exprs, { kind: 'verdict', verdict: { kind: 'drop' } }] }, ...c.rules] } : c)) });
    const eth9 = withRule([{ kind: 'match', left: { kind: 'meta', key: 'iif' }, op: '==', right: { kind: 'str', value: 'eth9' } }]);
    expect(() => bytes(eth9)).toThrow(UnsupportedError);
    expect(() => bytes(eth9)).toThrow(/interface .*eth9/);
    // its user data (how nft lists the set) was never checked against nft's: left to nft
    const directions = withRule([{ kind: 'match', left: { kind: 'ct', key: 'direction' }, op: '==', right: [{ kind: 'sym', value: 'original' }, { kind: 'sym', value: 'reply' }] }]);
    expect(() => bytes(directions)).toThrow(/a set of .*direction/);
    // the same rule with one value is a comparison nft makes the same way
    expect(() => bytes(withRule([{ kind: 'match', left: { kind: 'ct', key: 'direction' }, op: '==', right: [{ kind: 'sym', value: 'reply' }] }]))).not.toThrow();
  });
});

describe('the nft runner with the loader, its nft version gate', () => {
  // a stand-in nft (version $V; no table; `-f`: its input read, "nft" logged) and loader (its input read, "loader" logged)
  const fake = (dir: string, version: string) => {
    const log = join(dir, 'log');
    const nft = ['sh', '-c', `case "$*" in *--version*) echo "nftables v${version} (x)";; *list*) echo "Error: No such file or directory" >&2; exit 1;; *) cat >/dev/null; echo nft >> ${log};; esac`, 'nft'];
    const loader = ['sh', '-c', `cat >/dev/null; echo loader >> ${log}`];
    return { nft, loader, log };
  };
  const t = compilePolicy(parsePolicy({ ...syntheticPolicy({ rules: 3, members: 2 }), revision: 1 })).table;

  it.each([
    { version: '1.0.6', via: 'loader', said: [] },
    { version: '1.1.3', via: 'nft', said: [['nft-version', 'nft 1.1.3: the netlink batch is checked against nft 1.0.6 only; full applies through nft -f (name the loader\'s path in nft_loader to use it anyway)']] },
  ])('with nft $version, a full apply after the probe goes through the $via', async ({ version, via, said }) => {
    const dir = mkdtempSync(join(tmpdir(), 'sgt-gate-'));
    try {
      const f = fake(dir, version);
      const seen: [string, string][] = [];
      const runner = new ExecaNftRunner({ table: 'secgroup', command: f.nft, helper: true, loader: f.loader, loaderNftVersions: LOADER_NFT_VERSIONS, onLoaderFallback: (why, kind) => seen.push([kind, why]) });
      try {
        // before the probe: nft -f (the version is not known yet)
        await runner.apply(replaceTableTx(t));
        expect(await runner.probe()).toMatchObject({ version, tableExists: false });
        await runner.apply(replaceTableTx(t));
        expect(readFileSync(f.log, 'utf8').split('\n').filter(Boolean)).toEqual(['nft', via]);
        expect(seen).toEqual(said);
        expect(runner.usesLoader).toBe(via === 'loader');
      } finally {
        runner.close();
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
