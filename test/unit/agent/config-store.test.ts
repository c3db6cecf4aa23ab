import { mkdir, mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { controllerUrls, resolveConfig } from '../../../src/agent/config.js';
import { FileStateStore } from '../../../src/agent/state-store.js';
import { ValidationError } from '../../../src/lib/errors.js';
import { policy } from './fixtures.js';

describe('agent config', () => {
  it('fills defaults', () => {
    const c = resolveConfig({ instance_id: 'ecs-1' }, {});
    expect(c).toMatchObject({ state_dir: '/var/lib/secgroup', table: 'secgroup', drift_schedule: '*/30 * * * * *', http_listen: '127.0.0.1:9469', incremental: true, nft_timeout_ms: 60_000 });
    expect(c.platform).toEqual({ loopback: true, icmpv6_nd: true, dhcp: true, controller_rule: true, failsafe_ingress: [], failsafe_egress: [], flow_mark_mask: 0xffff0000 });
    expect(c.controller).toBeUndefined();
  });

  it('takes platform.flow_mark_mask as a number or hex text, 0 for off, and refuses a mask that cannot hold it', () => {
    const mask = (m: unknown) => resolveConfig({ instance_id: 'ecs-1', platform: { flow_mark_mask: m } }, {}).platform.flow_mark_mask;
    expect(mask('0x00ff0000')).toBe(0x00ff0000);
    expect(mask(0xff000000)).toBe(0xff000000);
    expect(mask('4294901760')).toBe(0xffff0000);
    expect(mask(0)).toBe(0);
    expect(mask('0')).toBe(0);
    for (const [bad, why] of [
      ['0xff00ff00', /not one run of contiguous bits/],
      ['0x000000f0', /fewer than 8 bits/],
      ['0x1ffffffff', /must be a mask/],
      [-1, /32-bit mask/],
      ['ffff0000', /must be a mask/],
    ] as const) {
      let error: unknown;
      try {
        mask(bad);
      } catch (e) {
        error = e;
      }
      expect(error, String(bad)).toBeInstanceOf(ValidationError);
      expect((error as ValidationError).issues.map((i) => `${i.path}: ${i.message}`).join('\n')).toMatch(why);
    }
  });

  it('lets env override the file and flags override env', () => {
    const c = resolveConfig(
      { instance_id: 'from-file', state_dir: '/file', controller: { url: 'wss://file:1', ca_file: '/ca.pem' } },
      { SECGROUP_INSTANCE_ID: 'from-env', SECGROUP_STATE_DIR: '/env', SECGROUP_CONTROLLER_URL: 'wss://env:2' },
      { stateDir: '/flag' },
    );
    expect(c.instance_id).toBe('from-env');
    expect(c.state_dir).toBe('/flag');
    expect(c.controller).toMatchObject({ url: 'wss://env:2', ca_file: '/ca.pem', reconnect_max_ms: 30_000 });
  });

  it('takes several controllers as controller.urls (or a comma list in env and flags); controller.url is one; a later layer replaces them', () => {
    const urls = (file: unknown, env: Record<string, string> = {}, flags = {}) => controllerUrls(resolveConfig(file, env, flags).controller!);
    expect(urls({ instance_id: 'i', controller: { url: 'wss://one:1' } })).toEqual(['wss://one:1']);
    expect(urls({ instance_id: 'i', controller: { urls: ['wss://a:1', 'wss://b:1', 'wss://a:1'] } })).toEqual(['wss://a:1', 'wss://b:1']);
    expect(urls({ instance_id: 'i' }, { SECGROUP_CONTROLLER_URL: 'wss://a:1, wss://b:2' })).toEqual(['wss://a:1', 'wss://b:2']);
    expect(urls({ instance_id: 'i', controller: { urls: ['wss://a:1', 'wss://b:1'] } }, { SECGROUP_CONTROLLER_URL: 'wss://env:2' })).toEqual(['wss://env:2']);
    expect(urls({ instance_id: 'i', controller: { url: 'wss://file:1' } }, {}, { controller: 'wss://x:1,wss://y:1' })).toEqual(['wss://x:1', 'wss://y:1']);
    const problems = (file: unknown) => {
      try {
        resolveConfig(file, {});
        return [];
      } catch (e) {
        return (e as ValidationError).issues.map((i) => `${i.path}: ${i.message}`);
      }
    };
    expect(problems({ instance_id: 'i', controller: { url: 'wss://a:1', urls: ['wss://b:1'] } })).toEqual(['controller.url: set exactly one of controller.url (one controller) and controller.urls (several)']);
    expect(problems({ instance_id: 'i', controller: { token: 't' } })).toEqual(['controller.url: set exactly one of controller.url (one controller) and controller.urls (several)']);
    expect(problems({ instance_id: 'i', controller: { urls: [] } })[0]).toMatch(/^controller\.urls/);
    expect(problems({ instance_id: 'i', controller: { urls: ['wss://a:1', 'http://b'] } })[0]).toMatch(/^controller\.urls\[1\]: must be a wss:\/\//);
  });

  it('parses failsafe port lists', () => {
    const c = resolveConfig({ instance_id: 'i', platform: { failsafe_ingress: ['tcp:22', 'udp:5000-5010'] } }, {});
    expect(c.platform.failsafe_ingress).toEqual([
      { protocol: 6, from: 22, to: 22 },
      { protocol: 17, from: 5000, to: 5010 },
    ]);
  });

  it('lists every problem with its path', () => {
    try {
      resolveConfig({ instance_id: 'bad id', drift_schedule: 'often', platform: { failsafe_ingress: ['ssh'] }, typo: 1, controller: { url: 'http://x' } }, {});
      expect.unreachable();
    } catch (e) {
      expect(e).toBeInstanceOf(ValidationError);
      const paths = (e as ValidationError).issues.map((i) => i.path).sort();
      expect(paths).toEqual(['controller.url', 'drift_schedule', 'instance_id', 'platform.failsafe_ingress[0]', 'typo']);
    }
  });
});

describe('file state store', () => {
  let dir: string;
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'sg-state-'));
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('round-trips a policy and leaves no temp file', async () => {
    const s = new FileStateStore(join(dir, 'state'), () => 0);
    expect(await s.load()).toEqual({ kind: 'none' });
    await s.save(policy(4));
    const r = await s.load();
    expect(r.kind).toBe('ok');
    if (r.kind === 'ok') expect(r.policy).toEqual(policy(4));
    expect(await readdir(join(dir, 'state'))).toEqual(['policy.json']);
  });

  it('moves a corrupt file aside and never writes anything in its place', async () => {
    const s = new FileStateStore(dir, () => Date.UTC(2024, 0, 2, 3, 4, 5));
    await writeFile(join(dir, 'policy.json'), '{"format":1,"policy":');
    const r = await s.load();
    expect(r).toMatchObject({ kind: 'corrupt', error: { code: 'STATE_CORRUPT' } });
    expect(await readdir(dir)).toEqual(['policy.json.corrupt-2024-01-02T03-04-05-000Z']);
    expect(await readFile(join(dir, 'policy.json.corrupt-2024-01-02T03-04-05-000Z'), 'utf8')).toBe('{"format":1,"policy":');
  });

  it('reports an unreadable file as STATE_IO and leaves it where it is', async () => {
    const s = new FileStateStore(dir, () => 0);
    await mkdir(join(dir, 'policy.json'));
    expect(await s.load()).toMatchObject({ kind: 'corrupt', error: { code: 'STATE_IO' }, movedTo: null });
    expect(await readdir(dir)).toEqual(['policy.json']);
    await expect(s.save(policy(1))).rejects.toMatchObject({ code: 'STATE_IO' });
  });

  it('treats a valid JSON file with an invalid policy as corrupt', async () => {
    const s = new FileStateStore(dir, () => 0);
    await writeFile(join(dir, 'policy.json'), JSON.stringify({ format: 1, saved_at: 'x', policy: { revision: -1 } }));
    expect(await s.peek()).toMatchObject({ kind: 'corrupt', movedTo: null });
    expect(await readdir(dir)).toEqual(['policy.json']);
  });
});
