/**
 * Where the built web console (index.html and assets/, from `npm run build`)
 * is, for the controller to serve at /console. Looked for next to the
 * program, wherever it runs from:
 *
 * - the single executable of the .deb (`/usr/lib/secgroup-controller/secgroup`):
 *   `/usr/lib/secgroup-controller/console` (import.meta.url is the executable there);
 * - the bundle `dist/secgroup.cjs`: `dist/console`;
 * - `dist/cli/*.js` (tsc output): `dist/console`;
 * - `src/cli/*.ts` under tsx (a checkout): `dist/console`.
 *
 * `SECGROUP_CONSOLE_DIR` overrides the search. Null when none holds an index.html.
 */
import { existsSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

export function consoleDirCandidates(moduleUrl: string, env: NodeJS.ProcessEnv): string[] {
  if (env.SECGROUP_CONSOLE_DIR) return [resolve(env.SECGROUP_CONSOLE_DIR)];
  const here = dirname(fileURLToPath(moduleUrl));
  return [join(here, 'console'), join(here, '..', 'console'), join(here, '..', '..', 'dist', 'console')];
}

export function findConsoleDir(moduleUrl: string = import.meta.url, env: NodeJS.ProcessEnv = process.env): string | null {
  return consoleDirCandidates(moduleUrl, env).find((d) => existsSync(join(d, 'index.html'))) ?? null;
}
