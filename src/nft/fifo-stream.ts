/**
 * The FIFO end of the helper shell's streamed calls (shell-spawner.ts
 * openStream): how the caller opens the FIFO its command reads, writes the
 * input into it, and releases a reader left by a dead process. Why a FIFO and
 * what keeps a cut input from ever being applied: see shell-spawner.ts.
 */
import { closeSync, constants as fsConstants, open, openSync, statSync } from 'node:fs';
import type { Socket } from 'node:net';

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

/**
 * Writes `chunks` to `out` (a FIFO the command reads): the first chunk alone in one write (at most PIPE_BUF
 * bytes, so it reaches the pipe whole or not at all), the rest gathered into pieces of WRITE_PIECE_CHARS (64 KB),
 * waiting for the command to read when the pipe is full; resolves when all of it is in the pipe. Stops, without
 * an error, when the command exited (`gone`). Throws what the chunks throw, and an internal error for a first
 * chunk over PIPE_BUF bytes (before anything is written).
 */
export async function writeStream(out: Socket, chunks: Iterable<string>, settled: Promise<void>, gone: () => boolean): Promise<void> {
  const written = (text: string) =>
    new Promise<void>((resolve) => {
      let done = false;
      const finish = () => {
        if (done) return;
        done = true;
        resolve();
      };
      // resolves once the text is in the pipe (or the command is gone: nothing more will be read)
      out.write(text, () => finish());
      void settled.then(finish);
    });
  const drained = () =>
    new Promise<void>((resolve) => {
      const finish = () => {
        out.off('drain', finish);
        resolve();
      };
      out.on('drain', finish);
      void settled.then(finish);
    });
  let first = true;
  let piece = '';
  for (const chunk of chunks) {
    if (gone()) return;
    if (first) {
      first = false;
      if (Buffer.byteLength(chunk) > PIPE_BUF) throw new Error(`internal: the first chunk of a streamed input is ${Buffer.byteLength(chunk)} bytes, over PIPE_BUF (${PIPE_BUF})`);
      await written(chunk);
      continue;
    }
    piece += chunk;
    if (piece.length < WRITE_PIECE_CHARS) continue;
    const text = piece;
    piece = '';
    // the pipe holds 64 KB: wait for the command to read before producing more (memory stays bounded)
    if (!out.write(text)) await drained();
  }
  if (piece && !gone()) await written(piece);
}

/**
 * Opens the FIFO `pipe` for writing, which completes once a reader has it open (the command started; in the
 * thread pool, the event loop runs meanwhile). Null when the command exited first (`settled`): the pending open is
 * then released by opening the FIFO for reading here, and closed.
 */
export function openWriter(pipe: string, settled: Promise<void>): Promise<number | null> {
  return new Promise((resolve) => {
    let gone = false;
    const attempt = () =>
      open(pipe, fsConstants.O_WRONLY, (err, fd) => {
        if (gone) {
          if (!err) closeSync(fd);
          return;
        }
        // not made yet: a shell started again makes it at its start, before it runs the command
        if (err?.code === 'ENOENT') return void setTimeout(attempt, 5);
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
