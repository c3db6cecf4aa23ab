// The official Huawei Cloud Node SDK against a secgroup controller: only the
// endpoint and the keys are ours. With the example controller running
// (examples/config/controller.yaml, which holds this AK/SK pair for project
// "demo"):
//
//   node examples/sdk/create-group.mjs
//
// Environment: SECGROUP_ENDPOINT (default http://127.0.0.1:8443),
// SECGROUP_AK, SECGROUP_SK, SECGROUP_PROJECT (default demo).
import { BasicCredentials } from '@huaweicloud/huaweicloud-sdk-core';
import {
  CreateSecurityGroupOption,
  CreateSecurityGroupRequest,
  CreateSecurityGroupRequestBody,
  CreateSecurityGroupRuleOption,
  CreateSecurityGroupRuleRequest,
  CreateSecurityGroupRuleRequestBody,
  VpcClient,
} from '@huaweicloud/huaweicloud-sdk-vpc/v3/public-api.js';

const credentials = new BasicCredentials()
  .withAk(process.env.SECGROUP_AK ?? 'EXAMPLEAK0123456789X')
  .withSk(process.env.SECGROUP_SK ?? 'example-secret-key-0123456789abcdef')
  .withProjectId(process.env.SECGROUP_PROJECT ?? 'demo');
const vpc = VpcClient.newBuilder()
  .withCredential(credentials)
  .withEndpoint(process.env.SECGROUP_ENDPOINT ?? 'http://127.0.0.1:8443')
  .build();

const group = await vpc.createSecurityGroup(
  new CreateSecurityGroupRequest().withBody(
    new CreateSecurityGroupRequestBody().withSecurityGroup(new CreateSecurityGroupOption().withName('web-from-sdk')),
  ),
);
const groupId = group.security_group.id;
const rule = await vpc.createSecurityGroupRule(
  new CreateSecurityGroupRuleRequest().withBody(
    new CreateSecurityGroupRuleRequestBody().withSecurityGroupRule(
      new CreateSecurityGroupRuleOption()
        .withSecurityGroupId(groupId)
        .withDirection('ingress')
        .withEthertype('IPv4')
        .withProtocol('tcp')
        .withMultiport('80,443')
        .withRemoteIpPrefix('0.0.0.0/0'),
    ),
  ),
);
console.log(`security group ${groupId} (${group.security_group.security_group_rules.length} default rules) + rule ${rule.security_group_rule.id}: tcp ${rule.security_group_rule.multiport} from ${rule.security_group_rule.remote_ip_prefix}`);
