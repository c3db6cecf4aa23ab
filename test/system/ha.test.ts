// The HA topology with the real programs in containers (docs/ha.md): a
// PostgreSQL container (docker/postgres-image.sh), two controller replicas
// (`store.driver: postgres`, password from SECGROUP_STORE_PASSWORD) and three
// agents whose `controller.urls` name both replicas (A and C try replica 1
// first, B replica 2), on an --internal network (198.19.254.0/24 +
// fd00:5ec:254::/64). Which replica an agent talks to is read from its own
// established connections (`ss` in its container), its acks from
// GET .../status through each replica, verdicts from real TCP connections
// between the agents (each runs web servers on :80 and :81).
//
// In order: a change through replica 1 reaches B on replica 2 (acks visible
// through both); replica 1 killed (`docker kill`): A and C move to replica 2
// and a later change reaches them; replica 1 back, PostgreSQL stopped: /readyz
// 503 and the API 503 SYS.0503 on both, the agents keep enforcing; PostgreSQL
// started again: both replicas recover by themselves, a change reaches every
// agent. Everything labelled `org.secgroup.test=ha` is removed before and after
// (also on failure).
import { execFileSync } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { getContainerRuntimeClient, type StartedTestContainer } from 'testcontainers';
import {
  controllerCall,
  createInternalNetwork,
  engineUnavailableReason,
  FixedIpContainer,
  imagesMissing,
  removeLabelled,
  startAgentContainer,
  rootRuleset,
  startWeb,
  tcpConnects,
  until,
  type Json,
  type TestNetwork,
} from './docker-env.js';

/** The agent/controller images to test (build-images.sh's SECGROUP_IMAGE_TAG); the database is secgroup-postgres:latest. */
const TAG = process.env.SECGROUP_IMAGE_TAG ?? 'latest';
const IMAGES = { agent: `secgroup-agent:${TAG}`, controller: `secgroup-controller:${TAG}`, postgres: 'secgroup-postgres:latest' };
const unavailable = engineUnavailableReason() ?? imagesMissing(Object.values(IMAGES));
if (unavailable) console.warn(`[system] ha.test.ts skipped: ${unavailable}`);

const N = 254;
const run = `sgha-${process.pid}`.slice(0, 15);
const labels = { 'org.secgroup.test': 'ha' };
const IP = { pg: `198.19.${N}.5`, r1: `198.19.${N}.10`, r2: `198.19.${N}.11`, a: `198.19.${N}.21`, b: `198.19.${N}.22`, c: `198.19.${N}.23` };
const ADMIN = 'ha-system-test-admin-token-0123456789';
const DB_PASSWORD = 'ha-system-test-db-password';
const PROJECT = 'ha';
type Replica = 'r1' | 'r2';
type Agent = 'a' | 'b' | 'c';
const AGENTS: Agent[] = ['a', 'b', 'c'];
/** The replica each agent tries first. */
const FIRST: Record<Agent, Replica> = { a: 'r1', b: 'r2', c: 'r1' };

const docker = (...args: string[]) => execFileSync('docker', args, { stdio: 'pipe', timeout: 60_000 });

describe.skipIf(unavailable !== undefined)(`HA: PostgreSQL, two replicas, three agents${unavailable ? ` (SKIPPED: ${unavailable})` : ''}`, () => {
  let network: TestNetwork | undefined;
  const started = new Map<string, StartedTestContainer>();
  let rulesetBefore = '';
  let rule81 = '';

  const c = (name: string): StartedTestContainer => {
    const x = started.get(name);
    if (!x) throw new Error(`container ${name} not started`);
    return x;
  };
  const api = (via: Replica, method: string, path: string, body?: Json) => controllerCall(c(via), ADMIN, method, `/v3/${PROJECT}${path}`, body);
  const readyz = async (via: Replica) => (await controllerCall(c(via), ADMIN, 'GET', '/readyz')).status;

  /** The replica the agent in `name` is connected to, from its established TCP connections to port 8443. */
  async function replicaOf(name: Agent): Promise<Replica | undefined> {
    const out = (await c(name).exec(['ss', '-Htn', 'state', 'established', '( dport = :8443 )'])).stdout;
    if (out.includes(`${IP.r1}:8443`)) return 'r1';
    if (out.includes(`${IP.r2}:8443`)) return 'r2';
    return undefined;
  }

  /** Waits until, read through `via`, every agent in `who` is connected and has acked a revision above `after[id]` that is the desired one. */
  async function acked(via: Replica, who: Agent[], after: Partial<Record<Agent, number>> = {}, timeoutMs = 30_000): Promise<Record<Agent, number>> {
    const revs: Partial<Record<Agent, number>> = {};
    for (const id of who) {
      revs[id] = await until(
        `agent ${id} acked through ${via}`,
        async () => {
          const r = await api(via, 'GET', `/instances/${id}/status`);
          const s = r.body.status as Json | undefined;
          const rev = s?.applied_revision as number | null | undefined;
          return s?.in_sync === true && s.connected === true && typeof rev === 'number' && rev > (after[id] ?? 0) ? rev : undefined;
        },
        timeoutMs,
      );
    }
    return revs as Record<Agent, number>;
  }

  async function addRule(via: Replica, port: number): Promise<string> {
    const r = await api(via, 'POST', '/vpc/security-group-rules', {
      security_group_rule: { security_group_id: 'sg-ha', direction: 'ingress', ethertype: 'IPv4', protocol: 'tcp', multiport: String(port), remote_ip_prefix: `198.19.${N}.0/24` },
    });
    expect(r.status, JSON.stringify(r.body)).toBe(201);
    return (r.body.security_group_rule as Json).id as string;
  }

  async function startReplica(name: Replica): Promise<void> {
    const config = [
      'listen: { host: 0.0.0.0, port: 8443 }',
      'store:',
      '  driver: postgres',
      `  url: postgres://secgroup@${IP.pg}:5432/secgroup`,
      '  pool_size: 5',
      'agents: { heartbeat_interval_ms: 2000 }',
      'api:',
      '  tokens:',
      `    - { name: ha-test, token: ${ADMIN} }`,
    ].join('\n');
    const ctr = await new FixedIpContainer(IMAGES.controller)
      .withName(`${run}-${name}`)
      .withFixedIp(network!.name, IP[name])
      .withLabels(labels)
      .withEnvironment({ SECGROUP_STORE_PASSWORD: DB_PASSWORD })
      .withCopyContentToContainer([{ content: config, target: '/etc/secgroup/controller.yaml' }])
      .withCommand(['controller', '--config', '/etc/secgroup/controller.yaml'])
      .start();
    started.set(name, ctr);
  }

  async function startAgent(name: Agent, token: string): Promise<void> {
    const other: Replica = FIRST[name] === 'r1' ? 'r2' : 'r1';
    const config = [
      `instance_id: ${name}`,
      'state_dir: /var/lib/secgroup',
      'controller:',
      `  urls: [ws://${IP[FIRST[name]]}:8443, ws://${IP[other]}:8443]`,
      '  reconnect_max_ms: 2000',
    ].join('\n');
    const ctr = await startAgentContainer(IMAGES.agent, { name: `${run}-${name}`, network: network!.name, ip: IP[name], labels, token, config });
    started.set(name, ctr);
  }

  beforeAll(async () => {
    rulesetBefore = rootRuleset();
    removeLabelled('org.secgroup.test=ha');
    network = await createInternalNetwork(await getContainerRuntimeClient(), run, N, labels);
    const pg = await new FixedIpContainer(IMAGES.postgres)
      .withName(`${run}-pg`)
      .withFixedIp(network.name, IP.pg)
      .withLabels(labels)
      .withEnvironment({ POSTGRES_PASSWORD: DB_PASSWORD })
      .start();
    started.set('pg', pg);
    // the entry point's setup server listens on no address; the final one on *:5432
    await until('PostgreSQL accepting connections', async () => ((await pg.exec(['sh', '-c', `/usr/lib/postgresql/*/bin/pg_isready -q -h ${IP.pg}`])).exitCode === 0 ? true : undefined), 60_000);
    await Promise.all([startReplica('r1'), startReplica('r2')]);
    await until('both replicas ready', async () => ((await readyz('r1')) === 200 && (await readyz('r2')) === 200 ? true : undefined), 60_000);

    expect((await api('r1', 'POST', '/vpc/security-groups', { security_group: { id: 'sg-ha', name: 'ha' } })).status).toBe(201);
    // a new group admits its own members on every port; here only the rules below count
    const ingress = await api('r1', 'GET', '/vpc/security-group-rules?security_group_id=sg-ha&direction=ingress');
    for (const r of ingress.body.security_group_rules as Json[]) expect((await api('r1', 'DELETE', `/vpc/security-group-rules/${String(r.id)}`)).status).toBe(204);
    await addRule('r1', 80);
    const tokens: Partial<Record<Agent, string>> = {};
    for (const id of AGENTS) {
      // created through replica 2: the API of either replica writes the one database
      const r = await api('r2', 'POST', '/instances', { instance: { id, name: id, addresses: [IP[id]], security_groups: ['sg-ha'] } });
      expect(r.status, JSON.stringify(r.body)).toBe(201);
      tokens[id] = r.body.token as string;
    }
    await Promise.all(AGENTS.map((id) => startAgent(id, tokens[id]!)));
    await acked('r1', AGENTS, {}, 60_000);
    await Promise.all(AGENTS.flatMap((id) => [startWeb(c(id), 80), startWeb(c(id), 81)]));
  }, 180_000);

  afterAll(async () => {
    await Promise.allSettled([...started.values()].map((x) => x.stop({ timeout: 1_000, remove: true, removeVolumes: true })));
    await network?.remove().catch(() => undefined);
    removeLabelled('org.secgroup.test=ha');
    expect(rootRuleset()).toBe(rulesetBefore);
  }, 60_000);

  it('a rule added through replica 1 reaches the agent on replica 2; its ack reads the same through both replicas', async () => {
    expect(await until('A, C on replica 1 and B on replica 2', async () => {
      const on = await Promise.all(AGENTS.map(replicaOf));
      return on.join() === 'r1,r2,r1' ? on : undefined;
    })).toEqual(['r1', 'r2', 'r1']);
    const before = await acked('r2', AGENTS);
    expect(await tcpConnects(c('c'), IP.b, 81)).toBe(false);
    rule81 = await addRule('r1', 81);
    const viaR2 = await acked('r2', AGENTS, before);
    expect(await acked('r1', AGENTS, before)).toEqual(viaR2);
    expect(await tcpConnects(c('c'), IP.b, 81)).toBe(true);
    expect(await tcpConnects(c('a'), IP.b, 80)).toBe(true);
  });

  it('replica 1 killed: its agents re-ack on replica 2 and a later change reaches them', async () => {
    const before = await acked('r2', AGENTS);
    docker('kill', `${run}-r1`);
    expect(await until('every agent on replica 2', async () => {
      const on = await Promise.all(AGENTS.map(replicaOf));
      return on.every((r) => r === 'r2') ? on : undefined;
    }, 45_000)).toEqual(['r2', 'r2', 'r2']);
    expect((await api('r2', 'DELETE', `/vpc/security-group-rules/${rule81}`)).status).toBe(204);
    await acked('r2', AGENTS, before);
    expect(await tcpConnects(c('c'), IP.a, 81)).toBe(false);
    expect(await tcpConnects(c('c'), IP.a, 80)).toBe(true);
  });

  it('PostgreSQL stopped: /readyz and the API answer 503 SYS.0503 on both replicas, agents keep enforcing; started again: both recover and a change reaches every agent', async () => {
    docker('start', `${run}-r1`);
    await until('replica 1 back', async () => ((await readyz('r1')) === 200 ? true : undefined), 60_000);
    const before = await acked('r2', AGENTS);

    docker('stop', '-t', '10', `${run}-pg`);
    for (const via of ['r1', 'r2'] as const) {
      await until(`${via} not ready`, async () => ((await readyz(via)) === 503 ? true : undefined), 30_000);
      const r = await api(via, 'GET', '/vpc/security-groups');
      expect(r.status, JSON.stringify(r.body)).toBe(503);
      expect(r.body.error_code).toBe('SYS.0503');
      const w = await api(via, 'POST', '/vpc/security-groups', { security_group: { id: 'sg-while-away', name: 'x' } });
      expect(w.status, JSON.stringify(w.body)).toBe(503);
    }
    // fail-static: the last policy (:80 open, :81 closed) is still enforced
    expect(await tcpConnects(c('c'), IP.a, 80)).toBe(true);
    expect(await tcpConnects(c('a'), IP.b, 80)).toBe(true);
    expect(await tcpConnects(c('c'), IP.b, 81)).toBe(false);

    docker('start', `${run}-pg`);
    await until('both replicas ready again by themselves', async () => ((await readyz('r1')) === 200 && (await readyz('r2')) === 200 ? true : undefined), 60_000);
    // nothing of the refused write was kept
    expect((await api('r1', 'GET', '/vpc/security-groups/sg-while-away')).status).toBe(404);
    await addRule('r1', 81);
    const viaR1 = await acked('r1', AGENTS, before, 45_000);
    expect(await acked('r2', AGENTS, before)).toEqual(viaR1);
    expect(await tcpConnects(c('c'), IP.b, 81)).toBe(true);
    expect(await tcpConnects(c('b'), IP.a, 81)).toBe(true);
  });
});
