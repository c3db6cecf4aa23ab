/**
 * A packet as the reference evaluator and the kernel test harness see it.
 *
 * It describes one packet at the host's `input` (ingress) or `output` (egress)
 * hook, together with the connection-tracking facts the kernel would attach to
 * it. Addresses are canonical text (IPv4 dotted quad, IPv6 as `new URL` or
 * `net` would print it); the evaluator parses them itself.
 */
export type Direction = 'ingress' | 'egress';

/** Connection-tracking state of the packet, as nftables' `ct state` reports it. */
export type CtState = 'new' | 'established' | 'related' | 'invalid' | 'untracked';

/** Which side of its connection sent the packet (`ct direction`). */
export type CtDirection = 'original' | 'reply';

export interface Packet {
  direction: Direction;
  family: 4 | 6;
  /** IP protocol number of the transport header (`meta l4proto`): 6 tcp, 17 udp, 132 sctp, 1 icmp, 58 icmpv6, ... */
  protocol: number;
  src: string;
  dst: string;
  /** tcp/udp/sctp only */
  sport?: number;
  dport?: number;
  /** icmp/icmpv6 only */
  icmpType?: number;
  icmpCode?: number;
  /** Defaults to `new` / `original`. */
  ct?: CtState;
  ctDirection?: CtDirection;
  /** The conntrack mark of the packet's connection (the flow mark, nft/flow-mark.ts); defaults to 0. */
  ctMark?: number;
  /** Interface the packet arrives on (ingress) or leaves by (egress); `lo` is loopback. Defaults to a non-loopback interface. */
  iface?: string;
}

export const PROTO = { icmp: 1, tcp: 6, udp: 17, sctp: 132, icmpv6: 58 } as const;
