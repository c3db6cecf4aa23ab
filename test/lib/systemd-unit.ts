/**
 * Reading systemd unit files and systemd's syscall groups, for the deployment
 * tests: the unit tests check the hardening settings, the kernel test builds
 * its sandbox emulation from the very settings the unit declares.
 */
import { execFileSync } from 'node:child_process';

/** A unit file as an ordered list of (section, key, value); comments and blank lines dropped. */
export interface UnitEntry {
  section: string;
  key: string;
  value: string;
}

/** Parses unit file text (no line continuations are used in ours; a trailing backslash is rejected). */
export function parseUnit(text: string): UnitEntry[] {
  const entries: UnitEntry[] = [];
  let section = '';
  for (const [i, raw] of text.split('\n').entries()) {
    const line = raw.trim();
    if (line === '' || line.startsWith('#') || line.startsWith(';')) continue;
    if (line.endsWith('\\')) throw new Error(`line ${i + 1}: continuation lines are not supported by this parser`);
    const s = /^\[([A-Za-z]+)\]$/.exec(line);
    if (s) {
      section = s[1]!;
      continue;
    }
    const eq = line.indexOf('=');
    if (eq < 1 || !section) throw new Error(`line ${i + 1}: not KEY=VALUE inside a section: ${raw}`);
    entries.push({ section, key: line.slice(0, eq).trim(), value: line.slice(eq + 1).trim() });
  }
  return entries;
}

/** Every value of KEY in SECTION, in order (systemd list settings accumulate; an empty value resets, kept here as ''). */
export function values(unit: UnitEntry[], section: string, key: string): string[] {
  return unit.filter((e) => e.section === section && e.key === key).map((e) => e.value);
}

/** The single value of KEY (throws when missing or repeated). */
export function value(unit: UnitEntry[], section: string, key: string): string {
  const v = values(unit, section, key);
  if (v.length !== 1) throw new Error(`[${section}] ${key}= appears ${v.length} times, expected once`);
  return v[0]!;
}

/** Space-separated words of all values of KEY, in order. */
export function words(unit: UnitEntry[], section: string, key: string): string[] {
  return values(unit, section, key).flatMap((v) => v.split(/\s+/).filter(Boolean));
}

const C_ESCAPES: Record<string, string> = { a: '\x07', b: '\b', f: '\f', n: '\n', r: '\r', t: '\t', v: '\v', s: ' ', '\\': '\\', '"': '"', "'": "'" };

/**
 * The words of one `Environment=` value as systemd splits them
 * (extract_first_word with EXTRACT_UNQUOTE|EXTRACT_CUNESCAPE): separated by
 * whitespace; single or double quotes, anywhere in a word, keep whitespace
 * and are dropped; C escapes (`\n`, `\t`, `\s`, `\\`, `\"`, `\xNN`, octal
 * `\NNN`, `\uXXXX`) are decoded, inside quotes too. Before that `%%` becomes
 * `%` (specifier expansion). Throws where systemd would ignore the whole
 * line with a warning (an unterminated quote, a trailing backslash, an
 * unknown escape) and on other specifiers (`%n`, ...: unit-dependent, which
 * this reader does not know).
 */
export function environmentWords(value: string): string[] {
  const text = value.replace(/%(.?)/g, (m, c: string) => {
    if (c === '%') return '%';
    throw new Error(`Environment=${value}: specifier ${m} is not supported by this reader`);
  });
  const words: string[] = [];
  let word: string | null = null;
  let quote: string | null = null;
  for (let i = 0; i < text.length; i++) {
    const c = text[i]!;
    if (c === '\\') {
      const e = text[i + 1];
      if (e === undefined) throw new Error(`Environment=${value}: trailing backslash`);
      const hex = e === 'x' ? /^[0-9a-fA-F]{2}/.exec(text.slice(i + 2)) : e === 'u' ? /^[0-9a-fA-F]{4}/.exec(text.slice(i + 2)) : null;
      const oct = /^[0-7]{3}/.exec(text.slice(i + 1));
      let decoded: string;
      if (hex) {
        decoded = String.fromCodePoint(parseInt(hex[0], 16));
        i += 1 + hex[0].length;
      } else if (oct) {
        decoded = String.fromCodePoint(parseInt(oct[0], 8));
        i += oct[0].length;
      } else if (e in C_ESCAPES) {
        decoded = C_ESCAPES[e]!;
        i += 1;
      } else throw new Error(`Environment=${value}: unknown escape \\${e}`);
      word = (word ?? '') + decoded;
    } else if (quote) {
      if (c === quote) quote = null;
      else word += c;
    } else if (c === '"' || c === "'") {
      quote = c;
      word ??= '';
    } else if (/\s/.test(c)) {
      if (word !== null) words.push(word);
      word = null;
    } else word = (word ?? '') + c;
  }
  if (quote) throw new Error(`Environment=${value}: unterminated quote`);
  if (word !== null) words.push(word);
  return words;
}

/**
 * The variables `Environment=` values set, in order, as systemd.exec(5)
 * says: each value a list of NAME=VALUE words (environmentWords), a later
 * assignment of a name overrides an earlier one, an empty value resets
 * every assignment before it, and a word that is not a valid assignment is
 * ignored (systemd logs it).
 */
export function environment(values: string[]): Record<string, string> {
  let env: Record<string, string> = {};
  for (const v of values) {
    if (v === '') {
      env = {};
      continue;
    }
    for (const w of environmentWords(v)) {
      const eq = w.indexOf('=');
      const name = eq > 0 ? w.slice(0, eq) : '';
      if (/^[A-Za-z_][A-Za-z0-9_]*$/.test(name)) env[name] = w.slice(eq + 1);
    }
  }
  return env;
}

/** Parses `systemd-analyze syscall-filter` output into group name -> members (syscalls and @groups). */
export function parseSyscallGroups(text: string): Map<string, string[]> {
  const groups = new Map<string, string[]>();
  let current: string[] | null = null;
  for (const raw of text.split('\n')) {
    const header = /^(@[\w-]+)$/.exec(raw);
    if (header) {
      current = [];
      groups.set(header[1]!, current);
      continue;
    }
    const member = raw.trim();
    if (member === '') {
      current = null;
      continue;
    }
    if (current && !member.startsWith('#')) current.push(member);
  }
  return groups;
}

export function expandSyscalls(groups: Map<string, string[]>, name: string, seen = new Set<string>()): Set<string> {
  if (!name.startsWith('@')) return new Set([name]);
  const members = groups.get(name);
  if (!members) throw new Error(`unknown syscall group ${name}`);
  const out = new Set<string>();
  if (seen.has(name)) return out;
  seen.add(name);
  for (const m of members) for (const s of expandSyscalls(groups, m, seen)) out.add(s);
  return out;
}

/**
 * The syscalls a unit's SystemCallFilter= lines allow, the way systemd
 * combines them: the first line is an allow list (to which systemd adds
 * @default); later lines starting with `~` remove from it. Throws if the
 * first line is a deny list (not what our units use, not emulated).
 */
export function allowedSyscalls(groups: Map<string, string[]>, filterLines: string[]): Set<string> {
  const [first, ...rest] = filterLines;
  if (first === undefined || first.startsWith('~')) throw new Error('expected SystemCallFilter= to start with an allow list');
  const allowed = expandSyscalls(groups, '@default');
  for (const n of first.split(/\s+/).filter(Boolean)) for (const s of expandSyscalls(groups, n)) allowed.add(s);
  for (const line of rest) {
    const deny = line.startsWith('~');
    for (const n of line.replace(/^~/, '').split(/\s+/).filter(Boolean)) {
      for (const s of expandSyscalls(groups, n)) {
        if (deny) allowed.delete(s);
        else allowed.add(s);
      }
    }
  }
  return allowed;
}

/** `systemd-analyze`'s path, or null when it is not installed. */
export function systemdAnalyzePath(): string | null {
  for (const p of ['/usr/bin/systemd-analyze', '/bin/systemd-analyze']) {
    try {
      execFileSync(p, ['--version'], { stdio: 'ignore' });
      return p;
    } catch {
      // next
    }
  }
  return null;
}
