/**
 * The flow mark's conntrack sweep (src/nft/conntrack.ts) against stand-ins
 * of conntrack(8) that answer as conntrack 1.4.7 does: the arguments it
 * gets, "0 flow entries" (exit 1) as a success, a missing tool, a failure
 * and a sweep that fails once (an entry gone between dump and update); and
 * of secgroup-ctmark (native/secgroup-ctmark.c): its arguments, its line,
 * its failures; which of the two the agent takes. The real ones against the
 * kernel: test/kernel/flow-mark.test.ts.
 */
import { chmodSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { ConntrackClearer, flowMarkClearer, NativeFlowMarkClearer } from '../../src/nft/conntrack.js';

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

describe('NativeFlowMarkClearer (secgroup-ctmark)', () => {
  it('runs "clear MASK" once (it runs its passes itself) and takes the count of updated entries from its line', async () => {
    const t = tool('ctmark-ok', 'echo "cleared 41 gone 2 passes 3 seen 90"');
    expect(await new NativeFlowMarkClearer({ path: t }).clear(0xffff0000)).toEqual({ ok: true, updated: 41 });
    expect(calls(t)).toEqual(['clear 0xffff0000']);
    // a command before it (a namespace in the tests)
    const pre = tool('ctmark-pre', 'shift; exec "$@"');
    expect(await new NativeFlowMarkClearer({ path: t, prefix: [pre, 'ns1'] }).clear(0x00ff0000)).toEqual({ ok: true, updated: 41 });
    expect(calls(t)[1]).toBe('clear 0x00ff0000');
  });

  it('a failure carries its message; a missing helper is `missing`; a timeout says so; exit 0 without the line is a failure', async () => {
    const bad = tool('ctmark-bad', 'echo "secgroup-ctmark: the kernel refused an update: Operation not permitted" >&2; exit 1');
    expect(await new NativeFlowMarkClearer({ path: bad }).clear(0xffff0000)).toEqual({ ok: false, missing: false, reason: `${bad} failed (exit 1): the kernel refused an update: Operation not permitted` });
    const gone = join(dir, 'no-such-ctmark');
    expect(await new NativeFlowMarkClearer({ path: gone }).clear(0xffff0000)).toEqual({ ok: false, missing: true, reason: `${gone} not found` });
    const slow = tool('ctmark-slow', 'exec sleep 5');
    expect(await new NativeFlowMarkClearer({ path: slow, timeoutMs: 200 }).clear(0xffff0000)).toEqual({ ok: false, missing: false, reason: `${slow} timed out after 200 ms` });
    const odd = tool('ctmark-odd', 'echo "something else"');
    expect(await new NativeFlowMarkClearer({ path: odd }).clear(0xffff0000)).toEqual({ ok: false, missing: false, reason: `${odd} failed (exit 0): something else` });
  });

  it('the agent takes the first secgroup-ctmark that exists, else conntrack(8)', () => {
    const c = flowMarkClearer(['/a/secgroup-ctmark', '/b/secgroup-ctmark', '/c/secgroup-ctmark'], (p) => !p.startsWith('/a/'), 1000);
    expect(c).toBeInstanceOf(NativeFlowMarkClearer);
    expect((c as NativeFlowMarkClearer).path).toBe('/b/secgroup-ctmark');
    expect(flowMarkClearer(['/a/secgroup-ctmark'], () => false, 1000)).toBeInstanceOf(ConntrackClearer);
  });
});

describe('secgroup-ctmark itself', () => {
  it('refuses a bad mask or usage with exit 2 before it opens a socket', async () => {
    const { execa } = await import('execa');
    const { REPO } = await import('../helpers/agent-lab.js');
    await execa('bash', [join(REPO, 'scripts/build-native.sh'), dir]);
    const bin = join(dir, 'secgroup-ctmark');
    for (const args of [[], ['clear'], ['clear', '0'], ['clear', '0x1ffffffff'], ['clear', 'ff'], ['sweep', '0xff']]) {
      const r = await execa(bin, args, { reject: false });
      expect([args, r.exitCode]).toEqual([args, 2]);
      expect(r.stderr).toMatch(/usage: secgroup-ctmark clear MASK|MASK must be a nonzero 32-bit number/);
    }
  });
});
