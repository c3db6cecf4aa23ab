/** What a CLI command may touch of the outside world; main.ts gives the real one, tests a fake. */
export interface CliIo {
  out(text: string): void;
  err(text: string): void;
  /** environment variables (read-only) */
  env: Readonly<Record<string, string | undefined>>;
  /** this process's id (systemd's WATCHDOG_PID names the process the watchdog is for) */
  pid?: number;
  /** whether stderr is connected to the systemd journal (JOURNAL_STREAM matches fd 2): log lines then carry `<N>` priorities */
  stderrIsJournal?: () => boolean;
  /** resolves with the signal's name when the process is asked to stop (SIGTERM/SIGINT); long-running commands wait on it */
  stopSignal?: () => Promise<string>;
}

/** Thrown by commands to end with an exit code after printing. */
export class CliExit extends Error {
  constructor(readonly exitCode: number) {
    super(`exit ${exitCode}`);
  }
}

/** Exit codes: 0 ok, 1 runtime failure, 2 invalid input (policy, packet, flags). */
export const EXIT = { ok: 0, failure: 1, invalid: 2 } as const;
