/**
 * How risky a port open to the internet is (the exposure list's `risk`,
 * docs/api.md "Exposure"): remote administration and databases are
 * critical, infrastructure services high, web low, anything else medium.
 * Pure data and lookups; `analysis.ts` decides what is exposed.
 */

export type Risk = 'critical' | 'high' | 'medium' | 'low';

interface Service {
  name: string;
  kind: 'admin' | 'database' | 'infrastructure' | 'web';
}

/** Well-known services by `protocol/port`; admin and database ports open to the world are the riskiest. */
const SERVICES: Record<string, Service> = {
  'tcp/22': { name: 'SSH', kind: 'admin' },
  'tcp/23': { name: 'Telnet', kind: 'admin' },
  'tcp/3389': { name: 'RDP', kind: 'admin' },
  'udp/3389': { name: 'RDP', kind: 'admin' },
  'tcp/5900': { name: 'VNC', kind: 'admin' },
  'tcp/5985': { name: 'WinRM', kind: 'admin' },
  'tcp/5986': { name: 'WinRM', kind: 'admin' },
  'tcp/2375': { name: 'Docker API', kind: 'admin' },
  'tcp/2376': { name: 'Docker API', kind: 'admin' },
  'tcp/6443': { name: 'Kubernetes API', kind: 'admin' },
  'tcp/10250': { name: 'kubelet', kind: 'admin' },
  'tcp/3306': { name: 'MySQL', kind: 'database' },
  'tcp/5432': { name: 'PostgreSQL', kind: 'database' },
  'tcp/1433': { name: 'SQL Server', kind: 'database' },
  'tcp/1521': { name: 'Oracle', kind: 'database' },
  'tcp/27017': { name: 'MongoDB', kind: 'database' },
  'tcp/6379': { name: 'Redis', kind: 'database' },
  'tcp/9200': { name: 'Elasticsearch', kind: 'database' },
  'tcp/11211': { name: 'memcached', kind: 'database' },
  'udp/11211': { name: 'memcached', kind: 'database' },
  'tcp/5984': { name: 'CouchDB', kind: 'database' },
  'tcp/9042': { name: 'Cassandra', kind: 'database' },
  'tcp/2379': { name: 'etcd', kind: 'database' },
  'tcp/21': { name: 'FTP', kind: 'infrastructure' },
  'tcp/111': { name: 'rpcbind', kind: 'infrastructure' },
  'udp/111': { name: 'rpcbind', kind: 'infrastructure' },
  'tcp/135': { name: 'MS RPC', kind: 'infrastructure' },
  'udp/137': { name: 'NetBIOS', kind: 'infrastructure' },
  'udp/138': { name: 'NetBIOS', kind: 'infrastructure' },
  'tcp/139': { name: 'NetBIOS', kind: 'infrastructure' },
  'udp/161': { name: 'SNMP', kind: 'infrastructure' },
  'tcp/389': { name: 'LDAP', kind: 'infrastructure' },
  'tcp/445': { name: 'SMB', kind: 'infrastructure' },
  'tcp/2049': { name: 'NFS', kind: 'infrastructure' },
  'udp/2049': { name: 'NFS', kind: 'infrastructure' },
  'tcp/80': { name: 'HTTP', kind: 'web' },
  'tcp/443': { name: 'HTTPS', kind: 'web' },
  'udp/443': { name: 'HTTPS (QUIC)', kind: 'web' },
  'tcp/8080': { name: 'HTTP', kind: 'web' },
  'tcp/8443': { name: 'HTTPS', kind: 'web' },
};

const RISK_OF: Record<Service['kind'], Risk> = { admin: 'critical', database: 'critical', infrastructure: 'high', web: 'low' };
export const RISK_ORDER: Record<Risk, number> = { critical: 0, high: 1, medium: 2, low: 3 };
const KIND_ORDER: Record<Service['kind'], number> = { admin: 0, database: 1, infrastructure: 2, web: 3 };

/** The risk of `protocol/port` open to the internet, and why. */
export function riskOf(protocol: 'tcp' | 'udp', port: number): { risk: Risk; reason: string } {
  const s = SERVICES[`${protocol}/${port}`];
  if (s) return { risk: RISK_OF[s.kind], reason: `${s.name} (${s.kind}) open to the internet` };
  return { risk: 'medium', reason: `${protocol}/${port} open to the internet` };
}

/** Admin, then database, then other well-known ports, then the rest: the order within one risk. */
export function serviceRank(protocol: 'tcp' | 'udp', port: number): number {
  const s = SERVICES[`${protocol}/${port}`];
  return s ? KIND_ORDER[s.kind] : 4;
}
