// proxy.egress.allow entries (host, host:port, *.domain, IP, CIDR, each with an optional port): parsed once, shared by the config check and the egress policy.
import { BlockList, isIP } from 'node:net';

export type AllowEntry =
  | { kind: 'name'; name: string; wildcard: boolean; port: number | undefined }
  | { kind: 'net'; list: BlockList; port: number | undefined };

/** Parses one `proxy.egress.allow` entry; a string is the problem with it. */
export function parseAllowEntry(raw: string): AllowEntry | string {
  const s = raw.trim().toLowerCase();
  let hostPart = s;
  let port: number | undefined;
  const bracket = /^\[([^\]]+)\](?::(\d{1,5}))?$/.exec(s);
  if (bracket) {
    hostPart = bracket[1] as string;
    port = bracket[2] === undefined ? undefined : Number(bracket[2]);
  } else if (isIP(s) === 6 || /^[0-9a-f:.]+\/\d{1,3}$/.test(s)) {
    hostPart = s; // a bare IPv6 address or CIDR: its colons are not a port
  } else {
    const m = /^(.+):(\d{1,5})$/.exec(s);
    if (m) {
      hostPart = m[1] as string;
      port = Number(m[2]);
    }
  }
  if (port !== undefined && (port < 1 || port > 65535)) return `'${raw}': port ${port} is not 1-65535`;
  const cidr = /^([0-9a-f:.]+)\/(\d{1,3})$/.exec(hostPart);
  if (cidr || isIP(hostPart) !== 0) {
    const addr = normalizeAddress(cidr ? (cidr[1] as string) : hostPart);
    const family = isIP(addr);
    if (family === 0) return `'${raw}': '${cidr ? cidr[1] : hostPart}' is not an IP address`;
    const max = family === 4 ? 32 : 128;
    const prefix = cidr ? Number(cidr[2]) : max;
    if (prefix > max) return `'${raw}': prefix /${prefix} is longer than ${max}`;
    const list = new BlockList();
    list.addSubnet(addr, prefix, family === 4 ? 'ipv4' : 'ipv6');
    return { kind: 'net', list, port };
  }
  const wildcard = hostPart.startsWith('*.');
  const name = (wildcard ? hostPart.slice(2) : hostPart).replace(/\.$/, '');
  if (!/^(?=.{1,253}$)[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9])?(?:\.[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9])?)*$/.test(name)) {
    return `'${raw}': expected host, host:port, *.domain[:port], an IP address or a CIDR (with an optional :port)`;
  }
  return { kind: 'name', name, wildcard, port };
}

/** Lowercase, no brackets or trailing dot; IPv4-mapped and NAT64 well-known-prefix IPv6 as the IPv4 inside. */
export function normalizeAddress(host: string): string {
  let h = host.trim().toLowerCase();
  if (h.startsWith('[') && h.endsWith(']')) h = h.slice(1, -1);
  if (h.endsWith('.')) h = h.slice(0, -1);
  const mapped = /^(?:::ffff:|64:ff9b::)(\d+\.\d+\.\d+\.\d+)$/.exec(h);
  if (mapped) return mapped[1] as string;
  // The same in hex (::ffff:7f00:1), as Node's URL and some resolvers spell it.
  const hex = /^(?:::ffff:|64:ff9b::)([0-9a-f]{1,4}):([0-9a-f]{1,4})$/.exec(h);
  if (hex) {
    const hi = parseInt(hex[1] as string, 16);
    const lo = parseInt(hex[2] as string, 16);
    return `${hi >> 8}.${hi & 255}.${lo >> 8}.${lo & 255}`;
  }
  return h;
}
