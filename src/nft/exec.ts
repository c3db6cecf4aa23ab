/**
 * The real nft runner: the `nft` binary through execa, or through a
 * long-lived shell (`helper`, see shell-spawner.ts: what the agent daemon
 * uses). Scripts go in on stdin (`nft -f -`) so a transaction is one batch,
 * streamed in the renderer's chunks with back-pressure (the whole text of a
 * big table never exists in memory at once); reads list our table only.
 * A script cut short must never reach nft's end of input (its first chunk,
 * `table ...{}` + `delete table ...`, is a valid script alone): when the
 * renderer throws part-way, nft started directly is killed before its stdin
 * closes, and the helper shell is never asked to run a half-written file.
 *
 * With `loader` (native/secgroup-nftload), a full apply (a replacement of
 * the table, or its reload in place) goes to the kernel as the netlink
 * batch the agent encodes itself (netlink-batch.ts: the batch nft would
 * send, without nft's parse and evaluation of the text). When the table holds something the encoder does
 * not produce, or the loader is missing or fails, the same transaction goes
 * through `nft -f` at once (`onLoaderFallback` says why); a loader that is
 * missing is not tried again.
 */
import { execa, ExecaError } from 'execa';
import type { Writable } from 'node:stream';
import { renderTransactionChunks } from './render.js';
import { chainCounters, ruleCounters, type RuleCounters } from './counters.js';
import { nftError, nftNotFound, nftTimeout, type NftInfo, type NftRunner } from './runner.js';
import { parseMarker, parseTableReadback, type ChainReadback, type Counter, type TableReadback } from './readback.js';
import { assertOwnTable, type NftTransaction } from './transaction.js';
import { MARKER_SET, assertName, type Table } from './model.js';
import { ShellSpawner, SpawnTimeoutError, type SpawnResult } from './shell-spawner.js';
import { UnsupportedError, encodeReloadInPlace, encodeReplaceTable } from './netlink-batch.js';
import { errorMessage } from '../lib/errors.js';

export interface ExecaNftOptions {
  table: string;
  /** the command that runs nft, default ["nft"]; e.g. ["ip", "netns", "exec", "ns1", "nft"] in tests */
  command?: string[];
  /** per-call timeout, default 60 s; a call that outlives it is killed and throws NFT_TIMEOUT */
  timeoutMs?: number;
  /**
   * Start nft from a long-lived shell instead of from this process (see
   * shell-spawner.ts): each call's fork then costs the same however big this
   * process grows. For long-running processes (the agent); call close().
   */
  helper?: boolean;
  /**
   * The command that runs secgroup-nftload (native/secgroup-nftload.c), e.g.
   * ["/usr/lib/secgroup/secgroup-nftload"] or ["ip", "netns", "exec", "ns1", PATH] in tests:
   * full applies (replacement, reload in place) are sent as a netlink batch (see the note at the top)
   */
  loader?: string[];
  /**
   * With these, the loader is used only once probe() found one of these nft versions (the batches
   * netlink-batch.ts reproduces byte for byte: LOADER_NFT_VERSIONS); until then, and with another nft,
   * full applies go through nft -f (`nft-version`, said once). Without: the loader is used as given.
   */
  loaderNftVersions?: readonly string[];
  /**
   * a full apply went through `nft -f` instead of the loader, and why (`missing`: it is not tried again;
   * `refused`: a reload in place the kernel refused for a missing object, the table not being the one it
   * reloads, which nft -f then reports as the reconciler expects)
   */
  onLoaderFallback?: (reason: string, kind: LoaderFallbackKind) => void;
}

export type LoaderFallbackKind = 'unsupported' | 'missing' | 'failed' | 'refused' | 'nft-version';

/** The nft versions whose batches netlink-batch.ts is checked against (test/kernel/netlink-batch.test.ts). */
export const LOADER_NFT_VERSIONS: readonly string[] = ['1.0.6'];

/** Why the loader did not apply a batch (the transaction then goes through nft -f). */
class LoaderFallback extends Error {
  constructor(
    message: string,
    readonly kind: LoaderFallbackKind,
  ) {
    super(message);
  }
}

interface RunResult {
  stdout: string;
  stderr: string;
}

const isExecaError = (e: unknown): e is ExecaError => e instanceof ExecaError;

/**
 * Writes `chunks` to nft's stdin with back-pressure and ends it. Stops
 * writing, without an error, when nft closed its stdin (it failed early: its
 * exit says why). Throws what the chunks' producer throws (a render error),
 * before ending the input: the caller must kill nft then.
 */
async function feed(stdin: Writable, chunks: Iterable<string>): Promise<void> {
  let closed = false;
  stdin.on('error', () => (closed = true)); // EPIPE: nft exited; its exit code and stderr are the error
  stdin.once('close', () => (closed = true));
  for (const chunk of chunks) {
    if (closed) return;
    if (!stdin.write(chunk)) {
      await new Promise<void>((resolve) => {
        const done = () => {
          stdin.off('drain', done);
          stdin.off('close', done);
          resolve();
        };
        stdin.on('drain', done);
        stdin.on('close', done);
      });
    }
  }
  stdin.end();
}

export class ExecaNftRunner implements NftRunner {
  readonly family = 'inet' as const;
  readonly table: string;
  private readonly command: string[];
  private readonly timeoutMs: number;
  private readonly spawner: ShellSpawner | null;
  private loader: string[] | null;
  private readonly loaderSpawner: ShellSpawner | null;
  private readonly onLoaderFallback: ExecaNftOptions['onLoaderFallback'];
  private readonly loaderNftVersions: readonly string[] | null;
  /** the loader may be used: no version gate, or probe() found a version it was checked against */
  private loaderOpen: boolean;

  constructor(opts: ExecaNftOptions) {
    this.table = assertName(opts.table);
    this.command = opts.command ?? ['nft'];
    this.timeoutMs = opts.timeoutMs ?? 60_000;
    this.loader = opts.loader?.length ? opts.loader : null;
    this.onLoaderFallback = opts.onLoaderFallback;
    this.loaderNftVersions = opts.loaderNftVersions ?? null;
    this.loaderOpen = this.loaderNftVersions === null;
    let spawner: ShellSpawner | null = null;
    let loaderSpawner: ShellSpawner | null = null;
    if (opts.helper) {
      try {
        spawner = new ShellSpawner(this.command, this.timeoutMs);
        // the loader from a shell of its own, started now too (its batch file is its stdin)
        if (this.loader) loaderSpawner = new ShellSpawner(this.loader, this.timeoutMs);
      } catch (e) {
        // no private directory or no /bin/sh: nft is started from this process, as the CLI does
        this.helperError = errorMessage(e);
      }
    }
    this.spawner = spawner;
    this.loaderSpawner = loaderSpawner;
  }

  /** Why the helper shell asked for could not be started (nft then runs directly); null when it runs or was not asked for. */
  helperError: string | null = null;

  /** Stops the helper shell, if any. */
  close(): void {
    this.spawner?.close();
    this.loaderSpawner?.close();
  }

  /** Is a full apply sent by the loader (given, not found missing, and the nft version gate open)? */
  get usesLoader(): boolean {
    return this.loader !== null && this.loaderOpen;
  }

  /**
   * Sends the batch of a full apply through the loader. Throws
   * LoaderFallback when nft -f should apply it instead, a timeout as nft's.
   */
  private async load(op: { table: Table; counters?: RuleCounters; previous?: Table }): Promise<void> {
    const loader = this.loader!;
    const what = `${loader[loader.length - 1]}`;
    let r: { exitCode: number; stdout: string; stderr: string };
    try {
      const batch = op.previous ? encodeReloadInPlace(op.table, op.previous) : encodeReplaceTable(op.table, op.counters);
      if (this.loaderSpawner) r = await this.loaderSpawner.run([], batch);
      else {
        const [file, ...pre] = loader;
        const sub = await execa(file!, pre, { input: Buffer.concat(Array.from(batch, (piece) => Buffer.from(piece))), reject: false, timeout: this.timeoutMs, encoding: 'utf8', stripFinalNewline: false });
        if (sub.timedOut) throw new SpawnTimeoutError(`timed out after ${this.timeoutMs} ms`);
        r = { exitCode: sub.exitCode ?? (sub.failed && (sub as { code?: string }).code === 'ENOENT' ? 127 : 1), stdout: sub.stdout, stderr: sub.stderr };
      }
    } catch (e) {
      if (e instanceof UnsupportedError) throw new LoaderFallback(`the table holds what the netlink encoder does not produce (${e.message})`, 'unsupported');
      if (e instanceof SpawnTimeoutError) throw nftTimeout(what, this.timeoutMs, e);
      throw new LoaderFallback(`${what} could not run: ${errorMessage(e)}`, 'failed');
    }
    if (r.exitCode === 0) return;
    const lines = r.stderr.split('\n').filter((l) => l.trim());
    const line = lines.slice(0, 3).join('; ').slice(0, 500) || 'no message';
    // 126/127: the shell could not run it
    if (r.exitCode === 127 || r.exitCode === 126) throw new LoaderFallback(`${what} not found or not executable (${line})`, 'missing');
    const errors = lines.filter((l) => l.startsWith('error seq '));
    if (op.previous && errors.length && errors.every((l) => / errno 2 /.test(l))) throw new LoaderFallback(`the kernel refused the reload in place (${line})`, 'refused');
    throw new LoaderFallback(`${what} failed (exit ${r.exitCode}): ${line}`, 'failed');
  }

  private async run(what: string, args: string[], input?: Iterable<string>): Promise<RunResult> {
    if (this.spawner) {
      let r: SpawnResult;
      try {
        r = await this.spawner.run(args, input);
      } catch (e) {
        if (e instanceof SpawnTimeoutError) throw nftTimeout(what, this.timeoutMs, e);
        throw nftError(what, errorMessage(e), undefined, e);
      }
      // 127: the shell did not find the command
      if (r.exitCode === 127) throw nftNotFound(new Error(r.stderr.trim()));
      if (r.exitCode !== 0) throw nftError(what, r.stderr, r.exitCode);
      return { stdout: r.stdout, stderr: r.stderr };
    }
    const [file, ...pre] = this.command;
    try {
      const sub = execa(file!, [...pre, ...args], { stdin: input === undefined ? 'ignore' : 'pipe', timeout: this.timeoutMs, stripFinalNewline: false, encoding: 'utf8' });
      if (input !== undefined) {
        try {
          await feed(sub.stdin!, input);
        } catch (renderError) {
          // nft must never see the end of a script cut short (its first chunk alone deletes our table): killed before its stdin closes
          sub.kill('SIGKILL');
          await sub.catch(() => undefined);
          throw renderError;
        }
      }
      const r = await sub;
      return { stdout: r.stdout, stderr: r.stderr };
    } catch (e) {
      if (!isExecaError(e)) throw e;
      if (e.code === 'ENOENT') throw nftNotFound(e);
      if (e.timedOut) throw nftTimeout(what, this.timeoutMs, e);
      throw nftError(what, String(e.stderr ?? e.message), e.exitCode, e);
    }
  }

  async probe(): Promise<NftInfo> {
    const r = await this.run('nft --version', ['--version']);
    const m = /v(\d+\.\d+(?:\.\d+)?)/.exec(r.stdout);
    let tableExists = true;
    try {
      await this.run(`nft list table ${this.family} ${this.table}`, ['-t', 'list', 'table', this.family, this.table]);
    } catch (e) {
      if ((e as { code?: string }).code !== 'NFT_NOT_FOUND_OBJECT') throw e;
      tableExists = false;
    }
    const version = m ? m[1]! : r.stdout.trim();
    if (this.loader && this.loaderNftVersions && !this.loaderOpen) {
      this.loaderOpen = this.loaderNftVersions.includes(version);
      if (!this.loaderOpen) {
        this.dropLoader();
        this.onLoaderFallback?.(`nft ${version}: the netlink batch is checked against nft ${this.loaderNftVersions.join(', ')} only; full applies through nft -f (name the loader's path in nft_loader to use it anyway)`, 'nft-version');
      }
    }
    return { version, tableExists };
  }

  /** Throws unless `tx` touches this runner's table only. */
  private own(tx: NftTransaction): void {
    assertOwnTable(tx);
    if (tx.table !== this.table) throw new Error(`internal: runner for table ${this.table} got a transaction for ${tx.table}`);
  }

  private script(tx: NftTransaction): Iterable<string> {
    this.own(tx);
    return renderTransactionChunks(tx);
  }

  /** No more loader: full applies through nft -f from now on, its shell stopped. */
  private dropLoader(): void {
    this.loader = null;
    this.loaderSpawner?.close();
  }

  async check(tx: NftTransaction): Promise<void> {
    await this.run('nft --check', ['--check', '-f', '-'], this.script(tx));
  }

  async apply(tx: NftTransaction): Promise<void> {
    const op = tx.ops.length === 1 ? tx.ops[0]! : null;
    if (this.usesLoader && op?.op === 'replace-table') {
      this.own(tx);
      try {
        await this.load(op);
        return;
      } catch (e) {
        if (!(e instanceof LoaderFallback)) throw e;
        if (e.kind === 'missing') this.dropLoader();
        this.onLoaderFallback?.(e.message, e.kind);
      }
    }
    await this.run('nft -f', ['-f', '-'], this.script(tx));
  }

  /** Our chains and their rules' counters (`nft -t -j list table`); null when the table does not exist. */
  private async readChains(): Promise<ChainReadback[] | null> {
    try {
      const json = await this.run(`nft -t -j list table ${this.family} ${this.table}`, ['-t', '-j', 'list', 'table', this.family, this.table]);
      return parseTableReadback(json.stdout, '', this.family, this.table).chains;
    } catch (e) {
      if ((e as { code?: string }).code === 'NFT_NOT_FOUND_OBJECT') return null;
      throw e;
    }
  }

  async readCounters(): Promise<Map<string, Counter> | null> {
    const chains = await this.readChains();
    return chains && chainCounters(chains);
  }

  async readRuleCounters(): Promise<RuleCounters | null> {
    const chains = await this.readChains();
    return chains && ruleCounters(chains);
  }

  async readMarker(): Promise<string | null> {
    try {
      const r = await this.run(`nft -j list set ${this.family} ${this.table} ${MARKER_SET}`, ['-j', 'list', 'set', this.family, this.table, MARKER_SET]);
      return parseMarker(r.stdout, this.family, this.table);
    } catch (e) {
      if ((e as { code?: string }).code === 'NFT_NOT_FOUND_OBJECT') return null;
      throw e;
    }
  }

  async readTable(opts: { elements?: boolean } = {}): Promise<TableReadback | null> {
    const list = ['list', 'table', this.family, this.table];
    const elements = opts.elements ?? true;
    try {
      const json = elements
        ? await this.run(`nft -j list table ${this.family} ${this.table}`, ['-j', ...list])
        : await this.run(`nft -t -j list table ${this.family} ${this.table}`, ['-t', '-j', ...list]);
      const text = await this.run(`nft -t list table ${this.family} ${this.table}`, ['-t', ...list]);
      return parseTableReadback(json.stdout, text.stdout, this.family, this.table, elements);
    } catch (e) {
      if ((e as { code?: string }).code === 'NFT_NOT_FOUND_OBJECT') return null;
      throw e;
    }
  }
}
