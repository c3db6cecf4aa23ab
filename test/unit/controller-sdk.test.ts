/* eslint-disable @typescript-eslint/no-explicit-any -- SDK responses are loosely typed, checked by the assertions */
/**
 * The official Huawei Cloud Node SDK (VpcClient v3, BasicCredentials AK/SK)
 * against a controller started in-process on 127.0.0.1: only the endpoint
 * and the keys are ours, no header is added or changed. The controller runs
 * on the system clock because the SDK signs with the current time.
 * `uuid` is a devDependency only because the SDK core requires it without
 * declaring it (http/DefaultUserAgent.js).
 */
import { request } from 'node:http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BasicCredentials } from '@huaweicloud/huaweicloud-sdk-core';
import { AKSKSigner } from '@huaweicloud/huaweicloud-sdk-core/auth/AKSKSigner.js';
import {
  CreateSecurityGroupOption,
  CreateSecurityGroupRequest,
  CreateSecurityGroupRequestBody,
  CreateSecurityGroupRuleOption,
  CreateSecurityGroupRuleRequest,
  CreateSecurityGroupRuleRequestBody,
  DeleteSecurityGroupRequest,
  DeleteSecurityGroupRuleRequest,
  ListSecurityGroupRulesRequest,
  ListSecurityGroupsRequest,
  ShowSecurityGroupRequest,
  ShowSecurityGroupRuleRequest,
  UpdateSecurityGroupOption,
  UpdateSecurityGroupRequest,
  UpdateSecurityGroupRequestBody,
  VpcClient,
} from '@huaweicloud/huaweicloud-sdk-vpc/v3/public-api.js';
import { silentLogger } from '../../src/lib/logger.js';
import { parseControllerConfig } from '../../src/controller/config.js';
import { createController, type Controller } from '../../src/controller/controller.js';
import { MemoryStore } from '../../src/controller/store/memory.js';

const AK = 'AKSDKTEST01234567890';
const SK = 'sdk-secret-key-0123456789abcdef';
const PROJECT = 'proj-sdk';

let controller: Controller;
let endpoint: string;

function client(opts: { sk?: string; project?: string } = {}): VpcClient {
  const cred = new BasicCredentials()
    .withAk(AK)
    .withSk(opts.sk ?? SK)
    .withProjectId(opts.project ?? PROJECT);
  return VpcClient.newBuilder().withCredential(cred).withEndpoint(endpoint).build();
}

beforeAll(async () => {
  const config = parseControllerConfig({
    listen: { host: '127.0.0.1', port: 0 },
    api: {
      tokens: [{ name: 'admin', token: 'admin-token-0123456789' }],
      access_keys: [{ name: 'sdk-user', access_key: AK, secret_key: SK, projects: [PROJECT] }],
    },
    log: { level: 'silent' },
    metrics: { process_metrics: false },
  });
  controller = createController({ config, store: new MemoryStore(), logger: silentLogger() });
  endpoint = (await controller.start()).url;
});

afterAll(async () => {
  await controller?.stop();
});

describe('the official Node SDK (VpcClient v3, AK/SK) against the controller', () => {
  it('creates, lists, shows, updates and deletes a security group and a rule', async () => {
    const vpc = client();
    const created: any = await vpc.createSecurityGroup(
      new CreateSecurityGroupRequest().withBody(new CreateSecurityGroupRequestBody().withSecurityGroup(new CreateSecurityGroupOption().withName('sdk-web').withDescription('from the SDK'))),
    );
    expect(created.httpStatusCode).toBe(201);
    const groupId: string = created.security_group.id;
    expect(created.security_group.name).toBe('sdk-web');

    const listed: any = await vpc.listSecurityGroups(new ListSecurityGroupsRequest().withId([groupId, 'default']));
    expect(listed.httpStatusCode).toBe(200);
    expect(listed.security_groups.map((g: any) => g.id).sort()).toEqual([groupId, 'default'].sort());

    const shown: any = await vpc.showSecurityGroup(new ShowSecurityGroupRequest().withSecurityGroupId(groupId));
    expect(shown.security_group.description).toBe('from the SDK');

    const updated: any = await vpc.updateSecurityGroup(
      new UpdateSecurityGroupRequest().withSecurityGroupId(groupId).withBody(new UpdateSecurityGroupRequestBody().withSecurityGroup(new UpdateSecurityGroupOption().withName('sdk-web-2'))),
    );
    expect(updated.security_group.name).toBe('sdk-web-2');

    const ruleOption = new CreateSecurityGroupRuleOption(groupId, 'ingress').withEthertype('IPv4').withProtocol('tcp').withMultiport('22,443').withRemoteIpPrefix('198.18.0.0/15');
    const rule: any = await vpc.createSecurityGroupRule(new CreateSecurityGroupRuleRequest().withBody(new CreateSecurityGroupRuleRequestBody().withSecurityGroupRule(ruleOption)));
    expect(rule.httpStatusCode).toBe(201);
    const ruleId: string = rule.security_group_rule.id;
    expect(rule.security_group_rule).toMatchObject({ security_group_id: groupId, direction: 'ingress', protocol: 'tcp', multiport: '22,443' });

    const rules: any = await vpc.listSecurityGroupRules(new ListSecurityGroupRulesRequest().withSecurityGroupId([groupId]));
    expect(rules.security_group_rules.map((r: any) => r.id)).toContain(ruleId);
    const shownRule: any = await vpc.showSecurityGroupRule(new ShowSecurityGroupRuleRequest().withSecurityGroupRuleId(ruleId));
    expect(shownRule.security_group_rule.remote_ip_prefix).toBe('198.18.0.0/15');

    const ruleDeleted: any = await vpc.deleteSecurityGroupRule(new DeleteSecurityGroupRuleRequest().withSecurityGroupRuleId(ruleId));
    expect(ruleDeleted.httpStatusCode).toBe(204);
    const groupDeleted: any = await vpc.deleteSecurityGroup(new DeleteSecurityGroupRequest().withSecurityGroupId(groupId));
    expect(groupDeleted.httpStatusCode).toBe(204);
    await expect(vpc.showSecurityGroup(new ShowSecurityGroupRequest().withSecurityGroupId(groupId))).rejects.toMatchObject({ httpStatusCode: 404 });
  });

  it('a wrong secret key is refused with 401 APIG.0301', async () => {
    await expect(client({ sk: 'not-the-secret-0123456789' }).listSecurityGroups(new ListSecurityGroupsRequest())).rejects.toMatchObject({
      httpStatusCode: 401,
      errorCode: 'APIG.0301',
    });
  });

  it('a project the key may not use is refused with 403 APIG.0302', async () => {
    await expect(client({ project: 'proj-other' }).listSecurityGroups(new ListSecurityGroupsRequest())).rejects.toMatchObject({
      httpStatusCode: 403,
      errorCode: 'APIG.0302',
    });
  });
});

/** Signs with the SDK's signer and the current time; sends with node:http (chunked when `chunks` is given, else headers only with `contentLength`). */
function rawSigned(o: { ak?: string; body?: string; chunks?: string[]; contentLength?: number }): Promise<{ status: number; body: any; connection: string | undefined }> {
  const path = `/v3/${PROJECT}/vpc/security-groups`;
  const cred = new BasicCredentials().withAk(o.ak ?? AK).withSk(SK);
  const data = o.body === undefined ? undefined : JSON.parse(o.body);
  const headers = AKSKSigner.sign({ endpoint: `${endpoint}${path}`, method: 'POST', headers: { 'content-type': 'application/json' }, queryParams: {}, data } as any, cred) as Record<string, string>;
  return new Promise((resolve, reject) => {
    const req = request(`${endpoint}${path}`, { method: 'POST', headers: { ...headers, ...(o.contentLength === undefined ? {} : { 'content-length': String(o.contentLength) }) } }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => (text += d));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: JSON.parse(text), connection: res.headers.connection }));
    });
    req.on('error', reject);
    if (o.chunks) {
      for (const c of o.chunks) req.write(c);
      req.end();
    } else req.flushHeaders(); // the body is never sent: the answer must come from the headers alone
  });
}

describe('AK/SK over a real connection', () => {
  it('a chunked signed body is read, verified and parsed', async () => {
    const body = JSON.stringify({ security_group: { id: 'sg-chunked', name: 'chunked' } });
    const r = await rawSigned({ body, chunks: [body.slice(0, 10), body.slice(10)] });
    expect(r.status).toBe(201);
    expect(r.body.security_group.id).toBe('sg-chunked');
  });

  it('an unknown access key is refused from the headers alone, the body unread, and the connection closed', async () => {
    const r = await rawSigned({ ak: 'AKNOTCONFIGURED000', body: '{}', contentLength: 1000 });
    expect(r.status).toBe(401);
    expect(r.body.error_code).toBe('APIG.0301');
    expect(r.connection).toBe('close');
  });
});
