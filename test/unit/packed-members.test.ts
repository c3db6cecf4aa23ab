/**
 * Member lists read packed out of the JSON text (policy/packed-members.ts):
 * which lists are packed, and that nothing downstream can tell a packed
 * document from the same document parsed as strings: the validated
 * document (its JSON), validation errors, the compiled table, policy
 * deltas on top of it, the state file's bytes.
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { parseStateText, renderStateText, writeStateText } from '../../src/agent/state-store.js';
import { burstWork } from '../../src/agent/footprint.js';
import { compilePolicy } from '../../src/nft/compile.js';
import { renderScript } from '../../src/nft/render.js';
import { canonicalIp, formatIp } from '../../src/policy/address.js';
import { extractMemberLists, memberCount, packedGroupCount, packedJsonPieces, packedMembers, parseWithPackedMembers, PACK_MIN } from '../../src/policy/packed-members.js';
import { checkPolicy, type Policy, type PolicyInput } from '../../src/policy/schema.js';
import { applyPolicyDelta } from '../../src/protocol/delta.js';
import { controllerMessageSchema, decode } from '../../src/protocol/messages.js';

const dir = mkdtempSync(join(tmpdir(), 'sgt-packed-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** A small deterministic generator (the same cases every run). */
function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s ^ (s >>> 15), 0x2c1b3c6d) + 0x6d2b79f5) >>> 0;
    return s / 2 ** 32;
  };
}

const v4 = (n: number) => formatIp(4, BigInt(n >>> 0));
const v6 = (hi: number, lo: number) => formatIp(6, (0xfd0005ecn << 96n) | (BigInt(hi) << 32n) | BigInt(lo));

/** `n` IPv4 then `m` IPv6 members in canonical text and order (some IPv6 with zero runs in odd places). */
function canonicalList(n: number, m: number, seed = 1): string[] {
  const r = rng(seed);
  const a = new Set<number>();
  while (a.size < n) a.add(Math.floor(r() * 2 ** 32));
  const b = new Set<string>();
  const six: bigint[] = [];
  while (six.length < m) {
    const hi = r() < 0.3 ? 0 : Math.floor(r() * 2 ** 32);
    const lo = r() < 0.3 ? Math.floor(r() * 65536) : Math.floor(r() * 2 ** 32);
    const k = `${hi}:${lo}`;
    if (b.has(k)) continue;
    b.add(k);
    six.push((BigInt(hi) << 32n) | BigInt(lo));
  }
  six.sort((x, y) => (x < y ? -1 : 1));
  return [...[...a].sort((x, y) => x - y).map(v4), ...six.map((x) => v6(Number(x >> 32n), Number(x & 0xffffffffn)))];
}

function docInput(members: Record<string, unknown>): PolicyInput {
  const groups = Object.keys(members);
  return {
    revision: 7,
    instance: { id: 'ecs-1', addresses: ['198.18.0.10', 'fd00:5ec::10'] },
    security_groups: [
      {
        id: 'sg-web',
        rules: groups.flatMap((g, i) => [
          { id: `r4-${i}`, direction: 'ingress' as const, protocol: 'tcp', multiport: String(8000 + i), remote_group_id: g },
          { id: `r6-${i}`, direction: 'ingress' as const, ethertype: 'IPv6' as const, protocol: 'udp', multiport: String(9000 + i), remote_group_id: g },
        ]),
      },
    ],
    address_groups: [],
    group_members: members as Record<string, string[]>,
  };
}

/** A `policy` frame's text, as the controller sends it. */
const frame = (input: unknown) => JSON.stringify({ type: 'policy', policy: input });

/** The frame decoded both ways: as strings, and as the agent decodes it. */
function both(text: string): { strings: ReturnType<typeof checkPolicy>; packed: ReturnType<typeof checkPolicy> } {
  const plain = decode(controllerMessageSchema, text);
  const packed = decode(controllerMessageSchema, text, parseWithPackedMembers);
  if (!plain.ok || plain.message.type !== 'policy' || !packed.ok || packed.message.type !== 'policy') throw new Error('not a policy frame');
  return { strings: checkPolicy(plain.message.policy), packed: checkPolicy(packed.message.policy) };
}

function valid(r: ReturnType<typeof checkPolicy>): Policy {
  if (!r.ok) throw new Error(JSON.stringify(r.issues));
  return r.policy;
}

describe('which lists are read packed', () => {
  const big = canonicalList(300, 400);
  const cases: [string, (l: string[]) => unknown[], boolean][] = [
    ['canonical text and order', (l) => l, true],
    ['only IPv4', (l) => l.slice(0, 300), true],
    ['only IPv6', (l) => l.slice(300), true],
    ['shorter than PACK_MIN', (l) => l.slice(0, PACK_MIN - 1), false],
    ['a duplicate', (l) => [...l.slice(0, 100), l[99], ...l.slice(100)], false],
    ['out of order', (l) => [l[1], l[0], ...l.slice(2)], false],
    ['IPv6 before IPv4', (l) => [...l.slice(300), ...l.slice(0, 300)], false],
    ['an IPv4 with a leading zero', (l) => [...l.slice(0, 10), l[10]!.replace(/\.(\d+)$/, '.0$1'), ...l.slice(11)], false],
    ['an IPv6 in upper case', (l) => [...l.slice(0, 310), l[310]!.toUpperCase(), ...l.slice(311)], false],
    ['an IPv6 not compressed', (l) => [...l.slice(0, 399), 'fd00:5ec:0:0:0:0:0:ffff', ...l.slice(399)], false],
    ['not an address', (l) => [...l.slice(0, 5), '198.18.0.256', ...l.slice(6)], false],
    ['not a string', (l) => [...l.slice(0, 5), 5, ...l.slice(6)], false],
  ];
  it.each(cases)('%s', (_what, make, expectPacked) => {
    const list = make(big);
    const text = frame(docInput({ 'sg-big': list, 'sg-small': ['198.18.0.1'] }));
    const { strings, packed } = both(text);
    expect(JSON.stringify(packed)).toBe(JSON.stringify(strings));
    if (packed.ok) {
      expect(packedMembers(packed.policy.group_members, 'sg-big') !== undefined).toBe(expectPacked);
      expect(packedMembers(packed.policy.group_members, 'sg-small')).toBeUndefined();
      expect(memberCount(packed.policy.group_members, 'sg-big')).toBe(list.length);
    }
  });

  it('an escaped character in a member (JSON.parse decodes it) is left to the string path', () => {
    const list = canonicalList(300, 0);
    const text = frame(docInput({ g: list })).replace(`"${list[3]}"`, `"\\u003${list[3]![0]}${list[3]!.slice(1)}"`);
    expect(extractMemberLists(text)).toBeNull();
    const { strings, packed } = both(text);
    expect(JSON.stringify(packed)).toBe(JSON.stringify(strings));
  });

  it.each([
    ['an escaped key on the way', (t: string) => t.replace('"group_members"', '"group\\u005fmembers"')],
    ['a group listed twice (JSON.parse keeps the last)', (t: string) => t.replace('"g":[', '"g":["198.18.0.1"],"g":[')],
    ['group_members twice', (t: string) => t.replace('"group_members":{', '"group_members":{},"group_members":{')],
  ])('%s: the same document as JSON.parse reads', (_what, edit) => {
    const text = edit(frame(docInput({ g: canonicalList(300, 300, 5) })));
    const { strings, packed } = both(text);
    expect(JSON.stringify(packed)).toBe(JSON.stringify(strings));
  });

  it('white space between every token: still read packed', () => {
    const text = JSON.stringify({ type: 'policy', policy: docInput({ g: canonicalList(300, 300, 6) }) }, null, ' \t').replace(/\n/g, '\r\n');
    const { strings, packed } = both(text);
    expect(JSON.stringify(packed)).toBe(JSON.stringify(strings));
    expect(packed.ok && packedMembers(packed.policy.group_members, 'g')).toBeTruthy();
  });

  it('malformed JSON: the error JSON.parse gives', () => {
    const text = frame(docInput({ g: canonicalList(300, 0) })).slice(0, -3);
    let expected = '';
    try {
      JSON.parse(text);
    } catch (e) {
      expected = (e as Error).message;
    }
    expect(() => parseWithPackedMembers(text)).toThrow(expected);
  });

  it('a rejected document: the same issues as the string path', () => {
    const list = canonicalList(300, 300, 9);
    const input = docInput({ g: list, bad: ['198.18.0.300'] });
    (input.security_groups[0]!.rules as unknown[]).push({ id: 'x', direction: 'sideways' });
    const { strings, packed } = both(frame(input));
    expect(packed.ok).toBe(false);
    expect(JSON.stringify(packed)).toBe(JSON.stringify(strings));
  });

  it('random documents: the same validated document, compiled table and state file bytes', async () => {
    const r = rng(42);
    let packedLists = 0;
    let stringLists = 0;
    for (let round = 0; round < 12; round++) {
      const members: Record<string, string[]> = {};
      for (let g = 0; g < 3; g++) {
        let list = canonicalList(Math.floor(r() * 600), Math.floor(r() * 600), round * 10 + g);
        // now and then a list the packing must refuse
        if (r() < 0.25 && list.length > 2) list = [list[list.length - 1]!, ...list.slice(0, -1)];
        members[`g${g}`] = list;
      }
      const { strings, packed } = both(frame(docInput(members)));
      const a = valid(strings);
      const b = valid(packed);
      expect(JSON.stringify(b)).toBe(JSON.stringify(a));
      expect(burstWork(b)).toEqual(burstWork(a));
      const ca = compilePolicy(a);
      const cb = compilePolicy(b);
      expect(cb.digest).toBe(ca.digest);
      expect(renderScript(cb.table)).toBe(renderScript(ca.table));
      expect(await written(b)).toBe(renderStateText(a, AT));
      let here = 0;
      for (const g of Object.keys(b.group_members)) {
        if (packedMembers(b.group_members, g)) here++;
        else stringLists++;
      }
      expect(packedGroupCount(b.group_members)).toBe(here);
      expect(packedGroupCount(a.group_members)).toBe(0);
      packedLists += here;
    }
    // both paths taken
    expect(packedLists).toBeGreaterThan(10);
    expect(stringLists).toBeGreaterThan(3);
  });
});

const AT = '2026-12-07T06:00:00.000Z';

async function written(policy: Policy): Promise<string> {
  const path = join(dir, 'state.json');
  const fh = await open(path, 'w');
  try {
    await writeStateText(fh, policy, AT);
  } finally {
    await fh.close();
  }
  return readFileSync(path, 'utf8');
}

describe('a packed document downstream', () => {
  it('the state file: written from the words, read back packed, the same bytes again', async () => {
    const list = canonicalList(5000, 9000, 3);
    const { strings, packed } = both(frame(docInput({ g: list, h: canonicalList(300, 0, 4) })));
    const text = await written(valid(packed));
    expect(text).toBe(renderStateText(valid(strings), AT));
    const back = parseStateText(text, 'state.json');
    if (!back.ok) throw back.error;
    expect(packedMembers(back.policy.group_members, 'g')).toBeDefined();
    expect(await written(back.policy)).toBe(text);
    // nothing built the strings on the way
    expect(Object.getOwnPropertyDescriptor(back.policy.group_members, 'g')?.get).toBeTypeOf('function');
  });

  it('policy deltas: the same documents and tables as on the string path, packed while every added address is canonical', () => {
    const r = rng(7);
    const list = canonicalList(400, 600, 11);
    const { strings, packed } = both(frame(docInput({ g: list, other: canonicalList(300, 0, 12) })));
    let a = valid(strings);
    let b = valid(packed);
    let canonicalSoFar = true;
    for (let rev = 8; rev < 60; rev++) {
      const current = a.group_members.g!;
      const add: string[] = [];
      const remove: string[] = [];
      for (let k = 0; k < 1 + Math.floor(r() * 3); k++) {
        const x = r();
        if (x < 0.35) add.push(v4(Math.floor(r() * 2 ** 32)));
        else if (x < 0.6) add.push(v6(Math.floor(r() * 2 ** 32), Math.floor(r() * 2 ** 32)));
        else if (x < 0.9 && current.length) remove.push(current[Math.floor(r() * current.length)]!);
        else remove.push(v4(Math.floor(r() * 2 ** 32)));
      }
      // late in the stream: an address added in other text (upper case), which the packed list cannot hold as written
      if (rev === 45) add.push('FD00:5EC::ABCD');
      // re-adding what is removed; removing an IPv4 member by its own text, late an IPv6 one by other text of it
      if (rev % 7 === 0 && remove.length) add.push(remove[0]!);
      if (rev % 11 === 0) remove.push(rev > 50 ? current.at(-1)!.toUpperCase() : current[0]!);
      if ([...add, ...remove].some((x) => canonicalIp(x) !== x)) canonicalSoFar = false;
      const delta = { base_revision: rev - 1, revision: rev, group_members: { g: { add, remove } } };
      a = applyPolicyDelta(a, delta);
      b = applyPolicyDelta(b, delta);
      expect(packedMembers(b.group_members, 'other')).toBeDefined();
      // read now and then: pending lists built at different points of the stream
      if (rev % 5 === 0 || rev > 55) {
        expect(packedMembers(b.group_members, 'g') !== undefined).toBe(canonicalSoFar);
        expect(memberCount(b.group_members, 'g')).toBe(a.group_members.g!.length);
        expect(JSON.stringify(b)).toBe(JSON.stringify(a));
        expect(compilePolicy(b).digest).toBe(compilePolicy(a).digest);
      }
    }
  });

  it('a big delta (the string path merges it in one pass, matching text): the same document, still packed', () => {
    const list = canonicalList(250, 250, 31);
    const { strings, packed } = both(frame(docInput({ g: list })));
    const add = canonicalList(40, 40, 32).filter((a) => !list.includes(a));
    const remove = list.filter((_, i) => i % 6 === 0);
    const delta = { base_revision: 7, revision: 8, group_members: { g: { add, remove } } };
    const a = applyPolicyDelta(valid(strings), delta);
    const b = applyPolicyDelta(valid(packed), delta);
    expect(packedMembers(b.group_members, 'g')).toBeDefined();
    expect(JSON.stringify(b)).toBe(JSON.stringify(a));
    expect(compilePolicy(b).digest).toBe(compilePolicy(a).digest);
  });

  it('the compiled member set is a copy: the membership fast path changing it leaves the document as it was', () => {
    const { packed } = both(frame(docInput({ g: canonicalList(300, 300, 13) })));
    const p = valid(packed);
    const before = JSON.stringify(p);
    const compiled = compilePolicy(p);
    const set = compiled.table.maps.find((m) => m.set && m.elements.length >= 300);
    expect(set).toBeDefined();
    const words = packedMembers(p.group_members, 'g')!;
    expect(set!.elements).not.toBe(words.v4);
    expect(set!.elements).not.toBe(words.v6);
    expect(JSON.stringify(p)).toBe(before);
  });

  it('the JSON of a packed list in pieces: what JSON.stringify writes for its strings', () => {
    const text = frame(docInput({ g: canonicalList(200, 100, 22) }));
    const p = valid(both(text).packed);
    const words = packedMembers(p.group_members, 'g')!;
    // each piece read before the next is taken (they share one buffer)
    const join = (per: number) => {
      let out = '';
      for (const piece of packedJsonPieces(words, per)) out += Buffer.from(piece).toString('latin1');
      return out;
    };
    for (const per of [1, 7, 299, 300, 4096]) expect(join(per)).toBe(JSON.stringify(p.group_members.g));
  });
});
