/**
 * Prometheus metrics of the agent, in their own registry (no globals, so
 * tests and several agents in one process do not collide). Per-rule counters
 * are monotonic: `observeRuleCounters` adds only what grew since the last
 * read. A full reload carries nft's counts into the new table (nft/counters.ts),
 * so the growth goes on from the last read; when it could not (no table to
 * read, a read error) the reconciler resets the baselines, and a counter found
 * lower than its last read (a table replaced by hand) counts as restarted.
 */
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { Counter as NftCounter } from '../nft/readback.js';

export interface RuleKey {
  chain: string;
  group: string;
  rule: string;
  direction: string;
}

export class AgentMetrics {
  readonly registry = new Registry();
  readonly appliedRevision = new Gauge({ name: 'secgroup_applied_revision', help: 'Policy revision enforced on this host (-1: none)', registers: [this.registry] });
  readonly applyDuration = new Histogram({
    name: 'secgroup_apply_duration_seconds',
    help: 'Duration of a successful sync (compile, check, apply, verify), by kind (full, incremental)',
    labelNames: ['kind'],
    buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
    registers: [this.registry],
  });
  readonly applyFailures = new Counter({ name: 'secgroup_apply_failures_total', help: 'Failed syncs, by error code', labelNames: ['code'], registers: [this.registry] });
  readonly applies = new Counter({ name: 'secgroup_applies_total', help: 'Successful nft transactions, by kind (full, incremental)', labelNames: ['kind'], registers: [this.registry] });
  readonly driftRepairs = new Counter({ name: 'secgroup_drift_repairs_total', help: 'Times our table was found changed or missing and re-applied, by kind', labelNames: ['kind'], registers: [this.registry] });
  readonly driftMonitorUp = new Gauge({ name: 'secgroup_drift_monitor_up', help: '1 while the drift monitor (secgroup-nftwatch, or nft monitor) follows changes to our table', registers: [this.registry] });
  readonly driftMonitorRestarts = new Counter({ name: 'secgroup_drift_monitor_restarts_total', help: 'Times the drift monitor (secgroup-nftwatch, or nft monitor) ended and was started again', registers: [this.registry] });
  readonly flowMarkArmed = new Gauge({
    name: 'secgroup_flow_mark_armed',
    help: '1 while the flow mark is armed (packets of connections the current rules allowed skip them), 0 when it is not (every packet from a peer matched: see the log, flow_mark_unarmed), -1 when off or nothing is applied yet',
    registers: [this.registry],
  });
  readonly controllerConnected = new Gauge({ name: 'secgroup_controller_connected', help: '1 while the control channel is up', registers: [this.registry] });
  readonly policiesRejected = new Counter({ name: 'secgroup_policies_rejected_total', help: 'Policy documents from the controller rejected as invalid', registers: [this.registry] });
  readonly stateErrors = new Counter({ name: 'secgroup_state_errors_total', help: 'Problems with the last-known-good state file, by error code', labelNames: ['code'], registers: [this.registry] });
  readonly rulePackets = new Counter({ name: 'secgroup_rule_packets_total', help: 'Packets that hit a security group rule (with the flow mark armed, an ingress allow counts the packets it decided: each connection\'s first, and its first after every change)', labelNames: ['group', 'rule', 'direction'], registers: [this.registry] });
  readonly ruleBytes = new Counter({ name: 'secgroup_rule_bytes_total', help: 'Bytes that hit a security group rule', labelNames: ['group', 'rule', 'direction'], registers: [this.registry] });
  private readonly lastSeen = new Map<string, NftCounter>();

  constructor(opts: { processMetrics?: boolean } = {}) {
    this.appliedRevision.set(-1);
    this.controllerConnected.set(0);
    this.flowMarkArmed.set(-1);
    if (opts.processMetrics) collectDefaultMetrics({ register: this.registry, prefix: 'secgroup_agent_' });
  }

  /** The table was replaced without carrying its counters: nft counters restart at zero. */
  resetRuleBaselines(): void {
    this.lastSeen.clear();
  }

  /** Adds the growth of each rule counter since the last observation (a counter that went down restarted from zero). */
  observeRuleCounters(values: { key: RuleKey; counter: NftCounter }[]): void {
    for (const { key, counter } of values) {
      const last = this.lastSeen.get(key.chain) ?? { packets: 0, bytes: 0 };
      const dp = counter.packets >= last.packets ? counter.packets - last.packets : counter.packets;
      const db = counter.bytes >= last.bytes ? counter.bytes - last.bytes : counter.bytes;
      const labels = { group: key.group, rule: key.rule, direction: key.direction };
      this.rulePackets.inc(labels, dp);
      this.ruleBytes.inc(labels, db);
      this.lastSeen.set(key.chain, { ...counter });
    }
  }
}
