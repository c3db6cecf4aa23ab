/**
 * A long-lived child process spoken to in JSON lines: each request is one JSON
 * object with an `id` on stdin, each answer one JSON object with the same `id`
 * on stdout (`{id, ok: true, result}` or `{id, ok: false, error}`). The first
 * line the process prints must be `{"ready": true}`.
 *
 * Used for the python helpers (inject.py, netagent.py) that run inside the
 * test namespaces via `ip netns exec`.
 */
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { createInterface } from 'node:readline';

interface Pending {
  resolve: (value: unknown) => void;
  reject: (err: Error) => void;
  op: string;
}

export class JsonLineProcess {
  private readonly child: ChildProcessWithoutNullStreams;
  private readonly pending = new Map<number, Pending>();
  private nextId = 1;
  private stderr = '';
  private exited = false;
  private readonly exitPromise: Promise<void>;
  private readonly readyPromise: Promise<void>;

  private constructor(
    private readonly label: string,
    command: string,
    args: readonly string[],
  ) {
    this.child = spawn(command, args, { stdio: ['pipe', 'pipe', 'pipe'] });
    this.child.stderr.setEncoding('utf8');
    this.child.stderr.on('data', (chunk: string) => {
      // keep the tail only: enough for an error message
      this.stderr = (this.stderr + chunk).slice(-8000);
    });
    // A write after the child died must not become an unhandled 'error' event.
    this.child.stdin.on('error', () => undefined);
    let markReady: () => void = () => undefined;
    let failReady: (err: Error) => void = () => undefined;
    this.readyPromise = new Promise<void>((resolve, reject) => {
      markReady = resolve;
      failReady = reject;
    });
    // never let an early failure surface as an unhandled rejection; start() awaits it
    this.readyPromise.catch(() => undefined);
    const lines = createInterface({ input: this.child.stdout });
    lines.on('line', (line) => {
      let msg: { id?: number; ok?: boolean; result?: unknown; error?: string; ready?: boolean };
      try {
        msg = JSON.parse(line) as typeof msg;
      } catch {
        this.stderr += `\n[unparsable stdout line] ${line}`;
        return;
      }
      if (msg.ready) {
        markReady();
        return;
      }
      const p = msg.id === undefined ? undefined : this.pending.get(msg.id);
      if (!p) return;
      this.pending.delete(msg.id as number);
      if (msg.ok) p.resolve(msg.result);
      else p.reject(new Error(`${this.label}: ${p.op} failed: ${msg.error ?? 'unknown error'}`));
    });
    this.exitPromise = new Promise<void>((resolve) => {
      const finish = (why: string) => {
        if (this.exited) return;
        this.exited = true;
        const err = new Error(`${this.label} exited (${why})${this.stderr ? `; stderr:\n${this.stderr}` : ''}`);
        failReady(err);
        for (const p of this.pending.values()) p.reject(err);
        this.pending.clear();
        resolve();
      };
      this.child.on('exit', (code, signal) => finish(signal ? `signal ${signal}` : `code ${String(code)}`));
      this.child.on('error', (e) => finish(e.message));
    });
  }

  /** Starts the process and waits for its `{"ready": true}` line. */
  static async start(label: string, command: string, args: readonly string[], readyTimeoutMs = 10_000): Promise<JsonLineProcess> {
    const proc = new JsonLineProcess(label, command, args);
    let timer: NodeJS.Timeout | undefined;
    try {
      await Promise.race([
        proc.readyPromise,
        new Promise<never>((_, reject) => {
          timer = setTimeout(() => reject(new Error(`${label} not ready after ${readyTimeoutMs} ms; stderr:\n${proc.stderr}`)), readyTimeoutMs);
        }),
      ]);
    } catch (err) {
      await proc.kill();
      throw err;
    } finally {
      clearTimeout(timer);
    }
    return proc;
  }

  get pid(): number | undefined {
    return this.child.pid;
  }

  get alive(): boolean {
    return !this.exited;
  }

  request<T>(op: string, params: Record<string, unknown> = {}): Promise<T> {
    if (this.exited) return Promise.reject(new Error(`${this.label} is not running; stderr:\n${this.stderr}`));
    const id = this.nextId++;
    return new Promise<T>((resolve, reject) => {
      this.pending.set(id, { resolve: resolve as (v: unknown) => void, reject, op });
      this.child.stdin.write(`${JSON.stringify({ ...params, id, op })}\n`);
    });
  }

  /** Closes stdin (the helpers exit on EOF), then SIGKILLs after `graceMs`. Idempotent. */
  async kill(graceMs = 500): Promise<void> {
    if (this.exited) return;
    this.child.stdin.end();
    const timer = setTimeout(() => {
      if (!this.exited) this.child.kill('SIGKILL');
    }, graceMs);
    await this.exitPromise;
    clearTimeout(timer);
  }

  /** Synchronous last-resort kill, for process 'exit' handlers. */
  killNow(): void {
    if (!this.exited && this.child.pid !== undefined) {
      try {
        process.kill(this.child.pid, 'SIGKILL');
      } catch {
        // already gone
      }
    }
  }
}
