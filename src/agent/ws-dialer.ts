/**
 * The real control-channel socket (ws): `wss://` with an optional CA file, a
 * per-instance bearer token, a frame size limit enforced by ws itself. A
 * target with an `address` is dialled at that address through the socket's
 * `lookup`, so the URL's host name still names the host for TLS (SNI,
 * certificate check) and the Host header. A refused upgrade reports its
 * status and Retry-After (`UpgradeRefused`).
 */
import type { LookupAddress, LookupOptions } from 'node:dns';
import { isIP } from 'node:net';
import WebSocket from 'ws';
import { AGENT_PATH } from '../protocol/messages.js';
import { UpgradeRefused, type Dialer } from './controller-client.js';

export interface WsDialerOptions {
  /** controller base URL (`wss://host:port`) when the client gives no target; AGENT_PATH is appended unless the URL has a path */
  url?: string;
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

type LookupCallback = (err: NodeJS.ErrnoException | null, address: string | LookupAddress[], family?: number) => void;

/** A `lookup` that answers every name with `address` (net.connect asks for one or, with autoSelectFamily, for all). */
function fixedLookup(address: string): (hostname: string, options: LookupOptions, callback: LookupCallback) => void {
  const family = isIP(address);
  return (_hostname, options, callback) => (options.all ? callback(null, [{ address, family }]) : callback(null, address, family));
}

/** Seconds of a Retry-After header (the delay form), in ms; null when absent or not a number. */
function retryAfterMs(header: string | string[] | undefined): number | null {
  const v = Array.isArray(header) ? header[0] : header;
  return v !== undefined && /^\d{1,6}$/.test(v.trim()) ? Number(v) * 1000 : null;
}

export function wsDialer(opts: WsDialerOptions): Dialer {
  return (events, target) => {
    const token = opts.token();
    const base = target?.url ?? opts.url;
    if (base === undefined) throw new Error('no controller URL to dial');
    const ws = new WebSocket(agentUrl(base), {
      headers: token ? { Authorization: `Bearer ${token}` } : {},
      ...(target?.address ? { lookup: fixedLookup(target.address) } : {}),
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
      events.error(new UpgradeRefused(res.statusCode ?? 0, retryAfterMs(res.headers['retry-after'])));
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
