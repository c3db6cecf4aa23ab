/**
 * The packet notation of `secgroup explain`:
 *   ingress tcp 203.0.113.7:40000 -> 198.18.0.10:22
 *   egress udp 198.18.0.10 -> 198.18.0.1:53
 *   ingress icmp 203.0.113.7 -> 198.18.0.10 type 8 code 0
 *   ingress tcp [2001:db8::1]:40000 -> [fd00:5ec::10]:443
 *   egress proto 47 198.18.0.10 -> 198.18.0.20
 */
import { canonicalIp, ipFamily } from './address.js';
import { PROTO, type Packet } from './packet.js';

const NAMED: Record<string, number> = { tcp: PROTO.tcp, udp: PROTO.udp, sctp: PROTO.sctp, icmp: PROTO.icmp, icmpv6: PROTO.icmpv6 };

function endpoint(text: string, what: string): { addr: string; port?: number } {
  let addr = text;
  let port: string | undefined;
  const bracket = /^\[([^\]]+)\](?::(\d+))?$/.exec(text);
  if (bracket) {
    addr = bracket[1]!;
    port = bracket[2];
  } else if (ipFamily(text) === null && text.includes(':') && text.indexOf(':') === text.lastIndexOf(':')) {
    [addr, port] = text.split(':') as [string, string];
  }
  if (ipFamily(addr) === null) throw new Error(`${what} ${JSON.stringify(text)} is not an address (IPv6 with a port: [addr]:port)`);
  if (port !== undefined && (!/^\d{1,5}$/.test(port) || Number(port) > 65535)) throw new Error(`${what} port ${JSON.stringify(port)} is not 0-65535`);
  return port === undefined ? { addr: canonicalIp(addr) } : { addr: canonicalIp(addr), port: Number(port) };
}

/** Parses the notation above; throws Error with a sentence naming the problem. */
export function parsePacketText(text: string): Packet {
  const words = text.trim().split(/\s+/);
  let i = 0;
  const next = () => words[i++];
  const direction = next();
  if (direction !== 'ingress' && direction !== 'egress') throw new Error(`a packet starts with "ingress" or "egress", not ${JSON.stringify(direction ?? '')}`);
  let protoWord = next() ?? '';
  let protocol: number;
  if (protoWord === 'proto') {
    protoWord = next() ?? '';
    if (!/^\d{1,3}$/.test(protoWord) || Number(protoWord) > 255) throw new Error(`"proto" needs a number 0-255, not ${JSON.stringify(protoWord)}`);
    protocol = Number(protoWord);
  } else if (protoWord in NAMED) protocol = NAMED[protoWord]!;
  else throw new Error(`unknown protocol ${JSON.stringify(protoWord)}: use tcp, udp, sctp, icmp, icmpv6 or "proto N"`);
  const src = endpoint(next() ?? '', 'source');
  if (next() !== '->') throw new Error('expected "->" between source and destination');
  const dst = endpoint(next() ?? '', 'destination');
  const family = ipFamily(src.addr)!;
  if (ipFamily(dst.addr) !== family) throw new Error('source and destination must both be IPv4 or both IPv6');
  const packet: Packet = { direction, family, protocol, src: src.addr, dst: dst.addr };
  const portProto = protocol === 6 || protocol === 17 || protocol === 132;
  if (portProto) {
    if (dst.port === undefined) {
      // "fd00:5ec::10:80" is a valid address on its own: the port needs brackets
      throw new Error(`${protoWord} needs a destination port (address:port${family === 6 ? ', for IPv6 [address]:port' : ''})`);
    }
    packet.sport = src.port ?? 40000;
    packet.dport = dst.port;
  } else if (src.port !== undefined || dst.port !== undefined) {
    throw new Error(`ports are only for tcp, udp and sctp`);
  }
  while (i < words.length) {
    const key = next();
    const val = next();
    if ((key !== 'type' && key !== 'code') || val === undefined || !/^\d{1,3}$/.test(val) || Number(val) > 255) {
      throw new Error(`unexpected ${JSON.stringify(key)}${val ? ' ' + val : ''}: after the addresses only "type N" and "code N" (ICMP) may follow`);
    }
    if (protocol !== 1 && protocol !== 58) throw new Error(`"${key}" is only for icmp and icmpv6`);
    if (key === 'type') packet.icmpType = Number(val);
    else packet.icmpCode = Number(val);
  }
  if ((protocol === 1 || protocol === 58) && packet.icmpType === undefined) packet.icmpType = protocol === 1 ? 8 : 128;
  if (packet.icmpType !== undefined && packet.icmpCode === undefined) packet.icmpCode = 0;
  if (protocol === 1 && family === 6) throw new Error('icmp is IPv4; use icmpv6 for IPv6 addresses');
  if (protocol === 58 && family === 4) throw new Error('icmpv6 is IPv6; use icmp for IPv4 addresses');
  return packet;
}

export function formatPacket(p: Packet): string {
  const name = Object.entries(NAMED).find(([, n]) => n === p.protocol)?.[0];
  const host = (a: string, port?: number) => (port === undefined ? a : p.family === 6 ? `[${a}]:${port}` : `${a}:${port}`);
  let s = `${p.direction} ${name ?? `proto ${p.protocol}`} ${host(p.src, p.sport)} -> ${host(p.dst, p.dport)}`;
  if (p.icmpType !== undefined) s += ` type ${p.icmpType}`;
  if (p.icmpCode !== undefined) s += ` code ${p.icmpCode}`;
  return s;
}
