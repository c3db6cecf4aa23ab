// The .deb packages under a real systemd 252 as PID 1 (docker/systemd-image.sh),
// as on a Debian VM without Node.js: a "vm" container gets secgroup-agent, a
// "ctl" container secgroup-controller (and serves as the client for
// connection checks), both on an internal network 198.19.253.0/24 +
// fd00:5ec:253::/64. The test process calls the controller's API over IPv6
// through the bridge (the only address the root namespace has there).
//
// Needs dist/deb/*.deb (`npm run package`); skips with the reason otherwise.
// Checks: install enables and starts the agent, which waits without a token
// and says so at warning priority in the journal; with a token, `systemctl
// start` returns with the table in place and the policy is enforced on real
// connections; kill -9 and SIGSTOP (watchdog) are restarted with the table
// present throughout; a package upgrade keeps enforcement; a restart of the
// VM with the controller down comes back enforcing; purge leaves nothing.
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { engineUnavailableReason, removeLabelled, rootRuleset, until } from './docker-env.js';

const repo = fileURLToPath(new URL('../..', import.meta.url));
const debDir = join(repo, 'dist/deb');
const N = 253;
const run = `sgsd-${process.pid}`.slice(0, 15);
const LABEL = 'org.secgroup.test=systemd-deb';
const IP = { ctl: `198.19.${N}.10`, vm: `198.19.${N}.11` };
const IP6 = { ctl: `fd00:5ec:${N}::10`, vm: `fd00:5ec:${N}::11` };
const ADMIN = 'systemd-test-admin-token-0123456789';
const PROJECT = 'sys';
const VM = `${run}-vm`;
const CTL = `${run}-ctl`;

function debs(): { agent: string; controller: string } | undefined {
  if (!existsSync(debDir)) return undefined;
  const files = readdirSync(debDir);
  const agent = files.find((f) => /^secgroup-agent_.*_amd64\.deb$/.test(f));
  const controller = files.find((f) => /^secgroup-controller_.*_amd64\.deb$/.test(f));
  return agent && controller ? { agent: join(debDir, agent), controller: join(debDir, controller) } : undefined;
}

const unavailable = engineUnavailableReason() ?? (debs() ? undefined : 'no dist/deb/secgroup-{agent,controller}_*.deb (run npm run package)');


async function docker(...args: string[]): Promise<string> {
  return (await execa('docker', args)).stdout;
}

/** bash -c in a container; never throws, the exit code is returned */
async function sh(container: string, script: string): Promise<{ code: number; out: string }> {
  const r = await execa('docker', ['exec', container, 'bash', '-c', script], { reject: false, all: true });
  return { code: r.exitCode ?? -1, out: r.all ?? '' };
}

async function shOk(container: string, script: string): Promise<string> {
  const r = await sh(container, script);
  if (r.code !== 0) throw new Error(`${container}: ${script}: exit ${r.code}\n${r.out}`);
  return r.out;
}

/** A systemd container: PID 1 is systemd (see docker/systemd-image.sh for the flags). */
async function boot(name: string, ip: string, ip6: string, image: string): Promise<void> {
  await docker(
    'run', '-d', '-t', '--name', name, '--hostname', name.slice(run.length + 1), '--label', LABEL,
    '--network', run, '--ip', ip, '--ip6', ip6,
    '--cgroupns', 'private', '--cap-add', 'ALL', '--cap-drop', 'SYS_RESOURCE',
    '--security-opt', 'seccomp=unconfined', '--security-opt', 'apparmor=unconfined',
    '--tmpfs', '/run', '--tmpfs', '/run/lock', image,
  );
  await booted(name);
}

async function booted(name: string): Promise<void> {
  await until(`${name} booted`, async () => {
    const r = await sh(name, 'systemctl is-system-running');
    return ['running', 'degraded'].includes(r.out.trim()) ? true : undefined;
  }, 60_000);
}

/** A TCP connect from the ctl container to the VM: true when it connects within 2 s. */
async function connects(port: number): Promise<boolean> {
  const r = await sh(CTL, `timeout 2 bash -c '</dev/tcp/${IP.vm}/${port}'`);
  return r.code === 0;
}

/** Listeners on :80 and :8080 in the VM (systemd-socket-activate, no Node.js there). */
async function listen(): Promise<void> {
  for (const p of [80, 8080]) await sh(VM, `systemctl is-active -q listen${p} || { systemctl reset-failed listen${p} 2>/dev/null; systemd-run -q --unit listen${p} systemd-socket-activate -l ${p} -a --inetd /bin/echo hello; }`);
  // loopback is always accepted by the agent's ruleset: checks the listeners only
  await until('listeners', async () => ((await sh(VM, `timeout 2 bash -c '</dev/tcp/127.0.0.1/80' && timeout 2 bash -c '</dev/tcp/127.0.0.1/8080'`)).code === 0 ? true : undefined));
}

type Json = Record<string, unknown>;
async function api(method: string, path: string, body?: Json): Promise<{ status: number; body: Json }> {
  const r = await fetch(`http://[${IP6.ctl}]:8443/v3/${PROJECT}${path}`, {
    method,
    headers: { 'X-Auth-Token': ADMIN, ...(body ? { 'Content-Type': 'application/json' } : {}) },
    ...(body ? { body: JSON.stringify(body) } : {}),
    signal: AbortSignal.timeout(5000),
  });
  const t = await r.text();
  return { status: r.status, body: t ? (JSON.parse(t) as Json) : {} };
}

async function mainPid(): Promise<number> {
  return Number((await shOk(VM, 'systemctl show -p MainPID --value secgroup-agent')).trim());
}
async function restarts(): Promise<number> {
  return Number((await shOk(VM, 'systemctl show -p NRestarts --value secgroup-agent')).trim());
}

/** Starts a loop in the VM that notes every 100 ms whether our table is there; stop() returns the misses. */
async function watchTable(name: string): Promise<{ stop(): Promise<{ checks: number; missing: number }> }> {
  await shOk(VM, `rm -f /tmp/${name}.*; (while [ ! -e /tmp/${name}.stop ]; do if nft list table inet secgroup >/dev/null 2>&1; then echo y; else echo n; fi >>/tmp/${name}.log; sleep 0.1; done) >/dev/null 2>&1 &`);
  return {
    async stop() {
      await shOk(VM, `touch /tmp/${name}.stop; sleep 0.3`);
      const log = (await shOk(VM, `cat /tmp/${name}.log`)).split('\n').filter(Boolean);
      return { checks: log.length, missing: log.filter((l) => l === 'n').length };
    },
  };
}

describe.skipIf(unavailable !== undefined)(`the .deb packages under systemd as PID 1${unavailable ? ` (SKIPPED: ${unavailable})` : ''}`, () => {
  let rulesetBefore: string;
  let token = '';
  let upgradeDeb = '';
  let work = '';
  const pkgs = debs()!;

  beforeAll(async () => {
    rulesetBefore = rootRuleset();
    removeLabelled(LABEL);
    const image = execFileSync('bash', [join(repo, 'docker/systemd-image.sh')], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] }).trim().split('\n').pop()!;
    // the "next version": the same package with a higher version number (dpkg-deb, a few seconds)
    work = mkdtempSync(join(tmpdir(), 'sgsd-'));
    execFileSync('dpkg-deb', ['-R', pkgs.agent, join(work, 'pkg')]);
    execFileSync('sed', ['-i', 's/^Version: \\(.*\\)$/Version: \\1+systest1/', join(work, 'pkg/DEBIAN/control')]);
    upgradeDeb = join(work, 'secgroup-agent_upgrade_amd64.deb');
    execFileSync('dpkg-deb', ['--root-owner-group', '-Zgzip', '-z1', '-b', join(work, 'pkg'), upgradeDeb], { stdio: 'ignore' });
    await docker(
      'network', 'create', '--internal', '--ipv6', '--label', LABEL,
      '--subnet', `198.19.${N}.0/24`, '--subnet', `fd00:5ec:${N}::/64`,
      '-o', 'com.docker.network.bridge.inhibit_ipv4=true', '-o', `com.docker.network.bridge.name=${run}`, run,
    );
    await Promise.all([boot(CTL, IP.ctl, IP6.ctl, image), boot(VM, IP.vm, IP6.vm, image)]);
    await docker('cp', pkgs.controller, `${CTL}:/tmp/controller.deb`);
    await docker('cp', pkgs.agent, `${VM}:/tmp/agent.deb`);
    await docker('cp', upgradeDeb, `${VM}:/tmp/agent-upgrade.deb`);

    // the controller from its package, configured with an API token
    await shOk(CTL, 'dpkg -i /tmp/controller.deb');
    const config = ['listen:', '  host: "::"', '  port: 8443', 'api:', '  tokens:', `    - { name: systemd-test, token: ${ADMIN} }`, 'log:', '  level: info', ''].join('\n');
    await shOk(CTL, `cat >/etc/secgroup/controller.yaml <<'EOF'\n${config}EOF\nsystemctl restart secgroup-controller`);
    await until('controller API', async () => ((await api('GET', '/vpc/security-groups')).status === 200 ? true : undefined));
    expect((await api('POST', '/vpc/security-groups', { security_group: { id: 'sg-web', name: 'web' } })).status).toBe(201);
    const r = await api('POST', '/vpc/security-group-rules', {
      security_group_rule: { security_group_id: 'sg-web', direction: 'ingress', ethertype: 'IPv4', protocol: 'tcp', multiport: '80', remote_ip_prefix: '0.0.0.0/0' },
    });
    expect(r.status, JSON.stringify(r.body)).toBe(201);
    const inst = await api('POST', '/instances', { instance: { id: 'vm-1', name: 'vm-1', addresses: [IP.vm], security_groups: ['sg-web'] } });
    expect(inst.status, JSON.stringify(inst.body)).toBe(201);
    token = inst.body.token as string;
  }, 240_000);

  afterAll(async () => {
    removeLabelled(LABEL);
    if (work) rmSync(work, { recursive: true, force: true });
    expect(rootRuleset()).toBe(rulesetBefore);
  });

  it('dpkg -i installs, enables and starts the agent, which waits without a token and logs that at warning priority', async () => {
    await shOk(VM, 'dpkg -i /tmp/agent.deb');
    expect((await sh(VM, 'systemctl is-enabled secgroup-agent')).out.trim()).toBe('enabled');
    expect((await sh(VM, 'systemctl is-active secgroup-agent')).out.trim()).toBe('active');
    expect(await shOk(VM, 'systemctl show -p StatusText --value secgroup-agent')).toContain('no controller token');
    expect(await shOk(VM, 'stat -c %a /etc/secgroup/agent.token')).toBe('600');
    expect((await sh(VM, 'command -v node')).code).not.toBe(0);
    // warnings and errors carry their priority (<N> prefix): -p warning finds them, and only them
    const warn = await until('a warning in the journal', async () => {
      const out = await shOk(VM, 'journalctl -q -p warning -u secgroup-agent -o cat --no-pager | grep "^{" || true');
      return out.includes('no controller token yet') ? out : undefined;
    });
    const levels = warn.split('\n').filter(Boolean).map((l) => (JSON.parse(l) as { level: number }).level);
    expect(levels.length).toBeGreaterThan(0);
    expect(levels.every((l) => l >= 40)).toBe(true);
    const info = await shOk(VM, 'journalctl -q -p info..info -u secgroup-agent -o cat --no-pager | grep "^{" || true');
    expect(info).toContain('"event":"start"');
  });

  it('with its token, `systemctl start` returns with the table in place, and the policy is enforced', async () => {
    const yaml = ['instance_id: vm-1', 'controller:', `  url: ws://${IP.ctl}:8443`, '  token_file: /run/credentials/secgroup-agent.service/token', 'platform:', '  failsafe_ingress: []', ''].join('\n');
    await shOk(VM, `cat >/etc/secgroup/agent.yaml <<'EOF'\n${yaml}EOF\nprintf '%s' '${token}' >/etc/secgroup/agent.token`);
    // first start with a token and no last known good policy: READY=1 follows the controller's policy
    await shOk(VM, 'systemctl stop secgroup-agent; nft delete table inet secgroup 2>/dev/null; systemctl start secgroup-agent');
    expect((await sh(VM, 'nft list table inet secgroup')).code).toBe(0);
    expect(await shOk(VM, 'systemctl show -p StatusText --value secgroup-agent')).toMatch(/^enforcing revision \d+/);
    // again with the last known good policy on disk
    await shOk(VM, 'systemctl stop secgroup-agent; nft delete table inet secgroup');
    await shOk(VM, 'systemctl start secgroup-agent');
    expect((await sh(VM, 'nft list table inet secgroup')).code).toBe(0);
    await listen();
    expect(await connects(80)).toBe(true);
    expect(await connects(8080)).toBe(false);
    // the drift monitor follows with the packaged listener, under the unit's sandbox (no fallback to nft monitor)
    const children = await shOk(VM, 'P=$(systemctl show -p MainPID --value secgroup-agent); for c in $(cat /proc/$P/task/*/children); do cat /proc/$c/comm; done');
    expect(children).toContain('secgroup-nftwat'); // comm: 15 characters
    expect(await shOk(VM, 'journalctl -q -u secgroup-agent -o cat --no-pager | grep -c drift_listener_unavailable || true')).toBe('0');
    // the flow mark is armed by the packaged secgroup-ctmark under the unit's sandbox (this image has no conntrack(8))
    expect((await sh(VM, 'command -v conntrack')).code).not.toBe(0);
    await until('flow mark armed', async () => (/^flow mark: armed, generation \d+ /m.test((await sh(VM, 'secgroup status')).out) ? true : undefined));
    expect(await shOk(VM, 'journalctl -q -u secgroup-agent -o cat --no-pager | grep -c flow_mark_unarmed || true')).toBe('0');
    // nft's scripts and the full applies' netlink batches go through the unit's runtime directory, a private tmpfs
    // (RuntimeDirectory=secgroup): one helper shell's directory each
    const runtime = await shOk(VM, 'P=$(systemctl show -p MainPID --value secgroup-agent); stat -c "%a %F" /run/secgroup; stat -f -c %T /run/secgroup; ls /run/secgroup | grep -c "^secgroup-nft-$P-"');
    expect(runtime.split('\n')).toEqual(['700 directory', 'tmpfs', '2']);
    // the full apply went to the kernel through the packaged secgroup-nftload, under the unit's sandbox (no fallback to nft -f)
    expect(await shOk(VM, 'journalctl -q -u secgroup-agent -o cat --no-pager | grep -c nft_loader_fallback || true')).toBe('0');
  });

  it('kill -9 of the agent: systemd restarts it, and the table is there throughout', async () => {
    const [pid, n] = [await mainPid(), await restarts()];
    const w = await watchTable('kill');
    await shOk(VM, `kill -9 ${pid}`);
    await until('agent restarted', async () => ((await restarts()) > n && (await sh(VM, 'systemctl is-active secgroup-agent')).out.trim() === 'active' ? true : undefined));
    const seen = await w.stop();
    expect(seen.checks).toBeGreaterThan(10);
    expect(seen.missing).toBe(0);
    expect(await mainPid()).not.toBe(pid);
    expect(await connects(80)).toBe(true);
    expect(await connects(8080)).toBe(false);
  });

  it('a frozen agent (SIGSTOP) is killed by the watchdog and restarted', async () => {
    // a short watchdog for the test; the unit's own is 30 s
    await shOk(VM, 'mkdir -p /etc/systemd/system/secgroup-agent.service.d && printf "[Service]\\nWatchdogSec=4s\\n" >/etc/systemd/system/secgroup-agent.service.d/test-watchdog.conf && systemctl daemon-reload && systemctl restart secgroup-agent');
    const [pid, n] = [await mainPid(), await restarts()];
    const w = await watchTable('stop');
    await shOk(VM, `kill -STOP ${pid}`);
    await until('watchdog restart', async () => ((await restarts()) > n && (await sh(VM, 'systemctl is-active secgroup-agent')).out.trim() === 'active' ? true : undefined), 60_000);
    expect(await mainPid()).not.toBe(pid);
    expect(await shOk(VM, 'journalctl -q -u secgroup-agent --no-pager -o cat | grep -i watchdog || true')).toMatch(/[Ww]atchdog timeout/);
    expect((await w.stop()).missing).toBe(0);
    await shOk(VM, 'rm -r /etc/systemd/system/secgroup-agent.service.d && systemctl daemon-reload && systemctl restart secgroup-agent');
  });

  it('a package upgrade keeps the table (and enforcement) in place', async () => {
    const pid = await mainPid();
    const w = await watchTable('upgrade');
    await shOk(VM, 'dpkg -i /tmp/agent-upgrade.deb');
    const seen = await w.stop();
    expect(seen.missing).toBe(0);
    expect(await shOk(VM, "dpkg-query -W -f '${Version}' secgroup-agent")).toMatch(/\+systest1$/);
    // try-restart: the running agent was restarted onto the new executable
    expect(await mainPid()).not.toBe(pid);
    expect((await sh(VM, 'systemctl is-active secgroup-agent')).out.trim()).toBe('active');
    expect(await connects(80)).toBe(true);
    expect(await connects(8080)).toBe(false);
  });

  it('the VM restarted while the controller is down comes back enforcing the last policy', async () => {
    await shOk(CTL, 'systemctl stop secgroup-controller');
    // SIGRTMIN+3: systemd halts; the container (and its network namespace) ends
    await docker('kill', '--signal', 'SIGRTMIN+3', VM);
    await until('vm halted', async () => ((await docker('inspect', '-f', '{{.State.Running}}', VM)).trim() === 'false' ? true : undefined), 60_000);
    await docker('start', VM);
    await booted(VM);
    // Before=network-pre.target + READY=1 after the apply: up means enforcing
    expect((await sh(VM, 'nft list table inet secgroup')).code).toBe(0);
    await listen();
    expect(await connects(80)).toBe(true);
    expect(await connects(8080)).toBe(false);
    await shOk(CTL, 'systemctl start secgroup-controller');
  });

  it('dpkg --purge leaves nothing of ours: files, unit, state, token, table', async () => {
    await shOk(VM, 'dpkg --purge secgroup-agent');
    expect((await sh(VM, 'nft list table inet secgroup')).code).not.toBe(0);
    const left = await sh(VM, 'ls -d /usr/bin/secgroup /usr/lib/secgroup /lib/systemd/system/secgroup-agent.service /etc/secgroup /var/lib/secgroup /var/lib/private/secgroup /etc/systemd/system/multi-user.target.wants/secgroup-agent.service /usr/share/doc/secgroup-agent 2>/dev/null');
    expect(left.out).toBe('');
    expect((await sh(VM, 'systemctl list-unit-files "secgroup*" --no-legend')).out.trim()).toBe('');
    expect((await sh(VM, 'dpkg -s secgroup-agent')).code).not.toBe(0);
    expect(await connects(8080)).toBe(true);
  });
});
