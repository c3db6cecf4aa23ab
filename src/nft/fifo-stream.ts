/**
 * The FIFO end of the helper shell's streamed calls (shell-spawner.ts
 * openStream): how the caller opens the FIFO its command reads, writes the
 * input into it, and releases a reader left by a dead process. Why a FIFO and
 * what keeps a cut input from ever being applied: see shell-spawner.ts.
 */
import { closeSync, constants as fsConstants, open, openSync, statSync, unlinkSync, write, writeSync } from 'node:fs';

/** Characters gathered into one write(2) of a bigger input (a streamed call's after its first chunk, shell-spawner's input file). */
export const WRITE_PIECE_CHARS = 64 * 1024;

/** The most bytes one write(2) puts into a pipe whole (POSIX PIPE_BUF on Linux): the first chunk of a streamed call. */
export const PIPE_BUF = 4096;


export function isFifo(path: string): boolean {
  try {
    return statSync(path).isFIFO();
  } catch {
    return false;
  }
}

/** Bytes a streamed call's producer may have queued before it waits for the command to read (memory stays bounded). */
const QUEUED_BYTES = 1024 * 1024;

/**
 * The input of a streamed call on its way into the FIFO, in order. The first
 * part (at most PIPE_BUF bytes: the caller checks) is written at once with
 * one write, whole; each later part with fs.write in the thread pool, issued
 * as soon as the part before it is written, or at once when nothing is in
 * flight: a part pushed before synchronous work (the agent's compile) is read
 * by the command while that work runs. A part written partly (a signal) is
 * written on from where it stopped. The command gone (EPIPE), everything
 * queued is dropped.
 */
export class FifoFeed {
  private fd: number | null = null;
  private readonly parts: Buffer[] = [];
  private queued = 0;
  private inFlight = false;
  private first = true;
  private stopped = false;
  private waiters: (() => void)[] = [];

  /** The FIFO is open for writing (`fd`, blocking): what is queued starts on its way. False (fd not taken) when attached already. */
  attach(fd: number): boolean {
    if (this.fd !== null) return false;
    this.fd = fd;
    this.pump();
    return true;
  }

  get attached(): boolean {
    return this.fd !== null;
  }

  /**
   * Attaches the FIFO `pipe` now, without waiting, when its reader has it open already (then unlinks it, see
   * shell-spawner.ts runStream): a part pushed next is written while the caller's synchronous work runs, where
   * the thread pool's open (openWriter) completes only when the event loop turns. Nothing happens otherwise.
   */
  attachIfRead(pipe: string): void {
    if (this.fd !== null || this.stopped) return;
    let probe: number;
    try {
      // fails (ENXIO) while nobody has it open for reading
      probe = openSync(pipe, fsConstants.O_WRONLY | fsConstants.O_NONBLOCK);
    } catch {
      return;
    }
    try {
      // a reader is there: opening it blocking returns at once, and writes in the thread pool may block
      const fd = openSync(pipe, fsConstants.O_WRONLY);
      unlinkSync(pipe);
      this.attach(fd);
    } catch {
      // gone meanwhile: the thread pool's open decides
    } finally {
      closeSync(probe);
    }
  }

  /** Closes the FIFO (the end of the input, once drained); the feed writes nothing more. */
  close(): void {
    this.stop();
    const fd = this.fd;
    this.fd = null;
    if (fd !== null) closeSync(fd);
  }

  push(text: string): void {
    if (this.stopped || !text) return;
    const buf = Buffer.from(text, 'utf8');
    this.parts.push(buf);
    this.queued += buf.length;
    this.pump();
  }

  /** Nothing more is written (the command exited or is killed): what is queued is dropped. */
  stop(): void {
    this.stopped = true;
    this.parts.length = 0;
    this.queued = 0;
    this.wake();
  }

  /** Resolves once every part pushed is written (or the feed stopped). */
  drained(): Promise<void> {
    return this.idle() ? Promise.resolve() : new Promise((resolve) => this.waiters.push(resolve));
  }

  /** Resolves once at most QUEUED_BYTES wait to be written: a producer's pause. */
  room(): Promise<void> {
    return this.queued <= QUEUED_BYTES || this.stopped ? Promise.resolve() : this.drained();
  }

  private idle(): boolean {
    return this.stopped || (!this.inFlight && this.parts.length === 0);
  }

  private wake(): void {
    if (!this.idle()) return;
    for (const w of this.waiters.splice(0)) w();
  }

  private pump(): void {
    if (this.fd === null || this.inFlight || this.stopped) return;
    const buf = this.parts.shift();
    if (!buf) return this.wake();
    this.queued -= buf.length;
    const fd = this.fd;
    if (this.first) {
      this.first = false;
      // into the empty pipe, at most PIPE_BUF bytes: one write, whole, never waiting
      try {
        writeSync(fd, buf);
      } catch {
        return this.stop(); // EPIPE: the command exited; its exit says why
      }
      return this.pump();
    }
    this.inFlight = true;
    const from = (off: number): void =>
      write(fd, buf, off, buf.length - off, null, (err, n) => {
        if (err) {
          this.inFlight = false;
          return this.stop();
        }
        if (off + n < buf.length && !this.stopped) return from(off + n);
        this.inFlight = false;
        this.pump();
      });
    from(0);
  }
}

/**
 * Opens the FIFO `pipe` for writing, which completes once a reader has it open (the command started; in the
 * thread pool, the event loop runs meanwhile). Null when the command exited first (`settled`): the pending open is
 * then released by opening the FIFO for reading here, and closed; null too when the FIFO is gone because the
 * feed `attached` it meanwhile.
 */
export function openWriter(pipe: string, settled: Promise<void>, attached: () => boolean = () => false): Promise<number | null> {
  return new Promise((resolve) => {
    let gone = false;
    const attempt = () =>
      open(pipe, fsConstants.O_WRONLY, (err, fd) => {
        if (gone) {
          if (!err) closeSync(fd);
          return;
        }
        // not made yet: a shell started again makes it at its start, before it runs the command
        // (or attached by then, and unlinked: FifoFeed.attachIfRead)
        if (err?.code === 'ENOENT' && !attached()) return void setTimeout(attempt, 5);
        gone = true;
        resolve(err ? null : fd);
      });
    attempt();
    void settled.then(() => {
      if (gone) return;
      gone = true;
      try {
        // a reader appears: the open above completes (and is closed there)
        closeSync(openSync(pipe, fsConstants.O_RDONLY | fsConstants.O_NONBLOCK));
      } catch {
        // the FIFO is gone (the directory was removed): the open above failed already
      }
      resolve(null);
    });
  });
}

/**
 * An nft left reading the FIFO of a dead process (killed in the instant between nft opening it and the unlink,
 * runStream) can wait for a writer forever once it has reported its cut input: opening the FIFO for writing, and
 * closing it, lets it finish. Best effort; nothing happens when nobody reads it.
 */
export function releaseReader(pipe: string): void {
  try {
    if (isFifo(pipe)) closeSync(openSync(pipe, fsConstants.O_WRONLY | fsConstants.O_NONBLOCK));
  } catch {
    // ENXIO: no reader
  }
}
