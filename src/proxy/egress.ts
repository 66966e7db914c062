// The egress policy: which hosts that are not catalog services the proxy forwards to (plain HTTP and CONNECT passthrough), judged on the address it connects to.
import { lookup as dnsLookup } from 'node:dns/promises';
import { BlockList, connect, isIP, type Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import type { ControlPlaneGuard } from './control-plane.ts';
import { normalizeAddress, parseAllowEntry, type AllowEntry } from '../common/egress-allow.ts';
import { EgressFailedError, EgressRefusedError, EgressTimeoutError, type TandemError } from './errors.ts';

export { parseAllowEntry };

/**
 * `auto`: `public` while the proxy listens on loopback only, `allow-list` when it listens beyond it.
 * `public`: public addresses, plus what `allow` lists. `allow-list`: only what `allow` lists. `off`: none.
 */
export type EgressMode = 'auto' | 'public' | 'allow-list' | 'off';

export interface EgressOptions {
  mode: EgressMode;
  /** `host`, `host:port`, `*.suffix[:port]`, an IP, `ip:port`, `[v6]:port`, or a CIDR with an optional `:port`. */
  allow: readonly string[];
  /** The proxy's listen host: decides what `auto` means. */
  listenHost: string;
  /** Control planes (Consul agents, sidecars) are refused whatever the policy and the allow-list say. */
  guard?: ControlPlaneGuard | undefined;
  connectTimeoutMs: number;
  /** For tests: name resolution (defaults to the system resolver, like every other client on the host). */
  lookup?: (host: string) => Promise<readonly { address: string; family: number }[]>;
}

/** Where an allowed request goes: the address the judgement was made on, which is the one connected to. */
export interface EgressTarget {
  /** `host:port` as the client asked for it (for messages and the access log). */
  target: string;
  host: string;
  port: number;
  address: string;
}

/** Address ranges that are never "public", each with the words a refusal uses. */
const NON_PUBLIC: readonly (readonly [string, readonly (readonly [string, number])[]])[] = [
  ['a loopback address', [['127.0.0.0', 8], ['::1', 128]]],
  ['an unspecified address', [['0.0.0.0', 8], ['::', 128]]],
  ['a private address (RFC 1918)', [['10.0.0.0', 8], ['172.16.0.0', 12], ['192.168.0.0', 16]]],
  ['a unique local address (ULA)', [['fc00::', 7]]],
  ['a link-local address', [['169.254.0.0', 16], ['fe80::', 10]]],
  ['a shared (CGNAT) address', [['100.64.0.0', 10]]],
  ['a multicast address', [['224.0.0.0', 4], ['ff00::', 8]]],
  [
    'a special-purpose address',
    [
      ['192.0.0.0', 24], ['192.0.2.0', 24], ['192.88.99.0', 24], ['198.18.0.0', 15], ['198.51.100.0', 24], ['203.0.113.0', 24], ['240.0.0.0', 4],
      ['100::', 64], ['2001::', 23], ['2001:db8::', 32], ['2002::', 16], ['fec0::', 10], ['64:ff9b:1::', 48],
    ],
  ],
];
const CLASSES: readonly { reason: string; list: BlockList }[] = NON_PUBLIC.map(([reason, nets]) => {
  const list = new BlockList();
  for (const [net, prefix] of nets) list.addSubnet(net, prefix, isIP(net) === 6 ? 'ipv6' : 'ipv4');
  return { reason, list };
});

/**
 * Names that never denote a public host: reserved TLDs (RFC 2606, 6761, 6762, 8375), Consul's own
 * names other than `<service>.service.consul` (nodes, prepared queries), and single labels (search
 * domains). Refused by name, before any resolution; `localhost` is loopback by definition (RFC 6761).
 */
const SPECIAL_SUFFIXES = ['.invalid', '.test', '.example', '.local', '.internal', '.home.arpa', '.onion', '.consul'];

/** Why an address is not public, or undefined when it is. IPv4-mapped and NAT64 (64:ff9b::/96) addresses are judged on the IPv4 inside. */
export function nonPublicReason(address: string): string | undefined {
  const a = normalizeAddress(address);
  const family = isIP(a);
  if (family === 0) return 'not an IP address';
  const type = family === 6 ? 'ipv6' : 'ipv4';
  for (const c of CLASSES) if (c.list.check(a, type)) return c.reason;
  return undefined;
}

export class EgressPolicy {
  /** The mode in force (`auto` resolved at start). */
  readonly mode: Exclude<EgressMode, 'auto'>;
  /** What the operator configured (for messages: `auto (public)`). */
  readonly configured: EgressMode;
  #allow: AllowEntry[] = [];
  #guard: ControlPlaneGuard | undefined;
  #connectTimeoutMs: number;
  #lookup: (host: string) => Promise<readonly { address: string; family: number }[]>;

  constructor(o: EgressOptions) {
    this.configured = o.mode;
    this.mode = o.mode === 'auto' ? (isLoopbackHost(o.listenHost) ? 'public' : 'allow-list') : o.mode;
    for (const raw of o.allow) {
      const e = parseAllowEntry(raw);
      if (typeof e === 'string') throw new Error(`proxy.egress.allow: ${e}`);
      this.#allow.push(e);
    }
    this.#guard = o.guard;
    this.#connectTimeoutMs = o.connectTimeoutMs;
    this.#lookup = o.lookup ?? ((host) => dnsLookup(host, { all: true }));
  }

  /** The policy's name in messages, e.g. `auto (public)`. */
  get label(): string {
    return this.configured === 'auto' ? `auto (${this.mode})` : this.mode;
  }

  /**
   * Decides whether `host:port` may be reached, and where to: a name is resolved once, and the first
   * address it resolves to is both judged and connected to (so DNS cannot swap in an internal address
   * after the check). Throws EgressRefusedError, or EgressFailedError when the name does not resolve.
   */
  async judge(rawHost: string, port: number): Promise<EgressTarget> {
    const host = normalizeAddress(rawHost);
    const target = `${host.includes(':') ? `[${host}]` : host}:${port}`;
    const refuse = (reason: string): never => {
      throw new EgressRefusedError(target, this.label, reason);
    };
    if (this.mode === 'off') refuse('egress is off');
    // `connectTo` as found (a NAT64 address stays one); `address`, what it means, is what is judged.
    let connectTo: string;
    let byName = false;
    if (isIP(host) !== 0) connectTo = host;
    else {
      byName = this.#allowedName(host, port);
      if (host === 'localhost' || host.endsWith('.localhost')) connectTo = '127.0.0.1';
      else {
        if (!byName) {
          if (!host.includes('.')) refuse(`'${host}' is a single-label (local) name`);
          const special = SPECIAL_SUFFIXES.find((s) => host.endsWith(s));
          if (special) refuse(`'${host}' is under '${special.slice(1)}', a name that is never a public host`);
          // Nothing but names could allow it: no lookup at all.
          if (this.mode === 'allow-list' && !this.#allow.some((e) => e.kind === 'net')) refuse(`'${host}' is not on proxy.egress.allow`);
        }
        let found: readonly { address: string }[];
        let timer: NodeJS.Timeout | undefined;
        try {
          // Bounded like a connection: a resolver that does not answer is a timeout, not a hang.
          found = await Promise.race([
            this.#lookup(host),
            new Promise<never>((_, reject) => {
              timer = setTimeout(() => reject(new EgressTimeoutError(target, this.#connectTimeoutMs)), this.#connectTimeoutMs);
            }),
          ]);
        } catch (err) {
          if (err instanceof EgressTimeoutError) throw err;
          throw new EgressFailedError(target, `cannot resolve '${host}' (${(err as { code?: string }).code ?? 'error'})`);
        } finally {
          clearTimeout(timer);
        }
        if (found.length === 0) throw new EgressFailedError(target, `'${host}' resolves to no address`);
        connectTo = (found[0] as { address: string }).address;
      }
    }
    const address = normalizeAddress(connectTo);
    if (this.#guard?.refusesAddress(address, port)) refuse(`${address}:${port} is a control plane (a Consul agent or a Tandem sidecar), never reached through the proxy`);
    const shown = address === host ? address : `${host} (${address})`;
    const allowed = { target, host, port, address: connectTo };
    if (byName || this.#allowedAddress(address, port)) return allowed;
    if (this.mode === 'allow-list') refuse(`${shown} is not on proxy.egress.allow`);
    const why = nonPublicReason(address);
    if (why !== undefined) refuse(`${shown} is ${why}`);
    return allowed;
  }

  /**
   * CONNECT passthrough (TLS, or anything else the client speaks): connects to the judged address,
   * answers `200 Connection Established` and splices the two sockets. Resolves when the tunnel is up;
   * rejects with the error to answer when it could not be opened.
   */
  tunnel(client: Duplex, head: Buffer, to: EgressTarget): Promise<Socket> {
    return new Promise((resolve, reject) => {
      const up = connect({ host: to.address, port: to.port });
      let open = false;
      const timer = setTimeout(() => {
        up.destroy();
        reject(new EgressTimeoutError(to.target, this.#connectTimeoutMs));
      }, this.#connectTimeoutMs);
      const fail = (err: TandemError) => {
        clearTimeout(timer);
        up.destroy();
        reject(err);
      };
      up.once('error', (err: NodeJS.ErrnoException) => {
        if (!open) fail(new EgressFailedError(to.target, err.code ?? err.message));
        else client.destroy();
      });
      up.once('connect', () => {
        clearTimeout(timer);
        // The connected peer is the last word (it is the judged address; this also covers a local
        // interface address that is only known now).
        if (this.#guard?.refusesPeer(up.remoteAddress, up.remotePort)) {
          fail(new EgressRefusedError(to.target, this.label, 'the address is a control plane (a Consul agent or a Tandem sidecar)'));
          return;
        }
        if (client.destroyed) {
          up.destroy();
          reject(new EgressFailedError(to.target, 'the client went away'));
          return;
        }
        open = true;
        client.write('HTTP/1.1 200 Connection Established\r\n\r\n');
        if (head.length > 0) up.write(head);
        up.on('close', () => client.destroy());
        client.on('close', () => up.destroy());
        client.on('error', () => up.destroy());
        up.pipe(client);
        client.pipe(up);
        resolve(up);
      });
    });
  }

  #allowedName(host: string, port: number): boolean {
    for (const e of this.#allow) {
      if (e.kind !== 'name' || (e.port !== undefined && e.port !== port)) continue;
      if (e.wildcard ? host.endsWith(`.${e.name}`) : host === e.name) return true;
    }
    return false;
  }

  #allowedAddress(address: string, port: number): boolean {
    const type = isIP(address) === 6 ? 'ipv6' : 'ipv4';
    for (const e of this.#allow) {
      if (e.kind === 'net' && (e.port === undefined || e.port === port) && e.list.check(address, type)) return true;
    }
    return false;
  }
}

/** Whether a listen host is loopback only (127/8, ::1, localhost). */
export function isLoopbackHost(host: string): boolean {
  const h = normalizeAddress(host);
  return h === 'localhost' || h === '::1' || (isIP(h) === 4 && h.startsWith('127.'));
}
