/** The packet notation of `secgroup explain` (src/policy/packet-text.ts). */
import { describe, expect, it } from 'vitest';
import { formatPacket, parsePacketText } from '../../src/policy/packet-text.js';

describe('parsePacketText', () => {
  it('reads the notation of the help text', () => {
    expect(parsePacketText('ingress tcp 203.0.113.7:40000 -> 198.18.0.10:22')).toEqual({
      direction: 'ingress',
      family: 4,
      protocol: 6,
      src: '203.0.113.7',
      dst: '198.18.0.10',
      sport: 40000,
      dport: 22,
    });
    expect(parsePacketText('egress udp 198.18.0.10 -> 198.18.0.1:53')).toMatchObject({ protocol: 17, sport: 40000, dport: 53 });
    expect(parsePacketText('ingress icmp 203.0.113.7 -> 198.18.0.10 type 3 code 4')).toMatchObject({ protocol: 1, icmpType: 3, icmpCode: 4 });
    expect(parsePacketText('ingress tcp [2001:db8::1]:40000 -> [fd00:5ec::10]:443')).toMatchObject({ family: 6, src: '2001:db8::1', dst: 'fd00:5ec::10', dport: 443 });
    expect(parsePacketText('egress proto 47 198.18.0.10 -> 198.18.0.20')).toEqual({ direction: 'egress', family: 4, protocol: 47, src: '198.18.0.10', dst: '198.18.0.20' });
    expect(parsePacketText('ingress sctp 203.0.113.7:1 -> 198.18.0.10:9')).toMatchObject({ protocol: 132, dport: 9 });
  });

  it('ICMP defaults to echo request, code 0', () => {
    expect(parsePacketText('ingress icmp 203.0.113.7 -> 198.18.0.10')).toMatchObject({ icmpType: 8, icmpCode: 0 });
    expect(parsePacketText('ingress icmpv6 2001:db8::1 -> fd00:5ec::10')).toMatchObject({ protocol: 58, icmpType: 128, icmpCode: 0 });
  });

  it('writes addresses canonically and tolerates extra spaces', () => {
    expect(parsePacketText('  ingress   tcp   [2001:DB8:0:0::1]:1  ->  [FD00:05EC::0010]:443  ')).toMatchObject({ src: '2001:db8::1', dst: 'fd00:5ec::10' });
  });

  it('formatPacket writes what parsePacketText reads', () => {
    for (const text of [
      'ingress tcp 203.0.113.7:40000 -> 198.18.0.10:22',
      'egress udp [fd00:5ec::10]:40000 -> [2001:db8::53]:53',
      'ingress icmp 203.0.113.7 -> 198.18.0.10 type 3 code 4',
      'egress proto 47 198.18.0.10 -> 198.18.0.20',
    ]) {
      expect(formatPacket(parsePacketText(text))).toBe(text);
    }
  });
});
