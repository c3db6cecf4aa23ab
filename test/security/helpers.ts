/* eslint-disable @typescript-eslint/no-explicit-any -- response bodies and log lines are untyped JSON, checked by the assertions */
/**
 * A real controller on 127.0.0.1 (port 0, in-memory store, fake clock for the
 * rate limits) and raw clients for the abuse tests: sockets that send exactly
 * what the test says, from a chosen loopback source address.
 */
import { request } from 'node:http';
import { connect, type Socket } from 'node:net';
import { Writable } from 'node:stream';
import { FakeClock } from '../../src/lib/clock.js';
import { createLogger } from '../../src/lib/logger.js';
import { parseControllerConfig } from '../../src/controller/config.js';
import { createController, type Controller, type ControllerAddress } from '../../src/controller/controller.js';
import { MemoryStore } from '../../src/controller/store/memory.js';

export const ADMIN = 'admin-token-0123456789';
export const SCOPED = 'scoped-token-0123456789';

export interface Running {
  controller: Controller;
  address: ControllerAddress;
  clock: FakeClock;
  logs: any[];
  stop(): Promise<void>;
}

/** `http` and `agents`: the controller configuration's sections of those names (defaults when empty). */
export async function startController(http: Record<string, number> = {}, agents: Record<string, number | boolean> = {}): Promise<Running> {
  const logs: any[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, done) {
      for (const line of chunk.toString('utf8').split('\n')) if (line.trim()) logs.push(JSON.parse(line));
      done();
    },
  });
  const config = parseControllerConfig({
    listen: { host: '127.0.0.1', port: 0 },
    api: {
      tokens: [
        { name: 'admin', token: ADMIN },
        { name: 'scoped', token: SCOPED, projects: ['proj-a'] },
      ],
    },
    ...(Object.keys(http).length ? { http } : {}),
    ...(Object.keys(agents).length ? { agents } : {}),
    log: { level: 'debug' },
    metrics: { process_metrics: false },
  });
  const clock = new FakeClock();
  const controller = createController({ config, clock, store: new MemoryStore(), logger: createLogger({ level: 'debug', destination: sink }) });
  const address = await controller.start();
  return { controller, address, clock, logs, stop: () => controller.stop() };
}

/** A raw TCP client: everything received is collected in `data`; `closed` settles when the server (or we) closed it. */
export class RawClient {
  data = '';
  readonly closed: Promise<void>;
  readonly connected: Promise<void>;
  constructor(readonly socket: Socket) {
    socket.setEncoding('utf8');
    socket.on('data', (d: string) => (this.data += d));
    socket.on('error', () => {});
    this.closed = new Promise((resolve) => socket.once('close', () => resolve()));
    this.connected = new Promise((resolve) => socket.once('connect', () => resolve()));
  }

  static async open(port: number, localAddress = '127.0.0.1'): Promise<RawClient> {
    const c = new RawClient(connect({ host: '127.0.0.1', port, localAddress }));
    await Promise.race([c.connected, c.closed]);
    return c;
  }

  write(text: string): void {
    if (!this.socket.destroyed) this.socket.write(text);
  }

  get isClosed(): boolean {
    return this.socket.destroyed || this.socket.readableEnded;
  }

  /** Status and parsed JSON body of the first response received. */
  response(): { status: number; headers: Record<string, string>; body: any } {
    const [head = '', ...rest] = this.data.split('\r\n\r\n');
    const [statusLine = '', ...headerLines] = head.split('\r\n');
    const headers: Record<string, string> = {};
    for (const l of headerLines) {
      const i = l.indexOf(':');
      headers[l.slice(0, i).trim().toLowerCase()] = l.slice(i + 1).trim();
    }
    const text = rest.join('\r\n\r\n');
    return { status: Number(statusLine.split(' ')[1]), headers, body: text ? JSON.parse(text) : null };
  }

  /** Writes `bytes` one byte every `everyMs` until the connection closes or `bytes` run out. */
  async trickle(bytes: string, everyMs: number): Promise<void> {
    for (const ch of bytes) {
      if (this.isClosed) return;
      await new Promise((r) => setTimeout(r, everyMs));
      this.write(ch);
    }
  }

  destroy(): void {
    this.socket.destroy();
  }
}

/** One HTTP request from a chosen source address; status, headers and JSON body. */
export function httpCall(
  port: number,
  opts: { method?: string; path: string; headers?: Record<string, string>; body?: string; localAddress?: string },
): Promise<{ status: number; headers: Record<string, string | string[] | undefined>; body: any }> {
  return new Promise((resolve, reject) => {
    const req = request(
      { host: '127.0.0.1', port, method: opts.method ?? 'GET', path: opts.path, headers: opts.headers, localAddress: opts.localAddress ?? '127.0.0.1', agent: false },
      (res) => {
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (d: string) => (text += d));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: text ? JSON.parse(text) : null }));
      },
    );
    req.on('error', reject);
    req.end(opts.body);
  });
}

/** The API's error shape with a request id. */
export function expectShape(body: any): { error_code: string; error_msg: string } {
  if (!body || Object.keys(body).join(',') !== 'request_id,error_code,error_msg' || !/^[0-9a-f]{32}$/.test(body.request_id)) {
    throw new Error(`not the API's error shape: ${JSON.stringify(body)}`);
  }
  return body;
}
