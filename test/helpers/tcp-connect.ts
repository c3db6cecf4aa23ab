/** A TCP connect as the namespace helper processes (lab-peer.ts, ns-rpc.ts) make it: a verdict observed from a real connection. */
import { connect } from 'node:net';

/** true: connected; false: refused, reset or no answer within `timeoutMs`. */
export function tryConnect(host: string, port: number, timeoutMs: number): Promise<boolean> {
  return new Promise((resolve) => {
    const sock = connect({ host, port, timeout: timeoutMs });
    const done = (ok: boolean) => {
      sock.destroy();
      resolve(ok);
    };
    sock.once('connect', () => done(true));
    sock.once('timeout', () => done(false));
    sock.once('error', () => done(false));
  });
}
