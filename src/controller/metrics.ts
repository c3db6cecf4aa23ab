/**
 * Prometheus metrics of one controller (its own registry, so several
 * controllers in one test process do not collide).
 */
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';

export interface ControllerMetrics {
  registry: Registry;
  agentsConnected: Gauge;
  pushes: Counter<'reason'>;
  deltas: Counter;
  acks: Counter<'status'>;
  agentMessagesRejected: Counter<'reason'>;
  apiLatency: Histogram<'method' | 'route' | 'status_code'>;
  policiesCompiled: Counter;
  revisionsBumped: Counter;
  connectionsRejected: Counter<'reason'>;
  authRateLimited: Counter<'endpoint'>;
  clientErrors: Counter<'status'>;
  eventStreams: Gauge;
  eventsSent: Counter<'type'>;
  eventStreamsClosed: Counter<'reason'>;
}

export function createMetrics(opts: { defaultMetrics?: boolean } = {}): ControllerMetrics {
  const registry = new Registry();
  if (opts.defaultMetrics ?? true) collectDefaultMetrics({ register: registry, prefix: 'secgroup_controller_' });
  const registers = [registry];
  return {
    registry,
    agentsConnected: new Gauge({ name: 'secgroup_controller_agents_connected', help: 'Agents with a live, authenticated connection', registers }),
    pushes: new Counter({
      name: 'secgroup_controller_policy_pushes_total',
      help: 'Policy documents sent to agents, full or as a membership delta (reason: hello = on connect, change = after an API change, resync = the agent asked for the full document)',
      labelNames: ['reason'],
      registers,
    }),
    deltas: new Counter({
      name: 'secgroup_controller_policy_deltas_total',
      help: 'Changes sent as a membership delta (policy_delta) instead of the full document; also counted in policy_pushes_total',
      registers,
    }),
    acks: new Counter({ name: 'secgroup_controller_acks_total', help: 'Acks received from agents, by status', labelNames: ['status'], registers }),
    agentMessagesRejected: new Counter({
      name: 'secgroup_controller_agent_messages_rejected_total',
      help: 'Agent frames rejected (invalid, rate-limited, too large, wrong instance)',
      labelNames: ['reason'],
      registers,
    }),
    apiLatency: new Histogram({
      name: 'secgroup_controller_api_request_duration_seconds',
      help: 'HTTP API latency by method, route pattern and status code',
      labelNames: ['method', 'route', 'status_code'],
      buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
      registers,
    }),
    policiesCompiled: new Counter({ name: 'secgroup_controller_policies_compiled_total', help: 'Per-instance policy documents compiled after changes', registers }),
    revisionsBumped: new Counter({ name: 'secgroup_controller_revisions_bumped_total', help: 'Policy documents whose content changed (new revision)', registers }),
    connectionsRejected: new Counter({
      name: 'secgroup_controller_connections_rejected_total',
      help: 'TCP connections closed on accept (reason: per_source = over http.max_connections_per_source, total = over http.max_connections)',
      labelNames: ['reason'],
      registers,
    }),
    authRateLimited: new Counter({
      name: 'secgroup_controller_auth_rate_limited_total',
      help: 'Requests refused with 429 because their source address failed authentication too often (endpoint: api = HTTP API, agent = WebSocket upgrade)',
      labelNames: ['endpoint'],
      registers,
    }),
    clientErrors: new Counter({
      name: 'secgroup_controller_http_client_errors_total',
      help: 'Connections the HTTP parser gave up on before a request was routed (status: 400 malformed, 408 timeout, 431 headers too large)',
      labelNames: ['status'],
      registers,
    }),
    eventStreams: new Gauge({ name: 'secgroup_controller_event_streams', help: 'Open console event streams (GET /v3/{project_id}/events)', registers }),
    eventsSent: new Counter({
      name: 'secgroup_controller_events_sent_total',
      help: 'Frames written to console event streams (type: instance, ports, change, heartbeat)',
      labelNames: ['type'],
      registers,
    }),
    eventStreamsClosed: new Counter({
      name: 'secgroup_controller_event_streams_closed_total',
      help: 'Console event streams closed (reason: client = the client went away, slow = too much unsent, auth_expired = lifetime over, shutdown)',
      labelNames: ['reason'],
      registers,
    }),
  };
}
