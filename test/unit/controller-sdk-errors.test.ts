/* eslint-disable @typescript-eslint/no-explicit-any -- SDK responses are loosely typed, checked by the assertions */
/**
 * Huawei's error codes through the official Node SDK (VpcClient v3, AK/SK):
 * each documented refusal arrives as the SDK's exception with Huawei's HTTP
 * status and `error_code` (VPC error-code appendix, V3 rows), and a dry run
 * answers 202 `SYS.0202`. Only the endpoint and the keys are ours.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BasicCredentials } from '@huaweicloud/huaweicloud-sdk-core';
import {
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
  AddSecurityGroupsRequest,
  AddSecurityGroupsRequestBody,
  DeleteSecurityGroupRequest,
  InsertSecurityGroupOption,
  ListSecurityGroupsRequest,
  ShowAddressGroupRequest,
  ShowSecurityGroupRequest,
  ShowSecurityGroupRuleRequest,
  VpcClient,
} from '@huaweicloud/huaweicloud-sdk-vpc/v3/public-api.js';
import { silentLogger } from '../../src/lib/logger.js';
import { parseControllerConfig } from '../../src/controller/config.js';
import { createController, type Controller } from '../../src/controller/controller.js';
import { MemoryStore } from '../../src/controller/store/memory.js';

const AK = 'AKSDKERRORS0123456789';
const SK = 'sdk-errors-secret-0123456789abcdef';
const PROJECT = 'proj-sdk-errors';

let controller: Controller;
let vpc: VpcClient;

beforeAll(async () => {
  const config = parseControllerConfig({
    listen: { host: '127.0.0.1', port: 0 },
    api: { tokens: [{ name: 'admin', token: 'admin-token-0123456789' }], access_keys: [{ name: 'sdk-user', access_key: AK, secret_key: SK, projects: [PROJECT] }] },
    quotas: { security_groups_per_project: 3 },
    log: { level: 'silent' },
    metrics: { process_metrics: false },
  });
  controller = createController({ config, store: new MemoryStore(), logger: silentLogger() });
  const endpoint = (await controller.start()).url;
  vpc = VpcClient.newBuilder().withCredential(new BasicCredentials().withAk(AK).withSk(SK).withProjectId(PROJECT)).withEndpoint(endpoint).build();
});

afterAll(async () => {
  await controller?.stop();
});

const createGroup = (name: string, dryRun?: boolean): Promise<any> => {
  const body = new CreateSecurityGroupRequestBody().withSecurityGroup(new CreateSecurityGroupOption().withName(name));
  if (dryRun !== undefined) body.withDryRun(dryRun);
  return vpc.createSecurityGroup(new CreateSecurityGroupRequest().withBody(body));
};
const createRule = (o: CreateSecurityGroupRuleOption): Promise<any> =>
  vpc.createSecurityGroupRule(new CreateSecurityGroupRuleRequest().withBody(new CreateSecurityGroupRuleRequestBody().withSecurityGroupRule(o)));
const createAg = (o: CreateAddressGroupOption): Promise<any> => vpc.createAddressGroup(new CreateAddressGroupRequest().withBody(new CreateAddressGroupRequestBody().withAddressGroup(o)));

/** The SDK's exception for a refused call: status, Huawei's code, and a message naming the field or id. */
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

describe('Huawei error codes through the official SDK', () => {
  // first: the quota test below fills the project
  it('a dry run answers 202 SYS.0202 and creates nothing', async () => {
    const r: any = await createGroup('dry', true);
    expect(r.httpStatusCode).toBe(202);
    expect(r.error_code ?? r.errorCode).toBe('SYS.0202');
    const listed: any = await vpc.listSecurityGroups(new ListSecurityGroupsRequest());
    expect(listed.security_groups.map((g: any) => g.name)).toEqual(['default']);
  });

  it('404 VPC.9904 for an unknown security group, rule and address group', async () => {
    await refused(vpc.showSecurityGroup(new ShowSecurityGroupRequest().withSecurityGroupId('sg-none')), 404, 'VPC.9904', /security group "sg-none" not found/);
    await refused(vpc.showSecurityGroupRule(new ShowSecurityGroupRuleRequest().withSecurityGroupRuleId('r-none')), 404, 'VPC.9904', /rule "r-none"/);
    await refused(vpc.showAddressGroup(new ShowAddressGroupRequest().withAddressGroupId('ag-none')), 404, 'VPC.9904', /address group "ag-none"/);
  });

  it('409 VPC.9902 for a group in use and for a duplicate rule; 400 VPC.9902 for an ethertype that disagrees', async () => {
    const a = (await createGroup('a')).security_group.id as string;
    const b = (await createGroup('b')).security_group.id as string;
    const rule = () => new CreateSecurityGroupRuleOption(b, 'ingress').withEthertype('IPv4').withProtocol('tcp').withMultiport('22').withRemoteGroupId(a);
    expect((await createRule(rule())).httpStatusCode).toBe(201);
    await refused(createRule(rule()), 409, 'VPC.9902', /duplicates rule/);
    await refused(vpc.deleteSecurityGroup(new DeleteSecurityGroupRequest().withSecurityGroupId(a)), 409, 'VPC.9902', new RegExp(`security group "${a}" is referenced by rule`));
    await refused(vpc.deleteSecurityGroup(new DeleteSecurityGroupRequest().withSecurityGroupId('default')), 409, 'VPC.9902', /default security group/);
    await refused(
      createRule(new CreateSecurityGroupRuleOption(b, 'ingress').withEthertype('IPv6').withProtocol('icmp')),
      400,
      'VPC.9902',
      /security_group_rule\.protocol: "icmp" .*needs ethertype IPv4/,
    );
  });

  it('409 VPC.9905 over a quota', async () => {
    await refused(createGroup('over'), 409, 'VPC.9905', /quota security_groups_per_project: 3/);
  });

  it('400 VPC.9901 for an invalid or duplicate ip_set entry; 409 VPC.9907 for an address group in use', async () => {
    await refused(createAg(new CreateAddressGroupOption('bad', 4).withIpSet(['198.18.0.1', 'not-an-ip'])), 400, 'VPC.9901', /address_group\.ip_set\[1\]/);
    await refused(createAg(new CreateAddressGroupOption('dup', 4).withIpSet(['198.18.0.1', '198.18.0.1/32'])), 400, 'VPC.9901', /ip_set\[1\]: "198.18.0.1\/32" is listed twice/);
    const ag = (await createAg(new CreateAddressGroupOption('office', 4).withIpSet(['198.18.0.0/24']))).address_group.id as string;
    expect((await createRule(new CreateSecurityGroupRuleOption('default', 'ingress').withEthertype('IPv4').withProtocol('tcp').withMultiport('443').withRemoteAddressGroupId(ag))).httpStatusCode).toBe(201);
    await refused(vpc.deleteAddressGroup(new DeleteAddressGroupRequest().withAddressGroupId(ag)), 409, 'VPC.9907', new RegExp(`address group "${ag}" is referenced by rule`));
  });

  it('an operation outside the surface (AddSecurityGroups on a port) is 404 APIG.0101 naming it', async () => {
    const req = new AddSecurityGroupsRequest()
      .withPortId('port-1')
      .withBody(new AddSecurityGroupsRequestBody().withPort(new InsertSecurityGroupOption(['default'])));
    await refused(vpc.addSecurityGroups(req), 404, 'APIG.0101', /no such API: PUT \/v3\/proj-sdk-errors\/ports\/port-1\/insert-security-groups: ports are outside/);
  });
});
