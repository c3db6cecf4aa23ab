import { describe, expect, it } from 'vitest';
import { compilePolicy } from '../../../src/nft/compile.js';
import { FakeNft } from '../../../src/nft/fake.js';
import { replaceTableTx } from '../../../src/nft/transaction.js';
import { verifyApplied } from '../../../src/agent/verify-applied.js';
import { policy } from './fixtures.js';

async function applied() {
  const nft = new FakeNft();
  const compiled = compilePolicy(policy(1));
  await nft.apply(replaceTableTx(compiled.table));
  return { nft, compiled };
}

describe('verifyApplied (the check after an apply)', () => {
  it('passes on the generation marker alone: one marker read, no table listing, fingerprint unknown until a drift check', async () => {
    const { nft, compiled } = await applied();
    expect(await verifyApplied(nft, compiled, compiled.table.comment ?? null)).toBe('');
    expect(nft.count('readMarker')).toBe(1);
    expect(nft.count('readTable')).toBe(0);
  });

  it.each([
    ['another generation marker (nft exited 0 without applying)', (nft: FakeNft) => nft.setMarker('secgroup digest=0 revision=0'), /generation marker is "secgroup digest=0 revision=0", expected/],
    ['the table deleted', (nft: FakeNft) => nft.deleteTable(), /table or its generation marker is missing/],
  ] as const)('fails with VERIFY_FAILED on %s', async (_what, breakIt, message) => {
    const { nft, compiled } = await applied();
    breakIt(nft);
    await expect(verifyApplied(nft, compiled, null)).rejects.toMatchObject({ code: 'VERIFY_FAILED', message: expect.stringMatching(message) });
  });

  it("lets nft's own error through when the marker cannot be read", async () => {
    const { nft, compiled } = await applied();
    nft.failNext('readMarker');
    await expect(verifyApplied(nft, compiled, null)).rejects.toMatchObject({ code: 'NFT_FAILED' });
  });

  it('without a marker, compares the table read back without its elements and returns its fingerprint', async () => {
    const { nft, compiled } = await applied();
    const unmarked = { ...compiled, table: { ...compiled.table, marker: undefined } };
    const fingerprint = await verifyApplied(nft, unmarked, compiled.table.comment ?? null);
    expect(fingerprint).toBe((await nft.readTable({ elements: false }))!.fingerprint);
    nft.flushTable();
    await expect(verifyApplied(nft, unmarked, compiled.table.comment ?? null)).rejects.toMatchObject({ code: 'VERIFY_FAILED', message: expect.stringMatching(/^read-back after apply does not match/) });
  });
});
