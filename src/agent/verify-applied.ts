/**
 * The check after an apply that the kernel now holds the transaction's
 * ruleset: reads the generation marker (`nft list set`, milliseconds). Any
 * `nft list table` would cost seconds with big maps, because nft 1.0.6
 * loads every set element into its cache even for `-t`; nft's transaction
 * is atomic, so a successful apply whose marker is in place holds all of
 * it. The full comparison (chains, rule and element counts, fingerprint)
 * is the drift check's job (reconciler.ts `checkDrift`). A table compiled
 * without a marker is read back without its elements and compared.
 */
import { SecgroupError } from '../lib/errors.js';
import type { Compiled } from '../nft/compile.js';
import { findDrift } from '../nft/readback.js';
import type { NftRunner } from '../nft/runner.js';

/**
 * Checks that the kernel holds `compiled` (applied with the table comment
 * `tableComment`). Returns the fingerprint to compare later reads with:
 * unknown ('') until the first drift check reads the table and records it.
 * Throws VERIFY_FAILED, or what nft throws.
 */
export async function verifyApplied(nft: Pick<NftRunner, 'readMarker' | 'readTable'>, compiled: Compiled, tableComment: string | null): Promise<string> {
  const expected = compiled.table.marker ?? null;
  if (expected === null) {
    const rb = await nft.readTable({ elements: false });
    const drift = findDrift({ table: compiled.table, comment: tableComment }, rb);
    if (drift || !rb) throw new SecgroupError('VERIFY_FAILED', `read-back after apply does not match: ${drift?.detail ?? 'table missing'}`, { details: drift });
    return rb.fingerprint;
  }
  const marker = await nft.readMarker();
  if (marker !== expected) {
    throw new SecgroupError(
      'VERIFY_FAILED',
      marker === null ? 'after apply the table or its generation marker is missing' : `after apply the generation marker is ${JSON.stringify(marker)}, expected ${JSON.stringify(expected)}`,
      { details: { marker, expected } },
    );
  }
  return '';
}
