/**
 * Reading a policy document from text or a file: JSON, or YAML for `.yaml`/`.yml`.
 */
import { readFile } from 'node:fs/promises';
import { parse as parseYaml } from 'yaml';
import { SecgroupError } from '../lib/errors.js';
import { parsePolicy, type Policy } from './schema.js';

export function isYamlPath(path: string): boolean {
  return /\.ya?ml$/i.test(path);
}

/** Parses JSON or YAML text; throws SecgroupError POLICY_PARSE with the parser's position. */
export function parseDocumentText(text: string, yaml: boolean, what = 'document'): unknown {
  try {
    return yaml ? parseYaml(text) : JSON.parse(text);
  } catch (e) {
    throw new SecgroupError('POLICY_PARSE', `${what} is not valid ${yaml ? 'YAML' : 'JSON'}: ${(e as Error).message}`, { cause: e });
  }
}

/** Reads and validates a policy file; throws POLICY_PARSE / POLICY_INVALID (every problem listed) / STATE_IO. */
export async function loadPolicyFile(path: string): Promise<Policy> {
  let text: string;
  try {
    text = path === '-' ? await readStdin() : await readFile(path, 'utf8');
  } catch (e) {
    throw new SecgroupError('STATE_IO', `cannot read policy file ${path}: ${(e as Error).message}`, { cause: e });
  }
  return parsePolicy(parseDocumentText(text, isYamlPath(path), path === '-' ? 'standard input' : path));
}

async function readStdin(): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const c of process.stdin) chunks.push(c as Buffer);
  return Buffer.concat(chunks).toString('utf8');
}
