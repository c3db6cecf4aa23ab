/**
 * bench sea: the single executable (dist/secgroup, `npm run build:sea`) next to
 * the bundle (dist/secgroup.cjs, `npm run bundle`) run by node: file size,
 * cold start (`--version`, `render examples/web.json`; median of RUNS) and the
 * agent's idle RSS (standalone, last known good examples/web.json applied in a
 * network namespace this script creates and removes; sampled after IDLE_S s;
 * with the unit's environment, the code cache made by a `--version` run first).
 * Prints the figures side by side; asserts nothing.
 *
 *   sudo npx tsx bench/sea.ts
 *
 * NODES: comma-separated node binaries for the bundle rows (default: the
 * node running this and /usr/bin/node, when different). BENCH_SEA_PROGRAMS:
 * comma-separated programs instead (*.js/*.mjs/*.cjs run with node, others as
 * they are), e.g. the bundle of the parent commit next to this one's:
 *   BENCH_SEA_PROGRAMS=/tmp/base/dist/secgroup.mjs,dist/secgroup.cjs sudo npx tsx bench/sea.ts
 */
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { execa } from 'execa';
import { unitEnvironment } from './footprint.js';

const REPO = fileURLToPath(new URL('..', import.meta.url));
const RUNS = Number(process.env.BENCH_SEA_RUNS ?? 7);
const IDLE_S = Number(process.env.BENCH_SEA_IDLE_S ?? 10);
const sea = join(REPO, 'dist/secgroup');
const bundle = join(REPO, 'dist/secgroup.cjs');
const web = join(REPO, 'examples/web.json');

if (!process.env.BENCH_SEA_PROGRAMS) for (const f of [sea, bundle]) if (!existsSync(f)) throw new Error(`${f} missing: npm run bundle && npm run build:sea`);

const nodes = [...new Set((process.env.NODES ?? `${process.execPath},/usr/bin/node`).split(',').filter((n) => existsSync(n)))];
interface Variant { name: string; cmd: string[]; bytes: number }
const variants: Variant[] = [];
if (process.env.BENCH_SEA_PROGRAMS) {
  // explicit programs, e.g. a tree before a change next to this one: executables run as they are, *.js/*.mjs/*.cjs with node
  for (const f of process.env.BENCH_SEA_PROGRAMS.split(',').map((p) => resolve(p))) {
    const script = /\.[cm]?js$/.test(f);
    variants.push({ name: f, cmd: script ? [process.execPath, f] : [f], bytes: statSync(f).size + (script ? statSync(process.execPath).size : 0) });
  }
} else {
  variants.push({ name: 'single executable', cmd: [sea], bytes: statSync(sea).size });
  for (const n of nodes) {
    const v = (await execa(n, ['--version'])).stdout.trim();
    variants.push({ name: `bundle + node ${v}`, cmd: [n, bundle], bytes: statSync(bundle).size + statSync(n).size });
  }
}

async function coldMs(cmd: string[], args: string[]): Promise<number> {
  const t: number[] = [];
  for (let i = 0; i < RUNS; i++) {
    const t0 = performance.now();
    await execa(cmd[0]!, [...cmd.slice(1), ...args], { env: { PATH: '/usr/sbin:/usr/bin:/sbin:/bin' }, extendEnv: false });
    t.push(performance.now() - t0);
  }
  t.sort((a, b) => a - b);
  return t[Math.floor(t.length / 2)]!;
}

async function idleRssMb(cmd: string[]): Promise<number | string> {
  if (process.getuid?.() !== 0) return 'n/a (root needed)';
  const ns = `sgb-sea-${process.pid}`.slice(0, 15);
  const dir = mkdtempSync(join(tmpdir(), 'sgb-sea-'));
  const policy = JSON.parse(readFileSync(web, 'utf8')) as unknown;
  writeFileSync(join(dir, 'policy.json'), JSON.stringify({ format: 1, saved_at: new Date(0).toISOString(), policy }) + '\n', { mode: 0o600 });
  writeFileSync(join(dir, 'agent.yaml'), `instance_id: ecs-web-1\nstate_dir: ${dir}\nhttp_listen: ""\n`);
  // the unit's environment (systemd/secgroup-agent.service), and nothing of this process's (tsx puts its loader into
  // NODE_OPTIONS, which the executable would honour); the code cache made first, as the installed agent has it from
  // its second start on (BENCH_SEA_NO_CACHE: not made, as at the first start)
  const env = { PATH: '/usr/sbin:/usr/bin:/sbin:/bin', ...unitEnvironment({ cacheDir: join(dir, 'compile-cache') }) };
  if (process.env.BENCH_SEA_NO_CACHE === undefined) await execa(cmd[0]!, [...cmd.slice(1), '--version'], { env, extendEnv: false });
  // The program's file pages count in RSS as the kernel happens to hold them: a file just written (build-sea's
  // postject) sits in the page cache in large folios, and its mapped text then counts ~14 MB more than once it was
  // read back from disk. Dropped from the page cache first (written back, then `dd iflag=nocache count=0`), every
  // program starts from the disk, as after a boot.
  for (const f of cmd.filter((c) => c.startsWith('/') && c !== process.execPath)) {
    await execa('sync', [f]);
    await execa('dd', [`if=${f}`, 'iflag=nocache', 'count=0', 'status=none']);
  }
  await execa('ip', ['netns', 'add', ns]);
  const p = execa('ip', ['netns', 'exec', ns, ...cmd, 'agent', '--config', join(dir, 'agent.yaml')], {
    env,
    extendEnv: false,
    reject: false,
  });
  try {
    // the agent's pid: the child of `ip netns exec` (it execs, so the same pid)
    const pid = p.pid!;
    for (let i = 0; i < 100; i++) {
      const t = await execa('ip', ['netns', 'exec', ns, 'nft', 'list', 'tables'], { reject: false });
      if (t.stdout.includes('secgroup')) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    await new Promise((r) => setTimeout(r, IDLE_S * 1000));
    const status = readFileSync(`/proc/${pid}/status`, 'utf8');
    const mb = (field: string) => (Number(new RegExp(`${field}:\\s+(\\d+)`).exec(status)?.[1] ?? NaN) / 1024).toFixed(1);
    // RSS = anonymous (heap, V8, malloc) + file-backed (the executable's pages that were touched)
    return `${mb('VmRSS')} (${mb('RssAnon')} + ${mb('RssFile')})`;
  } finally {
    p.kill('SIGTERM');
    await p;
    await execa('ip', ['netns', 'del', ns], { reject: false });
    rmSync(dir, { recursive: true, force: true });
  }
}

const rows: string[][] = [['variant', 'size MB', '--version ms', 'render web.json ms', `agent idle RSS MB (${IDLE_S} s; anon + file)`]];
for (const v of variants) {
  const version = await coldMs(v.cmd, ['--version']);
  const render = await coldMs(v.cmd, ['render', web]);
  const rss = await idleRssMb(v.cmd);
  rows.push([v.name, (v.bytes / 1e6).toFixed(1), version.toFixed(0), render.toFixed(0), String(rss)]);
}
const w = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
for (const r of rows) console.log(r.map((c, i) => (i === 0 ? c.padEnd(w[i]!) : c.padStart(w[i]!))).join('  '));
console.log(`(median of ${RUNS} runs; target idle RSS <= 80 MB)`);
