/**
 * The controllers an agent may talk to (`controller.urls`, or the one
 * `controller.url`): what the control-channel platform rule must let out
 * (every address and port of every controller, DNS when one is a name) and
 * the list of targets the control channel moves through when a connection
 * is lost (controller-client.ts). A URL whose host name resolves to several
 * addresses is one target per address (replicas behind one DNS name), each
 * dialled at its address. Names are resolved again before every reconnect;
 * a name that cannot be resolved keeps its last addresses and is dialled by
 * name.
 */
import { errorMessage } from '../lib/errors.js';
import type { Logger } from '../lib/logger.js';
import { ipFamily } from '../policy/address.js';
import type { ControllerEndpoint } from '../policy/platform.js';
import { controllerHostPort } from './config.js';
import type { DialTarget } from './controller-client.js';

export interface Resolver {
  /** addresses of a host name (IPv4 and IPv6); throws when it cannot be resolved */
  resolve(host: string): Promise<string[]>;
}

/** Controller endpoint for the platform rule: an IP literal as is, a name resolved (and DNS allowed). Throws when a name cannot be resolved. */
export async function resolveControllerEndpoint(url: string, resolver: Resolver): Promise<ControllerEndpoint> {
  const { host, port } = controllerHostPort(url);
  if (ipFamily(host) !== null) return { addresses: [host], port, dns: false };
  const addresses = [...new Set(await resolver.resolve(host))].filter((a) => ipFamily(a) !== null).sort();
  return { addresses, port, dns: true };
}

/**
 * One endpoint for the platform rule from several controllers' endpoints:
 * the addresses of the first port in `addresses`/`port`, those of other
 * ports in `more`; DNS allowed when any controller is a name. Null for none.
 */
export function mergeEndpoints(list: readonly ControllerEndpoint[]): ControllerEndpoint | null {
  if (!list.length) return null;
  const byPort = new Map<number, Set<string>>();
  for (const e of list) {
    const set = byPort.get(e.port) ?? new Set<string>();
    for (const a of e.addresses) set.add(a);
    byPort.set(e.port, set);
  }
  const [[port, first], ...rest] = [...byPort] as [[number, Set<string>], ...[number, Set<string>][]];
  const merged: ControllerEndpoint = { addresses: [...first].sort(), port, dns: list.some((e) => e.dns) };
  if (rest.length) merged.more = rest.map(([p, set]) => ({ addresses: [...set].sort(), port: p }));
  return merged;
}

/** Dial targets: each URL in order; a name with resolved addresses once per address. */
export function dialTargets(urls: readonly string[], endpoints: ReadonlyMap<string, ControllerEndpoint>): DialTarget[] {
  return urls.flatMap((url) => {
    const e = endpoints.get(url);
    return e?.dns && e.addresses.length ? e.addresses.map((address) => ({ url, address })) : [{ url }];
  });
}

export class ControllerDirectory {
  private readonly endpoints = new Map<string, ControllerEndpoint>();
  private list: DialTarget[];

  constructor(
    private readonly urls: readonly string[],
    private readonly resolver: Resolver,
    private readonly logger: Logger,
  ) {
    this.list = urls.map((url) => ({ url }));
  }

  /** Resolves every controller name again; true when the platform rule's endpoint changed. */
  async refresh(): Promise<boolean> {
    const before = JSON.stringify(this.endpoint());
    for (const url of this.urls) {
      try {
        this.endpoints.set(url, await resolveControllerEndpoint(url, this.resolver));
      } catch (e) {
        const { port } = controllerHostPort(url);
        this.logger.warn({ event: 'resolve_failed', url, err: e }, `cannot resolve the controller host of ${url}: ${errorMessage(e)} (DNS stays allowed; will retry)`);
        this.endpoints.set(url, { addresses: this.endpoints.get(url)?.addresses ?? [], port, dns: true });
      }
    }
    this.list = dialTargets(this.urls, this.endpoints);
    return JSON.stringify(this.endpoint()) !== before;
  }

  /** What the platform rule lets out (null before the first refresh). */
  endpoint(): ControllerEndpoint | null {
    return mergeEndpoints(this.urls.flatMap((u) => this.endpoints.get(u) ?? []));
  }

  /** The targets the control channel moves through, in order. */
  targets(): readonly DialTarget[] {
    return this.list;
  }
}
