/**
 * `secgroup render | validate | explain`: exit codes (0 ok, 1 failure, 2
 * invalid input), what goes to stdout and what to stderr, and the seed's
 * question: is TCP 80 open to the Internet?
 */
import { readFileSync } from 'node:fs';
import { mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { VERSION } from '../../src/lib/version.js';
import { ROOT, runCli, spawnCli } from '../helpers/cli.js';

const WEB = join(ROOT, 'examples/web.json');
const HTTP_FROM_INTERNET = 'ingress tcp 203.0.113.7:40000 -> 198.18.0.10:80';

let dir: string;
const file = async (name: string, content: unknown) => {
  const path = join(dir, name);
  await writeFile(path, typeof content === 'string' ? content : JSON.stringify(content));
  return path;
};

/** A policy with three problems in different places. */
const INVALID = {
  revision: 1,
  instance: { id: 'ecs-1', addresses: ['198.18.0.300'] },
  security_groups: [
    {
      id: 'sg',
      rules: [
        { id: 'r0', direction: 'ingress', protocol: 'tcp', multiport: '70000' },
        { id: 'r1', direction: 'ingress', remote_group_id: 'sg-missing' },
      ],
    },
  ],
};

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'secgroup-cli-'));
});

describe('secgroup render', () => {
  it('prints the nft script on stdout and exits 0', async () => {
    const r = await runCli(['render', WEB]);
    expect(r).toEqual({ code: 0, stdout: readFileSync(join(ROOT, 'test/golden/web.nft'), 'utf8'), stderr: '' });
  });

  it('reads YAML', async () => {
    const r = await runCli(['render', join(ROOT, 'examples/ipv6.yaml')]);
    expect(r.code).toBe(0);
    expect(r.stdout).toBe(readFileSync(join(ROOT, 'test/golden/ipv6.nft'), 'utf8'));
  });

  it('prints libnftables JSON with --format json, and uses --table', async () => {
    const r = await runCli(['render', WEB, '--format', 'json', '--table', 'sg_test']);
    expect(r.code).toBe(0);
    const json = JSON.parse(r.stdout) as { nftables: { add?: { table?: { name: string } } }[] };
    expect(json.nftables[0]).toEqual({ add: { table: { family: 'inet', name: 'sg_test' } } });
  });

  it('--flow-mark-mask: another field of the conntrack mark, 0 for none; a mask that cannot hold it is exit 2', async () => {
    const byte = await runCli(['render', WEB, '--flow-mark-mask', '0x00ff0000']);
    expect(byte.code).toBe(0);
    // the first apply of an epoch: nothing marked yet (the field kept at 0)
    expect(byte.stdout).toContain('ct mark set ct mark and 0xff00ffff or 0x00000000 accept');
    const off = await runCli(['render', WEB, '--flow-mark-mask', '0']);
    expect(off.code).toBe(0);
    expect(off.stdout).not.toContain('flow_');
    expect(off.stdout).toContain('counter name "c_46796df6a83823d96e18" accept comment "sg-web/r-http"');
    const bad = await runCli(['render', WEB, '--flow-mark-mask', '0xf0f0f0f0']);
    expect(bad).toEqual({ code: 2, stdout: '', stderr: 'error: --flow-mark-mask "0xf0f0f0f0": 0xf0f0f0f0 is not one run of contiguous bits, e.g. 0xffff0000\n' });
  });

  it('invalid policy: exit 2, every problem on stderr, nothing on stdout', async () => {
    const r = await runCli(['render', await file('invalid.json', INVALID)]);
    expect(r.code).toBe(2);
    expect(r.stdout).toBe('');
    expect(r.stderr).toBe(
      'error: 3 problems in the policy:\n' +
        '  instance.addresses[0]: "198.18.0.300" is not an IP address\n' +
        '  security_groups[0].rules[0].multiport: "70000" is not a port (1-65535)\n' +
        '  security_groups[0].rules[1].remote_group_id: rule "r1" references group "sg-missing", which has no entry in group_members\n',
    );
  });

  it('a file that is not JSON: exit 2 with the parser position', async () => {
    const r = await runCli(['render', await file('broken.json', '{"revision": 1,')]);
    expect(r.code).toBe(2);
    expect(r.stdout).toBe('');
    expect(r.stderr).toMatch(/^error: .*broken\.json is not valid JSON: /);
  });

  it('a missing file: exit 1', async () => {
    const r = await runCli(['render', join(dir, 'nope.json')]);
    expect(r.code).toBe(1);
    expect(r.stdout).toBe('');
    expect(r.stderr).toMatch(/^error: cannot read policy file .*nope\.json/);
  });

  it('platform flags change the platform rules', async () => {
    const r = await runCli(['render', WEB, '--no-dhcp', '--no-nd', '--no-loopback', '--failsafe-ingress', 'tcp:22', '--controller', '198.18.1.1:8443']);
    expect(r.code).toBe(0);
    expect(r.stdout).not.toMatch(/DHCP|neighbour|loopback/);
    expect(r.stdout).toContain('meta l4proto 6 th dport 22 accept comment "platform: failsafe ingress"');
    expect(r.stdout).toContain('ip daddr { 198.18.1.1 } tcp dport 8443 accept comment "platform: controller channel"');
  });

  it.each([
    [['--table', 'bad-name'], /--table "bad-name": a table name is a letter followed by letters, digits or "_"/],
    [['--controller', 'controller.example:8443'], /--controller "controller.example:8443": expected ADDRESS:PORT/],
    [['--controller', '198.18.1.1:0'], /--controller "198.18.1.1:0": expected ADDRESS:PORT/],
    [['--failsafe-ingress', 'ssh'], /"ssh" is not "tcp:PORT", "udp:PORT", "sctp:PORT" or "tcp:FIRST-LAST"/],
    [['--format', 'yaml'], /argument 'yaml' is invalid. Allowed choices are nft, json/],
  ])('bad flags %j: exit 2 with the reason', async (flags, message) => {
    const r = await runCli(['render', WEB, ...flags]);
    expect(r.code).toBe(2);
    expect(r.stdout).toBe('');
    expect(r.stderr).toMatch(message);
  });
});

describe('secgroup validate', () => {
  it('valid: exit 0 with a summary', async () => {
    expect(await runCli(['validate', WEB])).toEqual({ code: 0, stdout: `${WEB}: valid (revision 1, 2 security groups, 5 rules)\n`, stderr: '' });
  });

  it('invalid: exit 2 with every problem', async () => {
    const r = await runCli(['validate', await file('invalid2.json', INVALID)]);
    expect(r.code).toBe(2);
    expect(r.stdout).toBe('');
    expect(r.stderr.split('\n').filter((l) => l.startsWith('  '))).toHaveLength(3);
  });
});

describe('secgroup explain', () => {
  it('answers the seed\'s question: TCP 80 is open to the Internet, by rule r-http', async () => {
    const r = await runCli(['explain', WEB, '--packet', HTTP_FROM_INTERNET]);
    expect(r).toEqual({
      code: 0,
      stderr: '',
      stdout:
        'packet:  ingress tcp 203.0.113.7:40000 -> 198.18.0.10:80 (first packet of a new connection)\n' +
        'verdict: ACCEPT\n' +
        'because: rule r-http (priority 1, allow) of security group sg-web (#1 in association order)\n' +
        'rule:    ingress allow IPv4 tcp 80 from 0.0.0.0/0\n',
    });
  });

  it('--json gives the same answer as data', async () => {
    const r = await runCli(['explain', WEB, '--packet', HTTP_FROM_INTERNET, '--json']);
    expect(r.code).toBe(0);
    expect(JSON.parse(r.stdout)).toEqual({
      packet: { direction: 'ingress', family: 4, protocol: 6, src: '203.0.113.7', dst: '198.18.0.10', sport: 40000, dport: 80, ct: 'new' },
      verdict: 'accept',
      reason: { kind: 'rule', groupId: 'sg-web', groupIndex: 0, ruleId: 'r-http', priority: 1, action: 'allow' },
      explanation: 'rule r-http (priority 1, allow) of security group sg-web (#1 in association order)',
      rule: 'ingress allow IPv4 tcp 80 from 0.0.0.0/0',
    });
  });

  it('a dropped packet says no rule matched and which groups were checked', async () => {
    const r = await runCli(['explain', WEB, '--packet', 'ingress tcp 203.0.113.7:40000 -> 198.18.0.10:22']);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain('verdict: DROP\nbecause: no rule matched: default drop\n');
    expect(r.stdout).toContain('checked: sg-web (1 ingress rules), default (2 ingress rules)\n');
  });

  it('--state, --reply and --iface describe the packet further', async () => {
    const reply = await runCli(['explain', WEB, '--packet', 'ingress tcp 203.0.113.7:443 -> 198.18.0.10:40000', '--state', 'established', '--reply']);
    expect(reply.stdout).toContain('(ct state established, reply direction)');
    expect(reply.stdout).toContain('verdict: ACCEPT\nbecause: stateful: reply packet of a tracked connection (always allowed)');
    const lo = await runCli(['explain', WEB, '--packet', 'ingress tcp 198.18.0.10:1 -> 198.18.0.10:22', '--iface', 'lo', '--json']);
    expect(JSON.parse(lo.stdout)).toMatchObject({ verdict: 'accept', reason: { kind: 'platform', name: 'loopback' } });
    const noLo = await runCli(['explain', WEB, '--packet', 'ingress tcp 198.18.0.10:1 -> 198.18.0.10:22', '--iface', 'lo', '--no-loopback', '--json']);
    expect(JSON.parse(noLo.stdout)).toMatchObject({ verdict: 'accept', reason: { kind: 'rule', ruleId: 'default-in-v4' } });
    const failsafe = await runCli(['explain', WEB, '--packet', 'ingress tcp 203.0.113.7:1 -> 198.18.0.10:22', '--failsafe-ingress', 'tcp:22', '--json']);
    expect(JSON.parse(failsafe.stdout)).toMatchObject({ verdict: 'accept', reason: { kind: 'platform', name: 'failsafe' } });
  });

  it.each([
    ['inbound tcp 203.0.113.7 -> 198.18.0.10:80', 'a packet starts with "ingress" or "egress", not "inbound"'],
    ['ingress tcp 203.0.113.7 -> 198.18.0.10', 'tcp needs a destination port (address:port)'],
    ['ingress tcp 203.0.113.7 198.18.0.10:80', 'expected "->" between source and destination'],
    ['ingress http 203.0.113.7 -> 198.18.0.10:80', 'unknown protocol "http": use tcp, udp, sctp, icmp, icmpv6 or "proto N"'],
    ['ingress tcp [2001:db8::7]:1 -> fd00:5ec::10:80', 'tcp needs a destination port (address:port, for IPv6 [address]:port)'],
    ['ingress tcp 203.0.113.7 -> fd00:5ec::10:80', 'source and destination must both be IPv4 or both IPv6'],
    ['ingress tcp 203.0.113.7 -> 198.18.0.10:http', 'destination port "http" is not 0-65535'],
    ['ingress tcp 203.0.113.7 -> [fd00:5ec::10]:80', 'source and destination must both be IPv4 or both IPv6'],
    ['ingress tcp 203.0.113.7 -> 198.18.0.10:70000', 'destination port "70000" is not 0-65535'],
    ['ingress icmp 203.0.113.7:1 -> 198.18.0.10', 'ports are only for tcp, udp and sctp'],
    ['ingress icmp 203.0.113.7 -> 198.18.0.10 type 300', 'unexpected "type" 300: after the addresses only "type N" and "code N" (ICMP) may follow'],
    ['ingress udp 203.0.113.7 -> 198.18.0.10:53 type 3', '"type" is only for icmp and icmpv6'],
    ['ingress icmpv6 203.0.113.7 -> 198.18.0.10', 'icmpv6 is IPv6; use icmp for IPv4 addresses'],
    ['ingress proto 300 203.0.113.7 -> 198.18.0.10', '"proto" needs a number 0-255, not "300"'],
  ])('bad --packet %j: exit 2, "%s"', async (packet, message) => {
    const r = await runCli(['explain', WEB, '--packet', packet]);
    expect(r).toEqual({ code: 2, stdout: '', stderr: `error: --packet: ${message}\n` });
  });

  it('without --packet, or with a bad --state: exit 2 with usage help', async () => {
    const missing = await runCli(['explain', WEB]);
    expect(missing.code).toBe(2);
    expect(missing.stderr).toMatch(/required option '--packet <packet>' not specified/);
    const state = await runCli(['explain', WEB, '--packet', HTTP_FROM_INTERNET, '--state', 'open']);
    expect(state.code).toBe(2);
    expect(state.stderr).toMatch(/argument 'open' is invalid/);
  });

  it('an invalid policy is reported the same way as by render', async () => {
    const r = await runCli(['explain', await file('invalid3.json', INVALID), '--packet', HTTP_FROM_INTERNET]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/^error: 3 problems in the policy:\n/);
  });
});

describe('the program', () => {
  it('--version prints the version of package.json', async () => {
    const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { version: string };
    expect(VERSION).toBe(pkg.version);
    expect(await runCli(['--version'])).toEqual({ code: 0, stdout: `${VERSION}\n`, stderr: '' });
  });

  it('an unknown command: exit 2', async () => {
    const r = await runCli(['rendr', WEB]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/unknown command 'rendr'/);
  });

  it('the real entry point maps the same exit codes (child process)', async () => {
    const [ok, invalid, badPacket] = await Promise.all([
      spawnCli(['explain', 'examples/web.json', '--packet', HTTP_FROM_INTERNET]),
      spawnCli(['render', await file('invalid4.json', INVALID)]),
      spawnCli(['explain', 'examples/web.json', '--packet', 'ingress tcp nowhere -> 198.18.0.10:80']),
    ]);
    expect(ok.code).toBe(0);
    expect(ok.stdout).toContain('verdict: ACCEPT');
    expect(invalid).toMatchObject({ code: 2, stdout: '' });
    expect(invalid.stderr).toMatch(/^error: 3 problems in the policy:/);
    expect(badPacket).toMatchObject({ code: 2, stdout: '' });
    expect(badPacket.stderr).toBe('error: --packet: source "nowhere" is not an address (IPv6 with a port: [addr]:port)\n');
  }, 30_000);
});
