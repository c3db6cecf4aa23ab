/**
 * The single-file program (scripts/bundle.mjs, `npm run bundle`): it runs from
 * a directory with no node_modules anywhere above it, prints the same ruleset
 * as the sources, and loads better-sqlite3 only when something uses it, from a
 * node_modules next to it.
 */
import { isBuiltin } from 'node:module';
import { execFileSync, spawnSync } from 'node:child_process';
import { copyFileSync, cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, realpathSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { compilePolicy } from '../../src/nft/compile.js';
import { renderScript } from '../../src/nft/render.js';
import { loadPolicyFile } from '../../src/policy/load.js';
import { DEFAULT_PLATFORM } from '../../src/policy/platform.js';
import { VERSION } from '../../src/lib/version.js';

const repo = resolve('.');
let dir: string;
let program: string;

function bundle(args: string[]): void {
  execFileSync(process.execPath, [join(repo, 'scripts/bundle.mjs'), ...args], { cwd: repo, stdio: 'pipe' });
}

/** Runs the copied program with the copy's directory as working directory. */
function run(args: string[], cwd = dir) {
  const r = spawnSync(process.execPath, [program, ...args], { cwd, encoding: 'utf8', env: { PATH: process.env.PATH ?? '/usr/bin:/bin' } });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

beforeAll(() => {
  dir = realpathSync(mkdtempSync(join(tmpdir(), 'sgt-deploy-bundle-')));
  program = join(dir, 'secgroup.mjs');
  bundle(['--outfile', program]);
  copyFileSync(join(repo, 'examples/web.json'), join(dir, 'web.json'));
}, 60_000);
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('dist/secgroup.mjs (npm run bundle)', () => {
  it('lives where no node_modules can be found', () => {
    for (let d = dir; ; d = dirname(d)) {
      expect(existsSync(join(d, 'node_modules')), `${d}/node_modules`).toBe(false);
      if (d === dirname(d)) break;
    }
  });

  it('is one executable ESM file with a node hashbang', () => {
    const text = readFileSync(program, 'utf8');
    expect(text.startsWith('#!/usr/bin/env node\n')).toBe(true);
    expect(statSync(program).mode & 0o111).toBe(0o111);
    // nothing left to resolve at run time but Node built-ins and the lazily loaded native addon
    // (the bundle is minified: `import{a as b}from"node:x";` as well as `import x from 'y';` on a line of its own)
    const imports = [...text.matchAll(/(?:^|[;\n])import\s*(?:[\w$]+\s*,?\s*)?(?:\*\s*as\s+[\w$]+\s*|\{[\w$\s,]*\}\s*)?(?:from\s*)?["']([^"']+)["']/g)].map((m) => m[1]);
    expect(imports).toContain('node:module');
    expect(imports.length).toBeGreaterThan(20);
    expect(imports.filter((s) => !isBuiltin(s!))).toEqual([]);
  });

  it('--help lists the commands', () => {
    const r = run(['--help']);
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    expect(r.stdout).toMatch(/Usage: secgroup/);
    expect(r.stdout).toMatch(/^ {2}render /m);
  });

  it('runs as a command through its hashbang: --version', () => {
    const r = spawnSync(program, ['--version'], { cwd: dir, encoding: 'utf8', env: { PATH: `${dirname(process.execPath)}:/usr/bin:/bin` } });
    expect({ status: r.status, stdout: r.stdout.trim() }).toEqual({ status: 0, stdout: VERSION });
  });

  it('render prints the same ruleset as the sources', async () => {
    const r = run(['render', 'web.json']);
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    const policy = await loadPolicyFile(join(repo, 'examples/web.json'));
    expect(r.stdout).toBe(renderScript(compilePolicy(policy, { platform: DEFAULT_PLATFORM }).table));
  });

  it('an invalid policy exits 2 with the problem on stderr', () => {
    writeFileSync(join(dir, 'bad.json'), '{"revision": -1}');
    const r = run(['render', 'bad.json']);
    expect(r.status).toBe(2);
    expect(r.stdout).toBe('');
    expect(r.stderr).toMatch(/problem/);
  });
});

describe('better-sqlite3 in the bundle (the controller)', () => {
  // A stand-in for the controller's store: imports the package statically, as
  // src/controller does, and uses it only when asked to.
  let app: string;
  beforeAll(() => {
    const entry = join(dir, 'sqlite-entry.mjs');
    writeFileSync(
      entry,
      [
        '#!/usr/bin/env node',
        "import Database from 'better-sqlite3';",
        "if (process.argv[2] === 'open') {",
        "  const db = new Database(':memory:');",
        "  console.log(db.prepare('select sqlite_version() as v').get().v, db instanceof Database);",
        '} else {',
        "  console.log('started without touching sqlite');",
        '}',
      ].join('\n'),
    );
    app = join(dir, 'sqlite', 'app.mjs');
    mkdirSync(dirname(app));
    bundle(['--entry', entry, '--outfile', app]);
  }, 60_000);

  it('a program that does not use it starts without node_modules', () => {
    const r = spawnSync(process.execPath, [app], { encoding: 'utf8' });
    expect({ status: r.status, stdout: r.stdout.trim() }).toEqual({ status: 0, stdout: 'started without touching sqlite' });
  });

  it('using it without node_modules fails with a message that says what to install where', () => {
    const r = spawnSync(process.execPath, [app, 'open'], { encoding: 'utf8' });
    expect(r.status).not.toBe(0);
    expect(r.stderr).toContain(`better-sqlite3 is not installed next to this program: the controller needs the package with its native addon in a node_modules directory beside or above ${app}`);
  });

  it('loads the real addon from node_modules beside the program', () => {
    const nm = join(dirname(app), 'node_modules');
    mkdirSync(nm);
    // Copies (not symlinks, which Node resolves back into the repo's
    // node_modules) of the package and its run-time dependencies, without the
    // sources and build intermediates: this is the set systemd/README.md lists.
    const skip = /\/(deps|src|obj|obj\.target)(\/|$)|\.a$/;
    for (const p of ['better-sqlite3', 'bindings', 'file-uri-to-path']) {
      cpSync(realpathSync(join(repo, 'node_modules', p)), join(nm, p), { recursive: true, filter: (src) => !skip.test(src) });
    }
    try {
      const r = spawnSync(process.execPath, [app, 'open'], { encoding: 'utf8' });
      expect(r.stderr).toBe('');
      expect(r.stdout.trim()).toMatch(/^3\.\d+\.\d+ true$/);
    } finally {
      rmSync(nm, { recursive: true, force: true });
    }
  });
});
