/**
 * The real SocketSource against a listener this test opens on 127.0.0.1. It
 * only reads sockets (no firewall, route or address is touched), so it runs in
 * the root namespace; a tool that is not installed is reported, not failed.
 */
import { createServer, type Server } from 'node:net';
import { createSocket, type Socket } from 'node:dgram';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { HostSocketSource, SOCKET_SOURCES } from '../../src/probe/source.js';

let server: Server;
let udp: Socket;
let tcpPort = 0;
let udpPort = 0;

beforeAll(async () => {
  server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  tcpPort = (server.address() as { port: number }).port;
  udp = createSocket('udp4');
  await new Promise<void>((resolve) => udp.bind(0, '127.0.0.1', resolve));
  udpPort = udp.address().port;
});

afterAll(async () => {
  await new Promise<void>((resolve) => server.close(() => resolve()));
  await new Promise<void>((resolve) => udp.close(() => resolve()));
});

describe('HostSocketSource on this host', () => {
  it('finds the test listeners through the default chain', async () => {
    const r = await new HostSocketSource().read();
    expect(SOCKET_SOURCES).toContain(r.source);
    expect(r.listeners).toContainEqual(expect.objectContaining({ protocol: 'tcp', family: 4, address: '127.0.0.1', port: tcpPort }));
    expect(r.listeners).toContainEqual(expect.objectContaining({ protocol: 'udp', family: 4, address: '127.0.0.1', port: udpPort }));
  });

  for (const source of SOCKET_SOURCES) {
    it(`finds them with ${source} alone (when installed)`, async (ctx) => {
      const r = await new HostSocketSource().read({ only: source }).catch((e: Error) => e);
      if (r instanceof Error && /ENOENT/.test(r.message)) ctx.skip();
      if (r instanceof Error) throw r;
      expect(r.source).toBe(source);
      expect(r.listeners).toContainEqual(expect.objectContaining({ protocol: 'tcp', address: '127.0.0.1', port: tcpPort }));
      expect(r.listeners).toContainEqual(expect.objectContaining({ protocol: 'udp', address: '127.0.0.1', port: udpPort }));
    });
  }
});
