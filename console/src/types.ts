/** The API resources the console reads (docs/api.md), as far as it uses them. */
import type { RuleLike, StatusLike } from './logic';

export interface Group {
  id: string;
  name: string;
  description: string;
  security_group_rules?: Rule[];
}

export interface Rule extends RuleLike {
  security_group_id: string;
  description: string;
  enabled: boolean;
}

export interface AddressGroup {
  id: string;
  name: string;
  description: string;
  ip_version: number;
  ip_set: string[];
}

export interface Instance {
  id: string;
  name: string;
  addresses: string[];
  security_groups: string[];
  updated_at: string;
}

export interface Status extends StatusLike {
  last_seen: string | null;
  last_ack: { revision: number; status: string; at: string } | null;
  last_error: { revision: number | null; code: string; message: string; at: string } | null;
  agent: { version: string | null; hostname: string | null };
}

export interface RuleRef {
  group_id: string;
  rule_id: string;
  peers: string;
}

export interface PortEntry {
  protocol: 'tcp' | 'udp';
  port: number;
  family: 4 | 6 | null;
  status: 'open' | 'blocked' | 'local-only' | 'not-listening';
  listeners: { address: string; process: string | null }[];
  allowed_by: RuleRef[];
  denied_by: RuleRef[];
}

export interface Ports {
  instance_id: string;
  received_at: string | null;
  report: { revision: number | null; source: string; generated_at: string; entries: PortEntry[] } | null;
}

/** RuleRef of the analysis API (contract of issue 17). */
export interface AnalysisRule {
  id: string;
  security_group_id: string;
  security_group_name: string;
  direction: string;
  priority: number;
  action: 'allow' | 'deny';
  protocol: string | null;
  multiport: string | null;
  remote_ip_prefix: string | null;
  remote_group_id: string | null;
  remote_address_group_id: string | null;
}

export interface Exposure {
  instance_id: string;
  instance_name: string;
  protocol: 'tcp' | 'udp';
  port: number;
  ethertype: string;
  listen_address: string;
  process: string | null;
  source: string;
  rule: AnalysisRule;
  risk: 'critical' | 'high' | 'medium' | 'low';
  risk_reason: string;
}

export interface SideVerdict {
  evaluated: boolean;
  verdict: 'allow' | 'deny';
  reason: string;
  rule: AnalysisRule | null;
}

export interface Reachability {
  from: { kind: string; instance_id?: string; address: string; cidr?: string };
  to: { instance_id: string; address: string };
  protocol: string;
  port?: number | null;
  ethertype: string;
  verdict: 'allowed' | 'denied';
  egress: SideVerdict;
  ingress: SideVerdict;
  listening: boolean | null;
  ports_reported_at: string | null;
}

export interface AuditEvent {
  id: string;
  time: string;
  actor: string;
  operation: string;
  resource_type: string;
  resource_ids: string[];
  status: number;
}

export type { Status as InstanceStatus };
