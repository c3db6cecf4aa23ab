/**
 * Kernel test lab: two network namespaces, `host` and `client`, joined by a
 * veth pair. The ruleset under test is applied in `host`; verdicts are
 * observed with real packets (see observe.ts) and real connections.
 *
 * Safety (test/../shared TESTING.md): nothing here touches the root network
 * namespace. Every `ip` command names a namespace (`ip -n <ns>` or
 * `ip netns exec <ns>`), both veth ends are created directly inside the lab
 * namespaces, sysctls are written only through `ip netns exec <lab ns>`, and
 * all addresses come from 198.18.0.0/15 and fd00:5ec::/48 with no default
 * route. Namespace names carry the per-run prefix `sgt-<pid>-<random>-` so
 * that leftovers of a crashed run can be found (`cleanupLeftovers`).
 *
 * Layout (host `eth0` <-> client `eth0`, fixed MACs, static neighbours, no
 * ARP/NDP traffic at all, IPv6 link-local addresses disabled):
 *
 *   host   198.18.0.10/32  fd00:5ec::10/128  02:5e:c0:00:00:10
 *          routes: 198.18.0.1/32 dev eth0, 198.18.0.0/15 via 198.18.0.1,
 *                  fd00:5ec::1/128 dev eth0, fd00:5ec::/48 via fd00:5ec::1
 *   client 198.18.0.1/32   fd00:5ec::1/128   02:5e:c0:00:00:01
 *          routes: a /32 or /128 to each host address
 *
 * So every test address except the host's own is reachable from the host via
 * the client (egress probes to any of them leave by eth0 and need no
 * neighbour resolution), and replies to ingress probes from any test source
 * address go back the same way.
 */
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, readFileSync, readdirSync, statSync } from 'node:fs';
import { isIP } from 'node:net';
import { fileURLToPath } from 'node:url';
import { execa } from 'execa';
import type { Packet } from '../../src/policy/packet.js';
import { JsonLineProcess } from './jsonl.js';
import {
  TagAllocator,
  assertTestAddress,
  assertSocketAddress,
  clientScript,
  interpret,
  observerScript,
  sameAddress,
  toProbe,
  unsupportedReason,
  type ObserverSets,
  type Observation,
  type Probe,
} from './observe.js';

export type { Observation } from './observe.js';
export { MARK_TTL, OBSERVE_PRIORITY, OBSERVE_TABLE } from './observe.js';

/** Prefix of every namespace the harness creates. */
export const HARNESS_PREFIX = 'sgt-';
const NETNS_DIR = '/run/netns';

export const LAYOUT = {
  host: { v4: '198.18.0.10', v6: 'fd00:5ec::10', mac: '02:5e:c0:00:00:10', iface: 'eth0' },
  client: { v4: '198.18.0.1', v6: 'fd00:5ec::1', mac: '02:5e:c0:00:00:01', iface: 'eth0' },
} as const;

const INJECT_PY = fileURLToPath(new URL('./inject.py', import.meta.url));
const NETAGENT_PY = fileURLToPath(new URL('./netagent.py', import.meta.url));

export type NsRole = 'host' | 'client';

export interface LabOptions {
  /** More addresses for the host's eth0 (ingress probes may target any host address). */
  extraHostAddrs?: string[];
  /** More addresses for the client's eth0 (e.g. to connect from a second source address). */
  extraClientAddrs?: string[];
  /** Remove namespaces of crashed earlier runs first (default true). */
  cleanupLeftovers?: boolean;
}

export interface ExecOptions {
  /** Written to the command's stdin. */
  input?: string;
  timeoutMs?: number;
  /** Throw on a non-zero exit (default true). */
  reject?: boolean;
}

export interface ExecResult {
  stdout: string;
  stderr: string;
  exitCode: number;
}

export type ConnectStatus = 'connected' | 'refused' | 'timeout' | 'unreachable' | 'blocked' | `error:${string}`;
export type SendStatus = 'echoed' | 'timeout' | 'reset' | 'closed' | 'blocked' | 'unreachable' | `error:${string}`;
export type UdpStatus = 'reply' | 'timeout' | 'refused' | 'unreachable' | 'blocked' | `error:${string}`;
export type PingStatus = 'reply' | 'timeout' | 'unreachable' | 'blocked' | `error:${string}`;

export interface ClientOptions {
  timeoutMs?: number;
  /** Source address to bind (must be an address of the sending namespace). */
  src?: string;
}

export interface Server {
  readonly ns: NsRole;
  readonly port: number;
  close(): Promise<void>;
}

/** A TCP connection kept open by the lab, to test what happens to it later. */
export interface OpenConnection {
  /** How opening it went; only `connected` connections can send. */
  readonly status: ConnectStatus;
  /** Sends one line; resolves `echoed` when the echo server's copy came back within the timeout. */
  sendLine(text: string, opts?: { timeoutMs?: number }): Promise<{ status: SendStatus; reply?: string }>;
  close(): Promise<void>;
}

export interface ObserveStats {
  packets: number;
  /** Wall time of the last observe() call. */
  ms: number;
  /** nft reads the injector needed before the sentinel showed up. */
  polls: number;
  /** Time the injector spent sending the probes and reading the observer sets (nft). */
  injector: { send: number; read: number };
}

/** A running lab. Create with {@link createLab} / {@link withLab} / `useLab()` (vitest-lab.ts). */
export interface Lab {
  /** Per-run prefix of the namespace names, e.g. `sgt-4242-a1b2c3`. */
  readonly prefix: string;
  /** Namespace names (`<prefix>-host`, `<prefix>-client`). */
  readonly ns: { readonly host: string; readonly client: string };
  /** Host side: primary addresses, MAC, interface and all its addresses (incl. extraHostAddrs). */
  readonly host: { readonly v4: string; readonly v6: string; readonly mac: string; readonly iface: string; readonly addrs: readonly string[] };
  readonly client: { readonly v4: string; readonly v6: string; readonly mac: string; readonly iface: string; readonly addrs: readonly string[] };
  readonly destroyed: boolean;
  /** Timing of the last observe() call. */
  readonly lastObserve: ObserveStats | undefined;

  /** Runs `cmd args` inside a lab namespace (`ip netns exec`); throws on non-zero exit unless `reject: false`. */
  exec(ns: NsRole, cmd: string, args?: string[], opts?: ExecOptions): Promise<ExecResult>;
  /** `nft -f -` in the host namespace; throws with nft's message and the numbered script on error. */
  applyScript(script: string): Promise<void>;
  /** Deletes `table inet <table>` (default `secgroup`) if it exists. */
  clearRuleset(table?: string): Promise<void>;
  /** `nft list ruleset` in the host namespace (includes the observer table). */
  listRuleset(): Promise<string>;

  /** For each packet: was it accepted by the host's ruleset? (real packets, fresh conntrack flows) */
  observe(packets: readonly Packet[]): Promise<boolean[]>;
  /** Same, with the conntrack state the kernel gave each probe and raw-socket errors. */
  observeDetailed(packets: readonly Packet[]): Promise<Observation[]>;

  /** TCP line-echo server; `family` 'dual' (default) listens on :: for both families. */
  tcpListen(ns: NsRole, port: number, family?: 4 | 6 | 'dual', addr?: string): Promise<Server>;
  /** UDP echo server. */
  udpEcho(ns: NsRole, port: number, family?: 4 | 6 | 'dual', addr?: string): Promise<Server>;
  /** Connects and closes again. Default timeout 1000 ms. */
  tcpConnect(from: NsRole, addr: string, port: number, opts?: ClientOptions): Promise<ConnectStatus>;
  /** Connects and keeps the connection (to an echo server from tcpListen) for later sendLine() calls. */
  tcpOpen(from: NsRole, addr: string, port: number, opts?: ClientOptions): Promise<OpenConnection>;
  /** Sends one datagram (connected UDP socket) and waits for one answer. */
  udpRequest(from: NsRole, addr: string, port: number, opts?: ClientOptions & { text?: string }): Promise<{ status: UdpStatus; reply?: string }>;
  /** ICMP / ICMPv6 echo request; the family follows from `addr`. */
  ping(from: NsRole, addr: string, opts?: ClientOptions): Promise<PingStatus>;

  /** Kills helper processes and deletes both namespaces. Idempotent. */
  destroy(): Promise<void>;
}

// ---------------------------------------------------------------------------
// process-wide bookkeeping: every live lab is destroyed at exit, whatever happens

const liveLabs = new Set<LabImpl>();
let exitHookInstalled = false;

function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.once('exit', () => {
    for (const lab of liveLabs) lab.destroySync();
  });
}

function assertLabNs(name: string): void {
  if (!name.startsWith(HARNESS_PREFIX) || !/^[A-Za-z0-9_.-]+$/.test(name)) {
    throw new Error(`refusing to operate on namespace ${JSON.stringify(name)}: not a harness namespace`);
  }
}

async function run(cmd: string, args: string[], opts: ExecOptions = {}): Promise<ExecResult> {
  const r = await execa(cmd, args, {
    input: opts.input,
    timeout: opts.timeoutMs ?? 30_000,
    reject: false,
    stripFinalNewline: false,
  });
  const result = { stdout: String(r.stdout ?? ''), stderr: String(r.stderr ?? ''), exitCode: r.exitCode ?? -1 };
  if ((opts.reject ?? true) && (result.exitCode !== 0 || r.failed)) {
    const why = r.timedOut ? 'timed out' : `exit ${result.exitCode}`;
    throw new Error(`${cmd} ${args.join(' ')}: ${why}\n${result.stderr}${result.stdout}`);
  }
  return result;
}

function numbered(script: string): string {
  return script
    .split('\n')
    .map((line, i) => `${String(i + 1).padStart(4)}  ${line}`)
    .join('\n');
}

/** Writes sysctls inside a lab namespace (never the root namespace). */
async function nsSysctl(ns: string, values: Record<string, string>): Promise<void> {
  assertLabNs(ns);
  const code = [
    'import sys, json, os',
    "if os.stat('/proc/self/ns/net').st_ino == os.stat('/proc/%d/ns/net' % os.getppid()).st_ino:",
    "    sys.exit('refusing to write sysctls in the network namespace of the test process')",
    'for k, v in json.loads(sys.argv[1]).items():',
    "    open('/proc/sys/' + k.replace('.', '/'), 'w').write(v)",
  ].join('\n');
  await run('ip', ['netns', 'exec', ns, 'python3', '-c', code, JSON.stringify(values)]);
}

class LabImpl implements Lab {
  readonly ns: { host: string; client: string };
  readonly host: { v4: string; v6: string; mac: string; iface: string; addrs: string[] };
  readonly client: { v4: string; v6: string; mac: string; iface: string; addrs: string[] };
  /** Timing of the last observe() call. */
  lastObserve: ObserveStats | undefined;

  private injector: JsonLineProcess | undefined;
  private readonly agents = new Map<NsRole, Promise<JsonLineProcess>>();
  private readonly tags = new TagAllocator();
  private destroyPromise: Promise<void> | undefined;
  private observeChain: Promise<unknown> = Promise.resolve();

  constructor(
    readonly prefix: string,
    opts: LabOptions,
  ) {
    this.ns = { host: `${prefix}-host`, client: `${prefix}-client` };
    this.host = { ...LAYOUT.host, addrs: [LAYOUT.host.v4, LAYOUT.host.v6, ...(opts.extraHostAddrs ?? [])] };
    this.client = { ...LAYOUT.client, addrs: [LAYOUT.client.v4, LAYOUT.client.v6, ...(opts.extraClientAddrs ?? [])] };
    const all = [...this.host.addrs, ...this.client.addrs];
    for (const a of all) assertTestAddress(a);
    all.forEach((a, i) => {
      if (all.findIndex((b) => sameAddress(a, b)) !== i) throw new Error(`address ${a} given twice`);
    });
  }

  get destroyed(): boolean {
    return this.destroyPromise !== undefined;
  }

  async setup(): Promise<void> {
    const { host, client } = this.ns;
    await run('ip', ['netns', 'add', host]);
    await run('ip', ['netns', 'add', client]);
    // both ends are born inside the lab namespaces: nothing appears in the root namespace
    await run('ip', ['-n', host, 'link', 'add', this.host.iface, 'type', 'veth', 'peer', 'name', this.client.iface, 'netns', client]);
    const common = (iface: string): Record<string, string> => ({
      'net.ipv4.conf.all.forwarding': '0',
      'net.ipv6.conf.all.forwarding': '0',
      'net.ipv4.conf.all.rp_filter': '0',
      'net.ipv4.conf.default.rp_filter': '0',
      [`net.ipv4.conf.${iface}.rp_filter`]: '0',
      'net.ipv4.conf.all.accept_redirects': '0',
      [`net.ipv4.conf.${iface}.accept_redirects`]: '0',
      'net.ipv6.conf.all.accept_redirects': '0',
      [`net.ipv6.conf.${iface}.accept_redirects`]: '0',
      [`net.ipv6.conf.${iface}.accept_ra`]: '0',
      [`net.ipv6.conf.${iface}.accept_dad`]: '0',
    });
    await nsSysctl(host, {
      ...common(this.host.iface),
      // ingress probes may carry the host's own address as source
      'net.ipv4.conf.all.accept_local': '1',
      [`net.ipv4.conf.${this.host.iface}.accept_local`]: '1',
    });
    await nsSysctl(client, common(this.client.iface));

    const addrCmd = (a: string, iface: string) =>
      isIP(a) === 4 ? `address add ${a}/32 dev ${iface}` : `address add ${a}/128 dev ${iface} nodad`;
    const h = this.host.iface;
    const c = this.client.iface;
    const hostBatch = [
      `link set dev ${h} address ${this.host.mac} addrgenmode none arp off`,
      'link set dev lo up',
      `link set dev ${h} up`,
      ...this.host.addrs.map((a) => addrCmd(a, h)),
      `route add ${this.client.v4}/32 dev ${h}`,
      `route add 198.18.0.0/15 via ${this.client.v4} dev ${h}`,
      `route add ${this.client.v6}/128 dev ${h}`,
      `route add fd00:5ec::/48 via ${this.client.v6} dev ${h}`,
      `neigh add ${this.client.v4} lladdr ${this.client.mac} dev ${h} nud permanent`,
      `neigh add ${this.client.v6} lladdr ${this.client.mac} dev ${h} nud permanent`,
    ];
    const clientBatch = [
      `link set dev ${c} address ${this.client.mac} addrgenmode none arp off`,
      'link set dev lo up',
      `link set dev ${c} up`,
      ...this.client.addrs.map((a) => addrCmd(a, c)),
      ...this.host.addrs.flatMap((a) => [
        `route add ${a}/${isIP(a) === 4 ? 32 : 128} dev ${c}`,
        `neigh add ${a} lladdr ${this.host.mac} dev ${c} nud permanent`,
      ]),
    ];
    await run('ip', ['-n', host, '-batch', '-'], { input: hostBatch.join('\n') + '\n' });
    await run('ip', ['-n', client, '-batch', '-'], { input: clientBatch.join('\n') + '\n' });
    await this.nft('host', observerScript());
    await this.nft('client', clientScript());
    this.injector = await JsonLineProcess.start(`inject.py [${host}]`, 'ip', [
      'netns',
      'exec',
      host,
      'python3',
      INJECT_PY,
      '--client-ns',
      client,
      '--client-iface',
      c,
      '--host-mac',
      this.host.mac,
      '--client-mac',
      this.client.mac,
    ]);
  }

  private nsName(role: NsRole): string {
    if (role !== 'host' && role !== 'client') throw new Error(`unknown namespace role ${JSON.stringify(role)}`);
    return this.ns[role];
  }

  private assertAlive(): void {
    if (this.destroyed) throw new Error(`lab ${this.prefix} is destroyed`);
  }

  async exec(role: NsRole, cmd: string, args: string[] = [], opts: ExecOptions = {}): Promise<ExecResult> {
    this.assertAlive();
    const ns = this.nsName(role);
    assertLabNs(ns);
    return run('ip', ['netns', 'exec', ns, cmd, ...args], opts);
  }

  private async nft(role: NsRole, script: string): Promise<void> {
    const r = await this.exec(role, 'nft', ['-f', '-'], { input: script, reject: false });
    if (r.exitCode !== 0) {
      throw new Error(`nft -f in ${this.nsName(role)} failed (exit ${r.exitCode}):\n${r.stderr}\n--- script ---\n${numbered(script)}`);
    }
  }

  async applyScript(script: string): Promise<void> {
    this.assertAlive();
    // `flush ruleset` would take the observer with it: re-create it in the same transaction
    const full = /\bflush\s+ruleset\b/.test(script) ? `${script}\n${observerScript()}` : script;
    await this.nft('host', full);
  }

  async clearRuleset(table = 'secgroup'): Promise<void> {
    await this.applyScript(`table inet ${table} {}\ndelete table inet ${table}\n`);
  }

  async listRuleset(): Promise<string> {
    return (await this.exec('host', 'nft', ['list', 'ruleset'])).stdout;
  }

  async observe(packets: readonly Packet[]): Promise<boolean[]> {
    return (await this.observeDetailed(packets)).map((o) => o.accepted);
  }

  observeDetailed(packets: readonly Packet[]): Promise<Observation[]> {
    // batches share the injector and the tag counter: one at a time
    const next = this.observeChain.then(() => this.observeNow(packets));
    this.observeChain = next.catch(() => undefined);
    return next;
  }

  private async observeNow(packets: readonly Packet[]): Promise<Observation[]> {
    this.assertAlive();
    const ctx = { hostAddrs: this.host.addrs, hostIface: this.host.iface };
    const problems = packets.flatMap((p, i) => {
      const why = unsupportedReason(p, ctx);
      return why === undefined ? [] : [`#${i} ${JSON.stringify(p)}: ${why}`];
    });
    if (problems.length > 0) throw new Error(`observe(): packets the harness cannot inject:\n${problems.join('\n')}`);
    if (packets.length === 0) return [];
    const started = performance.now();
    const hasIngress = packets.some((p) => p.direction === 'ingress');
    const { tags } = this.tags.take(packets.length + 1);
    const probes = packets.map((p, i) => toProbe(p, tags[i] as number));
    const sentinel: Probe | null = hasIngress
      ? {
          direction: 'ingress',
          family: 4,
          protocol: 253, // RFC 3692 experimentation
          src: this.client.v4,
          dst: this.host.v4,
          tag: tags[packets.length] as number,
        }
      : null;
    const injector = this.injector;
    if (!injector) throw new Error('lab not set up');
    const res = await injector.request<{
      errors: Record<string, string>;
      sets: Partial<ObserverSets>;
      polls: number;
      ms: { send: number; read: number };
    }>('batch', {
      probes,
      sentinel,
      timeoutMs: 5000,
    });
    const out = interpret(probes, res.sets, res.errors);
    this.lastObserve = { packets: packets.length, ms: performance.now() - started, polls: res.polls, injector: res.ms };
    return out;
  }

  // -------------------------------------------------------------------------
  // real connections

  private agent(role: NsRole): Promise<JsonLineProcess> {
    this.assertAlive();
    let a = this.agents.get(role);
    if (!a) {
      const ns = this.nsName(role);
      a = JsonLineProcess.start(`netagent.py [${ns}]`, 'ip', ['netns', 'exec', ns, 'python3', NETAGENT_PY]);
      this.agents.set(role, a);
      a.catch(() => this.agents.delete(role));
    }
    return a;
  }

  private async server(role: NsRole, op: string, port: number, family: 4 | 6 | 'dual', addr?: string): Promise<Server> {
    if (addr !== undefined) assertSocketAddress(addr);
    const agent = await this.agent(role);
    const { handle } = await agent.request<{ handle: number }>(op, { port, family, ...(addr ? { addr } : {}) });
    let closed = false;
    return {
      ns: role,
      port,
      close: async () => {
        if (closed || !agent.alive) return;
        closed = true;
        await agent.request('close', { handle });
      },
    };
  }

  /** TCP line-echo server on `port` in namespace `role`. */
  tcpListen(role: NsRole, port: number, family: 4 | 6 | 'dual' = 'dual', addr?: string): Promise<Server> {
    return this.server(role, 'tcp_listen', port, family, addr);
  }

  /** UDP echo server on `port` in namespace `role`. */
  udpEcho(role: NsRole, port: number, family: 4 | 6 | 'dual' = 'dual', addr?: string): Promise<Server> {
    return this.server(role, 'udp_echo', port, family, addr);
  }

  private clientParams(addr: string, port: number | undefined, opts: ClientOptions): Record<string, unknown> {
    assertSocketAddress(addr);
    if (opts.src !== undefined) assertSocketAddress(opts.src, isIP(addr) as 4 | 6);
    return { addr, ...(port === undefined ? {} : { port }), timeoutMs: opts.timeoutMs ?? 1000, ...(opts.src ? { src: opts.src } : {}) };
  }

  async tcpConnect(from: NsRole, addr: string, port: number, opts: ClientOptions = {}): Promise<ConnectStatus> {
    const agent = await this.agent(from);
    return (await agent.request<{ status: ConnectStatus }>('tcp_connect', this.clientParams(addr, port, opts))).status;
  }

  /** Opens a TCP connection and keeps it, to send lines over it later (see {@link OpenConnection}). */
  async tcpOpen(from: NsRole, addr: string, port: number, opts: ClientOptions = {}): Promise<OpenConnection> {
    const agent = await this.agent(from);
    const r = await agent.request<{ status: ConnectStatus; handle?: number }>('tcp_open', this.clientParams(addr, port, opts));
    const handle = r.handle;
    let closed = handle === undefined;
    return {
      status: r.status,
      sendLine: async (text, o = {}) => {
        if (handle === undefined) throw new Error(`connection was never established (${r.status})`);
        return agent.request<{ status: SendStatus; reply?: string }>('tcp_send', { handle, text, timeoutMs: o.timeoutMs ?? 1000 });
      },
      close: async () => {
        if (closed || !agent.alive) return;
        closed = true;
        await agent.request('close', { handle });
      },
    };
  }

  async udpRequest(
    from: NsRole,
    addr: string,
    port: number,
    opts: ClientOptions & { text?: string } = {},
  ): Promise<{ status: UdpStatus; reply?: string }> {
    const agent = await this.agent(from);
    return agent.request('udp_request', { ...this.clientParams(addr, port, opts), text: opts.text ?? 'sgt' });
  }

  /** ICMP / ICMPv6 echo request (family from the address); resolves `reply` when answered. */
  async ping(from: NsRole, addr: string, opts: ClientOptions = {}): Promise<PingStatus> {
    const agent = await this.agent(from);
    return (await agent.request<{ status: PingStatus }>('ping', this.clientParams(addr, undefined, opts))).status;
  }

  // -------------------------------------------------------------------------
  // teardown

  destroy(): Promise<void> {
    this.destroyPromise ??= this.teardown();
    return this.destroyPromise;
  }

  private async teardown(): Promise<void> {
    const procs: JsonLineProcess[] = [];
    if (this.injector) procs.push(this.injector);
    for (const a of this.agents.values()) {
      try {
        procs.push(await a);
      } catch {
        // never started
      }
    }
    await Promise.all(procs.map((p) => p.kill()));
    const errors: string[] = [];
    for (const ns of [this.ns.client, this.ns.host]) {
      try {
        await removeNamespace(ns);
      } catch (e) {
        errors.push((e as Error).message);
      }
    }
    liveLabs.delete(this);
    if (errors.length > 0) throw new Error(`lab ${this.prefix}: teardown incomplete:\n${errors.join('\n')}`);
  }

  /** Synchronous variant for the process 'exit' hook. */
  destroySync(): void {
    this.injector?.killNow();
    for (const ns of [this.ns.client, this.ns.host]) {
      if (!existsSync(`${NETNS_DIR}/${ns}`)) continue;
      const pids = spawnSync('ip', ['netns', 'pids', ns], { encoding: 'utf8' }).stdout ?? '';
      for (const pid of pids.split(/\s+/).filter(Boolean)) {
        try {
          process.kill(Number(pid), 'SIGKILL');
        } catch {
          // gone
        }
      }
      spawnSync('ip', ['netns', 'del', ns]);
    }
    liveLabs.delete(this);
  }
}

/** Kills whatever still runs in the namespace, then deletes it. No-op if it does not exist. */
async function removeNamespace(ns: string): Promise<void> {
  assertLabNs(ns);
  if (!existsSync(`${NETNS_DIR}/${ns}`)) return;
  const pids = (await run('ip', ['netns', 'pids', ns], { reject: false })).stdout.split(/\s+/).filter(Boolean);
  for (const pid of pids) {
    try {
      process.kill(Number(pid), 'SIGKILL');
    } catch {
      // gone already
    }
  }
  await run('ip', ['netns', 'del', ns]);
  if (existsSync(`${NETNS_DIR}/${ns}`)) throw new Error(`namespace ${ns} still exists after ip netns del`);
}


/** Creates a lab (two namespaces + veth + observer). Call `destroy()` when done, or use {@link withLab}. */
export async function createLab(opts: LabOptions = {}): Promise<Lab> {
  if (opts.cleanupLeftovers ?? true) await cleanupLeftovers();
  installExitHook();
  const prefix = `${HARNESS_PREFIX}${process.pid}-${randomBytes(3).toString('hex')}`;
  const lab = new LabImpl(prefix, opts);
  liveLabs.add(lab);
  try {
    await lab.setup();
  } catch (err) {
    await lab.destroy().catch(() => undefined);
    throw err;
  }
  return lab;
}

/** Runs `fn` with a fresh lab and destroys the lab afterwards, also when `fn` throws. */
export async function withLab<T>(fn: (lab: Lab) => Promise<T>, opts: LabOptions = {}): Promise<T> {
  const lab = await createLab(opts);
  try {
    return await fn(lab);
  } finally {
    await lab.destroy();
  }
}

/** Names of existing namespaces that start with `prefix`. */
export function listNamespaces(prefix = HARNESS_PREFIX): string[] {
  if (!existsSync(NETNS_DIR)) return [];
  return readdirSync(NETNS_DIR)
    .filter((n) => n.startsWith(prefix))
    .sort();
}

/** Start time of a process in ms since the epoch, or undefined if there is no such process. */
function processStartMs(pid: number): number | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // the command name may contain spaces and parentheses: count from the last ')'
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    const startTicks = Number(fields[19]);
    const uptimeS = Number(readFileSync('/proc/uptime', 'utf8').split(' ')[0]);
    return Date.now() - uptimeS * 1000 + (startTicks / 100) * 1000;
  } catch {
    return undefined;
  }
}

/** Whether the process that created namespace `name` (`sgt-<pid>-...`) is still running. */
function ownerAlive(name: string): boolean {
  const m = /^sgt-(\d+)-/.exec(name);
  if (!m) return true; // not ours to judge
  const pid = Number(m[1]);
  // Our own pid: never judge. Other vitest workers may be threads of this very
  // process, with labs this module instance does not know about.
  if (pid === process.pid) return true;
  const started = processStartMs(pid);
  if (started === undefined) return false;
  let created: number;
  try {
    created = statSync(`${NETNS_DIR}/${name}`).mtimeMs;
  } catch {
    return true;
  }
  // a process with that pid that started after the namespace was made is a reused pid
  return started <= created + 2000;
}

/**
 * Removes namespaces left behind by crashed runs: names starting with
 * `prefix` (default `sgt-`) of the form `sgt-<pid>-...` whose creating
 * process is gone (or whose pid now belongs to a younger process). Namespaces
 * of live runs, of this process, and names without a pid are left alone
 * (runs are assumed to share one PID namespace, as they do on CI).
 * Returns the names removed.
 */
export async function cleanupLeftovers(prefix = HARNESS_PREFIX): Promise<string[]> {
  if (!prefix.startsWith(HARNESS_PREFIX)) throw new Error(`prefix must start with ${HARNESS_PREFIX}`);
  const removed: string[] = [];
  for (const name of listNamespaces(prefix)) {
    if (ownerAlive(name)) continue;
    await removeNamespace(name);
    removed.push(name);
  }
  return removed;
}

let canRunCache: { ok: boolean; reason: string } | undefined;

/**
 * Whether kernel tests can run here (root, nft, ip, python3, and `ip netns add`
 * plus a veth and an nft table inside a scratch namespace all work).
 * Synchronous so it can feed `describe.skipIf`. Cached.
 */
export function canRunKernelTests(): { ok: boolean; reason: string } {
  canRunCache ??= probeKernel();
  return canRunCache;
}

function probeKernel(): { ok: boolean; reason: string } {
  if (process.platform !== 'linux') return { ok: false, reason: `needs Linux (this is ${process.platform})` };
  if (process.getuid?.() !== 0) return { ok: false, reason: 'needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN for ip netns)' };
  for (const [cmd, args] of [
    ['ip', ['-V']],
    ['nft', ['--version']],
    ['python3', ['--version']],
  ] as const) {
    const r = spawnSync(cmd, args, { encoding: 'utf8' });
    if (r.error || r.status !== 0) return { ok: false, reason: `\`${cmd}\` is not usable: ${r.error?.message ?? r.stderr}` };
  }
  const ns = `${HARNESS_PREFIX}${process.pid}-${randomBytes(3).toString('hex')}-probe`;
  const step = (args: string[]): string | undefined => {
    const r = spawnSync('ip', args, { encoding: 'utf8', input: 'table inet sgt_probe {\n  chain c {\n    type filter hook input priority 0; policy accept;\n  }\n}\n' });
    return r.status === 0 ? undefined : `\`ip ${args.join(' ')}\` failed: ${(r.stderr || r.error?.message || '').trim()}`;
  };
  const add = step(['netns', 'add', ns]);
  if (add) return { ok: false, reason: add };
  try {
    const failure =
      step(['-n', ns, 'link', 'add', 'p0', 'type', 'veth', 'peer', 'name', 'p1']) ??
      step(['netns', 'exec', ns, 'nft', '-f', '-']) ??
      step(['netns', 'exec', ns, 'python3', '-c', 'import socket; socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)']);
    return failure ? { ok: false, reason: failure } : { ok: true, reason: 'root, ip netns, veth, nft and python3 raw sockets work' };
  } finally {
    spawnSync('ip', ['netns', 'del', ns]);
  }
}
