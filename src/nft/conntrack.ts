/**
 * Clearing the flow mark's field on every tracked connection (flow-mark.ts:
 * the start of an epoch), with conntrack(8) from conntrack-tools:
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
const ATTEMPTS = 3;

export class ConntrackClearer implements FlowMarkClearer {
  private readonly command: string[];
  private readonly timeoutMs: number;

  constructor(opts: ConntrackClearerOptions = {}) {
    this.command = opts.command ?? ['conntrack'];
    this.timeoutMs = opts.timeoutMs ?? 60_000;
  }

  /**
   * conntrack -U stops at the first error. On a big table that changes
   * while it runs, the dump outruns its one-by-one updates and the socket
   * overflows ("Operation failed: No buffer space available": 38 of 40
   * sweeps over ~40k connections being made and marked, bench/README.md
   * round 10). A failed sweep is run again, up to `ATTEMPTS` times; the
   * entries it cleared before are skipped then. If all fail, the caller
   * stays unarmed (correct) and tries again at its next sync.
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
      const missing = (r as { code?: string }).code === 'ENOENT' || r.exitCode === 127;
      const line = text.split('\n').find((l) => l.trim()) ?? '';
      const reason = missing
        ? `${file} not found (install conntrack: apt-get install conntrack)`
        : r.timedOut
          ? `${this.command.join(' ')} -U timed out after ${this.timeoutMs} ms`
          : `${this.command.join(' ')} -U -f ${family} failed (exit ${r.exitCode ?? 'none'}): ${line.replace(/^conntrack v[\d.]+ \(conntrack-tools\): /, '').trim().slice(0, 300)}`;
      return { result: { ok: false, missing, reason }, timedOut: r.timedOut };
    }
    return { result: { ok: true, updated } };
  }
}
