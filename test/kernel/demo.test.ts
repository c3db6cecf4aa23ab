/**
 * `npm run demo` (scripts/demo.ts) as a user runs it: exits 0 with the
 * narrated table, and leaves no namespace, process or temp dir behind; also
 * when interrupted with SIGINT half-way. Namespaces carry a per-run prefix
 * (SECGROUP_DEMO_PREFIX) and afterAll removes any that a failure left.
 */
import { spawn, spawnSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { kernelSkipReason } from '../helpers/agent-lab.js';

const REPO = resolve(import.meta.dirname, '../..');
const TSX = join(REPO, 'node_modules/.bin/tsx');
const skip = kernelSkipReason();
if (skip) console.warn(`[kernel] demo.test.ts skipped: ${skip}`);

const prefixes: string[] = [];
const ours = (prefix: string) =>
  spawnSync('ip', ['netns', 'list'], { encoding: 'utf8' })
    .stdout.split('\n')
    .map((l) => l.split(' ')[0]!)
    .filter((n) => n.startsWith(`${prefix}-`));

/**
 * The demo program itself, tsx's child (the launcher when it has none yet). A terminal's Ctrl-C reaches it directly;
 * a SIGINT to the tsx launcher alone is passed on only if the program confirms it within 30 ms, else tsx SIGKILLs it,
 * and a demo busy starting its agents (Node 24, a loaded machine) missed that window and was killed before cleaning up.
 */
function programPid(launcher: number): number {
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const stat = readFileSync(`/proc/${name}/stat`, 'utf8');
      if (Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]) === launcher) return Number(name);
    } catch {
      // gone meanwhile
    }
  }
  return launcher;
}

function runDemo(prefix: string, interruptOn?: RegExp): Promise<{ code: number | null; out: string }> {
  prefixes.push(prefix);
  return new Promise((res) => {
    const p = spawn(TSX, [join(REPO, 'scripts/demo.ts')], { cwd: REPO, env: { ...process.env, SECGROUP_DEMO_PREFIX: prefix } });
    let out = '';
    let sent = false;
    const onData = (d: Buffer) => {
      out += d.toString();
      if (interruptOn && !sent && interruptOn.test(out)) {
        sent = true;
        process.kill(programPid(p.pid!), 'SIGINT');
      }
    };
    p.stdout.on('data', onData);
    p.stderr.on('data', onData);
    const timer = setTimeout(() => p.kill('SIGKILL'), 90_000);
    p.on('close', (code) => {
      clearTimeout(timer);
      res({ code, out });
    });
  });
}

describe.skipIf(skip !== null)(`npm run demo${skip ? ` (SKIPPED: ${skip})` : ''}`, () => {
  afterAll(() => {
    for (const prefix of prefixes) for (const ns of ours(prefix)) spawnSync('ip', ['netns', 'del', ns]);
  });

  it('runs the seed example, exits 0 and removes its namespaces', { timeout: 100_000 }, async () => {
    const prefix = `sgdemo-t${process.pid}`;
    const r = await runDemo(prefix);
    expect(r.code, r.out).toBe(0);
    expect(r.out).toMatch(/1\. no ingress rule yet .*\| blocked .*timed out/);
    expect(r.out).toMatch(/2\. rule "ingress TCP 80 from 0\.0\.0\.0\/0" created .*\| open .*connected/);
    expect(r.out).toMatch(/3\. rule deleted .*\| blocked .*timed out/);
    expect(ours(prefix)).toEqual([]);
    expect(spawnSync('nft', ['list', 'tables'], { encoding: 'utf8' }).stdout).not.toContain('secgroup');
  });

  it('cleans up on SIGINT half-way', { timeout: 100_000 }, async () => {
    const prefix = `sgdemo-i${process.pid}`;
    const r = await runDemo(prefix, /agent token/);
    expect(r.out).toContain('SIGINT: cleaning up');
    expect(r.code).toBe(130);
    expect(ours(prefix)).toEqual([]);
    // no process of the demo survives (the controller and agents ran in its namespaces)
    expect(spawnSync('pgrep', ['-f', `${prefix}-`], { encoding: 'utf8' }).stdout.trim()).toBe('');
  });
});
