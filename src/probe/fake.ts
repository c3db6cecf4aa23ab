/**
 * In-memory implementations of the probe edges, for tests of the chain and of
 * every caller (CLI, agent): a host, a socket source and a port probe.
 */
import { SecgroupError } from '../lib/errors.js';
import type { NormalizedRule } from '../policy/normalize.js';
import type { Policy } from '../policy/schema.js';
import type { PortEntry, PortReport } from '../protocol/messages.js';
import type { Listener } from './listener.js';
import type { PortProbe } from './port-probe.js';
import type { ProbeHost, RunResult, SocketReading, SocketSource, SocketSourceName } from './source.js';

/** A host with canned command outputs (keyed by `command args...`) and files; everything else is missing. */
export class FakeProbeHost implements ProbeHost {
  readonly commands = new Map<string, RunResult>();
  readonly files = new Map<string, string>();
  /** every command run and file read, in order (`run ss -Hltunp`, `read /proc/net/tcp`) */
  readonly calls: string[] = [];

  command(line: string, result: string | { error: string }): this {
    this.commands.set(line, typeof result === 'string' ? { ok: true, stdout: result } : { ok: false, error: result.error });
    return this;
  }

  file(path: string, text: string): this {
    this.files.set(path, text);
    return this;
  }

  async run(command: string, args: readonly string[]): Promise<RunResult> {
    const line = [command, ...args].join(' ');
    this.calls.push(`run ${line}`);
    return this.commands.get(line) ?? { ok: false, error: `Command failed with ENOENT: ${line}` };
  }

  async readFile(path: string): Promise<string | null> {
    this.calls.push(`read ${path}`);
    return this.files.get(path) ?? null;
  }
}

/** A SocketSource that answers with the given listeners (or fails with PROBE_FAILED). */
export class FakeSocketSource implements SocketSource {
  readonly reads: { only?: SocketSourceName }[] = [];

  constructor(
    public listeners: Listener[] = [],
    public source: SocketSourceName = 'ss',
    public error: string | null = null,
  ) {}

  async read(opts: { only?: SocketSourceName } = {}): Promise<SocketReading> {
    this.reads.push(opts);
    if (this.error !== null) throw new SecgroupError('PROBE_FAILED', this.error);
    return { source: opts.only ?? this.source, listeners: this.listeners.map((l) => ({ ...l })), failed: [] };
  }
}

/** A PortProbe that returns a report of the asked revision with `entries` (none by default) and records each call. */
export class FakePortProbe implements PortProbe {
  calls: { revision: number | null }[] = [];
  /** the entries every report carries */
  entries: PortEntry[] = [];
  /** the normalised rules the last call passed (PortProbe.report), if any */
  lastRules: readonly NormalizedRule[] | undefined;
  async report(_policy: Policy | null, revision: number | null, rules?: readonly NormalizedRule[]): Promise<PortReport> {
    this.calls.push({ revision });
    this.lastRules = rules;
    return { revision, source: 'proc', generated_at: '2024-01-01T00:00:00.000Z', entries: this.entries.map((e) => ({ ...e })) };
  }
}
