/**
 * The reconciler's contract (reconciler.ts, which re-exports these): what it
 * is built with, where a policy came from, what a sync did, what each
 * submission resolves with, and the state applied now. Types only.
 */
import type { FlowMarkClearer } from '../nft/conntrack.js';
import type { BurstWork } from './footprint.js';
import type { Clock } from '../lib/clock.js';
import type { SecgroupError } from '../lib/errors.js';
import type { Logger } from '../lib/logger.js';
import type { Compiled } from '../nft/compile.js';
import type { NftRunner } from '../nft/runner.js';
import type { PlatformOptions } from '../policy/platform.js';
import type { Policy } from '../policy/schema.js';
import type { AgentMetrics } from './metrics.js';
import type { StateStore } from './state-store.js';

export type PolicySource = 'disk' | 'controller' | 'drift' | 'platform' | 'local';
export type SyncKind = 'full' | 'incremental' | 'noop';

export type SyncOutcome =
  | { status: 'applied'; revision: number; kind: SyncKind; durationMs: number; digest: string; source: PolicySource }
  /** not applied now; the previous ruleset stays and a retry is scheduled */
  | { status: 'failed'; revision: number; error: SecgroupError; source: PolicySource; retryInMs: number }
  /** a newer revision arrived before this one was applied */
  | { status: 'superseded'; revision: number; by: number; source: PolicySource }
  /** older than what is applied or pending: never applied */
  | { status: 'stale'; revision: number; current: number; source: PolicySource };

export interface AppliedState {
  policy: Policy;
  revision: number;
  compiled: Compiled;
  /** the table comment in the kernel: set by the last full reload (nft cannot change a table comment in place) */
  tableComment: string | null;
  /** read-back fingerprint right after our last transaction */
  fingerprint: string;
  /** wall-clock ms of the last successful sync */
  at: number;
  kind: SyncKind;
}

export interface ReconcilerOptions {
  nft: NftRunner;
  store: StateStore;
  clock: Clock;
  logger: Logger;
  metrics: AgentMetrics;
  platform: PlatformOptions;
  /** first retry delay after a failed sync, doubled each time up to `retryMaxMs` (defaults 1 s, 60 s) */
  retryInitialMs?: number;
  retryMaxMs?: number;
  /** element-level updates when only map elements change (default true) */
  incremental?: boolean;
  /**
   * Run `nft --check` before every apply (default true). nft -f is atomic, so
   * a failing apply leaves the previous ruleset exactly as a failing check
   * would; the check only doubles the kernel work of every sync. The agent
   * turns it off (bench apply: full apply = 1.0x nft -f instead of 2x).
   */
  checkBeforeApply?: boolean;
  /** after element updates, write the last known good at most this often (default 0: after every sync; see the module comment) */
  persistCoalesceMs?: number;
  /** called for every outcome (acks, logs) */
  onOutcome?: (o: SyncOutcome) => void;
  /**
   * Called when a sync that compiles starts (every sync but a member delta),
   * with what it compiles; the function it returns when the sync ends. The
   * agent passes footprint.ts `compileBurst` (heap sizing for throughput
   * while it compiles).
   */
  heapBurst?: (work: BurstWork) => () => void;
  /**
   * Clears the flow mark's field on every connection (nft/conntrack.ts) so
   * that flow_known can be armed (nft/flow-mark.ts); absent: never armed,
   * every packet from a peer is matched against the rules
   */
  flowMarks?: FlowMarkClearer;
}

/** The flow mark as the reconciler last sent it (nft/flow-mark.ts); `mask` 0: off. */
export interface FlowMarkState {
  mask: number;
  /** the generation in the kernel's flow chains (0: none sent yet) */
  generation: number;
  /** flow_known accepts the connections of the current generation */
  armed: boolean;
  /** why it is not armed (null when armed, off, or not tried yet) */
  reason: string | null;
}
