/** "Can A reach B?": the form (its values are the URL's query, so an answer can be linked) and the answer with the deciding rules. */
import { useState } from 'preact/hooks';
import { href } from '../logic';
import type { AnalysisRule, Instance, Reachability as Answer, SideVerdict } from '../types';
import { Badge, ErrorBox, Link, navigate, useGet, useRendered } from '../ui';
import { Field, Select } from './Groups';

function RuleLink(props: { rule: AnalysisRule | null; reason: string }) {
  if (!props.rule) return <>{props.reason === 'not_evaluated' ? 'not evaluated (the source is not an instance)' : 'no rule matches: dropped by default'}</>;
  const r = props.rule;
  return (
    <Link href={href.group(r.security_group_id, r.id)}>
      rule {r.id} of {r.security_group_name || r.security_group_id} (priority {r.priority}, {r.action})
    </Link>
  );
}

function Side(props: { name: string; side: SideVerdict }) {
  return (
    <li>
      <strong>{props.name}:</strong> <Badge kind={props.side.verdict === 'allow' ? 'ok' : 'bad'}>{props.side.verdict}</Badge> <RuleLink rule={props.side.rule} reason={props.side.reason} />
    </li>
  );
}

export function Reachability(props: { query: Record<string, string> }) {
  const q = props.query;
  const instances = useGet<{ instances: Instance[] }>('/instances');
  const asked = q.from && q.to ? `/reachability?${new URLSearchParams(q).toString()}` : null;
  const answer = useGet<{ reachability: Answer }>(asked, [asked]);
  const [form, setForm] = useState({ from: q.from ?? '', to: q.to ?? '', protocol: q.protocol ?? 'tcp', port: q.port ?? '', ethertype: q.ethertype ?? '' });
  useRendered('reachability', asked === null ? instances.data !== null : answer.data !== null || answer.error !== null);
  const submit = (e: Event) => {
    e.preventDefault();
    const next: Record<string, string> = { from: form.from.trim(), to: form.to, protocol: form.protocol };
    if (form.port.trim() && (form.protocol === 'tcp' || form.protocol === 'udp')) next.port = form.port.trim();
    if (form.ethertype) next.ethertype = form.ethertype;
    navigate(href.reachability(next));
  };
  const a = asked ? answer.data?.reachability : undefined;
  const names = new Map((instances.data?.instances ?? []).map((i) => [i.id, i.name]));
  return (
    <section aria-labelledby="h-reach">
      <h1 id="h-reach">Reachability</h1>
      <p class="muted">Can traffic from an instance, an address or a network reach an instance? Both sides are evaluated: the source's egress and the destination's ingress, each with its groups in order.</p>
      <form class="form" aria-label="Reachability question" onSubmit={submit}>
        <div class="grid">
          <Field label="From (instance id, IP or CIDR)" name="from" value={form.from} list="instance-ids" placeholder="203.0.113.7 or 0.0.0.0/0" onInput={(v) => setForm({ ...form, from: v })} />
          <Select label="To (instance)" name="to" value={form.to} options={[['', 'choose an instance'], ...(instances.data?.instances ?? []).map((i): [string, string] => [i.id, `${i.name} (${i.id})`])]} onInput={(v) => setForm({ ...form, to: v })} />
          <Select label="Protocol" name="protocol" value={form.protocol} options={['tcp', 'udp', 'icmp', 'any']} onInput={(v) => setForm({ ...form, protocol: v })} />
          <Field label="Port" name="port" value={form.port} placeholder="443" onInput={(v) => setForm({ ...form, port: v })} />
          <Select label="Ethertype" name="ethertype" value={form.ethertype} options={[['', 'inferred'], 'IPv4', 'IPv6']} onInput={(v) => setForm({ ...form, ethertype: v })} />
        </div>
        <datalist id="instance-ids">
          {(instances.data?.instances ?? []).map((i) => (
            <option value={i.id} key={i.id}>
              {i.name}
            </option>
          ))}
        </datalist>
        <button type="submit">Check</button>
      </form>
      <ErrorBox error={asked ? answer.error : null} />
      {a && (
        <div class="answer" role="status" aria-label="Answer">
          <p class="verdict">
            <Badge kind={a.verdict === 'allowed' ? 'ok' : 'bad'}>{a.verdict}</Badge>{' '}
            {a.from.kind === 'instance' && a.from.instance_id ? <Link href={href.instance(a.from.instance_id)}>{names.get(a.from.instance_id) ?? a.from.instance_id}</Link> : (a.from.cidr ?? a.from.address)} ({a.from.address}) →{' '}
            <Link href={href.instance(a.to.instance_id)}>{names.get(a.to.instance_id) ?? a.to.instance_id}</Link> ({a.to.address}) {a.protocol}
            {a.port ? `/${a.port}` : ''} {a.ethertype}
          </p>
          <ul>
            <Side name="Egress of the source" side={a.egress} />
            <Side name="Ingress of the destination" side={a.ingress} />
            <li>
              <strong>Listening:</strong> {a.listening === null ? 'unknown (no port report)' : a.listening ? 'yes' : 'no: nothing listens on this port'}
              {a.ports_reported_at && <span class="small"> (report of {a.ports_reported_at})</span>}
            </li>
          </ul>
        </div>
      )}
    </section>
  );
}

