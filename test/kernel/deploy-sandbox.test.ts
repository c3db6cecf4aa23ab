/**
 * Does the agent's systemd sandbox leave nft, ss and Node working? There is no
 * systemd as PID 1 here, so the sandbox is emulated by hand
 * (sandbox/sandbox.sh: a private mount namespace made read-only, setpriv for
 * the user and capabilities, seccomp-exec.py for the syscall and socket family
 * filters), with every parameter read from systemd/secgroup-agent.service
 * itself. All of it runs in a network namespace this test creates
 * (sgt-deploy-*) and removes, also when it fails.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { chmodSync, copyFileSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { processAlive } from '../../src/lib/pid.js';
import { compilePolicy } from '../../src/nft/compile.js';
import { renderScript } from '../../src/nft/render.js';
import { loadPolicyFile } from '../../src/policy/load.js';
import { DEFAULT_PLATFORM } from '../../src/policy/platform.js';
import { allowedSyscalls, parseSyscallGroups, parseUnit, systemdAnalyzePath, value, values, words } from '../lib/systemd-unit.js';

const repo = resolve('.');
const SANDBOX = join(repo, 'test/kernel/sandbox/sandbox.sh');
/** The first uid DynamicUser= hands out. */
const DYNAMIC_UID = '61184';
/** A process of another user, listening in the namespace (for ss). */
const OTHER_UID = '65534';
const LISTEN = { v4: '198.18.255.1', port: 7301 };
const NS_PREFIX = 'sgt-deploy-';

const unit = parseUnit(readFileSync(join(repo, 'systemd/secgroup-agent.service'), 'utf8'));

function has(cmd: string, args: string[] = ['--version']): boolean {
  return spawnSync(cmd, args, { stdio: 'ignore' }).status === 0;
}
function skipReason(): string | null {
  if (process.getuid?.() !== 0) return 'needs root (network namespace, mounts, setpriv)';
  for (const c of ['ip', 'nft', 'setpriv', 'unshare', 'findmnt', 'ss']) if (!has(c, c === 'ip' ? ['-V'] : c === 'ss' ? ['-V'] : ['--version'])) return `${c} not installed`;
  if (!has('/usr/bin/python3', ['-c', 'import seccomp'])) return '/usr/bin/python3 with python3-seccomp not installed (apt-get install python3-seccomp)';
  if (!systemdAnalyzePath()) return 'systemd-analyze not installed (apt-get install systemd): it expands the syscall groups';
  return null;
}
const reason = skipReason();


describe.skipIf(reason)(`the agent's sandbox, emulated${reason ? ` (skipped: ${reason})` : ''}`, () => {
  const ns = `${NS_PREFIX}${process.pid}-${randomBytes(2).toString('hex')}`;
  let app: string;
  let listener: ChildProcess | undefined;
  const caps = value(unit, 'Service', 'CapabilityBoundingSet')
    .split(/\s+/)
    .map((c) => c.replace(/^CAP_/, '').toLowerCase())
    .join(',');
  const families = words(unit, 'Service', 'RestrictAddressFamilies').join(',');

  function ip(...args: string[]): string {
    const r = spawnSync('ip', args, { encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`ip ${args.join(' ')}: ${r.stderr}`);
    return r.stdout;
  }
  /** Runs a command inside the namespace and the emulated sandbox. */
  function sandboxed(cmd: string[], opts: { caps?: string; filter?: boolean; input?: string } = {}) {
    const r = spawnSync(
      'ip',
      ['netns', 'exec', ns, 'unshare', '--mount', '--propagation', 'private', '--', 'sh', SANDBOX, app, DYNAMIC_UID, opts.caps ?? caps, families, opts.filter === false ? '-' : 'syscalls.txt', '--', ...cmd],
      { encoding: 'utf8', input: opts.input, timeout: 30_000 },
    );
    return { status: r.status, stdout: r.stdout, stderr: r.stderr };
  }
  /** Runs a command inside the namespace as root, outside the sandbox (the test's own view). */
  function inNs(cmd: string[]) {
    const r = spawnSync('ip', ['netns', 'exec', ns, ...cmd], { encoding: 'utf8' });
    return { status: r.status, stdout: r.stdout, stderr: r.stderr };
  }

  beforeAll(async () => {
    // leftovers of crashed runs: namespaces whose creating process is gone
    for (const line of ip('netns', 'list').split('\n')) {
      const m = new RegExp(`^(${NS_PREFIX}(\\d+)-[0-9a-f]+)\\b`).exec(line);
      if (m && !processAlive(Number(m[2]))) ip('netns', 'del', m[1]!);
    }
    ip('netns', 'add', ns);
    ip('-n', ns, 'link', 'set', 'lo', 'up');
    ip('-n', ns, 'addr', 'add', `${LISTEN.v4}/32`, 'dev', 'lo');

    app = mkdtempSync(join(tmpdir(), 'sgt-deploy-sandbox-'));
    chmodSync(app, 0o755);
    const b = spawnSync(process.execPath, [join(repo, 'scripts/bundle.mjs'), '--outfile', join(app, 'secgroup.cjs')], { cwd: repo, encoding: 'utf8' });
    if (b.status !== 0) throw new Error(`bundle: ${b.stderr}`);
    copyFileSync(join(repo, 'examples/web.json'), join(app, 'web.json'));
    copyFileSync(join(repo, 'test/kernel/sandbox/seccomp-exec.py'), join(app, 'seccomp-exec.py'));
    const groups = parseSyscallGroups(spawnSync(systemdAnalyzePath()!, ['syscall-filter', '--no-pager'], { encoding: 'utf8' }).stdout);
    const allowed = allowedSyscalls(groups, values(unit, 'Service', 'SystemCallFilter'));
    writeFileSync(join(app, 'syscalls.txt'), [...allowed].sort().join('\n') + '\n');
    for (const f of ['web.json', 'seccomp-exec.py', 'syscalls.txt']) chmodSync(join(app, f), 0o644);

    listener = spawn(
      'ip',
      ['netns', 'exec', ns, 'setpriv', `--reuid=${OTHER_UID}`, `--regid=${OTHER_UID}`, '--clear-groups', process.execPath, '-e', `require('net').createServer().listen(${LISTEN.port}, '${LISTEN.v4}', () => console.log('up'))`],
      { stdio: ['ignore', 'pipe', 'inherit'] },
    );
    await new Promise<void>((res, rej) => {
      listener!.stdout!.once('data', () => res());
      listener!.once('exit', (code) => rej(new Error(`listener exited with ${code}`)));
    });
  });

  // each test starts from an empty ruleset in the namespace, whatever the previous one left
  beforeEach(() => {
    if (inNs(['nft', 'list', 'tables']).stdout !== '') inNs(['nft', 'flush', 'ruleset']);
  });

  afterAll(() => {
    listener?.kill('SIGKILL');
    spawnSync('ip', ['netns', 'del', ns]);
    if (app) rmSync(app, { recursive: true, force: true });
    expect(ip('netns', 'list')).not.toContain(ns);
  });

  it('reads its parameters from the unit: CAP_NET_ADMIN only, EPERM for filtered syscalls', () => {
    expect(caps).toBe('net_admin');
    expect(value(unit, 'Service', 'AmbientCapabilities')).toBe(value(unit, 'Service', 'CapabilityBoundingSet'));
    expect(value(unit, 'Service', 'SystemCallErrorNumber')).toBe('EPERM');
    expect(value(unit, 'Service', 'RestrictNamespaces')).toBe('yes'); // seccomp-exec.py: clone3 -> ENOSYS
    const allowed = readFileSync(join(app, 'syscalls.txt'), 'utf8').split('\n');
    expect(allowed).toContain('sendmsg'); // netlink
    expect(allowed).not.toContain('setpriority'); // ~@resources
    expect(allowed).not.toContain('init_module'); // ~@privileged
  });

  it('is in effect: dynamic uid, only CAP_NET_ADMIN (bit 12) in every set, no_new_privs, a seccomp filter', () => {
    const r = sandboxed(['cat', '/proc/self/status']);
    expect(r.stderr).toBe('');
    const field = (k: string) => new RegExp(`^${k}:\\s*(.*)$`, 'm').exec(r.stdout)?.[1]?.trim();
    expect(field('Uid')).toBe(`${DYNAMIC_UID}\t${DYNAMIC_UID}\t${DYNAMIC_UID}\t${DYNAMIC_UID}`);
    for (const set of ['CapInh', 'CapPrm', 'CapEff', 'CapBnd', 'CapAmb']) expect(field(set), set).toBe('0000000000001000');
    expect(field('NoNewPrivs')).toBe('1');
    expect(field('Seccomp')).toBe('2');
  });

  it('file system: /etc read-only, home directories hidden, a private writable /tmp, a private runtime directory (RuntimeDirectory=)', () => {
    const r = sandboxed(['sh', '-c', 'touch /etc/sgt-deploy-probe; ls /root; touch /tmp/probe && echo tmp-writable; ls /tmp; stat -f -c %T "$RUNTIME_DIRECTORY"; stat -c "%a %u" "$RUNTIME_DIRECTORY"']);
    expect(r.stderr).toMatch(/\/etc\/sgt-deploy-probe.*Read-only file system/);
    expect(r.stderr).toMatch(/\/root.*Permission denied/);
    expect(r.stdout.split('\n')).toEqual(['tmp-writable', 'app', 'probe', 'runtime', 'tmpfs', `700 ${DYNAMIC_UID}`, '']);
  });

  it('the filters bite: EAFNOSUPPORT for a socket family not listed, EPERM for a @resources syscall; not so without them', () => {
    const probe = [
      '/usr/bin/python3',
      '-c',
      [
        'import os, socket',
        'try:\n  socket.socket(socket.AF_PACKET, socket.SOCK_RAW)\n  print("packet ok")\nexcept OSError as e:\n  print("packet", e.errno)',
        'try:\n  os.setpriority(os.PRIO_PROCESS, 0, 5)\n  print("setpriority ok")\nexcept OSError as e:\n  print("setpriority", e.errno)',
      ].join('\n'),
    ];
    expect(sandboxed(probe).stdout).toBe('packet 97\nsetpriority 1\n'); // EAFNOSUPPORT, EPERM
    // control, same user and capabilities without the filter: no CAP_NET_RAW, lowering one's own priority is allowed
    expect(sandboxed(probe, { filter: false }).stdout).toBe('packet 1\nsetpriority ok\n');
  });

  it('Node runs the single-file program: render prints what the sources render', async () => {
    const r = sandboxed([process.execPath, '/tmp/app/secgroup.cjs', 'render', '/tmp/app/web.json']);
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    const policy = await loadPolicyFile(join(repo, 'examples/web.json'));
    expect(r.stdout).toBe(renderScript(compilePolicy(policy, { platform: DEFAULT_PLATFORM }).table));
  });

  it("the program (secgroup.cjs and its controller part) runs the agent (with the unit's Environment=: its code cache written at the first start, read at the next) and the controller", () => {
    // the unit's environment; NODE_COMPILE_CACHE is the unit's CacheDirectory=, emulated under the private /tmp
    const env = Object.fromEntries(values(unit, 'Service', 'Environment').flatMap((v) => v.split(/\s+/).map((a) => [a.slice(0, a.indexOf('=')), a.slice(a.indexOf('=') + 1)])));
    expect(env.NODE_COMPILE_CACHE).toBe(`/var/cache/${value(unit, 'Service', 'CacheDirectory')}`);
    env.NODE_COMPILE_CACHE = '/tmp/cache';
    const policy = JSON.parse(readFileSync(join(repo, 'examples/web.json'), 'utf8')) as unknown;
    writeFileSync(join(app, 'policy.json'), JSON.stringify({ format: 1, saved_at: new Date(0).toISOString(), policy }) + '\n');
    writeFileSync(join(app, 'agent.yaml'), 'instance_id: ecs-web-1\nstate_dir: /tmp/state\nhttp_listen: ""\ndrift_monitor: false\n');
    writeFileSync(join(app, 'controller.yaml'), 'listen:\n  host: 127.0.0.1\n  port: 7302\ndata_dir: /tmp/ctl\napi:\n  tokens:\n    - name: t\n      token: "0123456789abcdef0123456789abcdef"\n');
    for (const f of ['policy.json', 'agent.yaml', 'controller.yaml']) chmodSync(join(app, f), 0o644);
    const node = `${process.execPath} /tmp/app/secgroup.cjs`;
    const script = [
      `export ${Object.entries(env).map(([k, v]) => `${k}=${v}`).join(' ')}`,
      'mkdir /tmp/state /tmp/cache /tmp/ctl && cp /tmp/app/policy.json /tmp/state/',
      // the agent applies its last known good policy and runs until SIGTERM, twice
      'for start in 1 2; do',
      `  NODE_DEBUG_NATIVE=COMPILE_CACHE ${node} agent --config /tmp/app/agent.yaml >/tmp/agent.out 2>&1 & pid=$!`,
      '  i=0; until nft list table inet secgroup >/dev/null 2>&1 || [ $i -gt 300 ]; do i=$((i+1)); sleep 0.1; done',
      '  kill -TERM $pid; wait $pid; echo "agent $start: exit $?, cache $(grep -c \'code cache for CommonJS /tmp/app/secgroup.cjs was accepted\' /tmp/agent.out) hit, $(grep -c \'"event":"boot"\' /tmp/agent.out) boot"',
      '  nft delete table inet secgroup',
      'done',
      // the controller from the same file: serves its API until SIGTERM
      `${node} controller --config /tmp/app/controller.yaml 2>/tmp/ctl.err & pid=$!`,
      `i=0; until ${process.execPath} -e "fetch('http://127.0.0.1:7302/healthz').then(async (r) => console.log('controller', r.status, await r.text()), () => process.exit(1))" || [ $i -gt 300 ]; do i=$((i+1)); sleep 0.1; done`,
      'kill -TERM $pid; wait $pid; echo "controller: exit $?"',
    ].join('\n');
    const r = sandboxed(['sh', '-c', script]);
    expect(r.stdout.split('\n')).toEqual([
      'agent 1: exit 0, cache 0 hit, 1 boot',
      'agent 2: exit 0, cache 1 hit, 1 boot',
      'controller 200 {"status":"ok","agents_connected":0}',
      'controller: exit 0',
      '',
    ]);
  }, 60_000);

  it('nft checks, applies (twice: the script replaces the table), lists and deletes the table with CAP_NET_ADMIN alone', async () => {
    const script = renderScript(compilePolicy(await loadPolicyFile(join(repo, 'examples/web.json')), { platform: DEFAULT_PLATFORM }).table);
    const digest = /digest=([0-9a-f]+)/.exec(script)![1]!;
    expect(sandboxed(['nft', '--check', '-f', '-'], { input: script })).toMatchObject({ status: 0, stderr: '' });
    expect(inNs(['nft', 'list', 'tables']).stdout).toBe(''); // --check applied nothing
    for (let i = 0; i < 2; i++) expect(sandboxed(['nft', '-f', '-'], { input: script })).toMatchObject({ status: 0, stderr: '' });
    const listed = sandboxed(['nft', 'list', 'table', 'inet', 'secgroup']);
    expect(listed.status, listed.stderr).toBe(0);
    expect(listed.stdout).toContain(`digest=${digest}`);
    // the JSON read-back the agent's drift check uses (nft 1.0.6 leaves the table comment out of it)
    const json = sandboxed(['nft', '-j', 'list', 'table', 'inet', 'secgroup']);
    expect(json.status, json.stderr).toBe(0);
    expect(JSON.parse(json.stdout).nftables).toContainEqual({ table: expect.objectContaining({ family: 'inet', name: 'secgroup' }) });
    // the kernel has it: seen from outside the sandbox, in the same namespace
    expect(inNs(['nft', 'list', 'table', 'inet', 'secgroup']).stdout).toContain(`digest=${digest}`);
    expect(sandboxed(['nft', 'delete', 'table', 'inet', 'secgroup'])).toMatchObject({ status: 0, stderr: '' });
    expect(inNs(['nft', 'list', 'tables']).stdout).toBe('');
  });

  it("secgroup-ctmark, and conntrack(8), clear the flow mark's bits of every connection with CAP_NET_ADMIN alone, under the filters (the epoch sweep, src/nft/conntrack.ts)", () => {
    if (!has('conntrack', ['--version'])) throw new Error('conntrack not installed (apt-get install conntrack; .ci/run installs it)');
    const b = spawnSync('bash', [join(repo, 'scripts/build-native.sh'), app], { encoding: 'utf8' });
    expect(b.status, b.stderr).toBe(0);
    const marking = spawnSync('ip', ['netns', 'exec', ns, 'nft', '-f', '-'], {
      encoding: 'utf8',
      input: `table inet marks {\n\tchain out {\n\t\ttype filter hook output priority 0; policy accept;\n\t\ttcp dport ${LISTEN.port} ct mark set 0x00070005\n\t}\n}\n`,
    });
    expect(marking.status, marking.stderr).toBe(0);
    const connect = inNs([process.execPath, '-e', `const s = require('net').connect(${LISTEN.port}, '${LISTEN.v4}', () => s.end());`]);
    expect(connect.status, connect.stderr).toBe(0);
    const marks = () => [...inNs(['conntrack', '-L', '-f', 'ipv4', '-p', 'tcp', '--dport', String(LISTEN.port)]).stdout.matchAll(/mark=(\d+)/g)].map((m) => Number(m[1]));
    expect(marks()).toEqual([0x00070005]);
    const native = sandboxed(['/tmp/app/secgroup-ctmark', 'clear', '0xffff0000']);
    expect(native.stderr).toBe('');
    expect([native.status, native.stdout]).toEqual([0, expect.stringMatching(/^cleared 1 gone 0 passes 2 seen \d+\n$/)]);
    // our bits only: the rest of the mark is someone else's
    expect(marks()).toEqual([0x5]);
    // the fallback, the same way (the mark set back from outside the sandbox)
    expect(inNs(['conntrack', '-U', '-f', 'ipv4', '-p', 'tcp', '--dport', String(LISTEN.port), '-m', '0x00070005']).status).toBe(0);
    expect(marks()).toEqual([0x00070005]);
    const cleared = sandboxed(['conntrack', '-U', '-f', 'ipv4', '-m', '0/0xffff0000']);
    expect(cleared.status, cleared.stderr).toBe(0);
    expect(cleared.stderr).toMatch(/1 flow entries have been updated/);
    expect(marks()).toEqual([0x5]);
  });

  it('Node spawns nft as the agent does (child process, script on stdin) and reads the table back', async () => {
    const script = renderScript(compilePolicy(await loadPolicyFile(join(repo, 'examples/web.json')), { platform: DEFAULT_PLATFORM }).table);
    const program = [
      "const { execFileSync } = require('node:child_process');",
      "const input = require('node:fs').readFileSync(0, 'utf8');",
      "execFileSync('nft', ['-f', '-'], { input });",
      "const t = JSON.parse(execFileSync('nft', ['-j', 'list', 'table', 'inet', 'secgroup'], { encoding: 'utf8' }));",
      'console.log(t.nftables.filter((o) => o.chain).length);',
    ].join('\n');
    const r = sandboxed([process.execPath, '-e', program], { input: script });
    expect(r.stderr).toBe('');
    expect(Number(r.stdout)).toBeGreaterThan(2);
    expect(inNs(['nft', 'list', 'tables']).stdout).toBe('table inet secgroup\n');
  });

  it("the agent's nft runner works in it through its helper shell (/bin/sh started by Node, scripts in a private directory in the service's runtime directory, a tmpfs)", () => {
    const b = spawnSync(process.execPath, [join(repo, 'scripts/bundle.mjs'), '--entry', join(repo, 'test/kernel/sandbox/helper-runner.ts'), '--outfile', join(app, 'helper-runner.mjs')], { cwd: repo, encoding: 'utf8' });
    expect(b.status, b.stderr).toBe(0);
    chmodSync(join(app, 'helper-runner.mjs'), 0o644);
    const r = sandboxed([process.execPath, '/tmp/app/helper-runner.mjs', '/tmp/app/web.json']);
    expect(r.stderr).toBe('');
    const out = JSON.parse(r.stdout) as { fellBack: string | null; helperError: string | null; helperBase: string; helperDirs: number; markerMatches: boolean; chains: number; expectedChains: number };
    expect(out).toEqual({ fellBack: null, helperError: null, helperBase: '/tmp/runtime', helperDirs: 1, markerMatches: true, chains: out.expectedChains, expectedChains: out.expectedChains });
    expect(inNs(['nft', 'list', 'tables']).stdout).toBe('table inet secgroup\n');
    // the full apply as the agent sends it: the netlink batch through secgroup-nftload (its own helper shell and directory), not nft -f
    const n = spawnSync('bash', [join(repo, 'scripts/build-native.sh'), app], { encoding: 'utf8' });
    expect(n.status, n.stderr).toBe(0);
    expect(inNs(['nft', 'delete', 'table', 'inet', 'secgroup']).status).toBe(0);
    const viaLoader = sandboxed([process.execPath, '/tmp/app/helper-runner.mjs', '/tmp/app/web.json', '/tmp/app/secgroup-nftload']);
    expect(viaLoader.stderr).toBe('');
    expect(JSON.parse(viaLoader.stdout)).toEqual({ ...out, helperDirs: 2 });
    expect(inNs(['nft', 'list', 'tables']).stdout).toBe('table inet secgroup\n');
  });

  it("the drift monitor's listener (secgroup-nftwatch) subscribes with the unit's socket families, syscalls and capability, and reports our table's changes", () => {
    const b = spawnSync('bash', [join(repo, 'scripts/build-native.sh'), app], { encoding: 'utf8' });
    expect(b.status, b.stderr).toBe(0);
    // its stdin ends with `sleep`: then it exits (as when the agent goes away)
    const r = sandboxed(['sh', '-c', 'sleep 3 | /tmp/app/secgroup-nftwatch secgroup & sleep 1; nft add table inet secgroup; nft delete table inet secgroup; wait']);
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    expect(r.stdout).toMatch(/^ready\nevent new table secgroup 1\ngen \d+ \d+ nft\nevent del table secgroup 1\ngen \d+ \d+ nft\n$/);
  });

  it('the agent loads its memory-trim addon (secgroup-memtrim.node) and gives free C heap back under the unit\'s syscall filter and mounts', () => {
    const b = spawnSync('bash', [join(repo, 'scripts/build-native.sh'), app], { encoding: 'utf8' });
    expect(b.status, b.stderr).toBe(0);
    // a few MB malloc'd in blocks under the mmap threshold, one kept above them, the rest freed: the trim has pages to give back
    const script = [
      "const m = { exports: {} }; process.dlopen(m, '/tmp/app/secgroup-memtrim.node');",
      'let bufs = []; for (let i = 0; i < 600; i++) bufs.push(Buffer.allocUnsafeSlow(16384).fill(1));',
      'const pin = Buffer.allocUnsafeSlow(16384); bufs = null; globalThis.gc();',
      'const kb = () => Number(/RssAnon:\\s+(\\d+)/.exec(require("fs").readFileSync("/proc/self/status", "utf8"))[1]);',
      // the buffers' memory is freed by V8's array buffer sweeper, which may run on another thread after gc(): trim once it is done
      'setTimeout(() => { globalThis.gc(); const before = kb(); const released = m.exports.trim(); const after = kb();',
      'console.log(JSON.stringify({ released, freedKb: before - after, pin: pin.length })); }, 200);',
    ].join('\n');
    const r = sandboxed([process.execPath, '--expose-gc', '-e', script]);
    expect(r.stderr).toBe('');
    const out = JSON.parse(r.stdout) as { released: boolean; freedKb: number; pin: number };
    expect(out.released).toBe(true);
    expect(out.freedKb).toBeGreaterThan(1024);
  });

  it('without CAP_NET_ADMIN nft is refused (the capability is what makes it work)', () => {
    const r = sandboxed(['nft', 'add', 'table', 'inet', 'secgroup'], { caps: 'none' });
    expect(r.status).not.toBe(0);
    expect(r.stderr).toMatch(/Operation not permitted/);
    expect(inNs(['nft', 'list', 'tables']).stdout).toBe('');
  });

  it('ss lists another user\'s listening socket with its uid but, lacking CAP_SYS_PTRACE, not its process', () => {
    const sel = ['src', `${LISTEN.v4}:${LISTEN.port}`];
    const plain = sandboxed(['ss', '-Hltn', ...sel]);
    expect(plain.stdout).toContain(`${LISTEN.v4}:${LISTEN.port}`);
    expect(sandboxed(['ss', '-Hltne', ...sel]).stdout).toContain(`uid:${OTHER_UID}`);
    const withP = sandboxed(['ss', '-Hltnp', ...sel]);
    expect(withP.stdout).toContain(`${LISTEN.v4}:${LISTEN.port}`);
    expect(withP.stdout).not.toContain('users:');
    // control: root with all capabilities, outside the sandbox, sees the process. By its comm, which is not
    // "node" on every version: Node 24 names its main thread (and so the process) "MainThread".
    const comm = readFileSync(`/proc/${listener!.pid}/comm`, 'utf8').trim();
    expect(inNs(['ss', '-Hltnp', ...sel]).stdout).toContain(`users:(("${comm}",pid=${listener!.pid},`);
  });

  it('the process-names drop-in of systemd/README.md works, and needs both of its capabilities', () => {
    const sel = ['src', `${LISTEN.v4}:${LISTEN.port}`];
    const named = (extra: string) => sandboxed(['ss', '-Hltnp', ...sel], { caps: `${caps},${extra}` }).stdout.includes('users:((');
    expect(named('sys_ptrace,dac_read_search')).toBe(true);
    expect(named('sys_ptrace')).toBe(false); // /proc/PID/fd of another user: 0500
    expect(named('dac_read_search')).toBe(false); // ptrace access check for another uid
  });
});
