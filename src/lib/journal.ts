/**
 * Log lines for the systemd journal. journald reads a `<N>` syslog priority
 * at the start of each line of a service's stdout/stderr
 * (SyslogLevelPrefix=yes is the default for StandardOutput=journal) and
 * strips it: with it, `journalctl -p warning` finds our warnings and errors;
 * without it every line is stored at the unit's default priority, info.
 * The line stays JSON after the prefix, so `journalctl -o cat | jq` works.
 *
 * Whether stderr is the journal: systemd sets JOURNAL_STREAM=<dev>:<inode>
 * of the stream it connected, and a program compares that with fstat() of
 * its own fd (sd-daemon(3)): the variable alone is inherited by children
 * whose stderr was redirected elsewhere.
 */

/** syslog priority (0 emerg .. 7 debug) of a pino level number */
export function syslogPriority(level: number): number {
  if (level >= 60) return 2; // fatal: crit
  if (level >= 50) return 3; // error: err
  if (level >= 40) return 4; // warn: warning
  if (level >= 30) return 6; // info
  return 7; // debug, trace
}

const LEVEL = /^\{"level":(\d+)[,}]/;

/** A serialized pino line with its `<N>` prefix; notice (5) when the level cannot be read. */
export function journalLine(line: string): string {
  const m = LEVEL.exec(line);
  return `<${m ? syslogPriority(Number(m[1])) : 5}>${line}`;
}

/** True when JOURNAL_STREAM names the device and inode of the given fstat() result. */
export function stderrIsJournal(journalStream: string | undefined, stat: { dev: number | bigint; ino: number | bigint }): boolean {
  const m = /^(\d+):(\d+)$/.exec(journalStream ?? '');
  if (!m) return false;
  return BigInt(m[1]!) === BigInt(stat.dev) && BigInt(m[2]!) === BigInt(stat.ino);
}
