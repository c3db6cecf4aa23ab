/**
 * A lab for kernel tests of the real controller with real agents: a
 * namespace `<prefix>-ctl` holding a bridge (the controller's address) and
 * one namespace per node joined to it by a veth pair, addresses from
 * 198.18.0.0/15 only, nothing in the root namespace. Processes run in the
 * namespaces under tsx (`secgroup`, the RPC helper, TCP listeners);
 * `destroy()` kills them and removes the namespaces and the directory, also
 * after a failure. Used by test/kernel/integration.test.ts and
 * test/kernel/console-browser.test.ts.
 */
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa, type ResultPromise } from 'execa';
import { AgentProcess, Peer, REPO } from './agent-lab.js';

const TSX = join(REPO, 'node_modules/.bin/tsx');
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export class ControllerLab<N extends string> {
  readonly prefix = `sgt-${process.pid}-${randomBytes(3).toString('hex')}`;
  readonly ns: Record<'ctl' | N, string>;
  dir = '';
  private readonly procs: { proc: ResultPromise }[] = [];

  /** `ctl`: the bridge's (controller's) address; `nodes`: one namespace per name, with its address (all /24 of one net) */
  constructor(
    readonly ctl: string,
    readonly nodes: Record<N, string>,
  ) {
    const ns: Record<string, string> = { ctl: `${this.prefix}-ctl` };
    for (const n of Object.keys(nodes)) ns[n] = `${this.prefix}-${n}`;
    this.ns = ns as Record<'ctl' | N, string>;
  }

  async setup(): Promise<void> {
    this.dir = await mkdtemp(join(tmpdir(), `${this.prefix}-`));
    const ip = (...args: string[]) => execa('ip', args);
    for (const ns of Object.values<string>(this.ns)) {
      await ip('netns', 'add', ns);
      await ip('-n', ns, 'link', 'set', 'lo', 'up');
    }
    await ip('-n', this.ns.ctl, 'link', 'add', 'br0', 'type', 'bridge');
    await ip('-n', this.ns.ctl, 'addr', 'add', `${this.ctl}/24`, 'dev', 'br0');
    await ip('-n', this.ns.ctl, 'link', 'set', 'br0', 'up');
    for (const [node, addr] of Object.entries<string>(this.nodes)) {
      const ns = this.ns[node as N];
      const port = `v${node}`;
      await ip('-n', ns, 'link', 'add', 'eth0', 'type', 'veth', 'peer', 'name', port, 'netns', this.ns.ctl);
      await ip('-n', this.ns.ctl, 'link', 'set', port, 'master', 'br0');
      await ip('-n', this.ns.ctl, 'link', 'set', port, 'up');
      await ip('-n', ns, 'addr', 'add', `${addr}/24`, 'dev', 'eth0');
      await ip('-n', ns, 'link', 'set', 'eth0', 'up');
    }
  }

  /** A TypeScript program of the repo under tsx in `ns`. */
  spawn(ns: string, args: string[], stdin: 'pipe' | 'ignore', env: Record<string, string> = {}): ResultPromise {
    // TMPDIR: the agents' nft helper directories go with the lab's directory
    const proc = execa('ip', ['netns', 'exec', ns, TSX, ...args], { cwd: REPO, buffer: false, stdin, reject: false, env: { TMPDIR: this.dir, ...env } });
    this.procs.push({ proc });
    return proc;
  }

  async rpc(ns: string): Promise<Peer> {
    const proc = this.spawn(ns, [join(REPO, 'test/helpers/ns-rpc.ts')], 'pipe');
    const p = new Peer(proc, proc.stdout!);
    await p.waitFor((l) => l.event === 'ready', 20_000, 0, 'rpc helper ready');
    return p;
  }

  async listeners(ns: string, ports: number[]): Promise<AgentProcess> {
    const proc = this.spawn(ns, [join(REPO, 'test/helpers/lab-listener.ts'), ...ports.map(String)], 'pipe');
    const p = new AgentProcess(proc, proc.stdout!);
    // lab-listener prints a plain "ready" line, not JSON
    const end = Date.now() + 20_000;
    while (!p.raw.includes('ready')) {
      if (Date.now() > end) throw new Error(`listeners did not start: ${p.raw.join('\n')}`);
      await sleep(50);
    }
    return p;
  }

  /** `secgroup <args>` in `ns`; its JSON logs (stderr) are parsed. */
  secgroup(ns: string, args: string[], env: Record<string, string> = {}): AgentProcess {
    const proc = this.spawn(ns, [join(REPO, 'src/cli/main.ts'), ...args], 'ignore', env);
    return new AgentProcess(proc, proc.stderr!);
  }

  nftTable(ns: string) {
    return execa('ip', ['netns', 'exec', ns, 'nft', 'list', 'table', 'inet', 'secgroup'], { reject: false });
  }

  async destroy(): Promise<void> {
    // Every process in our namespaces was started by this test. Kill them
    // by pid first: `ip netns exec tsx` leaves a node grandchild that keeps
    // the pipes open, so waiting on the direct child alone could hang.
    for (const ns of Object.values<string>(this.ns)) {
      const pids = spawnSync('ip', ['netns', 'pids', ns], { encoding: 'utf8' }).stdout?.split(/\s+/).filter(Boolean) ?? [];
      for (const pid of pids) spawnSync('kill', ['-9', pid]);
    }
    for (const p of this.procs) {
      p.proc.kill('SIGKILL');
      await Promise.race([p.proc.catch(() => undefined), sleep(3000)]);
    }
    for (const ns of Object.values<string>(this.ns)) spawnSync('ip', ['netns', 'del', ns]);
    if (this.dir) await rm(this.dir, { recursive: true, force: true });
  }
}
