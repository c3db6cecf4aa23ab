/**
 * Names of the objects the compiler creates in our table. Contract: a name is
 * a function of what it names and nothing else (equal inputs, equal names, in
 * every process and version that keeps this file), it passes `assertName`, and
 * it never carries user text: group and rule ids may hold characters nft names
 * cannot, so they enter names only as a sha256 prefix.
 *
 *  - `r_<16 hex>`           the chain of one user rule (counter + verdict)
 *  - `g4_<12 hex>`          the member set of a remote group, per family
 *  - `in4_l0_ports_eee`     the verdict map of a lookup layer, shape and key signature
 *  - `in4_l0_ports_g<12 hex>_ee`  the map looked up after a member set
 *  - `c_<20 hex>`           the named counter of one counted rule, after its
 *                           identity (chain and comment, see counters.ts)
 *
 * Hashes are memoized in bounded caches owned by this module (see NameMemo):
 * the only state of the compiler, and one that no result depends on.
 */
import { sha256 } from '../lib/hash.js';
import type { Family } from '../policy/address.js';

/** How a lookup is keyed: `peer . l4proto . dport` (tcp/udp/sctp), `peer . icmp type . code`, `peer . l4proto` (the rest). */
export type Shape = 'ports' | 'icmp' | 'proto';

/**
 * A memo of a pure string function, bounded to `capacity` entries, least
 * recently used out first (approximately: two generations of capacity / 2,
 * the older one dropped whole when the newer fills; a hit in the older one
 * moves the entry to the newer). Why a memo: an agent compiles the same rules on
 * every sync and the controller for every instance, and each compile asks
 * for every rule's chain name twice and every group's hash once per layer
 * and shape (10k rules: 20k sha256 digests). Why bounded: rules and groups
 * come and go for the life of the process; the cap is far above the rules
 * and groups of one policy, so a compile never evicts what it is using.
 * Why generations: a hit is one Map lookup (a strict LRU re-inserted every
 * hit: 20k deletes and inserts per 10k-rule compile). A compile that uses
 * more names than a generation holds says so first (`reserve`): the
 * generation grows to hold them, else every compile of it would evict the
 * names it is about to use again (100k rules: ~0.2 s of sha256 per compile).
 * The memo thus holds at most two of the largest policy's worth of names.
 * A miss only recomputes the same name: results never depend on the cache.
 */
export class NameMemo {
  private current = new Map<string, string>();
  private older = new Map<string, string>();
  private generation: number;

  constructor(
    private readonly compute: (key: string) => string,
    readonly capacity: number,
  ) {
    this.generation = Math.max(1, Math.floor(capacity / 2));
  }

  get(key: string): string {
    let value = this.current.get(key);
    if (value !== undefined) return value;
    value = this.older.get(key);
    if (value === undefined) value = this.compute(key);
    else this.older.delete(key);
    if (this.current.size >= this.generation) {
      this.older = this.current;
      this.current = new Map();
    }
    this.current.set(key, value);
    return value;
  }

  /** The next uses need `entries` values at once: a generation grows to hold them (it never shrinks). */
  reserve(entries: number): void {
    this.generation = Math.max(this.generation, entries);
  }

  get size(): number {
    return this.current.size + this.older.size;
  }
}

const sha256Hex = (text: string, digits: number): string => sha256(text).slice(0, digits);

/** Entries per memo (about 100 bytes each). */
export const NAME_MEMO_CAPACITY = 100_000;

/** 12 hex digits of sha256(group id). */
const groupHashes = new NameMemo((groupId) => sha256Hex(groupId, 12), NAME_MEMO_CAPACITY);
/** key `${groupId}\0${ruleId}` */
const chainNames = new NameMemo((key) => 'r_' + sha256Hex(key, 16), NAME_MEMO_CAPACITY);
/** key `${chain}\n${comment}` (counters.ts counterKey) */
const counterNames = new NameMemo((key) => 'c_' + sha256Hex(key, 20), NAME_MEMO_CAPACITY);

/** A compile of `rules` rules is about to name each rule's chain and counter. */
export function reserveRuleNames(rules: number): void {
  chainNames.reserve(rules);
  counterNames.reserve(rules);
}

const dir = (direction: 'ingress' | 'egress'): string => (direction === 'ingress' ? 'in' : 'out');

/** Name of the verdict map of one lookup layer, shape and key signature, e.g. `in4_l0_ports_eee`. */
export function mapName(direction: 'ingress' | 'egress', family: Family, layer: number, shape: Shape, sig: string): string {
  return `${dir(direction)}${family}_l${layer}_${shape}_${sig}`;
}

/** Name of the member set of a remote group, per family, e.g. `g4_3f2a...`. */
export function memberSetName(family: Family, groupId: string): string {
  return `g${family}_${groupHashes.get(groupId)}`;
}

/** Name of the map looked up after a member set (`g<hash>` names the group). */
export function groupMapName(direction: 'ingress' | 'egress', family: Family, layer: number, shape: Shape, groupId: string, sig: string): string {
  return `${dir(direction)}${family}_l${layer}_${shape}_g${groupHashes.get(groupId)}_${sig}`;
}

/** Name of the chain of one user rule (unique per group and rule id; compilePolicy checks collisions). */
export function ruleChainName(groupId: string, ruleId: string): string {
  return chainNames.get(`${groupId}\0${ruleId}`);
}

/** Name of the counter object of the rule whose identity is `key` (counters.ts `counterKey`: chain and comment). */
export function counterObjectName(key: string): string {
  return counterNames.get(key);
}
