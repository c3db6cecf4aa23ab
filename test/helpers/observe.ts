/**
 * Observing verdicts with real packets: the observer table and the probe
 * bookkeeping behind `Lab.observe()`.
 *
 * How it works
 * ------------
 * Every probe is a real packet that carries two marks:
 *   - TTL / hop limit {@link MARK_TTL} (nothing else in the lab uses it), and
 *   - a per-probe tag: the IPv4 identification field, or the IPv6 flow label.
 *
 * Ingress probes are complete Ethernet frames written by inject.py to an
 * AF_PACKET socket on the client end of the veth: they arrive at the host's
 * `eth0` and go through prerouting and input like any packet from the wire.
 * Egress probes are written by the same helper to raw IP sockets (IP_HDRINCL)
 * inside the host namespace: they go through the host's `output` hook.
 *
 * The observer table `inet sgt_observe` in the host namespace records tags in
 * dynamic sets (elements expire after 60 s):
 *   - `pre4`/`pre6` at prerouting/output priority -1000: the probe arrived;
 *     the same rule puts the probe into conntrack zone = tag, so that probes
 *     never share a conntrack entry with each other, with an earlier batch or
 *     with the lab's real connections (zone 0): every probe is a fresh flow;
 *   - `ct4`/`ct6` at input priority -1000 / output priority -150, i.e. after
 *     conntrack and before any filter chain: tag . the kernel's `ct state`;
 *   - `ok4`/`ok6` at input/output priority {@link OBSERVE_PRIORITY}: the
 *     probe got past every base chain with a lower priority number, i.e. it
 *     was ACCEPTED by the ruleset under test (a drop anywhere ends its path).
 *
 * In the client namespace a small table drops every marked packet on arrival,
 * so egress probes never provoke answers there.
 */
import { isIP } from 'node:net';
import type { CtState, Packet } from '../../src/policy/packet.js';

export const OBSERVE_TABLE = 'sgt_observe';
export const CLIENT_TABLE = 'sgt_client';
/** TTL / hop limit that marks probes. */
export const MARK_TTL = 123;
/** Priority of the observer's "accepted" chains; the ruleset under test must use lower numbers. */
export const OBSERVE_PRIORITY = 1000;

export const TEST_NET4 = '198.18.0.0/15';
export const TEST_NET6 = 'fd00:5ec::/48';

/** The observer table (host namespace). Created once per lab; survives `applyScript`. */
export function observerScript(): string {
  const sets = ['pre', 'ok']
    .flatMap((name) => [
      `  set ${name}4 { typeof ip id; flags dynamic,timeout; timeout 60s; size 65535; }`,
      `  set ${name}6 { typeof ip6 flowlabel; flags dynamic,timeout; timeout 60s; size 65535; }`,
    ])
    .concat([
      '  set ct4 { typeof ip id . ct state; flags dynamic,timeout; timeout 60s; size 65535; }',
      '  set ct6 { typeof ip6 flowlabel . ct state; flags dynamic,timeout; timeout 60s; size 65535; }',
    ]);
  const arrive = [
    `    ip ttl ${MARK_TTL} add @pre4 { ip id } ct zone set ip id`,
    // the low 16 bits of the flow label (the tag is < 65536)
    `    ip6 hoplimit ${MARK_TTL} add @pre6 { ip6 flowlabel } ct zone set @nh,16,16`,
  ];
  const ct = [
    `    ip ttl ${MARK_TTL} add @ct4 { ip id . ct state }`,
    `    ip6 hoplimit ${MARK_TTL} add @ct6 { ip6 flowlabel . ct state }`,
  ];
  const ok = [`    ip ttl ${MARK_TTL} add @ok4 { ip id }`, `    ip6 hoplimit ${MARK_TTL} add @ok6 { ip6 flowlabel }`];
  const chain = (name: string, hook: string, prio: number, body: string[]) => [
    `  chain ${name} {`,
    `    type filter hook ${hook} priority ${prio}; policy accept;`,
    ...body,
    '  }',
  ];
  return [
    `table inet ${OBSERVE_TABLE} {}`,
    `delete table inet ${OBSERVE_TABLE}`,
    `table inet ${OBSERVE_TABLE} {`,
    ...sets,
    ...chain('arrive_in', 'prerouting', -1000, arrive),
    ...chain('arrive_out', 'output', -1000, arrive),
    ...chain('ct_in', 'input', -1000, ct),
    ...chain('ct_out', 'output', -150, ct),
    ...chain('ok_in', 'input', OBSERVE_PRIORITY, ok),
    ...chain('ok_out', 'output', OBSERVE_PRIORITY, ok),
    '}',
    '',
  ].join('\n');
}

/** Client namespace: swallow marked packets (egress probes) before they provoke RSTs or ICMP errors. */
export function clientScript(): string {
  return [
    `table inet ${CLIENT_TABLE} {`,
    '  chain pre {',
    '    type filter hook prerouting priority -1000; policy accept;',
    `    ip ttl ${MARK_TTL} drop`,
    `    ip6 hoplimit ${MARK_TTL} drop`,
    '  }',
    '}',
    '',
  ].join('\n');
}

// ---------------------------------------------------------------------------
// addresses

function parse4(addr: string): number {
  return addr.split('.').reduce((acc, part) => acc * 256 + Number(part), 0);
}

/** Expands an IPv6 address to 8 groups of 16 bits (no zone ids, no embedded IPv4). */
function parse6(addr: string): number[] {
  const [head = '', tail] = addr.toLowerCase().split('::');
  const h = head === '' ? [] : head.split(':');
  const t = tail === undefined || tail === '' ? [] : tail.split(':');
  const fill = tail === undefined ? [] : new Array<string>(8 - h.length - t.length).fill('0');
  return [...h, ...fill, ...t].map((g) => parseInt(g, 16));
}

export function inTestRange(addr: string): boolean {
  const v = isIP(addr);
  if (v === 4) {
    const n = parse4(addr);
    return n >= parse4('198.18.0.0') && n <= parse4('198.19.255.255');
  }
  if (v === 6) {
    if (addr.includes('.') || addr.includes('%')) return false;
    const g = parse6(addr);
    return g.length === 8 && g[0] === 0xfd00 && g[1] === 0x05ec && g[2] === 0;
  }
  return false;
}

export function sameAddress(a: string, b: string): boolean {
  const v = isIP(a);
  if (v !== isIP(b)) return false;
  if (v === 4) return a === b;
  if (v === 6) return parse6(a).join(':') === parse6(b).join(':');
  return false;
}

/** Throws unless `addr` is an address of `family` inside the lab's test ranges (safety rule 2). */
export function assertTestAddress(addr: string, family?: 4 | 6): void {
  const v = isIP(addr);
  if (v === 0) throw new Error(`not an IP address: ${JSON.stringify(addr)}`);
  if (family !== undefined && v !== family) throw new Error(`address ${addr} is not IPv${family}`);
  if (!inTestRange(addr)) throw new Error(`address ${addr} is outside the test ranges ${TEST_NET4} / ${TEST_NET6}`);
}

/**
 * Like assertTestAddress, but also accepts loopback (127.0.0.1, ::1): a
 * connection to loopback inside a test namespace never leaves that namespace.
 * For real sockets only; injected probes stay in the test ranges.
 */
export function assertSocketAddress(addr: string, family?: 4 | 6): void {
  if (addr === '127.0.0.1' || addr === '::1') {
    if (family !== undefined && isIP(addr) !== family) throw new Error(`address ${addr} is not IPv${family}`);
    return;
  }
  assertTestAddress(addr, family);
}

// ---------------------------------------------------------------------------
// probes

/** What was observed for one packet. */
export interface Observation {
  /** The ruleset under test let the packet through its hook (input for ingress, output for egress). */
  accepted: boolean;
  /**
   * The conntrack state the kernel gave the probe, read after conntrack and
   * before the filter chains; `unknown` if an earlier chain (prerouting /
   * raw priority) of the ruleset under test dropped it first.
   */
  ctState: CtState | 'unknown';
  /** errno name from the raw socket for egress probes (EPERM = dropped in output), if any. */
  sendError?: string;
}

/** One probe as inject.py wants it: a packet's header fields (no conntrack facts) and its tag. */
export type Probe = Omit<Packet, 'ct' | 'ctDirection' | 'iface'> & { tag: number };

/** Protocols whose probes carry ports: tcp, udp, sctp, dccp, udplite. */
export const PORT_PROTOCOLS: ReadonlySet<number> = new Set([6, 17, 132, 33, 136]);

/** IPv6 next-header values that the kernel parses as extension headers, so an opaque payload would be malformed. */
const IPV6_EXTENSION_HEADERS = new Set([0, 43, 44, 51, 60]);

function isInt(n: unknown, lo: number, hi: number): n is number {
  return typeof n === 'number' && Number.isInteger(n) && n >= lo && n <= hi;
}

export interface ProbeContext {
  hostAddrs: readonly string[];
  hostIface: string;
}

/** Checks that the harness can inject `p` faithfully; returns a reason if not. */
export function unsupportedReason(p: Packet, ctx: ProbeContext): string | undefined {
  if (p.direction !== 'ingress' && p.direction !== 'egress') return `direction must be ingress or egress`;
  if (p.family !== 4 && p.family !== 6) return `family must be 4 or 6`;
  for (const [what, addr] of [
    ['src', p.src],
    ['dst', p.dst],
  ] as const) {
    if (isIP(addr) !== p.family) return `${what} ${addr} is not an IPv${p.family} address`;
    if (!inTestRange(addr)) return `${what} ${addr} is outside the test ranges ${TEST_NET4} / ${TEST_NET6}`;
  }
  if (!isInt(p.protocol, 0, 255)) return `protocol must be an integer 0..255`;
  if (p.family === 6 && IPV6_EXTENSION_HEADERS.has(p.protocol)) {
    return `IPv6 next header ${p.protocol} is an extension header; not supported as a probe protocol`;
  }
  if (p.ct !== undefined && p.ct !== 'new') return `only ct state new can be injected (got ${p.ct})`;
  if (p.ctDirection !== undefined && p.ctDirection !== 'original') return `only ct direction original can be injected`;
  if (p.iface !== undefined && p.iface !== ctx.hostIface) {
    return `iface ${p.iface}: probes use the lab interface ${ctx.hostIface} (no loopback probes)`;
  }
  const isHost = (a: string) => ctx.hostAddrs.some((h) => sameAddress(h, a));
  if (p.direction === 'ingress' && !isHost(p.dst)) {
    return `ingress dst ${p.dst} is not an address of the host namespace (${ctx.hostAddrs.join(', ')}); add it with createLab({ extraHostAddrs })`;
  }
  if (p.direction === 'egress' && isHost(p.dst)) return `egress dst ${p.dst} is the host itself (would be loopback)`;
  if (PORT_PROTOCOLS.has(p.protocol)) {
    if (p.sport !== undefined && !isInt(p.sport, 0, 65535)) return `sport must be 0..65535`;
    if (p.dport !== undefined && !isInt(p.dport, 0, 65535)) return `dport must be 0..65535`;
  }
  const icmp = (p.family === 4 && p.protocol === 1) || (p.family === 6 && p.protocol === 58);
  if (icmp) {
    if (p.icmpType !== undefined && !isInt(p.icmpType, 0, 255)) return `icmpType must be 0..255`;
    if (p.icmpCode !== undefined && !isInt(p.icmpCode, 0, 255)) return `icmpCode must be 0..255`;
  }
  return undefined;
}

export function toProbe(p: Packet, tag: number): Probe {
  const probe: Probe = { direction: p.direction, family: p.family, protocol: p.protocol, src: p.src, dst: p.dst, tag };
  if (PORT_PROTOCOLS.has(p.protocol)) {
    if (p.sport !== undefined) probe.sport = p.sport;
    if (p.dport !== undefined) probe.dport = p.dport;
  }
  if ((p.family === 4 && p.protocol === 1) || (p.family === 6 && p.protocol === 58)) {
    if (p.icmpType !== undefined) probe.icmpType = p.icmpType;
    if (p.icmpCode !== undefined) probe.icmpCode = p.icmpCode;
  }
  return probe;
}

/**
 * Tags are 1..65535 (IPv4 id 0 would be replaced by the kernel; zone ids are
 * 16 bits). The counter runs on across batches so that a probe's conntrack
 * zone is not reused for the next 65535 probes (after that, a probe reuses the
 * zone of a long-gone probe; see the README notes on conntrack).
 */
export class TagAllocator {
  private next = 1;
  /** Returns `count` consecutive fresh tags, and whether the counter wrapped. */
  take(count: number): { tags: number[]; wrapped: boolean } {
    if (count > 65535) throw new Error('at most 65535 tags per batch');
    let wrapped = false;
    if (this.next + count > 65536) {
      this.next = 1;
      wrapped = true;
    }
    const tags = Array.from({ length: count }, (_, i) => this.next + i);
    this.next += count;
    return { tags, wrapped };
  }
}

export interface ObserverSets {
  pre4: number[];
  pre6: number[];
  ok4: number[];
  ok6: number[];
  ct4: [number, string][];
  ct6: [number, string][];
}

const CT_STATES = new Set<string>(['new', 'established', 'related', 'invalid', 'untracked']);

export function interpret(
  probes: readonly Probe[],
  sets: Partial<ObserverSets>,
  errors: Record<string, string>,
): Observation[] {
  const pre = { 4: new Set(sets.pre4 ?? []), 6: new Set(sets.pre6 ?? []) };
  const ok = { 4: new Set(sets.ok4 ?? []), 6: new Set(sets.ok6 ?? []) };
  const ct = { 4: new Map<number, string>(), 6: new Map<number, string>() };
  for (const [tag, state] of sets.ct4 ?? []) ct[4].set(tag, state);
  for (const [tag, state] of sets.ct6 ?? []) ct[6].set(tag, state);
  const missing: string[] = [];
  const out = probes.map((probe, i) => {
    const err = errors[String(i)];
    if (!pre[probe.family].has(probe.tag)) {
      missing.push(`#${i} ${JSON.stringify(probe)}${err !== undefined ? ` (send error ${err})` : ''}`);
    }
    const state = ct[probe.family].get(probe.tag);
    const obs: Observation = {
      accepted: ok[probe.family].has(probe.tag),
      ctState: state !== undefined && CT_STATES.has(state) ? (state as CtState) : 'unknown',
    };
    if (err !== undefined) obs.sendError = err;
    return obs;
  });
  if (missing.length > 0) {
    throw new Error(
      `harness fault: ${missing.length} probe(s) never reached the host's first hook, so no verdict can be given:\n${missing.join('\n')}`,
    );
  }
  return out;
}
