/**
 * The web console's files at /console: served from the built directory with
 * a strict CSP and security headers, index.html for every view's URL (history
 * routing), hashed assets as immutable, and a clear 404 when not built; where
 * the CLI finds the directory; `GET /instance-statuses` (the overview's one read).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { CONSOLE_CSP } from '../../src/controller/api/console-route.js';
import { consoleDirCandidates, findConsoleDir } from '../../src/cli/console-dir.js';
import { call, makeApi } from './controller-helpers.js';

let dir: string;
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'sg-console-'));
  mkdirSync(join(dir, 'console', 'assets'), { recursive: true });
  writeFileSync(join(dir, 'console', 'index.html'), '<!doctype html><title>secgroup console</title><script type="module" src="/console/assets/index-abc.js"></script>');
  writeFileSync(join(dir, 'console', 'assets', 'index-abc.js'), 'console.log(1)');
  writeFileSync(join(dir, 'console', 'assets', 'index-abc.css'), 'body{}');
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('/console', () => {
  it('serves index.html for /console and every view URL, with a strict CSP and the security headers, without auth', async () => {
    const { app } = makeApi({ extra: { consoleDir: join(dir, 'console') } });
    for (const url of ['/console', '/console/', '/console/groups/sg-web', '/console/instances/ecs-1', '/console/reachability?from=1.2.3.4']) {
      const r = await app.inject({ method: 'GET', url });
      expect([url, r.statusCode]).toEqual([url, 200]);
      expect(r.headers['content-type']).toBe('text/html; charset=utf-8');
      expect(r.body).toContain('<title>secgroup console</title>');
      expect(r.headers['content-security-policy']).toBe(CONSOLE_CSP);
      expect(r.headers['x-content-type-options']).toBe('nosniff');
      expect(r.headers['x-frame-options']).toBe('DENY');
      expect(r.headers['referrer-policy']).toBe('no-referrer');
      expect(r.headers['cache-control']).toBe('no-cache');
    }
    expect(CONSOLE_CSP).toContain("default-src 'self'");
    expect(CONSOLE_CSP).toContain("script-src 'self'");
    expect(CONSOLE_CSP).not.toMatch(/unsafe-inline|unsafe-eval/);
  });

  it('serves hashed assets as immutable with their type; a missing asset is a 404, not index.html', async () => {
    const { app } = makeApi({ extra: { consoleDir: join(dir, 'console') } });
    const js = await app.inject({ method: 'GET', url: '/console/assets/index-abc.js' });
    expect(js.statusCode).toBe(200);
    expect(js.headers['content-type']).toBe('text/javascript; charset=utf-8');
    expect(js.headers['cache-control']).toBe('public, max-age=31536000, immutable');
    expect(js.headers['content-security-policy']).toBe(CONSOLE_CSP);
    expect((await app.inject({ method: 'GET', url: '/console/assets/index-abc.css' })).headers['content-type']).toBe('text/css; charset=utf-8');
    const missing = await app.inject({ method: 'GET', url: '/console/assets/nope.js' });
    expect(missing.statusCode).toBe(404);
    expect(JSON.parse(missing.body)).toMatchObject({ error_code: 'APIG.0101' });
    // nothing outside the directory is reachable
    expect((await app.inject({ method: 'GET', url: '/console/assets/../../../etc/passwd' })).body).not.toContain('root:');
  });

  it('says how to build it when the controller has no console directory', async () => {
    const { app } = makeApi();
    const r = await app.inject({ method: 'GET', url: '/console' });
    expect(r.statusCode).toBe(404);
    expect(JSON.parse(r.body).error_msg).toMatch(/not built.*npm run build/);
  });
});

describe('finding the console directory', () => {
  it('looks next to the program (the .deb executable, the bundle) and in dist/ of a checkout; SECGROUP_CONSOLE_DIR overrides', () => {
    expect(consoleDirCandidates('file:///usr/lib/secgroup-controller/secgroup', {})[0]).toBe('/usr/lib/secgroup-controller/console');
    expect(consoleDirCandidates('file:///repo/dist/secgroup.mjs', {})[0]).toBe('/repo/dist/console');
    expect(consoleDirCandidates('file:///repo/dist/cli/console-dir.js', {})[1]).toBe('/repo/dist/console');
    expect(consoleDirCandidates('file:///repo/src/cli/console-dir.ts', {})[2]).toBe('/repo/dist/console');
    expect(consoleDirCandidates('file:///x/y.js', { SECGROUP_CONSOLE_DIR: '/opt/c' })).toEqual(['/opt/c']);
    expect(findConsoleDir(pathToFileURL(join(dir, 'program')).href, {})).toBe(join(dir, 'console'));
    expect(findConsoleDir(pathToFileURL(join(dir, 'console', 'assets', 'x', 'y.js')).href, {})).toBe(null);
  });
});

describe('GET /instance-statuses', () => {
  it('answers every instance status of the project in one read, in list order', async () => {
    const { app, presence } = makeApi();
    for (const id of ['ecs-b', 'ecs-a']) expect((await call(app, 'POST', '/v3/proj-a/instances', { instance: { id, addresses: ['198.18.0.1'] } })).status).toBe(201);
    presence.connected.add('proj-a/ecs-a');
    const r = await call(app, 'GET', '/v3/proj-a/instance-statuses');
    expect(r.status).toBe(200);
    expect(r.body.instance_statuses.map((s: { instance_id: string; connected: boolean; in_sync: boolean }) => [s.instance_id, s.connected, s.in_sync])).toEqual([
      ['ecs-b', false, false],
      ['ecs-a', true, false],
    ]);
    const one = await call(app, 'GET', '/v3/proj-a/instances/ecs-a/status');
    expect(r.body.instance_statuses[1]).toEqual(one.body.status);
    expect((await call(app, 'GET', '/v3/proj-a/instance-statuses', undefined, {})).status).toBe(401);
  });
});
