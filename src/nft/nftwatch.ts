/**
 * Our own listener of the kernel's nftables change events
 * (native/secgroup-nftwatch.c, line format in its header) as an
 * `NftMonitor`: the drift monitor's preferred source, `nft monitor`
 * (nft/monitor.ts) its fallback.
 *
 * Why: nft 1.0.6's monitor loads every element of every set into its cache
 * before it subscribes (seconds to over a minute at 100k members) and dies
 * of SIGSEGV on our own full reloads. The listener keeps no cache: it says
 * `ready` once subscribed (a `ready` event: the drift monitor trusts it at
 * once, no probe) and survives our reloads (the drift monitor no longer
 * stops it around them). It prints the comment of every element added to
 * MARKER_SET, so ours-or-not works as with `nft monitor` (the markers).
 *
 * - `WatchParser` is pure (chunks in, events out): a transaction is the
 *   `event`/`marker`/`key`/`nokeys` lines up to its `gen` line (the keys of
 *   deleted elements: `MonitorBatch.removedKeys`, for a repair that adds
 *   back exactly those); a `gen` with no line before
 *   it was another table's and yields nothing (the kernel reports every
 *   change, so there is no `unknown` here).
 * - `ProcessNftWatch` runs the program as one long-lived child, through
 *   the same command prefix as nft (`nsenter --net=...` in benches), with a
 *   stdin pipe: the program ends at end of input, so it never outlives us.
 * - `FallbackMonitor` follows with the listener and, when a session of it
 *   ends before it said `ready` (the file is absent, not executable, the
 *   socket cannot be opened), switches for good to `nft monitor`, telling
 *   `onFallback` once (the agent logs one warning line).
 */
import { LineParser, MonitorBatchBuilder, followChild, type MonitorEvent, type MonitorHandlers, type MonitorSession, type NftMonitor } from './monitor.js';
import { assertName } from './model.js';

/** Splits the listener's output into events (see the C file's header for the lines). */
export class WatchParser extends LineParser {
  private readonly batch = new MonitorBatchBuilder();

  constructor(private readonly table: string) {
    super();
    assertName(table);
  }

  protected line(line: string, out: MonitorEvent[]): void {
    const sp = line.indexOf(' ');
    const word = sp < 0 ? line : line.slice(0, sp);
    if (word === 'event') {
      // event VERB OBJECT NAME N
      const [, verb, object, name, n] = line.split(' ');
      if (!verb || !object || !name) return;
      const messages = Number(n) || 1;
      const nftVerb = verb === 'del' ? 'delete' : 'add';
      this.batch.add(`${nftVerb} ${object} inet ${this.table}${object === 'table' ? '' : ` ${name}`}${messages > 1 ? ` (${messages} messages)` : ''}`, {
        object,
        name,
        adds: verb !== 'del',
        structural: object !== 'element',
        tableDeleted: verb === 'del' && object === 'table',
      });
    } else if (word === 'key' || word === 'nokeys') {
      // key SET HEX | nokeys SET
      const [, set, hex] = line.split(' ');
      if (set) this.batch.removedKey(set, word === 'key' && hex && /^[0-9a-f]+$/.test(hex) ? hex : null);
    } else if (word === 'marker' && sp > 0) {
      this.batch.marker(line.slice(sp + 1));
    } else if (word === 'gen') {
      // gen ID PID COMM
      const [, id, pid, comm] = line.split(' ');
      const batch = this.batch.take(Number(id), pid && pid !== '0' ? `${pid} (${comm ?? '-'})` : null);
      if (batch) out.push({ kind: 'batch', batch });
    } else if (line === 'lost') {
      out.push({ kind: 'lost' });
    } else if (line === 'ready') {
      out.push({ kind: 'ready' });
    }
  }
}

export interface ProcessNftWatchOptions {
  table: string;
  /** the listener's executable (native/secgroup-nftwatch.c) */
  path: string;
  /** what runs before it, as before nft (e.g. ["nsenter", "--net=/run/netns/ns1"]); default none */
  prefix?: string[];
}

/** The listener as a child process. */
export class ProcessNftWatch implements NftMonitor {
  private readonly table: string;

  constructor(private readonly opts: ProcessNftWatchOptions) {
    this.table = assertName(opts.table);
  }

  follow(h: MonitorHandlers): MonitorSession {
    const parser = new WatchParser(this.table);
    return followChild([...(this.opts.prefix ?? []), this.opts.path, this.table], 'secgroup-nftwatch', 'pipe', (chunk) => parser.push(chunk), h);
  }
}

/** `primary` until one of its sessions ends before it reported `ready`; from then on `fallback` (see the file note). */
export class FallbackMonitor implements NftMonitor {
  private fellBack = false;

  constructor(
    private readonly primary: NftMonitor,
    private readonly fallback: NftMonitor,
    private readonly onFallback: (reason: string) => void,
  ) {}

  follow(h: MonitorHandlers): MonitorSession {
    if (this.fellBack) return this.fallback.follow(h);
    let ready = false;
    let stopped = false;
    let current: MonitorSession | null = null;
    current = this.primary.follow({
      onEvent: (e) => {
        if (e.kind === 'ready') ready = true;
        h.onEvent(e);
      },
      onExit: (reason) => {
        if (ready || this.fellBack) {
          h.onExit(reason);
          return;
        }
        this.fellBack = true;
        this.onFallback(reason);
        if (!stopped) current = this.fallback.follow(h);
      },
    });
    return {
      stop() {
        stopped = true;
        current?.stop();
      },
    };
  }
}
