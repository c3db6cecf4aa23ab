/**
 * scripts/install.sh, run into a temporary root (--root) with apt-get, nft and
 * systemctl replaced by stubs that only record their arguments: what it
 * writes, what it keeps, what it asks of systemd and nft.
 */
import { spawnSync } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';

const SCRIPT = 'scripts/install.sh';
const PROGRAM = 'usr/local/lib/secgroup/secgroup.cjs';
const WRAPPER = 'usr/local/bin/secgroup';
const UNIT = 'usr/local/lib/systemd/system/secgroup-agent.service';
const CONFIG = 'etc/secgroup/agent.yaml';
const TOKEN = 'etc/secgroup/agent.token';

let work: string;
let root: string;
let bundle: string;
let log: string;

/** A command stub: appends "NAME ARGS" to the log; `nft list ...` exits with $NFT_LIST_STATUS (default 0). */
function stub(name: string): string {
  const path = join(work, 'bin', name);
  writeFileSync(path, `#!/bin/sh\necho "${name} $*" >> '${log}'\n[ "$1" = list ] && exit "\${NFT_LIST_STATUS:-0}"\nexit 0\n`);
  chmodSync(path, 0o755);
  return path;
}

interface RunOptions {
  env?: Record<string, string>;
}

function install(args: string[], opts: RunOptions = {}) {
  const r = spawnSync('bash', [SCRIPT, '--root', root, '--bundle', bundle, ...args], {
    encoding: 'utf8',
    env: {
      PATH: process.env.PATH ?? '/usr/bin:/bin',
      NODE: process.execPath,
      NFT: stub('nft'),
      CONNTRACK: stub('conntrack'),
      SYSTEMCTL: stub('systemctl'),
      APT_GET: stub('apt-get'),
      ...opts.env,
    },
  });
  return { status: r.status, out: r.stdout + r.stderr };
}

const calls = () => (existsSync(log) ? readFileSync(log, 'utf8').trim().split('\n').filter(Boolean) : []);
const file = (p: string) => readFileSync(join(root, p), 'utf8');
const mode = (p: string) => statSync(join(root, p)).mode & 0o7777;

function tree(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const p = join(dir, e.name);
    return e.isDirectory() ? tree(p) : [relative(root, p)];
  });
}

beforeEach(() => {
  work = mkdtempSync(join(tmpdir(), 'sgt-deploy-install-'));
  root = join(work, 'root');
  mkdirSync(root);
  mkdirSync(join(work, 'bin'));
  log = join(work, 'calls.log');
  bundle = join(work, 'secgroup.cjs');
  writeFileSync(bundle, '#!/usr/bin/env node\nconsole.log("bundle v1");\n');
});
afterEach(() => rmSync(work, { recursive: true, force: true }));

describe('install.sh --root DIR (nothing done to the running system)', () => {
  it('writes exactly the program, the wrapper, the unit, a config template and an empty token', () => {
    const r = install([]);
    expect(r.status, r.out).toBe(0);
    expect(tree(root).sort()).toEqual([CONFIG, TOKEN, WRAPPER, PROGRAM, UNIT].sort());
    expect(file(PROGRAM)).toBe(readFileSync(bundle, 'utf8'));
    expect(file(UNIT)).toBe(readFileSync('systemd/secgroup-agent.service', 'utf8'));
    expect(file(CONFIG)).toBe(readFileSync('examples/config/agent.yaml', 'utf8'));
    expect(file(TOKEN)).toBe('');
    expect([mode(PROGRAM), mode(WRAPPER), mode(UNIT), mode(CONFIG), mode(TOKEN)]).toEqual([0o644, 0o755, 0o644, 0o644, 0o600]);
    expect(file(WRAPPER)).toBe(`#!/bin/sh\n# secgroup: installed by scripts/install.sh (runs the bundled program)\nexec '${process.execPath}' '/usr/local/lib/secgroup/secgroup.cjs' "$@"\n`);
    expect(calls()).toEqual([]);
    expect(r.out).toMatch(/not touching the running system/);
  });

  it('installs the drift listener found next to the bundle (or given with --listener) as an executable, and says so when there is none', () => {
    const LISTENER = 'usr/local/lib/secgroup/secgroup-nftwatch';
    writeFileSync(join(work, 'secgroup-nftwatch'), '#!/bin/sh\necho listener v1\n');
    let r = install([]);
    expect(r.status, r.out).toBe(0);
    expect(tree(root).sort()).toEqual([CONFIG, TOKEN, WRAPPER, PROGRAM, UNIT, LISTENER].sort());
    expect([file(LISTENER), mode(LISTENER)]).toEqual(['#!/bin/sh\necho listener v1\n', 0o755]);
    writeFileSync(join(work, 'other-listener'), 'v2\n');
    expect(install(['--listener', join(work, 'other-listener')]).status).toBe(0);
    expect(file(LISTENER)).toBe('v2\n');
    expect(install(['--listener', join(work, 'missing')]).out).toMatch(/--listener .*missing not found/);
    rmSync(join(work, 'secgroup-nftwatch'));
    r = install([]);
    expect(r.status, r.out).toBe(0);
    expect(existsSync(join(root, LISTENER))).toBe(false);
    expect(r.out).toMatch(/follows changes with nft monitor instead/);
  }, 30_000);

  it('installs the memory-trim addon found next to the bundle, removes an old one when there is none, and says so', () => {
    const MEMTRIM = 'usr/local/lib/secgroup/secgroup-memtrim.node';
    writeFileSync(join(work, 'secgroup-memtrim.node'), 'addon v1\n');
    let r = install([]);
    expect(r.status, r.out).toBe(0);
    expect(tree(root).sort()).toEqual([CONFIG, TOKEN, WRAPPER, PROGRAM, UNIT, MEMTRIM].sort());
    expect([file(MEMTRIM), mode(MEMTRIM)]).toEqual(['addon v1\n', 0o644]);
    expect(r.out).toMatch(/installed \/usr\/local\/lib\/secgroup\/secgroup-memtrim.node/);
    rmSync(join(work, 'secgroup-memtrim.node'));
    r = install([]);
    expect(r.status, r.out).toBe(0);
    expect(existsSync(join(root, MEMTRIM))).toBe(false);
    expect(r.out).toMatch(/secgroup-memtrim.node \(scripts\/build-native.sh builds it\): the agent runs without it/);
  }, 30_000);

  it('the wrapper runs the installed program with its arguments', () => {
    expect(install([]).status).toBe(0);
    // run it with the root's path substituted (the installed wrapper names the final path)
    const wrapper = file(WRAPPER).replace('/usr/local/lib/secgroup/secgroup.cjs', join(root, PROGRAM));
    writeFileSync(join(work, 'wrapper'), wrapper);
    writeFileSync(bundle, 'console.log(JSON.stringify(process.argv.slice(2)));\n');
    expect(install([]).status).toBe(0);
    const r = spawnSync('sh', [join(work, 'wrapper'), 'agent', '--config', 'a b.yaml'], { encoding: 'utf8' });
    expect(r.stdout.trim()).toBe(JSON.stringify(['agent', '--config', 'a b.yaml']));
  });

  it('is idempotent: a second run replaces the program and keeps the configuration and token', () => {
    expect(install([]).status).toBe(0);
    writeFileSync(join(root, CONFIG), 'controller:\n  url: wss://198.18.0.1:8443/v1/agent\n');
    writeFileSync(join(root, TOKEN), 'secret-token\n');
    writeFileSync(bundle, '#!/usr/bin/env node\nconsole.log("bundle v2");\n');
    const r = install([]);
    expect(r.status, r.out).toBe(0);
    expect(file(PROGRAM)).toMatch(/bundle v2/);
    expect(file(CONFIG)).toBe('controller:\n  url: wss://198.18.0.1:8443/v1/agent\n');
    expect(file(TOKEN)).toBe('secret-token\n');
    expect(r.out).toMatch(/kept the existing \/etc\/secgroup\/agent.yaml/);
    expect(r.out).toMatch(/kept the existing \/etc\/secgroup\/agent.token/);
    expect(readdirSync(join(root, 'usr/local/lib/secgroup'))).toEqual(['secgroup.cjs']); // no temp files left
  });

  it("installs the controller's part of the program found next to the bundle before the program, and removes it when the bundle has none", () => {
    const PART = 'usr/local/lib/secgroup/secgroup-controller.cjs';
    writeFileSync(join(work, 'secgroup-controller.cjs'), 'exports.part = 1;\n');
    let r = install([]);
    expect(r.status, r.out).toBe(0);
    expect(tree(root).sort()).toEqual([CONFIG, TOKEN, WRAPPER, PROGRAM, PART, UNIT].sort());
    expect([file(PART), mode(PART)]).toEqual(['exports.part = 1;\n', 0o644]);
    // the program loads it from its own directory
    writeFileSync(bundle, "console.log(require('./secgroup-controller.cjs').part);\n");
    expect(install([]).status).toBe(0);
    expect(spawnSync(process.execPath, [join(root, PROGRAM)], { encoding: 'utf8' }).stdout).toBe('1\n');
    rmSync(join(work, 'secgroup-controller.cjs'));
    r = install([]);
    expect(r.status, r.out).toBe(0);
    expect(existsSync(join(root, PART))).toBe(false);
    expect(r.out).toMatch(/'secgroup controller' will not run from this install/);
  });

  it('an ES module bundle (*.mjs, older checkouts) keeps its name, and each format replaces the other on upgrade', () => {
    const esm = join(work, 'secgroup.mjs');
    writeFileSync(esm, 'console.log(JSON.stringify([import.meta.url.endsWith("/secgroup.mjs"), ...process.argv.slice(2)]));\n');
    const runWrapper = () => {
      writeFileSync(join(work, 'wrapper'), file(WRAPPER).replace(/'\/usr\/local\/lib\/secgroup\//, `'${join(root, 'usr/local/lib/secgroup')}/`));
      return spawnSync('sh', [join(work, 'wrapper'), 'x'], { encoding: 'utf8' }).stdout.trim();
    };
    expect(install(['--bundle', esm]).status).toBe(0);
    expect(readdirSync(join(root, 'usr/local/lib/secgroup'))).toEqual(['secgroup.mjs']);
    expect(runWrapper()).toBe('[true,"x"]');
    // upgrade to the CommonJS bundle: the wrapper runs it, the old file is gone
    writeFileSync(bundle, 'console.log(JSON.stringify([typeof require, ...process.argv.slice(2)]));\n');
    expect(install([]).status).toBe(0);
    expect(readdirSync(join(root, 'usr/local/lib/secgroup'))).toEqual(['secgroup.cjs']);
    expect(runWrapper()).toBe('["function","x"]');
    expect(install(['--bundle', esm]).status).toBe(0);
    expect(readdirSync(join(root, 'usr/local/lib/secgroup'))).toEqual(['secgroup.mjs']);
  });

  it('refuses a missing bundle, an old Node.js, --purge without --uninstall, unknown arguments', () => {
    rmSync(bundle);
    expect(install([])).toMatchObject({ status: 1, out: expect.stringMatching(/run 'npm run bundle' first/) });
    writeFileSync(bundle, '');
    const oldNode = join(work, 'bin', 'node18');
    writeFileSync(oldNode, '#!/bin/sh\necho 18\n');
    chmodSync(oldNode, 0o755);
    expect(install([], { env: { NODE: oldNode } })).toMatchObject({ status: 1, out: expect.stringMatching(/Node.js >= 22.15 is required/) });
    // the controller's store uses node:sqlite as it is from 22.15 on; commander 15 needs 22.12
    writeFileSync(oldNode, '#!/bin/sh\necho 22.14.0\n');
    expect(install([], { env: { NODE: oldNode } })).toMatchObject({ status: 1, out: expect.stringMatching(/Node.js >= 22.15 is required/) });
    expect(install([], { env: { NODE: 'node' } })).toMatchObject({ status: 1, out: expect.stringMatching(/absolute path/) });
    expect(install(['--purge']).status).toBe(1);
    expect(install(['--frobnicate'])).toMatchObject({ status: 1, out: expect.stringMatching(/unknown argument: --frobnicate/) });
    expect(tree(root)).toEqual([]);
  });
});

describe('install.sh with host actions (stubbed apt-get, nft, systemctl)', () => {
  const host = { SECGROUP_HOST_ACTIONS: '1', SECGROUP_SYSTEMD_BOOTED: '1' };

  it('systemd as PID 1: reloads and enables the unit, does not start it on a first install', () => {
    const r = install([], { env: host });
    expect(r.status, r.out).toBe(0);
    expect(calls()).toEqual(['systemctl daemon-reload', 'systemctl enable secgroup-agent.service']);
    expect(r.out).toMatch(/start it once/);
  });

  it('an upgrade restarts the agent if it was running; --now (re)starts it', () => {
    expect(install([], { env: host }).status).toBe(0);
    rmSync(log);
    expect(install([], { env: host }).status).toBe(0);
    expect(calls()).toEqual(['systemctl daemon-reload', 'systemctl enable secgroup-agent.service', 'systemctl try-restart secgroup-agent.service']);
    rmSync(log);
    expect(install(['--now'], { env: host }).status).toBe(0);
    expect(calls()).toEqual(['systemctl daemon-reload', 'systemctl enable secgroup-agent.service', 'systemctl restart secgroup-agent.service']);
  });

  it('without systemd as PID 1: says so and never calls systemctl', () => {
    const r = install([], { env: { ...host, SECGROUP_SYSTEMD_BOOTED: '0' } });
    expect(r.status, r.out).toBe(0);
    expect(calls()).toEqual([]);
    expect(r.out).toMatch(/systemd is not running as PID 1 here: not calling systemctl/);
  });

  it('installs nftables with apt-get when nft is missing', () => {
    const r = install([], { env: { ...host, NFT: join(work, 'bin', 'no-such-nft') } });
    expect(r.status, r.out).toBe(0);
    expect(calls()[0]).toBe('apt-get install -y --no-install-recommends nftables');
  });

  it('installs secgroup-ctmark found next to the bundle, and then needs no conntrack; without it, says the agent uses conntrack(8)', () => {
    const CTMARK = 'usr/local/lib/secgroup/secgroup-ctmark';
    writeFileSync(join(work, 'secgroup-ctmark'), '#!/bin/sh\necho ctmark v1\n');
    let r = install([], { env: { ...host, CONNTRACK: join(work, 'bin', 'no-such-conntrack') } });
    expect(r.status, r.out).toBe(0);
    expect([file(CTMARK), mode(CTMARK)]).toEqual(['#!/bin/sh\necho ctmark v1\n', 0o755]);
    expect(r.out).toMatch(/installed \/usr\/local\/lib\/secgroup\/secgroup-ctmark \(clears the flow mark's bits in the conntrack table\)/);
    expect(calls().filter((c) => c.startsWith('apt-get'))).toEqual([]);
    rmSync(join(work, 'secgroup-ctmark'));
    r = install([], { env: host });
    expect(r.status, r.out).toBe(0);
    expect(existsSync(join(root, CTMARK))).toBe(false);
    expect(r.out).toMatch(/no .*secgroup-ctmark \(scripts\/build-native.sh builds it\): the agent clears them with conntrack\(8\) instead/);
  });

  it('without secgroup-ctmark, installs conntrack with apt-get when it is missing; a failed install is a warning (the agent runs unarmed), not an error', () => {
    const r = install([], { env: { ...host, CONNTRACK: join(work, 'bin', 'no-such-conntrack') } });
    expect(r.status, r.out).toBe(0);
    expect(calls()[0]).toBe('apt-get install -y --no-install-recommends conntrack');
    const failing = join(work, 'bin', 'failing-apt-get');
    writeFileSync(failing, '#!/bin/sh\nexit 100\n');
    chmodSync(failing, 0o755);
    const f = install([], { env: { ...host, CONNTRACK: join(work, 'bin', 'no-such-conntrack'), APT_GET: failing } });
    expect(f.status, f.out).toBe(0);
    expect(f.out).toMatch(/install.sh: apt-get install conntrack failed \(run apt-get update first\?\)/);
  });
});

describe('install.sh --uninstall', () => {
  const host = { SECGROUP_HOST_ACTIONS: '1', SECGROUP_SYSTEMD_BOOTED: '1' };
  /** An installed agent plus things that are not ours and must survive. */
  function installed(): void {
    expect(install([]).status).toBe(0);
    writeFileSync(join(root, TOKEN), 'secret-token\n');
    for (const d of ['var/lib/secgroup', 'var/lib/private/secgroup', 'var/lib/other', 'etc/systemd/system']) mkdirSync(join(root, d), { recursive: true });
    writeFileSync(join(root, 'var/lib/private/secgroup/policy.json'), '{}');
    writeFileSync(join(root, 'var/lib/other/keep'), 'x');
    writeFileSync(join(root, 'etc/secgroup/controller.yaml'), 'listen: {}\n');
    writeFileSync(join(root, 'usr/local/bin/other-tool'), 'x');
  }
  const notOurs = ['etc/secgroup/controller.yaml', 'usr/local/bin/other-tool', 'var/lib/other/keep'];

  it('stops and removes the unit, the program and our nft table; keeps configuration and state', () => {
    installed();
    const r = install(['--uninstall'], { env: host });
    expect(r.status, r.out).toBe(0);
    expect(calls()).toEqual([
      'systemctl disable --now secgroup-agent.service',
      'systemctl daemon-reload',
      'systemctl reset-failed secgroup-agent.service',
      'nft list table inet secgroup',
      'nft delete table inet secgroup',
    ]);
    expect(tree(root).sort()).toEqual([CONFIG, TOKEN, ...notOurs, 'var/lib/private/secgroup/policy.json'].sort());
    expect(file(TOKEN)).toBe('secret-token\n');
  });

  it('deletes no nft table when there is none', () => {
    installed();
    const r = install(['--uninstall'], { env: { ...host, NFT_LIST_STATUS: '1' } });
    expect(r.status, r.out).toBe(0);
    expect(calls().filter((c) => c.startsWith('nft'))).toEqual(['nft list table inet secgroup']);
    expect(r.out).toMatch(/no nft table inet secgroup to delete/);
  });

  it('--purge also removes the agent configuration, token and state, and nothing else', () => {
    installed();
    const r = install(['--uninstall', '--purge'], { env: host });
    expect(r.status, r.out).toBe(0);
    expect(tree(root).sort()).toEqual(notOurs.sort());
  });

  it('keeps the program while secgroup-controller.service uses it', () => {
    installed();
    writeFileSync(join(root, 'usr/local/lib/systemd/system/secgroup-controller.service'), '[Service]\n');
    const r = install(['--uninstall'], { env: host });
    expect(r.status, r.out).toBe(0);
    expect(existsSync(join(root, PROGRAM))).toBe(true);
    expect(existsSync(join(root, WRAPPER))).toBe(true);
    expect(existsSync(join(root, UNIT))).toBe(false);
  });

  it('with --root alone touches neither nft nor systemctl', () => {
    installed();
    const r = install(['--uninstall', '--purge']);
    expect(r.status, r.out).toBe(0);
    expect(calls()).toEqual([]);
  });
});

describe.skipIf(spawnSync('shellcheck', ['--version']).status !== 0)('shellcheck (skipped if not installed: apt-get install shellcheck)', () => {
  it('finds nothing in install.sh', () => {
    const r = spawnSync('shellcheck', [SCRIPT], { encoding: 'utf8' });
    expect(r.stdout + r.stderr).toBe('');
    expect(r.status).toBe(0);
  });
});
