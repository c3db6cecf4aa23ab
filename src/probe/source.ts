/**
 * Where listening sockets come from: `ss`, else `netstat`, else /proc/net.
 * `HostSocketSource` holds the fallback chain and the parsing; the outside
 * world (running a command, reading a file) is the `ProbeHost` edge, real
 * (`execaProbeHost`) or fake (`FakeProbeHost` in fake.ts). Reading sockets
 * needs no namespace logic: an agent inside a network namespace sees that
 * namespace's sockets.
 */
import { readFile } from 'node:fs/promises';
import { endianness } from 'node:os';
import { execa } from 'execa';
import { SecgroupError, errorMessage } from '../lib/errors.js';
import type { PortReport } from '../protocol/messages.js';
import type { Listener } from './listener.js';
import { parseNetstat } from './netstat.js';
import { parseProcNet } from './proc.js';
import { parseSs } from './ss.js';

export type SocketSourceName = PortReport['source'];
export const SOCKET_SOURCES: readonly SocketSourceName[] = ['ss', 'netstat', 'proc'];

export interface SocketReading {
  /** the source that answered */
  source: SocketSourceName;
  listeners: Listener[];
  /** sources tried before it, and why each failed (empty when the first one answered) */
  failed: { source: SocketSourceName; error: string }[];
}

export interface SocketSource {
  /**
   * Reads the host's listening tcp/udp sockets. With `only`, tries that source
   * alone. Throws SecgroupError PROBE_FAILED (naming every source tried and its
   * error) when no source answers.
   */
  read(opts?: { only?: SocketSourceName }): Promise<SocketReading>;
}

export type RunResult = { ok: true; stdout: string } | { ok: false; error: string };

/** The outside world a SocketSource needs. */
export interface ProbeHost {
  /** Runs a command without a shell; never throws (a missing command or non-zero exit is `ok: false`). */
  run(command: string, args: readonly string[]): Promise<RunResult>;
  /** Reads a text file; null when it does not exist; throws on any other error. */
  readFile(path: string): Promise<string | null>;
}

/** Commands exactly as the chain runs them (numeric, wide, with processes when permitted). */
export const SS_ARGS = ['-Hltunp'] as const;
export const NETSTAT_ARGS = ['-lntupW'] as const;
export const PROC_FILES = [
  { path: '/proc/net/tcp', protocol: 'tcp', family: 4 },
  { path: '/proc/net/tcp6', protocol: 'tcp', family: 6 },
  { path: '/proc/net/udp', protocol: 'udp', family: 4 },
  { path: '/proc/net/udp6', protocol: 'udp', family: 6 },
] as const;
export const BINDV6ONLY_PATH = '/proc/sys/net/ipv6/bindv6only';

export const execaProbeHost: ProbeHost = {
  async run(command, args) {
    // LC_ALL=C: netstat translates its state column ("LISTEN") through gettext.
    const r = await execa(command, [...args], { reject: false, timeout: 15_000, env: { LC_ALL: 'C' }, stripFinalNewline: false });
    if (r.failed) {
      const stderr = typeof r.stderr === 'string' ? r.stderr.trim() : '';
      return { ok: false, error: `${r.shortMessage}${stderr ? `: ${stderr.split('\n')[0]}` : ''}` };
    }
    return { ok: true, stdout: String(r.stdout) };
  },
  async readFile(path) {
    try {
      return await readFile(path, 'utf8');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
      throw e;
    }
  },
};

export interface HostSocketSourceOptions {
  /** byte order of /proc/net addresses; default: this host's */
  littleEndian?: boolean;
}

export class HostSocketSource implements SocketSource {
  constructor(
    private readonly host: ProbeHost = execaProbeHost,
    private readonly opts: HostSocketSourceOptions = {},
  ) {}

  async read(opts: { only?: SocketSourceName } = {}): Promise<SocketReading> {
    const order = opts.only ? [opts.only] : SOCKET_SOURCES;
    const failed: SocketReading['failed'] = [];
    for (const source of order) {
      try {
        return { source, listeners: await this.readFrom(source), failed };
      } catch (e) {
        failed.push({ source, error: errorMessage(e) });
      }
    }
    throw new SecgroupError(
      'PROBE_FAILED',
      `cannot read the listening sockets: ${failed.map((f) => `${f.source}: ${f.error}`).join('; ')}`,
      { details: failed },
    );
  }

  private async readFrom(source: SocketSourceName): Promise<Listener[]> {
    switch (source) {
      case 'ss':
        return parseSs(await this.output('ss', SS_ARGS));
      case 'netstat':
        return parseNetstat(await this.output('netstat', NETSTAT_ARGS), { bindv6only: await this.bindv6only() });
      case 'proc': {
        const bindv6only = await this.bindv6only();
        const littleEndian = this.opts.littleEndian ?? endianness() === 'LE';
        const out: Listener[] = [];
        for (const f of PROC_FILES) {
          const text = await this.host.readFile(f.path);
          // tcp6/udp6 are absent when IPv6 is disabled; tcp/udp never are.
          if (text === null) {
            if (f.family === 4) throw new Error(`${f.path} does not exist`);
            continue;
          }
          out.push(...parseProcNet(text, { protocol: f.protocol, family: f.family, bindv6only, littleEndian }));
        }
        return out;
      }
    }
  }

  private async output(command: string, args: readonly string[]): Promise<string> {
    const r = await this.host.run(command, args);
    if (!r.ok) throw new Error(r.error);
    return r.stdout;
  }

  /** Missing (IPv6 disabled) or unreadable counts as 0: assuming dual-stack errs towards reporting exposure. */
  private async bindv6only(): Promise<boolean> {
    try {
      return (await this.host.readFile(BINDV6ONLY_PATH))?.trim() === '1';
    } catch {
      return false;
    }
  }
}
