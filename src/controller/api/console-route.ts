/**
 * The web console's static files at `/console` (same port, same TLS as the
 * API). The files are built by Vite from `console/` (`npm run build`) into
 * `dist/console`; the controller is handed that directory (`consoleDir`,
 * found by the CLI: console-dir.ts) and reads it once at start into memory
 * (a few files, about 100 KB): a request never touches the file system, so
 * no path from a URL ever reaches it.
 *
 * - `/console` and every `/console/<path>` that is not a built file answer
 *   `index.html` (the console routes in the browser's history: every view
 *   has its own URL, and a reload of it works); files under `assets/` have
 *   content hashes in their names and are cached as immutable.
 * - Every answer carries a strict Content-Security-Policy (scripts and
 *   styles only from the controller itself, no inline script, no eval,
 *   connections only to the controller) and the usual security headers.
 * - Without a directory (not built), `/console` answers 404 saying how to
 *   build it.
 */
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { extname, join, relative } from 'node:path';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { ApiError } from '../errors.js';

export const CONSOLE_CSP = [
  "default-src 'self'",
  "script-src 'self'",
  "style-src 'self'",
  "img-src 'self' data:",
  "connect-src 'self'",
  "font-src 'self'",
  "object-src 'none'",
  "base-uri 'none'",
  "form-action 'self'",
  "frame-ancestors 'none'",
].join('; ');

export const CONSOLE_HEADERS: Readonly<Record<string, string>> = {
  'content-security-policy': CONSOLE_CSP,
  'x-content-type-options': 'nosniff',
  'x-frame-options': 'DENY',
  'referrer-policy': 'no-referrer',
  'cross-origin-opener-policy': 'same-origin',
  'cross-origin-resource-policy': 'same-origin',
  'permissions-policy': 'camera=(), microphone=(), geolocation=()',
};

const TYPES: Readonly<Record<string, string>> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.svg': 'image/svg+xml',
  '.png': 'image/png',
  '.ico': 'image/x-icon',
  '.json': 'application/json; charset=utf-8',
  '.txt': 'text/plain; charset=utf-8',
};

interface ConsoleFile {
  body: Buffer;
  type: string;
  immutable: boolean;
}

/** Every file under `dir` by its URL path below /console/ (e.g. `assets/index-3f2a.js`). */
export function loadConsoleFiles(dir: string): Map<string, ConsoleFile> {
  const files = new Map<string, ConsoleFile>();
  const walk = (d: string): void => {
    for (const name of readdirSync(d)) {
      const full = join(d, name);
      if (statSync(full).isDirectory()) walk(full);
      else {
        const rel = relative(dir, full).split('\\').join('/');
        files.set(rel, { body: readFileSync(full), type: TYPES[extname(name)] ?? 'application/octet-stream', immutable: rel.startsWith('assets/') });
      }
    }
  };
  walk(dir);
  return files;
}

export function registerConsoleRoutes(app: FastifyInstance, dir: string | null): void {
  const files = dir ? loadConsoleFiles(dir) : new Map<string, ConsoleFile>();
  const index = files.get('index.html');
  const serve = async (req: FastifyRequest, reply: FastifyReply): Promise<FastifyReply> => {
    if (!index) throw new ApiError('noSuchApi', 'the web console is not built into this controller: run `npm run build` (it builds dist/console), or install the secgroup-controller package');
    const path = (req.url.split('?')[0] ?? '').replace(/^\/console\/?/, '');
    const file = files.get(path) ?? (path.startsWith('assets/') ? undefined : index);
    if (!file) throw new ApiError('noSuchApi', `no such console file: /console/${path.slice(0, 200)}`);
    void reply.headers(CONSOLE_HEADERS);
    void reply.header('cache-control', file.immutable ? 'public, max-age=31536000, immutable' : 'no-cache');
    return reply.type(file.type).send(file.body);
  };
  app.get('/console', serve);
  app.get('/console/*', serve);
}
