/**
 * The agent's port probe: reads the host's listening sockets (ss, netstat or
 * /proc) and rates them against the applied policy (SEMANTICS section 7).
 * `PortProbe` is what the agent needs (something that produces a
 * `PortReport`); `HostPortProbe` is the real one, `FakePortProbe`
 * (fake.ts) the one for tests. The probe layer knows nothing of the agent.
 */
import type { Clock } from '../lib/clock.js';
import type { NormalizedRule } from '../policy/normalize.js';
import type { PlatformOptions } from '../policy/platform.js';
import type { Policy } from '../policy/schema.js';
import type { PortReport } from '../protocol/messages.js';
import { computePortStatus } from './port-status.js';
import type { SocketSource } from './source.js';

export interface PortProbe {
  /**
   * Reads the listening sockets and rates them against `policy` (null: no
   * policy applied). Throws SecgroupError PROBE_FAILED when no source can
   * read the sockets. `rules`: the policy's rules already normalised
   * (PortStatusOptions.rules), to save normalising them again.
   */
  report(policy: Policy | null, revision: number | null, rules?: readonly NormalizedRule[]): Promise<PortReport>;
}

export class HostPortProbe implements PortProbe {
  constructor(
    private readonly source: SocketSource,
    private readonly clock: Clock,
    private readonly platform: () => PlatformOptions,
  ) {}

  /** Throws SecgroupError PROBE_FAILED when no source can read the sockets. */
  async report(policy: Policy | null, revision: number | null, rules?: readonly NormalizedRule[]): Promise<PortReport> {
    const reading = await this.source.read();
    const report = computePortStatus(policy, reading.listeners, {
      source: reading.source,
      generatedAt: new Date(this.clock.now()).toISOString(),
      platform: this.platform(),
      ...(rules ? { rules } : {}),
    });
    return { ...report, revision };
  }
}
