/**
 * Compiler: policy -> typed nft model (pure).
 *
 * Layout of table `inet <name>`:
 *  - base chains `input` / `output` (policy drop): platform rules, then
 *    conntrack handling, then a jump per family to `ingress_v4` etc., then a
 *    counted default drop;
 *  - one small chain per user rule (`r_<hash>`) holding its counter and verdict,
 *    so hits can be read back per rule id;
 *  - the family chains dispatch with interval verdict maps keyed by
 *    `peer . l4proto . dport` (tcp/udp/sctp), `peer . icmp type . icmp code`
 *    and `peer . l4proto` (everything else), whose elements jump to the rule
 *    chains. A packet costs one lookup per map, however many rules, peers and
 *    ports there are.
 *
 * First match with overlapping rules: each rule gets a *layer*, one more than
 * the highest layer of any earlier rule it overlaps. Rules of one layer never
 * overlap, so each layer's maps hold disjoint keys, and a packet whose first
 * matching rule is R cannot match anything in an earlier layer (an earlier
 * match would be an earlier overlapping rule, which sits in a lower layer).
 * Lookups run layer by layer, so the first hit is the first-match rule. The
 * number of layers depends on how rules overlap, not on how many there are.
 *
 * Within a layer and shape, elements are split by key signature: wildcard
 * parts (any address, any port) leave the key, exact keys go to hash maps
 * (constant lookup cost, fast element updates) and only keys with ranges or
 * prefixes need interval maps, whose kernel lookup cost grows with their size.
 * Rules that one earlier rule fully covers never decide and get no elements.
 *
 * Rules on a remote group are looked up differently: the group's members go
 * in a plain hash set per family (`g4_<hash>`, no verdicts; its elements are
 * the packed AddressSet the rules' peers already are, policy/address-set.ts:
 * one copy of the members, 4 or 16 bytes each), tested before a
 * small map keyed by the rest of the key (`... ip saddr @g4_x meta l4proto .
 * th dport vmap @in4_l0_ports_g<hash>_ee`), one such lookup per layer, group
 * and shape (the Neutron ipset / Felix layout). A member joining or leaving
 * is then one element of a set that no verdict depends on, which the kernel
 * adds in constant time; a jump element in a big verdict map makes it
 * re-validate every jump of the table on commit (see model.ts). For the same
 * reason, what a group rule shadows and is shadowed by does not depend on the
 * members (membership.ts relies on it): a group rule covers only rules on the
 * same group, and only a rule matching every address covers it.
 *
 * This file assembles the table; the parts live next to it: layering.ts
 * (overlap, cover, shadowing and layers: the algorithm above), lookups.ts
 * (map elements, key signatures and the lookup rules of a layer),
 * names.ts (object names), platform-rules.ts (platform and conntrack rules).
 * compilePolicy is pure as seen by callers: its only state is names.ts's
 * bounded name memo, which no result depends on.
 */
import { createHash } from 'node:crypto';
import { elementId } from './diff.js';
import type { Family } from '../policy/address.js';
import { AddressSet } from '../policy/address-set.js';
import { describeRule, normalizeRules, type NormalizedRule } from '../policy/normalize.js';
import { DEFAULT_PLATFORM, type PlatformOptions } from '../policy/platform.js';
import type { Policy } from '../policy/schema.js';
import { layerRules } from './layering.js';
import { elementsOf, emitLookups, shapesOf, tailElementsOf, type LookupTarget } from './lookups.js';
import { ACCEPT, DROP, assertName, comment, jump, sel, v, type Chain, type MapElement, type Rule, type Table, type VerdictMap } from './model.js';
import { groupMapName, mapName, memberSetName, reserveRuleNames, ruleChainName, type Shape } from './names.js';
import { platformRules, statefulRules } from './platform-rules.js';
import { FLOW_ALLOW_VERDICT, flowChains, flowEntryRule } from './flow-mark.js';

// callers that name the chains and sets of a compiled table (the agent, the CLI) keep importing them from here
export { memberSetName, ruleChainName } from './names.js';

export const DEFAULT_TABLE = 'secgroup';
export const PRIORITY_FILTER = 0;

export interface CompileOptions {
  table?: string;
  platform?: PlatformOptions;
}

export interface RuleChainInfo {
  chain: string;
  groupId: string;
  ruleId: string;
  direction: 'ingress' | 'egress';
  action: 'allow' | 'deny';
  family: Family;
  /** lookup layer of the rule; null when it matches nothing (e.g. an empty remote group) */
  layer: number | null;
  elements: number;
}

/** How the rules of one direction and family were laid out (kept for membership fast paths, see membership.ts). */
export interface RuleLayout {
  rules: NormalizedRule[];
  layers: (number | null)[];
  shadowed: boolean[];
}

export interface Compiled {
  table: Table;
  /** per `${direction}${family}` (e.g. "ingress4") */
  layout: Map<string, RuleLayout>;
  /** per user rule, in match order */
  rules: RuleChainInfo[];
  /** sha256 (hex, 16 chars) of the table content without its comment: equal digests = identical rulesets */
  digest: string;
  stats: { rules: number; elements: number; layers: Record<string, number> };
}

/** Chains per hashed piece of the digest (a few tens of KB of JSON). */
const DIGEST_CHAINS = 256;

/**
 * Hash of the table without its comment: the skeleton as JSON, each map's
 * elements as short ids (JSON.stringify of 400k elements took ~1.7 s), the
 * chains one JSON line each, hashed a few hundred at a time (one JSON text
 * of 10k rule chains, ~2 MB, took twice as long).
 */
function digestOf(table: Table): string {
  const h = createHash('sha256');
  h.update(JSON.stringify({ ...table, comment: undefined, chains: undefined, maps: table.maps.map((m) => ({ ...m, elements: m.elements.length })) }));
  for (let i = 0; i < table.chains.length; i += DIGEST_CHAINS) {
    let piece = '';
    for (let k = i; k < Math.min(i + DIGEST_CHAINS, table.chains.length); k++) piece += `\n${JSON.stringify(table.chains[k])}`;
    h.update(piece);
  }
  for (const m of table.maps) {
    h.update(`\n${m.name}:`);
    if (m.elements instanceof AddressSet) m.elements.eachBytes((b) => h.update(b));
    else if (m.set) throw new Error(`internal: set ${m.name} is not a member set`);
    else h.update(m.elements.map(elementId).join(','));
  }
  return h.digest('hex').slice(0, 16);
}

function memberPeers(r: NormalizedRule): AddressSet {
  if (!(r.peers instanceof AddressSet)) throw new Error(`internal: rule ${r.groupId}/${r.ruleId} on a remote group has no packed members`);
  return r.peers;
}

/** The value of `key` in `m`, created with `make` when missing. */
function entry<K, V>(m: Map<K, V>, key: K, make: () => V): V {
  let val = m.get(key);
  if (val === undefined) m.set(key, (val = make()));
  return val;
}

/** The member set of remote group `groupId` for `family`, from a rule on it: its peers, the group's members packed (see AddressSet), are the set's elements (one copy). */
function memberSet(family: Family, groupId: string, r: NormalizedRule): VerdictMap {
  return {
    name: memberSetName(family, groupId),
    set: true,
    keyType: [family === 4 ? 'ipv4_addr' : 'ipv6_addr'],
    interval: false,
    comment: comment(`members of remote group ${groupId}`),
    elements: memberPeers(r),
  };
}

/** Compiles a valid policy (see parsePolicy) into the nft model of our table. Pure; throws only on internal errors. */
export function compilePolicy(policy: Policy, opts: CompileOptions = {}): Compiled {
  const tableName = assertName(opts.table ?? DEFAULT_TABLE);
  const platform = opts.platform ?? DEFAULT_PLATFORM;
  // the flow mark (flow-mark.ts): compiled as the agent's first apply of an epoch, generation 1, not armed (the agent sets the generation)
  const flowMask = platform.flowMarkMask;
  const all = normalizeRules(policy);
  const maps: VerdictMap[] = [];
  const ruleChains: Chain[] = [];
  const infos: RuleChainInfo[] = [];
  const familyChains: Chain[] = [];
  const layerStats: Record<string, number> = {};
  const layout = new Map<string, RuleLayout>();
  const seen = new Set<string>();
  // member sets, per `${family}|${groupId}`, in the order first used
  const memberSets = new Map<string, VerdictMap>();

  // each rule's chain name, hashed once per compile
  const chainOf = new Map<NormalizedRule, string>();
  reserveRuleNames(all.length);
  for (const r of all) {
    const chain = ruleChainName(r.groupId, r.ruleId);
    chainOf.set(r, chain);
    if (seen.has(chain)) throw new Error(`internal: rule chain name collision for ${r.groupId}/${r.ruleId}`);
    seen.add(chain);
    ruleChains.push({
      name: chain,
      comment: comment(`${r.groupId} ${r.ruleId}: ${describeRule(r)}`),
      rules: [{ exprs: [{ kind: 'counter' }, { kind: 'verdict', verdict: r.action === 'deny' ? DROP : flowMask && r.direction === 'ingress' ? FLOW_ALLOW_VERDICT : ACCEPT }], comment: comment(`${r.groupId}/${r.ruleId}`) }],
    });
  }

  const jumps: Record<'input' | 'output', Rule[]> = { input: [], output: [] };
  for (const direction of ['ingress', 'egress'] as const) {
    for (const family of [4, 6] as const) {
      const rules = all.filter((r) => r.direction === direction && r.family === family);
      // shadowed rules match nothing first: leave them out of the maps (their chains stay, with zero hits)
      const { shadowed, layers } = layerRules(rules);
      layout.set(`${direction}${family}`, { rules, layers, shadowed });
      const byLayer = new Map<number, Map<Shape, MapElement[]>>();
      // group rules: per layer, per group, per shape: tail elements
      const groupsByLayer = new Map<number, Map<string, Map<Shape, MapElement[]>>>();
      rules.forEach((r, i) => {
        const layer = layers[i] ?? null;
        const chain = chainOf.get(r)!;
        let count = 0;
        if (layer !== null) {
          const group = r.remote.kind === 'group' ? r.remote.id : null;
          const shapes = group === null ? entry(byLayer, layer, () => new Map()) : entry(entry(groupsByLayer, layer, () => new Map()), group, () => new Map());
          for (const shape of shapesOf(r)) {
            const els = group === null ? elementsOf(r, shape, chain) : tailElementsOf(r, shape, chain);
            count += els.length;
            const list = entry(shapes, shape, (): MapElement[] => []);
            for (const e of els) list.push(e);
          }
          if (group !== null && !memberSets.has(`${family}|${group}`)) memberSets.set(`${family}|${group}`, memberSet(family, group, r));
        }
        infos.push({ chain, groupId: r.groupId, ruleId: r.ruleId, direction, action: r.action, family, layer, elements: count });
      });
      const chainName = `${direction}_v${family}`;
      const chainRules: Rule[] = [];
      const layerNums = [...new Set([...byLayer.keys(), ...groupsByLayer.keys()])].sort((a, b) => a - b);
      layerStats[chainName] = layerNums.length;
      const out: LookupTarget = { family, field: direction === 'ingress' ? 'saddr' : 'daddr', maps, rules: chainRules };
      for (const layer of layerNums) {
        emitLookups(out, byLayer.get(layer), (shape, sig) => mapName(direction, family, layer, shape, sig));
        // the same layer's group rules (disjoint from everything else in the layer: any order)
        const groups = groupsByLayer.get(layer);
        for (const groupId of [...(groups?.keys() ?? [])].sort()) {
          emitLookups(out, groups!.get(groupId), (shape, sig) => groupMapName(direction, family, layer, shape, groupId, sig), memberSetName(family, groupId));
        }
      }
      if (chainRules.length) {
        familyChains.push({ name: chainName, comment: comment(`${direction} IPv${family} rules, first match, ${layerNums.length} lookup layer(s)`), rules: chainRules });
        jumps[direction === 'ingress' ? 'input' : 'output'].push({
          exprs: [
            { kind: 'match', left: sel.nfproto, op: '==', right: v.sym(family === 4 ? 'ipv4' : 'ipv6') },
            { kind: 'verdict', verdict: jump(chainName) },
          ],
        });
      }
    }
  }

  const base = (hook: 'input' | 'output'): Chain => ({
    name: hook,
    base: { type: 'filter', hook, priority: PRIORITY_FILTER, policy: 'drop' },
    rules: [
      ...platformRules(platform, hook),
      ...statefulRules(hook),
      ...(flowMask && hook === 'input' ? [flowEntryRule()] : []),
      ...jumps[hook],
      { exprs: [{ kind: 'counter' }, { kind: 'verdict', verdict: DROP }], comment: 'default: no rule matched' },
    ],
  });

  const table: Table = { family: 'inet', name: tableName, maps: [...memberSets.values(), ...maps], chains: [base('input'), base('output'), ...(flowMask ? flowChains(flowMask, 1, false) : []), ...familyChains, ...ruleChains] };
  const digest = digestOf(table);
  table.comment = comment(`secgroup digest=${digest} revision=${policy.revision} instance=${policy.instance.id}`);
  table.marker = table.comment;
  return {
    table,
    layout,
    rules: infos,
    digest,
    stats: { rules: all.length, elements: table.maps.reduce((n, m) => n + m.elements.length, 0), layers: layerStats },
  };
}

