/**
 * The HTTP server's edge, below fastify's routing: what happens to a TCP
 * connection before it is a request (docs/security-http.md).
 *
 * - `guardConnections`: counts connections per source address and in total
 *   (WebSocket connections included: an upgrade keeps its socket) and closes
 *   the excess on accept, with a metric and a log line (at most one per
 *   source per 10 s, so a flood does not flood the log too).
 * - `clientErrorHandler`: what Node's HTTP parser gives up on (headers too
 *   large, malformed request line, headers or body not received within the
 *   timeouts) is answered in the API's error shape with a request id (the
 *   headers only to a HEAD), then the connection is closed.
 * - `serverOptions`: the Node server's timeouts from the `http` section.
 */
import { STATUS_CODES, type ServerOptions } from 'node:http';
import type { Server } from 'node:net';
import type { Socket } from 'node:net';
import type { Clock } from '../../lib/clock.js';
import type { Logger } from '../../lib/logger.js';
import { API_ERROR_KINDS, type ApiErrorKind, type ErrorBody } from '../errors.js';
import { sourceKey, type ConnectionLimiter, type HttpLimits } from '../limits.js';
import type { ControllerMetrics } from '../metrics.js';
import type { Random } from '../tokens.js';

const LOG_EVERY_MS = 10_000;

/** Node server options for the timeouts (headers, whole request, keep-alive). */
export function serverOptions(h: HttpLimits): ServerOptions {
  return {
    requestTimeout: h.request_timeout_ms,
    headersTimeout: h.headers_timeout_ms,
    keepAliveTimeout: h.keep_alive_timeout_ms,
    // how often Node looks for requests over their timeout: a fraction of the shortest one
    connectionsCheckingInterval: Math.max(50, Math.min(1000, Math.floor(h.headers_timeout_ms / 4))),
  };
}

export interface EdgeDeps {
  clock: Clock;
  logger: Logger;
  metrics: ControllerMetrics;
}

/** Closes connections over the per-source or total limit as soon as they are accepted. */
export function guardConnections(server: Server, limiter: ConnectionLimiter, d: EdgeDeps): void {
  const log = d.logger.child({ component: 'edge' });
  const lastLogged = new Map<string, { at: number; suppressed: number }>();
  server.on('connection', (socket: Socket) => {
    const source = sourceKey(socket.remoteAddress);
    const verdict = limiter.open(source);
    if (verdict === 'ok') {
      socket.once('close', () => limiter.close(source));
      return;
    }
    socket.destroy();
    d.metrics.connectionsRejected.inc({ reason: verdict });
    const now = d.clock.monotonic();
    const last = lastLogged.get(source);
    if (last && now - last.at < LOG_EVERY_MS) {
      last.suppressed++;
      return;
    }
    if (lastLogged.size >= 10_000) lastLogged.clear();
    lastLogged.set(source, { at: now, suppressed: 0 });
    const limit = verdict === 'per_source' ? limiter.opts.perSource : limiter.opts.total;
    log.warn(
      { event: 'connection_rejected', source, reason: verdict, limit, open_from_source: limiter.count(source), open_total: limiter.openCount, suppressed: last?.suppressed ?? 0 },
      verdict === 'per_source' ? `closing a connection: ${source} already has ${limit} open` : `closing a connection: ${limit} connections are open`,
    );
  });
}

/**
 * One raw HTTP/1.1 answer in the API's error shape (used where there is no
 * fastify reply). `head`: the request was a HEAD, so the answer has the
 * headers only (a client reads any bytes after them as the next answer).
 */
export function rawErrorResponse(kind: ApiErrorKind, requestId: string, message: string, extraHeaders: Record<string, string> = {}, head = false): string {
  const k = API_ERROR_KINDS[kind];
  const body = JSON.stringify({ request_id: requestId, error_code: k.apiCode, error_msg: message } satisfies ErrorBody);
  const headers = { 'Content-Type': 'application/json; charset=utf-8', 'Content-Length': String(Buffer.byteLength(body)), 'X-Request-Id': requestId, Connection: 'close', ...extraHeaders };
  const lines = Object.entries(headers).map(([n, v]) => `${n}: ${v}\r\n`).join('');
  return `HTTP/1.1 ${k.status} ${STATUS_CODES[k.status] ?? 'Error'}\r\n${lines}\r\n${head ? '' : body}`;
}

/**
 * Whether the request Node's parser gave up on is a HEAD: known when the
 * packet it failed in starts with the request line (headers over the limit
 * sent at once, as clients do); otherwise the answer keeps its body.
 */
function isHeadRequest(err: Error & { rawPacket?: unknown }): boolean {
  return Buffer.isBuffer(err.rawPacket) && err.rawPacket.subarray(0, 5).toString('latin1') === 'HEAD ';
}

/** fastify's `clientErrorHandler`: Node's parser errors and timeouts in the API's error shape. */
export function clientErrorHandler(d: EdgeDeps & { random: Random; limits: HttpLimits }): (err: Error & { code?: string }, socket: Socket) => void {
  const log = d.logger.child({ component: 'edge' });
  return (err: Error & { code?: string; rawPacket?: unknown }, socket) => {
    if (err.code === 'ECONNRESET' || socket.destroyed) return;
    if (/^ERR_(TLS|SSL)_/.test(err.code ?? '')) {
      // before the TLS handshake completed (its timeout, a bad ClientHello): there is no
      // channel to answer on; writing would wait for a handshake that never comes
      d.metrics.clientErrors.inc({ status: 'tls' });
      log.info({ event: 'client_error', status: 'tls', code: err.code, source: sourceKey(socket.remoteAddress) }, `TLS handshake failed: ${err.message}`);
      socket.destroy();
      return;
    }
    let kind: ApiErrorKind;
    let message: string;
    if (err.code === 'ERR_HTTP_REQUEST_TIMEOUT') {
      kind = 'timeout';
      message = `the request was not received in time (headers within ${d.limits.headers_timeout_ms} ms, the whole request within ${d.limits.request_timeout_ms} ms)`;
    } else if (err.code === 'HPE_HEADER_OVERFLOW') {
      kind = 'headersTooLarge';
      message = 'the request headers are too large';
    } else {
      kind = 'invalid';
      message = `malformed HTTP request (${err.code ?? 'parse error'})`;
    }
    const requestId = d.random.requestId();
    const status = API_ERROR_KINDS[kind].status;
    d.metrics.clientErrors.inc({ status: String(status) });
    log.info({ event: 'client_error', request_id: requestId, status, code: err.code, source: sourceKey(socket.remoteAddress) }, message);
    // as Node does: answer only when no response has started on this connection
    const current = (socket as Socket & { _httpMessage?: { headersSent?: boolean } | null })._httpMessage;
    if (socket.writable && !current?.headersSent) socket.end(rawErrorResponse(kind, requestId, message, {}, isHeadRequest(err)));
    socket.destroySoon();
  };
}
