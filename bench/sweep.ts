/**
 * `npm run bench -- sweep`: the flow mark's epoch sweep (src/nft/conntrack.ts)
 * on a big conntrack table that changes while it runs: secgroup-ctmark
 * (native/secgroup-ctmark.c) against `conntrack -U -m 0/MASK` (the
 * reference, conntrack-tools), each as the agent runs it (ConntrackClearer
 * tries three times).
 *
 * Per round, in the host namespace of a fresh two-namespace lab: the
 * conntrack table emptied; N UDP flows from the client, marked 0x00010005 by
 * a table there as the agent's first epoch would (the 5 stands for someone
 * else's bits); then, while the client makes new TCP connections to the host
 * as fast as one loop can (not marked: an unarmed epoch keeps the field at
 * 0), one sweep. The two sweepers alternate, round by round. Reported: sweeps that succeeded, their wall time, entries
 * updated, marked entries left (conntrack -L), the connections made and
 * failed during the round.
 *
 * BENCH_SWEEP_SIZES (20000,100000,200000; capped under nf_conntrack_max),
 * with new connections made during the sweep; BENCH_SWEEP_STATIC_SIZES
 * (1000), without them; BENCH_SWEEP_ROUNDS (3).
 */
import { join } from 'node:path';
import { readFileSync } from 'node:fs';
import { execa } from 'execa';
import { ConntrackClearer, CTMARK_FILE, NativeFlowMarkClearer, type FlowMarkClearer } from '../src/nft/conntrack.js';
import { hex } from '../src/nft/flow-mark.js';
import { BenchLab, HOST_V4 } from './lab.js';

const MASK = 0xffff0000;
const PORT = 7200;
const ROUNDS = Number(process.env.BENCH_SWEEP_ROUNDS ?? 3);
const CHURN_MS = 5000;

export interface SweepRow {
  entries: number;
  churn: boolean;
  sweeper: 'secgroup-ctmark' | 'conntrack -U (reference)';
  ok: string;
  median_ms: number | null;
  updated: string;
  marked_left: string;
  connects_ok: number;
  connects_failed: number;
  errors: string;
}

const FILL = [
  "const dgram = require('node:dgram');",
  'const [addr, total] = [process.argv[1], Number(process.argv[2])];',
  '(async () => {',
  '  for (let k = 0; k < total; k += 50000) {',
  "    const s = dgram.createSocket('udp4');",
  '    await new Promise((r) => s.bind(0, r));',
  '    const n = Math.min(50000, total - k);',
  '    for (let p = 1; p <= n; p += 64) {',
  '      const all = [];',
  "      for (let q = p; q < p + 64 && q <= n; q++) all.push(new Promise((r) => s.send('x', q, addr, r)));",
  '      await Promise.all(all);',
  '    }',
  '    s.close();',
  '  }',
  '})();',
].join('\n');

const CHURN = `const net = require('node:net'); const end = Date.now() + ${CHURN_MS}; let ok = 0, failed = 0;
(function go() {
  if (Date.now() > end) return console.log(ok, failed);
  const s = net.connect({ port: ${PORT}, host: '${HOST_V4}', timeout: 1000 }, () => { ok++; s.destroy(); go(); });
  s.on('timeout', () => { failed++; s.destroy(); go(); });
  s.on('error', () => { failed++; go(); });
})();`;

const SERVER = `require('node:net').createServer((c) => c.destroy()).listen(${PORT}, '${HOST_V4}', () => console.log('ready'));`;

function median(xs: number[]): number | null {
  if (xs.length === 0) return null;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

async function marked(lab: BenchLab): Promise<number> {
  const r = await lab.exec('host', ['conntrack', '-L', '-f', 'ipv4', '-m', `0x10000/${hex(MASK)}`]).catch((e: { stdout?: string }) => e);
  return (r.stdout ?? '').split('\n').filter((l: string) => l.trim()).length;
}

async function round(lab: BenchLab, entries: number, churning: boolean, clearer: FlowMarkClearer): Promise<{ ok: boolean; ms: number; updated: number; left: number; connOk: number; connFailed: number; error: string }> {
  await lab.exec('host', ['conntrack', '-F']).catch(() => undefined);
  await lab.exec('client', ['conntrack', '-F']).catch(() => undefined);
  await lab.exec('client', [process.execPath, '-e', FILL, HOST_V4, String(entries)], { timeoutMs: 600_000 });
  const churn = churning ? lab.exec('client', [process.execPath, '-e', CHURN], { timeoutMs: 60_000 }) : null;
  if (churn) await new Promise((r) => setTimeout(r, 1000));
  const t0 = performance.now();
  const r = await clearer.clear(MASK);
  const ms = performance.now() - t0;
  const [connOk, connFailed] = churn ? (await churn).stdout.trim().split(' ').map(Number) : [0, 0];
  return { ok: r.ok, ms, updated: r.ok ? r.updated : 0, left: await marked(lab), connOk: connOk ?? 0, connFailed: connFailed ?? 0, error: r.ok ? '' : r.reason.replace(/^.* failed \(exit \d+\): /, '') };
}

export async function runSweepBench(): Promise<SweepRow[]> {
  const max = Number(readFileSync('/proc/sys/net/netfilter/nf_conntrack_max', 'utf8'));
  // room for the connections made during the round (TIME_WAIT: 2 min) and the client's own
  const cap = Math.floor(max * 0.85);
  const list = (v: string) => v.split(',').filter(Boolean).map(Number).map((n) => Math.min(n, cap));
  const cases = [
    ...list(process.env.BENCH_SWEEP_STATIC_SIZES ?? '1000').map((n) => [n, false] as const),
    ...list(process.env.BENCH_SWEEP_SIZES ?? '20000,100000,200000').map((n) => [n, true] as const),
  ];
  const bin = join(import.meta.dirname, '..', 'dist');
  await execa('bash', [join(import.meta.dirname, '../scripts/build-native.sh'), bin]);
  const rows: SweepRow[] = [];
  for (const [entries, churning] of cases) {
    const lab = await BenchLab.create();
    try {
      await lab.exec('host', ['sysctl', '-qw', 'net.netfilter.nf_conntrack_udp_timeout=600']);
      // the client's connections of earlier rounds sit in TIME_WAIT: ports for the next ones
      await lab.exec('client', ['sysctl', '-qw', 'net.ipv4.tcp_tw_reuse=1', 'net.ipv4.ip_local_port_range=1024 65535']);
      await lab.nft('table inet marks {\n\tchain in {\n\t\ttype filter hook input priority 0; policy accept;\n\t\tmeta l4proto udp ct state new ct mark set 0x00010005\n\t}\n}\n');
      const server = lab.exec('host', [process.execPath, '-e', SERVER], { timeoutMs: 3_600_000 });
      await new Promise((r) => setTimeout(r, 500));
      const prefix = ['ip', 'netns', 'exec', lab.host];
      const sweepers = [
        ['secgroup-ctmark', new NativeFlowMarkClearer({ path: join(bin, CTMARK_FILE), prefix, timeoutMs: 120_000 })],
        ['conntrack -U (reference)', new ConntrackClearer({ command: [...prefix, 'conntrack'], timeoutMs: 120_000 })],
      ] as const;
      // the two alternate, round by round
      const results = sweepers.map(() => [] as Awaited<ReturnType<typeof round>>[]);
      for (let i = 0; i < ROUNDS; i++) for (const [k, [, clearer]] of sweepers.entries()) results[k]!.push(await round(lab, entries, churning, clearer));
      for (const [k, [name]] of sweepers.entries()) {
        const rs = results[k]!;
        const oks = rs.filter((r) => r.ok);
        rows.push({
          entries,
          churn: churning,
          sweeper: name,
          ok: `${oks.length}/${rs.length}`,
          median_ms: median(oks.map((r) => Math.round(r.ms))),
          updated: rs.map((r) => r.updated).join(' '),
          marked_left: rs.map((r) => r.left).join(' '),
          connects_ok: rs.reduce((a, r) => a + r.connOk, 0),
          connects_failed: rs.reduce((a, r) => a + r.connFailed, 0),
          errors: [...new Set(rs.map((r) => r.error).filter(Boolean))].join('; ').slice(0, 120),
        });
      }
      server.kill();
      await server.catch(() => undefined);
    } finally {
      await lab.destroy();
    }
  }
  return rows;
}
