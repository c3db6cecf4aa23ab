/**
 * Parser for /proc/net/{tcp,tcp6,udp,udp6}. Pure.
 *
 * `local_address` is hex `ADDR:PORT`: the port in network order, the address
 * as the kernel's 32-bit words printed in host byte order (one word for IPv4,
 * four for IPv6), so on a little-endian host 127.0.0.1 is `0100007F`. The
 * files name no process, show no SO_BINDTODEVICE and do not say whether a `::`
 * socket is IPv6-only (the caller passes net.ipv6.bindv6only).
 */
import { formatIp, type Family } from '../policy/address.js';
import { SecgroupError } from '../lib/errors.js';
import { wildcardDualStack, type Listener, type ListenerProtocol } from './listener.js';

export interface ProcNetOptions {
  protocol: ListenerProtocol;
  /** 4 for /proc/net/tcp and udp, 6 for tcp6 and udp6 */
  family: Family;
  bindv6only: boolean;
  /** byte order of the host that wrote the file (os.endianness() === 'LE'); default true */
  littleEndian?: boolean;
}

/** st column: 0A = TCP_LISTEN; for udp 07 = TCP_CLOSE, i.e. not connected */
const LISTEN_STATE: Record<ListenerProtocol, string> = { tcp: '0A', udp: '07' };

function hexWord(hex: string, littleEndian: boolean): bigint {
  const bytes = hex.match(/../g)!;
  return BigInt('0x' + (littleEndian ? bytes.reverse() : bytes).join(''));
}

/** Decodes a /proc/net address (8 or 32 hex digits); throws PROBE_PARSE. */
export function decodeProcAddress(hex: string, family: Family, littleEndian = true): { family: Family; address: string } {
  if (!new RegExp(`^[0-9A-Fa-f]{${family === 4 ? 8 : 32}}$`).test(hex)) {
    throw new SecgroupError('PROBE_PARSE', `/proc/net: ${JSON.stringify(hex)} is not a hex IPv${family} address`);
  }
  let value = 0n;
  for (let w = 0; w < hex.length / 8; w++) value = (value << 32n) | hexWord(hex.slice(w * 8, w * 8 + 8), littleEndian);
  if (family === 6 && value >> 32n === 0xffffn) return { family: 4, address: formatIp(4, value & 0xffffffffn) };
  return { family, address: formatIp(family, value) };
}

/**
 * Listening sockets in one /proc/net file: tcp in state 0A, udp in state 07
 * with a zero remote address. Throws SecgroupError PROBE_PARSE on a row it
 * cannot read.
 */
export function parseProcNet(text: string, opts: ProcNetOptions): Listener[] {
  const out: Listener[] = [];
  const le = opts.littleEndian ?? true;
  const zero = '0'.repeat(opts.family === 4 ? 8 : 32);
  text.split('\n').forEach((raw, i) => {
    const line = raw.trim();
    if (line === '' || line.startsWith('sl ')) return;
    const m = /^\d+:\s+([0-9A-Fa-f]+):([0-9A-Fa-f]{4})\s+([0-9A-Fa-f]+):([0-9A-Fa-f]{4})\s+([0-9A-Fa-f]{2})\s/.exec(line);
    if (!m) throw new SecgroupError('PROBE_PARSE', `/proc/net/${opts.protocol}${opts.family === 6 ? '6' : ''}: line ${i + 1}: cannot read ${JSON.stringify(line.slice(0, 80))}`);
    const [, localHex, portHex, remoteHex, , state] = m;
    if (state!.toUpperCase() !== LISTEN_STATE[opts.protocol]) return;
    if (opts.protocol === 'udp' && remoteHex !== zero) return;
    const addr = decodeProcAddress(localHex!, opts.family, le);
    out.push({
      protocol: opts.protocol,
      family: addr.family,
      address: addr.address,
      port: parseInt(portHex!, 16),
      process: null,
      ...wildcardDualStack(addr.family, addr.address, opts.bindv6only),
    });
  });
  return out;
}
