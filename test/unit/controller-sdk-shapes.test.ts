/* eslint-disable @typescript-eslint/no-explicit-any -- SDK responses are loosely typed, checked by the assertions */
/**
 * The complete v3 shapes through the official Node SDK (VpcClient v3,
 * AK/SK): address groups (create/list/show/update/delete, force delete,
 * ip_extra_set, max_capacity, tags, enterprise_project_id), rules with
 * multiport lists, remote group and remote address group, disabled rules,
 * batch create, pagination with limit/marker, filters and dry runs. Only the
 * endpoint and the keys are ours; the policy document is read with the admin
 * token (it is secgroup's own resource, not in the SDK).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BasicCredentials } from '@huaweicloud/huaweicloud-sdk-core';
import {
  BatchCreateSecurityGroupRulesOption,
  BatchCreateSecurityGroupRulesRequest,
  BatchCreateSecurityGroupRulesRequestBody,
  CreateAddressGroupOption,
  CreateAddressGroupRequest,
  CreateAddressGroupRequestBody,
  CreateSecurityGroupOption,
  CreateSecurityGroupRequest,
  CreateSecurityGroupRequestBody,
  CreateSecurityGroupRuleOption,
  CreateSecurityGroupRuleRequest,
  CreateSecurityGroupRuleRequestBody,
  DeleteAddressGroupRequest,
  DeleteIpAddressGroupForceRequest,
  IpExtraSetOption,
  ListAddressGroupRequest,
  ListSecurityGroupRulesRequest,
  ListSecurityGroupsRequest,
  ResourceTag,
  ShowAddressGroupRequest,
  ShowSecurityGroupRequest,
  UpdateAddressGroupOption,
  UpdateAddressGroupRequest,
  UpdateAddressGroupRequestBody,
  VpcClient,
} from '@huaweicloud/huaweicloud-sdk-vpc/v3/public-api.js';
import { silentLogger } from '../../src/lib/logger.js';
import { parseControllerConfig } from '../../src/controller/config.js';
import { createController, type Controller } from '../../src/controller/controller.js';
import { MemoryStore } from '../../src/controller/store/memory.js';

const AK = 'AKSDKSHAPES0123456789';
const SK = 'sdk-shapes-secret-0123456789abcdef';
const PROJECT = 'proj-sdk-shapes';
const ADMIN = 'admin-token-0123456789';
const EPS = '0f0e0d0c-0b0a-4909-8807-060504030201';

let controller: Controller;
let endpoint: string;
let vpc: VpcClient;

beforeAll(async () => {
  const config = parseControllerConfig({
    listen: { host: '127.0.0.1', port: 0 },
    api: { tokens: [{ name: 'admin', token: ADMIN }], access_keys: [{ name: 'sdk-user', access_key: AK, secret_key: SK, projects: [PROJECT] }] },
    log: { level: 'silent' },
    metrics: { process_metrics: false },
  });
  controller = createController({ config, store: new MemoryStore(), logger: silentLogger() });
  endpoint = (await controller.start()).url;
  vpc = VpcClient.newBuilder().withCredential(new BasicCredentials().withAk(AK).withSk(SK).withProjectId(PROJECT)).withEndpoint(endpoint).build();
});

afterAll(async () => {
  await controller?.stop();
});

async function admin(method: string, path: string, body?: unknown): Promise<any> {
  const r = await fetch(`${endpoint}/v3/${PROJECT}${path}`, {
    method,
    headers: { 'x-auth-token': ADMIN, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
    ...(body === undefined ? {} : { body: JSON.stringify(body) }),
  });
  return r.json();
}

const createGroup = async (name: string, opts: { tags?: ResourceTag[]; eps?: string } = {}): Promise<any> => {
  const o = new CreateSecurityGroupOption().withName(name);
  if (opts.tags) o.tags = opts.tags;
  if (opts.eps) o.withEnterpriseProjectId(opts.eps);
  return vpc.createSecurityGroup(new CreateSecurityGroupRequest().withBody(new CreateSecurityGroupRequestBody().withSecurityGroup(o)));
};
const createRule = (o: CreateSecurityGroupRuleOption): Promise<any> =>
  vpc.createSecurityGroupRule(new CreateSecurityGroupRuleRequest().withBody(new CreateSecurityGroupRuleRequestBody().withSecurityGroupRule(o)));
const createAg = (o: CreateAddressGroupOption, dryRun?: boolean): Promise<any> => {
  const body = new CreateAddressGroupRequestBody().withAddressGroup(o);
  if (dryRun !== undefined) body.withDryRun(dryRun);
  return vpc.createAddressGroup(new CreateAddressGroupRequest().withBody(body));
};
async function refused(p: Promise<unknown>, status: number, code: string, msg: RegExp): Promise<void> {
  const e: any = await p.then(
    () => {
      throw new Error('expected a refusal');
    },
    (err: unknown) => err,
  );
  expect(e).toMatchObject({ httpStatusCode: status, errorCode: code });
  expect(e.errorMsg).toMatch(msg);
}

describe('security groups: tags and enterprise_project_id through the SDK', () => {
  it('are stored and returned by create, show and list; list filters by enterprise_project_id', async () => {
    const tags = [new ResourceTag('env', 'prod'), new ResourceTag('owner', 'team-a')];
    const c = await createGroup('tagged', { tags, eps: EPS });
    expect(c.security_group).toMatchObject({ enterprise_project_id: EPS, tags: [{ key: 'env', value: 'prod' }, { key: 'owner', value: 'team-a' }] });
    const shown: any = await vpc.showSecurityGroup(new ShowSecurityGroupRequest().withSecurityGroupId(c.security_group.id));
    expect(shown.security_group.tags).toEqual([{ key: 'env', value: 'prod' }, { key: 'owner', value: 'team-a' }]);
    const listed: any = await vpc.listSecurityGroups(new ListSecurityGroupsRequest().withEnterpriseProjectId(EPS));
    expect(listed.security_groups.map((g: any) => g.id)).toEqual([c.security_group.id]);
    expect((await createGroup('plain')).security_group).toMatchObject({ enterprise_project_id: '0', tags: [] });
  });

  it('more than 20 tags, a duplicate key, or a bad key are refused with 400 naming the field', async () => {
    const many = Array.from({ length: 21 }, (_, i) => new ResourceTag(`k${i}`, 'v'));
    await refused(createGroup('many', { tags: many }), 400, 'SG.0001', /security_group\.tags/);
    await refused(createGroup('dup', { tags: [new ResourceTag('a', '1'), new ResourceTag('a', '2')] }), 400, 'SG.0001', /security_group\.tags: keys must be unique/);
    await refused(createGroup('bad', { tags: [new ResourceTag('', 'x')] }), 400, 'SG.0001', /security_group\.tags\[0\]\.key/);
    await refused(createGroup('eps', { eps: 'not-a-project' }), 400, 'SG.0001', /security_group\.enterprise_project_id/);
  });
});

describe('rules through the SDK', () => {
  it('multiport lists, remote group, remote address group, bare IP normalised, batch create; filters and pagination with limit/marker', async () => {
    const web = (await createGroup('web')).security_group.id as string;
    const app = (await createGroup('app')).security_group.id as string;
    const ag = (await createAg(new CreateAddressGroupOption('ops', 4).withIpSet(['198.18.7.0/24']))).address_group.id as string;
    const r1 = await createRule(new CreateSecurityGroupRuleOption(web, 'ingress').withEthertype('IPv4').withProtocol('tcp').withMultiport('22, 80,8000-8080').withRemoteIpPrefix('198.18.0.5'));
    expect(r1.security_group_rule).toMatchObject({ multiport: '22,80,8000-8080', remote_ip_prefix: '198.18.0.5/32', enabled: true, action: 'allow', priority: 1 });
    const r2 = await createRule(new CreateSecurityGroupRuleOption(web, 'ingress').withEthertype('IPv6').withProtocol('tcp').withMultiport('443').withRemoteGroupId(app));
    expect(r2.security_group_rule).toMatchObject({ remote_group_id: app, ethertype: 'IPv6' });
    const r3 = await createRule(new CreateSecurityGroupRuleOption(web, 'ingress').withProtocol('udp').withMultiport('53').withRemoteAddressGroupId(ag).withAction('deny').withPriority('5'));
    expect(r3.security_group_rule).toMatchObject({ remote_address_group_id: ag, action: 'deny', priority: 5 });
    const batch: any = await vpc.batchCreateSecurityGroupRules(
      new BatchCreateSecurityGroupRulesRequest(web).withBody(
        new BatchCreateSecurityGroupRulesRequestBody().withSecurityGroupRules([
          new BatchCreateSecurityGroupRulesOption('egress').withEthertype('IPv4').withProtocol('tcp').withMultiport('5432').withRemoteIpPrefix('198.18.1.0/24'),
          new BatchCreateSecurityGroupRulesOption('egress').withEthertype('IPv4').withProtocol('tcp').withMultiport('5433').withRemoteIpPrefix('198.18.1.0/24'),
        ]),
      ),
    );
    expect(batch.httpStatusCode).toBe(201);
    expect(batch.security_group_rules.map((r: any) => r.multiport)).toEqual(['5432', '5433']);

    const ids = async (req: ListSecurityGroupRulesRequest): Promise<any> => vpc.listSecurityGroupRules(req);
    const tcpIn: any = await ids(new ListSecurityGroupRulesRequest().withSecurityGroupId([web]).withDirection('ingress').withProtocol(['tcp']));
    expect(tcpIn.security_group_rules.map((r: any) => r.id)).toEqual([r1.security_group_rule.id, r2.security_group_rule.id]);
    const byRemote: any = await ids(new ListSecurityGroupRulesRequest().withRemoteAddressGroupId([ag]));
    expect(byRemote.security_group_rules.map((r: any) => r.id)).toEqual([r3.security_group_rule.id]);
    // web has 4 default rules + 5: pages of 4 walk them all in creation order
    const all: string[] = [];
    let marker: string | undefined;
    for (let pages = 0; pages < 5; pages++) {
      const req = new ListSecurityGroupRulesRequest().withSecurityGroupId([web]).withLimit(4);
      if (marker) req.withMarker(marker);
      const page: any = await vpc.listSecurityGroupRules(req);
      all.push(...page.security_group_rules.map((r: any) => r.id));
      marker = page.page_info.next_marker;
      if (!marker) break;
    }
    expect(all).toHaveLength(9);
    expect(all.slice(4, 7)).toEqual([r1.security_group_rule.id, r2.security_group_rule.id, r3.security_group_rule.id]);
  });

  it('a disabled rule is kept, listed and filterable, but not in the policy document; dry runs create nothing', async () => {
    const g = (await createGroup('dis')).security_group.id as string;
    await admin('POST', '/instances', { instance: { id: 'ecs-dis', addresses: ['198.18.3.1'], security_groups: [g] } });
    const off = await createRule(new CreateSecurityGroupRuleOption(g, 'ingress').withProtocol('tcp').withMultiport('2222').withEnabled(false));
    expect(off.security_group_rule.enabled).toBe(false);
    const on = await createRule(new CreateSecurityGroupRuleOption(g, 'ingress').withProtocol('tcp').withMultiport('3333'));
    const disabled: any = await vpc.listSecurityGroupRules(new ListSecurityGroupRulesRequest().withSecurityGroupId([g]).withEnabled(false));
    expect(disabled.security_group_rules.map((r: any) => r.id)).toEqual([off.security_group_rule.id]);
    const doc = await admin('GET', '/instances/ecs-dis/policy');
    const ruleIds = doc.security_groups.flatMap((sg: any) => sg.rules.map((r: any) => r.id));
    expect(ruleIds).toContain(on.security_group_rule.id);
    expect(ruleIds).not.toContain(off.security_group_rule.id);

    const dry: any = await createAg(new CreateAddressGroupOption('dry', 4).withIpSet(['198.18.9.0/24']), true);
    expect(dry.httpStatusCode).toBe(202);
    const listed: any = await vpc.listAddressGroup(new ListAddressGroupRequest().withName(['dry']));
    expect(listed.address_groups).toEqual([]);
  });
});

describe('address groups through the SDK', () => {
  it('create with ip_extra_set, max_capacity and enterprise_project_id; show, list, update; delete and force delete', async () => {
    const o = new CreateAddressGroupOption('office', 4)
      .withIpExtraSet([new IpExtraSetOption('198.18.4.1').withRemarks('printer'), new IpExtraSetOption('198.18.5.0/24')])
      .withMaxCapacity(5)
      .withEnterpriseProjectId(EPS);
    // the SDK's CreateAddressGroupOption has no tags (its AddressGroup answer has): tags on address groups are tested over REST
    const c = await createAg(o);
    expect(c.httpStatusCode).toBe(201);
    const id = c.address_group.id as string;
    expect(c.address_group).toMatchObject({
      ip_set: ['198.18.4.1/32', '198.18.5.0/24'],
      ip_extra_set: [
        { ip: '198.18.4.1/32', remarks: 'printer' },
        { ip: '198.18.5.0/24', remarks: null },
      ],
      max_capacity: 5,
      status: 'NORMAL',
      status_message: '',
      enterprise_project_id: EPS,
      tags: [],
    });
    const shown: any = await vpc.showAddressGroup(new ShowAddressGroupRequest().withAddressGroupId(id));
    expect(shown.address_group.ip_extra_set).toEqual(c.address_group.ip_extra_set);
    const listed: any = await vpc.listAddressGroup(new ListAddressGroupRequest().withEnterpriseProjectId(EPS));
    expect(listed.address_groups.map((a: any) => a.id)).toEqual([id]);

    const updated: any = await vpc.updateAddressGroup(
      new UpdateAddressGroupRequest().withAddressGroupId(id).withBody(new UpdateAddressGroupRequestBody().withAddressGroup(new UpdateAddressGroupOption().withIpSet(['198.18.6.1']).withMaxCapacity(3))),
    );
    expect(updated.address_group).toMatchObject({ ip_set: ['198.18.6.1/32'], ip_extra_set: [{ ip: '198.18.6.1/32', remarks: null }], max_capacity: 3 });

    await refused(
      vpc.updateAddressGroup(
        new UpdateAddressGroupRequest().withAddressGroupId(id).withBody(new UpdateAddressGroupRequestBody().withAddressGroup(new UpdateAddressGroupOption().withIpSet(['198.18.6.1', '198.18.6.2', '198.18.6.3', '198.18.6.4']))),
      ),
      409,
      'VPC.9905',
      /max_capacity: 3/,
    );
    await refused(
      createAg(new CreateAddressGroupOption('both', 4).withIpSet(['198.18.4.1']).withIpExtraSet([new IpExtraSetOption('198.18.4.2')])),
      400,
      'VPC.9901',
      /ip_set and ip_extra_set are mutually exclusive/,
    );
    await refused(createAg(new CreateAddressGroupOption('dupx', 4).withIpExtraSet([new IpExtraSetOption('198.18.4.1'), new IpExtraSetOption('198.18.4.1/32')])), 400, 'VPC.9901', /ip_extra_set\[1\]/);

    const deleted: any = await vpc.deleteAddressGroup(new DeleteAddressGroupRequest().withAddressGroupId(id));
    expect(deleted.httpStatusCode).toBe(204);
    // force delete (Huawei: the rules that reference the group go with it); a plain delete refuses while referenced
    const other = (await createAg(new CreateAddressGroupOption('full', 6).withIpSet(['fd00:5ec::/64']))).address_group.id as string;
    const g = (await createGroup('uses-ag')).security_group.id as string;
    const ref = await createRule(new CreateSecurityGroupRuleOption(g, 'ingress').withEthertype('IPv6').withProtocol('tcp').withMultiport('22').withRemoteAddressGroupId(other));
    await refused(vpc.deleteAddressGroup(new DeleteAddressGroupRequest().withAddressGroupId(other)), 409, 'VPC.9907', /is referenced by rule/);
    const forced: any = await vpc.deleteIpAddressGroupForce(new DeleteIpAddressGroupForceRequest().withAddressGroupId(other));
    expect(forced.httpStatusCode).toBe(204);
    const left: any = await vpc.listSecurityGroupRules(new ListSecurityGroupRulesRequest().withId([ref.security_group_rule.id]));
    expect(left.security_group_rules).toEqual([]);
    await refused(vpc.showAddressGroup(new ShowAddressGroupRequest().withAddressGroupId(other)), 404, 'VPC.9904', /address group/);
    await refused(vpc.deleteIpAddressGroupForce(new DeleteIpAddressGroupForceRequest().withAddressGroupId(other)), 404, 'VPC.9904', /address group/);
  });
});
