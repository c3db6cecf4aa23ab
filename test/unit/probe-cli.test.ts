import { parsePolicy } from '../../src/policy/schema.js';
import { renderStateText } from '../../src/agent/state-store.js';
import { mkdtemp, rm, writeFile, mkdir } from 'node:fs/promises';
import { createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Command, CommanderError } from 'commander';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { registerPortsCommand, formatPortTable } from '../../src/cli/ports-command.js';
import { buildProgram } from '../../src/cli/program.js';
import { CliExit, type CliIo } from '../../src/cli/io.js';
import { FakeClock } from '../../src/lib/clock.js';
import { FakeSocketSource } from '../../src/probe/fake.js';
import type { Listener } from '../../src/probe/listener.js';
import { portReportSchema, type PortReport } from '../../src/protocol/messages.js';

const LISTENERS: Listener[] = [
  { protocol: 'tcp', family: 4, address: '0.0.0.0', port: 80, process: 'nginx' },
  { protocol: 'tcp', family: 6, address: '::', port: 22, process: 'sshd', dualStack: true },
  { protocol: 'tcp', family: 4, address: '127.0.0.1', port: 5432, process: 'postgres' },
  { protocol: 'udp', family: 4, address: '0.0.0.0', port: 5353, process: 'my "odd", proc' },
];

const POLICY = {
  revision: 42,
  instance: { id: 'ecs-web-1', addresses: ['198.18.0.10'] },
  security_groups: [
    {
      id: 'sg-web',
      rules: [
        { id: 'r-http', direction: 'ingress', protocol: 'tcp', multiport: '80,443', remote_ip_prefix: '0.0.0.0/0' },
        { id: 'r-bad', direction: 'ingress', action: 'deny', protocol: 'tcp', multiport: '80', remote_ip_prefix: '203.0.113.0/24' },
        { id: 'r-ssh', direction: 'ingress', priority: 10, protocol: 'tcp', multiport: '22', remote_address_group_id: 'ag-office' },
      ],
    },
  ],
  address_groups: [{ id: 'ag-office', ip_version: 4, ip_set: ['198.51.100.0/24'] }],
};

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'secgroup-ports-'));
  await writeFile(join(dir, 'policy.json'), JSON.stringify(POLICY));
  await writeFile(join(dir, 'invalid.json'), JSON.stringify({ ...POLICY, revision: -1 }));
  await writeFile(join(dir, 'broken.json'), '{"revision": ');
  await mkdir(join(dir, 'state'));
  // the agent's state document (src/agent/state-store.ts)
  await writeFile(join(dir, 'state', 'policy.json'), renderStateText(parsePolicy({ ...POLICY, revision: 41 }), '2026-01-01T00:00:00.000Z'));
  await mkdir(join(dir, 'empty-state'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function run(args: string[], source = new FakeSocketSource(LISTENERS)) {
  let out = '';
  let err = '';
  const io: CliIo = { out: (s) => void (out += s), err: (s) => void (err += s), env: {} };
  const program = new Command('secgroup').exitOverride().configureOutput({ writeOut: io.out, writeErr: io.err });
  registerPortsCommand(program, io, { source, clock: new FakeClock(Date.UTC(2024, 0, 2, 3, 4, 5)) });
  let code = 0;
  try {
    await program.parseAsync(['ports', ...args], { from: 'user' });
  } catch (e) {
    if (e instanceof CliExit) code = e.exitCode;
    else if (e instanceof CommanderError) code = e.exitCode === 0 ? 0 : 2;
    else throw e;
  }
  return { code, out, err, source };
}

describe('secgroup ports', () => {
  it('prints a table a human reads', async () => {
    const r = await run(['--policy', join(dir, 'policy.json')]);
    expect(r.code).toBe(0);
    expect(r.err).toBe('');
    expect(r.out).toBe(
      [
        `policy:  revision 42 from ${join(dir, 'policy.json')}`,
        'sockets: ss',
        '',
        'PORT  PROTO  STATUS         LISTENING-ON  PROCESS         ALLOWED-BY',
        '22    tcp4   open           *             sshd            sg-web/r-ssh (address group ag-office)',
        '22    tcp6   blocked        *             sshd            -',
        '80    tcp4   open           0.0.0.0       nginx           sg-web/r-http (0.0.0.0/0); denied first: sg-web/r-bad (203.0.113.0/24)',
        '443   tcp4   not-listening  -             -               sg-web/r-http (0.0.0.0/0)',
        '5353  udp4   blocked        0.0.0.0       my "odd", proc  -',
        '5432  tcp4   local-only     127.0.0.1     postgres        -',
        '',
      ].join('\n'),
    );
  });

  it('prints the PortReport as JSON', async () => {
    const r = await run(['--policy', join(dir, 'policy.json'), '--json']);
    expect(r.code).toBe(0);
    const report = portReportSchema.parse(JSON.parse(r.out));
    expect(report).toMatchObject({ revision: 42, source: 'ss', generated_at: '2024-01-02T03:04:05.000Z' });
    expect(report.entries.map((e) => `${e.protocol}/${e.port}/${e.family} ${e.status}`)).toEqual([
      'tcp/22/4 open',
      'tcp/22/6 blocked',
      'tcp/80/4 open',
      'tcp/443/4 not-listening',
      'udp/5353/4 blocked',
      'tcp/5432/4 local-only',
    ]);
  });

  it('reads the policy the agent last applied from the state dir', async () => {
    const r = await run(['--state-dir', join(dir, 'state')]);
    expect(r.code).toBe(0);
    expect(r.out).toContain(`policy:  revision 41, last applied by the agent (${join(dir, 'state', 'policy.json')})`);
    expect(r.out).toMatch(/^80 +tcp4 +open /m);
  });

  it('without an applied policy says so and shows listeners only', async () => {
    const r = await run(['--state-dir', join(dir, 'empty-state'), '--failsafe-ingress', 'tcp:22']);
    expect(r.code).toBe(0);
    expect(r.out).toContain('none applied');
    expect(r.out).toContain('does not exist');
    const statuses = [...r.out.matchAll(/^\d+ +\S+ +(\S+)/gm)].map((m) => m[1]);
    expect(statuses).toEqual(['blocked', 'blocked', 'blocked', 'local-only']);
    const json = await run(['--state-dir', join(dir, 'empty-state'), '--json']);
    expect(JSON.parse(json.out).revision).toBeNull();
    expect(json.err).toContain('none applied');
  });

  it('passes --source to the socket source and reports fallbacks', async () => {
    const r = await run(['--policy', join(dir, 'policy.json'), '--source', 'netstat']);
    expect(r.source.reads).toEqual([{ only: 'netstat' }]);
    expect(r.out).toContain('sockets: netstat');
    const fallback = new FakeSocketSource(LISTENERS, 'proc');
    fallback.read = async () => ({ source: 'proc', listeners: LISTENERS, failed: [{ source: 'ss', error: 'Command failed with ENOENT: ss -Hltunp' }] });
    const f = await run(['--policy', join(dir, 'policy.json')], fallback);
    expect(f.out).toContain('sockets: proc (ss failed: Command failed with ENOENT: ss -Hltunp)');
    expect((await run(['--source', 'lsof'])).code).toBe(2);
  });

  it('counts the failsafe port as allowing', async () => {
    const r = await run(['--policy', join(dir, 'policy.json'), '--failsafe-ingress', 'tcp:22', '--json']);
    const report = JSON.parse(r.out) as PortReport;
    expect(report.entries.find((e) => e.port === 22)).toMatchObject({ family: null, status: 'open', allowed_by: [{ group_id: 'platform', rule_id: 'failsafe:tcp:22' }] });
  });

  it('exits 2 on an invalid or unparsable policy or flag, 1 when sockets cannot be read', async () => {
    const invalid = await run(['--policy', join(dir, 'invalid.json')]);
    expect(invalid.code).toBe(2);
    expect(invalid.out).toBe('');
    expect(invalid.err).toContain('revision');
    expect((await run(['--policy', join(dir, 'broken.json')])).code).toBe(2);
    expect((await run(['--failsafe-ingress', 'tcp:0'])).code).toBe(2);
    const missing = await run(['--policy', join(dir, 'nope.json')]);
    expect(missing.code).toBe(1);
    const noTools = await run(['--policy', join(dir, 'policy.json')], new FakeSocketSource([], 'ss', 'cannot read the listening sockets: ss: ENOENT'));
    expect(noTools).toMatchObject({ code: 1, err: 'error: cannot read the listening sockets: ss: ENOENT\n' });
  });

  it('explains the statuses in --help', async () => {
    const r = await run(['--help']);
    expect(r.code).toBe(0);
    for (const s of ['open', 'blocked', 'local-only', 'not-listening', 'partial shadow', '--source', '--state-dir']) expect(r.out).toContain(s);
  });

  it('formats an empty report', () => {
    expect(formatPortTable({ revision: null, source: 'ss', generated_at: 'x', entries: [] })).toBe('PORT  PROTO  STATUS  LISTENING-ON  PROCESS  ALLOWED-BY\n');
  });
});

describe('secgroup ports through buildProgram, on this host', () => {
  let server: Server;
  let port = 0;
  beforeAll(async () => {
    server = createServer();
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    port = (server.address() as { port: number }).port;
  });
  afterAll(async () => {
    await new Promise<void>((resolve) => server.close(() => resolve()));
  });

  it('reports a listener on 127.0.0.1 as local-only', async () => {
    let out = '';
    const io: CliIo = { out: (s) => void (out += s), err: () => undefined, env: {} };
    await buildProgram(io).parseAsync(['ports', '--policy', join(dir, 'policy.json'), '--source', 'proc', '--json'], { from: 'user' });
    const report = portReportSchema.parse(JSON.parse(out));
    expect(report.source).toBe('proc');
    expect(report.entries.find((e) => e.protocol === 'tcp' && e.port === port)).toMatchObject({ status: 'local-only', listeners: [{ address: '127.0.0.1' }] });
  });
});
