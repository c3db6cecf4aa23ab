// The container chain itself: testcontainers talks to the local engine, runs
// the local base image (no registry), and a ruleset applied in a container
// stays in that container's network namespace.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { GenericContainer, getContainerRuntimeClient, type StartedTestContainer } from 'testcontainers';
import {
  baseImage,
  createInternalNetwork,
  engineUnavailableReason,
  removeLabelled,
  rootRuleset,
  type TestNetwork,
} from './docker-env.js';

const unavailable = engineUnavailableReason();
if (unavailable) console.warn(`[system] engine.test.ts skipped: ${unavailable}`);

const run = `sgeng-${process.pid}`;
const label = 'org.secgroup.test=engine';

describe.skipIf(unavailable !== undefined)(
  `container engine${unavailable ? ` (SKIPPED: ${unavailable})` : ''}`,
  () => {
    let image: string;
    let network: TestNetwork | undefined;
    const started: StartedTestContainer[] = [];
    let rulesetBefore: string;

    beforeAll(async () => {
      rulesetBefore = rootRuleset();
      removeLabelled(label); // a crashed earlier run's leftovers
      image = baseImage();
    });

    afterAll(async () => {
      await Promise.allSettled(started.map((c) => c.stop({ timeout: 1_000 })));
      await network?.remove();
      removeLabelled(label);
      expect(rootRuleset()).toBe(rulesetBefore);
    });

    it('starts a container from the local base image and runs a command in it', async () => {
      const c = await new GenericContainer(image)
        .withCommand(['sleep', 'infinity'])
        .withNetworkMode('none')
        .withLabels({ 'org.secgroup.test': 'engine' })
        .start();
      started.push(c);
      const r = await c.exec(['node', '-p', 'process.versions.node.split(".")[0]']);
      expect(r.exitCode).toBe(0);
      expect(r.output.trim()).toBe('24');
      await c.stop({ timeout: 1_000 });
      started.splice(started.indexOf(c), 1);
    });

    it('applies nft in a container on an --internal network without touching the root namespace', async () => {
      const client = await getContainerRuntimeClient();
      network = await createInternalNetwork(client, run, 251, { 'org.secgroup.test': 'engine' });
      const server = 'require("net").createServer(s=>s.end("pong "+s.remoteAddress)).listen(7000,"::")';
      const make = (name: string, cmd: string[]) =>
        new GenericContainer(image)
          .withName(`${run}-${name}`)
          .withNetworkMode(network!.name)
          .withAddedCapabilities('NET_ADMIN')
          .withLabels({ 'org.secgroup.test': 'engine' })
          .withCommand(cmd)
          .start();
      const [host, client1] = await Promise.all([
        make('host', ['node', '-e', server]),
        make('client', ['sleep', 'infinity']),
      ]);
      started.push(host, client1);

      const apply = await host.exec(['nft', 'add', 'table', 'inet', 'secgroup']);
      expect(apply.exitCode).toBe(0);
      expect((await host.exec(['nft', 'list', 'tables'])).output).toContain('table inet secgroup');
      expect(rootRuleset()).not.toContain('secgroup');

      const hostIp4 = host.getIpAddress(network.name);
      expect(hostIp4).toMatch(/^198\.19\.251\./);
      const connect = (target: string) =>
        client1.exec([
          'node',
          '-e',
          `const c=require("net").connect({host:${JSON.stringify(target)},port:7000,timeout:3000});` +
            'c.on("data",d=>{process.stdout.write(d);process.exit(0)});' +
            'c.on("timeout",()=>process.exit(2));c.on("error",()=>process.exit(1))',
        ]);
      for (const target of [hostIp4, `${run}-host`]) {
        const r = await connect(target);
        expect(r.exitCode, `TCP to ${target}`).toBe(0);
        expect(r.output).toMatch(/^pong /);
      }
      // IPv6 from Docker's IPAM: the agent's address in fd00:5ec:251::/64.
      const ip6 = (await host.exec(['ip', '-6', '-o', 'addr', 'show', 'scope', 'global'])).output;
      const hostIp6 = /inet6 (fd00:5ec:251:[0-9a-f:]+)\//.exec(ip6)?.[1];
      expect(hostIp6).toBeDefined();
      const r6 = await connect(hostIp6!);
      expect(r6.exitCode, `TCP to ${hostIp6}`).toBe(0);
    });
  },
);
