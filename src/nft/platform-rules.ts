/**
 * The rules every secgroup table starts its base chains with, before any user
 * rule (SEMANTICS: platform exceptions and stateful handling): loopback, IPv6
 * neighbour discovery, DHCP client, the controller channel and its DNS,
 * failsafe ports (`platformRules`, from PlatformOptions), then conntrack
 * (`statefulRules`: invalid dropped and counted, replies to our own
 * connections and related packets accepted). Pure: options in, model rules
 * out; the order of the returned rules is the order in the chain.
 */
import { DHCP_PORTS, ND_ICMPV6_TYPES, type PlatformOptions } from '../policy/platform.js';
import { ACCEPT, DROP, sel, v, type Expr, type Rule } from './model.js';

const accept = (exprs: Expr[], text: string): Rule => ({ exprs: [...exprs, { kind: 'verdict', verdict: ACCEPT }], comment: text });

/** The platform rules of base chain `hook`, from the platform options (SEMANTICS: platform exceptions). */
export function platformRules(p: PlatformOptions, hook: 'input' | 'output'): Rule[] {
  const out: Rule[] = [];
  const ingress = hook === 'input';
  if (p.loopback) out.push(accept([{ kind: 'match', left: ingress ? sel.iif : sel.oif, op: '==', right: v.str('lo') }], 'platform: loopback'));
  if (p.icmpv6Nd) {
    out.push(
      accept(
        [{ kind: 'match', left: sel.icmp(6, 'type'), op: '==', right: ND_ICMPV6_TYPES.map((t) => v.num(t)) }],
        'platform: IPv6 neighbour discovery and MLD',
      ),
    );
  }
  if (p.dhcp) {
    for (const family of [4, 6] as const) {
      const port = ingress ? DHCP_PORTS[family].in : DHCP_PORTS[family].out;
      out.push(
        accept(
          [
            { kind: 'match', left: sel.nfproto, op: '==', right: v.sym(family === 4 ? 'ipv4' : 'ipv6') },
            { kind: 'match', left: sel.dport('udp'), op: '==', right: v.num(port) },
          ],
          `platform: DHCP${family === 6 ? 'v6' : ''} client`,
        ),
      );
    }
  }
  if (!ingress && p.controller) {
    const c = p.controller;
    for (const e of [c, ...(c.more ?? [])]) {
      for (const family of [4, 6] as const) {
        const addrs = e.addresses.filter((a) => (family === 4 ? !a.includes(':') : a.includes(':')));
        if (!addrs.length) continue;
        out.push(
          accept(
            [
              { kind: 'match', left: sel.addr(family, 'daddr'), op: '==', right: addrs.map((a) => v.addr(a)) },
              { kind: 'match', left: sel.dport('tcp'), op: '==', right: v.num(e.port) },
            ],
            'platform: controller channel',
          ),
        );
      }
    }
    if (c.dns) {
      out.push(
        accept(
          [
            { kind: 'match', left: sel.l4proto, op: '==', right: [v.sym('tcp'), v.sym('udp')] },
            { kind: 'match', left: sel.dport('th'), op: '==', right: v.num(53) },
          ],
          'platform: DNS for the controller name',
        ),
      );
    }
  }
  for (const f of ingress ? p.failsafeIngress : p.failsafeEgress) {
    out.push(
      accept(
        [
          { kind: 'match', left: sel.l4proto, op: '==', right: v.num(f.protocol) },
          { kind: 'match', left: sel.dport('th'), op: '==', right: v.range(f.from, f.to) },
        ],
        `platform: failsafe ${ingress ? 'ingress' : 'egress'}`,
      ),
    );
  }
  return out;
}

/** The conntrack rules of base chain `hook`, after the platform rules and before the family jumps. */
export function statefulRules(hook: 'input' | 'output'): Rule[] {
  const invalid: Rule = {
    exprs: [{ kind: 'match', left: sel.ctState, op: '==', right: v.sym('invalid') }, { kind: 'counter' }, { kind: 'verdict', verdict: DROP }],
    comment: 'stateful: invalid packets',
  };
  if (hook === 'output') {
    return [invalid, accept([{ kind: 'match', left: sel.ctState, op: '==', right: [v.sym('established'), v.sym('related')] }], 'stateful: established and related')];
  }
  return [
    invalid,
    accept(
      [
        { kind: 'match', left: sel.ctDirection, op: '==', right: v.sym('reply') },
        { kind: 'match', left: sel.ctState, op: '==', right: v.sym('established') },
      ],
      'stateful: replies to connections this host opened',
    ),
    accept([{ kind: 'match', left: sel.ctState, op: '==', right: v.sym('related') }], 'stateful: related (ICMP errors, expectations)'),
  ];
}
