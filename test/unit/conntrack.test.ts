/**
 * The flow mark's conntrack sweep (src/nft/conntrack.ts) against stand-ins
 * of conntrack(8) that answer as conntrack 1.4.7 does: the arguments it
 * gets, "0 flow entries" (exit 1) as a success, a missing tool, a failure
 * and a sweep that fails once (an entry gone between dump and update). The
 * real tool against the kernel: test/kernel/flow-mark.test.ts.
 */
import { chmodSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { ConntrackClearer } from '../../src/nft/conntrack.js';

const dir = mkdtempSync(join(tmpdir(), 'sgt-conntrack-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** A stand-in that logs its arguments and runs `body` (sh). */
function tool(name: string, body: string): string {
  const path = join(dir, name);
  writeFileSync(path, `#!/bin/sh\necho "$*" >> '${path}.log'\n${body}\n`);
  chmodSync(path, 0o755);
  return path;
}
const calls = (path: string) => readFileSync(`${path}.log`, 'utf8').trim().split('\n');

describe('ConntrackClearer', () => {
  it('clears the bits under the mask, IPv4 then IPv6, and adds up what was updated; "0 flow entries" with exit 1 is a success', async () => {
    const t = tool('ct-ok', 'case "$3" in ipv4) echo "conntrack v1.4.7 (conntrack-tools): 3 flow entries have been updated." >&2; exit 0;; *) echo "conntrack v1.4.7 (conntrack-tools): 0 flow entries have been updated." >&2; exit 1;; esac');
    expect(await new ConntrackClearer({ command: [t] }).clear(0xffff0000)).toEqual({ ok: true, updated: 3 });
    expect(calls(t)).toEqual(['-U -f ipv4 -m 0/0xffff0000', '-U -f ipv6 -m 0/0xffff0000']);
  });

  it('a missing tool: `missing`, with what to install', async () => {
    expect(await new ConntrackClearer({ command: [join(dir, 'no-such-conntrack')] }).clear(0xffff0000)).toEqual({
      ok: false,
      missing: true,
      reason: `${join(dir, 'no-such-conntrack')} not found (install conntrack: apt-get install conntrack)`,
    });
  });

  it('a failure says which family and why (tried three times); a sweep that fails once is run again', async () => {
    const bad = tool('ct-bad', 'echo "conntrack v1.4.7 (conntrack-tools): Operation failed: Operation not permitted" >&2; exit 1');
    expect(await new ConntrackClearer({ command: [bad] }).clear(0x00ff0000)).toEqual({ ok: false, missing: false, reason: `${bad} -U -f ipv4 failed (exit 1): Operation failed: Operation not permitted` });
    expect(calls(bad)).toHaveLength(3);
    const flaky = tool(
      'ct-flaky',
      `if [ ! -e '${dir}/flaky-once' ]; then touch '${dir}/flaky-once'; echo "conntrack v1.4.7 (conntrack-tools): Operation failed: No such file or directory" >&2; exit 1; fi
echo "conntrack v1.4.7 (conntrack-tools): 1 flow entries have been updated." >&2; exit 0`,
    );
    expect(await new ConntrackClearer({ command: [flaky] }).clear(0xffff0000)).toEqual({ ok: true, updated: 2 });
    expect(calls(flaky)).toEqual(['-U -f ipv4 -m 0/0xffff0000', '-U -f ipv4 -m 0/0xffff0000', '-U -f ipv6 -m 0/0xffff0000']);
  });

  it('a sweep that outlives the timeout fails at once (not run again)', async () => {
    const slow = tool('ct-slow', 'exec sleep 5');
    const r = await new ConntrackClearer({ command: [slow], timeoutMs: 200 }).clear(0xffff0000);
    expect(r).toEqual({ ok: false, missing: false, reason: `${slow} -U timed out after 200 ms` });
    expect(calls(slow)).toHaveLength(1);
  });
});
