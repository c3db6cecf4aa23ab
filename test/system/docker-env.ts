// Helpers for system tests that run containers on the local Docker engine
// (see docker/README.md). No registry is reachable: images are local only.
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { GenericContainer, type ContainerRuntimeClient, type StartedTestContainer } from 'testcontainers';

const repo = fileURLToPath(new URL('../..', import.meta.url));

// The reaper (ryuk) image cannot be pulled here; tests clean up themselves.
process.env.TESTCONTAINERS_RYUK_DISABLED ??= 'true';
// This machine has a /.dockerenv, so testcontainers believes it runs inside a
// container and looks up the gateway of the default `bridge` network, which
// the engine does not have (bridge: none), then would pull alpine to find one.
// Containers here are reached by network address, never by a published port.
process.env.TESTCONTAINERS_HOST_OVERRIDE ??= 'localhost';

/** Why system tests cannot run here, or undefined when an engine answers as root. */
export function engineUnavailableReason(): string | undefined {
  if (process.getuid?.() !== 0) return 'not root (system tests need root and CAP_NET_ADMIN)';
  try {
    execFileSync('docker', ['info', '--format', '{{.ServerVersion}}'], { stdio: 'pipe', timeout: 20_000 });
    return undefined;
  } catch (e) {
    const err = e as { stderr?: Buffer; message: string };
    const detail = err.stderr?.toString().trim().split('\n')[0] ?? err.message;
    return `no Docker engine answers (run docker/engine.sh): ${detail}`;
  }
}

/** Builds (or finds cached) the base image; returns its tag. */
export function baseImage(): string {
  const out = execFileSync('bash', [`${repo}/docker/base-image.sh`], {
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const tag = out.trim().split('\n').pop();
  if (!tag) throw new Error('docker/base-image.sh printed no tag');
  return tag;
}

/** The root namespace's nftables ruleset, to check that tests left it alone. */
export function rootRuleset(): string {
  return execFileSync('nft', ['list', 'ruleset'], { encoding: 'utf8' });
}

export interface TestNetwork {
  name: string;
  remove(): Promise<void>;
}

/**
 * An --internal bridge network in the test ranges only. `n` (1..254) picks
 * 198.19.n.0/24 and fd00:5ec:n::/64; give each test file its own n. The root
 * namespace gets the bridge (named after `name`, <= 15 chars) and the IPv6
 * gateway address, but no IPv4 address (inhibit_ipv4).
 */
export async function createInternalNetwork(
  client: ContainerRuntimeClient,
  name: string,
  n: number,
  labels: Record<string, string>,
): Promise<TestNetwork> {
  if (name.length > 15) throw new Error(`network name ${name} is too long for a bridge name`);
  const network = await client.network.create({
    Name: name,
    Driver: 'bridge',
    Internal: true,
    EnableIPv6: true,
    CheckDuplicate: true,
    IPAM: { Driver: 'default', Config: [{ Subnet: `198.19.${n}.0/24` }, { Subnet: `fd00:5ec:${n}::/64` }] },
    Options: {
      'com.docker.network.bridge.inhibit_ipv4': 'true',
      'com.docker.network.bridge.name': name,
    },
    Labels: labels,
  });
  return { name, remove: () => client.network.remove(network) };
}

/** Removes containers and networks carrying `label` (leftovers of a crashed run). */
export function removeLabelled(label: string): void {
  const ids = execFileSync('docker', ['ps', '-aq', '--filter', `label=${label}`], { encoding: 'utf8' })
    .split('\n')
    .filter(Boolean);
  if (ids.length > 0) execFileSync('docker', ['rm', '-f', ...ids], { stdio: 'ignore' });
  const nets = execFileSync('docker', ['network', 'ls', '-q', '--filter', `label=${label}`], { encoding: 'utf8' })
    .split('\n')
    .filter(Boolean);
  if (nets.length > 0) execFileSync('docker', ['network', 'rm', ...nets], { stdio: 'ignore' });
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Polls `fn` every 300 ms until it returns something other than undefined (errors count as not yet). */
export async function until<T>(what: string, fn: () => Promise<T | undefined>, timeoutMs = 30_000): Promise<T> {
  const end = performance.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const v = await fn();
      if (v !== undefined) return v;
    } catch (e) {
      last = e;
    }
    if (performance.now() > end) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${last ? `: ${String(last)}` : ''}`);
    await sleep(300);
  }
}

/** Why the system tests that need these local images cannot run, or undefined when all exist. */
export function imagesMissing(images: string[]): string | undefined {
  try {
    execFileSync('docker', ['image', 'inspect', ...images], { stdio: 'ignore' });
    return undefined;
  } catch {
    return `images ${images.join(' / ')} missing (run docker/build-images.sh)`;
  }
}

/** GenericContainer with a fixed IPv4 address on one network (Docker's IPAMConfig). */
export class FixedIpContainer extends GenericContainer {
  withFixedIp(network: string, ip: string): this {
    this.createOpts.NetworkingConfig = { EndpointsConfig: { [network]: { IPAMConfig: { IPv4Address: ip } } } };
    return this.withNetworkMode(network);
  }
}

export type Json = Record<string, unknown>;

/** A web server (HTTP on the given port) as a node one-liner. */
export const WEB = (port: number) => `require("http").createServer((q,s)=>s.end("hello "+process.env.HOSTNAME)).listen(${port},"0.0.0.0")`;

/** A TCP connect as a node one-liner: prints connected, timeout or the error code. */
export const CONNECT = (host: string, port: number) =>
  `const c=require("net").connect({host:${JSON.stringify(host)},port:${port},timeout:1500});` +
  'c.on("connect",()=>{console.log("connected");process.exit(0)});c.on("timeout",()=>{console.log("timeout");process.exit(2)});' +
  'c.on("error",e=>{console.log(e.code);process.exit(1)})';

/** Whether a TCP connection from inside `from` to host:port succeeds. */
export async function tcpConnects(from: StartedTestContainer, host: string, port: number): Promise<boolean> {
  const r = await from.exec(['node', '-e', CONNECT(host, port)]);
  return r.stdout.trim() === 'connected';
}

/** Starts a web server on `port` in the container and waits until it listens (checked over loopback, always allowed). */
export async function startWeb(ctr: StartedTestContainer, port: number): Promise<void> {
  await ctr.exec(['sh', '-c', `nohup node -e '${WEB(port)}' >/dev/null 2>&1 &`]);
  await until(`web server on :${port}`, async () => ((await tcpConnects(ctr, '127.0.0.1', port)) ? true : undefined), 10_000);
}

/**
 * An HTTP call to the controller in `ctr`, made from inside that container
 * (127.0.0.1:8443; the test process never sends to the test network's
 * addresses). `path` is absolute (`/v3/p/...`, `/readyz`). Status 0: no answer.
 */
export async function controllerCall(ctr: StartedTestContainer, token: string, method: string, path: string, body?: Json): Promise<{ status: number; body: Json }> {
  const script =
    `fetch("http://127.0.0.1:8443${path}",{method:${JSON.stringify(method)},` +
    `headers:{"X-Auth-Token":${JSON.stringify(token)}${body ? ',"Content-Type":"application/json"' : ''}}` +
    (body ? `,body:${JSON.stringify(JSON.stringify(body))}` : '') +
    '}).then(async r=>{const t=await r.text();let b={};try{b=t?JSON.parse(t):{}}catch{b={text:t}};process.stdout.write(JSON.stringify({status:r.status,body:b}))})' +
    '.catch(e=>{process.stdout.write(JSON.stringify({status:0,body:{error:String(e)}}))})';
  const r = await ctr.exec(['node', '-e', script]);
  return JSON.parse(r.stdout) as { status: number; body: Json };
}

/** Starts an agent container (NET_ADMIN) at a fixed address with `config` as /etc/secgroup/agent.yaml and its token in SECGROUP_TOKEN. */
export function startAgentContainer(image: string, o: { name: string; network: string; ip: string; labels: Record<string, string>; token: string; config: string }): Promise<StartedTestContainer> {
  return new FixedIpContainer(image)
    .withName(o.name)
    .withFixedIp(o.network, o.ip)
    .withAddedCapabilities('NET_ADMIN')
    .withLabels(o.labels)
    .withEnvironment({ SECGROUP_TOKEN: o.token })
    .withCopyContentToContainer([{ content: o.config, target: '/etc/secgroup/agent.yaml' }])
    .withCommand(['agent'])
    .start();
}
