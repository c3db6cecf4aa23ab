/**
 * Port status reports (SEMANTICS section 7) sent to the controller. The
 * socket reading and the status computation belong to src/probe/; the agent
 * only needs something that produces a `PortReport`.
 */
import type { PortReport } from '../protocol/messages.js';
import type { Policy } from '../policy/schema.js';

export interface PortProbe {
  /** Reads the listening sockets and rates them against `policy` (null: no policy applied). */
  report(policy: Policy | null, revision: number | null): Promise<PortReport>;
}

/** A probe that returns a fixed report (tests). */
export class FakePortProbe implements PortProbe {
  calls: { revision: number | null }[] = [];
  async report(_policy: Policy | null, revision: number | null): Promise<PortReport> {
    this.calls.push({ revision });
    return { revision, source: 'proc', generated_at: '2024-01-01T00:00:00.000Z', entries: [] };
  }
}
