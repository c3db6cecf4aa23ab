/**
 * `secgroup ports`: the host's listening sockets against the security group
 * policy (SEMANTICS section 7), i.e. "is the port enabled?" answered for every
 * port at once. Reads sockets and a policy file; changes nothing.
 */

import { Command, Option } from 'commander';
import { systemClock, type Clock } from '../lib/clock.js';
import { loadPolicyFile } from '../policy/load.js';
import { FileStateStore, STATE_FILE } from '../agent/state-store.js';
import type { Policy } from '../policy/schema.js';
import type { PortEntry, PortReport } from '../protocol/messages.js';
import { computePortStatus } from '../probe/port-status.js';
import { HostSocketSource, SOCKET_SOURCES, type SocketReading, type SocketSource, type SocketSourceName } from '../probe/source.js';
import { collect, fail, platformFromFlags } from './common.js';
import type { CliIo } from './io.js';

export const DEFAULT_STATE_DIR = '/var/lib/secgroup';
export const APPLIED_POLICY_FILE = STATE_FILE;

export interface PortsDeps {
  source: SocketSource;
  clock: Clock;
}

interface PortsFlags {
  policy?: string;
  stateDir: string;
  json?: boolean;
  source?: SocketSourceName;
  failsafeIngress?: string[];
  dhcp?: boolean;
}

const HELP = `List the host's listening tcp/udp sockets and what the security group
policy does to each: the "check whether a port is enabled" routine,
automated. Nothing is changed.

Statuses (per port, protocol and address family):
  open           listening on a non-loopback address, and new connections
                 from at least one peer are accepted: by an ingress allow
                 rule that is the first match for that peer, or by a
                 platform rule (DHCP client port, --failsafe-ingress)
  blocked        listening on a non-loopback address, but no peer gets in:
                 no ingress rule allows the port, or deny rules matched
                 before the allow rules take every peer they allow
  local-only     listening on loopback only (127.0.0.0/8, ::1, or bound to
                 lo): unreachable from outside whatever the rules say
  not-listening  an ingress allow rule (or failsafe port) names the port,
                 nothing listens on it (ranges wider than 16 ports and
                 rules without ports are not listed port by port)

ALLOWED-BY names each allow rule as group/rule (peers); "denied first:"
names deny rules matched before an allow rule for some of its peers. A
partial shadow (deny from 203.0.113.0/24, then allow from 0.0.0.0/0) is
open: everyone else gets in.
PROTO tcp4/udp4 is IPv4, tcp6/udp6 IPv6, tcp/udp both. LISTENING-ON "*" is
an IPv6 wildcard socket that accepts IPv4 too; "%lo", "%eth0" is the
interface a socket is bound to.

Sockets are read with ss, else netstat, else /proc/net (--source picks
one). Without --policy, the policy the agent last applied is read from
<state-dir>/${APPLIED_POLICY_FILE}; if there is none, listeners are shown as
blocked or local-only.

Exit 0; 2 when the policy is invalid; 1 when no source can read sockets.`;

const PROTO_TEXT = (e: PortEntry) => `${e.protocol}${e.family === null ? '' : e.family}`;

function refText(r: PortEntry['allowed_by'][number]): string {
  return `${r.group_id}/${r.rule_id} (${r.peers})`;
}

/** The human table: PORT PROTO STATUS LISTENING-ON PROCESS ALLOWED-BY. */
export function formatPortTable(report: PortReport): string {
  const rows = report.entries.map((e) => {
    const procs = [...new Set(e.listeners.map((l) => l.process).filter((p): p is string => p !== null))];
    let allowed = e.allowed_by.map(refText).join(', ') || '-';
    if (e.denied_by.length) allowed += `; denied first: ${e.denied_by.map(refText).join(', ')}`;
    return [String(e.port), PROTO_TEXT(e), e.status, e.listeners.map((l) => l.address).join(', ') || '-', procs.join(', ') || '-', allowed];
  });
  const header = ['PORT', 'PROTO', 'STATUS', 'LISTENING-ON', 'PROCESS', 'ALLOWED-BY'];
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (cells: string[]) => cells.map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i]!))).join('  ') + '\n';
  return line(header) + rows.map(line).join('');
}

async function appliedPolicy(stateDir: string): Promise<{ policy: Policy | null; path: string }> {
  // the agent's last-known-good state file (src/agent/state-store.ts), read without side effects
  const store = new FileStateStore(stateDir, () => systemClock.now());
  const r = await store.peek();
  if (r.kind === 'ok') return { policy: r.policy, path: store.path };
  if (r.kind === 'none') return { policy: null, path: store.path };
  throw r.error;
}

export function registerPortsCommand(
  program: Command,
  io: CliIo,
  deps: PortsDeps = { source: new HostSocketSource(), clock: systemClock },
): void {
  program
    .command('ports')
    .summary('show listening ports and whether the policy opens them (open, blocked, local-only, not-listening)')
    .description(HELP)
    .option('--policy <file>', 'policy document (JSON or YAML) instead of the one the agent last applied')
    .option('--state-dir <dir>', 'agent state directory holding the last applied policy', DEFAULT_STATE_DIR)
    .option('--json', 'print the port report as JSON (the agent protocol PortReport)')
    .addOption(new Option('--source <tool>', 'read sockets with this tool only').choices(SOCKET_SOURCES))
    .option('--failsafe-ingress <proto:port>', 'the agent\'s failsafe ingress port, e.g. tcp:22 (repeatable)', collect)
    .option('--no-dhcp', 'the agent does not allow the DHCP client ports')
    .action(async (opts: PortsFlags) => {
      try {
        const platform = platformFromFlags({ dhcp: opts.dhcp, failsafeIngress: opts.failsafeIngress });
        let policy: Policy | null;
        let policyNote: string;
        if (opts.policy) {
          policy = await loadPolicyFile(opts.policy);
          policyNote = `revision ${policy.revision} from ${opts.policy}`;
        } else {
          const applied = await appliedPolicy(opts.stateDir);
          policy = applied.policy;
          policyNote = policy
            ? `revision ${policy.revision}, last applied by the agent (${applied.path})`
            : `none applied (${applied.path} does not exist): listeners only, no rule allows anything`;
        }
        const reading: SocketReading = await deps.source.read(opts.source ? { only: opts.source } : {});
        const report = computePortStatus(policy, reading.listeners, {
          source: reading.source,
          generatedAt: new Date(deps.clock.now()).toISOString(),
          platform,
        });
        const fallback = reading.failed.map((f) => `${f.source} failed: ${f.error}`).join('; ');
        if (opts.json) {
          if (!policy) io.err(`note: policy: ${policyNote}\n`);
          if (fallback) io.err(`note: sockets read with ${reading.source} (${fallback})\n`);
          io.out(JSON.stringify(report, null, 2) + '\n');
          return;
        }
        io.out(`policy:  ${policyNote}\n`);
        io.out(`sockets: ${reading.source}${fallback ? ` (${fallback})` : ''}\n\n`);
        io.out(report.entries.length ? formatPortTable(report) : 'no listening sockets and no allowed ports\n');
      } catch (e) {
        fail(io, e);
      }
    });
}
