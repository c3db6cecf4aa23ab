import { describe, expect, it } from 'vitest';
import { Writable } from 'node:stream';
import { journalLine, stderrIsJournal, syslogPriority } from '../../src/lib/journal.js';
import { createLogger } from '../../src/lib/logger.js';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { notifyArgs, systemdServiceManager, watchdogIntervalMs } from '../../src/agent/systemd.js';

function capture(): { stream: Writable; lines: string[] } {
  const lines: string[] = [];
  const stream = new Writable({
    write(chunk: Buffer, _enc, cb) {
      lines.push(...chunk.toString().split('\n').filter(Boolean));
      cb();
    },
  });
  return { stream, lines };
}

describe('journal priorities', () => {
  it('maps pino levels to syslog priorities: fatal crit, error err, warn warning, info info, debug/trace debug', () => {
    expect([60, 50, 40, 30, 20, 10].map(syslogPriority)).toEqual([2, 3, 4, 6, 7, 7]);
  });

  it('prefixes a JSON line with <N> from its level and keeps the JSON intact', () => {
    const line = '{"level":40,"time":1,"event":"connect_error","msg":"x"}\n';
    const out = journalLine(line);
    expect(out.startsWith('<4>')).toBe(true);
    expect(JSON.parse(out.slice(3))).toEqual(JSON.parse(line));
  });

  it('a line without a readable level gets notice (5), never nothing', () => {
    expect(journalLine('not json\n')).toBe('<5>not json\n');
  });

  it('the logger writes prefixed lines when told stderr is the journal, plain JSON otherwise', () => {
    const j = capture();
    const lj = createLogger({ destination: j.stream, syslogPrefix: true });
    lj.warn({ event: 'w' }, 'warned');
    lj.error({ event: 'e' }, 'failed');
    lj.info({ event: 'i' }, 'fine');
    expect(j.lines.map((l) => l.slice(0, 3))).toEqual(['<4>', '<3>', '<6>']);
    expect(JSON.parse(j.lines[0]!.slice(3))).toMatchObject({ event: 'w', msg: 'warned' });
    const p = capture();
    createLogger({ destination: p.stream }).warn({ event: 'w' }, 'warned');
    expect(JSON.parse(p.lines[0]!)).toMatchObject({ event: 'w' });
  });

  it('stderr is the journal only when JOURNAL_STREAM names its device and inode (sd-daemon(3))', () => {
    expect(stderrIsJournal('8:12345', { dev: 8, ino: 12345 })).toBe(true);
    expect(stderrIsJournal('8:12345', { dev: 8, ino: 999 })).toBe(false);
    expect(stderrIsJournal(undefined, { dev: 8, ino: 12345 })).toBe(false);
    expect(stderrIsJournal('garbage', { dev: 8, ino: 12345 })).toBe(false);
    // inode numbers beyond 2^53 arrive as bigint from fstat({ bigint: true })
    expect(stderrIsJournal('2049:18446744073709551557', { dev: 2049n, ino: 18446744073709551557n })).toBe(true);
  });
});

describe('systemd watchdog and notify', () => {
  it('pings at half of WATCHDOG_USEC, for this process only', () => {
    expect(watchdogIntervalMs({ WATCHDOG_USEC: '30000000' }, 42)).toBe(15_000);
    expect(watchdogIntervalMs({ WATCHDOG_USEC: '30000000', WATCHDOG_PID: '42' }, 42)).toBe(15_000);
    expect(watchdogIntervalMs({ WATCHDOG_USEC: '30000000', WATCHDOG_PID: '7' }, 42)).toBeNull();
    expect(watchdogIntervalMs({}, 42)).toBeNull();
    expect(watchdogIntervalMs({ WATCHDOG_USEC: '0' }, 42)).toBeNull();
    expect(watchdogIntervalMs({ WATCHDOG_USEC: 'x' }, 42)).toBeNull();
  });

  it('notify arguments are VAR=VALUE assignments; a status keeps to one line', () => {
    expect(notifyArgs({ ready: true, status: 'enforcing revision 3' })).toEqual(['READY=1', 'STATUS=enforcing revision 3']);
    expect(notifyArgs({ watchdog: true })).toEqual(['WATCHDOG=1']);
    expect(notifyArgs({ stopping: true, status: 'a\nb' })).toEqual(['STOPPING=1', 'STATUS=a b']);
  });

  it('is absent without NOTIFY_SOCKET (not started as Type=notify)', () => {
    expect(systemdServiceManager({ WATCHDOG_USEC: '30000000' }, 42, () => undefined)).toBeNull();
  });

  it('runs the notify command with the assignments, and reports (not throws) its failure', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'sg-notify-'));
    try {
      const cmd = join(dir, 'notify');
      writeFileSync(cmd, `#!/bin/sh\nprintf '%s\\n' "$@" >>'${dir}/args'\n`, { mode: 0o755 });
      const errors: unknown[] = [];
      const sm = systemdServiceManager({ NOTIFY_SOCKET: '/run/systemd/notify', WATCHDOG_USEC: '8000000' }, 42, (e) => errors.push(e), cmd)!;
      expect(sm.watchdogMs).toBe(4000);
      await sm.notify({ ready: true, status: 'enforcing revision 9' });
      await sm.notify({ watchdog: true });
      expect(readFileSync(join(dir, 'args'), 'utf8')).toBe('READY=1\nSTATUS=enforcing revision 9\nWATCHDOG=1\n');
      expect(errors).toEqual([]);
      const failing = systemdServiceManager({ NOTIFY_SOCKET: '/run/systemd/notify' }, 42, (e) => errors.push(e), join(dir, 'missing'))!;
      await expect(failing.notify({ ready: true })).resolves.toBeUndefined();
      expect(errors).toHaveLength(1);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
