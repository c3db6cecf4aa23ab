/** A pino logger whose JSON lines are kept in memory, parsed, for assertions on `event` fields (and on what must not be logged). */
import { Writable } from 'node:stream';
import { createLogger, type Logger } from '../../src/lib/logger.js';

export function captureLogs(level: 'debug' | 'info' = 'debug'): { logger: Logger; lines: Record<string, unknown>[] } {
  const lines: Record<string, unknown>[] = [];
  const stream = new Writable({
    write(chunk: Buffer, _enc, cb) {
      for (const l of chunk.toString().split('\n')) if (l.trim()) lines.push(JSON.parse(l) as Record<string, unknown>);
      cb();
    },
  });
  return { logger: createLogger({ level, destination: stream }), lines };
}
