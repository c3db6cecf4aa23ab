/**
 * Parser for net-tools `netstat -lntuW` / `netstat -lntupW` (and `-anW`). Pure.
 *
 * Line: `Proto Recv-Q Send-Q Local Foreign State [PID/Program name]`, where
 * State is empty for an unconnected udp socket. netstat prints IPv4-mapped
 * addresses as dotted quads on tcp6 rows, never shows SO_BINDTODEVICE, and
 * cannot tell whether a `:::` socket is IPv6-only: the caller says what
 * net.ipv6.bindv6only is. Without -W it truncates long addresses (the truncated
 * text is usually not an address and is rejected), without -n it prints names.
 */
import { SecgroupError } from '../lib/errors.js';
import { parseLocalAddress, wildcardDualStack, type Listener } from './listener.js';

export interface NetstatOptions {
  /** /proc/sys/net/ipv6/bindv6only: when true an IPv6 wildcard socket is taken as IPv6 only */
  bindv6only: boolean;
}

const TCP_STATES = new Set([
  'ESTABLISHED', 'SYN_SENT', 'SYN_RECV', 'FIN_WAIT1', 'FIN_WAIT2', 'TIME_WAIT', 'CLOSE', 'CLOSE_WAIT', 'LAST_ACK', 'LISTEN', 'CLOSING', 'UNKNOWN',
]);
const ROW = /^(tcp6?|udp6?)\s+(\d+)\s+(\d+)\s+(\S+)\s+(\S+)(?:\s+(.*?))?\s*$/;

/** `1234/sshd: /usr/sbin` -> `sshd: /usr/sbin`; `-` (not permitted) -> null */
function programName(text: string): string | null {
  const m = /^\d+\/(.+)$/.exec(text.trim());
  return m ? m[1]!.trim() || null : null;
}

/**
 * Listening sockets in netstat output: tcp rows in state LISTEN and udp rows
 * with no state and a wildcard foreign address. Headers, other protocols and
 * the UNIX socket section are skipped. Throws SecgroupError PROBE_PARSE on a
 * tcp/udp row it cannot read (non-numeric port or address).
 */
export function parseNetstat(text: string, opts: NetstatOptions): Listener[] {
  const out: Listener[] = [];
  text.split('\n').forEach((raw, i) => {
    const line = raw.trim();
    if (!/^(tcp|udp)6?\s/.test(line)) return;
    const m = ROW.exec(line);
    if (!m) throw new SecgroupError('PROBE_PARSE', `netstat: line ${i + 1}: expected "Proto Recv-Q Send-Q Local Foreign State", got ${JSON.stringify(line)}`);
    const [, proto, , , local, foreign, restText] = m;
    let rest = restText ?? '';
    const first = rest.split(/\s+/, 1)[0] ?? '';
    let state = '';
    if (TCP_STATES.has(first)) {
      state = first;
      rest = rest.slice(first.length).trim();
    }
    const protocol = proto!.startsWith('tcp') ? 'tcp' : 'udp';
    if (protocol === 'tcp' ? state !== 'LISTEN' : state !== '' || !foreign!.endsWith(':*')) return;
    const addr = parseLocalAddress(local!, 'netstat', `line ${i + 1}`);
    out.push({
      protocol,
      family: addr.family,
      address: addr.address,
      port: addr.port,
      process: programName(rest),
      ...wildcardDualStack(addr.family, addr.address, opts.bindv6only),
    });
  });
  return out;
}
