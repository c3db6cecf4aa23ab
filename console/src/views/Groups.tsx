/** Security groups: the list (with a create form), one group with its rules in matching order, address groups. */
import { useState } from 'preact/hooks';
import { api, ApiFailure } from '../api';
import { describeRule, fieldErrors, href, matchingOrder, type FieldErrors } from '../logic';
import type { AddressGroup, Group, Rule } from '../types';
import { Badge, ErrorBox, Link, Loading, navigate, useApp, useGet, useLive, useRendered } from '../ui';

export function Groups() {
  const { session } = useApp();
  const groups = useGet<{ security_groups: Group[] }>('/vpc/security-groups');
  useLive((e, d) => e.event === 'change' && d.resource_type === 'security_group', groups.reload);
  useRendered('groups', groups.data !== null);
  const [form, setForm] = useState({ id: '', name: '', description: '' });
  const [errors, setErrors] = useState<FieldErrors>({ fields: {}, general: [] });
  const submit = async (e: Event) => {
    e.preventDefault();
    try {
      const body = { security_group: { ...(form.id ? { id: form.id } : {}), name: form.name, description: form.description } };
      const r = await api<{ security_group: Group }>(session, 'POST', '/vpc/security-groups', body);
      setErrors({ fields: {}, general: [] });
      navigate(href.group(r.security_group.id));
    } catch (err) {
      setErrors(err instanceof ApiFailure ? fieldErrors(err.message, 'security_group', ['id', 'name', 'description']) : { fields: {}, general: [String(err)] });
    }
  };
  return (
    <section aria-labelledby="h-groups">
      <h1 id="h-groups">Security groups</h1>
      <Loading loaded={groups} />
      <ErrorBox error={groups.error} />
      {groups.data && (
        <div class="scroll">
          <table>
            <thead>
              <tr>
                <th scope="col">Name</th>
                <th scope="col">ID</th>
                <th scope="col">Description</th>
              </tr>
            </thead>
            <tbody>
              {groups.data.security_groups.map((g) => (
                <tr key={g.id}>
                  <td>
                    <Link href={href.group(g.id)}>{g.name || g.id}</Link>
                  </td>
                  <td class="mono">{g.id}</td>
                  <td>{g.description}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
      <h2>Create a security group</h2>
      <form onSubmit={submit} class="form" aria-label="Create a security group">
        <Field label="ID (optional)" name="id" value={form.id} error={errors.fields.id} onInput={(v) => setForm({ ...form, id: v })} placeholder="sg-web" />
        <Field label="Name" name="name" value={form.name} error={errors.fields.name} onInput={(v) => setForm({ ...form, name: v })} />
        <Field label="Description" name="description" value={form.description} error={errors.fields.description} onInput={(v) => setForm({ ...form, description: v })} />
        {errors.general.map((m) => (
          <p class="error" role="alert" key={m}>
            {m}
          </p>
        ))}
        <button type="submit">Create group</button>
      </form>
    </section>
  );
}

/** A labelled input with its validation message (from the API) right below it. */
export function Field(props: { label: string; name: string; value: string; error?: string | undefined; onInput: (v: string) => void; placeholder?: string; list?: string }) {
  const id = `f-${props.name}`;
  return (
    <div class="field">
      <label for={id}>{props.label}</label>
      <input
        id={id}
        name={props.name}
        value={props.value}
        placeholder={props.placeholder}
        list={props.list}
        aria-invalid={props.error ? 'true' : undefined}
        aria-describedby={props.error ? `${id}-error` : undefined}
        onInput={(e) => props.onInput((e.target as HTMLInputElement).value)}
      />
      {props.error && (
        <span class="field-error" id={`${id}-error`}>
          {props.error}
        </span>
      )}
    </div>
  );
}

export function Select(props: { label: string; name: string; value: string; options: readonly (string | [string, string])[]; onInput: (v: string) => void; error?: string | undefined }) {
  const id = `f-${props.name}`;
  return (
    <div class="field">
      <label for={id}>{props.label}</label>
      <select id={id} name={props.name} value={props.value} aria-invalid={props.error ? 'true' : undefined} onChange={(e) => props.onInput((e.target as HTMLSelectElement).value)}>
        {props.options.map((o) => {
          const [v, t] = typeof o === 'string' ? [o, o] : o;
          return (
            <option value={v} key={v}>
              {t}
            </option>
          );
        })}
      </select>
      {props.error && <span class="field-error">{props.error}</span>}
    </div>
  );
}

const RULE_FIELDS = ['direction', 'ethertype', 'protocol', 'multiport', 'remote_ip_prefix', 'remote_group_id', 'remote_address_group_id', 'priority', 'action', 'description'] as const;
type RuleForm = Record<(typeof RULE_FIELDS)[number], string>;
const EMPTY_RULE: RuleForm = { direction: 'ingress', ethertype: 'IPv4', protocol: 'tcp', multiport: '', remote_ip_prefix: '', remote_group_id: '', remote_address_group_id: '', priority: '1', action: 'allow', description: '' };

interface Impact {
  instances: string[];
  internet: { opened: { instance_id: string; protocol: string; port: number; ethertype: string }[]; closed: { instance_id: string; protocol: string; port: number; ethertype: string }[] };
}

function ruleBody(groupId: string, f: RuleForm): Record<string, unknown> {
  const r: Record<string, unknown> = { security_group_id: groupId, direction: f.direction, ethertype: f.ethertype, action: f.action, description: f.description };
  if (f.protocol) r.protocol = f.protocol;
  if (f.multiport) r.multiport = f.multiport;
  if (f.remote_ip_prefix) r.remote_ip_prefix = f.remote_ip_prefix;
  if (f.remote_group_id) r.remote_group_id = f.remote_group_id;
  if (f.remote_address_group_id) r.remote_address_group_id = f.remote_address_group_id;
  // a number when it is one; otherwise sent as typed, so the API names the field
  r.priority = /^\d+$/.test(f.priority) ? Number(f.priority) : f.priority;
  return r;
}

export function GroupDetail(props: { id: string }) {
  const { session } = useApp();
  const group = useGet<{ security_group: Group }>(`/vpc/security-groups/${encodeURIComponent(props.id)}`, [props.id]);
  useLive((e, d) => e.event === 'change' && (d.resource_type === 'security_group_rule' || d.resource_type === 'security_group'), group.reload, [props.id]);
  useRendered('group', group.data !== null);
  const [form, setForm] = useState<RuleForm>(EMPTY_RULE);
  const [errors, setErrors] = useState<FieldErrors>({ fields: {}, general: [] });
  const [impact, setImpact] = useState<Impact | null>(null);
  const [notice, setNotice] = useState('');
  const send = async (dryRun: boolean) => {
    try {
      const r = await api<{ impact?: Impact }>(session, 'POST', '/vpc/security-group-rules', { security_group_rule: ruleBody(props.id, form), ...(dryRun ? { dry_run: true } : {}) });
      setErrors({ fields: {}, general: [] });
      if (dryRun) {
        setImpact(r.impact ?? null);
        setNotice(r.impact ? '' : 'The rule is valid (dry run); this controller does not compute the impact.');
      } else {
        setImpact(null);
        setForm(EMPTY_RULE);
        setNotice('Rule added.');
        group.reload();
      }
    } catch (err) {
      setImpact(null);
      setNotice('');
      setErrors(err instanceof ApiFailure ? fieldErrors(err.message, 'security_group_rule', RULE_FIELDS) : { fields: {}, general: [String(err)] });
    }
  };
  const remove = async (rule: Rule) => {
    try {
      await api(session, 'DELETE', `/vpc/security-group-rules/${encodeURIComponent(rule.id)}`);
      setNotice(`Rule ${rule.id} deleted.`);
      group.reload();
    } catch (err) {
      setNotice(`Could not delete rule ${rule.id}: ${(err as Error).message}`);
    }
  };
  const g = group.data?.security_group;
  const rules = g?.security_group_rules ?? [];
  const set = (k: keyof RuleForm) => (v: string) => setForm({ ...form, [k]: v });
  return (
    <section aria-labelledby="h-group">
      <p class="crumbs">
        <Link href={href.groups()}>Security groups</Link> /
      </p>
      <h1 id="h-group">{g ? g.name || g.id : props.id}</h1>
      <Loading loaded={group} />
      <ErrorBox error={group.error} />
      {g && (
        <>
          <p>
            <span class="mono">{g.id}</span> {g.description && <>· {g.description}</>}
          </p>
          <p class="muted">Rules in matching order: priority 1 first, deny before allow at equal priority; the first rule that matches decides, no match drops.</p>
          {(['ingress', 'egress'] as const).map((dir) => (
            <RuleTable key={dir} direction={dir} rules={matchingOrder(rules.filter((r) => r.direction === dir))} onDelete={remove} />
          ))}
        </>
      )}
      <h2>Add a rule</h2>
      <form
        class="form"
        aria-label="Add a rule"
        onSubmit={(e) => {
          e.preventDefault();
          void send(false);
        }}
      >
        <div class="grid">
          <Select label="Direction" name="direction" value={form.direction} options={['ingress', 'egress']} onInput={set('direction')} error={errors.fields.direction} />
          <Select label="Ethertype" name="ethertype" value={form.ethertype} options={['IPv4', 'IPv6']} onInput={set('ethertype')} error={errors.fields.ethertype} />
          <Select label="Protocol" name="protocol" value={form.protocol} options={[['', 'any'], 'tcp', 'udp', 'icmp', 'icmpv6', 'sctp']} onInput={set('protocol')} error={errors.fields.protocol} />
          <Field label="Ports (multiport)" name="multiport" value={form.multiport} placeholder="22,80,8000-8080" onInput={set('multiport')} error={errors.fields.multiport} />
          <Field label="Remote IP prefix" name="remote_ip_prefix" value={form.remote_ip_prefix} placeholder="0.0.0.0/0" onInput={set('remote_ip_prefix')} error={errors.fields.remote_ip_prefix} />
          <Field label="Remote group" name="remote_group_id" value={form.remote_group_id} onInput={set('remote_group_id')} error={errors.fields.remote_group_id} />
          <Field label="Remote address group" name="remote_address_group_id" value={form.remote_address_group_id} onInput={set('remote_address_group_id')} error={errors.fields.remote_address_group_id} />
          <Field label="Priority (1-100)" name="priority" value={form.priority} onInput={set('priority')} error={errors.fields.priority} />
          <Select label="Action" name="action" value={form.action} options={['allow', 'deny']} onInput={set('action')} error={errors.fields.action} />
          <Field label="Description" name="description" value={form.description} onInput={set('description')} error={errors.fields.description} />
        </div>
        {errors.general.map((m) => (
          <p class="error" role="alert" key={m}>
            {m}
          </p>
        ))}
        <div class="buttons">
          <button type="button" onClick={() => void send(true)}>
            Preview impact
          </button>
          <button type="submit">Add rule</button>
        </div>
        {impact && <ImpactView impact={impact} />}
        {notice && (
          <p class="notice" role="status">
            {notice}
          </p>
        )}
      </form>
    </section>
  );
}

function ImpactView(props: { impact: Impact }) {
  const { instances, internet } = props.impact;
  return (
    <div class="impact" role="status" aria-label="Impact of the change">
      <p>
        Changes the policy of {instances.length} instance(s)
        {instances.length > 0 && ': '}
        {instances.slice(0, 20).map((id, i) => (
          <span key={id}>
            {i > 0 && ', '}
            <Link href={href.instance(id)}>{id}</Link>
          </span>
        ))}
        {instances.length > 20 && ', …'}.
      </p>
      {(['opened', 'closed'] as const).map((k) => (
        <p key={k}>
          {k === 'opened' ? 'Becomes reachable from the internet: ' : 'No longer reachable from the internet: '}
          {internet[k].length === 0 ? 'nothing' : internet[k].map((p) => `${p.instance_id} ${p.protocol}/${p.port} (${p.ethertype})`).join(', ')}
        </p>
      ))}
    </div>
  );
}

function RuleTable(props: { direction: 'ingress' | 'egress'; rules: Rule[]; onDelete: (r: Rule) => void }) {
  const hash = decodeURIComponent(location.hash.replace(/^#rule-/, ''));
  return (
    <>
      <h2>{props.direction === 'ingress' ? 'Inbound rules' : 'Outbound rules'}</h2>
      {props.rules.length === 0 ? (
        <p class="muted">No {props.direction} rules: all {props.direction} traffic is dropped unless another group allows it.</p>
      ) : (
        <div class="scroll">
          <table>
            <thead>
              <tr>
                <th scope="col">#</th>
                <th scope="col">Priority</th>
                <th scope="col">Action</th>
                <th scope="col">Match</th>
                <th scope="col">Description</th>
                <th scope="col">Rule ID</th>
                <th scope="col">
                  <span class="sr-only">Actions</span>
                </th>
              </tr>
            </thead>
            <tbody>
              {props.rules.map((r, i) => (
                <tr key={r.id} id={`rule-${r.id}`} class={`${hash === r.id ? 'target' : ''}${r.enabled ? '' : ' disabled'}`}>
                  <td>{i + 1}</td>
                  <td>{r.priority}</td>
                  <td>
                    <Badge kind={r.action === 'allow' ? 'ok' : 'bad'}>{r.action}</Badge>
                    {!r.enabled && <Badge kind="muted">disabled</Badge>}
                  </td>
                  <td>
                    {describeRule(r)} <span class="small">{r.ethertype}</span>
                  </td>
                  <td>{r.description}</td>
                  <td class="mono">{r.id}</td>
                  <td>
                    <button type="button" class="danger" aria-label={`Delete rule ${r.id}`} onClick={() => props.onDelete(r)}>
                      Delete
                    </button>
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
    </>
  );
}

export function AddressGroups() {
  const groups = useGet<{ address_groups: AddressGroup[] }>('/vpc/address-groups');
  useLive((e, d) => e.event === 'change' && d.resource_type === 'address_group', groups.reload);
  useRendered('address-groups', groups.data !== null);
  return (
    <section aria-labelledby="h-ag">
      <h1 id="h-ag">Address groups</h1>
      <Loading loaded={groups} />
      <ErrorBox error={groups.error} />
      {groups.data && groups.data.address_groups.length === 0 && <p>No address groups.</p>}
      {groups.data && groups.data.address_groups.length > 0 && (
        <div class="scroll">
          <table>
            <thead>
              <tr>
                <th scope="col">Name</th>
                <th scope="col">ID</th>
                <th scope="col">IP version</th>
                <th scope="col">Entries</th>
                <th scope="col">Description</th>
              </tr>
            </thead>
            <tbody>
              {groups.data.address_groups.map((a) => (
                <tr key={a.id}>
                  <td>{a.name}</td>
                  <td class="mono">{a.id}</td>
                  <td>IPv{a.ip_version}</td>
                  <td class="mono">{a.ip_set.join(', ') || '(empty: matches nothing)'}</td>
                  <td>{a.description}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
    </section>
  );
}
