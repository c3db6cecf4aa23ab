/**
 * The agent's end of the control channel: one WebSocket to a controller,
 * re-opened with exponential backoff and full jitter (capped) whenever it
 * drops. With several controllers (`targets`: every configured URL, and
 * every address of a URL whose name resolves to several), a lost or refused
 * connection moves to the next one (`controller_switch`), so the agents of a
 * dead replica spread over the others; a refusal's Retry-After (a replica
 * over its accept rate, or without its database) is waited out, jittered.
 * The policy in force stays meanwhile (fail-static).
 * On open it says `hello`; it validates every frame against the protocol
 * schema, hands policy snapshots to the agent and sends its acks. Dead
 * connections are found with ping/pong: no pong within the timeout and the
 * socket is terminated and re-dialled.
 *
 * The socket itself is an edge (`Dialer`): `wsDialer` (ws-dialer.ts) in
 * production, `FakeDialer` (below) in tests.
 */
import type { Clock, Timer } from '../lib/clock.js';
import { errorMessage } from '../lib/errors.js';
import type { Logger } from '../lib/logger.js';
import { parseWithPackedMembers } from '../policy/packed-members.js';
import { controllerMessageSchema, decode, type AgentMessage, type HelloMessage, type PolicyDeltaMessage, type WelcomeMessage } from '../protocol/messages.js';

export interface WireSocket {
  send(text: string): void;
  ping(): void;
  close(code?: number, reason?: string): void;
  /** drop the connection at once (no closing handshake) */
  terminate(): void;
}

export interface WireEvents {
  open(): void;
  message(text: string, bytes: number): void;
  pong(): void;
  /** called once per socket, also after `error` */
  close(code: number, reason: string): void;
  error(err: Error): void;
}

/** Which controller to dial: a URL, and optionally the one address of its host name to connect to. */
export interface DialTarget {
  url: string;
  /** connect to this address (the URL's name still names the host for TLS and the Host header) */
  address?: string;
}

/** The controller refused the upgrade with an HTTP status (`retryAfterMs`: what its Retry-After asked for). */
export class UpgradeRefused extends Error {
  constructor(
    readonly status: number,
    readonly retryAfterMs: number | null,
  ) {
    super(`controller answered HTTP ${status}${status === 401 ? ' (token rejected)' : ''}${retryAfterMs !== null ? ` (retry after ${retryAfterMs / 1000} s)` : ''}`);
    this.name = 'UpgradeRefused';
  }
}

/** Opens a connection (to `target`, when there are several); events arrive through `events`. Must not throw: failures arrive as `error` + `close`. */
export type Dialer = (events: WireEvents, target?: DialTarget) => WireSocket;

/** A target for logs: its URL, and the address dialled when the name has several. */
export function targetLabel(t: DialTarget | undefined): string {
  return !t ? 'controller' : t.address ? `${t.url} (${t.address})` : t.url;
}

export interface ControllerClientOptions {
  dial: Dialer;
  clock: Clock;
  logger: Logger;
  /** [0, 1), for jitter */
  random?: () => number;
  hello: () => HelloMessage;
  onPolicy: (policy: unknown) => void;
  /** a membership delta (protocol `policy_delta`); without a handler the agent asks for a full policy */
  onPolicyDelta?: (delta: PolicyDeltaMessage) => void;
  onWelcome?: (w: WelcomeMessage) => void;
  onConnected?: () => void;
  onDisconnected?: () => void;
  /** called before every dial after the first (e.g. to re-resolve the controller name) */
  beforeReconnect?: () => Promise<void> | void;
  /** the controllers to use, in order (read before every dial); none: the dialer's own */
  targets?: () => readonly DialTarget[];
  pingIntervalMs?: number;
  pongTimeoutMs?: number;
  reconnectInitialMs?: number;
  reconnectMaxMs?: number;
  maxMessageBytes?: number;
}

/**
 * Backoff before reconnect attempt `attempt` (0-based): min(max, initial *
 * 2^attempt), with "full jitter" (anywhere below it, so agents that lost the
 * same replica spread out), but never under half the initial delay (no
 * reconnect loop at full speed).
 */
export function reconnectDelay(attempt: number, initialMs: number, maxMs: number, random: number): number {
  const base = Math.min(maxMs, initialMs * 2 ** Math.min(attempt, 30));
  return Math.round(Math.max(Math.min(initialMs, maxMs) / 2, base * random));
}

export class ControllerClient {
  private readonly o: ControllerClientOptions & Required<Pick<ControllerClientOptions, 'pingIntervalMs' | 'pongTimeoutMs' | 'reconnectInitialMs' | 'reconnectMaxMs' | 'maxMessageBytes' | 'random'>>;
  private socket: WireSocket | null = null;
  private generation = 0;
  private attempt = 0;
  private isOpen = false;
  private stopped = true;
  private reconnectTimer: Timer | null = null;
  private pingTimer: Timer | null = null;
  private pongTimer: Timer | null = null;
  private dials = 0;
  /** index of the target dialled last (moves on after every lost or failed connection) */
  private index = 0;
  /** Retry-After of the last refusal, waited out before the next dial */
  private retryAfterMs: number | null = null;

  constructor(opts: ControllerClientOptions) {
    this.o = {
      pingIntervalMs: 15_000,
      pongTimeoutMs: 10_000,
      reconnectInitialMs: 500,
      reconnectMaxMs: 30_000,
      maxMessageBytes: 64 * 1024 * 1024,
      random: Math.random,
      ...opts,
    };
  }

  get connected(): boolean {
    return this.isOpen;
  }

  start(): void {
    if (!this.stopped) return;
    this.stopped = false;
    this.dial();
  }

  /** Closes the connection and stops reconnecting. */
  stop(): void {
    this.stopped = true;
    this.reconnectTimer?.cancel();
    this.reconnectTimer = null;
    const s = this.socket;
    this.teardown();
    s?.close(1000, 'agent stopping');
  }

  /** Sends a message if connected; returns false (message dropped) otherwise. */
  send(msg: AgentMessage): boolean {
    if (!this.isOpen || !this.socket) return false;
    try {
      this.socket.send(JSON.stringify(msg));
      return true;
    } catch (e) {
      this.o.logger.warn({ event: 'send_failed', err: e }, `cannot send ${msg.type}: ${errorMessage(e)}`);
      return false;
    }
  }

  private teardown(): void {
    this.generation++;
    this.pingTimer?.cancel();
    this.pongTimer?.cancel();
    this.pingTimer = this.pongTimer = null;
    this.socket = null;
    const was = this.isOpen;
    this.isOpen = false;
    if (was) this.o.onDisconnected?.();
  }

  private dial(): void {
    const gen = ++this.generation;
    this.dials++;
    const live = () => gen === this.generation && !this.stopped;
    let closed = false;
    const onGone = (code: number, reason: string) => {
      if (closed || !live()) return;
      closed = true;
      const wasOpen = this.isOpen;
      this.teardown();
      this.scheduleReconnect(wasOpen ? `connection closed (${code}${reason ? ` ${reason}` : ''})` : `cannot connect (${code}${reason ? ` ${reason}` : ''})`);
    };
    const events: WireEvents = {
      open: () => {
        if (!live()) return;
        this.isOpen = true;
        this.o.logger.info({ event: 'connect' }, 'connected to the controller');
        this.send(this.o.hello());
        this.o.onConnected?.();
        this.pingTimer = this.o.clock.setInterval(() => this.ping(gen), this.o.pingIntervalMs);
      },
      message: (text, bytes) => {
        if (!live()) return;
        if (bytes > this.o.maxMessageBytes) {
          this.onOversize(text, bytes);
          return;
        }
        this.onFrame(text);
      },
      pong: () => {
        if (!live()) return;
        this.pongTimer?.cancel();
        this.pongTimer = null;
      },
      error: (err) => {
        if (!live()) return;
        if (err instanceof UpgradeRefused) this.retryAfterMs = err.retryAfterMs;
        this.o.logger.warn({ event: 'connect_error', err, target: targetLabel(target) }, `control channel error: ${err.message}`);
      },
      close: onGone,
    };
    const targets = this.o.targets?.() ?? [];
    const target = targets.length ? targets[this.index % targets.length] : undefined;
    try {
      this.socket = target ? this.o.dial(events, target) : this.o.dial(events);
    } catch (e) {
      // e.g. an unreadable token file: report it and try again later
      this.o.logger.error({ event: 'connect_error', err: e }, `cannot open the control channel: ${errorMessage(e)}`);
      onGone(1006, 'dial failed');
    }
  }

  /**
   * A frame over `maxMessageBytes` (it got here whole: the socket's own cap is
   * the protocol's). A policy is answered with a `rejected` ack naming the
   * limit, so the controller shows why and does not send it again on this
   * connection; the connection stays (closing would only fetch the same
   * document again after every reconnect). Anything else is dropped.
   */
  private onOversize(text: string, bytes: number): void {
    const head = text.slice(0, 4096);
    const isPolicy = /^\s*\{\s*"type"\s*:\s*"policy(?:_delta)?"/.test(head);
    const rev = /"revision"\s*:\s*(\d{1,15})\b/.exec(head);
    const revision = rev ? Number(rev[1]) : 0;
    const message = `policy frame of ${bytes} bytes is over this agent's limit of ${this.o.maxMessageBytes} bytes (controller.max_message_bytes): not applied, the current ruleset stays`;
    this.o.logger.error({ event: 'policy_rejected', code: 'POLICY_TOO_LARGE', bytes, limit: this.o.maxMessageBytes, revision: isPolicy ? revision : null }, isPolicy ? message : `frame of ${bytes} bytes is over the limit of ${this.o.maxMessageBytes}: dropped`);
    if (isPolicy) this.send({ type: 'ack', revision, status: 'rejected', error: { code: 'POLICY_TOO_LARGE', message } });
  }

  private ping(gen: number): void {
    if (gen !== this.generation || !this.socket) return;
    if (this.pongTimer) return;
    this.socket.ping();
    this.pongTimer = this.o.clock.setTimeout(() => {
      if (gen !== this.generation) return;
      this.o.logger.warn({ event: 'dead_connection' }, `no pong within ${this.o.pongTimeoutMs} ms: dropping the connection`);
      const s = this.socket;
      s?.terminate();
    }, this.o.pongTimeoutMs);
  }

  private onFrame(text: string): void {
    // a policy's long member lists are read straight into packed sets, never as strings (policy/packed-members.ts)
    const r = decode(controllerMessageSchema, text, parseWithPackedMembers);
    if (!r.ok) {
      this.o.logger.warn({ event: 'protocol_error' }, `ignored a frame from the controller: ${r.error}`);
      return;
    }
    const m = r.message;
    if (m.type === 'welcome') {
      this.attempt = 0;
      this.o.logger.info({ event: 'welcome', desiredRevision: m.desired_revision }, `controller knows this instance as ${m.instance_id}`);
      this.o.onWelcome?.(m);
    } else if (m.type === 'policy') {
      this.attempt = 0;
      this.o.onPolicy(m.policy);
    } else if (m.type === 'policy_delta') {
      this.attempt = 0;
      if (this.o.onPolicyDelta) this.o.onPolicyDelta(m);
      else this.send({ type: 'resync', have_revision: null, reason: 'this agent does not take deltas' });
    } else {
      this.o.logger.error({ event: 'controller_error', code: m.error.code }, `controller says: ${m.error.message}`);
    }
  }

  private scheduleReconnect(why: string): void {
    if (this.stopped) return;
    let delay = reconnectDelay(this.attempt, this.o.reconnectInitialMs, this.o.reconnectMaxMs, this.o.random());
    // a refusal that said when to come back: not before, and spread over as long again
    if (this.retryAfterMs !== null) delay = Math.max(delay, Math.round(this.retryAfterMs * (1 + this.o.random())));
    this.retryAfterMs = null;
    this.attempt++;
    this.o.logger.warn({ event: 'disconnect', retryInMs: delay, attempt: this.attempt }, `${why}; reconnecting in ${delay} ms`);
    const targets = this.o.targets?.() ?? [];
    if (targets.length > 1) {
      const from = targets[this.index % targets.length];
      this.index = (this.index + 1) % targets.length;
      const to = targets[this.index];
      this.o.logger.info({ event: 'controller_switch', from: targetLabel(from), to: targetLabel(to), reason: why, retryInMs: delay }, `moving to controller ${targetLabel(to)} in ${delay} ms (${why})`);
    }
    this.reconnectTimer = this.o.clock.setTimeout(() => {
      this.reconnectTimer = null;
      void (async () => {
        try {
          await this.o.beforeReconnect?.();
        } catch (e) {
          this.o.logger.warn({ event: 'reconnect_prepare_failed', err: e }, errorMessage(e));
        }
        if (!this.stopped) this.dial();
      })();
    }, delay);
  }

  /** Number of dials so far (tests, status). */
  get dialCount(): number {
    return this.dials;
  }
}

/** In-memory dialer for tests: each dial creates a `FakeSocket` the test drives. */
export class FakeDialer {
  readonly sockets: FakeSocket[] = [];
  readonly dial: Dialer = (events, target) => {
    const s = new FakeSocket(events, target);
    this.sockets.push(s);
    return s;
  };
  get last(): FakeSocket {
    const s = this.sockets.at(-1);
    if (!s) throw new Error('no socket dialled yet');
    return s;
  }
}

export class FakeSocket implements WireSocket {
  readonly sent: string[] = [];
  pings = 0;
  closed: { code?: number; reason?: string } | null = null;
  terminated = false;
  constructor(
    readonly events: WireEvents,
    readonly target?: DialTarget,
  ) {}
  send(text: string): void {
    if (this.closed || this.terminated) throw new Error('socket closed');
    this.sent.push(text);
  }
  ping(): void {
    this.pings++;
  }
  close(code?: number, reason?: string): void {
    if (this.closed) return;
    this.closed = { code, reason };
    this.events.close(code ?? 1005, reason ?? '');
  }
  terminate(): void {
    this.terminated = true;
    this.events.close(1006, '');
  }
  /** messages the agent sent, parsed */
  get messages(): AgentMessage[] {
    return this.sent.map((t) => JSON.parse(t) as AgentMessage);
  }
  receive(msg: unknown): void {
    const text = typeof msg === 'string' ? msg : JSON.stringify(msg);
    this.events.message(text, Buffer.byteLength(text));
  }
}
