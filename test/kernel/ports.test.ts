/**
 * Port status (SEMANTICS section 7) on real sockets: listeners started in a
 * test namespace, `secgroup ports` run inside it reads them with ss (and the
 * fallbacks) and rates them against a policy.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, expect, it } from 'vitest';
import type { PortReport } from '../../src/protocol/messages.js';
import { describeKernel, useLab } from '../helpers/vitest-lab.js';

const POLICY = {
  revision: 3,
  instance: { id: 'ports-host', addresses: ['198.18.0.10'] },
  security_groups: [
    {
      id: 'sg-web',
      rules: [
        { id: 'r-http', direction: 'ingress', protocol: 'tcp', multiport: '7080', remote_ip_prefix: '0.0.0.0/0' },
        { id: 'r-alt', direction: 'ingress', protocol: 'tcp', multiport: '7081' },
      ],
    },
  ],
};

describeKernel('secgroup ports on real listening sockets', () => {
  const lab = useLab();
  const dir = mkdtempSync(join(tmpdir(), 'sgt-ports-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  for (const source of ['ss', 'netstat', 'proc'] as const) {
    it(`${source}: allowed + listening is open, listening without a rule is blocked, a rule without a listener is not-listening, loopback is local-only`, async () => {
      const file = join(dir, 'policy.json');
      writeFileSync(file, JSON.stringify(POLICY));
      const servers = [
        await lab().tcpListen('host', 7080, 4, '198.18.0.10'),
        await lab().tcpListen('host', 7090, 4, '198.18.0.10'),
        await lab().tcpListen('host', 7091, 4, '127.0.0.1'),
      ];
      try {
        const cli = resolve('node_modules/.bin/tsx');
        const r = await lab().exec('host', cli, [resolve('src/cli/main.ts'), 'ports', '--policy', file, '--json', '--source', source], { reject: false, timeoutMs: 60_000 });
        expect(r.exitCode, r.stderr).toBe(0);
        const report = JSON.parse(r.stdout) as PortReport;
        expect(report.source).toBe(source);
        const status = (port: number) => report.entries.find((e) => e.port === port && e.protocol === 'tcp')?.status;
        expect(status(7080)).toBe('open');
        expect(report.entries.find((e) => e.port === 7080)?.allowed_by.map((a) => a.rule_id)).toEqual(['r-http']);
        expect(status(7090)).toBe('blocked');
        expect(status(7091)).toBe('local-only');
        expect(status(7081)).toBe('not-listening');
      } finally {
        for (const s of servers) await s.close();
      }
    });
  }
});
