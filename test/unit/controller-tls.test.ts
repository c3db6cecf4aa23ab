/** TLS: with `tls` configured, the API is https and the agents' endpoint wss, on the same port (real clock). */
import { describe, expect, it, afterAll, beforeAll } from 'vitest';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { request } from 'node:https';
import { connect as tcpConnect } from 'node:net';
import { connect as tlsConnect } from 'node:tls';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import WebSocket from 'ws';
import { silentLogger } from '../../src/lib/logger.js';
import { createController } from '../../src/controller/controller.js';
import { parseControllerConfig } from '../../src/controller/config.js';
import { MemoryStore } from '../../src/controller/store/memory.js';
import { PROTOCOL_VERSION } from '../../src/protocol/messages.js';
import { ADMIN } from './controller-helpers.js';

function hasOpenssl(): boolean {
  try {
    execFileSync('openssl', ['version'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

describe.skipIf(!hasOpenssl())('controller over TLS (needs the openssl command to make a test certificate)', () => {
  let dir: string;
  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'sg-tls-'));
    execFileSync(
      'openssl',
      ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-days', '1', '-subj', '/CN=127.0.0.1', '-addext', 'subjectAltName=IP:127.0.0.1', '-keyout', join(dir, 'key.pem'), '-out', join(dir, 'cert.pem')],
      { stdio: 'ignore' },
    );
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('serves https and wss', { timeout: 15_000 }, async () => {
    const config = parseControllerConfig({
      listen: { host: '127.0.0.1', port: 0 },
      tls: { cert: join(dir, 'cert.pem'), key: join(dir, 'key.pem') },
      api: { tokens: [{ name: 'admin', token: ADMIN }] },
      metrics: { process_metrics: false },
    });
    const ctl = createController({ config, store: new MemoryStore(), logger: silentLogger() });
    const addr = await ctl.start();
    try {
      expect(addr.url).toMatch(/^https:\/\/127\.0\.0\.1:\d+$/);
      expect(addr.agentUrl).toMatch(/^wss:\/\/127\.0\.0\.1:\d+\/v1\/agent$/);
      const ca = readFileSync(join(dir, 'cert.pem'));
      const created = await new Promise<{ status: number; body: string }>((resolve, reject) => {
        const req = request(`${addr.url}/v3/p/instances`, { method: 'POST', ca, headers: { 'content-type': 'application/json', 'x-auth-token': ADMIN } }, (res) => {
          let body = '';
          res.on('data', (d: Buffer) => (body += d.toString()));
          res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
        });
        req.on('error', reject);
        req.end(JSON.stringify({ instance: { id: 'i1', addresses: ['198.18.0.1'] } }));
      });
      expect(created.status).toBe(201);
      const token = JSON.parse(created.body).token as string;
      const ws = new WebSocket(addr.agentUrl, { ca, headers: { authorization: `Bearer ${token}` } });
      const frames: string[] = [];
      await new Promise<void>((resolve, reject) => {
        ws.on('open', () => ws.send(JSON.stringify({ type: 'hello', protocol: PROTOCOL_VERSION, instance_id: 'i1', agent_version: 't', applied_revision: null })));
        ws.on('message', (d) => {
          frames.push(d.toString());
          if (frames.length === 2) resolve();
        });
        ws.on('error', reject);
      });
      expect(JSON.parse(frames[0]!).type).toBe('welcome');
      expect(JSON.parse(frames[1]!).policy.instance.id).toBe('i1');
      // with the real clock (monotonic and wall time differ), frames within the rate limit are accepted
      for (let i = 0; i < 5; i++) ws.send(JSON.stringify({ type: 'ack', revision: 1, status: 'applied' }));
      ws.send(JSON.stringify({ type: 'hello', protocol: PROTOCOL_VERSION, instance_id: 'i1', agent_version: 't', applied_revision: 1 }));
      await new Promise<void>((resolve) => ws.on('message', () => resolve()));
      expect(JSON.parse(frames[2]!).error.message).toMatch(/hello was already received/);
      ws.close();
    } finally {
      await ctl.stop();
    }
  });
  it('closes a connection that never finishes the TLS handshake, and one that finishes it and sends nothing (http.headers_timeout_ms)', { timeout: 15_000 }, async () => {
    const config = parseControllerConfig({
      listen: { host: '127.0.0.1', port: 0 },
      tls: { cert: join(dir, 'cert.pem'), key: join(dir, 'key.pem') },
      api: { tokens: [{ name: 'admin', token: ADMIN }] },
      http: { headers_timeout_ms: 300, request_timeout_ms: 1000 },
      metrics: { process_metrics: false },
    });
    const ctl = createController({ config, store: new MemoryStore(), logger: silentLogger() });
    const addr = await ctl.start();
    try {
      const port = Number(new URL(addr.url).port);
      // (1) a TCP connection that never starts the handshake: closed by the server (Node's default waits 120 s)
      const raw = tcpConnect({ host: '127.0.0.1', port });
      const rawClosed = new Promise<string>((resolve) => raw.on('close', () => resolve('closed by server')));
      raw.on('error', () => undefined);
      // (2) a completed handshake and then silence: closed by the headers timeout
      const ca = readFileSync(join(dir, 'cert.pem'));
      const silent = tlsConnect({ host: '127.0.0.1', port, ca, servername: '127.0.0.1' });
      silent.on('error', () => undefined);
      await new Promise<void>((resolve, reject) => {
        silent.once('secureConnect', () => resolve());
        silent.once('error', reject);
      });
      let answer = '';
      silent.on('data', (d: Buffer) => (answer += d.toString()));
      const silentClosed = new Promise<string>((resolve) => silent.on('close', () => resolve('closed by server')));
      expect(await rawClosed).toBe('closed by server');
      expect(await silentClosed).toBe('closed by server');
      // the silent one got the API's 408 before the close
      expect(answer).toMatch(/^HTTP\/1\.1 408 /);
      expect(answer).toContain('"error_code":"SG.0016"');
    } finally {
      await ctl.stop();
    }
  });
});
