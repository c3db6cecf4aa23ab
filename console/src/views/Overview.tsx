/** Overview: fleet health (connected, out of date, failing), what is exposed to the internet and why, recent changes. */
import { useState } from 'preact/hooks';
import { fleetCounts, href } from '../logic';
import type { AuditEvent, Exposure, Status } from '../types';
import { Badge, ErrorBox, Link, Loading, useGet, useLive, useRendered } from '../ui';

const EXPOSURE_SHOWN = 50;

export function Overview() {
  const statuses = useGet<{ instance_statuses: Status[] }>('/instance-statuses');
  const exposure = useGet<{ exposure: Exposure[]; instances_without_report: string[] }>('/exposure');
  const audit = useGet<{ audit_events: AuditEvent[] }>('/audit-events?limit=10');
  useLive((e) => e.event === 'instance', statuses.reload);
  useLive((e) => e.event === 'ports' || e.event === 'change', exposure.reload);
  useLive((e) => e.event === 'change', () => {
    audit.reload();
    statuses.reload();
  });
  const [all, setAll] = useState(false);
  useRendered('overview', statuses.data !== null && (exposure.data !== null || exposure.error !== null));
  const c = statuses.data ? fleetCounts(statuses.data.instance_statuses) : null;
  const exp = exposure.data?.exposure ?? [];
  const shown = all ? exp : exp.slice(0, EXPOSURE_SHOWN);
  return (
    <section aria-labelledby="h-overview">
      <h1 id="h-overview">Overview</h1>
      <Loading loaded={statuses} />
      <ErrorBox error={statuses.error} what="instance status" />
      {c && (
        <ul class="cards" aria-label="Fleet">
          <li class="card">
            <span class="num">{c.instances}</span> instances
          </li>
          <li class="card">
            <span class="num">{c.connected}</span> connected
          </li>
          <li class={`card${c.outOfDate ? ' warn' : ''}`}>
            <span class="num">{c.outOfDate}</span> out of date
          </li>
          <li class={`card${c.failing ? ' bad' : ''}`}>
            <span class="num">{c.failing}</span> failing
          </li>
        </ul>
      )}
      <h2>Exposed to the internet</h2>
      <p class="muted">Ports that are listening and reachable from 0.0.0.0/0 or ::/0, riskiest first, with the rule that opens each.</p>
      <ErrorBox error={exposure.error} what="exposure" />
      {exposure.data && exp.length === 0 && <p>Nothing listening is reachable from the internet.</p>}
      {exp.length > 0 && (
        <div class="scroll">
          <table>
            <thead>
              <tr>
                <th scope="col">Risk</th>
                <th scope="col">Instance</th>
                <th scope="col">Port</th>
                <th scope="col">Listener</th>
                <th scope="col">From</th>
                <th scope="col">Opened by</th>
              </tr>
            </thead>
            <tbody>
              {shown.map((x) => (
                <tr key={`${x.instance_id}/${x.protocol}/${x.port}/${x.ethertype}/${x.listen_address}`}>
                  <td>
                    <Badge kind={x.risk} title={x.risk_reason}>
                      {x.risk}
                    </Badge>{' '}
                    <span class="small">{x.risk_reason}</span>
                  </td>
                  <td>
                    <Link href={href.instance(x.instance_id)}>{x.instance_name || x.instance_id}</Link>
                  </td>
                  <td>
                    {x.protocol}/{x.port} <span class="small">{x.ethertype}</span>
                  </td>
                  <td>
                    {x.listen_address}
                    {x.process ? ` (${x.process})` : ''}
                  </td>
                  <td>{x.source}</td>
                  <td>
                    <Link href={href.group(x.rule.security_group_id, x.rule.id)}>
                      {x.rule.security_group_name || x.rule.security_group_id} / {x.rule.id}
                    </Link>
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
      {exp.length > EXPOSURE_SHOWN && (
        <button type="button" onClick={() => setAll(!all)}>
          {all ? `Show the first ${EXPOSURE_SHOWN}` : `Show all ${exp.length}`}
        </button>
      )}
      {exposure.data && exposure.data.instances_without_report.length > 0 && (
        <p class="small">
          No port report yet from {exposure.data.instances_without_report.length} instance(s):{' '}
          {exposure.data.instances_without_report.slice(0, 10).map((id, i) => (
            <span key={id}>
              {i > 0 && ', '}
              <Link href={href.instance(id)}>{id}</Link>
            </span>
          ))}
          {exposure.data.instances_without_report.length > 10 && ', …'}
        </p>
      )}
      <h2>Recent changes</h2>
      <ErrorBox error={audit.error} what="audit trail" />
      {audit.data && (
        <ol class="changes">
          {audit.data.audit_events.map((e) => (
            <li key={e.id}>
              <time dateTime={e.time}>{e.time.replace('T', ' ').slice(0, 19)}</time> <strong>{e.operation}</strong> {e.resource_ids.join(', ')} by {e.actor}{' '}
              <Badge kind={e.status < 400 ? 'ok' : 'bad'}>{String(e.status)}</Badge>
            </li>
          ))}
        </ol>
      )}
    </section>
  );
}
