#!/usr/bin/env node
/**
 * Bundled by deploy-sandbox.test.ts and run inside the emulated agent sandbox:
 * the agent's nft runner with its helper shell (src/nft/shell-spawner.ts)
 * applies a policy, reads the marker and the table back, and prints a summary.
 *   node helper-runner.mjs POLICY.json
 */
import { readFileSync } from 'node:fs';
import { compilePolicy } from '../../../src/nft/compile.js';
import { ExecaNftRunner } from '../../../src/nft/exec.js';
import { replaceTableTx } from '../../../src/nft/transaction.js';
import { parsePolicy } from '../../../src/policy/schema.js';

const compiled = compilePolicy(parsePolicy(JSON.parse(readFileSync(process.argv[2]!, 'utf8'))));
const nft = new ExecaNftRunner({ table: 'secgroup', helper: true });
try {
  await nft.apply(replaceTableTx(compiled.table));
  const marker = await nft.readMarker();
  const table = await nft.readTable();
  console.log(JSON.stringify({ helperError: nft.helperError, markerMatches: marker === compiled.table.marker, chains: table?.chains.length ?? null, expectedChains: compiled.table.chains.length }));
} finally {
  nft.close();
}
