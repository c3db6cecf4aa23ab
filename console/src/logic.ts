/**
 * The console's pure logic (no DOM, no fetch): routes, the matching order of
 * rules, instance health, API validation messages by field, the
 * server-sent-events parser. Unit-tested in test/unit/console-logic.test.ts.
 */

// ---- routes: every view has its own URL under /console ----

export const BASE = '/console';

export type Route =
  | { view: 'overview' }
  | { view: 'groups' }
  | { view: 'group'; id: string }
  | { view: 'address-groups' }
  | { view: 'instances' }
  | { view: 'instance'; id: string }
  | { view: 'reachability'; query: Record<string, string> }
  | { view: 'not-found'; path: string };

/** The view of a location (pathname and search); unknown paths are a not-found view, never an error. */
export function parseRoute(pathname: string, search = ''): Route {
  const rest = pathname.startsWith(BASE) ? pathname.slice(BASE.length) : pathname;
  const parts = rest.split('/').filter((p) => p !== '').map(safeDecode);
  const [a, b, ...more] = parts;
  if (more.length === 0) {
    if (a === undefined) return { view: 'overview' };
    if (a === 'groups' && b === undefined) return { view: 'groups' };
    if (a === 'groups' && b !== undefined) return { view: 'group', id: b };
    if (a === 'address-groups' && b === undefined) return { view: 'address-groups' };
    if (a === 'instances' && b === undefined) return { view: 'instances' };
    if (a === 'instances' && b !== undefined) return { view: 'instance', id: b };
    if (a === 'reachability' && b === undefined) return { view: 'reachability', query: Object.fromEntries(new URLSearchParams(search)) };
  }
  return { view: 'not-found', path: pathname };
}

function safeDecode(s: string): string {
  try {
    return decodeURIComponent(s);
  } catch {
    return s;
  }
}

export const href = {
  overview: () => `${BASE}/`,
  groups: () => `${BASE}/groups`,
  group: (id: string, ruleId?: string) => `${BASE}/groups/${encodeURIComponent(id)}${ruleId ? `#rule-${encodeURIComponent(ruleId)}` : ''}`,
  addressGroups: () => `${BASE}/address-groups`,
  instances: () => `${BASE}/instances`,
  instance: (id: string) => `${BASE}/instances/${encodeURIComponent(id)}`,
  reachability: (q?: Record<string, string>) => `${BASE}/reachability${q && Object.keys(q).length ? `?${new URLSearchParams(q).toString()}` : ''}`,
};

// ---- rules in matching order (SEMANTICS section 2) ----

export interface RuleLike {
  id: string;
  priority: number;
  action: 'allow' | 'deny';
  direction: 'ingress' | 'egress';
  protocol: string | null;
  multiport: string | null;
  ethertype: string;
  remote_ip_prefix: string | null;
  remote_group_id: string | null;
  remote_address_group_id: string | null;
  icmp_type?: number;
  icmp_code?: number;
}

/** Inside one group: priority ascending, deny before allow at equal priority, then as stored. */
export function matchingOrder<R extends RuleLike>(rules: readonly R[]): R[] {
  return rules
    .map((r, i) => ({ r, i }))
    .sort((x, y) => x.r.priority - y.r.priority || (x.r.action === y.r.action ? 0 : x.r.action === 'deny' ? -1 : 1) || x.i - y.i)
    .map((x) => x.r);
}

/** "tcp 22,80 from 0.0.0.0/0" in words a person reads (peer is the source for ingress, the destination for egress). */
export function describeRule(r: RuleLike): string {
  const proto = r.protocol ? r.protocol : 'any protocol';
  const ports = r.multiport ? ` ${r.multiport}` : r.protocol === 'tcp' || r.protocol === 'udp' || r.protocol === 'sctp' ? ' all ports' : '';
  const icmp = r.icmp_type !== undefined ? ` type ${r.icmp_type}${r.icmp_code !== undefined ? ` code ${r.icmp_code}` : ''}` : '';
  const peer = r.remote_ip_prefix ?? (r.remote_group_id ? `group ${r.remote_group_id}` : r.remote_address_group_id ? `address group ${r.remote_address_group_id}` : r.ethertype === 'IPv6' ? '::/0' : '0.0.0.0/0');
  return `${proto}${ports}${icmp} ${r.direction === 'ingress' ? 'from' : 'to'} ${peer}`;
}

// ---- instance health ----

export interface StatusLike {
  instance_id: string;
  desired_revision: number | null;
  applied_revision: number | null;
  in_sync: boolean;
  connected: boolean;
  last_error: { revision: number | null; code: string; message: string } | null;
}

export type Health = 'in-sync' | 'out-of-date' | 'failing' | 'no-policy';

/**
 * failing: not in sync and the last error is about the revision it should run (or says nothing of one);
 * out-of-date: not in sync otherwise (not applied yet, disconnected); an error of an older revision that a
 * later one fixed does not count.
 */
export function healthOf(s: StatusLike): Health {
  if (s.desired_revision === null) return 'no-policy';
  if (s.in_sync) return 'in-sync';
  if (s.last_error && (s.last_error.revision === null || s.last_error.revision === s.desired_revision)) return 'failing';
  return 'out-of-date';
}

export interface FleetCounts {
  instances: number;
  connected: number;
  inSync: number;
  outOfDate: number;
  failing: number;
}

export function fleetCounts(statuses: readonly StatusLike[]): FleetCounts {
  const c: FleetCounts = { instances: statuses.length, connected: 0, inSync: 0, outOfDate: 0, failing: 0 };
  for (const s of statuses) {
    if (s.connected) c.connected++;
    const h = healthOf(s);
    if (h === 'in-sync') c.inSync++;
    else if (h === 'failing') c.failing++;
    else if (h === 'out-of-date') c.outOfDate++;
  }
  return c;
}

/** Instances whose name, id, an address or a group contains every word of `query` (case-insensitive). */
export function filterInstances<I extends { id: string; name: string; addresses: string[]; security_groups: string[] }>(all: readonly I[], query: string): I[] {
  const words = query.toLowerCase().split(/\s+/).filter((w) => w !== '');
  if (words.length === 0) return [...all];
  return all.filter((i) => {
    const text = [i.id, i.name, ...i.addresses, ...i.security_groups].join(' ').toLowerCase();
    return words.every((w) => text.includes(w));
  });
}

// ---- API validation messages at their field ----

export interface FieldErrors {
  /** by field name below the prefix, e.g. "multiport" */
  fields: Record<string, string>;
  /** what names no field of the form */
  general: string[];
}

/**
 * Splits an API error message ("security_group_rule.multiport: ...; security_group_rule.priority: ...")
 * into messages per form field; what names another path stays general.
 */
export function fieldErrors(message: string, prefix: string, fields: readonly string[]): FieldErrors {
  const out: FieldErrors = { fields: {}, general: [] };
  for (const part of message.split('; ')) {
    const m = /^([A-Za-z0-9_.[\]]+): ([\s\S]*)$/.exec(part);
    const path = m?.[1];
    const field = path?.startsWith(`${prefix}.`) ? path.slice(prefix.length + 1) : undefined;
    if (m && field !== undefined && fields.includes(field)) out.fields[field] = out.fields[field] ? `${out.fields[field]}; ${m[2]}` : m[2]!;
    else out.general.push(part);
  }
  return out;
}

// ---- server-sent events (text/event-stream), fed chunk by chunk ----

export interface SseEvent {
  event: string;
  data: string;
}

export class SseParser {
  private buffer = '';

  /** The events completed by this chunk; comments (heartbeats) and events without data are skipped. */
  push(chunk: string): SseEvent[] {
    this.buffer += chunk;
    const out: SseEvent[] = [];
    for (;;) {
      const m = /\r?\n\r?\n/.exec(this.buffer);
      if (!m) break;
      const block = this.buffer.slice(0, m.index);
      this.buffer = this.buffer.slice(m.index + m[0].length);
      let event = 'message';
      const data: string[] = [];
      for (const line of block.split(/\r?\n/)) {
        if (line === '' || line.startsWith(':')) continue;
        const colon = line.indexOf(':');
        const name = colon < 0 ? line : line.slice(0, colon);
        const value = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '');
        if (name === 'event') event = value;
        else if (name === 'data') data.push(value);
      }
      if (data.length) out.push({ event, data: data.join('\n') });
    }
    return out;
  }
}

/** "3 min ago" from two ISO times (the console's clock is the browser's: only for display). */
export function ago(iso: string | null, nowMs: number): string {
  if (!iso) return 'never';
  const s = Math.round((nowMs - Date.parse(iso)) / 1000);
  if (!Number.isFinite(s)) return iso;
  if (s < 5) return 'just now';
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86400)} d ago`;
}
