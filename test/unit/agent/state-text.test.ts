/**
 * The last known good written a slice at a time (state-store.ts
 * `writeStateText`): the same bytes as `renderStateText`, whatever the
 * lists, their lengths and where they sit, and read back as the same policy.
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { FileStateStore, parseStateText, renderStateText, writeStateText } from '../../../src/agent/state-store.js';
import { applyPolicyDelta } from '../../../src/protocol/delta.js';
import { parsePolicy, type Policy, type PolicyInput } from '../../../src/policy/schema.js';

const dir = mkdtempSync(join(tmpdir(), 'sgt-state-text-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const v6 = (i: number) => `fd00:5ec:0:1::${(i >>> 16).toString(16)}:${(i & 0xffff).toString(16)}`;
const v4 = (i: number) => `198.${18 + (i >>> 16)}.${(i >>> 8) & 255}.${i & 255}`;

function doc(members: Record<string, number>, entries: number[], revision = 1): Policy {
  const input: PolicyInput = {
    revision,
    instance: { id: 'ecs-1', addresses: ['198.18.0.10'] },
    security_groups: [
      {
        id: 'sg-web',
        description: 'the "web" tier, a \\ and unicode: é',
        rules: [
          ...Object.keys(members).map((g, i) => ({ id: `r-${g}`, direction: 'ingress' as const, protocol: 'tcp', multiport: String(8000 + i), remote_group_id: g })),
          ...entries.map((_, i) => ({ id: `r-ag-${i}`, direction: 'ingress' as const, protocol: 'tcp', multiport: '22', remote_address_group_id: `ag-${i}` })),
        ],
      },
    ],
    address_groups: entries.map((n, i) => ({ id: `ag-${i}`, ip_version: 4 as const, ip_set: Array.from({ length: n }, (_, k) => v4(2 * k)) })),
    group_members: Object.fromEntries(Object.entries(members).map(([g, n]) => [g, Array.from({ length: n }, (_, k) => (k % 3 ? v4(k) : v6(k)))])),
  };
  return parsePolicy(input);
}

async function written(policy: Policy, savedAt: string): Promise<string> {
  const path = join(dir, 'out.json');
  const fh = await open(path, 'w');
  try {
    await writeStateText(fh, policy, savedAt);
  } finally {
    await fh.close();
  }
  return readFileSync(path, 'utf8');
}

describe('the last known good, written a slice at a time', () => {
  it.each([
    ['no lists over a slice', {}, [3]],
    ['one group of 10k members', { big: 10_000 }, []],
    ['exactly one slice, and one over', { a: 4096, b: 4097 }, []],
    ['big and small groups and a big address group', { small: 5, big: 20_001, other: 9000 }, [5000, 2]],
  ] as const)('%s: the same bytes as one string', async (_what, members, entries) => {
    const policy = doc(members, [...entries]);
    const at = '2026-12-07T00:00:00.000Z';
    const text = await written(policy, at);
    expect(text).toBe(renderStateText(policy, at));
    const back = parseStateText(text, 'out.json');
    expect(back.ok && JSON.stringify(back.policy)).toBe(JSON.stringify(policy));
  });

  it('a document made by policy deltas (member lists built when read): the same bytes', async () => {
    const base = doc({ big: 12_000, small: 3 }, [4100]);
    const next = applyPolicyDelta(base, { base_revision: 1, revision: 2, group_members: { big: { add: ['198.18.250.1'], remove: [v4(1)] } } });
    const at = '2026-12-07T00:00:01.000Z';
    expect(await written(next, at)).toBe(renderStateText(next, at));
  });

  it('FileStateStore saves with it and loads the policy back', async () => {
    const store = new FileStateStore(join(dir, 'store'), () => Date.parse('2026-12-07T00:00:02.000Z'));
    const policy = doc({ big: 30_000 }, [6000]);
    await store.save(policy);
    expect(readFileSync(store.path, 'utf8')).toBe(renderStateText(policy, '2026-12-07T00:00:02.000Z'));
    const r = await store.load();
    expect(r.kind === 'ok' && JSON.stringify(r.policy)).toBe(JSON.stringify(policy));
  });
});
