/**
 * A bare two-namespace lab for benchmarks: `host` and `client` joined by a
 * veth pair, IPv4 198.18.0.10 (host) / 198.18.0.1 (client) on 198.18.0.0/15,
 * IPv6 fd00:5ec::10 / fd00:5ec::1, no default route, nothing in the root
 * namespace. Unlike the test lab (test/helpers/netns.ts) it installs no
 * observer table, so the only ruleset packets cross is the one measured.
 * Names are `sgt-<pid>-<hex>-{host,client}`, the harness pattern, so
 * `cleanupLeftovers()` removes them after a crash; `destroy()` runs on exit too.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { randomBytes } from 'node:crypto';
import { execa } from 'execa';

export const HOST_V4 = '198.18.0.10';
export const CLIENT_V4 = '198.18.0.1';
export const HOST_V6 = 'fd00:5ec::10';
export const CLIENT_V6 = 'fd00:5ec::1';

const live = new Set<BenchLab>();
let hooked = false;

function hook(): void {
  if (hooked) return;
  hooked = true;
  process.once('exit', () => {
    for (const l of live) l.destroySync();
  });
  for (const sig of ['SIGINT', 'SIGTERM'] as const) {
    process.once(sig, () => {
      for (const l of live) l.destroySync();
      process.exit(130);
    });
  }
}

export class BenchLab {
  readonly host: string;
  readonly client: string;
  private constructor(prefix: string) {
    this.host = `${prefix}-host`;
    this.client = `${prefix}-client`;
  }

  static async create(): Promise<BenchLab> {
    hook();
    const lab = new BenchLab(`sgt-${process.pid}-${randomBytes(3).toString('hex')}`);
    live.add(lab);
    try {
      await execa('ip', ['netns', 'add', lab.host]);
      await execa('ip', ['netns', 'add', lab.client]);
      await execa('ip', ['-n', lab.host, 'link', 'add', 'eth0', 'type', 'veth', 'peer', 'name', 'eth0', 'netns', lab.client]);
      for (const [ns, v4, v6] of [
        [lab.host, HOST_V4, HOST_V6],
        [lab.client, CLIENT_V4, CLIENT_V6],
      ] as const) {
        await execa('ip', ['-n', ns, 'link', 'set', 'lo', 'up']);
        await execa('ip', ['-n', ns, 'addr', 'add', `${v4}/15`, 'dev', 'eth0']);
        await execa('ip', ['-n', ns, 'addr', 'add', `${v6}/48`, 'dev', 'eth0', 'nodad']);
        await execa('ip', ['-n', ns, 'link', 'set', 'eth0', 'up']);
      }
    } catch (e) {
      lab.destroySync();
      throw e;
    }
    return lab;
  }

  /** `ip netns exec NS cmd...` */
  exec(ns: 'host' | 'client', cmd: string[], opts: { input?: string; timeoutMs?: number } = {}) {
    return execa('ip', ['netns', 'exec', ns === 'host' ? this.host : this.client, ...cmd], {
      timeout: opts.timeoutMs ?? 120_000,
      maxBuffer: 1 << 30,
      ...(opts.input !== undefined ? { input: opts.input } : {}),
    });
  }

  /** `nft -f -` in the host namespace. */
  async nft(script: string): Promise<void> {
    await this.exec('host', ['nft', '-f', '-'], { input: script });
  }

  destroySync(): void {
    if (!live.has(this)) return;
    live.delete(this);
    for (const ns of [this.host, this.client]) {
      // kill whatever still runs inside, then remove the namespace
      const pids = spawnSync('ip', ['netns', 'pids', ns], { encoding: 'utf8' }).stdout ?? '';
      for (const p of pids.split('\n').filter(Boolean)) spawnSync('kill', ['-9', p]);
      spawnSync('ip', ['netns', 'del', ns]);
    }
  }

  async destroy(): Promise<void> {
    this.destroySync();
  }
}

/**
 * Bundles the bench file at `entry` (its `import.meta.url`) into `outfile`
 * as the agent's program is bundled (scripts/bundle.mjs: CommonJS), for
 * child processes that run it as the agent runs: tsx's loader alone holds
 * ~50 MB more than the agent's bundle, and the same code as an ES module ~3 MB more.
 */
export function bundleBench(entry: string, outfile: string): void {
  execFileSync(process.execPath, [fileURLToPath(new URL('../scripts/bundle.mjs', import.meta.url)), '--entry', fileURLToPath(entry), '--outfile', outfile], { stdio: 'ignore' });
}
