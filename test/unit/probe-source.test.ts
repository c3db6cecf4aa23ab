import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { isSecgroupError } from '../../src/lib/errors.js';
import { FakeProbeHost, FakeSocketSource } from '../../src/probe/fake.js';
import { BINDV6ONLY_PATH, HostSocketSource } from '../../src/probe/source.js';

const fixture = (name: string) => readFileSync(new URL(`../fixtures/probe/${name}`, import.meta.url), 'utf8');

function withProc(host: FakeProbeHost, opts: { v6?: boolean } = {}): FakeProbeHost {
  host.file('/proc/net/tcp', fixture('proc-net-tcp.txt')).file('/proc/net/udp', fixture('proc-net-udp.txt'));
  if (opts.v6 !== false) host.file('/proc/net/tcp6', fixture('proc-net-tcp6.txt')).file('/proc/net/udp6', fixture('proc-net-udp6.txt'));
  return host;
}

describe('HostSocketSource fallback chain', () => {
  it('uses ss when it answers, and runs nothing else', async () => {
    const host = withProc(new FakeProbeHost().command('ss -Hltunp', fixture('ss-ltunp.txt')));
    const r = await new HostSocketSource(host).read();
    expect(r.source).toBe('ss');
    expect(r.failed).toEqual([]);
    expect(r.listeners.find((l) => l.port === 18080)?.process).toBe('my proc');
    expect(host.calls).toEqual(['run ss -Hltunp']);
  });

  it('falls back to netstat when ss is missing, reading bindv6only for `:::` sockets', async () => {
    const host = new FakeProbeHost().command('netstat -lntupW', fixture('netstat-lntupW.txt')).file(BINDV6ONLY_PATH, '1\n');
    const r = await new HostSocketSource(host).read();
    expect(r.source).toBe('netstat');
    expect(r.failed).toEqual([{ source: 'ss', error: 'Command failed with ENOENT: ss -Hltunp' }]);
    expect(r.listeners.find((l) => l.port === 18082)).toMatchObject({ address: '::', dualStack: false });
    expect(host.calls).toEqual(['run ss -Hltunp', 'run netstat -lntupW', `read ${BINDV6ONLY_PATH}`]);
  });

  it('falls back past a tool whose output it cannot read (an old ss, a netstat without -W support)', async () => {
    const host = withProc(
      new FakeProbeHost().command('ss -Hltunp', 'State Recv-Q\n???').command('netstat -lntupW', fixture('netstat-lntu.txt')),
    );
    const r = await new HostSocketSource(host, { littleEndian: true }).read();
    expect(r.source).toBe('proc');
    expect(r.failed.map((f) => f.source)).toEqual(['ss', 'netstat']);
    expect(r.failed[1]?.error).toContain('-W');
    // no bindv6only file: taken as 0, the IPv6 wildcard is dual-stack
    expect(r.listeners.find((l) => l.port === 18082)).toMatchObject({ address: '::', dualStack: true });
    expect(r.listeners).toHaveLength(17); // the capture's 16 and the host's tcp 0.0.0.0:2024
  });

  it('reads /proc/net without the IPv6 files (IPv6 disabled)', async () => {
    const r = await new HostSocketSource(withProc(new FakeProbeHost(), { v6: false }), { littleEndian: true }).read({ only: 'proc' });
    expect(r.listeners.every((l) => l.family === 4)).toBe(true);
    expect(r.listeners.map((l) => l.port)).toContain(18080);
  });

  it('with `only`, tries that source alone', async () => {
    const host = withProc(new FakeProbeHost().command('ss -Hltunp', fixture('ss-ltunp.txt')));
    const r = await new HostSocketSource(host, { littleEndian: true }).read({ only: 'proc' });
    expect(r.source).toBe('proc');
    expect(host.calls.some((c) => c.startsWith('run'))).toBe(false);
    await expect(new HostSocketSource(host).read({ only: 'netstat' })).rejects.toThrow(/netstat: Command failed with ENOENT/);
  });

  it('fails with PROBE_FAILED naming every source when none answers', async () => {
    const host = new FakeProbeHost().command('ss -Hltunp', { error: 'Command failed with exit code 1: ss -Hltunp: Cannot open netlink socket' });
    const e = await new HostSocketSource(host).read().catch((x: unknown) => x);
    expect(isSecgroupError(e, 'PROBE_FAILED')).toBe(true);
    expect((e as Error).message).toBe(
      'cannot read the listening sockets: ss: Command failed with exit code 1: ss -Hltunp: Cannot open netlink socket; ' +
        'netstat: Command failed with ENOENT: netstat -lntupW; proc: /proc/net/tcp does not exist',
    );
  });
});

describe('FakeSocketSource', () => {
  it('answers with copies of its listeners, or fails', async () => {
    const fake = new FakeSocketSource([{ protocol: 'tcp', family: 4, address: '0.0.0.0', port: 22, process: 'sshd' }], 'netstat');
    const r = await fake.read();
    expect(r).toEqual({ source: 'netstat', listeners: fake.listeners, failed: [] });
    expect(r.listeners[0]).not.toBe(fake.listeners[0]);
    expect((await fake.read({ only: 'proc' })).source).toBe('proc');
    fake.error = 'no tools';
    await expect(fake.read()).rejects.toThrow('no tools');
  });
});
