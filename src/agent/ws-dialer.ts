/**
 * The real control-channel socket (ws): `wss://` with an optional CA file, a
 * per-instance bearer token, a frame size limit enforced by ws itself.
 */
import WebSocket from 'ws';
import { AGENT_PATH } from '../protocol/messages.js';
import type { Dialer } from './controller-client.js';

export interface WsDialerOptions {
  /** controller base URL (`wss://host:port`); AGENT_PATH is appended unless the URL has a path */
  url: string;
  /** read on every dial, so a rotated token file is picked up */
  token: () => string | null;
  ca?: Buffer | string;
  maxPayload: number;
  handshakeTimeoutMs: number;
}

export function agentUrl(base: string): string {
  const u = new URL(base);
  if (u.pathname === '/' || u.pathname === '') u.pathname = AGENT_PATH;
  return u.toString();
}

export function wsDialer(opts: WsDialerOptions): Dialer {
  const url = agentUrl(opts.url);
  return (events) => {
    const token = opts.token();
    const ws = new WebSocket(url, {
      headers: token ? { Authorization: `Bearer ${token}` } : {},
      ...(opts.ca !== undefined ? { ca: opts.ca } : {}),
      maxPayload: opts.maxPayload,
      handshakeTimeout: opts.handshakeTimeoutMs,
      perMessageDeflate: false,
    });
    ws.on('open', () => events.open());
    ws.on('message', (data, isBinary) => {
      const buf = Array.isArray(data) ? Buffer.concat(data) : Buffer.isBuffer(data) ? data : Buffer.from(data);
      events.message(isBinary ? '' : buf.toString('utf8'), buf.length);
    });
    ws.on('pong', () => events.pong());
    ws.on('unexpected-response', (_req, res) => {
      events.error(new Error(`controller answered HTTP ${res.statusCode}${res.statusCode === 401 ? ' (token rejected)' : ''}`));
      ws.terminate();
    });
    ws.on('error', (err) => events.error(err));
    ws.on('close', (code, reason) => events.close(code, reason.toString('utf8')));
    return {
      send: (text) => ws.send(text),
      ping: () => ws.ping(),
      close: (code, reason) => ws.close(code, reason),
      terminate: () => ws.terminate(),
    };
  };
}
