// The proxy's control-plane guard: which targets and instances are a Tandem sidecar or a Consul agent, never proxied to.
import { lookup } from 'node:dns/promises';
import { isIP } from 'node:net';
import { networkInterfaces } from 'node:os';
import { SIDECAR_SERVICE } from '../common/sidecar-marker.ts';
import type { Endpoint, EndpointSource, Subscription } from './endpoint-source.ts';
import type { Subset } from './endpoint-set.ts';
import { ControlPlaneError } from './errors.ts';

/** Catalog services that are control planes: the sidecars themselves, and Consul's own servers. */
const CONTROL_PLANE_SERVICES: ReadonlySet<string> = new Set([SIDECAR_SERVICE, 'consul']);
/** Addresses learnt at connect time (a name that resolved to a control plane): bounded, however many names an app invents. */
const MAX_LEARNT = 1024;
const NONE: ReadonlySet<string> = new Set();

/**
 * Decides, per target and per instance, whether the proxy may reach it. An instance is refused when:
 * its service is `tandem` or `consul`; it carries the sidecar mark (`controlPlane`, from the tag
 * `tandem-sidecar` or Meta `tandem_api`); its id is a sidecar's; or its address:port is a control
 * plane's — this sidecar's API and proxy listeners, the Consul agents it talks to, every sidecar in the
 * catalog. Listeners on this host count on every local address (loopback, wildcard, any interface):
 * an app can register `127.0.0.2:<api port>` or the host's LAN address as easily as `127.0.0.1`.
 * The forwarder checks the connected peer too, which catches names (`localhost`, DNS) and numeric
 * spellings (`2130706433`) that resolve to one of them.
 */
export class ControlPlaneGuard {
  #local = localAddresses();
  /** Fixed at start: own listeners, Consul agents. */
  #fixedExact = new Set<string>();
  #fixedPorts = new Set<number>();
  /** From the catalog's `tandem` service, replaced on every update. */
  #sidecarExact = new Set<string>();
  #sidecarPorts = new Set<number>();
  #sidecarIds = new Set<string>();
  #sidecars = new Map<string, Endpoint>();
  #learnt = new Set<string>();
  #generation = 0;
  /** Per subset, the ids of its control-plane instances, valid while the generation holds. */
  #refused = new WeakMap<Subset, { generation: number; ids: ReadonlySet<string> }>();

  constructor(opts: { consulAddresses?: readonly string[] } = {}) {
    for (const a of opts.consulAddresses ?? []) this.protectUrl(a);
  }

  /** A listener or agent at host:port (host may be a wildcard). */
  protect(host: string, port: number): void {
    const h = normalizeHost(host);
    if (this.#isLocal(h)) this.#fixedPorts.add(port);
    else this.#fixedExact.add(`${h}:${port}`);
    this.#generation++;
    // A name (say a Consul agent at consul.internal): its addresses too, so the connect-time check knows them.
    if (isIP(h) === 0 && !this.#isLocal(h)) {
      void lookup(h, { all: true }).then(
        (addrs) => {
          for (const a of addrs) this.protect(a.address, port);
        },
        () => undefined, // unresolvable now: the name itself stays refused
      );
    }
  }

  /** An HTTP(S) URL such as a Consul agent's address. */
  protectUrl(url: string): void {
    const u = new URL(url);
    this.protect(u.hostname, Number(u.port || (u.protocol === 'https:' ? 443 : 80)));
  }

  /** A sidecar instance's id (this sidecar's own, before the catalog shows it). */
  protectInstance(id: string): void {
    this.#sidecarIds.add(id);
    this.#generation++;
  }

  /** Follows the catalog's `tandem` service: every sidecar's API endpoint and id is refused. */
  follow(source: EndpointSource): Subscription {
    // Not pinned: reserved room is for what the sidecar cannot do without; when the budget is short the
    // source serves this like any service (shared change detector). Names and marks need no catalog.
    return source.subscribe(SIDECAR_SERVICE, (u) => {
      if (u.kind === 'reset') this.#sidecars = new Map(u.endpoints.map((e) => [e.id, e]));
      else if (u.kind === 'add') for (const e of u.endpoints) this.#sidecars.set(e.id, e);
      else for (const id of u.ids) this.#sidecars.delete(id);
      this.#rebuildSidecars();
    });
  }

  /** Throws when the target is a control plane by name, or pinned on a known sidecar's instance id: before any catalog lookup, so it costs no watch. */
  checkTarget(service: string, pin: string | undefined): void {
    if (this.refusesService(service)) throw new ControlPlaneError(`'${service}'`);
    if (pin !== undefined && this.refusesInstance(pin)) throw new ControlPlaneError(`instance '${pin.slice(0, 128)}'`);
  }

  /** The ids of a subset's control-plane instances: computed once per subset, again only when what is refused changed. */
  refusedIn(subset: Subset): ReadonlySet<string> {
    const generation = this.#generation;
    const cached = this.#refused.get(subset);
    if (cached?.generation === generation) return cached.ids;
    let ids: Set<string> | undefined;
    for (const e of subset.members) if (this.refuses(e)) (ids ??= new Set()).add(e.id);
    const out = ids ?? NONE;
    this.#refused.set(subset, { generation, ids: out });
    return out;
  }

  /** A service name the proxy never routes to. */
  refusesService(service: string): boolean {
    return CONTROL_PLANE_SERVICES.has(service);
  }

  /** An instance id that is a known sidecar's. */
  refusesInstance(id: string): boolean {
    return this.#sidecarIds.has(id) || this.#sidecars.has(id);
  }

  refuses(e: Endpoint): boolean {
    return e.controlPlane === true || CONTROL_PLANE_SERVICES.has(e.service) || this.refusesInstance(e.id) || this.refusesAddress(e.address, e.port);
  }

  refusesAddress(host: string, port: number): boolean {
    const h = normalizeHost(host);
    const key = `${h}:${port}`;
    if (this.#fixedExact.has(key) || this.#sidecarExact.has(key) || this.#learnt.has(key)) return true;
    return (this.#fixedPorts.has(port) || this.#sidecarPorts.has(port)) && this.#isLocal(h);
  }

  /** The connected peer (an IP) of an upstream connection: the last word, after any name resolution. */
  refusesPeer(ip: string | undefined, port: number | undefined): boolean {
    return ip !== undefined && port !== undefined && this.refusesAddress(ip, port);
  }

  /** An instance whose connection reached a control plane: refused up front from now on. */
  learn(e: Endpoint): void {
    if (this.#learnt.size >= MAX_LEARNT) this.#learnt.clear();
    this.#learnt.add(`${normalizeHost(e.address)}:${e.port}`);
    this.#generation++;
  }

  #rebuildSidecars(): void {
    // Interfaces change rarely; a sidecar update is a fine moment to look again.
    this.#local = localAddresses();
    this.#sidecarExact.clear();
    this.#sidecarPorts.clear();
    for (const e of this.#sidecars.values()) {
      const h = normalizeHost(e.address);
      // A sidecar on this host (another one, or this one under another address) is refused on every local address.
      if (this.#isLocal(h)) this.#sidecarPorts.add(e.port);
      else this.#sidecarExact.add(`${h}:${e.port}`);
    }
    this.#generation++;
  }

  #isLocal(h: string): boolean {
    if (h === 'localhost' || h.endsWith('.localhost') || h === '0.0.0.0' || h === '::' || h === '::1') return true;
    if (isIP(h) === 4 && h.startsWith('127.')) return true;
    return this.#local.has(h);
  }
}

/** Lowercase, no brackets or trailing dot, IPv4-mapped IPv6 as plain IPv4. */
function normalizeHost(host: string): string {
  let h = host.trim().toLowerCase();
  if (h.startsWith('[') && h.endsWith(']')) h = h.slice(1, -1);
  if (h.endsWith('.')) h = h.slice(0, -1);
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/.exec(h);
  return mapped ? (mapped[1] as string) : h;
}

function localAddresses(): Set<string> {
  const out = new Set<string>();
  try {
    for (const list of Object.values(networkInterfaces())) for (const a of list ?? []) out.add(normalizeHost(a.address.split('%')[0] as string));
  } catch {
    // No interface list (a sandbox): loopback and wildcards are still known.
  }
  return out;
}
