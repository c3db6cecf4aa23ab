/**
 * The agent, assembled from its edges: `createAgent(deps)` returns an object
 * with `start()` / `stop()`; only src/cli/run.ts reads the process
 * (signals, exit). Start order matters for fail-static: nft is probed, the
 * last known good policy is applied, and only then is the controller
 * contacted, so a reboot with the controller down keeps the host protected.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { Clock, Timer } from '../lib/clock.js';
import { errorMessage } from '../lib/errors.js';
import type { Logger } from '../lib/logger.js';
import type { ScheduledJob, Scheduler } from '../lib/scheduler.js';
import { VERSION } from '../lib/version.js';
import type { NftMonitor } from '../nft/monitor.js';
import type { NftRunner } from '../nft/runner.js';
import type { ControllerEndpoint } from '../policy/platform.js';
import { checkPolicy } from '../policy/schema.js';
import type { BurstWork } from './footprint.js';
import { formatIssue } from '../lib/errors.js';
import { MAX_ACK_DURATION_MS, PROTOCOL_VERSION, boundText, type AckMessage, type PolicyDeltaMessage, type WelcomeMessage } from '../protocol/messages.js';
import { applyPolicyDelta, PolicyDeltaError } from '../protocol/delta.js';
import { ipFamily } from '../policy/address.js';
import { controllerUrls, platformOptions, type AgentConfig } from './config.js';
import { ControllerDirectory, type Resolver } from './controllers.js';
import { ControllerClient, type Dialer } from './controller-client.js';
import { AgentMetrics } from './metrics.js';
import type { PortProbe } from '../probe/port-probe.js';
import { Reconciler, type SyncOutcome } from './reconciler.js';
import { DriftMonitor } from './drift-monitor.js';
import { PortReporter } from './port-reporter.js';
import type { StateStore } from './state-store.js';
import type { ServiceManager } from './systemd.js';
import type { MemoryTrimmer } from './memtrim.js';
import type { FlowMarkClearer } from '../nft/conntrack.js';
import { hex } from '../nft/flow-mark.js';

export { resolveControllerEndpoint, type Resolver } from './controllers.js';

export interface AgentDeps {
  config: AgentConfig;
  nft: NftRunner;
  store: StateStore;
  clock: Clock;
  logger: Logger;
  scheduler: Scheduler;
  resolver: Resolver;
  /** null: no controller configured (standalone: last known good only) */
  dialer: Dialer | null;
  metrics?: AgentMetrics;
  portProbe?: PortProbe | null;
  hostname?: string;
  random?: () => number;
  /** systemd's notify protocol (READY=1, WATCHDOG=1); null/absent when not started as Type=notify */
  serviceManager?: ServiceManager | null;
  /** whether a controller token is configured now (an empty token file: not yet); default: yes */
  tokenPresent?: () => boolean;
  /** change events of our table (`nft monitor`); null/absent: drift found by the periodic check only */
  nftMonitor?: NftMonitor | null;
  /** heap sizing for throughput while a sync compiles (footprint.ts `compileBurst`; reconciler.ts `heapBurst`); absent: none */
  heapBurst?: (work: BurstWork) => () => void;
  /** gives the free C heap back after a burst of syncs (memtrim.ts); null/absent: none */
  trimmer?: MemoryTrimmer | null;
  /** clears the flow mark's field of the kernel's connections (nft/conntrack.ts) so flow_known can be armed; absent: never armed */
  flowMarks?: FlowMarkClearer;
}

export interface AgentStatus {
  ready: boolean;
  appliedRevision: number | null;
  pendingRevision: number | null;
  digest: string | null;
  controllerConnected: boolean;
  lastError: { code: string; message: string } | null;
  /** the flow mark (nft/flow-mark.ts) as last applied; null when off (platform.flow_mark_mask 0) or nothing applied yet */
  flowMark: { mask: string; generation: number; armed: boolean; reason: string | null } | null;
}

export interface Agent {
  readonly reconciler: Reconciler;
  readonly metrics: AgentMetrics;
  /** probe nft, apply the last known good policy, then start drift checks, the HTTP endpoint and the controller client */
  start(): Promise<void>;
  /** stops everything; the ruleset stays in place */
  stop(): Promise<void>;
  status(): AgentStatus;
  /** the HTTP endpoint's handler (/healthz, /readyz, /metrics) */
  handleHttp(req: IncomingMessage, res: ServerResponse): void;
  /** address the HTTP endpoint listens on, once started */
  httpAddress(): { address: string; port: number } | null;
}

function revisionOf(raw: unknown): number {
  const r = (raw as { revision?: unknown } | null)?.revision;
  return typeof r === 'number' && Number.isInteger(r) && r >= 0 ? r : 0;
}

/**
 * After member deltas (element updates), the last known good is written at
 * most this often: each write serialises the whole document (a 10k-member
 * group: ~0.3 MB, 2-5 ms of CPU and a file write; 100k: ~20 ms), which every
 * 5 s was ~1 ms of every delta in a stream of 5 a second (bench footprint,
 * bench/README.md "Issue 18 round 4"). After a crash the file may be this much
 * older than what was applied; the controller's newer revision follows on
 * the next connection.
 */
export const PERSIST_COALESCE_MS = 30_000;

export function ackFor(o: SyncOutcome): AckMessage {
  switch (o.status) {
    case 'applied':
      // the protocol's bound (a day): a figure past it would get the whole ack refused
      return { type: 'ack', revision: o.revision, status: 'applied', duration_ms: Math.min(MAX_ACK_DURATION_MS, Math.round(o.durationMs * 1000) / 1000), digest: o.digest };
    case 'failed':
      return { type: 'ack', revision: o.revision, status: 'failed', error: { code: o.error.code, message: o.error.message.slice(0, 4096) } };
    case 'superseded':
      return { type: 'ack', revision: o.revision, status: 'failed', error: { code: 'STALE_REVISION', message: `superseded by revision ${o.by} before it was applied` } };
    case 'stale':
      return { type: 'ack', revision: o.revision, status: 'failed', error: { code: 'STALE_REVISION', message: `revision ${o.revision} is older than revision ${o.current}, which this agent already has: not applied` } };
  }
}

export function createAgent(deps: AgentDeps): Agent {
  const { config, nft, store, clock, logger, scheduler, resolver } = deps;
  const metrics = deps.metrics ?? new AgentMetrics();
  let client: ControllerClient | null = null;
  let driftJob: ScheduledJob | null = null;
  let portsTimer: Timer | null = null;
  let server: Server | null = null;
  let endpoint: ControllerEndpoint | null = null;
  /** the configured controllers: the platform rule's endpoint and the control channel's targets */
  const controllers = config.controller ? new ControllerDirectory(controllerUrls(config.controller), resolver, logger) : null;
  let started = false;
  const sm = deps.serviceManager ?? null;
  let readySent = false;
  let readyTimer: Timer | null = null;
  let watchdogTimer: Timer | null = null;

  /**
   * READY=1, once: `systemctl start` (and every unit ordered after ours, such
   * as network-pre.target) waits for it, so it goes out when the first policy
   * is in the kernel, or when there is nothing to wait for.
   */
  function ready(status: string): void {
    if (!sm || readySent) return;
    readySent = true;
    readyTimer?.cancel();
    readyTimer = null;
    logger.info({ event: 'ready', status }, `ready: ${status}`);
    void sm.notify({ ready: true, status });
  }

  const reconciler = new Reconciler({
    nft,
    store,
    clock,
    logger,
    metrics,
    platform: platformOptions(config, null),
    retryInitialMs: config.retry_initial_ms,
    retryMaxMs: config.retry_max_ms,
    incremental: config.incremental,
    // nft -f is atomic: a separate --check would only double every sync's kernel work
    checkBeforeApply: false,
    // a stream of member deltas writes the whole document at most every 30 s (reconciler.ts, "Last known good")
    persistCoalesceMs: PERSIST_COALESCE_MS,
    ...(deps.heapBurst ? { heapBurst: deps.heapBurst } : {}),
    ...(deps.flowMarks ? { flowMarks: deps.flowMarks } : {}),
    onOutcome: (o) => {
      if (o.source === 'controller') {
        if (client && !client.send(ackFor(o))) logger.debug({ event: 'ack_dropped', revision: o.revision }, 'not connected: ack dropped (hello will carry the applied revision)');
      }
      // the port report: at once after a rule change or a member change that can alter a listening port, else coalesced (port-reporter.ts)
      ports.applied(o);
      deps.trimmer?.noteWork();
      if (o.status === 'applied') ready(`enforcing revision ${o.revision}`);
    },
  });

  const ports = new PortReporter({
    probe: deps.portProbe ?? null,
    clock,
    logger,
    state: () => reconciler.state,
    connected: () => client?.connected === true,
    send: (m) => client?.send(m) === true,
  });

  const driftMonitor =
    deps.nftMonitor && config.drift_monitor ? new DriftMonitor({ monitor: deps.nftMonitor, target: reconciler, clock, logger, metrics }) : null;

  async function refreshEndpoint(): Promise<void> {
    if (!controllers) return;
    const first = endpoint === null;
    if (!(await controllers.refresh()) || !config.platform.controller_rule) return;
    endpoint = controllers.endpoint();
    if (!first) logger.info({ event: 'controller_addresses', addresses: endpoint?.addresses, more: endpoint?.more }, 'controller addresses changed: updating the control-channel rule');
    reconciler.setPlatform(platformOptions(config, endpoint));
  }

  /**
   * The revision the controller's `welcome` declared on this connection when
   * it is lower than ours (its database was restored, or renumbered after a
   * repair): the next full `policy` of exactly that revision is accepted,
   * newer ones follow it. Null: none; reset on every connection.
   */
  let controllerBehind: number | null = null;

  function onWelcome(w: WelcomeMessage): void {
    controllerBehind = null;
    const ours = reconciler.newestRevision;
    if (w.desired_revision === null || ours === null || w.desired_revision >= ours) return;
    logger.warn(
      { event: 'controller_behind', desired: w.desired_revision, ours },
      `controller's revision ${w.desired_revision} is behind ours ${ours} (database restored?): accepting the controller's policy`,
    );
    controllerBehind = w.desired_revision;
  }

  function onPolicy(raw: unknown): void {
    const r = checkPolicy(raw);
    if (!r.ok) {
      const revision = revisionOf(raw);
      metrics.policiesRejected.inc();
      const message = `invalid policy, nothing applied: ${r.issues.slice(0, 20).map(formatIssue).join('; ')}`.slice(0, 4096);
      logger.error({ event: 'policy_rejected', revision, issues: r.issues.slice(0, 50) }, message);
      client?.send({ type: 'ack', revision, status: 'rejected', error: { code: 'POLICY_INVALID', message } });
      return;
    }
    if (r.policy.instance.id !== config.instance_id) {
      logger.warn({ event: 'instance_mismatch', revision: r.policy.revision }, `policy is for instance ${r.policy.instance.id}, this agent is ${config.instance_id} (applied anyway: the controller maps tokens to instances)`);
    }
    const authoritative = controllerBehind !== null && r.policy.revision === controllerBehind;
    if (authoritative) controllerBehind = null;
    void reconciler.submit(r.policy, 'controller', null, { authoritative });
  }

  /**
   * A membership delta: applied to the newest document held (it must be the
   * delta's base; otherwise, or when the delta does not fit it, ask for the
   * full document). The result is the document the controller compiled; the
   * reconciler turns the member changes into element updates when it can.
   */
  function onPolicyDelta(d: PolicyDeltaMessage): void {
    const base = reconciler.newestPolicy;
    const resync = (reason: string): void => {
      logger.warn({ event: 'resync', revision: d.revision, base: d.base_revision, have: base?.revision ?? null }, `cannot use the delta to revision ${d.revision}: ${reason}; asking for the full policy`);
      client?.send({ type: 'resync', have_revision: base?.revision ?? null, reason: reason.slice(0, 512) });
    };
    if (!base) return resync('no document to apply it to');
    for (const [gid, c] of Object.entries(d.group_members)) {
      const bad = [...c.add, ...c.remove].find((a) => ipFamily(a) === null);
      if (bad !== undefined) {
        metrics.policiesRejected.inc();
        const message = `invalid policy delta, nothing applied: group_members.${gid}: ${JSON.stringify(bad).slice(0, 100)} is not an IP address`;
        logger.error({ event: 'policy_rejected', revision: d.revision }, message);
        client?.send({ type: 'ack', revision: d.revision, status: 'rejected', error: { code: 'POLICY_INVALID', message } });
        return;
      }
    }
    let next;
    try {
      next = applyPolicyDelta(base, d);
    } catch (e) {
      if (e instanceof PolicyDeltaError) return resync(e.message);
      throw e;
    }
    ports.delta(d);
    void reconciler.submit(next, 'controller', { base: d.base_revision, groups: d.group_members });
  }

  function status(): AgentStatus {
    const st = reconciler.state;
    const flow = reconciler.flowMark;
    const err = reconciler.error;
    return {
      ready: st !== null,
      appliedRevision: st?.revision ?? null,
      pendingRevision: reconciler.pendingRevision,
      digest: st?.compiled.digest ?? null,
      controllerConnected: client?.connected ?? false,
      lastError: err ? { code: err.code, message: err.message } : null,
      flowMark: flow.mask ? { mask: hex(flow.mask), generation: flow.generation, armed: flow.armed, reason: flow.reason } : null,
    };
  }

  function handleHttp(req: IncomingMessage, res: ServerResponse): void {
    const path = (req.url ?? '/').split('?')[0];
    const send = (code: number, body: string, type = 'text/plain; charset=utf-8') => {
      res.writeHead(code, { 'content-type': type });
      res.end(body);
    };
    if (req.method !== 'GET' && req.method !== 'HEAD') return send(405, 'method not allowed\n');
    if (path === '/healthz') return send(200, 'ok\n');
    if (path === '/readyz') {
      const s = status();
      return send(s.ready ? 200 : 503, JSON.stringify(s) + '\n', 'application/json');
    }
    if (path === '/metrics') {
      void (async () => {
        await reconciler.refreshCounters();
        try {
          send(200, await metrics.registry.metrics(), metrics.registry.contentType);
        } catch (e) {
          send(500, `${errorMessage(e)}\n`);
        }
      })();
      return;
    }
    send(404, 'not found\n');
  }

  async function listen(listenAt: string): Promise<void> {
    const m = /^(?:\[(.+)\]|(.+)):(\d+)$/.exec(listenAt)!;
    const host = m[1] ?? m[2]!;
    server = createServer(handleHttp);
    await new Promise<void>((resolve, reject) => {
      server!.once('error', reject);
      server!.listen(Number(m[3]), host, () => resolve());
    });
    logger.info({ event: 'http', listen: listenAt }, `health and metrics on http://${listenAt}`);
  }

  return {
    reconciler,
    metrics,
    status,
    handleHttp,
    httpAddress() {
      const a = server?.address();
      return a && typeof a === 'object' ? { address: a.address, port: a.port } : null;
    },

    async start() {
      if (started) throw new Error('agent already started');
      started = true;
      // fed by the event loop itself: a blocked or stopped process misses its pings and systemd restarts it
      if (sm?.watchdogMs) watchdogTimer = clock.setInterval(() => void sm.notify({ watchdog: true }), sm.watchdogMs);
      const info = await nft.probe();
      if (!info.tableExists) reconciler.noteTableAbsent();
      logger.info({ event: 'start', version: VERSION, nft: info.version, table: nft.table, instance: config.instance_id }, `secgroup agent ${VERSION} (nft ${info.version})`);
      await refreshEndpoint();
      // before the first apply: its own full check, settleMs later, then finds the table as applied
      driftMonitor?.start();

      const lkg = await store.load();
      if (lkg.kind === 'ok') {
        const o = await reconciler.submit(lkg.policy, 'disk');
        if (o.status === 'applied') logger.info({ event: 'boot', revision: o.revision, durationMs: o.durationMs }, `last known good revision ${o.revision} applied before contacting the controller`);
        else logger.error({ event: 'boot_failed', revision: lkg.policy.revision }, `last known good revision ${lkg.policy.revision} could not be applied yet (retrying)`);
      } else if (lkg.kind === 'corrupt') {
        metrics.stateErrors.inc({ code: lkg.error.code });
        logger.error(
          { event: 'state_corrupt', code: lkg.error.code, movedTo: lkg.movedTo, err: lkg.error },
          `last known good state is unusable (${lkg.error.message})${lkg.movedTo ? `; kept aside as ${lkg.movedTo}` : ''}; the current ruleset (if any) stays until the controller sends a policy`,
        );
      } else {
        logger.info({ event: 'boot' }, 'no last known good policy yet; waiting for the controller');
      }

      driftJob = scheduler.schedule(config.drift_schedule, () => (driftMonitor ? driftMonitor.periodicCheck() : reconciler.checkDrift()));
      if (config.http_listen) await listen(config.http_listen);

      if (deps.dialer && config.controller) {
        const c = config.controller;
        client = new ControllerClient({
          dial: deps.dialer,
          clock,
          logger,
          ...(deps.random ? { random: deps.random } : {}),
          hello: () => ({
            type: 'hello',
            protocol: PROTOCOL_VERSION,
            instance_id: config.instance_id,
            agent_version: VERSION,
            applied_revision: reconciler.appliedRevision,
            ...(deps.hostname ? { hostname: boundText(deps.hostname, 255) } : {}),
          }),
          onPolicy,
          onPolicyDelta,
          onWelcome,
          onConnected: () => {
            controllerBehind = null;
            metrics.controllerConnected.set(1);
            // at most one port read per second also here: a controller that drops every connection at
            // once made the agent read and rate its sockets per reconnect (~0.1 s CPU each with a 25k-member group)
            ports.soon();
          },
          onDisconnected: () => {
            controllerBehind = null;
            metrics.controllerConnected.set(0);
          },
          beforeReconnect: refreshEndpoint,
          targets: () => controllers!.targets(),
          pingIntervalMs: c.ping_interval_ms,
          pongTimeoutMs: c.pong_timeout_ms,
          reconnectInitialMs: c.reconnect_initial_ms,
          reconnectMaxMs: c.reconnect_max_ms,
          maxMessageBytes: c.max_message_bytes,
        });
        client.start();
      }
      if (deps.portProbe && config.ports_interval_ms > 0) portsTimer = clock.setInterval(() => void ports.send(), config.ports_interval_ms);
      // with a last known good policy, READY=1 follows its apply (also a retried one; TimeoutStartSec= bounds the wait)
      if (sm && !readySent && lkg.kind !== 'ok') {
        const what = lkg.kind === 'corrupt' ? 'no usable last known good policy' : 'no policy yet';
        if (!client || !(deps.tokenPresent?.() ?? true)) ready(`${what} and no controller token: not enforcing`);
        // first start on this host: give the controller a moment, but never hold the boot (and the network it needs) for it
        else readyTimer = clock.setTimeout(() => ready(`${what}, none from the controller within ${config.ready_wait_ms} ms: not enforcing yet`), config.ready_wait_ms);
      }
    },

    async stop() {
      watchdogTimer?.cancel();
      readyTimer?.cancel();
      if (sm) void sm.notify({ stopping: true, status: 'stopping; the ruleset stays in place' });
      client?.stop();
      driftJob?.stop();
      portsTimer?.cancel();
      ports.stop();
      deps.trimmer?.stop();
      await driftMonitor?.stop();
      await reconciler.stop();
      if (server) {
        const s = server;
        server = null;
        s.closeAllConnections();
        await new Promise<void>((resolve) => s.close(() => resolve()));
      }
      metrics.controllerConnected.set(0);
      logger.info({ event: 'stop', revision: reconciler.appliedRevision }, 'agent stopped; the ruleset stays in place');
    },
  };
}
