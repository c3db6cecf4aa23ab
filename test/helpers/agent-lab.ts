/**
 * A small lab for kernel tests of the real agent process: two network
 * namespaces (`host` runs the agent, `client` runs the lab peer: a WebSocket
 * controller and a TCP prober) joined by a veth pair, addresses from
 * 198.18.0.0/15 only, nothing in the root namespace. `destroy()` removes
 * everything, also after a failure.
 */
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readFileSync, readdirSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { execa, type ResultPromise } from 'execa';

export const REPO = resolve(import.meta.dirname, '../..');
const TSX = join(REPO, 'node_modules/.bin/tsx');

/** Why kernel tests cannot run here, or null when they can. */
export function kernelSkipReason(): string | null {
  if (process.getuid?.() !== 0) return 'needs root (network namespaces and nft)';
  if (spawnSync('nft', ['--version']).status !== 0) return 'nft not installed';
  if (spawnSync('ip', ['-V']).status !== 0) return 'iproute2 (ip) not installed';
  return null;
}

export const CLIENT_ADDR = '198.18.7.1';
export const HOST_ADDR = '198.18.7.2';
export const CONTROLLER_PORT = 8080;

type Json = Record<string, unknown>;

/** A process whose output is JSON lines, kept for `waitFor`. */
class LineProcess {
  readonly lines: Json[] = [];
  readonly raw: string[] = [];
  private waiters: { pred: (l: Json) => boolean; resolve: (l: Json) => void }[] = [];

  constructor(
    readonly proc: ResultPromise,
    stream: NodeJS.ReadableStream,
  ) {
    createInterface({ input: stream }).on('line', (text) => {
      this.raw.push(text);
      let l: Json;
      try {
        l = JSON.parse(text) as Json;
      } catch {
        return;
      }
      this.lines.push(l);
      this.waiters = this.waiters.filter((w) => {
        if (!w.pred(l)) return true;
        w.resolve(l);
        return false;
      });
    });
    proc.catch(() => undefined);
  }

  /** Resolves with the first line (already seen from `from` on, or future) matching `pred`. */
  waitFor(pred: (l: Json) => boolean, timeoutMs = 15_000, from = 0, what = 'line'): Promise<Json> {
    const seen = this.lines.slice(from).find(pred);
    if (seen) return Promise.resolve(seen);
    return new Promise((resolvePromise, reject) => {
      const timer = setTimeout(() => {
        this.waiters = this.waiters.filter((w) => w.resolve !== done);
        reject(new Error(`timed out after ${timeoutMs} ms waiting for ${what}; last output:\n${this.raw.slice(-15).join('\n')}`));
      }, timeoutMs);
      const done = (l: Json) => {
        clearTimeout(timer);
        resolvePromise(l);
      };
      this.waiters.push({ pred, resolve: done });
    });
  }

  async stop(signal: NodeJS.Signals = 'SIGTERM', timeoutMs = 10_000): Promise<number | undefined> {
    if (this.proc.nodeChildProcess.exitCode !== null && this.proc.nodeChildProcess.exitCode !== undefined) return this.proc.nodeChildProcess.exitCode;
    // tsx runs the script in a child node: a SIGKILL of the launcher alone would leave that child running
    const killTree = () => {
      for (const p of this.proc.pid ? processTree(this.proc.pid).reverse() : []) {
        try {
          process.kill(p, 'SIGKILL');
        } catch {
          // gone meanwhile
        }
      }
    };
    if (signal === 'SIGKILL') killTree();
    else {
      // tsx passes a signal on to the program it runs only if that program confirms it within 30 ms; otherwise it
      // SIGKILLs it and exits 143. A busy agent (compiling or applying, on a loaded 2-core machine) misses that
      // window, so the signal goes to the program itself once a log line has named its pid.
      const own = this.lines.find((l) => typeof l.pid === 'number')?.pid as number | undefined;
      if (own !== undefined && this.proc.pid && processTree(this.proc.pid).includes(own)) process.kill(own, signal);
      else this.proc.kill(signal);
    }
    const timer = setTimeout(killTree, timeoutMs);
    try {
      const r = await this.proc;
      return r.exitCode;
    } catch (e) {
      return (e as { exitCode?: number }).exitCode;
    } finally {
      clearTimeout(timer);
    }
  }
}

export class Peer extends LineProcess {
  private nextId = 1;
  async request(cmd: Json, timeoutMs = 30_000): Promise<Json> {
    const id = this.nextId++;
    const from = this.lines.length;
    this.proc.stdin!.write(JSON.stringify({ id, ...cmd }) + '\n');
    return this.waitFor((l) => l.event === 'reply' && l.id === id, timeoutMs, from, `reply to ${String(cmd.cmd)}`);
  }
  /** Real TCP connect from the client namespace to the agent's host. */
  async canConnect(port: number, timeoutMs = 700): Promise<boolean> {
    return (await this.request({ cmd: 'connect', host: HOST_ADDR, port, timeoutMs })).ok === true;
  }
  /** Acks the agent sent, in order. */
  acks(): Json[] {
    return this.lines.filter((l) => l.event === 'message' && (l.message as Json).type === 'ack').map((l) => l.message as Json);
  }
  waitForAck(revision: number, status?: string, timeoutMs = 20_000): Promise<Json> {
    return this.waitFor(
      (l) => l.event === 'message' && (l.message as Json).type === 'ack' && (l.message as Json).revision === revision && (!status || (l.message as Json).status === status),
      timeoutMs,
      0,
      `ack of revision ${revision}${status ? ` (${status})` : ''}`,
    ).then((l) => l.message as Json);
  }
}

export class AgentProcess extends LineProcess {
  /** Log lines with this `event` field. */
  events(event: string): Json[] {
    return this.lines.filter((l) => l.event === event);
  }
  /** The agent's own (node) process id, from its first log line (pino logs `pid`); the launcher's pid is `proc.pid`. */
  async agentPid(): Promise<number> {
    const l = await this.waitFor((x) => typeof x.pid === 'number', 30_000, 0, 'a log line with pid');
    return l.pid as number;
  }
}

/** `pid` and all its descendants (children first listed last), from /proc. */
export function processTree(pid: number): number[] {
  const children = new Map<number, number[]>();
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const stat = readFileSync(`/proc/${name}/stat`, 'utf8');
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      children.set(ppid, [...(children.get(ppid) ?? []), Number(name)]);
    } catch {
      // gone meanwhile
    }
  }
  const out: number[] = [];
  const walk = (p: number) => {
    out.push(p);
    for (const c of children.get(p) ?? []) walk(c);
  };
  walk(pid);
  return out;
}

export class AgentLab {
  readonly host: string;
  readonly client: string;
  readonly dir: string;
  private readonly procs: LineProcess[] = [];

  private constructor(tag: string, dir: string) {
    this.host = `sgt-${tag}-host`;
    this.client = `sgt-${tag}-client`;
    this.dir = dir;
  }

  static async create(name = 'agent'): Promise<AgentLab> {
    const tag = `${name}${randomBytes(3).toString('hex')}`;
    const lab = new AgentLab(tag, await mkdtemp(join(tmpdir(), `sgt-${tag}-`)));
    const vh = `sg${tag.slice(-6)}h`;
    const vc = `sg${tag.slice(-6)}c`;
    try {
      await execa('ip', ['netns', 'add', lab.host]);
      await execa('ip', ['netns', 'add', lab.client]);
      await execa('ip', ['-n', lab.host, 'link', 'add', vh, 'type', 'veth', 'peer', 'name', vc, 'netns', lab.client]);
      for (const [ns, dev, addr] of [
        [lab.host, vh, HOST_ADDR],
        [lab.client, vc, CLIENT_ADDR],
      ] as const) {
        await execa('ip', ['-n', ns, 'addr', 'add', `${addr}/24`, 'dev', dev]);
        await execa('ip', ['-n', ns, 'link', 'set', dev, 'up']);
        await execa('ip', ['-n', ns, 'link', 'set', 'lo', 'up']);
      }
    } catch (e) {
      await lab.destroy();
      throw e;
    }
    return lab;
  }

  /** Runs a command inside a namespace. */
  exec(ns: string, cmd: string[], opts: { reject?: boolean; input?: string } = {}) {
    return execa('ip', ['netns', 'exec', ns, ...cmd], { reject: opts.reject ?? true, ...(opts.input !== undefined ? { input: opts.input } : {}) });
  }

  /** nft inside the host namespace. */
  nft(args: string[], opts: { reject?: boolean; input?: string } = {}) {
    return this.exec(this.host, ['nft', ...args], opts);
  }

  async startPeer(): Promise<Peer> {
    const proc = execa('ip', ['netns', 'exec', this.client, TSX, join(REPO, 'test/helpers/lab-peer.ts'), '--listen', `${CLIENT_ADDR}:${CONTROLLER_PORT}`], {
      cwd: REPO,
      stdin: 'pipe',
      buffer: false,
    });
    const peer = new Peer(proc, proc.stdout!);
    this.procs.push(peer);
    await peer.waitFor((l) => l.event === 'listening', 20_000, 0, 'peer listening');
    return peer;
  }

  /** TCP listeners in the host namespace on `ports`. */
  async startListeners(ports: number[]): Promise<void> {
    const proc = execa('ip', ['netns', 'exec', this.host, TSX, join(REPO, 'test/helpers/lab-listener.ts'), ...ports.map(String)], { cwd: REPO, stdin: 'pipe', buffer: false });
    const lp = new LineProcess(proc, proc.stdout!);
    this.procs.push(lp);
    await new Promise<void>((resolvePromise, reject) => {
      const t = setTimeout(() => reject(new Error('listeners did not start')), 20_000);
      proc.stdout!.once('data', () => {
        clearTimeout(t);
        resolvePromise();
      });
    });
  }

  async writeConfig(doc: Json): Promise<string> {
    const path = join(this.dir, 'agent.json');
    await writeFile(path, JSON.stringify(doc, null, 2));
    return path;
  }

  /** The real agent (`secgroup agent --config FILE`) inside the host namespace; its JSON logs are parsed. */
  startAgent(configPath: string, extra: string[] = [], env: Record<string, string> = {}): AgentProcess {
    const proc = execa('ip', ['netns', 'exec', this.host, TSX, join(REPO, 'src/cli/main.ts'), 'agent', '--config', configPath, ...extra], {
      cwd: REPO,
      buffer: false,
      stdin: 'ignore',
      // the agent's nft helper directory goes with the lab's directory, also when the agent is killed
      env: { TMPDIR: this.dir, ...env },
    });
    const agent = new AgentProcess(proc, proc.stderr!);
    this.procs.push(agent);
    return agent;
  }

  /** Builds native/secgroup-nftwatch.c (scripts/build-native.sh) into the lab's directory; its path. */
  async buildListener(): Promise<string> {
    await execa('bash', [join(REPO, 'scripts/build-native.sh'), this.dir]);
    return join(this.dir, 'secgroup-nftwatch');
  }

  /** GET http://127.0.0.1:PORT/PATH from inside the host namespace (the agent's localhost endpoint). */
  async httpGet(port: number, path: string): Promise<{ status: number; body: string }> {
    const script = `fetch('http://127.0.0.1:${port}${path}').then(async (r) => process.stdout.write(JSON.stringify({ status: r.status, body: await r.text() })), () => process.stdout.write(JSON.stringify({ status: 0, body: '' })))`;
    const r = await this.exec(this.host, [process.execPath, '-e', script]);
    return JSON.parse(String(r.stdout)) as { status: number; body: string };
  }

  /** Runs a `secgroup` CLI command inside the host namespace. */
  cli(args: string[]) {
    return execa('ip', ['netns', 'exec', this.host, TSX, join(REPO, 'src/cli/main.ts'), ...args], { cwd: REPO, reject: false });
  }

  async destroy(): Promise<void> {
    for (const p of this.procs) await p.stop('SIGKILL', 2000).catch(() => undefined);
    for (const ns of [this.host, this.client]) spawnSync('ip', ['netns', 'del', ns]);
    await rm(this.dir, { recursive: true, force: true });
  }
}
