/**
 * The flow mark: a packet of an inbound connection that the current rules
 * already allowed is accepted without matching them again.
 *
 * SEMANTICS section 3: a policy change applies to existing inbound-initiated
 * connections at their next packet from the peer, so the ingress chain
 * cannot accept `ct state established` in the original direction the way
 * plain conntrack does. Matched in full, every such packet costs the policy
 * lookups: a short TCP connection pays them three times (SYN, the
 * handshake's last ACK, the FIN or RST) where conntrack alone pays them
 * never (issue 18 item 6: 0.89-0.90x the conntrack-only floor at 10k rules).
 *
 * The flow mark keeps the verdict on the connection instead. A field of the
 * conntrack mark (`mask`, DEFAULT_FLOW_MARK_MASK: the other bits are left to
 * other software) holds the *generation* of the rules that allowed it. The
 * agent gives every transaction it sends a new generation, so a connection
 * that carries the current one is allowed by the rules in place (the one
 * exception: element updates that cannot deny an allowed connection keep
 * the generation, nft/diff.ts `elementUpdateNarrows`, agent/reconciler.ts):
 *
 *     input:      ... ct state established ct direction original jump flow_known
 *     flow_known: ct mark and 0xffff0000 == 0x00070000 accept       (armed; empty when not)
 *     flow_allow: ct mark set ct mark and 0x0000ffff or 0x00070000 accept
 *     r_<an ingress allow rule>: counter name "c_..." jump flow_allow
 *
 * Any other original-direction packet is matched against the rules, and an
 * allow marks its connection with the current generation. Deny and the
 * default drop leave the mark alone: an older generation never matches.
 *
 * Generations are unique within an *epoch*. When the field would wrap, and
 * when the agent starts (it cannot know which values the kernel's
 * connections carry), it applies generation 1 unarmed (flow_known empty,
 * flow_allow writing 0), clears
 * the field on every connection (`conntrack -U`, conntrack.ts), and only
 * then fills flow_known ("arms" it). A connection allowed in an earlier
 * epoch, denied since and silent from the peer's side, can thus never meet
 * its old value again. Without conntrack(8) the agent stays unarmed: every
 * packet is matched against the rules as before, only at the old cost.
 *
 * What users see change: a rule's counter counts the packets the rules
 * decided (a connection's first packet, and its first after each change),
 * not every packet of the connection; `ct mark` of inbound connections
 * carries our field.
 */
import { DEFAULT_FLOW_MARK_MASK } from '../policy/platform.js';
import { ACCEPT, jump, sel, v, type Chain, type Rule, type Table, type Verdict } from './model.js';
import type { NftOp } from './transaction.js';

export { DEFAULT_FLOW_MARK_MASK };

/** The chain that accepts a packet whose connection the current rules allowed (empty until armed). */
export const FLOW_KNOWN = 'flow_known';
/** The chain every ingress allow rule jumps to: marks the connection with the generation, accepts. */
export const FLOW_ALLOW = 'flow_allow';
/** A field narrower than this would start a new epoch (a conntrack sweep) every few hundred changes. */
export const MIN_FLOW_MARK_BITS = 8;

function lowestBit(mask: number): number {
  return 31 - Math.clz32(mask & -mask);
}

/** Why `mask` cannot hold the flow mark (null: it can, or it is 0, which turns the flow mark off). */
export function flowMaskError(mask: number): string | null {
  if (!Number.isInteger(mask) || mask < 0 || mask > 0xffffffff) return 'must be a 32-bit mask, e.g. 0xffff0000 (0 turns the flow mark off)';
  if (mask === 0) return null;
  const field = mask >>> lowestBit(mask);
  if ((field & (field + 1)) !== 0) return `${hex(mask)} is not one run of contiguous bits, e.g. 0xffff0000`;
  if (Math.clz32(field) > 32 - MIN_FLOW_MARK_BITS) return `${hex(mask)} has fewer than ${MIN_FLOW_MARK_BITS} bits`;
  return null;
}

/** A mask as the config and the CLI take it: a number, or text in hex ("0xffff0000") or decimal. */
export function parseFlowMask(x: number | string): { ok: true; mask: number } | { ok: false; error: string } {
  const text = typeof x === 'string' ? x.trim() : null;
  if (text !== null && !/^(?:0x[0-9a-fA-F]{1,8}|\d{1,10})$/.test(text)) return { ok: false, error: 'must be a mask such as "0xffff0000", or 0 (off)' };
  const mask = text === null ? (x as number) : Number(text);
  const error = flowMaskError(mask);
  return error === null ? { ok: true, mask } : { ok: false, error };
}

/** `0x` and 8 hex digits. */
export function hex(n: number): string {
  return `0x${(n >>> 0).toString(16).padStart(8, '0')}`;
}

/** The highest generation the field under `mask` holds (generations run 1..this; 0 is "none"). */
export function maxGeneration(mask: number): number {
  return mask >>> lowestBit(mask);
}

/** The mark bits of generation `gen` under `mask`. */
export function generationValue(mask: number, gen: number): number {
  if (!Number.isInteger(gen) || gen < 1 || gen > maxGeneration(mask)) throw new Error(`internal: flow generation ${gen} outside 1-${maxGeneration(mask)}`);
  return (gen * 2 ** lowestBit(mask)) >>> 0;
}

/** The input chain's rule that sends established packets from the peer to flow_known (after the stateful rules). */
export function flowEntryRule(): Rule {
  return {
    exprs: [
      { kind: 'match', left: sel.ctState, op: '==', right: v.sym('established') },
      { kind: 'match', left: sel.ctDirection, op: '==', right: v.sym('original') },
      { kind: 'verdict', verdict: jump(FLOW_KNOWN) },
    ],
    comment: 'flow mark: connections the current rules allowed',
  };
}

/** The verdict of an ingress allow rule when the flow mark is on. */
export const FLOW_ALLOW_VERDICT: Verdict = jump(FLOW_ALLOW);

/**
 * flow_known and flow_allow for generation `gen`. Unarmed, flow_known is
 * empty and flow_allow keeps the field at 0 (no write for a new connection,
 * whose mark is 0): nothing is marked while the epoch's sweep runs, so the
 * sweep has only older marks to clear (conntrack.ts: a big table that
 * changes fast makes it fail), and an allowed packet of an old connection
 * clears its stale mark on the way.
 */
export function flowChains(mask: number, gen: number, armed: boolean): [Chain, Chain] {
  const generationBits = generationValue(mask, gen);
  const value = armed ? generationBits : 0;
  const known: Chain = {
    name: FLOW_KNOWN,
    // the chain comments stay as the first apply made them (a restore flushes rules, not comments): no generation in them
    comment: `flow mark: connections allowed under the current generation (mark bits ${hex(mask)}), empty until the agent arms it`,
    rules: armed
      ? [{ exprs: [{ kind: 'match', left: { kind: 'ct', key: 'mark', mask }, op: '==', right: v.num(generationBits) }, { kind: 'verdict', verdict: ACCEPT }], comment: `flow mark: allowed under generation ${gen}` }]
      : [],
  };
  const allow: Chain = {
    name: FLOW_ALLOW,
    comment: `flow mark: an allowed connection gets the current generation once armed (mark bits ${hex(mask)})`,
    rules: [{ exprs: [{ kind: 'ct-mark-set', mask, value }, { kind: 'verdict', verdict: ACCEPT }], comment: armed ? `flow mark: generation ${gen}` : `flow mark: not armed, kept at 0 (generation ${gen})` }],
  };
  return [known, allow];
}

/** Is `name` one of the flow mark's chains (whose rules carry the agent's generation, not the policy)? */
export function isFlowChain(name: string): boolean {
  return name === FLOW_KNOWN || name === FLOW_ALLOW;
}

/**
 * Where flow_known and flow_allow are in `table.chains` (-1: absent). The
 * compiler puts them right after the base chains, so this is two looks,
 * not a scan of every rule chain (it runs on every member delta).
 */
function flowIndexes(table: Table): [number, number] {
  const at = (name: string, guess: number) => (table.chains[guess]?.name === name ? guess : table.chains.findIndex((c) => c.name === name));
  return [at(FLOW_KNOWN, 2), at(FLOW_ALLOW, 3)];
}

/** The flow mark mask of a compiled table (0: the table has no flow mark). */
export function flowMaskOf(table: Table): number {
  const i = flowIndexes(table)[1];
  const set = i < 0 ? undefined : table.chains[i]!.rules[0]?.exprs[0];
  return set?.kind === 'ct-mark-set' ? set.mask : 0;
}

/**
 * Puts generation `gen` (armed or not) into the flow chains of `table`, in
 * place: the two chain objects are replaced in `table.chains` (never
 * edited, so a copy of the table made earlier keeps the ones it had). False
 * when the table has no flow mark.
 */
export function setFlowGeneration(table: Table, gen: number, armed: boolean): boolean {
  const mask = flowMaskOf(table);
  if (!mask) return false;
  const [k, a] = flowIndexes(table);
  if (k < 0) return false;
  [table.chains[k], table.chains[a]] = flowChains(mask, gen, armed);
  return true;
}

/** Restores of the flow chains of `table` as they are now (flush and add: no counters in them), for a transaction that keeps the rest. */
export function flowChainOps(table: Table): NftOp[] {
  return flowIndexes(table)
    .filter((i) => i >= 0)
    .map((i): NftOp => ({ op: 'restore-chain', family: table.family, table: table.name, chain: table.chains[i]! }));
}
