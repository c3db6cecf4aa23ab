/**
 * The agent hub: WebSocket endpoint `/v1/agent` (protocol: src/protocol/messages.ts).
 *
 * - The upgrade is accepted only with a valid instance token (`Authorization:
 *   Bearer`); the instance is derived from the token, never from the client,
 *   so a token for instance X can only ever receive X's policy and report
 *   for X (a hello naming another instance is refused).
 * - One live connection per instance: a new one replaces the old (close 4000).
 * - On hello the controller answers `welcome` and the current `policy`,
 *   unless the agent reports the desired revision and its stored state says
 *   it applied that revision (a number alone is no proof after a restore of
 *   an older backup: docs/ha.md, "Backup and restore"); the hello's one
 *   agent-state write returns what the state held, so no read precedes it. No revision
 *   an agent reports is trusted above what was handed out for its instance
 *   (`revision_ahead`: recorded on that instance only, never stored as
 *   applied, never fed to the revision counter). After an
 *   API change the new document is pushed to connected agents of affected
 *   instances only: as a `policy_delta` when it differs from the last
 *   document sent on the connection only in its revision and member lists
 *   (and deltas are enabled), else in full. A `resync` gets the full document.
 *   What goes into those frames (full or delta, digests, the caches shared
 *   between the documents of one change) is decided in push-documents.ts;
 *   this file only handles the connections that carry it.
 * - Frames are bounded in size (ws `maxPayload`) and rate (token bucket per
 *   connection); liveness uses ping/pong every heartbeat interval.
 * - With `events`, what the hub stores about an instance (hello, ack, port
 *   report, disconnect) is also published as a console event (events.ts),
 *   after the store write, on the connection's queue: read back from the
 *   store only when someone watches the project.
 * - Several replicas (issue 16): a commit here announces its highest revision
 *   on the change feed; a hint from the feed makes the hub read what other
 *   replicas committed (hub-catch-up.ts) and push it to its own agents, never
 *   a revision at or below what the connection already has. Where the agent
 *   is connected is kept in its stored state (`connected_to`, refreshed with
 *   `last_seen` every heartbeat), so every replica's API can tell.
 * - Fail-static when the store is unavailable: connected agents stay (their
 *   acks, port reports and heartbeats are kept in memory, one entry per
 *   instance, and written when the store answers again:
 *   agent-state-buffer.ts), an upgrade is refused with 503 and a
 *   Retry-After, a hello that cannot be answered is closed with 1013 (try
 *   again later) and its reason, which the agent logs before it reconnects.
 *
 * Size: one class owns the agent connections (upgrade, hello, frames, sends,
 * heartbeats, catch-up offers), all over the same sessions; what to push
 * (push-documents.ts), who may connect (hub-upgrade.ts), per-connection state
 * (hub-session.ts) and the replica catch-up (hub-catch-up.ts) are apart.
 */
import type { IncomingMessage, Server as HttpServer } from 'node:http';
import type { Duplex } from 'node:stream';
import { WebSocketServer, WebSocket, type RawData } from 'ws';
import type { Clock, Timer } from '../lib/clock.js';
import type { Logger } from '../lib/logger.js';
import { errorMessage, isSecgroupError } from '../lib/errors.js';
import { formatTime } from '../lib/time.js';
import {
  MAX_MESSAGE_BYTES,
  PROTOCOL_VERSION,
  agentMessageSchema,
  decode,
  type AckMessage,
  type AgentMessage,
  type HelloMessage,
  type PortsMessage,
  type ResyncMessage,
  type WelcomeMessage,
} from '../protocol/messages.js';
import type { AcceptRateLimiter, AuthFailureLimiter } from './limits.js';
import type { AuditRecorder } from './audit.js';
import type { ControllerMetrics } from './metrics.js';
import { publishInstanceState, type ProjectEvents } from './events.js';
import { CLOSE, Session, sessionKey } from './hub-session.js';
import { PushDocuments, type SentDocument } from './push-documents.js';
import type { AgentErrorRecord, AgentState, PolicyChange, Store, StoredPolicy } from './store/store.js';
import { noopFeed, type ChangeFeed } from './change-feed.js';
import { ReplicaCatchUp } from './hub-catch-up.js';
import { UpgradeGate, reject } from './hub-upgrade.js';
import { AgentStateBuffer } from './agent-state-buffer.js';

export { CLOSE } from './hub-session.js';

/** `agents.max_unsent_bytes` by default. */
export const DEFAULT_MAX_UNSENT_BYTES = 64 * 1024 * 1024;

export interface HubOptions {
  store: Store;
  clock: Clock;
  logger: Logger;
  metrics: ControllerMetrics;
  heartbeatIntervalMs: number;
  helloTimeoutMs: number;
  /** largest frame accepted from an agent */
  maxMessageBytes: number;
  /** token bucket per connection: `burst` frames, refilled at `perSecond` */
  rate: { burst: number; perSecond: number };
  /**
   * bytes queued to an agent and not yet taken by its socket above which the
   * agent counts as not reading and is dropped (default 64 MiB)
   */
  maxUnsentBytes?: number;
  /** send membership-only changes as `policy_delta` (default true) */
  deltas?: boolean;
  /** failed authentications per source address, shared with the HTTP API (none: unlimited) */
  authLimiter?: AuthFailureLimiter;
  /** records connects, disconnects and refused tokens (src/controller/audit.ts) */
  audit?: AuditRecorder;
  /** live events for the console (instance state, port reports); none when absent */
  events?: ProjectEvents;
  /** new agent connections per second (`agents.accept_rate_per_s`); none: unlimited */
  acceptLimiter?: AcceptRateLimiter;
  /** hints of policies committed through other replicas (default: none, a single controller) */
  feed?: ChangeFeed;
  /** this replica's name in agent states (`connected_to`); default `local` */
  replicaId?: string;
}


export class AgentHub {
  private readonly wss: WebSocketServer;
  private readonly sessions = new Map<string, Session>();
  private heartbeat: Timer | null = null;
  private stopping = false;
  private readonly log: Logger;
  /** what to push: frames, deltas and their caches (push-documents.ts) */
  private readonly docs: PushDocuments;
  private readonly feed: ChangeFeed;
  private readonly catchUp: ReplicaCatchUp | null;
  private readonly gate: UpgradeGate;
  /** acks, reports and heartbeats of connected agents: held while the store is unavailable, written when it is back */
  private readonly states: AgentStateBuffer;
  private unsubscribeFeed: (() => void) | null = null;
  readonly replicaId: string;

  constructor(private readonly o: HubOptions) {
    this.wss = new WebSocketServer({ noServer: true, maxPayload: o.maxMessageBytes, perMessageDeflate: false });
    this.log = o.logger.child({ component: 'hub' });
    this.docs = new PushDocuments({ deltas: o.deltas ?? true });
    this.feed = o.feed ?? noopFeed;
    this.replicaId = o.replicaId ?? 'local';
    this.gate = new UpgradeGate({ store: o.store, metrics: o.metrics, log: this.log, ...(o.authLimiter ? { authLimiter: o.authLimiter } : {}), ...(o.acceptLimiter ? { acceptLimiter: o.acceptLimiter } : {}), ...(o.audit ? { audit: o.audit } : {}) });
    this.states = new AgentStateBuffer({ store: o.store, logger: this.log });
    this.catchUp = o.feed ? new ReplicaCatchUp({ store: o.store, feed: o.feed, logger: this.log, offer: (c) => this.offer(c) }) : null;
  }

  /** Serves `/v1/agent` upgrades of `server` and starts the heartbeat. */
  attach(server: HttpServer): void {
    server.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) => {
      socket.on('error', () => socket.destroy());
      this.upgrade(req, socket, head).catch((e: unknown) => {
        this.log.error({ event: 'upgrade', err: e }, 'agent upgrade failed');
        reject(socket, { status: 500, code: 'SG.0500', message: 'internal error' });
      });
    });
    this.heartbeat = this.o.clock.setInterval(() => this.beat(), this.o.heartbeatIntervalMs);
    // the feed reconnected: the database is back, write what agents reported meanwhile
    this.unsubscribeFeed = this.feed.subscribe((h) => void (h.kind === 'resync' && this.states.flush()));
    this.catchUp?.start();
  }

  /** Runs a catch-up on policies committed through other replicas now (what a feed hint does); resolves when it is done. */
  catchUpNow(): Promise<void> {
    return this.catchUp?.run() ?? Promise.resolve();
  }

  /**
   * Is the instance's agent connected to another replica, as its stored state
   * says? `connected_to` names a replica other than this one and `last_seen`
   * (refreshed every heartbeat by that replica) is recent.
   */
  connectedElsewhere(state: AgentState): boolean {
    if (state.connected_to === null || state.connected_to === this.replicaId || state.last_seen === null) return false;
    return this.o.clock.now() - Date.parse(state.last_seen) <= 3 * this.o.heartbeatIntervalMs;
  }

  get connectedCount(): number {
    return [...this.sessions.values()].filter((s) => s.helloed).length;
  }

  isConnected(projectId: string, instanceId: string): boolean {
    return this.sessions.get(sessionKey(projectId, instanceId))?.helloed ?? false;
  }

  /** Last time the connected agent was heard from (frames or pongs); null when not connected. */
  lastSeen(projectId: string, instanceId: string): string | null {
    const s = this.sessions.get(sessionKey(projectId, instanceId));
    return s ? formatTime(s.lastSeenMs) : null;
  }

  /**
   * Pushes the current document of each instance to its agent, if connected
   * and not already sent. `policies` (the documents just committed) spares
   * reading them back from the store; without it they are read.
   */
  notify(projectId: string, instanceIds: readonly string[], policies?: ReadonlyMap<string, StoredPolicy>): void {
    let highest = -1;
    for (const p of policies?.values() ?? []) highest = Math.max(highest, p.revision);
    if (highest >= 0) this.feed.announce(highest);
    for (const id of instanceIds) {
      const s = this.sessions.get(sessionKey(projectId, id));
      if (!s || !s.helloed) continue;
      const given = policies?.get(id);
      if (given && (!s.pending || given.revision > s.pending.revision)) s.pending = given;
      this.enqueue(s, async () => {
        let p: StoredPolicy | null;
        if (given) {
          // the newest handed-over document; null when an earlier task already sent it
          p = s.pending;
          s.pending = null;
        } else p = await this.o.store.getPolicy(projectId, id);
        if (p && p.revision > s.lastSentRevision) this.sendChange(s, p);
      });
    }
  }

  /** Closes the instance's connection (its token was rotated or it was deleted). */
  disconnect(projectId: string, instanceId: string, why: 'revoked' | 'deleted'): void {
    const s = this.sessions.get(sessionKey(projectId, instanceId));
    if (!s) return;
    this.log.info({ event: 'disconnect', project: projectId, instance: instanceId, why }, 'closing agent connection');
    s.ws.close(why === 'revoked' ? CLOSE.revoked : CLOSE.deleted, why === 'revoked' ? 'token rotated' : 'instance deleted');
  }

  /**
   * Policies another replica handed out (hub-catch-up.ts): those whose agent
   * is here and has not got them are read in one `getPolicies` per project
   * (not one read per agent: a change to a whole fleet is thousands of
   * documents sharing a few tails, which come as one string each and are
   * encoded once), then pushed.
   *
   * `attempt`: reads of these changes that failed so far. The catch-up's
   * watermark is already past them, so no later hint offers them again: a
   * failed read (a pool wait timed out under a storm of acks, the database
   * away) is retried here, with doubling delays up to 5 s, until the
   * documents are sent or the agents have them (or left).
   */
  private offer(changes: readonly PolicyChange[], attempt = 0): void {
    const byProject = new Map<string, PolicyChange[]>();
    for (const c of changes) {
      const s = this.sessions.get(sessionKey(c.projectId, c.instanceId));
      if (this.stopping || !s || !s.helloed || c.revision <= s.lastSentRevision || (s.pending && s.pending.revision >= c.revision)) continue;
      const list = byProject.get(c.projectId) ?? [];
      if (!list.length) byProject.set(c.projectId, list);
      list.push(c);
    }
    for (const [projectId, list] of byProject) void this.readAndPush(projectId, list, attempt);
  }

  private async readAndPush(projectId: string, list: PolicyChange[], attempt: number): Promise<void> {
    let docs: Map<string, StoredPolicy>;
    try {
      docs = await this.o.store.getPolicies(projectId, list.map((c) => c.instanceId));
    } catch (e) {
      const delay = Math.min(5_000, 500 * 2 ** attempt);
      const revisions = list.map((c) => c.revision);
      this.log.warn(
        { event: 'catch_up_offer_failed', project: projectId, instances: list.length, first_instance: list[0]!.instanceId, revision: Math.max(...revisions), attempt: attempt + 1, retry_ms: delay, err: e },
        `cannot read ${list.length} documents (revisions ${Math.min(...revisions)}..${Math.max(...revisions)}) committed by another replica: ${errorMessage(e)} (retried in ${delay} ms)`,
      );
      void this.o.clock.sleep(delay).then(() => this.offer(list, attempt + 1));
      return;
    }
    for (const c of list) {
      const s = this.sessions.get(sessionKey(projectId, c.instanceId));
      const p = docs.get(c.instanceId);
      // read now: the current document, at least as new as the change (revisions only grow)
      if (!s || !p) continue;
      this.enqueue(s, async () => {
        if (p.revision > s.lastSentRevision) this.sendChange(s, p);
      });
    }
  }

  async stop(): Promise<void> {
    this.stopping = true;
    this.unsubscribeFeed?.();
    await this.catchUp?.stop();
    this.heartbeat?.cancel();
    const sessions = [...this.sessions.values()];
    for (const s of sessions) s.ws.close(CLOSE.goingAway, 'controller shutting down');
    const grace = this.o.clock.sleep(2000);
    await Promise.race([Promise.all(sessions.map((s) => s.closed)), grace]);
    for (const s of sessions) if (s.ws.readyState !== WebSocket.CLOSED) s.ws.terminate();
    await Promise.all(sessions.map((s) => s.queue));
    // a last try for what an outage left (the store is closed after the hub)
    await this.states.flush();
    await new Promise<void>((resolve) => this.wss.close(() => resolve()));
  }

  // ---- connection setup ----

  private async upgrade(req: IncomingMessage, socket: Duplex, head: Buffer): Promise<void> {
    const a = await this.gate.admit(req, this.stopping);
    if (!a.ok) return reject(socket, a.refusal);
    this.wss.handleUpgrade(req, socket, head, (ws) => {
      const who = { ...a.facts, projectId: a.owner.projectId, instanceId: a.owner.instanceId };
      this.o.audit?.agent('connected', { ...who, detail: null });
      ws.once('close', (code: number) => this.o.audit?.agent('disconnected', { ...who, detail: `close code ${code}` }));
      this.connected(ws, a.owner.projectId, a.owner.instanceId);
    });
  }

  private connected(ws: WebSocket, projectId: string, instanceId: string): void {
    const key = sessionKey(projectId, instanceId);
    const s = new Session(key, projectId, instanceId, ws, this.o.clock.now(), this.o.clock.monotonic(), this.o.rate.burst);
    const old = this.sessions.get(key);
    if (old) {
      this.log.info({ event: 'replace', project: projectId, instance: instanceId }, 'a new connection replaces the old one');
      old.ws.close(CLOSE.replaced, 'replaced by a newer connection');
    }
    this.sessions.set(key, s);
    this.log.info({ event: 'connect', project: projectId, instance: instanceId }, 'agent connected');
    s.helloTimer = this.o.clock.setTimeout(() => {
      if (!s.helloed) this.violation(s, 'hello_timeout', `no hello within ${this.o.helloTimeoutMs} ms`);
    }, this.o.helloTimeoutMs);
    ws.on('message', (data: RawData, isBinary: boolean) => this.frame(s, data, isBinary));
    ws.on('pong', () => {
      s.alive = true;
      s.lastSeenMs = this.o.clock.now();
    });
    ws.on('error', (e: Error) => {
      if (/max payload/i.test(e.message)) this.o.metrics.agentMessagesRejected.inc({ reason: 'too_large' });
      this.log.warn({ event: 'ws_error', project: projectId, instance: instanceId, err: e }, 'agent connection error');
    });
    ws.on('close', (code: number) => this.closed(s, code));
  }

  private closed(s: Session, code: number): void {
    s.helloTimer?.cancel();
    if (this.sessions.get(s.key) === s) this.sessions.delete(s.key);
    this.o.metrics.agentsConnected.set(this.connectedCount);
    this.log.info({ event: 'disconnect', project: s.projectId, instance: s.instanceId, code }, 'agent disconnected');
    if (s.helloed) {
      this.enqueue(s, async () => {
        await this.recordGone(s);
        await this.publishInstance(s);
      });
    }
  }

  /** The instance's state as the store now has it, to the console (events.ts; only when the project is watched). */
  private publishInstance(s: Session): Promise<void> {
    return this.o.events ? publishInstanceState(this.o.events, this.o.store, s.projectId, s.instanceId, this.isConnected(s.projectId, s.instanceId)) : Promise.resolve();
  }

  /** The agent left this replica: its last contact, and no longer `connected_to` here (unless it already moved on). */
  private async recordGone(s: Session): Promise<void> {
    const st = await this.o.store.getAgentState(s.projectId, s.instanceId);
    const here = st?.connected_to === this.replicaId && !this.isConnected(s.projectId, s.instanceId);
    await this.o.store.updateAgentState(s.projectId, s.instanceId, { last_seen: formatTime(s.lastSeenMs), ...(here ? { connected_to: null } : {}) });
  }

  private beat(): void {
    // backstop for the feed's resync (none without replicas)
    void this.states.flush();
    for (const s of this.sessions.values()) {
      if (!s.alive) {
        this.log.warn({ event: 'heartbeat', project: s.projectId, instance: s.instanceId }, 'no pong since the last ping, dropping the connection');
        s.ws.terminate();
        continue;
      }
      s.alive = false;
      s.ws.ping();
      // with replicas, the others' APIs tell a connected agent by a recent last_seen naming this replica
      if (this.catchUp && s.helloed) {
        const at = formatTime(s.lastSeenMs);
        this.enqueue(s, async () => void (await this.states.update(s.projectId, s.instanceId, { last_seen: at, connected_to: this.replicaId })));
      }
    }
  }

  // ---- frames ----

  private frame(s: Session, data: RawData, isBinary: boolean): void {
    const now = this.o.clock.monotonic();
    s.tokens = Math.min(this.o.rate.burst, s.tokens + ((now - s.refilledAt) / 1000) * this.o.rate.perSecond);
    s.refilledAt = now;
    // an ack answers one of our frames: however fast documents are pushed, the agent may answer each
    if (s.answers > 0) s.answers--;
    else if (s.tokens < 1) return this.violation(s, 'rate', `more than ${this.o.rate.burst} frames in a burst (limit ${this.o.rate.perSecond}/s)`);
    else s.tokens -= 1;
    s.lastSeenMs = this.o.clock.now();
    if (isBinary) return s.helloed ? this.refuse(s, 'binary', 'binary frames are not accepted; send JSON text') : this.violation(s, 'binary', 'expected hello: binary frames are not accepted; send JSON text');
    const text = Buffer.isBuffer(data) ? data.toString('utf8') : Array.isArray(data) ? Buffer.concat(data).toString('utf8') : Buffer.from(data).toString('utf8');
    const d = decode(agentMessageSchema, text);
    if (!d.ok) return s.helloed ? this.refuse(s, 'invalid', d.error) : this.violation(s, 'invalid', `expected hello: ${d.error}`);
    const msg: AgentMessage = d.message;
    if (!s.helloed && msg.type !== 'hello') return this.violation(s, 'no_hello', `the first frame must be a hello, got ${msg.type}`);
    this.enqueue(s, () => this.handle(s, msg));
  }

  private async handle(s: Session, msg: AgentMessage): Promise<void> {
    switch (msg.type) {
      case 'hello':
        return this.hello(s, msg).catch((e: unknown) => {
          // nothing was sent yet: the hello's store calls all come before its welcome
          if (!isSecgroupError(e, 'STORE_UNAVAILABLE')) throw e;
          this.tryAgainLater(s, e.message);
        });
      case 'ack':
        return this.ack(s, msg);
      case 'ports':
        return this.ports(s, msg);
      case 'resync':
        return this.resync(s, msg);
    }
  }

  private async hello(s: Session, msg: HelloMessage): Promise<void> {
    if (s.helloed) return this.refuse(s, 'duplicate_hello', 'hello was already received on this connection');
    if (msg.protocol !== PROTOCOL_VERSION) {
      return this.violation(s, 'protocol', `protocol version ${msg.protocol} is not supported; this controller speaks ${PROTOCOL_VERSION}`);
    }
    if (msg.instance_id !== s.instanceId) {
      return this.violation(s, 'wrong_instance', `this token belongs to instance ${JSON.stringify(s.instanceId)}, not ${JSON.stringify(msg.instance_id)}`, 'FORBIDDEN');
    }
    s.helloed = true;
    s.helloTimer?.cancel();
    this.o.metrics.agentsConnected.set(this.connectedCount);
    const now = formatTime(this.o.clock.now());
    const policy = await this.o.store.getPolicy(s.projectId, s.instanceId);
    s.handedOut = policy?.revision ?? -1;
    const applied = msg.applied_revision;
    // The stored revision is the highest ever handed out for this instance (revisions only grow): a higher one is a
    // lie or a database restored from a backup. It is recorded on this instance only and never stored as applied;
    // the current document is sent anyway, and the agent accepts the controller's lower revision (docs/protocol.md).
    const ahead = applied !== null && applied > s.handedOut;
    // The same number is not proof of the same document: after a restore of an older backup the counter hands out
    // numbers again, so an agent away since then may hold another document under the current revision. Nothing is
    // sent only when the store says this agent applied exactly this revision (an equal revision is applied by the agent):
    // what the store held before this hello's write, returned by that write.
    const before = await this.o.store.updateAgentState(s.projectId, s.instanceId, {
      agent_version: msg.agent_version,
      hostname: msg.hostname ?? null,
      last_seen: now,
      connected_to: this.replicaId,
      ...(ahead ? { applied_revision: null, last_error: this.revisionAhead(s, 'hello', applied, now) } : {}),
    });
    if (!before) return this.violation(s, 'deleted', 'the instance no longer exists');
    const inSync = policy !== null && applied === policy.revision && before.applied_revision === applied;
    const welcome: WelcomeMessage = { type: 'welcome', protocol: PROTOCOL_VERSION, instance_id: s.instanceId, desired_revision: policy?.revision ?? null };
    this.send(s, JSON.stringify(welcome));
    this.log.info({ event: 'hello', project: s.projectId, instance: s.instanceId, applied, desired: policy?.revision ?? null, version: msg.agent_version }, 'agent hello');
    await this.publishInstance(s);
    if (policy && !inSync) this.sendPolicy(s, policy, 'hello');
    // the agent has the current document: a catch-up must not send it again
    else if (policy) s.lastSentRevision = policy.revision;
  }

  /** A hello this replica cannot answer now (its store is unavailable): an error frame, then close 1013; the agent retries. */
  private tryAgainLater(s: Session, why: string): void {
    s.helloed = false;
    this.o.metrics.agentMessagesRejected.inc({ reason: 'store_unavailable' });
    const message = `the controller database is unavailable (${why}): try again later or another controller`;
    this.log.warn({ event: 'hello_refused', project: s.projectId, instance: s.instanceId, reason: 'store_unavailable' }, message);
    this.send(s, JSON.stringify({ type: 'error', error: { code: 'STORE_UNAVAILABLE', message: message.slice(0, 4096) } }));
    s.ws.close(CLOSE.tryAgainLater, 'controller database unavailable');
  }

  /**
   * The instance's `last_error` for a revision the agent reports above every revision handed out for the
   * instance (logged as `revision_ahead`). The reported number goes into the message only.
   */
  private revisionAhead(s: Session, what: 'hello' | 'ack' | 'ports', reported: number, at: string): AgentErrorRecord {
    const known = s.handedOut >= 0 ? s.handedOut : null;
    const message =
      `the agent reported revision ${reported} in its ${what}, but the controller handed out ${known === null ? 'no revision' : `at most revision ${known}`} for this instance ` +
      '(a database restored from an older backup, or an agent that cannot be trusted): not recorded as applied; the current document is authoritative';
    this.log.warn({ event: 'revision_ahead', project: s.projectId, instance: s.instanceId, source: what, reported, desired: known }, message);
    return { revision: known, code: 'REVISION_AHEAD', message, at };
  }

  /**
   * Is `revision` one this instance could have been handed? Cheap from what the connection knows (the stored
   * revision at hello, every revision sent since); the store is asked only above that (a change not sent yet).
   */
  private async handedOut(s: Session, revision: number): Promise<boolean> {
    const known = Math.max(s.handedOut, s.lastSentRevision);
    if (revision <= known) return true;
    // at most one store read per revision the connection learns of: a stream of bogus acks costs no reads
    if (s.storeCheckedAt === known) return false;
    s.storeCheckedAt = known;
    const p = await this.o.store.getPolicy(s.projectId, s.instanceId);
    if (p) s.handedOut = Math.max(s.handedOut, p.revision);
    return revision <= s.handedOut;
  }

  private async ack(s: Session, msg: AckMessage): Promise<void> {
    const at = formatTime(this.o.clock.now());
    if (!(await this.handedOut(s, msg.revision))) {
      return this.record(s, { last_seen: at, last_error: this.revisionAhead(s, 'ack', msg.revision, at) });
    }
    this.o.metrics.acks.inc({ status: msg.status });
    const patch: Partial<AgentState> = {
      last_seen: at,
      last_ack: {
        revision: msg.revision,
        status: msg.status,
        at,
        duration_ms: msg.duration_ms ?? null,
        digest: msg.digest ?? null,
        error: msg.error ?? null,
      },
    };
    if (msg.status === 'applied') patch.applied_revision = msg.revision;
    else patch.last_error = { revision: msg.revision, code: msg.error?.code ?? msg.status.toUpperCase(), message: msg.error?.message ?? `revision ${msg.revision} ${msg.status}`, at };
    await this.record(s, patch);
    const level = msg.status === 'applied' ? 'info' : 'warn';
    this.log[level]({ event: 'ack', project: s.projectId, instance: s.instanceId, revision: msg.revision, status: msg.status, err: msg.error }, 'agent ack');
  }

  /** Stores what the agent reported (held while the store is unavailable, agent-state-buffer.ts), then tells the console. */
  private async record(s: Session, patch: Partial<AgentState>): Promise<void> {
    await this.states.update(s.projectId, s.instanceId, patch);
    // with the patch held the store cannot be read back: the console hears of it on the agent's next frame
    if (!this.states.holds(s.projectId, s.instanceId)) await this.publishInstance(s);
  }

  private async ports(s: Session, msg: PortsMessage): Promise<void> {
    const at = formatTime(this.o.clock.now());
    const revision = msg.report.revision;
    if (revision !== null && !(await this.handedOut(s, revision))) {
      // a report against a revision never handed out says nothing about this instance's policy: not stored
      await this.record(s, { last_seen: at, last_error: this.revisionAhead(s, 'ports', revision, at) });
      return this.refuse(s, 'revision_ahead', `port report for revision ${revision}, which was never handed out for this instance: not stored`);
    }
    await this.states.update(s.projectId, s.instanceId, { ports: msg.report, ports_received_at: at, last_seen: at });
    this.log.debug({ event: 'ports', project: s.projectId, instance: s.instanceId, entries: msg.report.entries.length }, 'port report');
    this.o.events?.publish(s.projectId, { type: 'ports', data: { instance_id: s.instanceId } });
  }

  private async resync(s: Session, msg: ResyncMessage): Promise<void> {
    this.log.warn(
      { event: 'resync', project: s.projectId, instance: s.instanceId, have: msg.have_revision, sent: s.lastSentRevision, reason: msg.reason },
      'agent asked for the full policy',
    );
    s.lastDoc = null;
    const p = await this.o.store.getPolicy(s.projectId, s.instanceId);
    if (p) this.sendPolicy(s, p, 'resync');
  }

  // ---- sending ----

  private enqueue(s: Session, task: () => Promise<void>): void {
    s.queue = s.queue.then(task).catch((e: unknown) => {
      this.log.error({ event: 'agent_task', project: s.projectId, instance: s.instanceId, err: e }, `agent message handling failed: ${errorMessage(e)}`);
    });
  }

  /** false when nothing was sent (the connection is closed, or was just dropped for not reading) */
  private send(s: Session, frame: string | Buffer): boolean {
    if (s.ws.readyState !== WebSocket.OPEN) return false;
    // an agent that does not read would make every document sent to it (a resync each, within the frame
    // rate) pile up in this process until the heartbeat notices: past the bound it is dropped instead;
    // on reconnect its hello gets the current document
    const unsent = s.ws.bufferedAmount;
    const limit = this.o.maxUnsentBytes ?? DEFAULT_MAX_UNSENT_BYTES;
    if (unsent > limit) {
      this.o.metrics.agentMessagesRejected.inc({ reason: 'not_reading' });
      this.log.warn({ event: 'agent_not_reading', project: s.projectId, instance: s.instanceId, unsent_bytes: unsent, limit }, `dropping the agent connection: ${unsent} bytes sent to it are still unread (limit ${limit})`);
      s.ws.terminate();
      return false;
    }
    // a Buffer holds UTF-8 text: sent as a text frame like a string
    s.ws.send(frame, { binary: false });
    return true;
  }

  /** A changed document: as a delta against the last one sent when only members changed, else in full. */
  private sendChange(s: Session, p: StoredPolicy): void {
    const base = s.lastDoc;
    const { delta, next } = this.docs.change(base, p);
    if (base && delta !== null && this.fits(s, delta)) {
      if (!this.send(s, delta)) return;
      s.answers++;
      s.lastSentRevision = p.revision;
      s.lastDoc = next;
      this.o.metrics.pushes.inc({ reason: 'change' });
      this.o.metrics.deltas.inc();
      this.log.info({ event: 'push', project: s.projectId, instance: s.instanceId, revision: p.revision, base: base.revision, reason: 'change', delta: true }, 'policy delta sent');
      return;
    }
    // without a base, change() computed nothing: sendPolicy works it out
    this.sendPolicy(s, p, 'change', base ? next : undefined);
  }

  private sendPolicy(s: Session, p: StoredPolicy, reason: 'hello' | 'change' | 'resync', doc?: SentDocument | null): void {
    const frame = this.docs.policyFrame(p);
    if (!this.fits(s, frame) || !this.send(s, frame)) return;
    s.answers++;
    s.lastSentRevision = p.revision;
    s.lastDoc = this.docs.remember(p, doc);
    this.o.metrics.pushes.inc({ reason });
    this.log.info({ event: 'push', project: s.projectId, instance: s.instanceId, revision: p.revision, reason }, 'policy sent');
  }

  private fits(s: Session, frame: string | Buffer): boolean {
    const bytes = typeof frame !== 'string' ? frame.length : frame.length > MAX_MESSAGE_BYTES / 4 ? Buffer.byteLength(frame) : 0; // UTF-8 is at most 4 bytes per code unit
    if (bytes <= MAX_MESSAGE_BYTES) return true;
    this.log.error({ event: 'push', project: s.projectId, instance: s.instanceId, bytes }, 'policy frame exceeds the protocol limit; not sent');
    return false;
  }

  /** An error frame; the connection stays open. */
  private refuse(s: Session, reason: string, message: string): void {
    this.o.metrics.agentMessagesRejected.inc({ reason });
    this.log.warn({ event: 'reject', project: s.projectId, instance: s.instanceId, reason }, message);
    this.send(s, JSON.stringify({ type: 'error', error: { code: 'PROTOCOL', message: message.slice(0, 4096) } }));
  }

  /** An error frame, then the connection is closed (1008). */
  private violation(s: Session, reason: string, message: string, code = 'PROTOCOL'): void {
    this.o.metrics.agentMessagesRejected.inc({ reason });
    this.log.warn({ event: 'reject', project: s.projectId, instance: s.instanceId, reason }, message);
    this.send(s, JSON.stringify({ type: 'error', error: { code, message: message.slice(0, 4096) } }));
    s.ws.close(CLOSE.policyViolation, reason);
  }
}
