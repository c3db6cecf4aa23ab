/**
 * Where the agent looks for its native parts (scripts/build-native.sh builds
 * them): secgroup-memtrim.node (memtrim.ts) and secgroup-ctmark
 * (nft/conntrack.ts). The drift listener has its own key, `drift_listener`
 * (config.ts).
 */
import { basename, dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { AGENT_LIB_DIRS } from './config.js';

/**
 * The places for FILE, in order: next to the program (the bundle that
 * scripts/install.sh installs, dist/secgroup.cjs of a checkout), or dist/ of
 * a checkout when this module runs from src/agent (tsx) or dist/agent (tsc);
 * then the packages' directories (the .deb's single executable is
 * /usr/bin/secgroup, its parts in /usr/lib/secgroup).
 */
export function agentPartCandidates(file: string, moduleUrl: string = import.meta.url): string[] {
  const here = dirname(fileURLToPath(moduleUrl));
  const first = basename(here) === 'agent' ? join(here, '..', '..', 'dist') : here;
  return [...new Set([first, ...AGENT_LIB_DIRS].map((d) => join(d, file)))];
}
