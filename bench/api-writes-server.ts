/**
 * The controller of `bench api-writes`, in its own process (so the load
 * clients in the parent do not share its event loop): opens the store of the
 * asked driver (SQLite file in `dir`, or the PostgreSQL database at `url`),
 * seeds a project of the asked size straight through the service (one
 * commit, quotas not checked), then starts the real controller on that store
 * (fastify on 127.0.0.1) and reports its URL.
 *
 * Diagnosis (`stats`): the store is wrapped (./api-writes-trace.ts) so each
 * mutation's time waiting for its transaction, deciding (the change, compile
 * included) and in all is recorded, with the sizes of group-commit batches,
 * the event loop's delay and GC pauses; `stats` answers them since the last
 * `stats`.
 * Messages: parent -> {cmd:'start', dir, driver, url?, rules, instances},
 * {cmd:'stats'}, {cmd:'stop'}; child -> {event:'ready', url},
 * {event:'stats', stats}, {event:'error', message}.
 */
import { join } from 'node:path';
import { createController, DB_FILE, type Controller } from '../src/controller/controller.js';
import { parseControllerConfig } from '../src/controller/config.js';
import { ControllerService } from '../src/controller/service.js';
import { openSqliteStore } from '../src/controller/store/sqlite.js';
import { openPostgresStore } from '../src/controller/store/postgres.js';
import type { Store } from '../src/controller/store/store.js';
import { WriteTrace } from './api-writes-trace.js';
import { cryptoRandom } from '../src/controller/tokens.js';
import { systemClock } from '../src/lib/clock.js';
import { silentLogger } from '../src/lib/logger.js';
import type { GroupRow, Op, RuleRow } from '../src/controller/model.js';

export const ADMIN = 'bench-admin-token-0123456789';
export const PROJECT = 'bench';
/** a small project of the same shape, written to before the measured cases (the JIT warms up on the write path, the measured project stays as seeded) */
export const WARM_PROJECT = 'bench-warm';
/** rules per filler group; every filler group's first rule references the group itself (so documents list members) */
const PER_GROUP = 50;

/** groups written into by the rule cases (requests go round-robin), each used by one instance (or none) */
export const USED = 10;
/** room for the bench's requests (BENCH_WRITES_REQUESTS up to 2000) in the USED groups */
const QUOTAS = { rules_per_group: 250, security_groups_per_project: 10_000, instances_per_project: 100_000 };

/**
 * The seed: USED groups `sg-used-k`, each used by instance i-k alone; USED
 * groups `sg-idle-k` that no instance uses; and filler groups of PER_GROUP
 * rules holding `rules` rules in all, whose instances i-USED.. are spread
 * over them.
 */
export function seedOps(rules: number, instances: number, now: string): Op[] {
  const group = (id: string): GroupRow => ({ id, name: id, description: '', enterprise_project_id: '0', tags: [], created_at: now, updated_at: now });
  const rule = (id: string, gid: string, k: number): RuleRow => ({
    id,
    security_group_id: gid,
    direction: 'ingress',
    priority: 1 + (k % 100),
    action: 'allow',
    ethertype: 'IPv4',
    protocol: k === 0 ? null : 'tcp',
    multiport: k === 0 ? null : String(1000 + k),
    icmp_type: null,
    icmp_code: null,
    remote_ip_prefix: k === 0 ? null : `198.19.${k >> 8}.${k & 255}/32`,
    remote_group_id: k === 0 ? gid : null,
    remote_address_group_id: null,
    description: '',
    enabled: true,
    created_at: now,
  });
  const fillers = Math.max(1, Math.ceil(rules / PER_GROUP));
  const ops: Op[] = [];
  for (let k = 0; k < USED; k++) ops.push({ op: 'putGroup', group: group(`sg-used-${k}`) }, { op: 'putGroup', group: group(`sg-idle-${k}`) });
  for (let g = 0; g < fillers; g++) {
    ops.push({ op: 'putGroup', group: group(`g-${g}`) });
    for (let k = 0; k < PER_GROUP && g * PER_GROUP + k < rules; k++) ops.push({ op: 'putRule', rule: rule(`r-${g}-${k}`, `g-${g}`, k) });
  }
  for (let i = 0; i < instances; i++) {
    const addresses = [`198.18.${i >> 8}.${i & 255}`];
    const security_groups = i < USED ? [`sg-used-${i}`] : [`g-${(i - USED) % fillers}`];
    ops.push({ op: 'putInstance', instance: { id: `i-${i}`, name: `i-${i}`, addresses, security_groups, created_at: now, updated_at: now } });
  }
  return ops;
}

let controller: Controller | null = null;
let store: Store | null = null;
let trace: WriteTrace | null = null;

export type Driver = 'sqlite' | 'postgres';

// the bench process went away without a `stop` (killed, or its output closed): no controller outlives it
process.on('disconnect', () => {
  void (async () => {
    await controller?.stop().catch(() => undefined);
    await store?.close().catch(() => undefined);
    process.exit(1);
  })();
});

process.on('message', (m: { cmd: string; dir?: string; driver?: Driver; url?: string; rules?: number; instances?: number }) => {
  void (async () => {
    try {
      if (m.cmd === 'start') {
        const config = parseControllerConfig({
          listen: { host: '127.0.0.1', port: 0 },
          data_dir: m.dir!,
          api: { tokens: [{ name: 'bench', token: ADMIN }] },
          log: { level: 'silent' },
          metrics: { process_metrics: false },
          quotas: QUOTAS,
        });
        store = m.driver === 'postgres' ? await openPostgresStore({ url: m.url! }) : openSqliteStore(join(m.dir!, DB_FILE));
        const service = new ControllerService({ store, clock: systemClock, logger: silentLogger(), quotas: config.quotas, random: cryptoRandom });
        await service.mutate(PROJECT, (_snap, ctx) => ({ ops: seedOps(m.rules!, m.instances!, ctx.now), result: null }));
        await service.mutate(WARM_PROJECT, (_snap, ctx) => ({ ops: seedOps(100, 10, ctx.now), result: null }));
        trace = new WriteTrace(store);
        controller = createController({ config, logger: silentLogger(), store: trace.store });
        const addr = await controller.start();
        trace.watch(controller.app.server);
        process.send!({ event: 'ready', url: addr.url });
      } else if (m.cmd === 'stats') {
        process.send!({ event: 'stats', stats: trace!.take() });
      } else if (m.cmd === 'stop') {
        await controller?.stop();
        trace?.stop();
        await store?.close();
        process.exit(0);
      }
    } catch (e) {
      process.send!({ event: 'error', message: (e as Error).stack ?? String(e) });
      process.exit(1);
    }
  })();
});
