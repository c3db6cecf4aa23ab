/**
 * bench packet: what the ruleset costs per packet. Two namespaces over a
 * veth (bench/lab.ts), a small C load tool (bench/tools/tcpbench.c, compiled
 * with gcc here) and, in one run, five rulesets in the host namespace:
 * none (reference), secgroup's rendering of a 10k-rule policy as the agent
 * runs it (flow mark armed, src/nft/flow-mark.ts), the same with the flow
 * mark off (platform.flow_mark_mask 0: every packet from the client matched
 * against the rules), the naive rendering of the same policy
 * (bench/naive.ts), and conntrack only (the floor of any stateful firewall). Measured per ruleset: new TCP
 * connections/s over IPv4 and over IPv6, new UDP flows/s (a fresh source
 * port per request/response), TCP request/response latency and throughput;
 * the new-flow rates also as a ratio to conntrack only. Configurations
 * alternate within each round; each figure is the best of the rounds (the
 * machine is shared, so the best is the least disturbed sample), and the
 * ratios to conntrack only also as the median of the rounds' own ratios
 * (each round measures both rulesets within seconds of each other).
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { BenchLab, HOST_V4, HOST_V6, CLIENT_V4 } from './lab.js';
import { renderNaive } from './naive.js';
import { packetPolicy } from './policies.js';
import { parsePolicy } from '../src/policy/schema.js';
import { compilePolicy } from '../src/nft/compile.js';
import { renderScript, renderDeleteScript } from '../src/nft/render.js';
import { setFlowGeneration } from '../src/nft/flow-mark.js';
import { DEFAULT_PLATFORM } from '../src/policy/platform.js';

const PORT = 5201;
const SECONDS = Number(process.env.BENCH_PACKET_SECONDS ?? 2);
const ROUNDS = Number(process.env.BENCH_PACKET_ROUNDS ?? 3);
const RULES = Number(process.env.BENCH_PACKET_RULES ?? 10000);
/** after the rounds: this many back-to-back alternations of the new-TCP-connection rate, conntrack only vs secgroup (flow mark on and off) */
const PAIRS = Number(process.env.BENCH_PACKET_PAIRS ?? 10);
/** the rulesets measured in the pairs, each against conntrack only */
const PAIRED = ['secgroup', 'secgroup, flow mark off'];

export interface PacketRow {
  ruleset: string;
  reference: string;
  'conn/s': number;
  'conn %': number;
  /** new-flow rates as a ratio to the conntrack-only floor */
  'conn vs ct': number;
  'udp flows/s': number;
  'udp vs ct': number;
  'v6 conn/s': number;
  'v6 vs ct': number;
  /** the median over rounds of each round's ratio to conntrack only (both measured in that round): less moved by one lucky round */
  'conn vs ct, round median': number;
  'udp vs ct, round median': number;
  'v6 vs ct, round median': number;
  /**
   * the median over BENCH_PACKET_PAIRS alternations (conntrack only and this ruleset measured one
   * right after the other, their order switched every time) of this ruleset's conn/s over conntrack
   * only's: the rates of one ruleset swing by tens of percent between rounds here, mostly slowly
   */
  'conn vs ct, paired median': number | null;
  'rr latency us': number;
  'rr %': number;
  'Gbit/s': number;
  'tput %': number;
  'what the bench packets hit': string;
}

function buildTool(dir: string): string {
  const src = join(dirname(fileURLToPath(import.meta.url)), 'tools/tcpbench.c');
  const bin = join(dir, 'tcpbench');
  execFileSync('gcc', ['-O2', '-pthread', '-o', bin, src]);
  return bin;
}

async function client(lab: BenchLab, bin: string, mode: 'conn' | 'rr' | 'stream' | 'udp', port: number, host = HOST_V4): Promise<Record<string, number>> {
  const r = await lab.exec('client', [bin, mode, host, String(port), String(SECONDS)], { timeoutMs: (SECONDS + 10) * 1000 });
  const out = JSON.parse(r.stdout) as Record<string, number | string>;
  if ('error' in out) throw new Error(`tcpbench ${mode}: ${String(out.error)}`);
  return out as Record<string, number>;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

function pct(x: number, ref: number): number {
  return Math.round((x / ref) * 1000) / 10;
}

/**
 * A second reference: what statefulness alone costs (SEMANTICS section 3
 * requires it). Connection tracking creates and destroys an entry per
 * connection, which no rule layout can avoid; secgroup's own cost is the
 * difference between this row and secgroup's.
 */
const CONNTRACK_ONLY = `table inet secgroup {}
delete table inet secgroup
table inet secgroup {
	chain input {
		type filter hook input priority 0; policy accept;
		ct state invalid drop
		ct direction reply ct state established accept
		ct state related accept
		accept
	}
	chain output {
		type filter hook output priority 0; policy accept;
		ct state invalid drop
		ct state { established, related } accept
		accept
	}
}
`;

export async function runPacketBench(): Promise<PacketRow[]> {
  const dir = mkdtempSync(join(tmpdir(), 'sgt-bench-'));
  const lab = await BenchLab.create();
  try {
    const bin = buildTool(dir);
    const policy = parsePolicy(packetPolicy({ rules: RULES, v4Members: 10000, v6Members: 100000, benchPorts: [PORT, PORT + 2], udpPort: PORT + 3, v6: true }));
    const compiled = compilePolicy(policy);
    // what the agent applies once its epoch's conntrack sweep is done: flow_known armed (reconciler.ts startArming)
    setFlowGeneration(compiled.table, 1, true);
    const unmarked = compilePolicy(policy, { platform: { ...DEFAULT_PLATFORM, flowMarkMask: 0 } });
    const lookups = `conntrack rules, then ${compiled.stats.layers.ingress_v4} ingress v4 / ${compiled.stats.layers.ingress_v6} v6 map lookup layer(s) (${compiled.stats.elements} elements in all), allowed by the last rule`;
    const naive = renderNaive(policy);
    const configs = [
      { name: 'none', script: renderDeleteScript('inet', 'secgroup'), hits: 'no firewall' },
      {
        name: 'secgroup',
        script: renderScript(compiled.table),
        hits: `SYN (UDP: first datagram): ${lookups}, marked; the client's later packets: the flow mark (one ct mark compare)`,
      },
      { name: 'secgroup, flow mark off', script: renderScript(unmarked.table), hits: `SYN (UDP: first datagram) and every client->server packet: ${lookups}` },
      { name: 'naive', script: naive.script, hits: `SYN and every client->server packet: ${naive.rules.input} linear input rules, allowed by the last` },
      { name: 'conntrack only', script: CONNTRACK_ONLY, hits: 'the floor of any stateful firewall: conntrack on, the same ct state rules as secgroup, then accept (no policy rules)' },
    ];
    const server = lab.exec('host', [bin, 'server', HOST_V4, String(PORT), HOST_V6], { timeoutMs: 15 * 60_000 });
    server.catch(() => undefined);
    await new Promise((r) => setTimeout(r, 300));
    const best: Record<string, { conn: number; rr: number; tput: number; udp: number; conn6: number }> = {};
    const perRound: Record<string, { conn: number; udp: number; conn6: number }[]> = {};
    for (let round = 0; round < ROUNDS; round++) {
      for (const c of configs) {
        await lab.nft(c.script);
        const conn = await client(lab, bin, 'conn', PORT);
        const rr = await client(lab, bin, 'rr', PORT + 1);
        const st = await client(lab, bin, 'stream', PORT + 2);
        const udp = await client(lab, bin, 'udp', PORT + 3);
        const conn6 = await client(lab, bin, 'conn', PORT, HOST_V6);
        const b = (best[c.name] ??= { conn: 0, rr: 0, tput: 0, udp: 0, conn6: 0 });
        (perRound[c.name] ??= []).push({ conn: conn.conns! / conn.seconds!, udp: udp.flows! / udp.seconds!, conn6: conn6.conns! / conn6.seconds! });
        b.conn = Math.max(b.conn, conn.conns! / conn.seconds!);
        b.udp = Math.max(b.udp, udp.flows! / udp.seconds!);
        b.conn6 = Math.max(b.conn6, conn6.conns! / conn6.seconds!);
        b.rr = Math.max(b.rr, rr.trips! / rr.seconds!);
        b.tput = Math.max(b.tput, (st.bytes! * 8) / st.seconds! / 1e9);
        process.stderr.write(
          `  round ${round + 1} ${c.name}: ${Math.round(conn.conns! / conn.seconds!)} conn/s, ${Math.round(rr.trips! / rr.seconds!)} trips/s, ${((st.bytes! * 8) / st.seconds! / 1e9).toFixed(2)} Gbit/s, ` +
            `${Math.round(udp.flows! / udp.seconds!)} udp flows/s, ${Math.round(conn6.conns! / conn6.seconds!)} v6 conn/s\n`,
        );
      }
    }
    const paired: Record<string, number[]> = {};
    for (let i = 0; i < PAIRS; i++) {
      const names = ['conntrack only', ...PAIRED];
      const rates: Record<string, number> = {};
      for (const name of i % 2 ? names.reverse() : names) {
        await lab.nft(configs.find((c) => c.name === name)!.script);
        const conn = await client(lab, bin, 'conn', PORT);
        rates[name] = conn.conns! / conn.seconds!;
      }
      for (const name of PAIRED) (paired[name] ??= []).push(rates[name]! / rates['conntrack only']!);
      process.stderr.write(`  pair ${i + 1}: ${names.map((n) => `${n} ${Math.round(rates[n]!)}`).join(', ')} conn/s\n`);
    }
    server.kill('SIGKILL');
    const ref = best.none!;
    const ct = best['conntrack only']!;
    const ratio = (x: number, floor: number) => Math.round((x / floor) * 100) / 100;
    const roundMedian = (name: string, k: 'conn' | 'udp' | 'conn6') => {
      const floors = perRound['conntrack only']!;
      const rs = perRound[name]!.map((v, i) => v[k] / floors[i]![k]).sort((a, b) => a - b);
      const mid = rs.length >> 1;
      return Math.round((rs.length % 2 ? rs[mid]! : (rs[mid - 1]! + rs[mid]!) / 2) * 100) / 100;
    };
    return configs.map((c) => {
      const b = best[c.name]!;
      return {
        ruleset: c.name === 'none' || c.name === 'conntrack only' ? c.name : `${c.name} (${RULES} rules)`,
        reference: 'none',
        'conn/s': Math.round(b.conn),
        'conn %': pct(b.conn, ref.conn),
        'conn vs ct': ratio(b.conn, ct.conn),
        'udp flows/s': Math.round(b.udp),
        'udp vs ct': ratio(b.udp, ct.udp),
        'v6 conn/s': Math.round(b.conn6),
        'v6 vs ct': ratio(b.conn6, ct.conn6),
        'conn vs ct, round median': roundMedian(c.name, 'conn'),
        'udp vs ct, round median': roundMedian(c.name, 'udp'),
        'v6 vs ct, round median': roundMedian(c.name, 'conn6'),
        'conn vs ct, paired median': c.name === 'conntrack only' ? 1 : paired[c.name] ? Math.round(median(paired[c.name]!) * 100) / 100 : null,
        'rr latency us': Math.round((1e6 / b.rr) * 10) / 10,
        'rr %': pct(b.rr, ref.rr),
        'Gbit/s': Math.round(b.tput * 100) / 100,
        'tput %': pct(b.tput, ref.tput),
        'what the bench packets hit': c.hits,
      };
    });
  } finally {
    await lab.destroy();
    rmSync(dir, { recursive: true, force: true });
  }
}

export { CLIENT_V4 };
