/**
 * `GET /v3/{project_id}/events`: the project's live events (events.ts) as
 * server-sent events (text/event-stream), for the console. Authenticated in
 * the app's `onRequest` like every project route (headers only: the console
 * reads the stream with fetch and a stream reader, so the token never goes
 * into a URL as EventSource would need).
 *
 * - Frames: `event: instance|ports|change` + one `data:` JSON line; a comment
 *   line (`: heartbeat`) every `heartbeatMs` (15 s) keeps proxies and the
 *   client's liveness check happy.
 * - Bounded per connection: when more than `maxBufferedBytes` written to the
 *   socket are still unsent (a client that does not read), the stream is
 *   closed (`reason: slow`) instead of buffering; events are hints to
 *   re-read, so the client reconnects and re-reads.
 * - Closed on auth expiry: a stream lives at most `maxStreamMs` (15 minutes,
 *   the AK/SK signature window); the client reconnects and is authenticated
 *   again (a signature past its window, a token removed from the
 *   configuration is then refused).
 * - Counted: `secgroup_controller_event_streams` (open now),
 *   `..._events_sent_total{type}`, `..._event_streams_closed_total{reason}`;
 *   one log line per stream opened and closed.
 */
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { Clock, Timer } from '../../lib/clock.js';
import type { Logger } from '../../lib/logger.js';
import { sseFrame, type ProjectEvent, type ProjectEvents } from '../events.js';
import type { ControllerMetrics } from '../metrics.js';
import { SIGNATURE_WINDOW_MS } from './aksk.js';

export const EVENT_STREAM_DEFAULTS = { heartbeatMs: 15_000, maxBufferedBytes: 256 * 1024, maxStreamMs: SIGNATURE_WINDOW_MS };
export type EventStreamLimits = typeof EVENT_STREAM_DEFAULTS;

export type StreamCloseReason = 'client' | 'slow' | 'auth_expired' | 'shutdown';

export interface EventsRouteOptions {
  events: ProjectEvents;
  clock: Clock;
  logger: Logger;
  metrics: ControllerMetrics;
  limits?: Partial<EventStreamLimits>;
}

/** Registers the route; returns the function that closes every open stream (the app's onClose). */
export function registerEventsRoute(app: FastifyInstance, o: EventsRouteOptions): () => void {
  const limits = { ...EVENT_STREAM_DEFAULTS, ...o.limits };
  const open = new Set<(reason: StreamCloseReason) => void>();
  app.get('/v3/:project_id/events', (req: FastifyRequest, reply: FastifyReply) => {
    const project = (req.params as Record<string, string>).project_id ?? '';
    void reply.hijack();
    const res = reply.raw;
    res.writeHead(200, {
      'content-type': 'text/event-stream; charset=utf-8',
      'cache-control': 'no-store',
      'x-content-type-options': 'nosniff',
      'x-request-id': req.id,
    });
    // the first bytes flush the headers, so the client sees the stream open before any event
    res.write(': stream open\n\n');
    o.metrics.eventStreams.inc();
    o.logger.info({ event: 'events_stream_open', request_id: req.id, project }, 'event stream opened');
    let closed = false;
    const timers: Timer[] = [];
    const close = (reason: StreamCloseReason): void => {
      if (closed) return;
      closed = true;
      unsubscribe();
      open.delete(close);
      for (const t of timers) t.cancel();
      o.metrics.eventStreams.dec();
      o.metrics.eventStreamsClosed.inc({ reason });
      o.logger.info({ event: 'events_stream_closed', request_id: req.id, project, reason }, 'event stream closed');
      if (reason === 'slow') res.destroy();
      else res.end();
    };
    const write = (text: string, type: ProjectEvent['type'] | 'heartbeat'): void => {
      if (closed) return;
      if (res.writableLength > limits.maxBufferedBytes) return close('slow');
      res.write(text);
      o.metrics.eventsSent.inc({ type });
    };
    const unsubscribe = o.events.subscribe(project, (e) => write(sseFrame(e), e.type));
    open.add(close);
    timers.push(o.clock.setInterval(() => write(': heartbeat\n\n', 'heartbeat'), limits.heartbeatMs));
    timers.push(o.clock.setTimeout(() => close('auth_expired'), limits.maxStreamMs));
    res.on('close', () => close('client'));
  });
  return () => {
    for (const close of [...open]) close('shutdown');
  };
}
