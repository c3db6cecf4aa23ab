/**
 * Structured logging (pino, JSON lines). Stable fields: `event` names what
 * happened (`apply`, `drift`, `connect`, ...); `revision`, `durationMs`,
 * `err` carry the facts.
 */
import { pino, type Logger, type LevelWithSilent } from 'pino';
import { journalLine } from './journal.js';

export type { Logger };

export interface LoggerOptions {
  level?: LevelWithSilent;
  name?: string;
  /** destination file descriptor or stream; default stderr (fd 2) */
  destination?: number | NodeJS.WritableStream;
  /** prefix each line with its `<N>` syslog priority (stderr is the journal: see journal.ts) */
  syslogPrefix?: boolean;
}

export function createLogger(opts: LoggerOptions = {}): Logger {
  const dest = opts.destination ?? 2;
  return pino(
    {
      level: opts.level ?? 'info',
      name: opts.name ?? 'secgroup',
      base: { pid: process.pid },
      serializers: { err: pino.stdSerializers.err },
      ...(opts.syslogPrefix ? { hooks: { streamWrite: journalLine } } : {}),
    },
    typeof dest === 'number' ? pino.destination({ dest, sync: true }) : dest,
  );
}

/** A logger that discards everything (tests). */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}
