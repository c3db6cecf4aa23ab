/**
 * Debian's Chromium driven by playwright-core, for the console's browser
 * tests and its benchmark. No browser is downloaded: the executable is the
 * `chromium` package's (`apt-get install chromium`; scripts/setup.sh installs
 * it). Each launch gets a fresh profile directory, removed by `close()`,
 * which also ends the browser process (killed if it does not exit), so no
 * Chromium outlives a test, also after a failure.
 */
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium, type BrowserContext } from 'playwright-core';

export const CHROMIUM = '/usr/bin/chromium';

export const CHROMIUM_ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'];

/** Why the browser tests cannot run here, or null when they can. */
export function browserSkipReason(): string | null {
  return existsSync(CHROMIUM) ? null : `${CHROMIUM} not installed (apt-get install chromium)`;
}

/** Pids whose command line has `arg` (one of ours: the argument names a directory this process created). */
function processesWith(arg: string): number[] {
  const pids: number[] = [];
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      if (readFileSync(`/proc/${d}/cmdline`, 'utf8').split('\0').includes(arg)) pids.push(Number(d));
    } catch {
      // exited meanwhile
    }
  }
  return pids;
}

export interface Browser {
  context: BrowserContext;
  close(): Promise<void>;
}

export async function launchBrowser(opts: { viewport?: { width: number; height: number } } = {}): Promise<Browser> {
  const profile = mkdtempSync(join(tmpdir(), 'sg-chromium-'));
  let context: BrowserContext;
  try {
    context = await chromium.launchPersistentContext(profile, {
      executablePath: CHROMIUM,
      headless: true,
      // the fresh profile goes in as --user-data-dir (playwright passes it)
      args: CHROMIUM_ARGS,
      viewport: opts.viewport ?? { width: 1280, height: 860 },
      timeout: 60_000,
    });
  } catch (e) {
    rmSync(profile, { recursive: true, force: true });
    throw e;
  }
  return {
    context,
    async close() {
      try {
        await Promise.race([context.close(), new Promise((r) => setTimeout(r, 10_000))]);
      } finally {
        // whatever of this browser is still running (its processes carry the fresh profile's path)
        for (const pid of processesWith(`--user-data-dir=${profile}`)) {
          try {
            process.kill(pid, 'SIGKILL');
          } catch {
            // gone meanwhile
          }
        }
        rmSync(profile, { recursive: true, force: true });
      }
    },
  };
}
