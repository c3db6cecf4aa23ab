/**
 * A listening socket as the port-status code sees it, whichever tool reported
 * it, and the address handling the three parsers share. Pure.
 */
import { formatIp, parseIp, type Family } from '../policy/address.js';
import { SecgroupError } from '../lib/errors.js';

export type ListenerProtocol = 'tcp' | 'udp';

export interface Listener {
  protocol: ListenerProtocol;
  /**
   * Family of the traffic the socket receives. An IPv6 socket bound to an
   * IPv4-mapped address (`::ffff:192.0.2.2`) receives IPv4 only, so it is a
   * family 4 listener on `192.0.2.2`.
   */
  family: Family;
  /** canonical address: dotted quad, or compressed lower-case IPv6 without brackets or scope */
  address: string;
  port: number;
  /** process name(s), comma separated when several processes share the socket; null when the tool could not tell */
  process: string | null;
  /**
   * Only on the IPv6 wildcard `::`: true when the socket also accepts IPv4
   * (IPV6_V6ONLY off), which makes it an IPv4 listener on 0.0.0.0 as well.
   */
  dualStack?: boolean;
  /**
   * Interface the socket is bound to (SO_BINDTODEVICE) or the scope of a
   * link-local address, when the tool shows it (only `ss` does: `%eth0`). A
   * socket bound to `lo` is reachable from the host only.
   */
  iface?: string;
}

export interface ParsedHost {
  family: Family;
  address: string;
  iface?: string;
  /** the host text was ss's `*` (IPv6 wildcard without IPV6_V6ONLY) */
  star?: boolean;
}

const MAPPED_PREFIX = 0xffffn;

/**
 * Parses an address as the tools print it: `0.0.0.0`, `127.0.0.53%lo`, `[::]`,
 * `[fe80::1]%eth0`, `*`, unbracketed `::1` (netstat). IPv4-mapped IPv6
 * addresses become IPv4. Returns null for anything that is not an address
 * (e.g. a host name, or an address netstat truncated without -W).
 */
export function parseHost(text: string): ParsedHost | null {
  let host = text;
  let iface: string | undefined;
  if (host.startsWith('[')) {
    const close = host.indexOf(']');
    if (close < 0) return null;
    const rest = host.slice(close + 1);
    if (rest !== '' && !rest.startsWith('%')) return null;
    if (rest.length > 1) iface = rest.slice(1);
    host = host.slice(1, close);
    if (host.includes('%')) return null;
  } else {
    const pct = host.indexOf('%');
    if (pct >= 0) {
      iface = host.slice(pct + 1) || undefined;
      host = host.slice(0, pct);
    }
  }
  if (host === '*') return { family: 6, address: '::', star: true, ...(iface ? { iface } : {}) };
  let parsed: { family: Family; value: bigint };
  try {
    parsed = parseIp(host);
  } catch {
    return null;
  }
  let { family, value } = parsed;
  if (family === 6 && value >> 32n === MAPPED_PREFIX) {
    family = 4;
    value &= 0xffffffffn;
  }
  return { family, address: formatIp(family, value), ...(iface ? { iface } : {}) };
}

/**
 * Splits `host:port` at the last colon (interface names cannot contain one).
 * Throws PROBE_PARSE for a port that is not a number: a tool run without -n
 * prints service names (`0.0.0.0:ssh`), which we refuse to guess.
 */
export function splitHostPort(text: string, tool: string): { host: string; port: number } {
  const colon = text.lastIndexOf(':');
  if (colon <= 0) throw new SecgroupError('PROBE_PARSE', `${tool}: ${JSON.stringify(text)} is not ADDRESS:PORT`);
  const portText = text.slice(colon + 1);
  if (!/^\d{1,5}$/.test(portText) || Number(portText) > 65535) {
    throw new SecgroupError('PROBE_PARSE', `${tool}: port ${JSON.stringify(portText)} in ${JSON.stringify(text)} is not a number (run ${tool} with -n)`);
  }
  return { host: text.slice(0, colon), port: Number(portText) };
}

/** Parses the local `host:port` of a socket; throws PROBE_PARSE (with `where` in the message) on anything else. */
export function parseLocalAddress(text: string, tool: string, where: string): ParsedHost & { port: number } {
  const { host, port } = splitHostPort(text, tool);
  const parsed = parseHost(host);
  if (!parsed) {
    throw new SecgroupError(
      'PROBE_PARSE',
      `${tool}: ${where}: ${JSON.stringify(host)} is not a numeric address${tool === 'netstat' ? ' (run netstat with -n and -W, which keeps long addresses whole)' : ` (run ${tool} with -n)`}`,
    );
  }
  return { ...parsed, port };
}

/** Loopback only: 127.0.0.0/8, ::1, or bound to the `lo` interface. */
export function isLoopback(l: Pick<Listener, 'family' | 'address' | 'iface'>): boolean {
  if (l.iface === 'lo') return true;
  const { value } = parseIp(l.address);
  return l.family === 4 ? value >> 24n === 127n : value === 1n;
}

/** How a listener's address is shown: `0.0.0.0`, `[::]`, `*` (dual-stack wildcard), `127.0.0.53%lo`, `[fe80::1]%eth0`. */
export function formatListenerAddress(l: Pick<Listener, 'family' | 'address' | 'iface' | 'dualStack'>): string {
  const host = l.family === 6 && l.address === '::' && l.dualStack ? '*' : l.family === 6 ? `[${l.address}]` : l.address;
  return l.iface ? `${host}%${l.iface}` : host;
}

/** The IPv6 wildcard accepts IPv4 too unless IPV6_V6ONLY is set (its default is net.ipv6.bindv6only). */
export function wildcardDualStack(family: Family, address: string, bindv6only: boolean): { dualStack?: boolean } {
  return family === 6 && address === '::' ? { dualStack: !bindv6only } : {};
}
