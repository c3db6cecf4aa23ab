/**
 * Files only the service's own user may read: the controller's database
 * (rules, token hashes) and the agent's last known good policy. New files are
 * created 0600 from the start (open with O_CREAT|O_EXCL and mode 0600, then
 * fchmod on the same descriptor, so the umask can neither widen nor narrow
 * it; the file is never readable by others, not even for a moment).
 * Existing files with group/other bits are tightened to 0600 with a warn log
 * line (`event: file_mode_tightened`).
 *
 * Directories we create get 0700. An existing directory is not changed (it
 * may be shared, e.g. /var/lib or a path an operator chose); a wide one is
 * reported with a warn line (`event: dir_mode_wide`). Synchronous: a few
 * syscalls at start-up, used from the synchronous SQLite opener too.
 */
import { chmodSync, closeSync, constants, fchmodSync, mkdirSync, openSync, statSync, type Stats } from 'node:fs';
import type { Logger } from './logger.js';

export const PRIVATE_FILE_MODE = 0o600;
export const PRIVATE_DIR_MODE = 0o700;

const octal = (m: number) => `0${(m & 0o777).toString(8).padStart(3, '0')}`;

function statOrNull(path: string): Stats | null {
  try {
    return statSync(path);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw e;
  }
}

/** Tightens an existing file with group/other permission bits to 0600 (warn line); no-op for a missing or already private file. */
export function tightenFile(path: string, logger?: Logger): void {
  const st = statOrNull(path);
  if (!st || !st.isFile() || (st.mode & 0o077) === 0) return;
  chmodSync(path, PRIVATE_FILE_MODE);
  logger?.warn(
    { event: 'file_mode_tightened', path, mode_was: octal(st.mode), mode: octal(PRIVATE_FILE_MODE) },
    `${path} was readable by others (mode ${octal(st.mode)}): changed to ${octal(PRIVATE_FILE_MODE)}`,
  );
}

/** Creates `path` empty with mode 0600 if it does not exist; an existing file is tightened (see tightenFile). Throws on I/O errors. */
export function ensurePrivateFile(path: string, logger?: Logger): void {
  let fd: number;
  try {
    fd = openSync(path, constants.O_CREAT | constants.O_EXCL | constants.O_WRONLY, PRIVATE_FILE_MODE);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
    tightenFile(path, logger);
    return;
  }
  try {
    fchmodSync(fd, PRIVATE_FILE_MODE);
  } finally {
    closeSync(fd);
  }
}

/** Creates `dir` (and missing parents) with mode 0700; an existing directory is left as it is, with a warn line when others may enter it. */
export function ensurePrivateDir(dir: string, logger?: Logger): void {
  const created = mkdirSync(dir, { recursive: true, mode: PRIVATE_DIR_MODE });
  if (created !== undefined) {
    // mkdir's mode went through the umask; the directories created now get exactly 0700
    chmodSync(dir, PRIVATE_DIR_MODE);
    return;
  }
  const st = statSync(dir);
  if ((st.mode & 0o077) !== 0) {
    logger?.warn(
      { event: 'dir_mode_wide', path: dir, mode: octal(st.mode) },
      `${dir} has mode ${octal(st.mode)}: its files are 0600, but consider chmod 0700 on the directory`,
    );
  }
}
