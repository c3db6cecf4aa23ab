import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { isSecgroupError } from '../../src/lib/errors.js';
import { formatListenerAddress, isLoopback, parseHost, type Listener } from '../../src/probe/listener.js';
import { parseNetstat } from '../../src/probe/netstat.js';
import { decodeProcAddress, parseProcNet } from '../../src/probe/proc.js';
import { parseSs, parseSsUsers } from '../../src/probe/ss.js';

const fixture = (name: string) => readFileSync(new URL(`../fixtures/probe/${name}`, import.meta.url), 'utf8');

/** The sockets test/fixtures/probe/capture.py opened (ports 18xxx), as `proto address:port` keys. */
const key = (l: Listener) => `${l.protocol} ${formatListenerAddress(l)}:${l.port}`;
const ours = (ls: Listener[]) => ls.filter((l) => l.port >= 18000 && l.port < 19000);

function expectParseError(fn: () => unknown, fragment: string) {
  try {
    fn();
  } catch (e) {
    expect(isSecgroupError(e, 'PROBE_PARSE')).toBe(true);
    expect((e as Error).message).toContain(fragment);
    return;
  }
  expect.fail('expected a PROBE_PARSE error');
}

describe('ss parser on real `ss -Hltunp` output', () => {
  const listeners = parseSs(fixture('ss-ltunp.txt'));

  it('reads every listening socket the capture opened, and no connected one', () => {
    expect(ours(listeners).map(key).sort()).toEqual(
      [
        'tcp 0.0.0.0:18080',
        'tcp 127.0.0.1:18081',
        'tcp *:18082',
        'tcp [::]:18083',
        'tcp [::1]:18084',
        'tcp 192.0.2.2:18085',
        'tcp [fd00::2]:18086',
        'tcp [fe80::fc:ff:fe00:1]%eth0:18087',
        'tcp 192.0.2.2:18088',
        'tcp 0.0.0.0%lo:18089',
        'tcp 0.0.0.0:18090',
        'udp 0.0.0.0:18053',
        'udp 127.0.0.53%lo:18054',
        'udp *:18055',
        'udp [::1]:18056',
        'udp 0.0.0.0%eth0:18068',
      ].sort(),
    );
    expect(listeners.find((l) => l.port === 18057)).toBeUndefined();
  });

  it('tells a dual-stack IPv6 wildcard (`*`) from an IPV6_V6ONLY one (`[::]`)', () => {
    expect(listeners.find((l) => l.port === 18082)).toMatchObject({ family: 6, address: '::', dualStack: true });
    expect(listeners.find((l) => l.port === 18083)).toMatchObject({ family: 6, address: '::', dualStack: false });
    expect(listeners.find((l) => l.port === 18055)).toMatchObject({ protocol: 'udp', family: 6, address: '::', dualStack: true });
  });

  it('turns an IPv4-mapped IPv6 socket into an IPv4 listener', () => {
    expect(listeners.find((l) => l.port === 18088)).toMatchObject({ family: 4, address: '192.0.2.2' });
  });

  it('keeps the bound interface and link-local scope', () => {
    expect(listeners.find((l) => l.port === 18087)).toMatchObject({ family: 6, address: 'fe80::fc:ff:fe00:1', iface: 'eth0' });
    expect(listeners.find((l) => l.port === 18054)).toMatchObject({ address: '127.0.0.53', iface: 'lo' });
    expect(listeners.find((l) => l.port === 18089)).toMatchObject({ address: '0.0.0.0', iface: 'lo' });
  });

  it('reads process names with spaces, quotes and commas, and every process sharing a socket', () => {
    expect(listeners.find((l) => l.port === 18080)?.process).toBe('my proc');
    // ss itself cuts a comm at its first ")": the process is called q"uo,te(x)
    expect(listeners.find((l) => l.port === 18053)?.process).toBe('q"uo,te(x');
    expect(listeners.find((l) => l.port === 18090)?.process).toBe('my proc, q"uo,te(x');
    expect(listeners.find((l) => l.port === 2024)?.process ?? null).toBeNull();
  });

  it('gives the same sockets without -p, with no process names', () => {
    const plain = parseSs(fixture('ss-ltun.txt'));
    expect(plain.map(key)).toEqual(listeners.map(key));
    expect(plain.every((l) => l.process === null)).toBe(true);
  });
});

describe('ss parser edge cases', () => {
  it('reads the address forms ss prints', () => {
    const text = [
      'Netid State  Recv-Q Send-Q Local Address:Port Peer Address:Port Process',
      'tcp   LISTEN 0      128    [::]:22 [::]:*',
      'tcp   LISTEN 0      128    *:80 *:*',
      'tcp   LISTEN 0      128    [FE80::1]%eth0:22 [::]:*',
      'udp   UNCONN 0      0      127.0.0.53%lo:53 0.0.0.0:*',
      'udp   UNCONN 0      0      *%eth0:546 *:*',
      'tcp   LISTEN 0      128    [::ffff:127.0.0.1]:8080 *:*',
      'tcp   ESTAB  0      0      192.0.2.2:22 203.0.113.7:40000',
      'udp   ESTAB  0      0      192.0.2.2:40000 192.0.2.1:53',
      'raw   UNCONN 0      0      *:ipv6-icmp *:*',
      'sctp  LISTEN 0      128    0.0.0.0:9 0.0.0.0:*',
    ].join('\n');
    expect(parseSs(text)).toEqual([
      { protocol: 'tcp', family: 6, address: '::', port: 22, process: null, dualStack: false },
      { protocol: 'tcp', family: 6, address: '::', port: 80, process: null, dualStack: true },
      { protocol: 'tcp', family: 6, address: 'fe80::1', port: 22, process: null, iface: 'eth0' },
      { protocol: 'udp', family: 4, address: '127.0.0.53', port: 53, process: null, iface: 'lo' },
      { protocol: 'udp', family: 6, address: '::', port: 546, process: null, dualStack: true, iface: 'eth0' },
      { protocol: 'tcp', family: 4, address: '127.0.0.1', port: 8080, process: null },
    ]);
  });

  it('reads odd process names', () => {
    expect(parseSsUsers('users:(("my proc",pid=1,fd=3))')).toBe('my proc');
    expect(parseSsUsers('users:(("a,b",pid=1,fd=3),("c"d",pid=2,fd=4),("a,b",pid=3,fd=3))')).toBe('a,b, c"d');
    expect(parseSsUsers('users:(("x (y)",pid=1,fd=3))')).toBe('x (y)');
    expect(parseSsUsers('users:(("",pid=1,fd=3))')).toBe('');
    expect(parseSsUsers('')).toBeNull();
    const [l] = parseSs('tcp LISTEN 0 4096 0.0.0.0:22 0.0.0.0:* users:(("sshd: /usr/sbin",pid=812,fd=3))   ');
    expect(l?.process).toBe('sshd: /usr/sbin');
  });

  it('refuses service names (ss without -n) and lines that are not sockets', () => {
    expectParseError(() => parseSs('tcp LISTEN 0 128 0.0.0.0:ssh 0.0.0.0:*'), 'run ss with -n');
    expectParseError(() => parseSs('tcp LISTEN 0 128 localhost:8080 0.0.0.0:*'), '"localhost" is not a numeric address');
    expectParseError(() => parseSs('tcp LISTEN 0 128 0.0.0.0:99999 0.0.0.0:*'), 'is not a number');
    expectParseError(() => parseSs('Cannot open netlink socket'), 'line 1');
  });
});

describe('netstat parser on real output', () => {
  it('reads `netstat -lntupW` with program names', () => {
    const listeners = parseNetstat(fixture('netstat-lntupW.txt'), { bindv6only: false });
    expect(ours(listeners).map(key).sort()).toEqual(
      [
        'tcp 0.0.0.0:18080',
        'tcp 127.0.0.1:18081',
        'tcp *:18082',
        'tcp *:18083', // netstat cannot see IPV6_V6ONLY: bindv6only=0 says dual-stack
        'tcp [::1]:18084',
        'tcp 192.0.2.2:18085',
        'tcp [fd00::2]:18086',
        'tcp [fe80::fc:ff:fe00:1]:18087', // no scope
        'tcp 192.0.2.2:18088', // netstat prints the mapped address as IPv4
        'tcp 0.0.0.0:18089', // no SO_BINDTODEVICE
        'tcp 0.0.0.0:18090',
        'udp 0.0.0.0:18053',
        'udp 127.0.0.53:18054',
        'udp *:18055',
        'udp [::1]:18056',
        'udp 0.0.0.0:18068',
      ].sort(),
    );
    expect(listeners.find((l) => l.port === 18080)?.process).toBe('python3');
    expect(listeners.find((l) => l.port === 2024)?.process).toBeNull();
  });

  it('reads `netstat -lntuW` and `netstat -anW` to the same sockets, skipping connections and UNIX sockets', () => {
    const a = parseNetstat(fixture('netstat-lntuW.txt'), { bindv6only: false });
    const b = parseNetstat(fixture('netstat-anW.txt'), { bindv6only: false });
    expect(b.map(key)).toEqual(a.map(key));
    expect(b.find((l) => l.port === 18057)).toBeUndefined();
    expect(a.every((l) => l.process === null)).toBe(true);
  });

  it('takes bindv6only as a parameter for `:::` sockets', () => {
    const l = parseNetstat(fixture('netstat-lntuW.txt'), { bindv6only: true });
    expect(l.find((x) => x.port === 18082)).toMatchObject({ family: 6, address: '::', dualStack: false });
  });

  it('rejects the address netstat truncated without -W', () => {
    expectParseError(() => parseNetstat(fixture('netstat-lntu.txt'), { bindv6only: false }), '-W');
  });
});

describe('netstat parser edge cases', () => {
  it('reads udp rows with and without a state and program names with spaces', () => {
    const text = [
      'Proto Recv-Q Send-Q Local Address           Foreign Address         State       PID/Program name',
      'tcp        0      0 0.0.0.0:22              0.0.0.0:*               LISTEN      812/sshd: /usr/sbin ',
      'udp        0      0 0.0.0.0:68              0.0.0.0:*                           612/dhclient',
      'udp        0      0 192.0.2.2:40000         192.0.2.1:53            ESTABLISHED 700/resolver',
      'udp6       0      0 :::5353                 :::*                                -',
      'tcp6       0      0 ::ffff:127.0.0.1:9000   :::*                    LISTEN      -',
      'raw6       0      0 :::58                   :::*                    7           -',
    ].join('\n');
    expect(parseNetstat(text, { bindv6only: false })).toEqual([
      { protocol: 'tcp', family: 4, address: '0.0.0.0', port: 22, process: 'sshd: /usr/sbin' },
      { protocol: 'udp', family: 4, address: '0.0.0.0', port: 68, process: 'dhclient' },
      { protocol: 'udp', family: 6, address: '::', port: 5353, process: null, dualStack: true },
      { protocol: 'tcp', family: 4, address: '127.0.0.1', port: 9000, process: null },
    ]);
  });

  it('refuses names (netstat without -n)', () => {
    expectParseError(() => parseNetstat('tcp 0 0 0.0.0.0:ssh 0.0.0.0:* LISTEN', { bindv6only: false }), 'run netstat with -n');
    expectParseError(() => parseNetstat('tcp 0 0 localhost:ipp *:* LISTEN', { bindv6only: false }), 'run netstat with -n');
    expectParseError(() => parseNetstat('tcp6 0 0 [::]:ssh [::]:* LISTEN', { bindv6only: false }), 'run netstat with -n');
  });
});

describe('/proc/net parser on real files', () => {
  const read = (protocol: 'tcp' | 'udp', family: 4 | 6) =>
    parseProcNet(fixture(`proc-net-${protocol}${family === 6 ? '6' : ''}.txt`), { protocol, family, bindv6only: false });
  const all = [...read('tcp', 4), ...read('tcp', 6), ...read('udp', 4), ...read('udp', 6)];

  it('reads every listening socket, LISTEN (0A) for tcp and unconnected (07) for udp', () => {
    expect(ours(all).map(key).sort()).toEqual(
      [
        'tcp 0.0.0.0:18080',
        'tcp 127.0.0.1:18081',
        'tcp *:18082',
        'tcp *:18083',
        'tcp [::1]:18084',
        'tcp 192.0.2.2:18085',
        'tcp [fd00::2]:18086',
        'tcp [fe80::fc:ff:fe00:1]:18087',
        'tcp 192.0.2.2:18088',
        'tcp 0.0.0.0:18089',
        'tcp 0.0.0.0:18090',
        'udp 0.0.0.0:18053',
        'udp 127.0.0.53:18054',
        'udp *:18055',
        'udp [::1]:18056',
        'udp 0.0.0.0:18068',
      ].sort(),
    );
    expect(all.every((l) => l.process === null)).toBe(true);
  });

  it('agrees with ss on every socket except what /proc cannot show (interface binding, V6ONLY)', () => {
    const strip = (l: Listener) => `${l.protocol} ${l.family} ${l.address} ${l.port}`;
    expect(all.map(strip).sort()).toEqual(parseSs(fixture('ss-ltun.txt')).map(strip).sort());
  });

  it('decodes host-order words, mapped addresses and big-endian hosts', () => {
    expect(decodeProcAddress('0100007F', 4)).toEqual({ family: 4, address: '127.0.0.1' });
    expect(decodeProcAddress('7F000001', 4, false)).toEqual({ family: 4, address: '127.0.0.1' });
    expect(decodeProcAddress('00000000000000000000000001000000', 6)).toEqual({ family: 6, address: '::1' });
    expect(decodeProcAddress('00000000000000000000000000000001', 6, false)).toEqual({ family: 6, address: '::1' });
    expect(decodeProcAddress('0000000000000000FFFF00000100007F', 6)).toEqual({ family: 4, address: '127.0.0.1' });
    expect(decodeProcAddress('B80D0120000000000000000001000000', 6)).toEqual({ family: 6, address: '2001:db8::1' });
    expectParseError(() => decodeProcAddress('0100007', 4), 'not a hex IPv4 address');
  });

  it('skips connected udp sockets and rejects rows it cannot read', () => {
    const udp = ['  sl  local_address rem_address   st', ' 1: 0100007F:4689 0100007F:4685 07 00000000:00000000', ' 2: 0100007F:0035 00000000:0000 07 0'].join('\n');
    expect(parseProcNet(udp, { protocol: 'udp', family: 4, bindv6only: true })).toEqual([
      { protocol: 'udp', family: 4, address: '127.0.0.1', port: 53, process: null },
    ]);
    expectParseError(() => parseProcNet(' 0: garbage', { protocol: 'tcp', family: 4, bindv6only: false }), '/proc/net/tcp: line 1');
  });
});

describe('listener addresses', () => {
  it('parses and classifies addresses', () => {
    expect(parseHost('[::ffff:10.0.0.1]')).toEqual({ family: 4, address: '10.0.0.1' });
    expect(parseHost('[2001:DB8:0:0::1]')).toEqual({ family: 6, address: '2001:db8::1' });
    expect(parseHost('[::1')).toBeNull();
    expect(parseHost('[::1]x')).toBeNull();
    expect(parseHost('host.example')).toBeNull();
    expect(isLoopback({ family: 4, address: '127.0.0.53' })).toBe(true);
    expect(isLoopback({ family: 6, address: '::1' })).toBe(true);
    expect(isLoopback({ family: 4, address: '0.0.0.0', iface: 'lo' })).toBe(true);
    expect(isLoopback({ family: 4, address: '0.0.0.0' })).toBe(false);
    expect(isLoopback({ family: 6, address: 'fe80::1', iface: 'eth0' })).toBe(false);
  });
});
