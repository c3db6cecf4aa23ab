/**
 * `secgroup agent`, `secgroup status`, `secgroup uninstall-rules`: the
 * commands that touch nftables (root / CAP_NET_ADMIN), and only our table.
 */
import { ConntrackClearer, CTMARK_FILE, flowMarkClearer } from '../nft/conntrack.js';
import { agentPartCandidates } from '../agent/native-parts.js';
import { FLOW_KNOWN } from '../nft/flow-mark.js';
import { HostPortProbe } from '../probe/port-probe.js';
import { HostSocketSource } from '../probe/source.js';
import { existsSync, readFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { lookup } from 'node:dns/promises';
import { hostname } from 'node:os';
import { Command } from 'commander';
import { createAgent, type Resolver } from '../agent/agent.js';
import { ControllerDirectory } from '../agent/controllers.js';
import { DEFAULT_CONFIG_PATH, controllerUrls, driftListenerPath, platformOptions, resolveConfig, type AgentConfig, type ConfigFlags } from '../agent/config.js';
import { FileStateStore } from '../agent/state-store.js';
import { wsDialer } from '../agent/ws-dialer.js';
import { compileBurst, tuneForFootprint } from '../agent/footprint.js';
import { loadMemTrim, MemoryTrimmer } from '../agent/memtrim.js';
import { systemdServiceManager } from '../agent/systemd.js';
import { holdProcess, systemClock } from '../lib/clock.js';
import { SecgroupError, errorMessage } from '../lib/errors.js';
import { createLogger, type Logger } from '../lib/logger.js';
import { cronScheduler } from '../lib/scheduler.js';
import { compilePolicy, ruleChainName } from '../nft/compile.js';
import { ExecaNftRunner, LOADER_NFT_VERSIONS } from '../nft/exec.js';
import { ProcessNftMonitor, type NftMonitor } from '../nft/monitor.js';
import { FallbackMonitor, ProcessNftWatch } from '../nft/nftwatch.js';
import { renderScript } from '../nft/render.js';
import { deleteTableTx } from '../nft/transaction.js';
import { isYamlPath, loadPolicyFile, parseDocumentText } from '../policy/load.js';
import type { Policy } from '../policy/schema.js';
import { fail } from './common.js';
import { CliExit, EXIT, type CliIo } from './io.js';
import { MAX_MESSAGE_BYTES } from '../protocol/messages.js';

const dnsResolver: Resolver = {
  async resolve(host) {
    const r = await lookup(host, { all: true });
    return r.map((a) => a.address);
  },
};

interface CommonFlags extends ConfigFlags {
  config?: string;
}

/** The config file document: --config, else $SECGROUP_CONFIG, else the default path if it exists. */
async function readConfigFile(io: CliIo, path: string | undefined): Promise<unknown> {
  const explicit = path ?? io.env.SECGROUP_CONFIG;
  const file = explicit ?? DEFAULT_CONFIG_PATH;
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (e) {
    if (!explicit && (e as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw new SecgroupError('CONFIG_INVALID', `cannot read configuration file ${file}: ${errorMessage(e)}`, { cause: e });
  }
  try {
    return parseDocumentText(text, isYamlPath(file) || !file.endsWith('.json'), file) ?? null;
  } catch (e) {
    throw new SecgroupError('CONFIG_INVALID', errorMessage(e), { cause: e });
  }
}

async function loadConfig(io: CliIo, flags: CommonFlags, lenient = false): Promise<AgentConfig> {
  const file = await readConfigFile(io, flags.config);
  if (lenient) {
    // status / uninstall-rules need only the table and the state directory
    const doc = (file ?? {}) as Record<string, unknown>;
    return resolveConfig({ ...doc, instance_id: doc.instance_id ?? io.env.SECGROUP_INSTANCE_ID ?? 'unknown' }, io.env, flags);
  }
  return resolveConfig(file, io.env, flags);
}

function addConfigOptions(cmd: Command): Command {
  return cmd
    .option('--config <file>', `agent configuration, YAML or JSON (default $SECGROUP_CONFIG or ${DEFAULT_CONFIG_PATH})`)
    .option('--state-dir <dir>', 'state directory holding the last known good policy (default /var/lib/secgroup)')
    .option('--table <name>', 'our nft table, family inet (default secgroup)');
}

function readToken(config: AgentConfig): () => string | null {
  const c = config.controller;
  if (!c) return () => null;
  if (c.token !== undefined) {
    const t = c.token;
    return () => t;
  }
  if (c.token_file !== undefined) {
    const f = c.token_file;
    return () => {
      const t = readFileSync(f, 'utf8').trim();
      // the packages install the file empty: the agent waits (and retries) until the operator fills it in
      if (!t) throw new SecgroupError('CONFIG_INVALID', `no controller token yet: ${f} is empty (put this instance's token into /etc/secgroup/agent.token, then restart the agent: systemd hands it over at start)`);
      return t;
    };
  }
  return () => null;
}

/** The drift monitor's source: our listener (config drift_listener), falling back to `nft monitor` with one warning line. */
function driftSource(config: AgentConfig, logger: Logger): NftMonitor {
  const nftMonitor = new ProcessNftMonitor({ table: config.table });
  const path = driftListenerPath(config.drift_listener, existsSync);
  if (path === null) return nftMonitor;
  return new FallbackMonitor(new ProcessNftWatch({ table: config.table, path }), nftMonitor, (reason) =>
    logger.warn({ event: 'drift_listener_unavailable', path, reason }, `cannot follow changes with ${path} (${reason}): using nft monitor instead`),
  );
}

const NFTLOAD_FILE = 'secgroup-nftload';

/** The loader `nft_loader` names: the path, `auto`'s first existing candidate, or null (nft -f only). */
function nftLoaderPath(setting: string, exists: (path: string) => boolean): string | null {
  if (setting === '') return null;
  if (setting !== 'auto') return setting;
  return agentPartCandidates(NFTLOAD_FILE).find(exists) ?? null;
}

/** The flow mark's conntrack sweep: secgroup-ctmark where the packages put it (or dist/ of a checkout), else conntrack(8); says at start which. */
function flowMarks(config: AgentConfig, logger: Logger): ReturnType<typeof flowMarkClearer> {
  const c = flowMarkClearer(agentPartCandidates(CTMARK_FILE), existsSync, config.nft_timeout_ms);
  if (c instanceof ConntrackClearer) logger.info({ event: 'flow_mark_sweeper', path: null }, `${CTMARK_FILE} not found: the flow mark's bits are cleared with conntrack(8), which stops after ~256 updates (No buffer space available): with more marked connections than that the flow mark stays unarmed for several sweeps, a backoff apart`);
  else logger.debug({ event: 'flow_mark_sweeper', path: c.path }, `clearing the flow mark's bits with ${c.path}`);
  return c;
}

/** Gives the free C heap back after bursts (src/agent/memtrim.ts), when the addon is there; says at start which way it runs. */
function memoryTrimmer(logger: Logger): MemoryTrimmer | null {
  try {
    const m = loadMemTrim();
    if (m === null) {
      logger.info({ event: 'memory_trim', addon: null }, 'secgroup-memtrim.node not found: the free C heap is not given back after bursts (idle RSS a few MB higher)');
      return null;
    }
    logger.debug({ event: 'memory_trim', addon: m.path }, `giving the free C heap back after bursts with ${m.path}`);
    return new MemoryTrimmer({ trim: m.trim, clock: systemClock, logger });
  } catch (e) {
    logger.warn({ event: 'memory_trim_failed', err: e }, `cannot load secgroup-memtrim.node, running without it: ${errorMessage(e)}`);
    return null;
  }
}

async function dryRun(io: CliIo, config: AgentConfig, policyFile: string | undefined): Promise<void> {
  const logger = createLogger({ level: config.log_level, name: 'secgroup-agent' });
  let policy: Policy;
  let source: string;
  if (policyFile) {
    policy = await loadPolicyFile(policyFile);
    source = policyFile;
  } else {
    const store = new FileStateStore(config.state_dir, systemClock.now);
    const r = await store.peek();
    if (r.kind === 'none') throw new SecgroupError('STATE_IO', `no last known good policy in ${store.path}: give one with --policy FILE`);
    if (r.kind === 'corrupt') throw r.error;
    policy = r.policy;
    source = store.path;
  }
  let endpoint = null;
  if (config.controller && config.platform.controller_rule) {
    // a name that cannot be resolved is logged (resolve_failed) and rendered without addresses
    const controllers = new ControllerDirectory(controllerUrls(config.controller), dnsResolver, logger);
    await controllers.refresh();
    endpoint = controllers.endpoint();
  }
  const compiled = compilePolicy(policy, { table: config.table, platform: platformOptions(config, endpoint) });
  const script = renderScript(compiled.table);
  logger.info(
    { event: 'dry_run', revision: policy.revision, digest: compiled.digest, rules: compiled.stats.rules, elements: compiled.stats.elements, source, script },
    `dry run: revision ${policy.revision} from ${source} would be applied as below; nothing was changed`,
  );
  io.out(script);
}

export function registerAgentCommands(program: Command, io: CliIo): void {
  addConfigOptions(
    program
      .command('agent')
      .summary('run the agent: enforce this host\'s policy with nftables, kept in sync with the controller')
      .description(
        'Applies the last known good policy from the state directory, then connects to the controller, applies ' +
          'every policy snapshot it sends (one nft transaction each) and acks it. Repairs drift of its table as it happens ' +
          '(nft monitor) and on a schedule. Serves /healthz, /readyz and /metrics on localhost. SIGTERM/SIGINT: stop, leave the rules in place. ' +
          'Configuration: file < environment (SECGROUP_*) < flags; see docs/agent-config.md.',
      )
      .option('--instance-id <id>', 'this instance\'s id (hello message)')
      .option('--controller <url>', 'controller URL, wss://host:port (ws:// for tests)')
      .option('--token-file <file>', 'file holding this instance\'s bearer token')
      .option('--ca-file <file>', 'CA certificate (PEM) to verify the controller')
      .option('--log-level <level>', 'fatal, error, warn, info, debug, trace or silent')
      .option('--http-listen <addr:port>', 'health and metrics endpoint ("" to disable)')
      .option('--drift-schedule <cron>', 'drift check schedule, 6-field cron (default "*/30 * * * * *")')
      .option('--dry-run', 'log the ruleset that would be applied (from --policy or the state directory) and exit; touches nothing')
      .option('--policy <file>', 'with --dry-run: the policy document to render'),
  ).action(async (opts: CommonFlags & { dryRun?: boolean; policy?: string }) => {
    try {
      const config = await loadConfig(io, opts);
      if (opts.dryRun) return await dryRun(io, config, opts.policy);
      if (opts.policy) throw new SecgroupError('CONFIG_INVALID', '--policy is only for --dry-run: the agent takes its policy from the controller or the state directory');
      // a long-running daemon that idles between bursts: size the heap for memory (src/agent/footprint.ts)
      tuneForFootprint();
      const logger = createLogger({ level: config.log_level, name: 'secgroup-agent', syslogPrefix: io.stderrIsJournal?.() ?? false });
      const c = config.controller;
      // Type=notify: NOTIFY_SOCKET is set (src/agent/systemd.ts)
      const serviceManager = systemdServiceManager(io.env, io.pid ?? 0, (e) =>
        logger.warn({ event: 'notify_failed', err: e }, `cannot notify systemd (systemd-notify): ${errorMessage(e)}`),
      );
      const token = readToken(config);
      const ca = c?.ca_file ? await readFile(c.ca_file).catch((e: unknown) => {
        throw new SecgroupError('CONFIG_INVALID', `cannot read controller.ca_file ${c.ca_file}: ${errorMessage(e)}`, { cause: e });
      }) : undefined;
      // nft from a helper shell started now, while the process is small (fork cost grows with it)
      const loader = nftLoaderPath(config.nft_loader, existsSync);
      const nft = new ExecaNftRunner({
        table: config.table,
        helper: true,
        timeoutMs: config.nft_timeout_ms,
        // auto: only with the nft the batch is checked against (probed at start); a path named in the config: as given
        ...(loader ? { loader: [loader], ...(config.nft_loader === 'auto' ? { loaderNftVersions: LOADER_NFT_VERSIONS } : {}) } : {}),
        onLoaderFallback: (reason, kind) =>
          kind === 'unsupported' || kind === 'refused' || kind === 'nft-version'
            ? logger.info({ event: 'nft_loader_fallback', kind, reason }, `full apply through nft -f: ${reason}`)
            : logger.warn({ event: 'nft_loader_fallback', kind, reason }, `full apply through nft -f: ${reason}`),
      });
      if (loader) logger.debug({ event: 'nft_loader', path: loader }, `full applies go to the kernel as a netlink batch through ${loader}`);
      else logger.info({ event: 'nft_loader', path: null }, config.nft_loader === '' ? 'nft_loader is off: full applies through nft -f' : `${NFTLOAD_FILE} not found: full applies through nft -f (slower for rule-heavy tables)`);
      if (nft.helperError) logger.warn({ event: 'nft_helper_unavailable', err: nft.helperError }, `nft helper shell unavailable, running nft directly: ${nft.helperError}`);
      const agent = createAgent({
        config,
        trimmer: memoryTrimmer(logger),
        nft,
        store: new FileStateStore(config.state_dir, systemClock.now, logger),
        clock: systemClock,
        logger,
        scheduler: cronScheduler,
        resolver: dnsResolver,
        dialer: c ? wsDialer({ token, ...(ca ? { ca } : {}), // the socket's cap is the protocol's: a policy over the agent's own limit arrives whole and is acked `rejected` (controller-client.ts)
        maxPayload: MAX_MESSAGE_BYTES, handshakeTimeoutMs: c.handshake_timeout_ms }) : null,
        // failsafe ports count as open in the report; the controller rule is egress and does not matter here
        portProbe: new HostPortProbe(new HostSocketSource(), systemClock, () => platformOptions(config, null)),
        hostname: hostname(),
        serviceManager,
        nftMonitor: driftSource(config, logger),
        heapBurst: compileBurst,
        // secgroup-ctmark (else conntrack(8)) clears the flow mark's field at each epoch (nft/flow-mark.ts); missing: the agent runs unarmed and says so
        flowMarks: flowMarks(config, logger),
        tokenPresent: () => {
          try {
            return Boolean(token());
          } catch {
            return false;
          }
        },
      });
      const signal = io.stopSignal?.() ?? new Promise<string>(() => {});
      // the daemon runs until a stop signal, whatever handles it holds meanwhile
      const hold = holdProcess();
      let sig: string;
      try {
        await agent.start();
        sig = await signal;
      } finally {
        hold.release();
      }
      logger.info({ event: 'signal', signal: sig }, `${sig}: stopping`);
      await agent.stop();
      nft.close();
    } catch (e) {
      fail(io, e);
    }
  });

  addConfigOptions(
    program
      .command('status')
      .summary('print what is applied: revision, digest, rules and their counters')
      .option('--json', 'print JSON'),
  ).action(async (opts: CommonFlags & { json?: boolean }) => {
    try {
      const config = await loadConfig(io, opts, true);
      const nft = new ExecaNftRunner({ table: config.table });
      const rb = await nft.readTable();
      const store = new FileStateStore(config.state_dir, systemClock.now);
      const lkg = await store.peek();
      const policy = lkg.kind === 'ok' ? lkg.policy : null;
      const meta = /digest=([0-9a-f]+) revision=(\d+) instance=(\S+)/.exec(rb?.marker ?? rb?.comment ?? '');
      const names = new Map<string, { group: string; rule: string; direction: string }>();
      for (const g of policy?.security_groups ?? []) for (const r of g.rules) names.set(ruleChainName(g.id, r.id), { group: g.id, rule: r.id, direction: r.direction });
      const rules = (rb?.chains ?? [])
        .filter((ch) => ch.name.startsWith('r_'))
        .map((ch) => {
          const n = names.get(ch.name);
          const fromComment = ch.rules[0]?.comment?.split('/') ?? [];
          return {
            chain: ch.name,
            group: n?.group ?? fromComment[0] ?? '?',
            rule: n?.rule ?? fromComment.slice(1).join('/') ?? '?',
            direction: n?.direction ?? null,
            packets: ch.rules[0]?.counter?.packets ?? 0,
            bytes: ch.rules[0]?.counter?.bytes ?? 0,
          };
        });
      // the flow mark (nft/flow-mark.ts): flow_known holds one rule, commented with the generation, once the agent armed it
      const known = rb?.chains.find((ch) => ch.name === FLOW_KNOWN);
      const generation = /generation (\d+)/.exec(known?.rules[0]?.comment ?? '');
      const flowMark = known ? { armed: known.rules.length > 0, generation: generation ? Number(generation[1]) : null } : null;
      const result = {
        table: `inet ${config.table}`,
        present: rb !== null,
        flow_mark: flowMark,
        table_revision: meta ? Number(meta[2]) : null,
        table_digest: meta ? meta[1]! : null,
        instance: meta ? meta[3]! : null,
        last_known_good:
          lkg.kind === 'ok'
            ? { revision: lkg.policy.revision, saved_at: lkg.savedAt, path: store.path }
            : lkg.kind === 'corrupt'
              ? { error: lkg.error.message, path: store.path }
              : null,
        rules,
      };
      if (opts.json) io.out(JSON.stringify(result, null, 2) + '\n');
      else {
        io.out(
          rb
            ? `table inet ${config.table}: present, revision ${result.table_revision ?? '?'} (digest ${result.table_digest ?? '?'}, instance ${result.instance ?? '?'})\n`
            : `table inet ${config.table}: NOT PRESENT - this host is not protected by secgroup\n`,
        );
        if (flowMark) {
          io.out(
            flowMark.armed
              ? `flow mark: armed, generation ${flowMark.generation ?? '?'} (packets of connections the current rules allowed skip them)\n`
              : 'flow mark: not armed (every packet from a peer is matched against the rules; the agent log says why: event flow_mark_unarmed)\n',
          );
        }
        const l = result.last_known_good;
        io.out(`last known good: ${l === null ? 'none' : 'error' in l ? `UNUSABLE (${l.error})` : `revision ${l.revision}, saved ${l.saved_at ?? '?'} (${l.path})`}\n`);
        if (rules.length) {
          const w = Math.max(5, ...rules.map((r) => r.group.length));
          const wr = Math.max(4, ...rules.map((r) => r.rule.length));
          io.out(`\n${'GROUP'.padEnd(w)}  ${'RULE'.padEnd(wr)}  ${'DIRECTION'.padEnd(9)}  ${'PACKETS'.padStart(12)}  ${'BYTES'.padStart(14)}\n`);
          for (const r of rules) io.out(`${r.group.padEnd(w)}  ${r.rule.padEnd(wr)}  ${(r.direction ?? '?').padEnd(9)}  ${String(r.packets).padStart(12)}  ${String(r.bytes).padStart(14)}\n`);
        }
      }
      if (!rb) throw new CliExit(EXIT.failure);
    } catch (e) {
      fail(io, e);
    }
  });

  addConfigOptions(
    program
      .command('uninstall-rules')
      .summary('remove our nft table (and nothing else); stop the agent first or it will put it back'),
  ).action(async (opts: CommonFlags) => {
    try {
      const config = await loadConfig(io, opts, true);
      const nft = new ExecaNftRunner({ table: config.table });
      const present = (await nft.readTable()) !== null;
      await nft.apply(deleteTableTx('inet', config.table));
      io.out(present ? `removed table inet ${config.table}\n` : `table inet ${config.table} was not present; nothing to remove\n`);
    } catch (e) {
      fail(io, e);
    }
  });
}
