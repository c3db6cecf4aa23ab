/**
 * Parser for `ss -Hltun` / `ss -Hltunp` (iproute2 >= 4.14). Pure.
 *
 * Line: `Netid State Recv-Q Send-Q Local:Port Peer:Port [users:((...))]`.
 * ss prints the IPv6 wildcard as `*` when the socket also accepts IPv4
 * (IPV6_V6ONLY off, read from the kernel per socket) and as `[::]` when it is
 * IPv6 only, so ss needs no bindv6only guess. Older ss versions (which print
 * `*` for 0.0.0.0) do not know -H and fail before we get here.
 */
import { SecgroupError } from '../lib/errors.js';
import { parseLocalAddress, type Listener } from './listener.js';

const LINE = /^(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)(?:\s+(.*?))?\s*$/;

/**
 * `users:(("nginx",pid=1,fd=6),("my proc",pid=2,fd=6))` -> `nginx, my proc`.
 * A name may hold spaces, quotes, commas and parentheses (ss prints the comm
 * raw, and itself cuts it at the first `)`), so each entry is anchored on its
 * `",pid=N,fd=N)` tail rather than split on punctuation.
 */
export function parseSsUsers(text: string): string | null {
  const names: string[] = [];
  for (const m of text.matchAll(/\("(.*?)",pid=\d+,fd=\d+\)/g)) {
    const name = m[1]!;
    if (!names.includes(name)) names.push(name);
  }
  return names.length ? names.join(', ') : null;
}

/**
 * Listening sockets in `ss -Hltun[p]` output: tcp in state LISTEN, udp in
 * state UNCONN (also accepts `-a` output and skips every other state). Other
 * netids (raw, sctp, unix) are skipped. Throws SecgroupError PROBE_PARSE on a
 * line that is not a socket or a port that is not numeric (ss run without -n).
 */
export function parseSs(text: string): Listener[] {
  const out: Listener[] = [];
  text.split('\n').forEach((raw, i) => {
    const line = raw.trim();
    if (line === '' || line.startsWith('Netid ')) return;
    const m = LINE.exec(line);
    if (!m) throw new SecgroupError('PROBE_PARSE', `ss: line ${i + 1}: expected "Netid State Recv-Q Send-Q Local Peer", got ${JSON.stringify(line)}`);
    const [, netid, state, , , local, , rest] = m;
    const protocol = netid === 'tcp' && state === 'LISTEN' ? 'tcp' : netid === 'udp' && state === 'UNCONN' ? 'udp' : null;
    if (!protocol) return;
    const addr = parseLocalAddress(local!, 'ss', `line ${i + 1}`);
    const listener: Listener = { protocol, family: addr.family, address: addr.address, port: addr.port, process: rest ? parseSsUsers(rest) : null };
    if (addr.family === 6 && addr.address === '::') listener.dualStack = addr.star === true;
    if (addr.iface) listener.iface = addr.iface;
    out.push(listener);
  });
  return out;
}
