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
