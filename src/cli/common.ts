import { SecgroupError, ValidationError, errorMessage, formatIssue } from '../lib/errors.js';
import { CliExit, EXIT, type CliIo } from './io.js';
import { DEFAULT_PLATFORM, parsePortSpec, type PlatformOptions } from '../policy/platform.js';
import { ipFamily } from '../policy/address.js';
import { parseFlowMask } from '../nft/flow-mark.js';

/** Prints an error the way every command does and throws CliExit with the matching code. */
export function fail(io: CliIo, e: unknown): never {
  if (e instanceof CliExit) throw e;
  if (e instanceof ValidationError) {
    io.err(`error: ${e.issues.length} problem${e.issues.length === 1 ? '' : 's'} in the ${e.code === 'POLICY_INVALID' ? 'policy' : 'input'}:\n`);
    for (const i of e.issues) io.err(`  ${formatIssue(i)}\n`);
    throw new CliExit(EXIT.invalid);
  }
  if (e instanceof SecgroupError) {
    io.err(`error: ${e.message}\n`);
    throw new CliExit(e.code === 'POLICY_PARSE' || e.code === 'CONFIG_INVALID' || e.code === 'PACKET_INVALID' ? EXIT.invalid : EXIT.failure);
  }
  io.err(`error: ${errorMessage(e)}\n`);
  throw new CliExit(EXIT.failure);
}

export interface PlatformFlags {
  loopback?: boolean;
  nd?: boolean;
  dhcp?: boolean;
  controller?: string;
  failsafeIngress?: string[];
  failsafeEgress?: string[];
  flowMarkMask?: string;
}

/** Platform options from render/explain flags; throws SecgroupError CONFIG_INVALID. */
export function platformFromFlags(f: PlatformFlags): PlatformOptions {
  const spec = (list: string[] | undefined) =>
    (list ?? []).map((s) => {
      const r = parsePortSpec(s);
      if (!r.ok) throw new SecgroupError('CONFIG_INVALID', r.error);
      return r.spec;
    });
  let controller: PlatformOptions['controller'] = null;
  if (f.controller) {
    const m = /^(?:\[([^\]]+)\]|([^:]+)):(\d{1,5})$/.exec(f.controller);
    const addr = m?.[1] ?? m?.[2];
    if (!m || !addr || ipFamily(addr) === null || Number(m[3]) > 65535 || Number(m[3]) < 1) {
      throw new SecgroupError('CONFIG_INVALID', `--controller ${JSON.stringify(f.controller)}: expected ADDRESS:PORT (IPv6 as [ADDRESS]:PORT)`);
    }
    controller = { addresses: [addr], port: Number(m[3]), dns: false };
  }
  let flowMarkMask = DEFAULT_PLATFORM.flowMarkMask;
  if (f.flowMarkMask !== undefined) {
    const r = parseFlowMask(f.flowMarkMask);
    if (!r.ok) throw new SecgroupError('CONFIG_INVALID', `--flow-mark-mask ${JSON.stringify(f.flowMarkMask)}: ${r.error}`);
    flowMarkMask = r.mask;
  }
  return {
    ...DEFAULT_PLATFORM,
    flowMarkMask,
    loopback: f.loopback ?? true,
    icmpv6Nd: f.nd ?? true,
    dhcp: f.dhcp ?? true,
    controller,
    failsafeIngress: spec(f.failsafeIngress),
    failsafeEgress: spec(f.failsafeEgress),
  };
}

export const collect = (value: string, previous: string[] = []): string[] => [...previous, value];
