/**
 * bench console: the web console with a real fleet's size (issue 17, item 4):
 * 1000 instances, 200 groups, 5000 rules and a port report on every instance
 * (the analysis bench's fleet, bench/analysis.ts, written through the store),
 * served by an in-process controller (SQLite in a temporary data dir) on
 * 127.0.0.1 and rendered by Debian's Chromium (test/helpers/browser.ts).
 *
 * Per page, the time from the navigation's start to the view's
 * `console:<view>:rendered` performance mark (set once its data is on
 * screen, console/src/ui.tsx useRendered), over fresh page loads:
 *
 * - reference: the not-found page: loading the console itself (HTML, JS,
 *   CSS, first render) without reading any API;
 * - overview: fleet counts (instance statuses of all 1000), the exposure list,
 *   recent changes;
 * - a group page: one group with its rules in matching order;
 * - the instances page: 1000 instances read, the first 100 rows shown.
 *
 * Target: overview and group page under 1 s. Bounded: fixed counts; nothing
 * outside the process, the browser and 127.0.0.1.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { execa } from 'execa';
import { createController } from '../src/controller/controller.js';
import { openSqliteStore } from '../src/controller/store/sqlite.js';
import { silentLogger } from '../src/lib/logger.js';
import { launchBrowser } from '../test/helpers/browser.js';
import { fleetOps, portReport } from './analysis.js';
import { benchControllerConfig, quantile } from './converge.js';

const REPO = resolve(import.meta.dirname, '..');
const ROUNDS = Number(process.env.BENCH_CONSOLE_ROUNDS ?? 7);
const ADMIN = 'bench-console-token-0123456789';
const PROJECT = 'bench';
const NOW = '2026-01-01T00:00:00.000Z';

export interface ConsoleRow {
  page: string;
  loads: number;
  'median ms': number;
  'best ms': number;
  'max ms': number;
  target: string;
  met: string;
}

const PAGES: { page: string; path: string; view: string; target: number | null }[] = [
  { page: 'reference: the console alone (not-found page, no API read)', path: '/console/nowhere/at/all', view: 'not-found', target: null },
  { page: 'overview (1000 instances, exposure, changes)', path: '/console/', view: 'overview', target: 1000 },
  { page: 'group page (sg-7, its rules in matching order)', path: '/console/groups/sg-7', view: 'group', target: 1000 },
  { page: 'instances page (1000 instances, the first 100 rows)', path: '/console/instances', view: 'instances', target: null },
];

export async function runConsoleBench(): Promise<ConsoleRow[]> {
  const dir = await mkdtemp(join(tmpdir(), 'secgroup-bench-console-'));
  const consoleDir = join(dir, 'console');
  await execa(join(REPO, 'node_modules/.bin/vite'), ['build', '--config', 'console/vite.config.ts', '--outDir', consoleDir, '--logLevel', 'warn'], { cwd: REPO });
  const store = openSqliteStore(join(dir, 'controller.db'));
  const config = benchControllerConfig(dir, ADMIN);
  const controller = createController({ config, store, logger: silentLogger(), consoleDir });
  let browser: Awaited<ReturnType<typeof launchBrowser>> | null = null;
  try {
    await store.mutate(PROJECT, () => ({ ops: fleetOps(), value: null }));
    const snap = await store.loadProject(PROJECT);
    await Promise.all(snap!.instances.map((inst, i) => store.updateAgentState(PROJECT, inst.id, { ports: portReport(i, NOW), ports_received_at: NOW })));
    const addr = await controller.start();
    browser = await launchBrowser();
    const page = await browser.context.newPage();
    await page.goto(`${addr.url}/console/`);
    await page.getByLabel('Project').fill(PROJECT);
    await page.getByLabel('API token').fill(ADMIN);
    await page.getByRole('button', { name: 'Sign in' }).click();
    await page.locator('body[data-rendered="overview"]').waitFor({ timeout: 60_000 });
    const rows: ConsoleRow[] = [];
    for (const p of PAGES) {
      const ms: number[] = [];
      // one warm-up load (the browser's cache holds the console's files, as for a user coming back), then the rounds
      for (let k = 0; k <= ROUNDS; k++) {
        await page.goto(`${addr.url}${p.path}`);
        await page.locator(`body[data-rendered="${p.view}"]`).waitFor({ timeout: 60_000 });
        const t = await page.evaluate((name) => (globalThis as unknown as { performance: { getEntriesByName(n: string): { startTime: number }[] } }).performance.getEntriesByName(name)[0]?.startTime ?? -1, `console:${p.view}:rendered`);
        if (t < 0) throw new Error(`no console:${p.view}:rendered mark on ${p.path}`);
        if (k > 0) ms.push(t);
      }
      const median = quantile(ms, 0.5);
      rows.push({
        page: p.page,
        loads: ms.length,
        'median ms': Math.round(median),
        'best ms': Math.round(Math.min(...ms)),
        'max ms': Math.round(Math.max(...ms)),
        target: p.target === null ? '' : `< ${p.target} ms`,
        met: p.target === null ? '' : median < p.target ? 'yes' : 'NO',
      });
    }
    return rows;
  } finally {
    await browser?.close();
    await controller.stop();
    await store.close();
    await rm(dir, { recursive: true, force: true });
  }
}
