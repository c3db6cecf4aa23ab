/**
 * Last known good: the policy the agent last applied, kept in the state
 * directory so a reboot with the controller down still enforces it
 * (fail-static). Written atomically: temp file, fsync, rename, fsync of the
 * directory. The file is created 0600 and the directory 0700 (they hold the
 * whole policy); a state file found readable by others is tightened at load
 * (src/lib/private-files.ts). A file that cannot be parsed or validated is moved aside (never
 * overwritten, never replaced by "allow all") and reported.
 */
import { open, readFile, rename, unlink, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { SecgroupError, errorMessage } from '../lib/errors.js';
import { packedJsonPieces, packedMembers, parseWithPackedMembers, type PackedMembers } from '../policy/packed-members.js';
import { checkPolicy, type Policy } from '../policy/schema.js';
import { formatIssue } from '../lib/errors.js';
import type { Logger } from '../lib/logger.js';
import { ensurePrivateDir, tightenFile, PRIVATE_FILE_MODE } from '../lib/private-files.js';

export const STATE_FILE = 'policy.json';
const FORMAT = 1;

export type LoadResult =
  | { kind: 'none' }
  | { kind: 'ok'; policy: Policy; savedAt: string | null }
  /** the file was unusable; `error` says why, `movedTo` is where it was kept (null if it could not be moved) */
  | { kind: 'corrupt'; error: SecgroupError; movedTo: string | null };

export interface StateStore {
  /** Reads the last known good policy. Never throws: problems come back as `corrupt` (STATE_CORRUPT / STATE_IO). */
  load(): Promise<LoadResult>;
  /** Reads without side effects (no moving aside): for `status` and dry runs. */
  peek(): Promise<LoadResult>;
  /** Persists `policy` atomically. Throws SecgroupError STATE_IO. */
  save(policy: Policy): Promise<void>;
}

interface StateDocument {
  format: number;
  saved_at: string;
  policy: unknown;
}

/** Parses the state file text (pure). */
export function parseStateText(text: string, path: string): { ok: true; policy: Policy; savedAt: string | null } | { ok: false; error: SecgroupError } {
  let doc: unknown;
  try {
    // long member lists read straight into packed sets (policy/packed-members.ts), as the agent decodes a policy frame
    doc = parseWithPackedMembers(text);
  } catch (e) {
    return { ok: false, error: new SecgroupError('STATE_CORRUPT', `state file ${path} is not valid JSON: ${errorMessage(e)}`, { cause: e }) };
  }
  const d = doc as Partial<StateDocument> | null;
  if (!d || typeof d !== 'object' || d.format !== FORMAT || !('policy' in d)) {
    return { ok: false, error: new SecgroupError('STATE_CORRUPT', `state file ${path} is not a secgroup state document (format ${FORMAT})`) };
  }
  const r = checkPolicy(d.policy);
  if (!r.ok) {
    return {
      ok: false,
      error: new SecgroupError('STATE_CORRUPT', `state file ${path} holds an invalid policy: ${r.issues.slice(0, 5).map(formatIssue).join('; ')}`, { details: r.issues }),
    };
  }
  return { ok: true, policy: r.policy, savedAt: typeof d.saved_at === 'string' ? d.saved_at : null };
}

export function renderStateText(policy: Policy, savedAt: string): string {
  const doc: StateDocument = { format: FORMAT, saved_at: savedAt, policy };
  // compact: the document can list 1M members (indented, writing it took ~2x as long); read it with jq
  return JSON.stringify(doc) + '\n';
}

/** Member lists and address group entries longer than this are written a slice at a time (`writeStateText`). */
const SLICE = 4096;

/**
 * Writes `renderStateText(policy, savedAt)` to `fh`, the same bytes,
 * without building them as one string: the long lists (a group's members,
 * an address group's entries) are written a slice of SLICE at a time in
 * place of a placeholder in the rest of the document. A 100k-member
 * document took ~50 ms of CPU per write as one string and its buffer
 * (~2 MB each, straight into the old generation, where they start full
 * GCs) and ~22 ms this way; a delta stream writes one every 30 s.
 */
export async function writeStateText(fh: FileHandle, policy: Policy, savedAt: string): Promise<void> {
  const nonce = randomBytes(8).toString('hex');
  const lists: (readonly string[] | PackedMembers)[] = [];
  const placeholder = (list: readonly string[] | PackedMembers): readonly string[] | string => {
    if (Array.isArray(list) && list.length <= SLICE) return list;
    lists.push(list);
    return `\u0000${nonce}:${lists.length - 1}`;
  };
  // the same keys in the same order (a spread keeps a key where it was), the long lists replaced; a packed list
  // (policy/packed-members.ts) is written from its words, its strings never built
  const groupMembers: Record<string, readonly string[] | string> = {};
  for (const g of Object.keys(policy.group_members)) groupMembers[g] = placeholder(packedMembers(policy.group_members, g) ?? policy.group_members[g]!);
  const short = { ...policy, address_groups: policy.address_groups.map((ag) => (ag.ip_set.length > SLICE ? { ...ag, ip_set: placeholder(ag.ip_set) } : ag)), group_members: groupMembers };
  const text = renderStateText(short as unknown as Policy, savedAt);
  // where each list goes, in the order of the text
  const places = lists.map((list, n) => {
    const token = JSON.stringify(`\u0000${nonce}:${n}`);
    const i = text.indexOf(token);
    if (i < 0) throw new Error('internal: a list placeholder is missing from the state text');
    return { list, i, end: i + token.length };
  });
  places.sort((a, b) => a.i - b.i);
  let at = 0;
  for (const { list, i, end } of places) {
    await fh.writeFile(text.slice(at, i), 'utf8');
    at = end;
    if (!Array.isArray(list)) {
      // each piece written before the next is made (they share one buffer)
      for (const piece of packedJsonPieces(list as PackedMembers, SLICE)) await fh.writeFile(piece);
      continue;
    }
    for (let k = 0; k < list.length; k += SLICE) {
      const slice = JSON.stringify(list.slice(k, k + SLICE));
      // '[a,b' ... ',c,d' ... ',e]': each slice without its brackets but the first's and the last's
      await fh.writeFile((k === 0 ? '[' : ',') + slice.slice(1, -1) + (k + SLICE >= list.length ? ']' : ''), 'utf8');
    }
  }
  await fh.writeFile(text.slice(at), 'utf8');
}

export class FileStateStore implements StateStore {
  readonly path: string;

  /** `now` gives the wall clock (for `saved_at` and the name of a file moved aside); `logger` gets the warnings about file modes. */
  constructor(
    readonly dir: string,
    private readonly now: () => number,
    private readonly logger?: Logger,
  ) {
    this.path = join(dir, STATE_FILE);
  }

  async peek(): Promise<LoadResult> {
    let text: string;
    try {
      text = await readFile(this.path, 'utf8');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return { kind: 'none' };
      return { kind: 'corrupt', error: new SecgroupError('STATE_IO', `cannot read state file ${this.path}: ${errorMessage(e)}`, { cause: e }), movedTo: null };
    }
    const r = parseStateText(text, this.path);
    return r.ok ? { kind: 'ok', policy: r.policy, savedAt: r.savedAt } : { kind: 'corrupt', error: r.error, movedTo: null };
  }

  async load(): Promise<LoadResult> {
    try {
      tightenFile(this.path, this.logger);
    } catch (e) {
      this.logger?.warn({ event: 'file_mode_tighten_failed', path: this.path, err: e }, `cannot make ${this.path} private (0600): ${errorMessage(e)}`);
    }
    const r = await this.peek();
    if (r.kind !== 'corrupt' || r.error.code !== 'STATE_CORRUPT') return r;
    const aside = `${this.path}.corrupt-${new Date(this.now()).toISOString().replace(/[:.]/g, '-')}`;
    try {
      await rename(this.path, aside);
      return { ...r, movedTo: aside };
    } catch {
      return r;
    }
  }

  async save(policy: Policy): Promise<void> {
    const tmp = `${this.path}.tmp-${randomBytes(6).toString('hex')}`;
    try {
      ensurePrivateDir(this.dir, this.logger);
      const fh = await open(tmp, 'wx', PRIVATE_FILE_MODE);
      try {
        await fh.chmod(PRIVATE_FILE_MODE); // exactly 0600, whatever the umask
        await writeStateText(fh, policy, new Date(this.now()).toISOString());
        await fh.sync();
      } finally {
        await fh.close();
      }
      await rename(tmp, this.path);
      const dh = await open(this.dir, 'r');
      try {
        await dh.sync();
      } finally {
        await dh.close();
      }
    } catch (e) {
      await unlink(tmp).catch(() => undefined);
      throw new SecgroupError('STATE_IO', `cannot write state file ${this.path}: ${errorMessage(e)}`, { cause: e });
    }
  }
}

/** In-memory store for tests; `text` is the "file" (null = absent), so tests can corrupt it. */
export class MemoryStateStore implements StateStore {
  text: string | null = null;
  saves = 0;
  movedAside: string[] = [];
  failNextSave: SecgroupError | null = null;

  constructor(policy?: Policy) {
    if (policy) this.text = renderStateText(policy, '2024-01-01T00:00:00.000Z');
  }

  async peek(): Promise<LoadResult> {
    if (this.text === null) return { kind: 'none' };
    const r = parseStateText(this.text, 'memory');
    return r.ok ? { kind: 'ok', policy: r.policy, savedAt: r.savedAt } : { kind: 'corrupt', error: r.error, movedTo: null };
  }

  async load(): Promise<LoadResult> {
    const r = await this.peek();
    if (r.kind !== 'corrupt') return r;
    this.movedAside.push(this.text!);
    this.text = null;
    return { ...r, movedTo: 'memory.corrupt' };
  }

  async save(policy: Policy): Promise<void> {
    if (this.failNextSave) {
      const e = this.failNextSave;
      this.failNextSave = null;
      throw e;
    }
    this.saves++;
    this.text = renderStateText(policy, '2024-01-01T00:00:00.000Z');
  }

  get policy(): Policy | null {
    if (this.text === null) return null;
    const r = parseStateText(this.text, 'memory');
    return r.ok ? r.policy : null;
  }
}
