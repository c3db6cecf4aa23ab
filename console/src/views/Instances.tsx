/** Instances: the list with their state, one instance with its groups, revisions, agent and port table (live). */
import { useState } from 'preact/hooks';
import { api, ApiFailure } from '../api';
import { ago, fieldErrors, filterInstances, healthOf, href, type FieldErrors } from '../logic';
import type { Instance, Ports, PortEntry, Status } from '../types';
import { Badge, ErrorBox, Link, Loading, useApp, useGet, useLive, useRendered } from '../ui';
import { Field } from './Groups';

const HEALTH_TEXT = { 'in-sync': 'applied', 'out-of-date': 'out of date', failing: 'failing', 'no-policy': 'no policy' } as const;

function HealthBadge(props: { status: Status | undefined }) {
  if (!props.status) return <Badge kind="muted">unknown</Badge>;
  const h = healthOf(props.status);
  return <Badge kind={h === 'in-sync' ? 'ok' : h === 'failing' ? 'bad' : 'warn'}>{HEALTH_TEXT[h]}</Badge>;
}

function Connected(props: { status: Status | undefined }) {
  return props.status?.connected ? <Badge kind="ok">connected</Badge> : <Badge kind="muted">not connected</Badge>;
}

/** Rows shown at once: a fleet of thousands is found with the filter, not by scrolling (and renders fast). */
const PAGE = 100;

export function Instances() {
  const instances = useGet<{ instances: Instance[] }>('/instances');
  const statuses = useGet<{ instance_statuses: Status[] }>('/instance-statuses');
  useLive((e) => e.event === 'instance', statuses.reload);
  useLive((e, d) => e.event === 'change' && d.resource_type === 'instance', instances.reload);
  const ready = instances.data !== null && statuses.data !== null;
  useRendered('instances', ready);
  const [filter, setFilter] = useState('');
  const [shown, setShown] = useState(PAGE);
  const byId = new Map((statuses.data?.instance_statuses ?? []).map((s) => [s.instance_id, s]));
  const all = instances.data?.instances ?? [];
  const matching = filterInstances(all, filter);
  return (
    <section aria-labelledby="h-instances">
      <h1 id="h-instances">Instances</h1>
      <Loading loaded={instances} />
      <ErrorBox error={instances.error ?? statuses.error} />
      {ready && (
        <>
          <div class="field filter">
            <label for="f-filter">Filter by name, id, address or group</label>
            <input
              id="f-filter"
              type="search"
              value={filter}
              onInput={(e) => {
                setFilter((e.target as HTMLInputElement).value);
                setShown(PAGE);
              }}
            />
          </div>
          <p class="small" role="status">
            {matching.length === all.length ? `${all.length} instances` : `${matching.length} of ${all.length} instances match`}
            {matching.length > shown ? `, the first ${shown} shown` : ''}
          </p>
          <div class="scroll">
            <table>
              <thead>
                <tr>
                  <th scope="col">Name</th>
                  <th scope="col">Addresses</th>
                  <th scope="col">Security groups (in order)</th>
                  <th scope="col">Policy</th>
                  <th scope="col">Agent</th>
                </tr>
              </thead>
              <tbody>
                {matching.slice(0, shown).map((i) => {
                  const s = byId.get(i.id);
                  return (
                    <tr key={i.id}>
                      <td>
                        <Link href={href.instance(i.id)}>{i.name || i.id}</Link>
                      </td>
                      <td class="mono">{i.addresses.join(', ')}</td>
                      <td>{i.security_groups.join(' → ')}</td>
                      <td>
                        <HealthBadge status={s} /> <span class="small">{s ? `${s.applied_revision ?? '–'} / ${s.desired_revision ?? '–'}` : ''}</span>
                      </td>
                      <td>
                        <Connected status={s} />
                      </td>
                    </tr>
                  );
                })}
              </tbody>
            </table>
          </div>
          {matching.length > shown && (
            <button type="button" onClick={() => setShown(shown + PAGE)}>
              Show {Math.min(PAGE, matching.length - shown)} more
            </button>
          )}
        </>
      )}
    </section>
  );
}

const STATUS_KIND: Record<PortEntry['status'], string> = { open: 'bad', blocked: 'ok', 'local-only': 'muted', 'not-listening': 'muted' };

export function InstanceDetail(props: { id: string }) {
  const { session } = useApp();
  const path = `/instances/${encodeURIComponent(props.id)}`;
  const instance = useGet<{ instance: Instance }>(path, [props.id]);
  const status = useGet<{ status: Status }>(`${path}/status`, [props.id]);
  const ports = useGet<Ports>(`${path}/ports`, [props.id]);
  const mine = (d: Record<string, unknown>) => d.instance_id === props.id;
  useLive((e, d) => e.event === 'instance' && mine(d), status.reload, [props.id]);
  useLive((e, d) => e.event === 'ports' && mine(d), ports.reload, [props.id]);
  useLive((e, d) => e.event === 'change' && (d.resource_type !== 'instance' || (Array.isArray(d.resource_ids) && d.resource_ids.includes(props.id))), () => {
    instance.reload();
    status.reload();
  }, [props.id]);
  useRendered('instance', instance.data !== null && status.data !== null && ports.data !== null);
  const [groupsText, setGroupsText] = useState<string | null>(null);
  const [errors, setErrors] = useState<FieldErrors>({ fields: {}, general: [] });
  const [notice, setNotice] = useState('');
  const inst = instance.data?.instance;
  const st = status.data?.status;
  const saveGroups = async (e: Event) => {
    e.preventDefault();
    const list = (groupsText ?? '').split(/[\s,]+/).filter((x) => x !== '');
    try {
      await api(session, 'PUT', path, { instance: { security_groups: list } });
      setErrors({ fields: {}, general: [] });
      setGroupsText(null);
      setNotice('Security groups saved.');
      instance.reload();
      status.reload();
    } catch (err) {
      setNotice('');
      setErrors(err instanceof ApiFailure ? fieldErrors(err.message.replace(/instance\.security_groups\.\d+/g, 'instance.security_groups'), 'instance', ['security_groups']) : { fields: {}, general: [String(err)] });
    }
  };
  const now = Date.now();
  return (
    <section aria-labelledby="h-instance">
      <p class="crumbs">
        <Link href={href.instances()}>Instances</Link> /
      </p>
      <h1 id="h-instance">{inst ? inst.name || inst.id : props.id}</h1>
      <Loading loaded={instance} />
      <ErrorBox error={instance.error} />
      {inst && (
        <dl class="facts">
          <dt>ID</dt>
          <dd class="mono">{inst.id}</dd>
          <dt>Addresses</dt>
          <dd class="mono">{inst.addresses.join(', ') || 'none'}</dd>
          <dt>Security groups</dt>
          <dd>
            <ol class="inline">
              {inst.security_groups.map((g) => (
                <li key={g}>
                  <Link href={href.group(g)}>{g}</Link>
                </li>
              ))}
            </ol>
          </dd>
          {st && (
            <>
              <dt>Policy</dt>
              <dd data-testid="policy-state">
                <HealthBadge status={st} /> applied revision <strong data-testid="applied-revision">{st.applied_revision ?? '–'}</strong> of desired{' '}
                <strong data-testid="desired-revision">{st.desired_revision ?? '–'}</strong>
              </dd>
              <dt>Agent</dt>
              <dd>
                <Connected status={st} /> last seen {ago(st.last_seen, now)}
                {st.agent.version && <span class="small"> · agent {st.agent.version}{st.agent.hostname ? ` on ${st.agent.hostname}` : ''}</span>}
              </dd>
              <dt>Last error</dt>
              <dd>{st.last_error ? <span class="error">{`${st.last_error.code}: ${st.last_error.message} (revision ${st.last_error.revision ?? '–'}, ${st.last_error.at})`}</span> : 'none'}</dd>
            </>
          )}
        </dl>
      )}
      {inst && (
        <form class="form" aria-label="Security groups of this instance" onSubmit={saveGroups}>
          <Field
            label="Security groups, in matching order (comma-separated)"
            name="security_groups"
            value={groupsText ?? inst.security_groups.join(', ')}
            onInput={setGroupsText}
            error={errors.fields.security_groups}
          />
          {errors.general.map((m) => (
            <p class="error" role="alert" key={m}>
              {m}
            </p>
          ))}
          <button type="submit">Save groups</button>
          {notice && (
            <p class="notice" role="status">
              {notice}
            </p>
          )}
        </form>
      )}
      <h2>Ports</h2>
      <ErrorBox error={ports.error} />
      {ports.data && !ports.data.report && <p>No port report from this instance's agent yet.</p>}
      {ports.data?.report && (
        <>
          <p class="small">
            Reported {ago(ports.data.received_at, now)} against revision {ports.data.report.revision ?? '–'} (read with {ports.data.report.source}).
          </p>
          <div class="scroll">
            <table aria-label="Port table">
              <thead>
                <tr>
                  <th scope="col">Port</th>
                  <th scope="col">Status</th>
                  <th scope="col">Listening on</th>
                  <th scope="col">Deciding rule</th>
                </tr>
              </thead>
              <tbody>
                {ports.data.report.entries.map((p) => (
                  <tr key={`${p.protocol}/${p.port}/${p.family ?? 'any'}`} data-port={`${p.protocol}/${p.port}`}>
                    <td>
                      {p.protocol}/{p.port}
                      {p.family ? <span class="small"> IPv{p.family}</span> : null}
                    </td>
                    <td>
                      <Badge kind={STATUS_KIND[p.status]}>{p.status}</Badge>
                    </td>
                    <td class="mono">{p.listeners.map((l) => `${l.address}${l.process ? ` (${l.process})` : ''}`).join(', ') || '–'}</td>
                    <td>
                      {[...p.denied_by.map((r) => ({ r, deny: true })), ...p.allowed_by.map((r) => ({ r, deny: false }))].map(({ r, deny }, i) => (
                        <span key={`${r.group_id}/${r.rule_id}/${i}`}>
                          {i > 0 && ', '}
                          <Link href={href.group(r.group_id, r.rule_id)}>
                            {deny ? 'denied by ' : 'allowed by '}
                            {r.group_id} / {r.rule_id}
                          </Link>{' '}
                          <span class="small">({r.peers})</span>
                        </span>
                      ))}
                      {p.allowed_by.length + p.denied_by.length === 0 && (p.status === 'blocked' ? 'no rule allows it (default drop)' : '–')}
                    </td>
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
        </>
      )}
      <p>
        <Link href={href.reachability({ to: props.id })}>Ask whether something can reach this instance</Link>
      </p>
    </section>
  );
}
