/**
 * The nft edge: everything secgroup asks of nftables goes through an
 * `NftRunner` bound to one table. `ExecaNftRunner` (exec.ts) runs the `nft`
 * binary; `FakeNft` (fake.ts) keeps the table in memory for unit tests.
 */
import { SecgroupError, type ErrorCode } from '../lib/errors.js';
import type { RuleCounters } from './counters.js';
import type { Counter, TableReadback } from './readback.js';
import type { NftTransaction } from './transaction.js';

export interface NftInfo {
  /** e.g. "1.0.6" */
  version: string;
  /** whether our table existed when it was listed */
  tableExists: boolean;
}

export interface NftRunner {
  readonly family: 'inet';
  /** the one table this runner reads and writes */
  readonly table: string;
  /**
   * Is nft usable? Runs `nft --version` and lists our own table (never any
   * other), which tells whether it exists. Throws SecgroupError NFT_NOT_FOUND ("nft not found - install
   * nftables") or NFT_PERMISSION ("permission denied - needs CAP_NET_ADMIN").
   */
  probe(): Promise<NftInfo>;
  /** `nft --check`: validates the transaction in the kernel without changing anything. Throws NFT_* errors. */
  check(tx: NftTransaction): Promise<void>;
  /** Runs the transaction as one atomic batch (`nft -f -`): all of it or nothing. Throws NFT_* errors. */
  apply(tx: NftTransaction): Promise<void>;
  /**
   * Reads our table back; null when it does not exist. With `elements: false`
   * map elements are not listed (`nft -t`: cost independent of map sizes) and
   * `maps[].elements` is null; the fingerprint is the same either way.
   * Throws NFT_PERMISSION / NFT_FAILED.
   */
  readTable(opts?: { elements?: boolean }): Promise<TableReadback | null>;
  /**
   * The first counter of every chain (chain name -> counter), without reading
   * map elements (`nft -t`): cheap enough for every metrics scrape. Null when
   * the table does not exist. Throws NFT_PERMISSION / NFT_FAILED.
   */
  readCounters(): Promise<Map<string, Counter> | null>;
  /**
   * The counts of every identified rule (counters.ts), to carry over a full
   * reload; null when the table does not exist. Lists the table without
   * elements (`nft -t`; nft 1.0.6 still loads set elements into its cache:
   * ~1.3 s at 100k members). Throws NFT_PERMISSION / NFT_FAILED. The real
   * runner starts nft within the call when it is idle (the agent compiles meanwhile).
   */
  readRuleCounters(): Promise<RuleCounters | null>;
  /**
   * The generation marker of our table (`nft list set`: milliseconds, whatever
   * the map sizes); null when the table or the marker does not exist.
   * Throws NFT_PERMISSION / NFT_FAILED.
   */
  readMarker(): Promise<string | null>;
}

/**
 * The line of nft's stderr that says what went wrong: the first `Error:` line
 * (nft prints the failing script line and a caret line under it, and that
 * echo can hold any text, e.g. a comment reading "No such file or
 * directory"), else the first non-empty line (stderr without an `Error:`
 * line: "Operation not permitted (you must be root)", a timeout). nft never
 * calls setlocale(), so the texts are English whatever the locale.
 */
function errorLine(stderr: string): string {
  const lines = stderr.split('\n');
  return lines.find((l) => l.includes('Error:')) ?? lines.find((l) => l.trim()) ?? '';
}

/**
 * Typed error from a failed nft run (pure: stderr and exit code in, error
 * out). The code comes from nft's error line only (see errorLine; knftables
 * error.go does the same): NFT_PERMISSION, NFT_SYNTAX, NFT_NOT_FOUND_OBJECT,
 * NFT_EXISTS, else NFT_FAILED.
 */
export function nftError(what: string, stderr: string, exitCode: number | undefined, cause?: unknown): SecgroupError {
  const line = errorLine(stderr);
  let code: ErrorCode = 'NFT_FAILED';
  if (/Operation not permitted|Permission denied|you must be root/i.test(line)) code = 'NFT_PERMISSION';
  else if (/syntax error/i.test(line)) code = 'NFT_SYNTAX';
  else if (/No such file or directory/i.test(line)) code = 'NFT_NOT_FOUND_OBJECT';
  else if (/File exists/i.test(line)) code = 'NFT_EXISTS';
  const reason = line.replace(/^.*?Error:\s*/, '').trim().slice(0, 500) || `exit code ${exitCode ?? 'unknown'}`;
  const message =
    code === 'NFT_PERMISSION'
      ? `${what}: permission denied - needs CAP_NET_ADMIN (run as root or grant the capability): ${reason}`
      : `${what} failed: ${reason}`;
  return new SecgroupError(code, message, { cause, details: { stderr: stderr.slice(0, 4000), exitCode } });
}

/**
 * nft did not finish within `timeoutMs` and was killed (SIGKILL with the
 * helper shell, SIGTERM when started directly). Killed before it commits, the
 * kernel never saw the batch; a batch already committed stays whole: nft -f is
 * one atomic transaction either way.
 */
export function nftTimeout(what: string, timeoutMs: number, cause?: unknown): SecgroupError {
  return new SecgroupError('NFT_TIMEOUT', `${what} did not finish within ${timeoutMs} ms and was killed (nft_timeout_ms); the previous ruleset stays`, { cause, details: { timeoutMs } });
}

/**
 * What the kernel answers when a transaction names an object that is not
 * there (`object`: "map in4_l0_ports_eee", "element", "set sg_generation"),
 * as the real runner reports it: NFT_NOT_FOUND_OBJECT. FakeNft uses it so
 * that fake and real failures have the same code and message.
 */
export function nftMissingObject(what: string, object: string): SecgroupError {
  return nftError(what, `Error: Could not process rule: No such file or directory (${object})`, 1);
}

/** A failure nft reports in `reason` (FakeNft's injected failures): NFT_FAILED unless the reason says otherwise. */
export function nftFailed(what: string, reason: string): SecgroupError {
  return nftError(what, `Error: ${reason}`, 1);
}

export function nftNotFound(cause?: unknown): SecgroupError {
  return new SecgroupError('NFT_NOT_FOUND', 'nft not found - install nftables (the nft command must be on PATH)', { cause });
}
