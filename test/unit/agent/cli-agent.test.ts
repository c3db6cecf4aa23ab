import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse as parseYaml } from 'yaml';
import { buildProgram } from '../../../src/cli/program.js';
import { CliExit, type CliIo } from '../../../src/cli/io.js';
import { DRIFT_LISTENER_PATHS, driftListenerPath, resolveConfig } from '../../../src/agent/config.js';
import { renderStateText } from '../../../src/agent/state-store.js';
import { policy } from './fixtures.js';

async function cli(args: string[], env: Record<string, string> = {}) {
  let out = '';
  let err = '';
  const io: CliIo = { out: (s) => void (out += s), err: (s) => void (err += s), env };
  let code = 0;
  try {
    await buildProgram(io).parseAsync(args, { from: 'user' });
  } catch (e) {
    if (e instanceof CliExit) code = e.exitCode;
    else if ((e as { exitCode?: number }).exitCode !== undefined) code = (e as { exitCode: number }).exitCode;
    else throw e;
  }
  return { code, out, err };
}

describe('secgroup agent (CLI)', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'sg-cli-'));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('the example configuration is valid', async () => {
    const doc = parseYaml(await readFile('examples/config/agent.yaml', 'utf8')) as unknown;
    const config = resolveConfig(doc, {});
    expect(config.controller?.token_file).toBe('/run/credentials/secgroup-agent.service/token');
    expect(config.platform.failsafe_ingress).toEqual([{ protocol: 6, from: 22, to: 22 }]);
  });

  it('--dry-run prints the ruleset with the platform rules from the configuration, and touches nothing', async () => {
    const config = join(dir, 'agent.yaml');
    await writeFile(config, 'instance_id: ecs-1\ncontroller:\n  url: wss://198.18.0.1:8443\n  token: t\nplatform:\n  failsafe_ingress: ["tcp:22"]\n');
    const r = await cli(['agent', '--dry-run', '--config', config, '--policy', 'examples/web.json', '--log-level', 'silent']);
    expect(r.code).toBe(0);
    expect(r.out).toContain('ip daddr { 198.18.0.1 } tcp dport 8443 accept comment "platform: controller channel"');
    expect(r.out).toContain('comment "platform: failsafe ingress"');
  });

  it('--dry-run takes the last known good policy from the state directory', async () => {
    await writeFile(join(dir, 'policy.json'), renderStateText(policy(12), '2024-01-01T00:00:00.000Z'));
    const r = await cli(['agent', '--dry-run', '--state-dir', dir, '--log-level', 'silent'], { SECGROUP_INSTANCE_ID: 'ecs-1', SECGROUP_CONFIG: '/dev/null' });
    expect(r.code).toBe(0);
    expect(r.out).toContain('revision=12');
  });

  it('refuses an invalid configuration with every problem listed (exit 2)', async () => {
    const config = join(dir, 'bad.yaml');
    await writeFile(config, 'instance_id: "no spaces"\ndrift_schedule: sometimes\n');
    const r = await cli(['agent', '--config', config]);
    expect(r.code).toBe(2);
    expect(r.err).toContain('instance_id');
    expect(r.err).toContain('drift_schedule');
  });

  it('drift_listener: auto takes the first installed listener (the .deb\'s, then install.sh\'s), a path as given, "" none (nft monitor only)', () => {
    expect(resolveConfig({ instance_id: 'ecs-1' }, {}).drift_listener).toBe('auto');
    expect(driftListenerPath('auto', (p) => p.startsWith('/usr/local/'))).toBe('/usr/local/lib/secgroup/secgroup-nftwatch');
    expect(driftListenerPath('auto', () => true)).toBe('/usr/lib/secgroup/secgroup-nftwatch');
    // none installed: the first, which cannot start, so the agent falls back with one warning
    expect(driftListenerPath('auto', () => false)).toBe(DRIFT_LISTENER_PATHS[0]);
    expect(driftListenerPath('/opt/sg/secgroup-nftwatch', () => false)).toBe('/opt/sg/secgroup-nftwatch');
    expect(driftListenerPath('', () => true)).toBeNull();
    expect(() => resolveConfig({ instance_id: 'ecs-1', drift_listener: 'secgroup-nftwatch' }, {})).toThrow(/drift_listener/);
  });

  it('an explicit configuration file that does not exist is an error', async () => {
    const r = await cli(['agent', '--dry-run', '--config', join(dir, 'missing.yaml')]);
    expect(r.code).toBe(2);
    expect(r.err).toContain('cannot read configuration file');
  });
});
