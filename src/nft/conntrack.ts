/**
 * Clearing the flow mark's field on every tracked connection (flow-mark.ts:
 * the start of an epoch). Two ways:
 *
 * - `NativeFlowMarkClearer`: our own ctnetlink sweep, native/secgroup-ctmark.c
 *   (built by scripts/build-native.sh, shipped in the packages). It reads the
 *   dump batch by batch and updates only the entries whose field is set, so
 *   it finishes on a big table, also one that changes while it runs (234k
 *   entries with new connections made all through it: one pass, 0.98 s;
 *   `npm run bench -- sweep`, bench/README.md "Issue 18 round 11").
 *   Preferred.
 * - `ConntrackClearer`: conntrack(8) from conntrack-tools, the fallback when
 *   the helper is not there (a checkout without gcc). conntrack 1.4.7 stops
 *   with "No buffer space available" after ~256 updates, on a still table
 *   too: with more marked connections than that a sweep fails (each clears
 *   ~768 in its three tries), and the agent stays unarmed until enough
 *   sweeps, a backoff apart, got through:
 *
 *     conntrack -U -f ipv4 -m 0/MASK     (then -f ipv6)
 *
 * `-U` dumps the table and updates each entry whose mark changes ("-m
 * 0/MASK": zero the bits under MASK, xor 0); entries whose field is already
 * 0 are skipped. Only the bits under the mask are written: the rest of the
 * mark belongs to other software. The family is given because the kernel
 * refuses the per-entry request of an AF_UNSPEC dump ("Operation not
 * supported", seen with conntrack 1.4.7 on Linux 6.18). conntrack exits 1
 * when it updated nothing ("0 flow entries have been updated."): that is a
 * success here.
 */
import { execa } from 'execa';
import { hex } from './flow-mark.js';

export const CTMARK_FILE = 'secgroup-ctmark';

export type ClearResult = { ok: true; updated: number } | { ok: false; missing: boolean; reason: string };

export interface FlowMarkClearer {
  /** Zeroes the bits under `mask` in the mark of every IPv4 and IPv6 connection. Never throws. */
  clear(mask: number): Promise<ClearResult>;
}

export interface ConntrackClearerOptions {
  /** the command that runs conntrack, default ["conntrack"]; e.g. ["ip", "netns", "exec", "ns1", "conntrack"] in tests */
  command?: string[];
  timeoutMs?: number;
}

const UPDATED_RE = /(\d+) flow entries have been updated/;

/** A sweeper's run that did not succeed: the program missing (ENOENT, or 127 from a wrapper such as `ip netns exec`), timed out, or failed. */
function runFailure(r: { exitCode?: number; timedOut: boolean }, reasons: { missing: string; timedOut: string; failed: () => string }): { ok: false; missing: boolean; reason: string } {
  const missing = (r as { code?: string }).code === 'ENOENT' || r.exitCode === 127;
  return { ok: false, missing, reason: missing ? reasons.missing : r.timedOut ? reasons.timedOut : reasons.failed() };
}
const ATTEMPTS = 3;

export class ConntrackClearer implements FlowMarkClearer {
  private readonly command: string[];
  private readonly timeoutMs: number;

  constructor(opts: ConntrackClearerOptions = {}) {
    this.command = opts.command ?? ['conntrack'];
    this.timeoutMs = opts.timeoutMs ?? 60_000;
  }

  /**
   * conntrack -U stops at the first error: an entry gone between the dump
   * and its update, or "No buffer space available" after ~256 updates
   * (conntrack 1.4.7, still table or not; `npm run bench -- sweep`). A failed
   * sweep is run again, up to `ATTEMPTS` times; the entries it cleared
   * before are skipped then. If all fail, the caller stays unarmed (correct)
   * and tries again after a backoff.
   */
  async clear(mask: number): Promise<ClearResult> {
    let last: ClearResult = { ok: false, missing: false, reason: 'not run' };
    for (let attempt = 0; attempt < ATTEMPTS; attempt++) {
      const r = await this.sweep(mask);
      last = r.result;
      if (last.ok || last.missing || r.timedOut) return last;
    }
    return last;
  }

  private async sweep(mask: number): Promise<{ result: ClearResult; timedOut?: boolean }> {
    const [file, ...pre] = this.command;
    let updated = 0;
    for (const family of ['ipv4', 'ipv6']) {
      const r = await execa(file!, [...pre, '-U', '-f', family, '-m', `0/${hex(mask)}`], { reject: false, timeout: this.timeoutMs, stdin: 'ignore' });
      const text = `${r.stderr}\n${r.stdout}`;
      const n = UPDATED_RE.exec(text);
      if (r.exitCode !== undefined && r.exitCode <= 1 && n) {
        updated += Number(n[1]);
        continue;
      }
      const line = text.split('\n').find((l) => l.trim()) ?? '';
      const result = runFailure(r, {
        missing: `${file} not found (install conntrack: apt-get install conntrack)`,
        timedOut: `${this.command.join(' ')} -U timed out after ${this.timeoutMs} ms`,
        failed: () => `${this.command.join(' ')} -U -f ${family} failed (exit ${r.exitCode ?? 'none'}): ${line.replace(/^conntrack v[\d.]+ \(conntrack-tools\): /, '').trim().slice(0, 300)}`,
      });
      return { result, timedOut: r.timedOut };
    }
    return { result: { ok: true, updated } };
  }
}

export interface NativeFlowMarkClearerOptions {
  /** the helper, native/secgroup-ctmark.c */
  path: string;
  /** run before the path, e.g. ["ip", "netns", "exec", "ns1"] in tests */
  prefix?: string[];
  timeoutMs?: number;
}

const NATIVE_RE = /^cleared (\d+) gone (\d+) passes (\d+) seen (\d+)$/m;

/**
 * The sweep with secgroup-ctmark: `secgroup-ctmark clear MASK` (both
 * families; it runs the dump again itself when the kernel cuts it, up to 8
 * times). Exit 0 with "cleared N gone G passes P seen S"; exit 1 with the
 * reason on stderr.
 */
export class NativeFlowMarkClearer implements FlowMarkClearer {
  readonly path: string;
  private readonly prefix: string[];
  private readonly timeoutMs: number;

  constructor(opts: NativeFlowMarkClearerOptions) {
    this.path = opts.path;
    this.prefix = opts.prefix ?? [];
    this.timeoutMs = opts.timeoutMs ?? 60_000;
  }

  async clear(mask: number): Promise<ClearResult> {
    const [file, ...pre] = [...this.prefix, this.path];
    const r = await execa(file!, [...pre, 'clear', hex(mask)], { reject: false, timeout: this.timeoutMs, stdin: 'ignore' });
    const n = NATIVE_RE.exec(r.stdout);
    if (r.exitCode === 0 && n) return { ok: true, updated: Number(n[1]) };
    const line = r.stderr.split('\n').find((l) => l.trim())?.replace(/^secgroup-ctmark: /, '').trim().slice(0, 300) ?? '';
    return runFailure(r, {
      missing: `${this.path} not found`,
      timedOut: `${this.path} timed out after ${this.timeoutMs} ms`,
      failed: () => `${this.path} failed (exit ${r.exitCode ?? 'none'}): ${line || r.stdout.trim().slice(0, 300) || 'no message'}`,
    });
  }
}

/**
 * The clearer the agent uses: secgroup-ctmark from the first of `candidates`
 * that exists, else conntrack(8).
 */
export function flowMarkClearer(candidates: readonly string[], exists: (path: string) => boolean, timeoutMs: number): ConntrackClearer | NativeFlowMarkClearer {
  const path = candidates.find(exists);
  return path === undefined ? new ConntrackClearer({ timeoutMs }) : new NativeFlowMarkClearer({ path, timeoutMs });
}
