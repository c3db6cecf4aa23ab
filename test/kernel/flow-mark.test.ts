/**
 * The flow mark (src/nft/flow-mark.ts) with real connections through the
 * real kernel: an allowed connection's later packets skip the rules; a
 * policy change (a new generation) matches each connection once more, so a
 * removed rule cuts it at its next packet and a kept one keeps it; the
 * conntrack sweep of a new epoch (nft/conntrack.ts: secgroup-ctmark, and
 * conntrack(8) as the fallback) clears our bits and no others, and is what
 * keeps a stale mark from an earlier epoch out; secgroup-ctmark finishes on a
 * big table that changes while it runs; the reconciler arms flow_known by
 * itself.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { AgentMetrics } from '../../src/agent/metrics.js';
import { Reconciler } from '../../src/agent/reconciler.js';
import { MemoryStateStore } from '../../src/agent/state-store.js';
import { FakeClock } from '../../src/lib/clock.js';
import { silentLogger } from '../../src/lib/logger.js';
import { compilePolicy, ruleChainName } from '../../src/nft/compile.js';
import { ConntrackClearer, CTMARK_FILE, NativeFlowMarkClearer, type FlowMarkClearer } from '../../src/nft/conntrack.js';
import { ExecaNftRunner } from '../../src/nft/exec.js';
import { setFlowGeneration } from '../../src/nft/flow-mark.js';
import { renderScript } from '../../src/nft/render.js';
import { DEFAULT_PLATFORM } from '../../src/policy/platform.js';
import { parsePolicy, type PolicyInput, type RuleInput } from '../../src/policy/schema.js';
import { REPO } from '../helpers/agent-lab.js';
import { LAYOUT, type OpenConnection } from '../helpers/netns.js';
import { describeKernel, useLab } from '../helpers/vitest-lab.js';

const H4 = '198.18.0.10';
const MASK = DEFAULT_PLATFORM.flowMarkMask;
const EGRESS_ALL: RuleInput[] = [
  { id: 'out4', direction: 'egress', ethertype: 'IPv4' },
  { id: 'out6', direction: 'egress', ethertype: 'IPv6' },
];

function doc(port: number | null, revision = 1): PolicyInput {
  return {
    revision,
    instance: { id: 'kernel-host', addresses: [H4] },
    security_groups: [{ id: 'sg', name: 'sg', rules: [...(port === null ? [] : [{ id: `tcp-${port}`, direction: 'ingress' as const, protocol: 'tcp', multiport: String(port) }]), ...EGRESS_ALL] }],
    address_groups: [],
    group_members: {},
  };
}

/** Is conntrack(8) installed (the sweep's tool)? */
async function haveConntrack(): Promise<boolean> {
  return (await execa('conntrack', ['--version'], { reject: false })).exitCode === 0;
}

describeKernel('the flow mark in the kernel', () => {
  const lab = useLab({ extraHostAddrs: [] });
  const inHost = () => ['ip', 'netns', 'exec', lab().ns.host];
  // secgroup-ctmark built from this checkout (scripts/build-native.sh)
  let bin = '';
  beforeAll(async () => {
    bin = mkdtempSync(join(tmpdir(), 'sgt-ctmark-'));
    await execa('bash', [join(REPO, 'scripts/build-native.sh'), bin]);
  });
  afterAll(() => rmSync(bin, { recursive: true, force: true }));
  const native = () => new NativeFlowMarkClearer({ path: join(bin, CTMARK_FILE), prefix: inHost() });

  /** A reconciler on the host's table, as the agent sets it up (secgroup-ctmark its sweeper); no drift after `body`; stopped after it. */
  async function withReconciler(body: (r: Reconciler) => Promise<void>, flowMarks: FlowMarkClearer = native()): Promise<void> {
    await lab().clearRuleset();
    const runner = nft();
    const r = new Reconciler({
      nft: runner,
      store: new MemoryStateStore(),
      clock: new FakeClock(),
      logger: silentLogger(),
      metrics: new AgentMetrics(),
      platform: DEFAULT_PLATFORM,
      checkBeforeApply: false,
      flowMarks,
    });
    try {
      await body(r);
      expect(await r.checkDrift()).toBeNull();
    } finally {
      await r.stop();
      runner.close();
    }
  }
  const nft = () => new ExecaNftRunner({ table: 'secgroup', command: [...inHost(), 'nft'] });

  /** Applies `input` compiled with generation `gen`, armed or not (what the reconciler sends). */
  async function apply(input: PolicyInput, gen: number, armed: boolean): Promise<void> {
    const { table } = compilePolicy(parsePolicy(input));
    setFlowGeneration(table, gen, armed);
    await lab().applyScript(renderScript(table));
  }

  /** The packets the rule's counter counted (rule `tcp-<port>` of group sg). */
  async function ruleCount(port: number): Promise<number> {
    const counters = await nft().readCounters();
    return counters?.get(ruleChainName('sg', `tcp-${port}`))?.packets ?? -1;
  }

  /** The conntrack marks of the host's TCP connections to `port`. */
  async function marks(port: number): Promise<number[]> {
    const r = await lab().exec('host', 'conntrack', ['-L', '-f', 'ipv4', '-p', 'tcp', '--dport', String(port)], { reject: false });
    return [...r.stdout.matchAll(/mark=(\d+)/g)].map((m) => Number(m[1]));
  }

  /** The host's conntrack entries that `conntrack -L ARGS` lists, a line each. */
  async function entries(...args: string[]): Promise<string[]> {
    return (await lab().exec('host', 'conntrack', ['-L', ...args], { reject: false })).stdout.split('\n').filter((l) => l.trim());
  }

  /** Runs `body` on a connection from the client to an echo server on the host's `port`; both are closed after it. */
  async function withConnection(port: number, body: (conn: OpenConnection) => Promise<void>): Promise<void> {
    const srv = await lab().tcpListen('host', port);
    try {
      const conn = await lab().tcpOpen('client', H4, port, { timeoutMs: 2000 });
      try {
        expect(conn.status).toBe('connected');
        await body(conn);
      } finally {
        await conn.close();
      }
    } finally {
      await srv.close();
    }
  }

  it('armed: a connection is matched by its first packet only; unarmed: by every packet from the peer', async () => {
    for (const [armed, port] of [
      [true, 7101],
      [false, 7102],
    ] as const) {
      await apply(doc(port), 1, armed);
      await withConnection(port, async (conn) => {
        for (const line of ['one', 'two', 'three']) expect((await conn.sendLine(line, { timeoutMs: 2000 })).status).toBe('echoed');
        const counted = await ruleCount(port);
        // armed: the SYN; unarmed: the SYN, the handshake's ACK and every data segment (and ACK) from the client
        if (armed) expect(counted).toBe(1);
        else expect(counted).toBeGreaterThanOrEqual(5);
      });
    }
  });

  it('a new generation matches each connection once more: a removed rule cuts it at its next packet, a kept rule keeps it', async () => {
    await apply(doc(7103), 1, true);
    await withConnection(7103, async (kept) => {
      expect((await kept.sendLine('before', { timeoutMs: 2000 })).status).toBe('echoed');
      // the same rules under generation 2: matched again (the reload started the counter at 0), marked 2, kept
      await apply(doc(7103, 2), 2, true);
      expect((await kept.sendLine('after', { timeoutMs: 2000 })).status).toBe('echoed');
      expect((await kept.sendLine('again', { timeoutMs: 2000 })).status).toBe('echoed');
      expect(await ruleCount(7103)).toBe(1);
      expect(await marks(7103)).toContain(2 * 0x10000);
      // the rule removed under generation 3: its next packet is dropped
      await apply(doc(null, 3), 3, true);
      expect((await kept.sendLine('cut', { timeoutMs: 1500 })).status).not.toBe('echoed');
    });
  });

  it('the epoch sweep (secgroup-ctmark, and conntrack(8)) clears our bits of every connection and no others, and keeps a stale mark of an earlier epoch out', async () => {
    if (!(await haveConntrack())) throw new Error('conntrack(8) is not installed: apt-get install conntrack (.ci/run installs it)');
    // someone else's bits in the same mark: a bystander table sets 0x5 on the host's replies
    await lab().exec('host', 'nft', ['-f', '-'], { input: 'table inet bystander {\n\tchain out {\n\t\ttype filter hook output priority 10; policy accept;\n\t\ttcp sport 7104-7107 ct mark set ct mark or 0x5\n\t}\n}\n' });
    try {
      const fallback = new ConntrackClearer({ command: [...inHost(), 'conntrack'] });
      for (const [clearer, port] of [
        [null, 7104],
        [native(), 7105],
        [fallback, 7107],
      ] as const) {
        const sweep = clearer !== null;
        await apply(doc(port), 1, true);
        await withConnection(port, async (conn) => {
          expect((await conn.sendLine('allowed', { timeoutMs: 2000 })).status).toBe('echoed');
          expect(await marks(port)).toEqual([0x10005]);
          // the rule goes (generation 2): the connection is cut, its mark stays 1 (a drop marks nothing)
          await apply(doc(null, 2), 2, true);
          expect((await conn.sendLine('denied', { timeoutMs: 1000 })).status).not.toBe('echoed');
          expect(await marks(port)).toEqual([0x10005]);
          // a new epoch starts at generation 1 again, still without the rule
          await apply(doc(null, 3), 1, false);
          if (clearer) {
            expect(await clearer.clear(MASK)).toMatchObject({ ok: true });
            expect(await marks(port)).toEqual([0x5]);
          }
          await apply(doc(null, 3), 1, true);
          const after = await conn.sendLine('stale', { timeoutMs: 5000 });
          // without the sweep the stale generation 1 lets the connection through (the hazard the sweep is for)
          if (sweep) expect(after.status).not.toBe('echoed');
          else expect(after.status).toBe('echoed');
        });
      }
      // nothing to clear: still a success
      for (const clearer of [native(), fallback]) expect(await clearer.clear(MASK)).toEqual({ ok: true, updated: 0 });
    } finally {
      await lab().exec('host', 'nft', ['delete', 'table', 'inet', 'bystander'], { reject: false });
    }
  });

  it('secgroup-ctmark clears a big table in one sweep while new connections are made, our bits only, IPv4 and IPv6', async () => {
    await lab().clearRuleset();
    // the earlier tests' connections (marked, in TIME_WAIT) are not this test's
    await lab().exec('host', 'conntrack', ['-F'], { reject: false });
    const { v4, v6 } = LAYOUT.host;
    // 40k IPv4 and 4k IPv6 UDP flows from the client, marked 0x10005 by the host as the first epoch would (the 5 is someone else's);
    // the TCP connections made during the sweep are not marked (an unarmed epoch keeps the field at 0)
    await lab().exec('host', 'sysctl', ['-qw', 'net.netfilter.nf_conntrack_udp_timeout=600']);
    await lab().exec('host', 'nft', ['-f', '-'], {
      input: 'table inet marks {\n\tchain in {\n\t\ttype filter hook input priority 0; policy accept;\n\t\tmeta l4proto udp ct state new ct mark set 0x00010005\n\t}\n}\n',
    });
    try {
      const fill = [
        "const dgram = require('node:dgram');",
        'const [v4, v6] = process.argv.slice(1);',
        'async function burst(type, addr, n) {',
        '  for (let k = 0; k < n; k += 20000) {',
        '    const s = dgram.createSocket(type);',
        '    await new Promise((r) => s.bind(0, r));',
        '    for (let p = 1; p <= Math.min(20000, n - k); p++) await new Promise((r) => s.send("x", p, addr, r));',
        '    s.close();',
        '  }',
        '}',
        "burst('udp4', v4, 40000).then(() => burst('udp6', v6, 4000));",
      ].join('\n');
      await lab().exec('client', process.execPath, ['-e', fill, v4, v6], { timeoutMs: 120_000 });
      const count = async (family: string, mark: string) => (await entries('-f', family, '-m', mark)).length;
      const marked4 = await count('ipv4', '0x10005');
      const marked6 = await count('ipv6', '0x10005');
      // the veth may drop a few datagrams of the burst: most of them made a flow
      expect(marked4).toBeGreaterThan(30_000);
      expect(marked6).toBeGreaterThan(3_000);
      // new connections all through the sweep
      const srv = await lab().tcpListen('host', 7108, 4);
      const churn = lab().exec(
        'client',
        process.execPath,
        ['-e', `const net = require('node:net'); const end = Date.now() + 4000; let n = 0; (function go() { if (Date.now() > end) return console.log(n); const s = net.connect(7108, '${v4}', () => { n++; s.destroy(); go(); }); s.on('error', go); })();`],
        { timeoutMs: 30_000 },
      );
      try {
        await new Promise((r) => setTimeout(r, 1000));
        expect(await native().clear(MASK)).toEqual({ ok: true, updated: marked4 + marked6 });
      } finally {
        expect(Number((await churn).stdout)).toBeGreaterThan(100);
        await srv.close();
      }
      expect([await count('ipv4', '0x10000/0xffff0000'), await count('ipv6', '0x10000/0xffff0000')]).toEqual([0, 0]);
      expect([await count('ipv4', '0x5'), await count('ipv6', '0x5')]).toEqual([marked4, marked6]);
    } finally {
      await lab().exec('host', 'nft', ['delete', 'table', 'inet', 'marks'], { reject: false });
      await lab().exec('host', 'conntrack', ['-F'], { reject: false });
    }
  }, 180_000);

  it('secgroup-ctmark clears connections in other conntrack zones too (both directions, and the original one only)', async () => {
    await lab().clearRuleset();
    await lab().exec('host', 'conntrack', ['-F'], { reject: false });
    await lab().exec('host', 'nft', ['-f', '-'], {
      input:
        'table inet zones {\n\tchain pre {\n\t\ttype filter hook prerouting priority -300; policy accept;\n\t\tudp dport 1-50 ct zone set 5\n\t\tudp dport 51-100 ct original zone set 7\n\t}\n' +
        '\tchain in {\n\t\ttype filter hook input priority 0; policy accept;\n\t\tmeta l4proto udp ct state new ct mark set 0x00010005\n\t}\n}\n',
    });
    try {
      const send = `const s = require('node:dgram').createSocket('udp4'); (async () => { for (let p = 1; p <= 150; p++) await new Promise((r) => s.send('x', p, '${LAYOUT.host.v4}', r)); s.close(); })();`;
      await lab().exec('client', process.execPath, ['-e', send]);
      const list = (...args: string[]) => entries('-f', 'ipv4', '-p', 'udp', ...args);
      const before = await list('-m', '0x10005');
      expect(before.filter((l) => / zone=5 /.test(l))).toHaveLength(50);
      expect(before.filter((l) => / zone-orig=7 /.test(l))).toHaveLength(50);
      expect(before).toHaveLength(150);
      expect(await native().clear(MASK)).toEqual({ ok: true, updated: 150 });
      expect(await list('-m', '0x10000/0xffff0000')).toEqual([]);
      expect(await list('-m', '0x5')).toHaveLength(150);
    } finally {
      await lab().exec('host', 'nft', ['delete', 'table', 'inet', 'zones'], { reject: false });
      await lab().exec('host', 'conntrack', ['-F'], { reject: false });
    }
  });

  it('the reconciler arms flow_known by itself after the sweep, and a policy change through it cuts a connection whose rule went', async () => {
    await withReconciler(async (r) => {
      expect(await r.submit(parsePolicy(doc(7106)), 'controller')).toMatchObject({ status: 'applied' });
      // the sweep and the arming follow the ack
      await r.idle();
      expect(r.flowMark).toEqual({ mask: MASK, generation: 1, armed: true, reason: null });
      expect((await lab().exec('host', 'nft', ['list', 'chain', 'inet', 'secgroup', 'flow_known'])).stdout).toContain('ct mark 0x00010000/16 accept');
      await withConnection(7106, async (conn) => {
        for (const line of ['one', 'two']) expect((await conn.sendLine(line, { timeoutMs: 2000 })).status).toBe('echoed');
        expect(await ruleCount(7106)).toBe(1);
        expect(await r.submit(parsePolicy(doc(null, 2)), 'controller')).toMatchObject({ status: 'applied' });
        expect(r.flowMark).toMatchObject({ generation: 2, armed: true });
        expect((await conn.sendLine('cut', { timeoutMs: 1500 })).status).not.toBe('echoed');
      });
    });
  });

  it('a change that arrives while the sweep runs is applied at once, unarmed; the arming then takes its generation, and a connection made meanwhile skips the rules after its next packet', async () => {
    // the sweep held at a gate, then the real secgroup-ctmark
    let release!: () => void;
    const gate = new Promise<void>((resolve) => (release = resolve));
    const real = native();
    let sweeps = 0;
    const held: FlowMarkClearer = {
      clear: async (mask) => {
        sweeps++;
        await gate;
        return real.clear(mask);
      },
    };
    const two = (revision: number): PolicyInput => ({ ...doc(7110, revision), security_groups: [{ id: 'sg', name: 'sg', rules: [{ id: 'tcp-7110', direction: 'ingress', protocol: 'tcp', multiport: '7110' }, { id: 'tcp-7111', direction: 'ingress', protocol: 'tcp', multiport: '7111' }, ...EGRESS_ALL] }] });
    await withReconciler(async (r) => {
      expect(await r.submit(parsePolicy(doc(7110)), 'controller')).toMatchObject({ status: 'applied' });
      // a rule added while the sweep waits: applied without waiting for it, a new generation, still unarmed
      expect(await r.submit(parsePolicy(two(2)), 'controller')).toMatchObject({ status: 'applied' });
      expect(sweeps).toBe(1);
      expect(r.flowMark).toMatchObject({ generation: 2, armed: false });
      expect((await lab().exec('host', 'nft', ['list', 'chain', 'inet', 'secgroup', 'flow_known'])).stdout).not.toContain('accept');
      await withConnection(7110, async (conn) => {
        // unarmed: every packet from the client runs the rules
        for (const line of ['one', 'two']) expect((await conn.sendLine(line, { timeoutMs: 2000 })).status).toBe('echoed');
        expect(await ruleCount(7110)).toBeGreaterThan(2);
        release();
        await r.idle();
        expect(r.flowMark).toEqual({ mask: MASK, generation: 2, armed: true, reason: null });
        expect((await lab().exec('host', 'nft', ['list', 'chain', 'inet', 'secgroup', 'flow_known'])).stdout).toContain('ct mark 0x00020000/16 accept');
        // armed: the next packet is matched once and marked, the ones after skip the rules
        expect((await conn.sendLine('three', { timeoutMs: 2000 })).status).toBe('echoed');
        const marked = await ruleCount(7110);
        for (const line of ['four', 'five']) expect((await conn.sendLine(line, { timeoutMs: 2000 })).status).toBe('echoed');
        expect(await ruleCount(7110)).toBe(marked);
        expect(await marks(7110)).toEqual([0x00020000]);
      });
    }, held);
  });

  it('through the reconciler, members joining an allow rule\'s group (a delta, then a whole document) keep the generation (a live connection is not matched again); the member leaving cuts it', async () => {
    const client = LAYOUT.client.v4;
    const members = (revision: number, list: string[]): PolicyInput => ({
      ...doc(null, revision),
      security_groups: [{ id: 'sg', name: 'sg', rules: [{ id: 'tcp-7109', direction: 'ingress', protocol: 'tcp', multiport: '7109', remote_group_id: 'peers' }, ...EGRESS_ALL] }],
      group_members: { peers: list },
    });
    await withReconciler(async (r) => {
      expect(await r.submit(parsePolicy(members(1, [client])), 'controller')).toMatchObject({ status: 'applied' });
      await r.idle();
      expect(r.flowMark).toMatchObject({ generation: 1, armed: true });
      await withConnection(7109, async (conn) => {
        expect((await conn.sendLine('one', { timeoutMs: 2000 })).status).toBe('echoed');
        expect(await ruleCount(7109)).toBe(1);
        // another member joins: element updates only, the generation stays, the connection's packets still skip the rules
        expect(await r.submit(parsePolicy(members(2, [client, '198.18.0.77'])), 'controller', { base: 1, groups: { peers: { add: ['198.18.0.77'], remove: [] } } })).toMatchObject({
          status: 'applied',
          kind: 'incremental',
        });
        expect(r.flowMark).toMatchObject({ generation: 1, armed: true });
        for (const line of ['two', 'three']) expect((await conn.sendLine(line, { timeoutMs: 2000 })).status).toBe('echoed');
        expect(await ruleCount(7109)).toBe(1);
        // one more joins in a whole document (no delta: after a reconnect, say): element updates that only widen, the generation stays
        expect(await r.submit(parsePolicy(members(3, [client, '198.18.0.77', '198.18.0.78'])), 'controller')).toMatchObject({ status: 'applied', kind: 'incremental' });
        expect(r.flowMark).toMatchObject({ generation: 1, armed: true });
        expect((await conn.sendLine('four', { timeoutMs: 2000 })).status).toBe('echoed');
        expect(await ruleCount(7109)).toBe(1);
        // the client leaves the group: a new generation, its next packet is matched and dropped
        expect(await r.submit(parsePolicy(members(4, ['198.18.0.77', '198.18.0.78'])), 'controller', { base: 3, groups: { peers: { add: [], remove: [client] } } })).toMatchObject({
          status: 'applied',
          kind: 'incremental',
        });
        expect(r.flowMark).toMatchObject({ generation: 2, armed: true });
        expect((await conn.sendLine('cut', { timeoutMs: 1500 })).status).not.toBe('echoed');
      });
    });
  });
});
