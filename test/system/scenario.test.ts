// The seed's scenario end to end, with the real programs in containers as on
// VMs: a controller, agents A and B (NET_ADMIN) and a client on an --internal
// network (198.19.252.0/24). Instances are created through the Huawei v3 API
// with the containers' fixed addresses; the returned tokens go to the agents
// (SECGROUP_TOKEN); verdicts are observed with real TCP connections from the
// client, port statuses from GET .../instances/A/ports.
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
  startWeb as startWebIn,
  tcpConnects,
  until,
  type Json,
  type TestNetwork,
} from './docker-env.js';

const unavailable = engineUnavailableReason() ?? imagesMissing(['secgroup-agent:latest', 'secgroup-controller:latest']);
if (unavailable) console.warn(`[system] scenario.test.ts skipped: ${unavailable}`);

const N = 252;
const run = `sgsys-${process.pid}`.slice(0, 15);
const LABEL_KEY = 'org.secgroup.test';
const LABEL_VALUE = 'scenario';
const IP = { controller: `198.19.${N}.10`, a: `198.19.${N}.11`, b: `198.19.${N}.12`, client: `198.19.${N}.20` };
const ADMIN = 'system-test-admin-token-0123456789';
const PROJECT = 'sys';

// Keeps one keep-alive HTTP connection, sends a request every 300 ms, appends
// "ok" per answer to /tmp/hold.log and "stalled" when one is not answered in 1.5 s.
const HOLD = (host: string, port: number) =>
  `const fs=require("fs");const c=require("net").connect({host:${JSON.stringify(host)},port:${port}});let t;` +
  'const req=()=>{c.write("GET / HTTP/1.1\\r\\nHost: a\\r\\n\\r\\n");t=setTimeout(()=>{fs.appendFileSync("/tmp/hold.log","stalled\\n");process.exit(0)},1500)};' +
  'c.on("connect",req);c.on("data",()=>{clearTimeout(t);fs.appendFileSync("/tmp/hold.log","ok\\n");setTimeout(req,300)});' +
  'c.on("error",e=>{fs.appendFileSync("/tmp/hold.log","error "+e.code+"\\n");process.exit(1)})';

describe.skipIf(unavailable !== undefined)(`seed scenario in containers${unavailable ? ` (SKIPPED: ${unavailable})` : ''}`, () => {
  let network: TestNetwork | undefined;
  const started = new Map<string, StartedTestContainer>();
  let rulesetBefore: string;
  let tokens: Record<string, string> = {};
  let rule80 = '';

  const c = (name: string): StartedTestContainer => {
    const x = started.get(name);
    if (!x) throw new Error(`container ${name} not started`);
    return x;
  };

  const labels = { [LABEL_KEY]: LABEL_VALUE };

  /** The controller's API, called from inside its own container (127.0.0.1). */
  const api = (method: string, path: string, body?: Json) => controllerCall(c('controller'), ADMIN, method, `/v3/${PROJECT}${path}`, body);
  const connect = (from: string, host: string, port: number) => tcpConnects(c(from), host, port);
  const startWeb = (container: string, port: number) => startWebIn(c(container), port);

  async function status(id: string): Promise<Json> {
    const r = await api('GET', `/instances/${id}/status`);
    expect(r.status).toBe(200);
    return r.body.status as Json;
  }

  /** Waits until the agent of `id` acked the instance's current desired revision. */
  async function inSync(id: string): Promise<number> {
    return until(`${id} in sync`, async () => {
      const s = await status(id);
      return s.in_sync === true && s.connected === true ? (s.applied_revision as number) : undefined;
    });
  }

  /** Waits for a port report of `id` at revision >= `rev` with `port` in `want`; returns it. */
  async function portStatus(id: string, port: number, want: string, rev: number): Promise<Json> {
    return until(`port ${port} of ${id} reported ${want}`, async () => {
      const r = await api('GET', `/instances/${id}/ports`);
      const report = r.body.report as { revision: number; entries: Json[] } | null;
      if (!report || report.revision < rev) return undefined;
      const e = report.entries.find((x) => x.protocol === 'tcp' && x.port === port && x.family !== 6);
      return e?.status === want ? e : undefined;
    });
  }

  async function startAgent(name: 'a' | 'b', id: string): Promise<void> {
    const config = [
      `instance_id: ${id}`,
      'state_dir: /var/lib/secgroup',
      'ports_interval_ms: 1000',
      'drift_schedule: "*/5 * * * * *"',
      'controller:',
      `  url: ws://${IP.controller}:8443`,
      '  reconnect_max_ms: 2000',
    ].join('\n');
    const ctr = await startAgentContainer('secgroup-agent:latest', { name: `${run}-${name}`, network: network!.name, ip: IP[name], labels, token: tokens[id]!, config });
    started.set(name, ctr);
  }

  beforeAll(async () => {
    rulesetBefore = rootRuleset();
    removeLabelled(`${LABEL_KEY}=${LABEL_VALUE}`);
    const client = await getContainerRuntimeClient();
    network = await createInternalNetwork(client, run, N, labels);

    const controllerConfig = [
      'listen: { host: 0.0.0.0, port: 8443 }',
      'data_dir: /var/lib/secgroup-controller',
      'agents: { heartbeat_interval_ms: 2000 }',
      'api:',
      '  tokens:',
      `    - { name: system-test, token: ${ADMIN} }`,
    ].join('\n');
    const [controller, clientCtr] = await Promise.all([
      new FixedIpContainer('secgroup-controller:latest')
        .withName(`${run}-ctl`)
        .withFixedIp(network.name, IP.controller)
        .withLabels(labels)
        .withCopyContentToContainer([{ content: controllerConfig, target: '/etc/secgroup/controller.yaml' }])
        .withCommand(['controller', '--config', '/etc/secgroup/controller.yaml'])
        .start(),
      new FixedIpContainer('secgroup-agent:latest')
        .withName(`${run}-client`)
        .withFixedIp(network.name, IP.client)
        .withLabels(labels)
        .withEntrypoint(['sleep', 'infinity'])
        .start(),
    ]);
    started.set('controller', controller);
    started.set('client', clientCtr);
    await until('controller API', async () => ((await api('GET', '/vpc/security-groups')).status === 200 ? true : undefined));

    expect((await api('POST', '/vpc/security-groups', { security_group: { id: 'sg-web', name: 'web' } })).status).toBe(201);
    // Huawei's defaults admit the group's own members; the seed's web tier starts with no ingress at all
    const ingress = await api('GET', '/vpc/security-group-rules?security_group_id=sg-web&direction=ingress');
    for (const r of ingress.body.security_group_rules as Json[]) expect((await api('DELETE', `/vpc/security-group-rules/${String(r.id)}`)).status).toBe(204);
    for (const [id, ip, groups] of [
      // A starts in sg-web only: in `default` its ports would be open to B (the
      // default group admits its members), and not `blocked` as the seed expects.
      ['inst-a', IP.a, ['sg-web']],
      ['inst-b', IP.b, ['default']],
    ] as const) {
      const r = await api('POST', '/instances', { instance: { id, name: id, addresses: [ip], security_groups: groups } });
      expect(r.status, JSON.stringify(r.body)).toBe(201);
      tokens = { ...tokens, [id]: r.body.token as string };
    }
    await Promise.all([startAgent('a', 'inst-a'), startAgent('b', 'inst-b')]);
    await Promise.all([inSync('inst-a'), inSync('inst-b')]);
    await startWeb('a', 80);
  });

  afterAll(async () => {
    await Promise.allSettled([...started.values()].map((x) => x.stop({ timeout: 1_000, remove: true, removeVolumes: true })));
    await network?.remove().catch(() => undefined);
    removeLabelled(`${LABEL_KEY}=${LABEL_VALUE}`);
    expect(rootRuleset()).toBe(rulesetBefore);
  });

  it('before any rule, :80 on A is unreachable from the client and reported blocked', async () => {
    const rev = await inSync('inst-a');
    expect(await connect('client', IP.a, 80)).toBe(false);
    const e = await portStatus('inst-a', 80, 'blocked', rev);
    expect(e.status).toBe('blocked');
    // the table is in the agent's container, not in the root namespace
    expect((await c('a').exec(['nft', 'list', 'tables'])).stdout).toContain('table inet secgroup');
    expect(rootRuleset()).not.toContain('secgroup');
  });

  it('after POST of "ingress TCP 80 from 0.0.0.0/0", :80 is reachable and open; :8080 with nothing listening is not-listening', async () => {
    const r = await api('POST', '/vpc/security-group-rules', {
      security_group_rule: { security_group_id: 'sg-web', direction: 'ingress', ethertype: 'IPv4', protocol: 'tcp', multiport: '80', remote_ip_prefix: '0.0.0.0/0' },
    });
    expect(r.status, JSON.stringify(r.body)).toBe(201);
    rule80 = (r.body.security_group_rule as Json).id as string;
    const r2 = await api('POST', '/vpc/security-group-rules', {
      security_group_rule: { security_group_id: 'sg-web', direction: 'ingress', ethertype: 'IPv4', protocol: 'tcp', multiport: '8080', remote_ip_prefix: '0.0.0.0/0' },
    });
    expect(r2.status, JSON.stringify(r2.body)).toBe(201);
    const rev = await inSync('inst-a');
    expect(await connect('client', IP.a, 80)).toBe(true);
    const e = await portStatus('inst-a', 80, 'open', rev);
    expect(JSON.stringify(e.allowed_by)).toContain(rule80);
    await portStatus('inst-a', 8080, 'not-listening', rev);
  });

  it('deleting the rule blocks :80 again, including an established connection', async () => {
    await c('client').exec(['sh', '-c', `rm -f /tmp/hold.log; nohup node -e '${HOLD(IP.a, 80)}' >/dev/null 2>&1 &`]);
    await until('held connection answering', async () => {
      const log = (await c('client').exec(['cat', '/tmp/hold.log'])).stdout;
      return log.split('\n').filter((l) => l === 'ok').length >= 2 ? true : undefined;
    });
    const before = await inSync('inst-a');
    expect((await api('DELETE', `/vpc/security-group-rules/${rule80}`)).status).toBe(204);
    const rev = await until('new revision applied', async () => {
      const v = await inSync('inst-a');
      return v > before ? v : undefined;
    });
    const log = await until(
      'held connection cut',
      async () => {
        const l = (await c('client').exec(['cat', '/tmp/hold.log'])).stdout;
        return l.includes('stalled') || l.includes('error') ? l : undefined;
      },
      15_000,
    );
    expect(log).toContain('stalled');
    expect(await connect('client', IP.a, 80)).toBe(false);
    await portStatus('inst-a', 80, 'blocked', rev);
  });

  it('default group: A and B reach each other, the client reaches neither', async () => {
    const [ra, rb] = [await inSync('inst-a'), await inSync('inst-b')];
    const put = await api('PUT', '/instances/inst-a', { instance: { security_groups: ['sg-web', 'default'] } });
    expect(put.status, JSON.stringify(put.body)).toBe(200);
    await until('A and B on their new revisions', async () => ((await inSync('inst-a')) > ra && (await inSync('inst-b')) > rb ? true : undefined));
    await Promise.all([startWeb('a', 81), startWeb('b', 81)]);
    expect(await connect('b', IP.a, 81)).toBe(true);
    expect(await connect('a', IP.b, 81)).toBe(true);
    expect(await connect('client', IP.a, 81)).toBe(false);
    expect(await connect('client', IP.b, 81)).toBe(false);
  });

  it('an agent restarted while the controller is stopped keeps enforcing the last policy', async () => {
    // last policy of A: sg-web allows :8080 (not :80 any more), default allows B
    await c('controller').stop({ timeout: 2_000, remove: true, removeVolumes: true });
    started.delete('controller');
    await c('a').restart({ timeout: 2_000 });
    // a restarted container has a new network namespace: the table comes from the agent's state dir
    await until('table re-applied after restart', async () =>
      (await c('a').exec(['nft', 'list', 'tables'])).stdout.includes('table inet secgroup') ? true : undefined,
    );
    await Promise.all([startWeb('a', 80), startWeb('a', 8080)]);
    expect(await connect('client', IP.a, 8080)).toBe(true);
    expect(await connect('client', IP.a, 80)).toBe(false);
    expect(await connect('b', IP.a, 80)).toBe(true);
    const logs = (await c('a').exec(['nft', 'list', 'table', 'inet', 'secgroup'])).stdout;
    expect(logs).toContain('8080');
  });
});
