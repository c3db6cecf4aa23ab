/**
 * The agent's side of systemd's service protocol (sd_notify(3)): READY=1 once
 * the host is protected, WATCHDOG=1 from the main loop, STOPPING=1, STATUS=.
 *
 * Node has no AF_UNIX datagram sockets, so the message is sent by
 * `systemd-notify` (part of systemd, present wherever the unit runs), spawned
 * with the assignments as arguments. The sender is then a child, not the main
 * process, so the unit needs `NotifyAccess=all` (`exec` accepts only the
 * processes systemd started itself). Since systemd 246 `systemd-notify`
 * waits until PID 1 has taken the message (sd_notify_barrier), so its exit
 * does not race PID 1's lookup of the sender's unit. No `--pid=`: the main
 * PID is the agent already, and a MAINPID= from a child is not needed.
 * Considered: a native addon or an extra npm package (a native build in the
 * single executable, for one datagram), `socat` (one more package on every VM).
 *
 * Pure parts (`notifyArgs`, `watchdogIntervalMs`) are unit-tested; the
 * spawning edge is exercised under a real systemd (test/system).
 */
import { execa } from 'execa';

export interface NotifyState {
  ready?: boolean;
  watchdog?: boolean;
  stopping?: boolean;
  status?: string;
}

/** What the agent tells its service manager; `null` manager when not started by systemd. */
export interface ServiceManager {
  /** WATCHDOG=1 every this many ms, or null when no watchdog is armed for this process */
  readonly watchdogMs: number | null;
  /** sends the state; never throws (a failed notify is logged by the caller's `onError`) */
  notify(state: NotifyState): Promise<void>;
}

/** systemd-notify's arguments for a state (a status is one line of at most 200 characters). */
export function notifyArgs(s: NotifyState): string[] {
  const a: string[] = [];
  if (s.ready) a.push('READY=1');
  if (s.watchdog) a.push('WATCHDOG=1');
  if (s.stopping) a.push('STOPPING=1');
  if (s.status !== undefined) a.push(`STATUS=${s.status.replace(/\s+/g, ' ').slice(0, 200)}`);
  return a;
}

/** Half of WATCHDOG_USEC in ms (sd_watchdog_enabled(3)), when the watchdog is meant for `pid`; else null. */
export function watchdogIntervalMs(env: Readonly<Record<string, string | undefined>>, pid: number): number | null {
  const usec = env.WATCHDOG_USEC;
  if (!usec || !/^\d+$/.test(usec) || Number(usec) <= 0) return null;
  if (env.WATCHDOG_PID !== undefined && env.WATCHDOG_PID !== String(pid)) return null;
  return Math.max(1, Math.floor(Number(usec) / 2000));
}

/** The real one: `systemd-notify VAR=VALUE...`; null when NOTIFY_SOCKET is not set (not started as Type=notify). */
export function systemdServiceManager(
  env: Readonly<Record<string, string | undefined>>,
  pid: number,
  onError: (e: unknown) => void,
  command = 'systemd-notify',
): ServiceManager | null {
  if (!env.NOTIFY_SOCKET) return null;
  return {
    watchdogMs: watchdogIntervalMs(env, pid),
    async notify(state) {
      try {
        await execa(command, notifyArgs(state), { timeout: 10_000, stdin: 'ignore' });
      } catch (e) {
        onError(e);
      }
    },
  };
}

/** Records every notification (tests). */
export class FakeServiceManager implements ServiceManager {
  readonly sent: NotifyState[] = [];
  constructor(readonly watchdogMs: number | null = null) {}
  notify(state: NotifyState): Promise<void> {
    this.sent.push(state);
    return Promise.resolve();
  }
}
