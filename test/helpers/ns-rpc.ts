/**
 * A JSON-lines RPC process for integration tests, run inside a network
 * namespace (`ip netns exec <ns> tsx test/helpers/ns-rpc.ts`): it makes the
 * HTTP API calls and TCP connects that the test process (root namespace)
 * cannot make itself. Commands arrive as JSON lines on stdin
 * (`{id, cmd: 'http' | 'connect', ...}`), answers leave as
 * `{event: 'reply', id, ...}` lines on stdout. Exits when stdin closes.
 */
import { tryConnect } from './tcp-connect.js';
import { createInterface } from 'node:readline';

interface Command {
  id: number;
  cmd: string;
  method?: string;
  url?: string;
  headers?: Record<string, string>;
  body?: unknown;
  host?: string;
  port?: number;
  timeoutMs?: number;
}

const emit = (o: Record<string, unknown>) => process.stdout.write(JSON.stringify(o) + '\n');

async function http(c: Command): Promise<Record<string, unknown>> {
  const init: RequestInit = { method: c.method ?? 'GET', headers: { ...(c.headers ?? {}) } };
  if (c.body !== undefined) {
    init.body = JSON.stringify(c.body);
    (init.headers as Record<string, string>)['content-type'] = 'application/json';
  }
  try {
    const r = await fetch(c.url!, { ...init, signal: AbortSignal.timeout(c.timeoutMs ?? 10_000) });
    const text = await r.text();
    let body: unknown = text;
    try {
      body = text ? JSON.parse(text) : null;
    } catch {
      // not JSON: keep the text
    }
    return { status: r.status, body };
  } catch (e) {
    return { status: 0, error: (e as Error).message };
  }
}

createInterface({ input: process.stdin }).on('line', (line) => {
  let c: Command;
  try {
    c = JSON.parse(line) as Command;
  } catch {
    return;
  }
  void (async () => {
    if (c.cmd === 'http') emit({ event: 'reply', id: c.id, ...(await http(c)) });
    else if (c.cmd === 'connect') emit({ event: 'reply', id: c.id, ok: await tryConnect(c.host!, c.port!, c.timeoutMs ?? 1000) });
    else emit({ event: 'reply', id: c.id, error: `unknown command ${c.cmd}` });
  })();
});
process.stdin.on('close', () => process.exit(0));
emit({ event: 'ready' });
