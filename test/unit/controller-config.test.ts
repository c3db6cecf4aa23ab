import { describe, expect, it, beforeEach, afterEach } from 'vitest';
import { mkdtempSync, rmSync, writeFileSync, existsSync, statSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CommanderError } from 'commander';
import { loadControllerConfig, parseControllerConfig } from '../../src/controller/config.js';
import { readAccessKeys, readStorePassword } from '../../src/controller/controller.js';
import { DEFAULT_QUOTAS } from '../../src/controller/domain.js';
import { hashToken } from '../../src/controller/tokens.js';
import { isSecgroupError, ValidationError } from '../../src/lib/errors.js';
import { buildProgram } from '../../src/cli/program.js';
import { CliExit, type CliIo } from '../../src/cli/io.js';

const TOKENS = { tokens: [{ name: 'admin', token: 'admin-token-0123456789' }] };

function issuesOf(input: unknown): string[] {
  try {
    parseControllerConfig(input);
  } catch (e) {
    if (e instanceof ValidationError) return e.issues.map((i) => `${i.path}: ${i.message}`);
    throw e;
  }
  return [];
}

describe('controller configuration', () => {
  it('fills every default', () => {
    const c = parseControllerConfig({ api: TOKENS });
    expect(c).toEqual({
      listen: { host: '127.0.0.1', port: 8443 },
      data_dir: '/var/lib/secgroup-controller',
      tls: null,
      api: { tokens: [{ name: 'admin', token: 'admin-token-0123456789', projects: ['*'] }], access_keys: [], max_body_bytes: 1048576 },
      http: {
        request_timeout_ms: 30000,
        headers_timeout_ms: 10000,
        keep_alive_timeout_ms: 5000,
        max_connections_per_source: 64,
        max_connections: 16384,
        auth_failures_per_minute: 10,
        auth_failure_burst: 20,
      },
      quotas: DEFAULT_QUOTAS,
      agents: { deltas: true, heartbeat_interval_ms: 15000, hello_timeout_ms: 10000, max_message_bytes: 4194304, rate_burst: 30, rate_per_second: 5, max_unsent_bytes: 67108864, accept_rate_per_s: 200 },
      store: { driver: 'sqlite', synchronous: 'FULL', pool_size: 10, statement_timeout_ms: 15_000, lock_timeout_ms: 5_000, connect_timeout_ms: 5_000 },
      audit: { retention_days: 90 },
      log: { level: 'info' },
      metrics: { process_metrics: true },
    });
  });

  it('names every problem', () => {
    expect(issuesOf({})).toEqual(['api: is required (object)']);
    expect(issuesOf({ api: { tokens: [] } })).toEqual([expect.stringMatching(/^api\.tokens: .*at least one API token/)]);
    expect(issuesOf({ api: { tokens: [{ name: 'a', token: 'short' }] } })).toEqual(['api.tokens[0].token: the string "short": must be at least 16 characters']);
    expect(issuesOf({ api: { tokens: [{ name: 'a', token: 'x'.repeat(16), token_sha256: hashToken('x') }] } })).toEqual([
      'api.tokens[0]: set exactly one of token and token_sha256',
    ]);
    expect(issuesOf({ api: { tokens: [{ name: 'a', token_sha256: 'ABC' }] } })[0]).toMatch(/^api\.tokens\[0\]\.token_sha256: .*64 lower-case hex/);
    expect(issuesOf({ api: TOKENS, quotas: { rules_per_group: 0 } })[0]).toMatch(/^quotas\.rules_per_group/);
    expect(issuesOf({ api: TOKENS, listen: { port: 70000 } })[0]).toMatch(/^listen\.port/);
    expect(issuesOf({ api: TOKENS, lsten: {} })).toEqual(['lsten: unknown field (a typo must not silently change a policy)']);
    expect(issuesOf({ api: TOKENS, log: { level: 'loud' } })[0]).toMatch(/^log\.level/);
    expect(issuesOf({ api: TOKENS, http: { request_timeout_ms: 5000, headers_timeout_ms: 6000 } })).toEqual([
      'http.headers_timeout_ms: headers_timeout_ms must not be larger than request_timeout_ms',
    ]);
    expect(issuesOf({ api: TOKENS, http: { max_connections: 10 } })).toEqual([
      'http.max_connections_per_source: max_connections_per_source must not be larger than max_connections',
    ]);
    expect(issuesOf({ api: TOKENS, http: { request_timeout_ms: 0 } })[0]).toMatch(/^http\.request_timeout_ms/);
    expect(issuesOf({ api: TOKENS, audit: { retention_days: 0 } })[0]).toMatch(/^audit\.retention_days/);
    expect(parseControllerConfig({ api: TOKENS, audit: { retention_days: 7 } }).audit).toEqual({ retention_days: 7 });
  });

  it('api.access_keys: exactly one secret, never quoted in an error; unique access keys; projects as tokens', () => {
    const key = { name: 'sdk', access_key: 'AKSDK0123456789' };
    expect(parseControllerConfig({ api: { ...TOKENS, access_keys: [{ ...key, secret_key: 's'.repeat(16) }] } }).api.access_keys).toEqual([
      { ...key, secret_key: 's'.repeat(16), projects: ['*'] },
    ]);
    expect(issuesOf({ api: { ...TOKENS, access_keys: [key] } })).toEqual(['api.access_keys[0]: set exactly one of secret_key and secret_key_file']);
    expect(issuesOf({ api: { ...TOKENS, access_keys: [{ ...key, secret_key: 'short-secret', secret_key_file: '/x' }] } })).toContain(
      'api.access_keys[0]: set exactly one of secret_key and secret_key_file',
    );
    const short = issuesOf({ api: { ...TOKENS, access_keys: [{ ...key, secret_key: 'short-secret' }] } });
    expect(short).toEqual(['api.access_keys[0].secret_key: must be 16-1024 characters (the value is not shown)']);
    expect(issuesOf({ api: { ...TOKENS, access_keys: [{ ...key, access_key: 'a,b=c', secret_key: 's'.repeat(16) }] } })[0]).toMatch(
      /^api\.access_keys\[0\]\.access_key: .*8-128 characters/,
    );
    const twice = { ...key, secret_key: 's'.repeat(16) };
    expect(issuesOf({ api: { ...TOKENS, access_keys: [twice, { ...twice, name: 'other' }] } })).toEqual(['api.access_keys[1].access_key: the same access key as access_keys[0]']);
    expect(issuesOf({ api: { ...TOKENS, access_keys: [{ ...twice, projects: ['bad project'] }] } })[0]).toMatch(/^api\.access_keys\[0\]\.projects\[0\]/);
  });

  it('store: sqlite by default; postgres needs a URL without a password (never quoted), a pool size; the URL only for postgres', () => {
    const url = 'postgres://secgroup@db.example:5432/secgroup';
    expect(parseControllerConfig({ api: TOKENS, store: { driver: 'postgres', url, pool_size: 4 } }).store).toEqual({ driver: 'postgres', url, synchronous: 'FULL', pool_size: 4, statement_timeout_ms: 15_000, lock_timeout_ms: 5_000, connect_timeout_ms: 5_000 });
    expect(issuesOf({ api: TOKENS, store: { driver: 'postgres' } })).toEqual(['store.url: store.driver postgres needs store.url']);
    const withPassword = issuesOf({ api: TOKENS, store: { driver: 'postgres', url: 'postgres://secgroup:hunter2-pw@db.example/secgroup' } });
    expect(withPassword).toEqual(['store.url: must not contain a password: put it in store.password_file or the environment variable SECGROUP_STORE_PASSWORD (the value is not shown)']);
    expect(issuesOf({ api: TOKENS, store: { driver: 'postgres', url: 'mysql://a:hunter2-pw@b/c' } })).toEqual([
      'store.url: must be a postgres:// or postgresql:// URL (the value is not shown)',
      'store.url: must not contain a password: put it in store.password_file or the environment variable SECGROUP_STORE_PASSWORD (the value is not shown)',
    ]);
    expect(issuesOf({ api: TOKENS, store: { url } })).toEqual(['store.driver: store.url and store.password_file are for store.driver postgres']);
    expect(issuesOf({ api: TOKENS, store: { driver: 'postgres', url, pool_size: 0 } })[0]).toMatch(/^store\.pool_size/);
    // timeouts: 0 leaves the server's setting, negative or past an hour is refused; a pool wait of at least 100 ms
    expect(parseControllerConfig({ api: TOKENS, store: { driver: 'postgres', url, statement_timeout_ms: 0, lock_timeout_ms: 0 } }).store).toMatchObject({ statement_timeout_ms: 0, lock_timeout_ms: 0 });
    expect(issuesOf({ api: TOKENS, store: { driver: 'postgres', url, statement_timeout_ms: -1 } })[0]).toMatch(/^store\.statement_timeout_ms/);
    expect(issuesOf({ api: TOKENS, store: { driver: 'postgres', url, lock_timeout_ms: 3_600_001 } })[0]).toMatch(/^store\.lock_timeout_ms/);
    expect(issuesOf({ api: TOKENS, store: { driver: 'postgres', url, connect_timeout_ms: 50 } })[0]).toMatch(/^store\.connect_timeout_ms/);
  });

  describe('files', () => {
    let dir: string;
    beforeEach(() => {
      dir = mkdtempSync(join(tmpdir(), 'sg-cfg-'));
    });
    afterEach(() => rmSync(dir, { recursive: true, force: true }));

    it('reads YAML and resolves relative paths against the file', async () => {
      const file = join(dir, 'controller.yaml');
      writeFileSync(file, 'data_dir: data\ntls:\n  cert: tls/cert.pem\n  key: tls/key.pem\napi:\n  tokens:\n    - name: admin\n      token: admin-token-0123456789\n');
      const c = await loadControllerConfig(file);
      expect(c.data_dir).toBe(join(dir, 'data'));
      expect(c.tls).toEqual({ cert: join(dir, 'tls/cert.pem'), key: join(dir, 'tls/key.pem') });
    });

    it('secret_key_file: relative to the configuration, read at start, made 0600, one line', async () => {
      const file = join(dir, 'controller.yaml');
      writeFileSync(join(dir, 'sdk.sk'), 'secret-from-file-0123456789\n', { mode: 0o644 });
      writeFileSync(file, 'api:\n  tokens:\n    - { name: admin, token: admin-token-0123456789 }\n  access_keys:\n    - { name: sdk, access_key: AKSDK0123456789, secret_key_file: sdk.sk, projects: [proj-a] }\n');
      const c = await loadControllerConfig(file);
      expect(c.api.access_keys[0]!.secret_key_file).toBe(join(dir, 'sdk.sk'));
      expect(await readAccessKeys(c)).toEqual([{ name: 'sdk', access_key: 'AKSDK0123456789', secret_key: 'secret-from-file-0123456789', projects: ['proj-a'] }]);
      expect(statSync(join(dir, 'sdk.sk')).mode & 0o777).toBe(0o600);
      writeFileSync(join(dir, 'sdk.sk'), 'short\n');
      await expect(readAccessKeys(c)).rejects.toThrow(/api\.access_keys\[0\]\.secret_key_file .*one line of 16-1024 characters/);
      rmSync(join(dir, 'sdk.sk'));
      await expect(readAccessKeys(c)).rejects.toSatisfy((e) => isSecgroupError(e, 'CONFIG_INVALID'));
    });

    it('store.password_file: relative to the configuration, made 0600, read at start; else SECGROUP_STORE_PASSWORD; else none', async () => {
      const file = join(dir, 'controller.yaml');
      writeFileSync(join(dir, 'db.pw'), 'pw-from-file\n', { mode: 0o640 });
      writeFileSync(file, 'store:\n  driver: postgres\n  url: postgres://secgroup@db.example/secgroup\n  password_file: db.pw\napi:\n  tokens:\n    - { name: admin, token: admin-token-0123456789 }\n');
      const c = await loadControllerConfig(file);
      expect(c.store.password_file).toBe(join(dir, 'db.pw'));
      expect(await readStorePassword(c, { SECGROUP_STORE_PASSWORD: 'pw-from-env' })).toBe('pw-from-file');
      expect(statSync(join(dir, 'db.pw')).mode & 0o777).toBe(0o600);
      const noFile = { ...c, store: { ...c.store, password_file: undefined } };
      expect(await readStorePassword(noFile, { SECGROUP_STORE_PASSWORD: 'pw-from-env' })).toBe('pw-from-env');
      expect(await readStorePassword(noFile, {})).toBeUndefined();
      rmSync(join(dir, 'db.pw'));
      await expect(readStorePassword(c, {})).rejects.toThrow(/cannot read store\.password_file/);
    });

    it('reports unreadable and unparsable files', async () => {
      await expect(loadControllerConfig(join(dir, 'missing.yaml'))).rejects.toSatisfy((e) => isSecgroupError(e, 'CONFIG_INVALID'));
      const file = join(dir, 'bad.json');
      writeFileSync(file, '{ "api": ');
      await expect(loadControllerConfig(file)).rejects.toThrow(/not valid JSON/);
    });
  });
});

describe('secgroup controller (CLI)', () => {
  let dir: string;
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'sg-cli-'));
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  function makeIo(stopSignal?: () => Promise<string>) {
    const io = { out: '', err: '' };
    const cli: CliIo = { out: (s) => void (io.out += s), err: (s) => void (io.err += s), env: {}, ...(stopSignal ? { stopSignal } : {}) };
    return { io, cli };
  }

  async function run(argv: string[], cli: CliIo): Promise<number> {
    try {
      await buildProgram(cli).parseAsync(argv, { from: 'user' });
      return 0;
    } catch (e) {
      if (e instanceof CliExit) return e.exitCode;
      if (e instanceof CommanderError) return e.exitCode === 0 ? 0 : 2;
      throw e;
    }
  }

  async function freePort(): Promise<number> {
    const srv = createServer();
    await new Promise<void>((r) => srv.listen(0, '127.0.0.1', () => r()));
    const port = (srv.address() as { port: number }).port;
    await new Promise<void>((r) => srv.close(() => r()));
    return port;
  }

  it('--check validates the file; problems exit 2 with every issue', async () => {
    const good = join(dir, 'good.yaml');
    writeFileSync(good, 'api:\n  tokens:\n    - { name: admin, token: admin-token-0123456789 }\n');
    const a = makeIo();
    expect(await run(['controller', '--config', good, '--check'], a.cli)).toBe(0);
    expect(a.io.out).toMatch(/good\.yaml: valid \(listen 127\.0\.0\.1:8443/);
    const bad = join(dir, 'bad.yaml');
    writeFileSync(bad, 'api:\n  tokens: []\nquotas:\n  rules_per_grop: 3\n');
    const b = makeIo();
    expect(await run(['controller', '--config', bad, '--check'], b.cli)).toBe(2);
    expect(b.io.err).toMatch(/api\.tokens/);
    expect(b.io.err).toMatch(/quotas\.rules_per_grop: unknown field/);
  });

  it('runs the controller until the stop signal, then shuts down gracefully', async () => {
    const port = await freePort();
    const file = join(dir, 'c.yaml');
    writeFileSync(file, `listen: { host: 127.0.0.1, port: ${port} }\ndata_dir: data\nlog: { level: silent }\napi:\n  tokens:\n    - { name: admin, token: admin-token-0123456789 }\n`);
    let stop!: (s: string) => void;
    const { cli } = makeIo(() => new Promise((r) => (stop = r)));
    const running = run(['controller', '--config', file], cli);
    let health: unknown = null;
    for (let i = 0; i < 100 && !health; i++) {
      await new Promise((r) => setTimeout(r, 50));
      health = await fetch(`http://127.0.0.1:${port}/healthz`)
        .then((r) => r.json())
        .catch(() => null);
    }
    expect(health).toEqual({ status: 'ok', agents_connected: 0 });
    const created = await fetch(`http://127.0.0.1:${port}/v3/p/vpc/security-groups`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'x-auth-token': 'admin-token-0123456789' },
      body: JSON.stringify({ security_group: { name: 'web' } }),
    });
    expect(created.status).toBe(201);
    stop('SIGTERM');
    expect(await running).toBe(0);
    expect(existsSync(join(dir, 'data', 'controller.db'))).toBe(true);
    await expect(fetch(`http://127.0.0.1:${port}/healthz`)).rejects.toThrow();
  });
});
