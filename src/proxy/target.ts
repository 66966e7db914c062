// Addressing: turns a request line into (service, range, upstream path), refusing anything that is not a catalog service.
import { BadPathError, BadTargetError, ForeignHostError } from './errors.ts';

export interface Target {
  service: string;
  /** The range as requested ('' = any version); the cache key for subsets. */
  range: string;
  /** Path and query for the upstream, starting with '/'. */
  path: string;
}

const SERVICE = /^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$/;
const CONSUL_HOST = /^([a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)\.service(?:\.consul)?\.?$/;
// `..` as a whole segment, raw or percent-encoded; encoded slashes and backslashes anywhere in the path.
const TRAVERSAL = /(?:^|\/)(?:\.|%2e){2}(?:\/|$)/i;
const ENCODED_SEPARATOR = /%2f|%5c|\\/i;

/**
 * Path form `/<service>[@<range>]/<rest>` (the range may be URL-encoded) or absolute form
 * `http://<service>.service[.consul]/<rest>` with the range from `X-Tandem-Version`.
 */
export function parseTarget(url: string, versionHeader: string | undefined): Target {
  if (url.charCodeAt(0) === 47 /* / */) return parsePathForm(url, versionHeader);
  if (url.startsWith('http://') || url.startsWith('https://')) return parseAbsoluteForm(url, versionHeader);
  throw new BadTargetError(`cannot route '${url.slice(0, 100)}': use /<service>[@<range>]/<path> or http://<service>.service.consul/<path>`);
}

function parsePathForm(raw: string, versionHeader: string | undefined): Target {
  // A fragment is never sent upstream (and must not hide a `..` from the check below).
  const hash = raw.indexOf('#');
  const url = hash === -1 ? raw : raw.slice(0, hash);
  let end = url.indexOf('/', 1);
  const q = url.indexOf('?');
  if (end === -1 || (q !== -1 && q < end)) end = q === -1 ? url.length : q;
  const segment = url.slice(1, end);
  let rest = url.slice(end);
  if (rest === '' || rest.charCodeAt(0) === 63 /* ? */) rest = `/${rest}`;
  let decoded: string;
  try {
    decoded = segment.includes('%') ? decodeURIComponent(segment) : segment;
  } catch {
    throw new BadTargetError(`'${segment.slice(0, 100)}' is not valid percent-encoding`);
  }
  const at = decoded.indexOf('@');
  const service = at === -1 ? decoded : decoded.slice(0, at);
  // A range in the path wins; without one, X-Tandem-Version applies here too.
  const range = at === -1 ? (versionHeader?.trim() ?? '') : decoded.slice(at + 1).trim();
  if (!SERVICE.test(service)) {
    throw new BadTargetError(
      service === '' ? 'no service in the path: use /<service>[@<range>]/<path>' : `'${service.slice(0, 100)}' is not a service name (a DNS label: lowercase letters, digits, dashes)`,
    );
  }
  if (at !== -1 && range === '') throw new BadTargetError(`empty version range after '${service}@'`);
  checkPath(rest);
  return { service, range, path: rest };
}

function parseAbsoluteForm(url: string, versionHeader: string | undefined): Target {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    throw new BadTargetError(`'${url.slice(0, 100)}' is not a valid URL`);
  }
  const m = CONSUL_HOST.exec(parsed.hostname);
  if (!m || parsed.protocol !== 'http:' || parsed.username || parsed.password) throw new ForeignHostError(parsed.host.slice(0, 255));
  // The raw path, as sent (new URL() would have resolved `..` and hidden it): it starts at the first
  // '/', '?', '#' or '\\' after the authority; a fragment is never sent upstream.
  const authorityStart = url.indexOf('//') + 2;
  let start = authorityStart;
  while (start < url.length && !'/?#\\'.includes(url[start] as string)) start++;
  if (url[start] === '\\') throw new BadPathError('backslashes in the path are not proxied');
  const hash = url.indexOf('#', start);
  const rawPath = url.slice(start, hash === -1 ? url.length : hash);
  const path = rawPath === '' || rawPath.charCodeAt(0) === 63 /* ? */ ? `/${rawPath}` : rawPath;
  checkPath(path);
  return { service: m[1] as string, range: versionHeader?.trim() ?? '', path };
}

/** A host that is not a catalog service, named by an absolute-form URL (for the egress policy). */
export interface ForeignTarget {
  host: string;
  port: number;
  /** What the `host` header says upstream: the URL's authority. */
  authority: string;
  /** Path and query as sent (no fragment), starting with '/'. */
  path: string;
}

/**
 * For an absolute-form `http://` URL whose host is not `<service>.service[.consul]`: that host, for the
 * egress policy. Undefined for anything else (path form, catalog services and the forms parseTarget
 * refuses itself). Throws for what is never forwarded: `https://` (clients tunnel TLS with CONNECT),
 * credentials in the URL.
 */
export function foreignTarget(url: string): ForeignTarget | undefined {
  const https = url.startsWith('https://');
  if (!https && !url.startsWith('http://')) return undefined;
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    return undefined; // parseTarget answers it
  }
  if (CONSUL_HOST.test(parsed.hostname)) return undefined;
  if (https) throw new BadTargetError(`'${url.slice(0, 100)}': https:// URLs are not proxied in absolute form (clients tunnel TLS with CONNECT)`);
  if (parsed.username || parsed.password) throw new BadTargetError('credentials in the request URL are not forwarded');
  let start = url.indexOf('//') + 2;
  while (start < url.length && !'/?#'.includes(url[start] as string)) start++;
  const hash = url.indexOf('#', start);
  const rawPath = url.slice(start, hash === -1 ? url.length : hash);
  return { host: parsed.hostname, port: Number(parsed.port || 80), authority: parsed.host, path: rawPath === '' || rawPath.charCodeAt(0) === 63 /* ? */ ? `/${rawPath}` : rawPath };
}

/** A CONNECT request's authority `host:port` (`[v6]:port`), or undefined when it is not one. */
export function parseAuthority(authority: string): { host: string; port: number } | undefined {
  const m = /^\[([0-9a-fA-F:.]+)\]:(\d{1,5})$/.exec(authority) ?? /^([^\s:/?#@[\]\\]+):(\d{1,5})$/.exec(authority);
  if (!m) return undefined;
  const port = Number(m[2]);
  if (port < 1 || port > 65535) return undefined;
  return { host: (m[1] as string).toLowerCase(), port };
}

/** The service a host names (`<service>.service[.consul]`), or undefined. */
export function serviceOfHost(host: string): string | undefined {
  return CONSUL_HOST.exec(host.toLowerCase())?.[1];
}

/**
 * A request inside a CONNECT tunnel to `service`: origin form `/<path>` goes to that service as it
 * stands (a path that looks like path form is just a path there); absolute form must name the same
 * service. The range comes from `X-Tandem-Version`.
 */
export function parseTunnelTarget(url: string, service: string, versionHeader: string | undefined): Target {
  if (url.charCodeAt(0) === 47 /* / */) return parseAbsoluteForm(`http://${service}.service.consul${url}`, versionHeader);
  const t = parseTarget(url, versionHeader);
  if (t.service !== service) throw new BadTargetError(`a request inside a tunnel to '${service}' must be for '${service}' (got '${url.slice(0, 100)}')`);
  return t;
}

function checkPath(path: string): void {
  const q = path.indexOf('?');
  const pathname = q === -1 ? path : path.slice(0, q);
  if (TRAVERSAL.test(pathname)) throw new BadPathError("'..' path segments are not proxied");
  if (ENCODED_SEPARATOR.test(pathname)) throw new BadPathError('encoded slashes and backslashes in the path are not proxied');
}
