/**
 * Platform rules (SEMANTICS section 4): traffic allowed before any security
 * group rule, each kind switchable in the agent configuration.
 */
import { z } from 'zod';
import { ipFamily } from './address.js';

/** `tcp:22`, `udp:53`, `tcp:8000-8090`, `sctp:9` */
export interface PortSpec {
  protocol: 6 | 17 | 132;
  from: number;
  to: number;
}

const PROTOS: Record<string, 6 | 17 | 132> = { tcp: 6, udp: 17, sctp: 132 };

export function parsePortSpec(text: string): { ok: true; spec: PortSpec } | { ok: false; error: string } {
  const m = /^(tcp|udp|sctp):(\d{1,5})(?:-(\d{1,5}))?$/.exec(text);
  if (!m) return { ok: false, error: `${JSON.stringify(text)} is not "tcp:PORT", "udp:PORT", "sctp:PORT" or "tcp:FIRST-LAST"` };
  const from = Number(m[2]);
  const to = m[3] === undefined ? from : Number(m[3]);
  if (from < 1 || to > 65535 || from > to) return { ok: false, error: `${JSON.stringify(text)}: ports must be 1-65535, first <= last` };
  return { ok: true, spec: { protocol: PROTOS[m[1]!]!, from, to } };
}

export const portSpecSchema = z.string().transform((s, ctx) => {
  const r = parsePortSpec(s);
  if (!r.ok) {
    ctx.addIssue({ code: 'custom', message: r.error });
    return z.NEVER;
  }
  return r.spec;
});

export interface ControllerEndpoint {
  /** resolved addresses of the controller (IPv4 and/or IPv6) */
  addresses: string[];
  port: number;
  /** the controller was given by name: allow DNS (udp/tcp 53) out */
  dns: boolean;
  /** further controllers (replicas) on other ports than `port`: their addresses and port */
  more?: { addresses: string[]; port: number }[];
}

export interface PlatformOptions {
  loopback: boolean;
  /** ICMPv6 neighbour discovery, router solicitation/advertisement (133-137) and MLD (130-132, 143) */
  icmpv6Nd: boolean;
  /** DHCP client (udp 68 in, 67 out) and DHCPv6 client (udp 546 in, 547 out) */
  dhcp: boolean;
  controller: ControllerEndpoint | null;
  failsafeIngress: PortSpec[];
  failsafeEgress: PortSpec[];
  /**
   * the conntrack mark bits that carry the flow mark (nft/flow-mark.ts): packets of inbound
   * connections the current rules allowed skip them; 0: off, every packet from the peer is matched
   */
  flowMarkMask: number;
}

/** The flow mark's default field: the upper half of the conntrack mark (wg-quick, for one, uses the lower half). */
export const DEFAULT_FLOW_MARK_MASK = 0xffff0000;

export const DEFAULT_PLATFORM: PlatformOptions = {
  loopback: true,
  icmpv6Nd: true,
  dhcp: true,
  controller: null,
  failsafeIngress: [],
  failsafeEgress: [],
  flowMarkMask: DEFAULT_FLOW_MARK_MASK,
};

export const ND_ICMPV6_TYPES = [130, 131, 132, 133, 134, 135, 136, 137, 143] as const;
export const DHCP_PORTS = { 4: { in: 68, out: 67 }, 6: { in: 546, out: 547 } } as const;

export function validControllerAddresses(addrs: string[]): boolean {
  return addrs.every((a) => ipFamily(a) !== null);
}
