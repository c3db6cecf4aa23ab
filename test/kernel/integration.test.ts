/**
 * Issue 4's proof: the controller and two real agent processes, each in its
 * own network namespace with real nft, driven through the HTTP API; verdicts
 * are observed with real TCP connects.
 *
 * Layout (all inside namespaces created here; nothing in the root namespace):
 *
 *   <prefix>-ctl  br0 198.18.9.1/24   controller (listen 198.18.9.1:PORT), RPC helper (API calls, probes)
 *     |-- veth -- <prefix>-a  eth0 198.18.9.2/24   agent for instance ecs-a, TCP listeners 8000 8001
 *     `-- veth -- <prefix>-b  eth0 198.18.9.3/24   agent for instance ecs-b, RPC helper (probes to a)
 *
 * A is in sg-a only and B in sg-b only (not `default`, whose ingress rule
 * would let members reach each other), and the ingress rules a new group
 * starts with (from its own members, Huawei's defaults) are deleted, so every
 * path into A is opened by a rule this test creates.
 */
import { spawnSync } from 'node:child_process';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AgentProcess, Peer, kernelSkipReason } from '../helpers/agent-lab.js';
import { ControllerLab } from '../helpers/controller-lab.js';
import { PORTS_AFTER_ELEMENTS_MS } from '../../src/agent/port-reporter.js';

const skip = kernelSkipReason();
const CTL = '198.18.9.1';
const A = '198.18.9.2';
const B = '198.18.9.3';
const PORT = 8443;
const ADMIN = 'integration-admin-token-0123456789';
const PROJECT = 'integ';
const API = `http://${CTL}:${PORT}/v3/${PROJECT}`;

type Json = Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe.skipIf(skip !== null)(`controller + two real agents in network namespaces${skip ? ` (skipped: ${skip})` : ''}`, () => {
  const lab = new ControllerLab(CTL, { a: A, b: B });
  let ctlRpc: Peer;
  let bRpc: Peer;
  let controller: AgentProcess;
  let controllerConfig: string;
  const agents: Record<string, AgentProcess> = {};

  const api = async (method: string, path: string, body?: unknown, expectStatus?: number): Promise<Json> => {
    const r = await ctlRpc.request({ cmd: 'http', method, url: `${API}${path}`, headers: { 'x-auth-token': ADMIN }, ...(body === undefined ? {} : { body }) });
    if (expectStatus !== undefined && r.status !== expectStatus) throw new Error(`${method} ${path}: expected ${expectStatus}, got ${String(r.status)}: ${JSON.stringify(r.body ?? r.error)}`);
    return r as Json;
  };
  const status = async (id: string): Promise<Json> => ((await api('GET', `/instances/${id}/status`, undefined, 200)).body as Json).status as Json;
  /** Waits until `id`'s agent acked (applied) the instance's current desired revision; returns that revision. */
  const synced = async (id: string, timeoutMs = 20_000): Promise<number> => {
    const end = Date.now() + timeoutMs;
    let st: Json = {};
    while (Date.now() < end) {
      st = await status(id);
      if (st.connected && st.in_sync && st.applied_revision === st.desired_revision && st.last_ack?.status === 'applied') return st.applied_revision as number;
      await sleep(100);
    }
    throw new Error(`${id} not in sync after ${timeoutMs} ms: ${JSON.stringify(st)}`);
  };
  const ctlToA = async (port: number) => (await ctlRpc.request({ cmd: 'connect', host: A, port, timeoutMs: 700 })).ok === true;
  const bToA = async (port: number) => (await bRpc.request({ cmd: 'connect', host: A, port, timeoutMs: 700 })).ok === true;

  const startController = async (): Promise<AgentProcess> => {
    const c = lab.secgroup(lab.ns.ctl, ['controller', '--config', controllerConfig]);
    await c.waitFor((l) => l.event === 'listen', 30_000, 0, 'controller listening');
    return c;
  };

  const startAgent = async (id: string, ns: string, token: string): Promise<AgentProcess> => {
    const config = join(lab.dir, `agent-${id}.json`);
    await writeFile(
      config,
      JSON.stringify({
        instance_id: id,
        state_dir: join(lab.dir, `state-${id}`),
        log_level: 'info',
        controller: { url: `ws://${CTL}:${PORT}`, token, reconnect_initial_ms: 100, reconnect_max_ms: 500, ping_interval_ms: 2000, pong_timeout_ms: 2000 },
        ports_interval_ms: 0,
        http_listen: '127.0.0.1:9469',
        platform: { dhcp: false },
      }),
    );
    return lab.secgroup(ns, ['agent', '--config', config]);
  };

  beforeAll(async () => {
    try {
      await lab.setup();
      controllerConfig = join(lab.dir, 'controller.json');
      await writeFile(
        controllerConfig,
        JSON.stringify({
          listen: { host: CTL, port: PORT },
          data_dir: join(lab.dir, 'controller-data'),
          api: { tokens: [{ name: 'integration', token: ADMIN }] },
          agents: { heartbeat_interval_ms: 2000 },
          log: { level: 'info' },
        }),
      );
      controller = await startController();
      [ctlRpc, bRpc] = await Promise.all([lab.rpc(lab.ns.ctl), lab.rpc(lab.ns.b), lab.listeners(lab.ns.a, [8000, 8001])]);

      await api('POST', '/vpc/security-groups', { security_group: { id: 'sg-a', name: 'a' } }, 201);
      await api('POST', '/vpc/security-groups', { security_group: { id: 'sg-b', name: 'b' } }, 201);
      await api('POST', '/vpc/security-groups', { security_group: { id: 'sg-g', name: 'g' } }, 201);
      for (const g of ['sg-a', 'sg-b', 'sg-g']) {
        const listed = await api('GET', `/vpc/security-group-rules?security_group_id=${g}&direction=ingress`, undefined, 200);
        for (const r of (listed.body as Json).security_group_rules as Json[]) await api('DELETE', `/vpc/security-group-rules/${String(r.id)}`, undefined, 204);
      }
      const ia = await api('POST', '/instances', { instance: { id: 'ecs-a', name: 'a', addresses: [A], security_groups: ['sg-a'] } }, 201);
      const ib = await api('POST', '/instances', { instance: { id: 'ecs-b', name: 'b', addresses: [B], security_groups: ['sg-b'] } }, 201);
      agents.a = await startAgent('ecs-a', lab.ns.a, (ia.body as Json).token as string);
      agents.b = await startAgent('ecs-b', lab.ns.b, (ib.body as Json).token as string);
      await Promise.all([synced('ecs-a', 40_000), synced('ecs-b', 40_000)]);
    } catch (e) {
      await lab.destroy();
      throw e;
    }
  }, 120_000);

  afterAll(async () => {
    await lab.destroy();
    expect(spawnSync('ip', ['netns', 'list'], { encoding: 'utf8' }).stdout).not.toContain(lab.prefix);
  });

  it('starts closed: sg-a has no ingress rule, so nothing reaches A', async () => {
    expect(await ctlToA(8000)).toBe(false);
    expect(await bToA(8001)).toBe(false);
  });

  let ruleId = '';
  it('a rule created via the API is applied by the agent and a real connection passes', async () => {
    const before = (await status('ecs-a')).applied_revision as number;
    const r = await api('POST', '/vpc/security-group-rules', { security_group_rule: { security_group_id: 'sg-a', direction: 'ingress', protocol: 'tcp', multiport: '8000', remote_ip_prefix: `${CTL}/32` } }, 201);
    ruleId = ((r.body as Json).security_group_rule as Json).id as string;
    expect(await synced('ecs-a')).toBeGreaterThan(before);
    expect(await ctlToA(8000)).toBe(true);
    expect(await ctlToA(8001)).toBe(false);
  });

  it('deleting the rule blocks the connection again', async () => {
    await api('DELETE', `/vpc/security-group-rules/${ruleId}`, undefined, 204);
    await synced('ecs-a');
    expect(await ctlToA(8000)).toBe(false);
  });

  it("adding B to the group A's rule references puts B's address in A's remote-group map, and B reaches A", async () => {
    await api('POST', '/vpc/security-group-rules', { security_group_rule: { security_group_id: 'sg-a', direction: 'ingress', protocol: 'tcp', multiport: '8001', remote_group_id: 'sg-g' } }, 201);
    await synced('ecs-a');
    expect(String((await lab.nftTable(lab.ns.a)).stdout)).not.toContain(B);
    expect(await bToA(8001)).toBe(false);

    const revBefore = (await status('ecs-a')).applied_revision as number;
    await api('PUT', '/instances/ecs-b', { instance: { security_groups: ['sg-b', 'sg-g'] } }, 200);
    expect(await synced('ecs-a')).toBeGreaterThan(revBefore);
    await synced('ecs-b');
    expect(String((await lab.nftTable(lab.ns.a)).stdout)).toContain(B);
    expect(await bToA(8001)).toBe(true);
    expect(await bToA(8000)).toBe(false);
    expect(await ctlToA(8001)).toBe(false);
  });

  it('another member joining and leaving that group reaches A as a policy_delta, applied as element updates (no reload)', async () => {
    const C = '198.18.9.77'; // only in the policy: not next to B, so it stays a single-address element
    const from = agents.a!.lines.length;
    await api('POST', '/instances', { instance: { id: 'ecs-c', name: 'c', addresses: [C], security_groups: ['sg-g'] } }, 201);
    const rev = await synced('ecs-a');
    const applied = await agents.a!.waitFor((l) => l.event === 'apply' && l.revision === rev, 10_000, from, 'apply of the delta');
    expect(applied.kind).toBe('incremental');
    expect(String((await lab.nftTable(lab.ns.a)).stdout)).toContain(C);
    expect(await bToA(8001)).toBe(true);

    const from2 = agents.a!.lines.length;
    await api('DELETE', '/instances/ecs-c', undefined, 204);
    const rev2 = await synced('ecs-a');
    expect((await agents.a!.waitFor((l) => l.event === 'apply' && l.revision === rev2, 10_000, from2, 'apply of the removal')).kind).toBe('incremental');
    const table = String((await lab.nftTable(lab.ns.a)).stdout);
    expect(table).not.toContain(C);
    expect(table).toContain(B);
    expect(await bToA(8001)).toBe(true);
    // the generation marker names the delta's revision (the table comment still names the last full reload)
    expect(table).toMatch(new RegExp(`sg_generation[^}]*revision=${rev2} `));
  });

  it('a group of 300 members: the whole document after a rule change holds it packed in the agent, deltas on it are element updates', async () => {
    // every other address (single-address elements), in no particular order: the controller sends them in canonical order
    const many = Array.from({ length: 300 }, (_, i) => `198.18.${100 + (i >> 7)}.${(i & 127) * 2}`).reverse();
    await api('POST', '/instances', { instance: { id: 'ecs-d', name: 'd', addresses: many, security_groups: ['sg-g'] } }, 201);
    await synced('ecs-a');
    // a rule change: the controller sends the whole document, and the agent reads the 301-member list straight into words
    const from = agents.a!.lines.length;
    const rule = await api('POST', '/vpc/security-group-rules', { security_group_rule: { security_group_id: 'sg-a', direction: 'ingress', protocol: 'tcp', multiport: '8002', remote_ip_prefix: `${CTL}/32` } }, 201);
    const rev = await synced('ecs-a');
    expect((await agents.a!.waitFor((l) => l.event === 'apply' && l.revision === rev, 10_000, from, 'apply of the rule change')).packedGroups).toBe(1);
    let table = String((await lab.nftTable(lab.ns.a)).stdout);
    for (const a of [many[0]!, many[150]!, many[299]!, B]) expect(table).toContain(a);
    expect(await bToA(8001)).toBe(true);

    // a member joins, then leaves: deltas on the packed list, element updates
    const C = '198.18.9.77';
    const from2 = agents.a!.lines.length;
    await api('POST', '/instances', { instance: { id: 'ecs-c', name: 'c', addresses: [C], security_groups: ['sg-g'] } }, 201);
    const rev2 = await synced('ecs-a');
    expect(await agents.a!.waitFor((l) => l.event === 'apply' && l.revision === rev2, 10_000, from2, 'apply of the join')).toMatchObject({ kind: 'incremental', packedGroups: 1 });
    expect(String((await lab.nftTable(lab.ns.a)).stdout)).toContain(C);
    const from3 = agents.a!.lines.length;
    await api('DELETE', '/instances/ecs-c', undefined, 204);
    const rev3 = await synced('ecs-a');
    expect(await agents.a!.waitFor((l) => l.event === 'apply' && l.revision === rev3, 10_000, from3, 'apply of the leave')).toMatchObject({ kind: 'incremental', packedGroups: 1 });
    table = String((await lab.nftTable(lab.ns.a)).stdout);
    expect(table).not.toContain(C);
    for (const a of [many[0]!, many[299]!, B]) expect(table).toContain(a);
    expect(await bToA(8001)).toBe(true);
    expect(await bToA(8000)).toBe(false);

    // back to where the next tests start
    await api('DELETE', `/vpc/security-group-rules/${String(((rule.body as Json).security_group_rule as Json).id)}`, undefined, 204);
    await api('DELETE', '/instances/ecs-d', undefined, 204);
    await synced('ecs-a');
    expect(String((await lab.nftTable(lab.ns.a)).stdout)).not.toContain(many[0]!);
  });

  it('the applied revision and the port report show up in status and ports', async () => {
    const st = await status('ecs-a');
    expect(st).toMatchObject({ instance_id: 'ecs-a', connected: true, in_sync: true, last_ack: { status: 'applied', revision: st.desired_revision } });
    const table = String((await lab.nftTable(lab.ns.a)).stdout);
    expect(table).toContain(`revision=${String(st.applied_revision)}`);

    let ports: Json = {};
    // the revision applied last came as a member delta to sg-g, whose rule opens 8001, where A listens: it can change
    // that port's status, so its report follows at once (at most one a second), not PORTS_AFTER_ELEMENTS_MS (30 s) later
    expect(PORTS_AFTER_ELEMENTS_MS).toBe(30_000);
    const end = Date.now() + 10_000;
    while (Date.now() < end) {
      ports = (await api('GET', '/instances/ecs-a/ports', undefined, 200)).body as Json;
      if (ports.report?.revision === st.applied_revision) break;
      await sleep(200);
    }
    expect(ports.report?.revision).toBe(st.applied_revision);
    const entries = ports.report.entries as Json[];
    const p8001 = entries.find((e) => e.protocol === 'tcp' && e.port === 8001 && e.family === 'ipv4') ?? entries.find((e) => e.protocol === 'tcp' && e.port === 8001);
    expect(p8001, JSON.stringify(entries)).toBeDefined();
    expect((p8001!.allowed_by as Json[]).map((x) => x.group_id)).toContain('sg-a');
    const p8000 = entries.find((e) => e.protocol === 'tcp' && e.port === 8000);
    expect(p8000?.status).toBe('blocked');
  });

  it('agents keep enforcing while the controller is down, then resync after it restarts on the same data dir', async () => {
    const desired = (await status('ecs-a')).desired_revision as number;
    const aLines = agents.a!.lines.length;
    expect(await controller.stop('SIGTERM')).toBe(0);
    await agents.a!.waitFor((l) => l.event === 'disconnect', 10_000, aLines, 'agent a disconnect');

    // controller down: the last policy stays in force
    expect(await bToA(8001)).toBe(true);
    expect(await ctlToA(8000)).toBe(false);
    expect(await ctlToA(8001)).toBe(false);
    await sleep(1500);
    expect(await bToA(8001)).toBe(true);
    expect(String((await lab.nftTable(lab.ns.a)).stdout)).toContain(`revision=${String(desired)}`);

    controller = await startController();
    expect(await synced('ecs-a')).toBe(desired); // reconnected; nothing to push
    await synced('ecs-b');

    // a change made after the restart reaches the agents
    await api('POST', '/vpc/security-group-rules', { security_group_rule: { security_group_id: 'sg-a', direction: 'ingress', protocol: 'tcp', multiport: '8000', remote_ip_prefix: `${CTL}/32` } }, 201);
    expect(await synced('ecs-a')).toBeGreaterThan(desired);
    expect(await ctlToA(8000)).toBe(true);
    await api('PUT', '/instances/ecs-b', { instance: { security_groups: ['sg-b'] } }, 200);
    await synced('ecs-a');
    expect(String((await lab.nftTable(lab.ns.a)).stdout)).not.toContain(B);
    expect(await bToA(8001)).toBe(false);
  });
});
