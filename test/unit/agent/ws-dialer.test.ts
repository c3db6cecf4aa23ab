import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer } from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { WebSocketServer } from 'ws';
import { systemClock } from '../../../src/lib/clock.js';
import { silentLogger } from '../../../src/lib/logger.js';
import { ControllerClient } from '../../../src/agent/controller-client.js';
import { agentUrl, wsDialer } from '../../../src/agent/ws-dialer.js';

describe('ws dialer (loopback)', () => {
  let wss: WebSocketServer | null = null;
  let client: ControllerClient | null = null;
  afterEach(async () => {
    client?.stop();
    client = null;
    if (wss) await new Promise((r) => wss!.close(r));
    wss = null;
  });

  it('puts the agent path on a bare URL', () => {
    expect(agentUrl('wss://ctl:8443')).toBe('wss://ctl:8443/v1/agent');
    expect(agentUrl('ws://198.18.0.1:8080/custom')).toBe('ws://198.18.0.1:8080/custom');
  });

  it('sends the bearer token and hello, receives a policy, and acks', async () => {
    wss = new WebSocketServer({ host: '127.0.0.1', port: 0 });
    await new Promise((r) => wss!.once('listening', r));
    const port = (wss.address() as { port: number }).port;
    const seen: { auth?: string; path?: string; messages: unknown[] } = { messages: [] };
    wss.on('connection', (ws, req) => {
      seen.auth = req.headers.authorization;
      seen.path = req.url;
      ws.on('message', (d) => {
        const m = JSON.parse(String(d)) as { type: string };
        seen.messages.push(m);
        if (m.type === 'hello') ws.send(JSON.stringify({ type: 'policy', policy: { revision: 1 } }));
      });
    });
    const got = new Promise<unknown>((resolve) => {
      client = new ControllerClient({
        dial: wsDialer({ url: `ws://127.0.0.1:${port}`, token: () => 'secret-token', maxPayload: 1 << 20, handshakeTimeoutMs: 2000 }),
        clock: systemClock,
        logger: silentLogger(),
        hello: () => ({ type: 'hello', protocol: 1, instance_id: 'i', agent_version: 'v', applied_revision: null }),
        onPolicy: (p) => {
          client!.send({ type: 'ack', revision: 1, status: 'applied', duration_ms: 1 });
          resolve(p);
        },
      });
      client.start();
    });
    expect(await got).toEqual({ revision: 1 });
    await new Promise((r) => setTimeout(r, 50));
    expect(seen.auth).toBe('Bearer secret-token');
    expect(seen.path).toBe('/v1/agent');
    expect(seen.messages.map((m) => (m as { type: string }).type)).toEqual(['hello', 'ack']);
  });

  it('drops frames over the size limit (ws closes with 1009) and reconnects', async () => {
    wss = new WebSocketServer({ host: '127.0.0.1', port: 0 });
    await new Promise((r) => wss!.once('listening', r));
    const port = (wss.address() as { port: number }).port;
    let connections = 0;
    wss.on('connection', (ws) => {
      connections++;
      ws.send(JSON.stringify({ type: 'policy', policy: { pad: 'x'.repeat(5000) } }));
    });
    const policies: unknown[] = [];
    client = new ControllerClient({
      dial: wsDialer({ url: `ws://127.0.0.1:${port}`, token: () => null, maxPayload: 1024, handshakeTimeoutMs: 2000 }),
      clock: systemClock,
      logger: silentLogger(),
      hello: () => ({ type: 'hello', protocol: 1, instance_id: 'i', agent_version: 'v', applied_revision: null }),
      onPolicy: (p) => policies.push(p),
      reconnectInitialMs: 20,
    });
    client.start();
    for (let i = 0; i < 100 && connections < 2; i++) await new Promise((r) => setTimeout(r, 20));
    expect(connections).toBeGreaterThanOrEqual(2);
    expect(policies).toEqual([]);
  });

  it('retries after the controller rejects the token (HTTP 401)', async () => {
    wss = new WebSocketServer({ host: '127.0.0.1', port: 0, verifyClient: (_info, cb) => cb(false, 401, 'Unauthorized') });
    await new Promise((r) => wss!.once('listening', r));
    const port = (wss.address() as { port: number }).port;
    let attempts = 0;
    const dial = wsDialer({ url: `ws://127.0.0.1:${port}`, token: () => 'bad', maxPayload: 1024, handshakeTimeoutMs: 2000 });
    client = new ControllerClient({
      dial: (events) => {
        attempts++;
        return dial(events);
      },
      clock: systemClock,
      logger: silentLogger(),
      hello: () => ({ type: 'hello', protocol: 1, instance_id: 'i', agent_version: 'v', applied_revision: null }),
      onPolicy: () => undefined,
      reconnectInitialMs: 20,
    });
    client.start();
    for (let i = 0; i < 100 && attempts < 3; i++) await new Promise((r) => setTimeout(r, 20));
    expect(attempts).toBeGreaterThanOrEqual(3);
    expect(client.connected).toBe(false);
  });

  const openssl = spawnSync('openssl', ['version']).status === 0;
  it.skipIf(!openssl)('connects over wss:// verifying the controller against ca_file', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'sg-tls-'));
    try {
      const r = spawnSync('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', join(dir, 'key.pem'), '-out', join(dir, 'cert.pem'), '-days', '1', '-subj', '/CN=localhost', '-addext', 'subjectAltName=IP:127.0.0.1'], { stdio: 'ignore' });
      expect(r.status).toBe(0);
      const cert = readFileSync(join(dir, 'cert.pem'));
      const https = createServer({ cert, key: readFileSync(join(dir, 'key.pem')) });
      wss = new WebSocketServer({ server: https });
      await new Promise<void>((res) => https.listen(0, '127.0.0.1', () => res()));
      const port = (https.address() as { port: number }).port;
      wss.on('connection', (ws) => ws.send(JSON.stringify({ type: 'policy', policy: { tls: true } })));
      const base = { clock: systemClock, logger: silentLogger(), hello: () => ({ type: 'hello' as const, protocol: 1, instance_id: 'i', agent_version: 'v', applied_revision: null }) };
      const got = new Promise<unknown>((resolve) => {
        client = new ControllerClient({ ...base, dial: wsDialer({ url: `wss://127.0.0.1:${port}`, token: () => 't', ca: cert, maxPayload: 1024, handshakeTimeoutMs: 2000 }), onPolicy: resolve });
        client.start();
      });
      expect(await got).toEqual({ tls: true });
      client!.stop();
      // without the CA the self-signed certificate is refused
      let policies = 0;
      client = new ControllerClient({ ...base, dial: wsDialer({ url: `wss://127.0.0.1:${port}`, token: () => 't', maxPayload: 1024, handshakeTimeoutMs: 2000 }), onPolicy: () => policies++, reconnectInitialMs: 1000 });
      client.start();
      await new Promise((res) => setTimeout(res, 300));
      expect(policies).toBe(0);
      client.stop();
      await new Promise<void>((res) => {
        wss!.close(() => https.close(() => res()));
        https.closeAllConnections();
      });
      wss = null;
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
