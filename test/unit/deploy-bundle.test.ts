/**
 * The single-file program (scripts/bundle.mjs, `npm run bundle`): it runs from
 * a directory with no node_modules anywhere above it, prints the same ruleset
 * as the sources, and carries the controller's store too (node:sqlite, no
 * native addon). It is CommonJS (dist/secgroup.cjs: ~3 MB less RSS than the
 * same code loaded as an ES module; an outfile named *.mjs is an ES module),
 * and the controller's code is a second file beside it, loaded by the
 * controller commands only.
 */
import { isBuiltin } from 'node:module';
import { execFileSync, spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, realpathSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
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
  program = join(dir, 'secgroup.cjs');
  bundle(['--outfile', program]);
  copyFileSync(join(repo, 'examples/web.json'), join(dir, 'web.json'));
}, 60_000);
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('dist/secgroup.cjs (npm run bundle)', () => {
  it('lives where no node_modules can be found', () => {
    for (let d = dir; ; d = dirname(d)) {
      expect(existsSync(join(d, 'node_modules')), `${d}/node_modules`).toBe(false);
      if (d === dirname(d)) break;
    }
  });

  it('is one executable CommonJS file in strict mode with a node hashbang', () => {
    const text = readFileSync(program, 'utf8');
    // "use strict" first (before the banner's import.meta.url line): below it, it would be no directive
    expect(text.startsWith('#!/usr/bin/env node\n"use strict";')).toBe(true);
    expect(statSync(program).mode & 0o111).toBe(0o111);
    // no ESM import at all (the bundle is minified: `import{a as b}from"node:x";` as well as `import x from 'y';`)
    const imports = [...text.matchAll(/(?:^|[;\n])import\s*(?:[\w$]+\s*,?\s*)?(?:\*\s*as\s+[\w$]+\s*|\{[\w$\s,]*\}\s*)?(?:from\s*)?["']([^"']+)["']/g)].map((m) => m[1]);
    expect(imports).toEqual([]);
    // nothing left to resolve at run time but Node built-ins: every node: require names one
    const nodeRequires = [...text.matchAll(/require\(["'](node:[^"']+)["']\)/g)].map((m) => m[1]!);
    expect(nodeRequires.length).toBeGreaterThan(10);
    expect(nodeRequires.filter((s) => !isBuiltin(s))).toEqual([]);
  });

  it('the format follows the outfile: *.cjs runs as strict CommonJS with import.meta (url, filename, dirname) its own file, *.mjs as an ES module', () => {
    const entry = join(dir, 'format-entry.ts');
    writeFileSync(
      entry,
      [
        '#!/usr/bin/env node',
        'const strict = (function (this: unknown) { return this === undefined; })();',
        "console.log(JSON.stringify({ strict, meta: [import.meta.url, import.meta.filename, import.meta.dirname], cjs: typeof require === 'function' && typeof module === 'object' }));",
      ].join('\n'),
    );
    for (const [name, cjs] of [['format/app.cjs', true], ['format/app.mjs', false]] as const) {
      const app = join(dir, name);
      mkdirSync(dirname(app), { recursive: true });
      bundle(['--entry', entry, '--outfile', app]);
      const r = spawnSync(process.execPath, [app], { cwd: dir, encoding: 'utf8' });
      expect(r.stderr).toBe('');
      expect(JSON.parse(r.stdout)).toEqual({ strict: true, meta: [pathToFileURL(app).href, app, dirname(app)], cjs });
    }
  }, 60_000);

  it('loads at start no built-in that only other commands need (http2, undici, sqlite, tls, https: ~20 MB of RSS)', () => {
    const preload = join(dir, 'loaded.cjs');
    writeFileSync(preload, "process.on('exit', () => process.stderr.write(JSON.stringify(process.moduleLoadList.filter((m) => m.startsWith('NativeModule ')).map((m) => m.slice(13)))));");
    const r = spawnSync(process.execPath, ['--require', preload, program, '--version'], { cwd: dir, encoding: 'utf8', env: { PATH: process.env.PATH ?? '/usr/bin:/bin' } });
    expect(r.status).toBe(0);
    const loaded = JSON.parse(r.stderr) as string[];
    // what the agent uses is there (ws: net, http; the nft runner: child_process)
    expect(loaded).toEqual(expect.arrayContaining(['net', 'http', 'child_process', 'crypto']));
    // an ESM import of node:http built its namespace, WebSocket exports and all: http2 and undici (before: +14 MB);
    // node:sqlite and the controller's HTTP stack are the controller's; tls and https are wss:// only
    expect(loaded.filter((m) => ['http2', 'internal/deps/undici/undici', 'sqlite', 'tls', 'https'].includes(m))).toEqual([]);
  });

  it('built-ins come through require: named and namespace imports work, and tls/https load at first use from CommonJS (ws)', () => {
    const entry = join(dir, 'builtins-entry.ts');
    // what ws does: a CommonJS module requires tls and https at its start, and uses them only for wss://
    writeFileSync(join(dir, 'builtins-ws.cjs'), "const https = require('https'); const tls = require('tls'); exports.https = https; exports.tls = tls;");
    writeFileSync(
      entry,
      [
        '#!/usr/bin/env node',
        "import * as os from 'node:os';",
        "import { createServer, STATUS_CODES } from 'node:http';",
        "import ws from './builtins-ws.cjs';",
        "const loaded = (m: string) => process.moduleLoadList.includes(`NativeModule ${m}`);",
        "const before = [loaded('https'), loaded('tls')];",
        "const kinds = [typeof os.hostname, typeof createServer, STATUS_CODES[404], typeof ws.https.request, typeof ws.tls.connect, 'request' in ws.https];",
        "console.log(JSON.stringify({ before, after: [loaded('https'), loaded('tls')], kinds }));",
      ].join('\n'),
    );
    const app = join(dir, 'builtins', 'app.mjs');
    mkdirSync(dirname(app), { recursive: true });
    bundle(['--entry', entry, '--outfile', app]);
    const r = spawnSync(process.execPath, [app], { cwd: dirname(app), encoding: 'utf8' });
    expect(r.stderr).toBe('');
    expect(JSON.parse(r.stdout)).toEqual({ before: [false, false], after: [true, true], kinds: ['function', 'function', 'Not Found', 'function', 'function', true] });
  }, 60_000);

  it("is two files: the controller's code (fastify, ajv, pg, node:sqlite) only in secgroup-controller.cjs, which the controller commands load", () => {
    const part = join(dir, 'secgroup-controller.cjs');
    const main = readFileSync(program, 'utf8');
    for (const marker of ['fastify', 'require("node:sqlite")', 'ajv', 'pg-protocol']) {
      expect(main.includes(marker), marker).toBe(false);
      expect(readFileSync(part, 'utf8').includes(marker), marker).toBe(true);
    }
    writeFileSync(join(dir, 'controller.yaml'), 'listen:\n  port: 7399\napi:\n  tokens:\n    - name: t\n      token: "0123456789abcdef0123456789abcdef"\n');
    expect(run(['controller', '--config', 'controller.yaml', '--check'])).toEqual({ status: 0, stdout: expect.stringMatching(/^controller.yaml: valid \(listen 127\.0\.0\.1:7399/), stderr: '' });
    // the part's own errors keep their exit codes: an invalid configuration is 2
    writeFileSync(join(dir, 'bad-controller.yaml'), 'listen: 1\n');
    expect(run(['controller', '--config', 'bad-controller.yaml', '--check'])).toMatchObject({ status: 2, stdout: '', stderr: expect.stringMatching(/^error: \d+ problems? in the input/) });
    expect(run(['controller', 'migrate', '--from', 'x', '--to', 'postgres://u@h/d'])).toMatchObject({ status: 2, stderr: expect.stringMatching(/--from must be sqlite:FILE/) });
  });

  it('without its controller part the program still runs everything else, and the controller commands say what is missing', () => {
    const solo = join(dir, 'solo');
    mkdirSync(solo);
    copyFileSync(program, join(solo, 'secgroup.cjs'));
    const r = spawnSync(process.execPath, [join(solo, 'secgroup.cjs'), 'controller', '--config', 'x.yaml', '--check'], { cwd: solo, encoding: 'utf8' });
    expect({ status: r.status, stderr: r.stderr }).toEqual({ status: 1, stderr: expect.stringMatching(/the controller's part of the program, secgroup-controller\.cjs, is not next to it/) });
    expect(spawnSync(process.execPath, [join(solo, 'secgroup.cjs'), '--version'], { encoding: 'utf8' }).stdout.trim()).toBe(VERSION);
  });

  it("carries zod's English messages and no other locale (300 KB of source text Node would keep)", () => {
    const entry = join(dir, 'zod-entry.ts');
    writeFileSync(entry, ['#!/usr/bin/env node', "import { z } from 'zod';", 'console.log(JSON.stringify([Object.keys(z.locales), z.string().safeParse(1).error?.issues[0]?.message]));'].join('\n'));
    const app = join(dir, 'zod', 'app.cjs');
    mkdirSync(dirname(app), { recursive: true });
    bundle(['--entry', entry, '--outfile', app]);
    const r = spawnSync(process.execPath, [app], { cwd: dir, encoding: 'utf8' });
    expect(r.stderr).toBe('');
    expect(JSON.parse(r.stdout)).toEqual([['en'], 'Invalid input: expected string, received number']);
  }, 60_000);

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

describe("the controller's store in the bundle", () => {
  // The store as the controller opens it (openSqliteStore: a file, WAL, migrations), bundled like the program and run
  // from a directory with no node_modules: the embedded store needs no native addon (node:sqlite is part of Node).
  it('opens, writes and reads back a database with nothing but the bundle', () => {
    const entry = join(dir, 'store-entry.ts');
    writeFileSync(
      entry,
      [
        '#!/usr/bin/env node',
        `import { openSqliteStore } from ${JSON.stringify(join(repo, 'src/controller/store/sqlite.ts'))};`,
        "const store = openSqliteStore(process.argv[2]);",
        "const r = await store.mutate('p', () => ({ ops: [{ op: 'putGroup', group: { id: 'sg-1', name: 'one', description: '', enterprise_project_id: '0', tags: [], created_at: 't', updated_at: 't' } }], value: 'done' }));",
        "const snap = await store.loadProject('p');",
        "await store.close();",
        "console.log(r.value, r.version, snap.groups.map((g) => g.id).join(','));",
      ].join('\n'),
    );
    const app = join(dir, 'store', 'app.mjs');
    mkdirSync(dirname(app), { recursive: true });
    bundle(['--entry', entry, '--outfile', app]);
    const r = spawnSync(process.execPath, [app, join(dirname(app), 'controller.db')], { cwd: dirname(app), encoding: 'utf8' });
    expect(r.stderr).toBe('');
    expect({ status: r.status, stdout: r.stdout.trim() }).toEqual({ status: 0, stdout: 'done 1 sg-1' });
    expect(statSync(join(dirname(app), 'controller.db')).mode & 0o777).toBe(0o600);
  }, 60_000);
});
