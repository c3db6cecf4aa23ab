/**
 * Following the kernel's nftables change events (`nft monitor`) for our
 * table: the edge that lets the agent see a hand edit as it happens instead
 * of on its next periodic read-back.
 *
 * Text output, not `nft -j monitor`: nft 1.0.6 prints the transaction
 * boundaries (`# new generation N by process P (comm)`) only in text mode,
 * and a transaction is the unit that is ours or not (every transaction the
 * agent sends sets the generation marker, MARKER_SET). Each event line reads
 * `<verb> <object> <family> <table> ...`; lines about any other table are
 * dropped at their fourth token, never parsed further or kept. When the
 * kernel's event queue overflowed nft prints `# ERROR: We lost some netlink
 * events!`: reported as `lost` (the caller must then read the table back).
 *
 * nft 1.0.6 quirks, seen here: `nft monitor` (text and JSON alike) dies of
 * SIGSEGV when one transaction creates an interval map with concatenated
 * keys and adds its elements (what a full reload of our table does), and it
 * prints nothing for elements of such a map added or deleted later (a
 * transaction with no line: `unknown`). Re-checked after full reloads were
 * done in place (bench/tools/monitor-repro.ts, 100k members): `nft monitor`
 * and `nft -j monitor` still die on the in-place reload, `nft monitor
 * elements` on a replacement; the filtered `nft monitor rules|chains|sets|
 * tables` survive but print no element edits. The agent therefore pauses
 * the monitor around its own full reloads and trusts a new one only once it
 * reported a probe (src/agent/drift-monitor.ts): `nft monitor` loads every
 * element of every table into its cache before it subscribes (1.4 s at 10k
 * members; still loading after 30 s, 8 s CPU, at 100k on the loaded VM).
 *
 * Since issue 18 round 4 `nft monitor` is the fallback: the agent follows
 * our own listener (nft/nftwatch.ts, native/secgroup-nftwatch.c), which has
 * no cache, says `ready` and survives our reloads; this file keeps what
 * both share (`MonitorEvent`, `NftMonitor`, `MonitorBatchBuilder`,
 * `followChild`).
 *
 * `MonitorParser` is pure (chunks in, events out). `ProcessNftMonitor`
 * runs `nft monitor` as one long-lived child (`followChild`);
 * `FakeNftMonitor` lets unit tests play events and deaths (and `ready`,
 * with `announces`). Supervision (restart with backoff, what an event
 * means) is the agent's: src/agent/drift-monitor.ts.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { MARKER_SET, assertName } from './model.js';

/** One committed transaction that touched our table. */
export interface MonitorBatch {
  /** the ruleset generation it committed (null if nft did not say) */
  generation: number | null;
  /** `PID (comm)` of the process that committed it, as nft prints it */
  by: string | null;
  /** event lines about our table in it */
  lines: number;
  /** the first few of those lines (for the log) */
  sample: string[];
  /** generation marker texts it added (`add element inet T sg_generation { 1 comment "..." }`) */
  markers: string[];
  /** it deleted our table */
  tableDeleted: boolean;
  /** it added, deleted or replaced a chain, rule, set or map of ours (not only elements) */
  structural: boolean;
  /**
   * it added or removed only rules and set/map elements (a chain or set
   * flushed, a rule inserted, an element added or removed): every table,
   * chain, set and object is still ours and none was added, so a reload of
   * our table in place (nft/render.ts renderReloadInPlace) restores it
   * exactly, without replacing it
   */
  contentOnly: boolean;
  /** the chains whose rules it added or removed (what a reload of only those chains restores, agent/repair-plan.ts) */
  rulesOf: string[];
  /** the sets and maps whose elements it added or removed (a rule's anonymous `__set<N>` included) */
  elementsOf: string[];
  /** those of `elementsOf` it added elements to (the others only lost elements) */
  elementsAddedTo: string[];
  /**
   * per set: the keys (hex, as the kernel holds them) of the elements it
   * deleted, null when not all are known; only our own listener reports
   * them (a set missing here: unknown)
   */
  removedKeys: Map<string, string[] | null>;
}

/**
 * `unknown`: a transaction nft printed no event of at all (nft 1.0.6 prints
 * nothing for elements of an interval map with concatenated keys when the
 * map already existed): it may have touched any table, ours included.
 * `ready`: the source has subscribed and says so itself (our own listener,
 * nft/nftwatch.ts; `nft monitor` never does): every later transaction is
 * reported, and the source survives our own full reloads.
 */
export type MonitorEvent = { kind: 'batch'; batch: MonitorBatch } | { kind: 'lost' } | { kind: 'unknown'; generation: number; by: string | null } | { kind: 'ready' };

export interface MonitorHandlers {
  onEvent(e: MonitorEvent): void;
  /** the monitor ended by itself (not after `stop`): why, for the log; called at most once */
  onExit(reason: string): void;
}

export interface MonitorSession {
  /** stops following; no handler is called afterwards */
  stop(): void;
}

export interface NftMonitor {
  /** Starts following change events of the runner's table. Never throws: a monitor that cannot start reports `onExit`. */
  follow(handlers: MonitorHandlers): MonitorSession;
}

const SAMPLE_LINES = 5;
const GENERATION_RE = /^# new generation (\d+)(?: by process (.*))?$/;
const MARKER_RE = /^add element inet \S+ \S+ \{ 1 comment "(.*)" \}$/;
const STRUCTURAL = new Set(['table', 'chain', 'rule', 'set', 'map', 'flowtable', 'counter', 'quota', 'limit', 'ct', 'secmark', 'synproxy']);

/** What the builder knows of a batch before it ends (the objects touched are kept in sets until then). */
type OpenBatch = Omit<MonitorBatch, 'rulesOf' | 'elementsOf' | 'elementsAddedTo' | 'removedKeys'>;

/** Collects the lines of one open transaction into a `MonitorBatch` (shared by both parsers). */
export class MonitorBatchBuilder {
  private batch: OpenBatch | null = null;
  private readonly rulesOf = new Set<string>();
  private readonly elementsOf = new Set<string>();
  private readonly elementsAddedTo = new Set<string>();
  private removedKeys = new Map<string, string[] | null>();

  private open(): OpenBatch {
    return (this.batch ??= { generation: null, by: null, lines: 0, sample: [], markers: [], tableDeleted: false, structural: false, contentOnly: true });
  }

  /** An event line about our table; `object` as nft names it (table, chain, rule, set, map, element, counter, ...), `name` the object's (sets: `__set<N>` is a rule's anonymous set); `adds`: it adds (else deletes). */
  add(line: string, o: { object: string; name: string; adds: boolean; structural: boolean; tableDeleted: boolean }): void {
    const batch = this.open();
    batch.lines++;
    if (batch.sample.length < SAMPLE_LINES) batch.sample.push(line.length > 200 ? `${line.slice(0, 200)}...` : line);
    if (o.structural) batch.structural = true;
    if (o.tableDeleted) batch.tableDeleted = true;
    if (o.object === 'rule') this.rulesOf.add(o.name);
    else if (o.object === 'element') this.elementsOf.add(o.name);
    if (o.object === 'element' && o.adds) this.elementsAddedTo.add(o.name);
    // a rule's anonymous set comes and goes with its rule (a flushed chain deletes them too)
    if (o.object !== 'rule' && o.object !== 'element' && !(o.object === 'set' && o.name.startsWith('__set'))) batch.contentOnly = false;
  }

  /** An element with key `hex` deleted from `set`; `hex` null: one whose key is not known (the set's keys are then incomplete). */
  removedKey(set: string, hex: string | null): void {
    this.open();
    const keys = this.removedKeys.get(set);
    if (hex === null || keys === null) this.removedKeys.set(set, null);
    else if (keys) keys.push(hex);
    else this.removedKeys.set(set, [hex]);
  }

  /** A generation marker text added in it. */
  marker(text: string): void {
    this.open().markers.push(text);
  }

  /** Ends the transaction: its batch, or null when no line was about our table. */
  take(generation: number | null, by: string | null): MonitorBatch | null {
    const b = this.batch;
    this.batch = null;
    const touched = { rulesOf: [...this.rulesOf], elementsOf: [...this.elementsOf], elementsAddedTo: [...this.elementsAddedTo], removedKeys: this.removedKeys };
    this.removedKeys = new Map();
    this.rulesOf.clear();
    this.elementsOf.clear();
    this.elementsAddedTo.clear();
    return b ? { ...b, generation, by, ...touched } : null;
  }
}

/** A parser of a monitor's text output, line by line: `push` takes chunks cut anywhere, `line` gets each whole line. */
export abstract class LineParser {
  private rest = '';

  /** Feeds a chunk of output (any split); returns the events completed by it. */
  push(chunk: string): MonitorEvent[] {
    const lines = (this.rest + chunk).split('\n');
    this.rest = lines.pop() ?? '';
    const out: MonitorEvent[] = [];
    for (const line of lines) this.line(line, out);
    return out;
  }

  /** One whole line (no newline); appends the events it completes to `out`. */
  protected abstract line(line: string, out: MonitorEvent[]): void;
}

/** Splits nft monitor's text output into transactions that touched table `inet <table>`. */
export class MonitorParser extends LineParser {
  private readonly table: string;
  private readonly batch = new MonitorBatchBuilder();
  /** event lines of the open transaction, any table */
  private seen = 0;

  constructor(table: string) {
    super();
    this.table = assertName(table);
  }

  protected line(line: string, out: MonitorEvent[]): void {
    if (line.startsWith('#')) {
      const g = GENERATION_RE.exec(line);
      if (g) {
        const generation = Number(g[1]);
        const by = g[2] ?? null;
        const batch = this.batch.take(generation, by);
        if (batch) out.push({ kind: 'batch', batch });
        else if (this.seen === 0) out.push({ kind: 'unknown', generation, by });
        this.seen = 0;
      } else if (line.startsWith('# ERROR') && /lost/i.test(line)) {
        out.push({ kind: 'lost' });
      }
      return;
    }
    if (line === '') return;
    this.seen++;
    // `<verb> <object> <family> <table> ...`: the cheap test first (most lines of a big apply are elements)
    const a = line.indexOf(' ');
    const b = a < 0 ? -1 : line.indexOf(' ', a + 1);
    const c = b < 0 ? -1 : line.indexOf(' ', b + 1);
    if (c < 0) return;
    const d = line.indexOf(' ', c + 1);
    const table = line.slice(c + 1, d < 0 ? undefined : d);
    if (table !== this.table || line.slice(b + 1, c) !== 'inet') return;
    const verb = line.slice(0, a);
    const object = line.slice(a + 1, b);
    const e = d < 0 ? -1 : line.indexOf(' ', d + 1);
    const name = d < 0 ? '' : line.slice(d + 1, e < 0 ? undefined : e);
    this.batch.add(line, { object, name, adds: verb === 'add', structural: STRUCTURAL.has(object), tableDeleted: verb === 'delete' && object === 'table' });
    if (object === 'element' && verb === 'add' && line.startsWith(`add element inet ${this.table} ${MARKER_SET} `)) {
      const m = MARKER_RE.exec(line);
      if (m) this.batch.marker(m[1]!);
    }
  }
}

export interface ProcessNftMonitorOptions {
  table: string;
  /** the command that runs nft, default ["nft"] (e.g. ["ip", "netns", "exec", "ns1", "nft"]) */
  command?: string[];
}

/** `nft monitor` as a child process (text output, see the file note). */
export class ProcessNftMonitor implements NftMonitor {
  private readonly table: string;
  private readonly command: string[];

  constructor(opts: ProcessNftMonitorOptions) {
    this.table = assertName(opts.table);
    this.command = opts.command ?? ['nft'];
  }

  follow(h: MonitorHandlers): MonitorSession {
    const parser = new MonitorParser(this.table);
    return followChild([...this.command, 'monitor'], 'nft monitor', 'ignore', (chunk) => parser.push(chunk), h);
  }
}

/**
 * Runs `argv` as one long-lived child and feeds its stdout to `push`; its end
 * (or a failure to start) is `onExit` with the reason and the start of its
 * stderr. `stdin`: 'pipe' keeps a pipe open until `stop` (a child that ends
 * at end of input then also ends when this process dies).
 */
export function followChild(argv: string[], label: string, stdin: 'ignore' | 'pipe', push: (chunk: string) => MonitorEvent[], h: MonitorHandlers): MonitorSession {
  const [file, ...args] = argv;
  let stopped = false;
  let exited = false;
  let stderr = '';
  const exit = (reason: string) => {
    if (stopped || exited) return;
    exited = true;
    h.onExit(reason);
  };
  let child: ChildProcess;
  try {
    child = spawn(file!, args, { stdio: [stdin, 'pipe', 'pipe'] });
  } catch (e) {
    queueMicrotask(() => exit(`cannot start ${label}: ${(e as Error).message}`));
    return { stop: () => void (stopped = true) };
  }
  child.stdin?.on('error', () => {}); // EPIPE when the child is gone: its exit says why
  child.stdout!.setEncoding('utf8');
  child.stdout!.on('data', (chunk: string) => {
    if (stopped) return;
    for (const e of push(chunk)) h.onEvent(e);
  });
  child.stderr!.setEncoding('utf8');
  child.stderr!.on('data', (chunk: string) => {
    if (stderr.length < 2000) stderr += chunk;
  });
  child.on('error', (e) => exit(`${label} failed: ${e.message}`));
  child.on('close', (code, signal) => exit(`${label} exited (${signal ?? `code ${code}`})${stderr.trim() ? `: ${stderr.trim().slice(0, 500)}` : ''}`));
  return {
    stop() {
      if (stopped) return;
      stopped = true;
      child.stdin?.end();
      child.kill('SIGTERM');
    },
  };
}

/** In-memory monitor for unit tests: `emit` plays an event to every session, `exit` ends them. */
export class FakeNftMonitor implements NftMonitor {
  private sessions: { h: MonitorHandlers; stopped: boolean }[] = [];
  /** sessions started so far (restarts included) */
  started = 0;

  /** `announces`: each session reports `ready` right after it started, as our own listener does */
  constructor(private readonly opts: { announces?: boolean } = {}) {}

  get running(): number {
    return this.sessions.filter((s) => !s.stopped).length;
  }

  follow(h: MonitorHandlers): MonitorSession {
    const s = { h, stopped: false };
    this.sessions.push(s);
    this.started++;
    if (this.opts.announces) queueMicrotask(() => s.stopped || s.h.onEvent({ kind: 'ready' }));
    return { stop: () => void (s.stopped = true) };
  }

  /** A transaction on our table seen by the monitor. */
  emit(batch: Partial<MonitorBatch>): void {
    const full: MonitorBatch = { generation: null, by: null, lines: 1, sample: [], markers: [], tableDeleted: false, structural: false, contentOnly: false, rulesOf: [], elementsOf: [], elementsAddedTo: [], removedKeys: new Map(), ...batch };
    for (const s of this.sessions) if (!s.stopped) s.h.onEvent({ kind: 'batch', batch: full });
  }

  lost(): void {
    for (const s of this.sessions) if (!s.stopped) s.h.onEvent({ kind: 'lost' });
  }

  /** The source says it has subscribed (our own listener does, `nft monitor` does not). */
  ready(): void {
    for (const s of this.sessions) if (!s.stopped) s.h.onEvent({ kind: 'ready' });
  }

  /** A transaction nft printed no event of. */
  unknown(generation = 1): void {
    for (const s of this.sessions) if (!s.stopped) s.h.onEvent({ kind: 'unknown', generation, by: null });
  }

  /** The monitor process died. */
  exit(reason = 'nft monitor exited (code 1)'): void {
    for (const s of this.sessions) {
      if (s.stopped) continue;
      s.stopped = true;
      s.h.onExit(reason);
    }
  }
}
