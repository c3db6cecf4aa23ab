/**
 * A TCP path from the root namespace's loopback into a test namespace,
 * without touching the network configuration of either: the root side
 * listens on 127.0.0.1 (an ephemeral port) and connects every client to a
 * Unix socket (file system, not network namespaced); the namespace side,
 * this file run as a program inside the namespace, accepts on that Unix
 * socket and connects to host:port there. So a browser in the root
 * namespace can open a controller that listens in a test namespace (the
 * console's browser test; `npm run demo -- --console`).
 *
 *   inside the namespace:  tsx test/helpers/ns-bridge.ts SOCKET HOST PORT   (prints "ready")
 *   in the test process:   const b = await loopbackToUnix(SOCKET); ... b.url; await b.close();
 */
import { createConnection, createServer, type Server, type Socket } from 'node:net';

function splice(a: Socket, b: Socket): void {
  a.pipe(b).pipe(a);
  const end = () => {
    a.destroy();
    b.destroy();
  };
  a.on('error', end).on('close', end);
  b.on('error', end).on('close', end);
}

function closeServer(server: Server, sockets: Set<Socket>): Promise<void> {
  for (const s of sockets) s.destroy();
  return new Promise((resolve) => server.close(() => resolve()));
}

/** The root side: 127.0.0.1:<port> (default an ephemeral one) -> the Unix socket. */
export async function loopbackToUnix(socketPath: string, listenPort = 0): Promise<{ url: string; port: number; close(): Promise<void> }> {
  const sockets = new Set<Socket>();
  const server = createServer((client) => {
    sockets.add(client);
    client.on('close', () => sockets.delete(client));
    splice(client, createConnection(socketPath));
  });
  await new Promise<void>((resolve, reject) => server.once('error', reject).listen(listenPort, '127.0.0.1', resolve));
  const port = (server.address() as { port: number }).port;
  return { url: `http://127.0.0.1:${port}`, port, close: () => closeServer(server, sockets) };
}

// the namespace side
if (process.argv[1]?.endsWith('ns-bridge.ts')) {
  const [socketPath, host, port] = process.argv.slice(2);
  if (!socketPath || !host || !port) {
    console.error('usage: ns-bridge.ts SOCKET HOST PORT');
    process.exit(2);
  }
  const server = createServer((u) => splice(u, createConnection(Number(port), host)));
  server.listen(socketPath, () => console.log('ready'));
  process.on('SIGTERM', () => server.close(() => process.exit(0)));
}
