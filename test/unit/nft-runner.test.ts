import { describe, expect, it } from 'vitest';
import { FakeNft } from '../../src/nft/fake.js';
import { nftError } from '../../src/nft/runner.js';
import { replaceTableTx } from '../../src/nft/transaction.js';
import { golden } from '../helpers/golden.js';
import { findDrift, parseTableComment, parseTableReadback } from '../../src/nft/readback.js';
import { renderElementChanges, renderTable } from '../../src/nft/render.js';
import { compilePolicy } from '../../src/nft/compile.js';
import { planElementUpdate } from '../../src/nft/diff.js';
import { policy } from './agent/fixtures.js';

describe('nft errors', () => {
  it.each([
    ['Error: Could not process rule: Operation not permitted', 'NFT_PERMISSION'],
    ['Operation not permitted (you must be root)\nnetlink: Error: cache initialization failed: Operation not permitted', 'NFT_PERMISSION'],
    ['/dev/stdin:3:1-5: Error: syntax error, unexpected junk', 'NFT_SYNTAX'],
    ['Error: No such file or directory\nlist table inet secgroup', 'NFT_NOT_FOUND_OBJECT'],
    ['Error: Could not process rule: File exists', 'NFT_EXISTS'],
    ['Error: Could not process rule: No buffer space available', 'NFT_FAILED'],
  ])('classifies %j', (stderr, code) => {
    const e = nftError('nft -f', stderr, 1);
    expect(e.code).toBe(code);
    if (code === 'NFT_PERMISSION') expect(e.message).toContain('needs CAP_NET_ADMIN');
  });

  // nft echoes the failing script line under its Error: line (knftables error_test.go, "misleading misc error"):
  // only the Error: line says what went wrong
  it.each([
    ['/dev/stdin:3:41-47: Error: syntax error, unexpected comment\nadd rule inet secgroup r_1 comment "No such file or directory" drop\n                                        ^^^^^^^', 'NFT_SYNTAX'],
    ['/dev/stdin:4:1-30: Error: Could not process rule: Invalid argument\nadd rule inet secgroup r_1 comment "No such file or directory" drop\n^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^', 'NFT_FAILED'],
    ['/dev/stdin:2:1-3: Error: Could not process rule: No buffer space available\nadd element inet secgroup m { 1 comment "File exists" }\n^^^', 'NFT_FAILED'],
    ['Error: Could not process rule: Device or resource busy\nadd rule inet secgroup r_1 comment "Operation not permitted" drop', 'NFT_FAILED'],
    ['/dev/stdin:5:1-9: Error: Could not process rule: No such file or directory\ndelete element inet secgroup m { 198.18.0.1 }\n^^^^^^^^^', 'NFT_NOT_FOUND_OBJECT'],
  ])('classifies from the Error: line only, not the echoed script line: %j', (stderr, code) => {
    expect(nftError('nft -f', stderr, 1).code).toBe(code);
  });

  it('FakeNft fails with the errors the real runner makes from the same nft message', async () => {
    const nft = new FakeNft();
    const op = { op: 'update-elements' as const, family: 'inet' as const, table: 'secgroup', map: 'nomap', keyType: ['ipv4_addr' as const], remove: [], add: [] };
    const err = await nft.apply({ family: 'inet', table: 'secgroup', ops: [op] }).catch((e: unknown) => e);
    const real = nftError('nft -f', 'Error: Could not process rule: No such file or directory (map nomap)', 1);
    expect(err).toMatchObject({ code: real.code, message: real.message });
  });
});

describe('read-back', () => {
  it('reads the table comment from terse text', () => {
    expect(parseTableComment('table inet secgroup {\n\tcomment "secgroup digest=0123456789abcdef revision=3 instance=i"\n\tmap m {')).toBe(
      'secgroup digest=0123456789abcdef revision=3 instance=i',
    );
    expect(parseTableComment('table inet secgroup {\n\tchain input {')).toBeNull();
  });

  it('parses chains, rule counters and map sizes, and fingerprints without handles or counter values', () => {
    const doc = (packets: number, handle: number) =>
      JSON.stringify({
        nftables: [
          { metainfo: { version: '1.0.6' } },
          { table: { family: 'inet', name: 'secgroup', handle } },
          { map: { family: 'inet', name: 'm', table: 'secgroup', type: ['ipv4_addr'], handle: handle + 1, map: 'verdict', elem: [['198.18.0.1', { accept: null }]] } },
          { chain: { family: 'inet', table: 'secgroup', name: 'r_1', handle: handle + 2 } },
          { rule: { family: 'inet', table: 'secgroup', chain: 'r_1', handle: handle + 3, comment: 'g/r', expr: [{ counter: { packets, bytes: packets * 100 } }, { accept: null }] } },
        ],
      });
    const a = parseTableReadback(doc(3, 1), 'table inet secgroup {\n\tcomment "c"\n', 'inet', 'secgroup');
    expect(a).toMatchObject({ comment: 'c', maps: [{ name: 'm', elements: 1 }], chains: [{ name: 'r_1', rules: [{ comment: 'g/r', counter: { packets: 3, bytes: 300 } }] }] });
    const b = parseTableReadback(doc(9, 50), '', 'inet', 'secgroup');
    expect(b.fingerprint).toBe(a.fingerprint);
  });

  it('reads the counts of a rule that counts into a named counter object (as nft 1.0.6 lists them), and fingerprints without their values', () => {
    const doc = (packets: number, handle: number) =>
      JSON.stringify({
        nftables: [
          { metainfo: { version: '1.0.6' } },
          { table: { family: 'inet', name: 'secgroup', handle } },
          { counter: { family: 'inet', name: 'c_1', table: 'secgroup', handle: handle + 1, packets, bytes: packets * 100 } },
          { counter: { family: 'inet', name: 'c_1', table: 'other', handle: handle + 2, packets: 99, bytes: 99 } },
          { chain: { family: 'inet', table: 'secgroup', name: 'r_1', handle: handle + 3 } },
          { rule: { family: 'inet', table: 'secgroup', chain: 'r_1', handle: handle + 4, comment: 'g/r', expr: [{ counter: 'c_1' }, { accept: null }] } },
          { rule: { family: 'inet', table: 'secgroup', chain: 'r_1', handle: handle + 5, expr: [{ counter: 'c_gone' }, { drop: null }] } },
        ],
      });
    const a = parseTableReadback(doc(4, 1), '', 'inet', 'secgroup');
    expect(a.chains).toEqual([{ name: 'r_1', rules: [{ comment: 'g/r', counter: { packets: 4, bytes: 400 } }, { comment: null, counter: null }] }]);
    expect(parseTableReadback(doc(8, 60), '', 'inet', 'secgroup').fingerprint).toBe(a.fingerprint);
  });

  it('finds a missing table, a wrong comment and a flushed chain', () => {
    const c = compilePolicy(policy(1));
    const rb = {
      family: 'inet' as const,
      name: 'secgroup',
      comment: c.table.comment!,
      marker: c.table.marker!,
      withElements: true,
      chains: c.table.chains.map((ch) => ({ name: ch.name, rules: ch.rules.map(() => ({ comment: null, counter: null })) })),
      maps: c.table.maps.map((m) => ({ name: m.name, elements: m.elements.length })),
      fingerprint: 'f',
    };
    const exp = { table: c.table, comment: c.table.comment!, fingerprint: 'f' };
    expect(findDrift(exp, rb)).toBeNull();
    expect(findDrift(exp, null)?.kind).toBe('missing');
    expect(findDrift(exp, { ...rb, comment: 'x' })?.kind).toBe('comment');
    expect(findDrift(exp, { ...rb, marker: 'secgroup digest=0 revision=0' })?.detail).toMatch(/generation marker/);
    expect(findDrift(exp, { ...rb, marker: null })?.kind).toBe('comment');
    // a read without elements does not see the marker: not drift
    expect(findDrift(exp, { ...rb, marker: null, withElements: false })).toBeNull();
    expect(findDrift(exp, { ...rb, chains: rb.chains.map((ch) => ({ ...ch, rules: [] })) })?.kind).toBe('structure');
    expect(findDrift(exp, { ...rb, fingerprint: 'g' })?.kind).toBe('modified');
  });
});

describe('element updates', () => {
  it('renders deletions before additions, in one script for our table only', () => {
    const from = compilePolicy(policy(1, { members: ['198.18.0.10', '198.18.0.12'] }));
    const to = compilePolicy(policy(2, { members: ['198.18.0.10', '198.18.0.20'] }));
    const plan = planElementUpdate(from.table, to.table)!;
    expect(plan).toMatchObject({ added: 1, removed: 1 }); // .12 goes, .20 comes
    const op = plan.ops[0]!;
    if (op.op !== 'update-elements') throw new Error('expected an element update');
    const text = renderElementChanges('inet', 'secgroup', [op]);
    const lines = text.trim().split('\n').slice(1);
    // remote-group members: elements of the group's member set, no verdicts
    expect(lines[0]).toMatch(/^delete element inet secgroup g4_[0-9a-f]{12} \{ 198\.18\.0\.12 \}$/);
    expect(lines[1]).toMatch(/^add element inet secgroup g4_[0-9a-f]{12} \{ 198\.18\.0\.20 \}$/);
  });

  it('refuses when anything but elements changes', () => {
    const from = compilePolicy(policy(1));
    expect(planElementUpdate(from.table, compilePolicy(policy(2, { httpPort: '81' })).table)).toBeNull();
    expect(planElementUpdate(from.table, compilePolicy(policy(2, { extraRule: true })).table)).toBeNull();
  });
});

describe('FakeNft.dump', () => {
  it('is the whole table as nft text (golden), and nothing without a table', async () => {
    const nft = new FakeNft();
    expect(nft.dump()).toBe('');
    await nft.apply(replaceTableTx(compilePolicy(policy(1)).table));
    golden('fake-dump-policy1.nft', nft.dump());
  });

  it('after element updates equals the dump of the fresh compile, but for the comment an update keeps', async () => {
    const nft = new FakeNft();
    const from = compilePolicy(policy(1, { members: ['198.18.0.10', '198.18.0.12'] }));
    const to = compilePolicy(policy(2, { members: ['198.18.0.30', '198.18.0.10', '198.18.0.20'], office: ['198.18.6.0/25'] }));
    await nft.apply(replaceTableTx(from.table));
    await nft.apply({ family: 'inet', table: 'secgroup', ops: planElementUpdate(from.table, to.table)!.ops });
    const withoutComment = (text: string) => text.replace(/^\tcomment ".*"\n/m, '');
    expect(withoutComment(nft.dump())).toBe(withoutComment(renderTable(to.table, { listing: true })));
    expect(nft.dump()).not.toBe(renderTable(to.table, { listing: true })); // the table comment still names revision 1
  });
});
