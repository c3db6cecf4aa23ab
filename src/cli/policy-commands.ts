/**
 * `secgroup render`, `secgroup validate`, `secgroup explain`: pure commands
 * that need no root and touch nothing but their input file.
 */
import { Command, Option } from 'commander';
import { compilePolicy, DEFAULT_TABLE } from '../nft/compile.js';
import { renderJson, renderScript } from '../nft/render.js';
import { loadPolicyFile } from '../policy/load.js';
import { describeReason, evaluate, rulesInOrder } from '../policy/evaluate.js';
import { formatPacket, parsePacketText } from '../policy/packet-text.js';
import { describeRule, normalizeRules } from '../policy/normalize.js';
import { SecgroupError } from '../lib/errors.js';
import { collect, fail, platformFromFlags, type PlatformFlags } from './common.js';
import type { CliIo } from './io.js';
import type { CtState } from '../policy/packet.js';

function addPlatformOptions(cmd: Command): Command {
  return cmd
    .option('--controller <addr:port>', 'allow the agent control channel: egress TCP to this controller address and port')
    .option('--failsafe-ingress <proto:port>', 'always allow this inbound port, e.g. tcp:22 (repeatable)', collect)
    .option('--failsafe-egress <proto:port>', 'always allow this outbound port (repeatable)', collect)
    .option('--no-loopback', 'do not render the loopback platform rule')
    .option('--no-nd', 'do not render the ICMPv6 neighbour discovery / MLD platform rule')
    .option('--no-dhcp', 'do not render the DHCP / DHCPv6 client platform rules')
    .option('--flow-mark-mask <mask>', 'conntrack mark bits of the flow mark, as the agent\'s platform.flow_mark_mask (0: off; rendered as the agent\'s first apply, flow_known not armed)', '0xffff0000');
}

export function registerPolicyCommands(program: Command, io: CliIo): void {
  addPlatformOptions(
    program
      .command('render')
      .summary('print the nftables ruleset a policy becomes (dry run, no root)')
      .description(
        'Validate POLICY (JSON, or YAML for .yaml/.yml; "-" for stdin) and print the nft script the agent would apply:\n' +
          'it replaces table inet <name> in one transaction. Nothing is applied. Exit 0 on success, 2 with every\n' +
          'problem listed on stderr (and nothing on stdout) when the policy is invalid.',
      )
      .argument('<policy>', 'policy document (SEMANTICS.md section 8)')
      .option('--table <name>', 'nft table name (family inet)', DEFAULT_TABLE)
      .addOption(new Option('--format <format>', 'output format').choices(['nft', 'json']).default('nft')),
  ).action(async (file: string, opts: PlatformFlags & { table: string; format: 'nft' | 'json' }) => {
    try {
      const policy = await loadPolicyFile(file);
      if (!/^[a-zA-Z][a-zA-Z0-9_]{0,31}$/.test(opts.table)) {
        throw new SecgroupError('CONFIG_INVALID', `--table ${JSON.stringify(opts.table)}: a table name is a letter followed by letters, digits or "_" (at most 32)`);
      }
      const compiled = compilePolicy(policy, { table: opts.table, platform: platformFromFlags(opts) });
      io.out(opts.format === 'json' ? JSON.stringify(renderJson(compiled.table), null, 2) + '\n' : renderScript(compiled.table));
    } catch (e) {
      fail(io, e);
    }
  });

  program
    .command('validate')
    .summary('check a policy document; exit 0 if valid, 2 with every problem listed')
    .argument('<policy>', 'policy document (JSON or YAML)')
    .action(async (file: string) => {
      try {
        const policy = await loadPolicyFile(file);
        const rules = normalizeRules(policy);
        io.out(`${file}: valid (revision ${policy.revision}, ${policy.security_groups.length} security groups, ${rules.length} rules)\n`);
      } catch (e) {
        fail(io, e);
      }
    });

  addPlatformOptions(
    program
      .command('explain')
      .summary('tell whether a packet is accepted or dropped by a policy, and which rule decides')
      .description(
        'Evaluate one packet against POLICY with the reference evaluator (SEMANTICS.md sections 2-4).\n\n' +
          'Packet notation:\n' +
          '  "ingress tcp 203.0.113.7:40000 -> 198.18.0.10:80"     (source port optional)\n' +
          '  "egress udp 198.18.0.10 -> 198.18.0.1:53"\n' +
          '  "ingress icmp 203.0.113.7 -> 198.18.0.10 type 8 code 0"\n' +
          '  "ingress tcp [2001:db8::1]:40000 -> [fd00:5ec::10]:443"\n' +
          '  "egress proto 47 198.18.0.10 -> 198.18.0.20"\n\n' +
          'The packet is the first of a new connection unless --state says otherwise.',
      )
      .argument('<policy>', 'policy document (JSON or YAML)')
      .requiredOption('--packet <packet>', 'the packet, in the notation above')
      .addOption(new Option('--state <state>', 'conntrack state of the packet').choices(['new', 'established', 'related', 'invalid', 'untracked']).default('new'))
      .option('--reply', 'the packet is in the reply direction of its connection (ct direction reply)')
      .option('--iface <name>', 'interface the packet arrives on / leaves by (lo for loopback)')
      .option('--json', 'print the answer as JSON'),
  ).action(async (file: string, opts: PlatformFlags & { packet: string; state: CtState; reply?: boolean; iface?: string; json?: boolean }) => {
    try {
      const policy = await loadPolicyFile(file);
      let packet;
      try {
        packet = parsePacketText(opts.packet);
      } catch (e) {
        throw new SecgroupError('PACKET_INVALID', `--packet: ${(e as Error).message}`);
      }
      packet.ct = opts.state;
      if (opts.reply) packet.ctDirection = 'reply';
      if (opts.iface) packet.iface = opts.iface;
      const result = evaluate(policy, packet, platformFromFlags(opts));
      let ruleText: string | undefined;
      if (result.reason.kind === 'rule') {
        const r = result.reason;
        const rule = normalizeRules(policy).find((n) => n.groupId === r.groupId && n.ruleId === r.ruleId);
        ruleText = rule ? describeRule(rule) : undefined;
      }
      if (opts.json) {
        io.out(JSON.stringify({ packet, verdict: result.verdict, reason: result.reason, explanation: describeReason(result.reason), rule: ruleText ?? null }, null, 2) + '\n');
        return;
      }
      io.out(`packet:  ${formatPacket(packet)} (${packet.ct === 'new' ? 'first packet of a new connection' : `ct state ${packet.ct}${opts.reply ? ', reply direction' : ''}`})\n`);
      io.out(`verdict: ${result.verdict.toUpperCase()}\n`);
      io.out(`because: ${describeReason(result.reason)}\n`);
      if (ruleText) io.out(`rule:    ${ruleText}\n`);
      if (result.reason.kind === 'default') {
        const groups = policy.security_groups.map((g) => `${g.id} (${rulesInOrder(g.rules).filter((r) => r.direction === packet.direction).length} ${packet.direction} rules)`);
        io.out(`checked: ${groups.join(', ') || 'no security groups'}\n`);
      }
    } catch (e) {
      fail(io, e);
    }
  });
}
