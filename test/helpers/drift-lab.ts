/**
 * What the drift kernel tests (test/kernel/drift-monitor.test.ts with `nft
 * monitor`, drift-listener.test.ts with secgroup-nftwatch) share: the lab
 * policy and the hand edits that matter, each with the drift kind it is.
 */
import { memberSetName } from '../../src/nft/compile.js';
import { CLIENT_ADDR, CONTROLLER_PORT, HOST_ADDR } from './agent-lab.js';

/** the member set of group `peers` (IPv4) */
export const PEERS_SET = memberSetName(4, 'peers');

/**
 * tcp `ports` (default 8000) from the client's address, tcp 8001 from the
 * members of group `peers` (the client among them), all egress; with
 * `prefixRules`, ten port rules from 198.18.0.0/15 (an interval map with
 * concatenated keys: what nft 1.0.6's monitor dies on).
 */
export function driftLabPolicy(revision: number, o: { members: string[]; ports?: string; prefixRules?: boolean }) {
  return {
    revision,
    instance: { id: 'lab-1', addresses: [HOST_ADDR] },
    security_groups: [
      {
        id: 'sg-lab',
        rules: [
          { id: 'r-tcp', direction: 'ingress', protocol: 'tcp', multiport: o.ports ?? '8000', remote_ip_prefix: `${CLIENT_ADDR}/32` },
          { id: 'r-peers', direction: 'ingress', protocol: 'tcp', multiport: '8001', remote_group_id: 'peers' },
          { id: 'r-out', direction: 'egress' },
          ...(o.prefixRules ? Array.from({ length: 10 }, (_, i) => ({ id: `r-p${i}`, direction: 'ingress', protocol: 'tcp', multiport: `${2000 + i}`, remote_ip_prefix: '198.18.0.0/15' })) : []),
        ],
      },
    ],
    group_members: { peers: o.members },
  };
}

/** Every way of changing our table by hand that matters: what, the drift kind it is, the nft command. */
export const TAMPERS = [
  ['table deleted', 'missing', ['delete', 'table', 'inet', 'secgroup']],
  ['chain flushed', 'structure', ['flush', 'chain', 'inet', 'secgroup', 'input']],
  ['rule inserted', 'structure', ['insert', 'rule', 'inet', 'secgroup', 'input', 'tcp', 'dport', '8002', 'accept']],
  ['element removed', 'modified', ['delete', 'element', 'inet', 'secgroup', PEERS_SET, `{ ${CLIENT_ADDR} }`]],
  ['set flushed', 'modified', ['flush', 'set', 'inet', 'secgroup', PEERS_SET]],
] as const;

/**
 * The agent's config in the lab: its controller the lab peer, the periodic
 * check once a year (whatever is repaired, the monitor repaired), drift
 * followed by `driftListener` (a path that does not exist: `nft monitor`).
 */
export function driftAgentConfig(labDir: string, driftListener: string) {
  return {
    instance_id: 'lab-1',
    state_dir: `${labDir}/state`,
    log_level: 'debug',
    controller: { url: `ws://${CLIENT_ADDR}:${CONTROLLER_PORT}`, token: 'lab-token', reconnect_initial_ms: 100, reconnect_max_ms: 1000 },
    drift_schedule: '0 0 0 1 1 *',
    drift_listener: driftListener,
    http_listen: '127.0.0.1:9469',
    platform: { dhcp: false },
  };
}
