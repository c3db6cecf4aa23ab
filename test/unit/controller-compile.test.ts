/* eslint-disable @typescript-eslint/no-explicit-any -- response bodies are untyped JSON, checked by the assertions */
import { describe, expect, it, beforeEach, afterEach } from 'vitest';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parsePolicy } from '../../src/policy/schema.js';
import { openSqliteStore } from '../../src/controller/store/sqlite.js';
import { compileInstanceBody, compileInstanceText, indexProject, policyDigestOfBody, recompile } from '../../src/controller/policy-documents.js';
import { sha256 } from '../../src/lib/hash.js';
import type { InstanceRow, ProjectSnapshot, RuleRow } from '../../src/controller/model.js';
import { call, makeApi, rule, seed, type TestApi } from './controller-helpers.js';

const A = '/v3/proj-a';

async function policyOf(t: TestApi, id: string, project = 'proj-a') {
  const r = await call(t.app, 'GET', `/v3/${project}/instances/${id}/policy`);
  expect(r.status).toBe(200);
  return { text: r.text, policy: parsePolicy(JSON.parse(r.text)) };
}

async function revisionOf(t: TestApi, id: string): Promise<number> {
  return (await call(t.app, 'GET', `${A}/instances/${id}/status`)).body.status.desired_revision;
}

describe('the policy document', () => {
  let t: TestApi;
  beforeEach(() => {
    t = makeApi();
  });

  it('is the SEMANTICS section 8 document, with a fixed field order, and passes parsePolicy', async () => {
    await seed(t.app);
    const { text, policy } = await policyOf(t, 'ecs-web-1');
    expect(Object.keys(JSON.parse(text))).toEqual(['revision', 'instance', 'security_groups', 'address_groups', 'group_members']);
    expect(policy.security_groups.map((g) => g.id)).toEqual(['sg-web', 'default']);
    const http = JSON.parse(text).security_groups[0].rules.find((r: any) => r.id === 'r-http');
    expect(JSON.stringify(http)).toBe(
      '{"id":"r-http","direction":"ingress","priority":1,"action":"allow","ethertype":"IPv4","protocol":"tcp","multiport":"80","remote_ip_prefix":"0.0.0.0/0"}',
    );
    // sg-web's own default ingress rules (Huawei's defaults) reference sg-web
    expect(policy.group_members).toEqual({ default: ['198.18.0.10', 'fd00:5ec::10'], 'sg-web': ['198.18.0.10', 'fd00:5ec::10'] });
    // descriptions never reach the document
    expect(text).not.toContain('description');
  });

  it('is byte-identical between GET .../policy and the stored text, and deterministic for the same state', async () => {
    await seed(t.app);
    const a = await policyOf(t, 'ecs-web-1');
    expect((await t.service.policyText('proj-a', 'ecs-web-1'))!.text).toBe(a.text);
    const t2 = makeApi();
    await seed(t2.app);
    expect((await policyOf(t2, 'ecs-web-1')).text).toBe(a.text);
  });

  it('lists group members sorted and deduplicated, only in the families referencing rules use', async () => {
    await call(t.app, 'POST', `${A}/vpc/security-groups`, { security_group: { id: 'sg-app', name: 'app' } });
    await call(t.app, 'POST', `${A}/vpc/security-groups`, { security_group: { id: 'sg-web', name: 'web' } });
    await call(t.app, 'POST', `${A}/vpc/security-group-rules`, {
      security_group_rule: { security_group_id: 'sg-web', ...rule({ remote_ip_prefix: null, remote_group_id: 'sg-app' }) },
    });
    await call(t.app, 'POST', `${A}/instances`, { instance: { id: 'app2', addresses: ['198.18.0.21', 'fd00:5ec::21'], security_groups: ['sg-app'] } });
    await call(t.app, 'POST', `${A}/instances`, { instance: { id: 'app1', addresses: ['198.18.0.3', 'fd00:5ec::20'], security_groups: ['sg-app'] } });
    await call(t.app, 'POST', `${A}/instances`, { instance: { id: 'web1', addresses: ['198.18.0.10'], security_groups: ['sg-web'] } });
    const { policy } = await policyOf(t, 'web1');
    // sg-web: its own default ingress rules (Huawei's defaults); web1 has no IPv6 address
    expect(policy.group_members).toEqual({ 'sg-app': ['198.18.0.3', '198.18.0.21'], 'sg-web': ['198.18.0.10'] });
    expect(policy.address_groups).toEqual([]);
  });

  it('leaves disabled rules out (SEMANTICS section 1), with the members and address groups only they reference', async () => {
    await call(t.app, 'POST', `${A}/vpc/security-groups`, { security_group: { id: 'sg-app', name: 'app' } });
    await call(t.app, 'POST', `${A}/vpc/security-groups`, { security_group: { id: 'sg-web', name: 'web' } });
    await call(t.app, 'POST', `${A}/vpc/address-groups`, { address_group: { id: 'ag-off', name: 'off', ip_version: 4, ip_set: ['203.0.113.0/24'] } });
    const off = [
      rule({ id: 'r-off-group', remote_ip_prefix: null, remote_group_id: 'sg-app', enabled: false }),
      rule({ id: 'r-off-ag', multiport: '22', remote_ip_prefix: null, remote_address_group_id: 'ag-off', enabled: false }),
    ];
    for (const r of off) expect((await call(t.app, 'POST', `${A}/vpc/security-group-rules`, { security_group_rule: { security_group_id: 'sg-web', ...r } })).status).toBe(201);
    await call(t.app, 'POST', `${A}/instances`, { instance: { id: 'app1', addresses: ['198.18.0.3'], security_groups: ['sg-app'] } });
    await call(t.app, 'POST', `${A}/instances`, { instance: { id: 'web1', addresses: ['198.18.0.10'], security_groups: ['sg-web'] } });
    const { policy, text } = await policyOf(t, 'web1');
    expect(text).not.toContain('r-off-');
    expect(Object.keys(policy.group_members)).toEqual(['sg-web']);
    expect(policy.address_groups).toEqual([]);
    // still stored and listed
    const listed = (await call(t.app, 'GET', `${A}/vpc/security-group-rules?security_group_id=sg-web&enabled=false`)).body.security_group_rules;
    expect(listed.map((r: any) => [r.id, r.enabled])).toEqual([
      ['r-off-group', false],
      ['r-off-ag', false],
    ]);
  });

  it('includes referenced address groups, sorted by id', async () => {
    for (const id of ['ag-z', 'ag-a']) await call(t.app, 'POST', `${A}/vpc/address-groups`, { address_group: { id, name: id, ip_version: 4, ip_set: ['203.0.113.0/24'] } });
    await call(t.app, 'POST', `${A}/vpc/security-groups`, { security_group: { id: 'sg-web', name: 'web' } });
    for (const [ag, port] of [['ag-z', '22'], ['ag-a', '23']]) {
      await call(t.app, 'POST', `${A}/vpc/security-group-rules`, {
        security_group_rule: { security_group_id: 'sg-web', ...rule({ multiport: port, remote_ip_prefix: null, remote_address_group_id: ag }) },
      });
    }
    await call(t.app, 'POST', `${A}/instances`, { instance: { id: 'web1', addresses: ['198.18.0.10'], security_groups: ['sg-web'] } });
    const { policy, text } = await policyOf(t, 'web1');
    expect(policy.address_groups.map((a) => a.id)).toEqual(['ag-a', 'ag-z']);
    expect(JSON.stringify(JSON.parse(text).address_groups[0])).toBe('{"id":"ag-a","ip_version":4,"ip_set":["203.0.113.0/24"]}');
  });
});

describe('batch compilation (shared member lists and tails)', () => {
  it('gives the same bytes as compiling each document on its own', async () => {
    const t = makeApi();
    // numeric-looking group ids (ordered first by JS objects), several group lists, both families, address groups
    for (const id of ['sg-web', '42', 'sg-app', '7']) await call(t.app, 'POST', `${A}/vpc/security-groups`, { security_group: { id, name: `n-${id}` } });
    await call(t.app, 'POST', `${A}/vpc/address-groups`, { address_group: { id: 'ag-ops', name: 'ops', ip_version: 4, ip_set: ['203.0.113.0/24'] } });
    const rules = [
      ['sg-web', rule({ remote_ip_prefix: null, remote_group_id: 'sg-app' })],
      ['sg-web', rule({ ethertype: 'IPv6', multiport: '443', remote_ip_prefix: null, remote_group_id: '42' })],
      ['sg-web', rule({ multiport: '444', remote_ip_prefix: null, remote_group_id: '7' })],
      ['42', rule({ multiport: '22', remote_ip_prefix: null, remote_address_group_id: 'ag-ops' })],
      ['7', rule({ ethertype: 'IPv6', multiport: '53', protocol: 'udp', remote_ip_prefix: null, remote_group_id: 'sg-web' })],
    ] as const;
    for (const [g, r] of rules) expect((await call(t.app, 'POST', `${A}/vpc/security-group-rules`, { security_group_rule: { security_group_id: g, ...r } })).status).toBe(201);
    const instances = [
      ['w1', ['sg-web', 'default'], ['198.18.0.10', 'fd00:5ec::10']],
      ['w2', ['sg-web', 'default'], ['198.18.0.9']],
      ['a1', ['sg-app', '42'], ['198.18.1.1', 'fd00:5ec::2']],
      ['a2', ['42', 'sg-app'], ['fd00:5ec::1']],
      ['s1', ['7'], ['10.0.0.1', '10.0.0.2']],
      ['s2', ['default', '7', 'sg-web'], []],
    ] as const;
    for (const [id, groups, addresses] of instances) {
      expect((await call(t.app, 'POST', `${A}/instances`, { instance: { id, addresses, security_groups: groups } })).status).toBe(201);
    }
    const snap = await t.service.read('proj-a');
    const batch = indexProject(snap);
    for (const i of snap.instances) {
      const text = compileInstanceText(batch, i).body;
      expect(text, i.id).toBe(compileInstanceBody(indexProject(snap), i));
      expect((await t.service.policyText('proj-a', i.id))!.text, i.id).toBe(`{"revision":${i.revision},${text.slice(1)}`);
    }
    expect(batch.tails.size).toBe(5);
  });

  it('gives the same bytes on random snapshots (group ids, rule remotes, families, group lists, addresses)', () => {
    let seedValue = 7;
    const r = () => {
      seedValue = (seedValue * 1103515245 + 12345) % 2147483648;
      return seedValue / 2147483648;
    };
    const pick = <T,>(xs: readonly T[]): T => xs[Math.floor(r() * xs.length)]!;
    const NOW = '2024-05-01T12:00:00Z';
    for (let round = 0; round < 40; round++) {
      const groupIds = ['default', 'sg-a', '10', '2', 'sg.b'].slice(0, 2 + Math.floor(r() * 4));
      const agIds = ['ag-1', 'ag-0'];
      const rules: RuleRow[] = [];
      for (let k = 0; k < 12; k++) {
        const v6 = r() < 0.4;
        const kind = r();
        rules.push({
          id: `r${k}`,
          security_group_id: pick(groupIds),
          direction: r() < 0.8 ? 'ingress' : 'egress',
          priority: 1 + Math.floor(r() * 100),
          action: r() < 0.8 ? 'allow' : 'deny',
          ethertype: v6 ? 'IPv6' : 'IPv4',
          protocol: r() < 0.5 ? 'tcp' : null,
          multiport: null,
          icmp_type: null,
          icmp_code: null,
          remote_ip_prefix: kind < 0.3 ? (v6 ? '::/0' : '0.0.0.0/0') : null,
          remote_group_id: kind >= 0.3 && kind < 0.8 ? pick(groupIds) : null,
          remote_address_group_id: kind >= 0.8 ? (v6 ? 'ag-0' : 'ag-1') : null,
          description: '',
          enabled: true,
          created_at: NOW,
        });
      }
      const instances: InstanceRow[] = Array.from({ length: 2 + Math.floor(r() * 8) }, (_, n) => {
        const groups = [...new Set(Array.from({ length: 1 + Math.floor(r() * 3) }, () => pick(groupIds)))];
        const addresses = [...new Set(Array.from({ length: Math.floor(r() * 3) }, () => (r() < 0.6 ? `198.18.${Math.floor(r() * 3)}.${1 + Math.floor(r() * 20)}` : `fd00::${(1 + Math.floor(r() * 30)).toString(16)}`)))];
        return { id: `i-${n}`, name: '', addresses, security_groups: groups, created_at: NOW, updated_at: NOW, revision: null, policy_hash: null };
      });
      const snap: ProjectSnapshot = {
        projectId: 'p',
        version: 1,
        groups: groupIds.map((id) => ({ id, name: `n${id}`, description: '', enterprise_project_id: '0', tags: [], created_at: NOW, updated_at: NOW })),
        rules,
        addressGroups: agIds.map((id) => ({ id, name: id, description: '', ip_version: id === 'ag-0' ? 6 : 4, ip_set: id === 'ag-0' ? ['fd00:1::/64'] : ['203.0.113.0/24'], ip_remarks: {}, max_capacity: 20, enterprise_project_id: '0', tags: [], created_at: NOW, updated_at: NOW })),
        instances,
      };
      const batch = indexProject(snap);
      for (const i of instances) expect(compileInstanceText(batch, i).body, `round ${round} ${i.id}`).toBe(compileInstanceBody(indexProject(snap), i));
      const all = { groups: new Set<string>(), membership: new Set<string>(), addressGroups: new Set<string>(), instances: new Set(instances.map((i) => i.id)) };
      const ops = recompile(snap, all).ops;
      expect(ops.map((o) => o.op === 'setPolicy' && o.body)).toEqual(instances.map((i) => compileInstanceBody(indexProject(snap), i)));
    }
  });

  it('recognises unchanged documents by their digest, and by a whole-body sha256 stored before digests (no revision bump)', async () => {
    const t = makeApi();
    await seed(t.app);
    await call(t.app, 'POST', `${A}/instances`, { instance: { id: 'w2', addresses: ['198.18.0.11'], security_groups: ['default'] } });
    const snap = await t.service.read('proj-a');
    const all = { groups: new Set<string>(), membership: new Set<string>(), addressGroups: new Set<string>(), instances: new Set(snap.instances.map((i) => i.id)) };
    const ix = indexProject(snap);
    const body = (id: string) => compileInstanceBody(ix, snap.instances.find((i) => i.id === id)!);
    const withHashes = (hash: (id: string) => string | null) => ({ ...snap, instances: snap.instances.map((i) => ({ ...i, policy_hash: hash(i.id) })) });
    expect(snap.instances.map((i) => i.policy_hash)).toEqual(snap.instances.map((i) => policyDigestOfBody(body(i.id))));
    expect(recompile(snap, all).ops).toEqual([]);
    expect(recompile(withHashes((id) => sha256(body(id))), all).ops).toEqual([]);
    const changed = recompile(withHashes((id) => (id === 'w2' ? 'v2:other' : id === 'ecs-web-1' ? sha256('other') : null)), all).ops;
    expect(changed.map((o) => o.op === 'setPolicy' && [o.instanceId, o.body, o.hash])).toEqual(
      snap.instances.map((i) => [i.id, body(i.id), policyDigestOfBody(body(i.id))]),
    );
  });
});

describe('recompiling after a change', () => {
  let t: TestApi;
  const pushedSince = (n: number) => t.pushed.slice(n).flatMap((p) => p.instances).sort();

  beforeEach(async () => {
    t = makeApi();
    // web1 in sg-web, whose IPv4 rule allows sg-app; app1 in sg-app; db1 in sg-db with an address-group rule; other in default
    for (const id of ['sg-web', 'sg-app', 'sg-db']) await call(t.app, 'POST', `${A}/vpc/security-groups`, { security_group: { id, name: id } });
    await call(t.app, 'POST', `${A}/vpc/address-groups`, { address_group: { id: 'ag-ops', name: 'ops', ip_version: 4, ip_set: ['203.0.113.0/24'] } });
    await call(t.app, 'POST', `${A}/vpc/security-group-rules`, { security_group_rule: { security_group_id: 'sg-web', ...rule({ remote_ip_prefix: null, remote_group_id: 'sg-app' }) } });
    await call(t.app, 'POST', `${A}/vpc/security-group-rules`, { security_group_rule: { security_group_id: 'sg-db', ...rule({ multiport: '5432', remote_ip_prefix: null, remote_address_group_id: 'ag-ops' }) } });
    await call(t.app, 'POST', `${A}/instances`, { instance: { id: 'web1', addresses: ['198.18.0.10'], security_groups: ['sg-web'] } });
    await call(t.app, 'POST', `${A}/instances`, { instance: { id: 'app1', addresses: ['198.18.0.20'], security_groups: ['sg-app'] } });
    await call(t.app, 'POST', `${A}/instances`, { instance: { id: 'db1', addresses: ['198.18.0.30'], security_groups: ['sg-db'] } });
    await call(t.app, 'POST', `${A}/instances`, { instance: { id: 'other', addresses: ['198.18.0.40'], security_groups: ['default'] } });
  });

  it('a new instance is compiled and pushed; instances whose rules reference its groups too', async () => {
    const n = t.pushed.length;
    await call(t.app, 'POST', `${A}/instances`, { instance: { id: 'app2', addresses: ['198.18.0.21'], security_groups: ['sg-app'] } });
    // app1 too: sg-app's default ingress rules (Huawei's defaults) reference sg-app itself
    expect(pushedSince(n)).toEqual(['app1', 'app2', 'web1']);
  });

  it('a rule change reaches only the members of its group', async () => {
    const n = t.pushed.length;
    const before = await revisionOf(t, 'db1');
    await call(t.app, 'POST', `${A}/vpc/security-group-rules`, { security_group_rule: { security_group_id: 'sg-db', ...rule({ multiport: '22' }) } });
    expect(pushedSince(n)).toEqual(['db1']);
    expect(await revisionOf(t, 'db1')).toBeGreaterThan(before);
  });

  it('an address change reaches the instance and the instances whose rules reference its groups', async () => {
    const n = t.pushed.length;
    const db = await revisionOf(t, 'db1');
    await call(t.app, 'PUT', `${A}/instances/app1`, { instance: { addresses: ['198.18.0.22'] } });
    expect(pushedSince(n)).toEqual(['app1', 'web1']);
    expect((await policyOf(t, 'web1')).policy.group_members['sg-app']).toEqual(['198.18.0.22']);
    expect(await revisionOf(t, 'db1')).toBe(db);
  });

  it('an address of a family no referencing rule uses changes only the instance itself', async () => {
    const n = t.pushed.length;
    await call(t.app, 'PUT', `${A}/instances/app1`, { instance: { addresses: ['198.18.0.20', 'fd00:5ec::20'] } });
    expect(pushedSince(n)).toEqual(['app1']);
  });

  it('an address group change reaches only instances whose rules use it', async () => {
    const n = t.pushed.length;
    await call(t.app, 'PUT', `${A}/vpc/address-groups/ag-ops`, { address_group: { ip_set: ['203.0.113.0/25'] } });
    expect(pushedSince(n)).toEqual(['db1']);
  });

  it('membership changes (group order, join, leave, delete) reach exactly the affected instances', async () => {
    let n = t.pushed.length;
    await call(t.app, 'PUT', `${A}/instances/other`, { instance: { security_groups: ['default', 'sg-app'] } });
    // app1 too: sg-app's default ingress rules reference sg-app itself
    expect(pushedSince(n)).toEqual(['app1', 'other', 'web1']);
    n = t.pushed.length;
    await call(t.app, 'PUT', `${A}/instances/other`, { instance: { security_groups: ['sg-app', 'default'] } });
    expect(pushedSince(n)).toEqual(['other']);
    n = t.pushed.length;
    await call(t.app, 'DELETE', `${A}/instances/app1`);
    // other too: it is in sg-app, whose default ingress rules reference sg-app itself
    expect(pushedSince(n)).toEqual(['other', 'web1']);
  });

  it('changes that do not change a document bump nothing', async () => {
    const n = t.pushed.length;
    const revs = await Promise.all(['web1', 'app1', 'db1', 'other'].map((i) => revisionOf(t, i)));
    await call(t.app, 'PUT', `${A}/vpc/security-groups/sg-web`, { security_group: { description: 'descriptions are not enforced' } });
    await call(t.app, 'PUT', `${A}/instances/app1`, { instance: { addresses: ['198.18.0.20'], name: 'renamed' } });
    await call(t.app, 'POST', `${A}/vpc/address-groups`, { address_group: { name: 'unused', ip_version: 4, ip_set: ['10.0.0.0/8'] } });
    await call(t.app, 'POST', `${A}/vpc/security-groups`, { security_group: { name: 'empty' } });
    expect(t.pushed.length).toBe(n);
    expect(await Promise.all(['web1', 'app1', 'db1', 'other'].map((i) => revisionOf(t, i)))).toEqual(revs);
    // a group rename is in the document
    await call(t.app, 'PUT', `${A}/vpc/security-groups/sg-web`, { security_group: { name: 'web-renamed' } });
    expect(pushedSince(n)).toEqual(['web1']);
  });

  it('revisions only grow', async () => {
    const seen: number[] = [await revisionOf(t, 'db1')];
    for (const port of ['1', '2', '3']) {
      await call(t.app, 'POST', `${A}/vpc/security-group-rules`, { security_group_rule: { security_group_id: 'sg-db', ...rule({ multiport: port }) } });
      seen.push(await revisionOf(t, 'db1'));
    }
    expect([...seen].sort((a, b) => a - b)).toEqual(seen);
    expect(new Set(seen).size).toBe(seen.length);
  });
});

describe('revisions across restarts and re-creation', () => {
  let dir: string;
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'sg-rev-'));
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('keep growing after reopening the database and when an instance is deleted and created again', async () => {
    const file = join(dir, 'c.db');
    let store = openSqliteStore(file);
    let t = makeApi({ store });
    await seed(t.app);
    const r1 = (await policyOf(t, 'ecs-web-1')).policy.revision;
    await store.close();

    store = openSqliteStore(file);
    t = makeApi({ store });
    const reopened = await policyOf(t, 'ecs-web-1');
    expect(reopened.policy.revision).toBe(r1);
    await call(t.app, 'POST', `${A}/vpc/security-group-rules`, { security_group_rule: { security_group_id: 'sg-web', ...rule({ multiport: '443' }) } });
    const r2 = (await policyOf(t, 'ecs-web-1')).policy.revision;
    expect(r2).toBeGreaterThan(r1);
    await call(t.app, 'DELETE', `${A}/instances/ecs-web-1`);
    await call(t.app, 'POST', `${A}/instances`, { instance: { id: 'ecs-web-1', addresses: ['198.18.0.10'], security_groups: ['sg-web'] } });
    expect((await policyOf(t, 'ecs-web-1')).policy.revision).toBeGreaterThan(r2);
    await store.close();
  });
});
