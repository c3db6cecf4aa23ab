/**
 * Schema-driven API fuzzing (issue 12): requests generated from the served
 * OpenAPI document, which is generated from the zod schemas that parse
 * requests (src/controller/api/openapi.ts). Shared by the fast seeded test
 * (test/security/api-fuzz.test.ts) and the long run
 * (scripts/security/fuzz.ts); pure apart from the `send` function the caller
 * passes, and deterministic for a seed.
 *
 * Each request takes one operation (declared ones, and every other method on
 * every path), fills path parameters with ids that exist (created through
 * the API by `seedRequests`) or hostile ones, builds a body that fits the
 * operation's JSON schema as far as the generator knows how, then applies
 * one mutation: a wrong type, a boundary number, a huge string, hostile
 * unicode, null, an extra field (`__proto__` among them), a missing required
 * field, an empty container, deep nesting, text that is not JSON, or a
 * header over the size limit.
 *
 * The contract checked (`problemWith`): never a 5xx; every 4xx is the API's
 * error shape `{request_id, error_code, error_msg}`; every other body is
 * JSON, except /metrics (Prometheus text), 204 and HEAD.
 */
import { createRng } from './random-policy.js';

export interface FuzzRequest {
  /** the operation, e.g. `post /v3/{project_id}/vpc/security-groups` */
  op: string;
  /** which mutation was applied (`valid` when none) */
  mutation: string;
  method: string;
  url: string;
  headers: Record<string, string>;
  body?: string;
}

export interface FuzzAnswer {
  status: number;
  contentType: string;
  body: string;
}

type Schema = Record<string, unknown> & {
  type?: string | string[];
  properties?: Record<string, Schema>;
  required?: string[];
  items?: Schema;
  anyOf?: Schema[];
  oneOf?: Schema[];
  enum?: unknown[];
  const?: unknown;
  pattern?: string;
  format?: string;
  minimum?: number;
  maximum?: number;
  minItems?: number;
  maxItems?: number;
  maxLength?: number;
};

interface OpenApiOperation {
  parameters?: { name: string; in: string; schema?: Schema }[];
  requestBody?: { content: Record<string, { schema: Schema }> };
  responses?: Record<string, { content?: Record<string, unknown> }>;
}

/**
 * An event stream (`text/event-stream`, GET .../events) answers 200 and stays
 * open: not a request/response operation a fuzzer can wait for. Its other
 * methods and its errors are fuzzed; its stream is tested on real sockets
 * (test/unit/console-events.test.ts).
 */
export function isEventStream(op: OpenApiOperation | undefined): boolean {
  return !!op?.responses?.['200']?.content?.['text/event-stream'];
}

export interface FuzzOperation {
  method: string;
  path: string;
  declared: boolean;
  body: Schema | null;
  query: { name: string; schema: Schema }[];
}

/** The seeded generator of random-policy.ts (mulberry32), with the helpers the fuzzer draws with (`pick` of an empty list is undefined here). */
export class Rng {
  readonly next: () => number;
  constructor(seed: number) {
    this.next = createRng(seed).next;
  }
  int(n: number): number {
    return Math.floor(this.next() * n);
  }
  pick<T>(xs: readonly T[]): T {
    return xs[this.int(xs.length)]!;
  }
  chance(p: number): boolean {
    return this.next() < p;
  }
}

export const ALL_METHODS = ['GET', 'POST', 'PUT', 'DELETE', 'PATCH', 'HEAD', 'OPTIONS'] as const;

/** Every declared operation, and every other method on every path (which must answer 404/405 in the error shape). */
export function fuzzOperations(doc: { paths: Record<string, Record<string, OpenApiOperation>> }): FuzzOperation[] {
  const ops: FuzzOperation[] = [];
  for (const [path, item] of Object.entries(doc.paths)) {
    for (const method of ALL_METHODS) {
      const op = item[method.toLowerCase()];
      if (isEventStream(op)) continue;
      ops.push({
        method,
        path,
        declared: !!op,
        body: op?.requestBody?.content['application/json']?.schema ?? null,
        query: (op?.parameters ?? []).filter((p) => p.in === 'query').map((p) => ({ name: p.name, schema: p.schema ?? {} })),
      });
    }
  }
  return ops;
}

export const HOSTILE_STRINGS = [
  '',
  ' ',
  '"; flush ruleset\n#}',
  '\u0000',
  '\ud800',
  '\u202e\u200b\ufeff',
  '🔥'.repeat(64),
  'ü'.repeat(65),
  '../../etc/passwd',
  '%00%2e%2e%2f',
  '<script>alert(1)</script>',
  "' OR 1=1 --",
  '${jndi:ldap://x}',
  '198.18.0.1/33',
  '::ffff:198.18.0.1',
  '0x50',
  '1e3',
  '-0',
  'NaN',
  'true',
  'null',
];
const BOUNDARY_NUMBERS = [-1, 0, 1, 100, 101, 255, 256, 65535, 65536, 2 ** 31, 2 ** 32, 2 ** 53, -(2 ** 53), 1e308, -1e308, 0.5, 5e-324];
const HUGE = [256, 4096, 70_000, 1_100_000];
const EXTRA_KEYS = ['__proto__', 'constructor', 'prototype', 'toString', 'x', 'project_id', 'id', 'created_at', 'revision'];

/** Mutation names, in the order of the report. */
export const MUTATIONS = ['valid', 'wrong_type', 'boundary', 'huge_string', 'unicode', 'null', 'extra_field', 'missing_field', 'empty', 'deep', 'not_json', 'bad_param', 'bad_query', 'huge_header'] as const;

export interface FuzzContext {
  rng: Rng;
  /** ids that exist, by kind (filled from `seedRequests`' answers) */
  ids: { group: string[]; rule: string[]; addressGroup: string[]; instance: string[] };
  project: string;
  headers: Record<string, string>;
}

/** Requests that create resources to aim at (their answers are passed to `learnIds`). */
export function seedRequests(project: string, headers: Record<string, string>): FuzzRequest[] {
  const base = `/v3/${project}`;
  const json = { ...headers, 'content-type': 'application/json' };
  const reqs: FuzzRequest[] = [];
  const add = (url: string, body: unknown) => reqs.push({ op: 'seed', mutation: 'valid', method: 'POST', url, headers: json, body: JSON.stringify(body) });
  for (let i = 0; i < 3; i++) {
    add(`${base}/vpc/security-groups`, { security_group: { id: `fz-sg-${i}`, name: `fz-sg-${i}` } });
    add(`${base}/vpc/security-group-rules`, { security_group_rule: { id: `fz-r-${i}`, security_group_id: `fz-sg-${i}`, direction: 'ingress', protocol: 'tcp', multiport: String(80 + i), remote_ip_prefix: '198.18.0.0/24' } });
    add(`${base}/vpc/address-groups`, { address_group: { id: `fz-ag-${i}`, name: `fz-ag-${i}`, ip_version: 4, ip_set: [`198.18.${i}.0/24`] } });
    add(`${base}/instances`, { instance: { id: `fz-i-${i}`, addresses: [`198.18.0.${10 + i}`], security_groups: [`fz-sg-${i}`, 'default'] } });
  }
  return reqs;
}

export function newContext(seed: number, project: string, headers: Record<string, string>): FuzzContext {
  const ids = { group: ['default'], rule: [] as string[], addressGroup: [] as string[], instance: [] as string[] };
  for (let i = 0; i < 3; i++) {
    ids.group.push(`fz-sg-${i}`);
    ids.rule.push(`fz-r-${i}`);
    ids.addressGroup.push(`fz-ag-${i}`);
    ids.instance.push(`fz-i-${i}`);
  }
  return { rng: new Rng(seed), ids, project, headers };
}

// ---- values that fit a schema ----

function stringFor(key: string, s: Schema, c: FuzzContext): string {
  const r = c.rng;
  if (s.enum) return String(r.pick(s.enum));
  if (s.format === 'date-time') return new Date(Date.UTC(2024, r.int(12), 1 + r.int(28))).toISOString();
  if (key === 'security_group_id' || key === 'remote_group_id') return r.pick(c.ids.group);
  if (key === 'remote_address_group_id') return r.pick(c.ids.addressGroup);
  if (key === 'remote_ip_prefix') return r.pick(['198.18.0.0/24', '198.18.3.4', '0.0.0.0/0', 'fd00:5ec::/64', 'fd00:5ec::1']);
  if (key === 'multiport') return r.pick(['80', '22,443', '8000-8080', '1-65535']);
  if (key === 'protocol') return r.pick(['tcp', 'udp', 'icmp', 'icmpv6', 'sctp', '47']);
  if (key === 'security_groups') return r.pick(c.ids.group);
  if (key === 'addresses') return r.chance(0.7) ? `198.18.0.${1 + r.int(250)}` : `fd00:5ec::${(1 + r.int(4000)).toString(16)}`;
  if (key === 'ip_set') return r.pick(['198.18.0.10', '198.18.7.0/24', '198.18.1.1-198.18.1.9', 'fd00:5ec::10']);
  if (s.pattern === '^\\d+$' || s.pattern === '^\\d{1,3}$') return String(r.int(120));
  if (key === 'id') return `fz-new-${r.int(1e6)}`;
  if (key === 'name') return `fz-n${r.int(1e6)}`;
  if (key === 'marker') return r.pick([...c.ids.group, ...c.ids.rule]);
  if (s.pattern && /\[A-Za-z0-9/.test(s.pattern)) return `fz-${r.int(1e6)}`;
  return r.pick(['a', 'fz text', 'Beschreibung ü', '']);
}

/** A value that fits `s` as far as the generator knows (patterns are met only for the fields it knows). */
export function valueFor(s: Schema | undefined, c: FuzzContext, key = '', depth = 0): unknown {
  if (!s || depth > 8) return null;
  const r = c.rng;
  if ('const' in s) return s.const;
  if (s.enum) return r.pick(s.enum);
  const alts = s.anyOf ?? s.oneOf;
  if (alts) return valueFor(r.pick(alts), c, key, depth + 1);
  const types = Array.isArray(s.type) ? s.type : s.type ? [s.type] : ['string'];
  const type = r.pick(types);
  switch (type) {
    case 'null':
      return null;
    case 'boolean':
      return r.chance(0.5);
    case 'integer':
    case 'number': {
      const lo = Math.max(s.minimum ?? 0, -1000);
      const hi = Math.min(s.maximum ?? 100, lo + 1000);
      return lo + r.int(hi - lo + 1);
    }
    case 'array': {
      const n = Math.max(s.minItems ?? 0, Math.min(s.maxItems ?? 3, 1 + r.int(3)));
      return Array.from({ length: n }, () => valueFor(s.items, c, key, depth + 1));
    }
    case 'object': {
      const o: Record<string, unknown> = {};
      const req = new Set(s.required ?? []);
      for (const [k, v] of Object.entries(s.properties ?? {})) {
        if (k === 'dry_run') continue; // mostly real writes; the mutation may add it
        if (req.has(k) || r.chance(0.6)) o[k] = valueFor(v, c, k, depth + 1);
      }
      return o;
    }
    default:
      return stringFor(key, s, c);
  }
}

// ---- mutations ----

interface Slot {
  parent: Record<string, unknown> | unknown[];
  key: string | number;
  schema: Schema | undefined;
}

/** Every place in `value` (with the schema that describes it, where known). */
function slots(value: unknown, s: Schema | undefined, out: Slot[] = []): Slot[] {
  if (Array.isArray(value)) {
    value.forEach((v, i) => {
      out.push({ parent: value, key: i, schema: s?.items });
      slots(v, s?.items, out);
    });
  } else if (value && typeof value === 'object') {
    const props = objectSchema(s)?.properties ?? {};
    for (const [k, v] of Object.entries(value)) {
      out.push({ parent: value as Record<string, unknown>, key: k, schema: props[k] });
      slots(v, props[k], out);
    }
  }
  return out;
}

function objectSchema(s: Schema | undefined): Schema | undefined {
  if (!s) return undefined;
  if (s.properties) return s;
  return (s.anyOf ?? s.oneOf)?.find((a) => a.properties);
}

function otherType(v: unknown, r: Rng): unknown {
  const options: unknown[] = [42, -7.5, true, 'str', [], {}, [1, 'a'], { a: 1 }];
  let x: unknown;
  do x = r.pick(options);
  while (typeof x === typeof v && Array.isArray(x) === Array.isArray(v));
  return x;
}

function set(slot: Slot, v: unknown): void {
  (slot.parent as Record<string | number, unknown>)[slot.key] = v;
}

/** Applies `mutation` to a body (in place; returns the new root when the root itself is replaced). */
function mutateBody(body: unknown, schema: Schema, mutation: (typeof MUTATIONS)[number], c: FuzzContext): unknown {
  const r = c.rng;
  const all = slots(body, schema);
  const any = all.length ? r.pick(all) : null;
  switch (mutation) {
    case 'wrong_type':
      if (!any) return otherType(body, r);
      set(any, otherType((any.parent as Record<string | number, unknown>)[any.key], r));
      return body;
    case 'boundary': {
      const nums = all.filter((s) => typeof (s.parent as Record<string | number, unknown>)[s.key] === 'number' || /integer|number/.test(JSON.stringify(s.schema?.type ?? s.schema?.anyOf ?? '')));
      const target = nums.length ? r.pick(nums) : any;
      if (target) set(target, r.chance(0.8) ? r.pick(BOUNDARY_NUMBERS) : r.pick(['99999999999999999999', '-1', '0', '1.5']));
      return body;
    }
    case 'huge_string':
      if (any) set(any, 'A'.repeat(r.pick(HUGE)));
      return body;
    case 'unicode':
      if (any) set(any, r.pick(HOSTILE_STRINGS));
      return body;
    case 'null':
      if (!any) return null;
      set(any, null);
      return body;
    case 'extra_field': {
      const objs = all.map((s) => (s.parent as Record<string | number, unknown>)[s.key]).filter((v): v is Record<string, unknown> => !!v && typeof v === 'object' && !Array.isArray(v));
      const target = objs.length && r.chance(0.7) ? r.pick(objs) : (body as Record<string, unknown>);
      if (target && typeof target === 'object') Object.defineProperty(target, r.pick(EXTRA_KEYS), { value: r.pick([1, 'x', { polluted: true }, null]), enumerable: true, configurable: true, writable: true });
      return body;
    }
    case 'missing_field': {
      const objSlots = all.filter((s) => typeof s.key === 'string');
      if (!objSlots.length) return {};
      const s = r.pick(objSlots);
      delete (s.parent as Record<string, unknown>)[s.key as string];
      return body;
    }
    case 'empty':
      if (!any || r.chance(0.3)) return r.pick([{}, [], '', 0]);
      set(any, r.pick([{}, [], '']));
      return body;
    case 'deep':
      // a placeholder, replaced by nested text after serialisation (JSON.stringify recursion would overflow our stack)
      if (!any) return DEEP;
      set(any, DEEP);
      return body;
    default:
      return body;
  }
}

const DEEP = '\u0000fuzz-deep\u0000';
const DEEP_JSON = JSON.stringify(DEEP);

function deepText(r: Rng): string {
  const n = r.pick([50, 1000, 3000]);
  const arrays = r.chance(0.5);
  return arrays ? '['.repeat(n) + '"x"' + ']'.repeat(n) : '{"a":'.repeat(n) + '"x"' + '}'.repeat(n);
}

const NOT_JSON = ['{', '{"a":', 'nul', '\u0000', '{"a":1}{"b":2}', '[1,]', "{'a':1}", '\ufeff{}', '1'.repeat(400), '{"a":"\\ud800"}'];

/** Percent-encodes the UTF-8 bytes of the characters `which` matches (lone surrogates as U+FFFD, where encodeURIComponent throws). */
function pct(s: string, which = /[^A-Za-z0-9\-_.~]/): string {
  let out = '';
  for (const ch of s) out += which.test(ch) ? [...Buffer.from(ch, 'utf8')].map((b) => `%${b.toString(16).toUpperCase().padStart(2, '0')}`).join('') : ch;
  return out;
}

function hostileParam(r: Rng): string {
  return r.pick([...HOSTILE_STRINGS.filter((s) => s !== ''), 'x'.repeat(r.pick([65, 1000, 9000])), '%', '%zz', '..', '.', '%2F', 'a/b', '%00']);
}

/** Path with its parameters filled: existing ids mostly, hostile ones with `bad_param`. */
function fillPath(path: string, c: FuzzContext, hostile: boolean): string {
  const r = c.rng;
  // fully encoded, or raw where the URL syntax allows (printable ASCII but "?" and "#"; "%" left as is)
  const enc = (x: string) => (r.chance(0.7) ? pct(x) : pct(x, /[^\x21-\x7e]|[?#]/));
  // an {id} names a resource of the collection just before it
  const pools: Record<string, string[]> = { 'security-groups': c.ids.group, 'security-group-rules': c.ids.rule, 'address-groups': c.ids.addressGroup, instances: c.ids.instance };
  return path
    .replace('{project_id}', () => (hostile && r.chance(0.3) ? enc(hostileParam(r)) : c.project))
    .replace(/([a-z-]+)\/\{[^}]+\}/g, (_m, collection: string) => {
      const pool = pools[collection] ?? [];
      const id = hostile ? enc(hostileParam(r)) : r.chance(0.85) && pool.length ? r.pick(pool) : `fz-missing-${r.int(100)}`;
      return `${collection}/${id}`;
    });
}

function queryString(op: FuzzOperation, c: FuzzContext, hostile: boolean): string {
  const r = c.rng;
  if (!op.query.length && !hostile) return '';
  const parts: string[] = [];
  for (const q of op.query) {
    if (!r.chance(hostile ? 0.5 : 0.25)) continue;
    const v = hostile ? hostileParam(r) : String(valueFor(q.schema, c, q.name) ?? '');
    parts.push(`${pct(q.name)}=${pct(v)}`);
  }
  if (hostile) parts.push(r.pick(['limit=-1', 'limit=99999999999999999999', 'marker=', 'x=%', 'a[b]=c', '__proto__[x]=1', 'limit=1&limit=2', 'dry_run=true']));
  return parts.length ? `?${parts.join('&')}` : '';
}

/** One request, drawn from the context's generator. */
export function nextRequest(ops: readonly FuzzOperation[], c: FuzzContext): FuzzRequest {
  const r = c.rng;
  // declared operations are where the code is: most requests go there, the rest probe undeclared methods
  const declared = ops.filter((o) => o.declared);
  const op = r.chance(0.8) && declared.length ? r.pick(declared) : r.pick(ops);
  const applicable = MUTATIONS.filter((m) => (op.body ? true : m === 'valid' || m === 'bad_param' || m === 'bad_query' || m === 'not_json' || m === 'huge_header'));
  const mutation = r.pick(applicable);
  const url = fillPath(op.path, c, mutation === 'bad_param') + queryString(op, c, mutation === 'bad_query');
  const headers: Record<string, string> = { ...c.headers };
  let body: string | undefined;
  if (mutation === 'not_json') {
    headers['content-type'] = r.pick(['application/json', 'application/json', 'text/plain', 'application/x-www-form-urlencoded', 'application/json; charset=latin1', 'multipart/form-data; boundary=x']);
    body = r.pick(NOT_JSON);
  } else if (op.body || (op.method !== 'GET' && op.method !== 'HEAD' && op.method !== 'DELETE' && op.method !== 'OPTIONS' && r.chance(0.5))) {
    const schema = op.body ?? { type: 'object', properties: { x: { type: 'string' } } };
    let v = valueFor(schema, c);
    if (mutation !== 'valid' && mutation !== 'bad_param' && mutation !== 'bad_query' && mutation !== 'huge_header') v = mutateBody(v, schema, mutation, c);
    headers['content-type'] = 'application/json';
    body = JSON.stringify(v);
    if (body.includes(DEEP_JSON)) body = body.replace(DEEP_JSON, deepText(r));
  }
  // a GET or HEAD with a body is refused by some clients: send those without
  if ((op.method === 'GET' || op.method === 'HEAD') && body !== undefined && r.chance(0.5)) body = undefined;
  if (body === undefined) delete headers['content-type'];
  // over Node's 16 KiB header limit (431 over a socket; in-process injection has no limit)
  if (mutation === 'huge_header') headers[r.pick(['x-fuzz', 'cookie', 'user-agent'])] = 'a'.repeat(r.pick([9000, 17_000, 70_000]));
  return { op: `${op.method.toLowerCase()} ${op.path}${op.declared ? '' : ' (undeclared)'}`, mutation, method: op.method, url, headers, body };
}

/** Remembers ids of resources a request created, so later requests aim at them. */
export function learnIds(c: FuzzContext, answer: FuzzAnswer): void {
  if (answer.status !== 201) return;
  try {
    const b = JSON.parse(answer.body) as Record<string, { id?: string }>;
    const add = (xs: string[], id: string | undefined) => id && !xs.includes(id) && xs.length < 200 && xs.push(id);
    add(c.ids.group, b.security_group?.id);
    add(c.ids.rule, b.security_group_rule?.id);
    add(c.ids.addressGroup, b.address_group?.id);
    add(c.ids.instance, b.instance?.id);
  } catch {
    // not JSON: problemWith reports it
  }
}

/** Why the answer breaks the API's contract (null: it does not). */
export function problemWith(req: FuzzRequest, a: FuzzAnswer): string | null {
  if (a.status >= 500) return `${a.status} answer`;
  if (a.status < 100) return `no HTTP answer (${a.status})`;
  if (req.method === 'HEAD' || a.status === 204) return null;
  if (req.url.startsWith('/metrics') && a.status === 200) return a.contentType.startsWith('text/plain') ? null : `/metrics answered ${a.contentType}`;
  let body: unknown;
  try {
    body = JSON.parse(a.body);
  } catch {
    return `${a.status} answer is not JSON: ${JSON.stringify(a.body.slice(0, 200))}`;
  }
  if (a.status >= 400) {
    const b = body as Record<string, unknown> | null;
    const keys = b && typeof b === 'object' ? Object.keys(b).sort().join(',') : '';
    if (keys !== 'error_code,error_msg,request_id' || typeof b!.error_code !== 'string' || typeof b!.error_msg !== 'string' || !/^[0-9a-f]{32}$/.test(String(b!.request_id))) {
      return `${a.status} answer is not the API's error shape: ${JSON.stringify(a.body.slice(0, 300))}`;
    }
  }
  return null;
}

/** Counts by operation and mutation, and a status histogram. */
export class FuzzStats {
  readonly byOp = new Map<string, Map<number, number>>();
  readonly byMutation = new Map<string, number>();
  readonly statuses = new Map<number, number>();
  readonly problems: { req: FuzzRequest; answer: FuzzAnswer; problem: string }[] = [];
  total = 0;

  add(req: FuzzRequest, answer: FuzzAnswer): string | null {
    this.total++;
    const st = this.byOp.get(req.op) ?? new Map<number, number>();
    this.byOp.set(req.op, st);
    st.set(answer.status, (st.get(answer.status) ?? 0) + 1);
    this.byMutation.set(req.mutation, (this.byMutation.get(req.mutation) ?? 0) + 1);
    this.statuses.set(answer.status, (this.statuses.get(answer.status) ?? 0) + 1);
    const p = problemWith(req, answer);
    if (p) this.problems.push({ req, answer, problem: p });
    return p;
  }
}
