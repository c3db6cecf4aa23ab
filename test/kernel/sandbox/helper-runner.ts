#!/usr/bin/env node
/**
 * Bundled by deploy-sandbox.test.ts and run inside the emulated agent sandbox:
 * the agent's nft runner with its helper shell (src/nft/shell-spawner.ts)
 * applies a policy, reads the marker and the table back, and prints a summary
 * (with where its private directory went: $RUNTIME_DIRECTORY). With a
 * loader, the full apply goes through it as the agent's does (a netlink
 * batch, secgroup-nftload), and the summary says whether it fell back to nft.
 *   node helper-runner.mjs POLICY.json [LOADER]
 */
import { readFileSync, readdirSync } from 'node:fs';
import { compilePolicy } from '../../../src/nft/compile.js';
import { ExecaNftRunner } from '../../../src/nft/exec.js';
import { helperBaseDir } from '../../../src/nft/shell-spawner.js';
import { replaceTableTx } from '../../../src/nft/transaction.js';
import { parsePolicy } from '../../../src/policy/schema.js';

const compiled = compilePolicy(parsePolicy(JSON.parse(readFileSync(process.argv[2]!, 'utf8'))));
const loader = process.argv[3];
let fellBack: string | null = null;
const nft = new ExecaNftRunner({ table: 'secgroup', helper: true, ...(loader ? { loader: [loader], onLoaderFallback: (why: string) => (fellBack = why) } : {}) });
try {
  await nft.apply(replaceTableTx(compiled.table));
  const marker = await nft.readMarker();
  const table = await nft.readTable();
  // where the helper's private directory is: the service's runtime directory
  const helperDirs = readdirSync(helperBaseDir()).filter((d) => d.startsWith('secgroup-nft-')).length;
  console.log(JSON.stringify({ fellBack, helperError: nft.helperError, helperBase: helperBaseDir(), helperDirs, markerMatches: marker === compiled.table.marker, chains: table?.chains.length ?? null, expectedChains: compiled.table.chains.length }));
} finally {
  nft.close();
}
