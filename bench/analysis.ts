/**
 * bench analysis: the fleet analysis API (issue 17) with a real fleet's
 * size: 1000 instances, 200 groups, 5000 rules, a port report on every
 * instance. The controller runs in-process (`createController`, SQLite in a
 * temporary data dir) on 127.0.0.1; every call goes through HTTP with the
 * API token. Cases, p50/p99 over repeated calls:
 *
 * - reference: `GET .../instances` (the whole list of 1000): the cost of a
 *   plain project read through the same HTTP stack;
 * - `GET .../exposure` warm: nothing changed since the last call (the cached
 *   analysis; agent states are still read to see new port reports);
 * - `GET .../exposure` after a new port report (one instance) before every
 *   call: that instance is analysed again;
 * - `GET .../exposure` after a rule write (a new project version) before
 *   every call: the whole analysis runs again;
 * - `GET .../reachability`: one instance to another, tcp/5432.
 *
 * Target: exposure under 200 ms (issue 17, item 4). Bounded: fixed counts
 * (~30 s). Nothing outside the process and 127.0.0.1.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createController } from '../src/controller/controller.js';
import type { GroupRow, InstanceSpec, Op, RuleRow } from '../src/controller/model.js';
import { openSqliteStore } from '../src/controller/store/sqlite.js';
import { silentLogger } from '../src/lib/logger.js';
import type { PortEntry, PortReport } from '../src/protocol/messages.js';
import { benchControllerConfig, quantile } from './converge.js';

const INSTANCES = 1000;
const GROUPS = 200;
const RULES = 5000;
const WARM_CALLS = Number(process.env.BENCH_ANALYSIS_CALLS ?? 50);
const COLD_CALLS = Math.max(10, Math.floor(WARM_CALLS / 2));
const ADMIN = 'bench-analysis-token-0123456789';
const NOW = '2026-01-01T00:00:00.000Z';
const PROJECT = 'bench';

export interface AnalysisRow {
  case: string;
  calls: number;
  'p50 ms': number;
  'p99 ms': number;
  'answer KiB': number;
  target: string;
  met: string;
}

/** Deterministic fleet: rule i of group g; a mix of world, prefix, remote-group and deny rules on common and random ports. */
export function fleetOps(): Op[] {
  const ops: Op[] = [];
  const PORTS = ['22', '80', '443', '5432', '3306', '6379', '8080', '9000-9100', '3389', '53'];
  for (let g = 0; g < GROUPS; g++) {
    const group: GroupRow = { id: `sg-${g}`, name: `group-${g}`, description: '', enterprise_project_id: '0', tags: [], created_at: NOW, updated_at: NOW };
    ops.push({ op: 'putGroup', group });
  }
  for (let i = 0; i < RULES; i++) {
    const g = i % GROUPS;
    const kind = i % 10;
    const v6 = i % 4 === 0;
    const rule: RuleRow = {
      id: `r-${i}`,
      security_group_id: `sg-${g}`,
      direction: kind === 9 ? 'egress' : 'ingress',
      priority: 1 + (i % 100),
      action: kind === 7 ? 'deny' : 'allow',
      ethertype: v6 ? 'IPv6' : 'IPv4',
      protocol: kind === 8 ? null : i % 3 === 0 ? 'udp' : 'tcp',
      multiport: kind === 8 ? null : kind < 5 ? PORTS[(i * 7) % PORTS.length]! : String(1024 + ((i * 131) % 60000)),
      icmp_type: null,
      icmp_code: null,
      remote_ip_prefix: kind < 3 ? (v6 ? '::/0' : '0.0.0.0/0') : kind < 6 || kind === 7 ? (v6 ? `fd00:5ec:${i % 200}::/48` : `198.18.${i % 250}.0/24`) : null,
      remote_group_id: kind === 6 || kind === 8 ? `sg-${(g + 1) % GROUPS}` : null,
      remote_address_group_id: null,
      description: '',
      enabled: true,
      created_at: NOW,
    };
    ops.push({ op: 'putRule', rule });
  }
  for (let i = 0; i < INSTANCES; i++) {
    const instance: InstanceSpec = {
      id: `i-${i}`,
      name: `vm-${String(i).padStart(4, '0')}`,
      addresses: [`198.18.${Math.floor(i / 250)}.${(i % 250) + 1}`, `fd00:5ec::${(i + 1).toString(16)}`],
      security_groups: [`sg-${i % GROUPS}`, `sg-${(i * 7 + 3) % GROUPS}`, `sg-${(i * 13 + 11) % GROUPS}`].filter((g, k, all) => all.indexOf(g) === k),
      created_at: NOW,
      updated_at: NOW,
    };
    ops.push({ op: 'putInstance', instance });
  }
  return ops;
}

export function portReport(i: number, at: string): PortReport {
  const e = (protocol: 'tcp' | 'udp', port: number, address: string, process: string): PortEntry => ({
    protocol,
    port,
    family: address === '*' ? null : 4,
    status: address.startsWith('127.') ? 'local-only' : 'open',
    listeners: [{ address, process }],
    allowed_by: [],
    denied_by: [],
  });
  const entries = [e('tcp', 22, '*', 'sshd'), e('tcp', 80, '0.0.0.0', 'nginx'), e('tcp', 443, '*', 'nginx'), e('tcp', 6379, '127.0.0.1', 'redis')];
  if (i % 3 === 0) entries.push(e('tcp', 5432, '*', 'postgres'));
  if (i % 5 === 0) entries.push(e('tcp', 9050, '0.0.0.0', 'app'), e('udp', 53, '0.0.0.0', 'dnsmasq'));
  entries.push(e('tcp', 1024 + ((i * 131) % 60000), '0.0.0.0', 'worker'));
  return { revision: 1, source: 'ss', generated_at: at, entries };
}

const r1 = (x: number) => Math.round(x * 10) / 10;

export async function runAnalysisBench(): Promise<AnalysisRow[]> {
  const dir = await mkdtemp(join(tmpdir(), 'secgroup-bench-analysis-'));
  const store = openSqliteStore(join(dir, 'controller.db'));
  const config = benchControllerConfig(dir, ADMIN);
  const controller = createController({ config, store, logger: silentLogger() });
  try {
    await store.mutate(PROJECT, () => ({ ops: fleetOps(), value: null }));
    await Promise.all(Array.from({ length: INSTANCES }, (_, i) => store.updateAgentState(PROJECT, `i-${i}`, { ports: portReport(i, NOW), ports_received_at: NOW })));
    const addr = await controller.start();
    const api = `${addr.url}/v3/${PROJECT}`;
    const get = async (path: string): Promise<{ ms: number; bytes: number; body: Record<string, unknown> }> => {
      const t0 = performance.now();
      const r = await fetch(`${api}${path}`, { headers: { 'x-auth-token': ADMIN } });
      const text = await r.text();
      const ms = performance.now() - t0;
      if (r.status !== 200) throw new Error(`GET ${path}: HTTP ${r.status} ${text.slice(0, 300)}`);
      return { ms, bytes: text.length, body: JSON.parse(text) as Record<string, unknown> };
    };
    const series = async (calls: number, before: (k: number) => Promise<void>, path: string) => {
      const ms: number[] = [];
      let bytes = 0;
      let body: Record<string, unknown> = {};
      for (let k = 0; k < calls; k++) {
        await before(k);
        const r = await get(path);
        ms.push(r.ms);
        bytes = r.bytes;
        body = r.body;
      }
      return { ms, bytes, body };
    };
    const nothing = async () => {};
    const row = (name: string, s: { ms: number[]; bytes: number }, target: number | null): AnalysisRow => ({
      case: name,
      calls: s.ms.length,
      'p50 ms': r1(quantile(s.ms, 0.5)),
      'p99 ms': r1(quantile(s.ms, 0.99)),
      'answer KiB': r1(s.bytes / 1024),
      target: target === null ? '-' : `< ${target} ms`,
      met: target === null ? '-' : quantile(s.ms, 0.99) < target ? 'yes (p99)' : quantile(s.ms, 0.5) < target ? 'p50 only' : 'no',
    });

    // warm-up: JIT and the first analysis
    await series(3, nothing, '/exposure');
    const ref = await series(WARM_CALLS, nothing, '/instances');
    const warm = await series(WARM_CALLS, nothing, '/exposure');
    const cold = await series(
      COLD_CALLS,
      async (k) => {
        const at = new Date(Date.parse(NOW) + (k + 1) * 1000).toISOString();
        await store.updateAgentState(PROJECT, `i-${k % INSTANCES}`, { ports: portReport(k, at), ports_received_at: at });
      },
      '/exposure',
    );
    const written = await series(
      COLD_CALLS,
      async (k) => {
        const rule = fleetOps().find((o): o is Extract<Op, { op: 'putRule' }> => o.op === 'putRule' && o.rule.id === `r-${k}`)!.rule;
        await store.mutate(PROJECT, () => ({ ops: [{ op: 'putRule', rule: { ...rule, description: `write ${k}` } }], value: null }));
      },
      '/exposure',
    );
    const reach = await series(WARM_CALLS, nothing, '/reachability?from=i-1&to=i-3&protocol=tcp&port=5432');
    const exposed = (cold.body.exposure as unknown[]).length;
    return [
      row('reference: GET instances (1000)', ref, null),
      row(`exposure, cached (${exposed} exposed ports)`, warm, 200),
      row('exposure after a new port report (1 instance again)', cold, 200),
      row('exposure after a rule write (full analysis)', written, 200),
      row('reachability i-1 -> i-3 tcp/5432', reach, null),
    ];
  } finally {
    await controller.stop();
    await store.close();
    await rm(dir, { recursive: true, force: true });
  }
}
