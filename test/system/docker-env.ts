// Helpers for system tests that run containers on the local Docker engine
// (see docker/README.md). No registry is reachable: images are local only.
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import type { ContainerRuntimeClient } from 'testcontainers';

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
