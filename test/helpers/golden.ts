/**
 * Golden files (test/golden/): for reviewing output changes, not the only
 * proof of behaviour. `UPDATE_GOLDEN=1` rewrites them instead of comparing.
 */
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { expect } from 'vitest';

const GOLDEN = join(import.meta.dirname, '../golden');
const UPDATE = process.env.UPDATE_GOLDEN === '1';

/** Compares `actual` with test/golden/<name> (or writes it with UPDATE_GOLDEN=1). */
export function golden(name: string, actual: string): void {
  const path = join(GOLDEN, name);
  if (UPDATE) {
    mkdirSync(GOLDEN, { recursive: true });
    writeFileSync(path, actual);
    return;
  }
  if (!existsSync(path)) throw new Error(`missing golden file test/golden/${name}: rerun the test with UPDATE_GOLDEN=1 (npx vitest run --project unit <test file>)`);
  expect(actual, `test/golden/${name} differs: if the change is intended, rerun with UPDATE_GOLDEN=1 and review the diff`).toBe(readFileSync(path, 'utf8'));
}
