// The config loader: defaults < config file < environment < CLI flags, validated once and frozen.
import type { RegistrationTimings } from '../common/registration-timings.ts';
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { createRequire } from 'node:module';
import type { ServiceSpec } from '../protocol/wire.ts';
import { InvalidConfigError } from '../common/errors.ts';
import { formatErrors } from './schemas.ts';
import { defaults, validateConfig } from './config-schema.ts';
import { parseAllowEntry } from '../common/egress-allow.ts';

export interface ListenAddress {
  host: string;
  port: number;
}

export interface Config {
  consul: {
    /** Base URL of the local Consul agent's HTTP API, e.g. `http://127.0.0.1:8500`. */
    address: string;
    token?: string;
    tokenFile?: string;
    datacenter?: string;
    requestTimeoutMs: number;
    /** Other agents to read the catalog from when the local one does not answer. */
    fallbackAddresses: string[];
    staleReads: boolean;
    maxStaleMs: number;
    /**
     * Most connections this sidecar opens to its Consul agent, whatever its callers do. Consul accepts
     * 200 per client IP; the rest is left to the host's other clients (the CLI, other sidecars).
     */
    maxConnections: number;
  };
  node: { name: string; advertiseAddress?: string };
  proxy: {
    listen: string;
    /** Extra tries on other instances after a failed one. */
    retries: number;
    retryStatuses: number[];
    /** Request bodies up to this size are buffered so that a retry can resend them. */
    retryBufferBytes: number;
    upstreamTimeoutMs: number;
    /** Longest silence between two response body chunks; 0 = no limit. */
    bodyTimeoutMs: number;
    connectTimeoutMs: number;
    connectionsPerInstance: number;
    maxUrlBytes: number;
    maxHeaderBytes: number;
    /** Header fields in one request head at most (more: 431). */
    maxHeaders: number;
    ejection: { consecutiveFailures: number; baseEjectionMs: number; maxEjectionMs: number; maxEjectionShare: number };
    /** Budget of a whole request (retries included) when the caller sends no X-Tandem-Timeout-Ms. */
    requestTimeoutMs: number;
    retryBudget: { ratio: number; minPerSecond: number; windowMs: number };
    /** New or recovered instances ramp up over this window; 0 = off. */
    slowStartMs: number;
    flap: { threshold: number; windowMs: number; holdMs: number };
    broadcastTimeoutMs: number;
    broadcastMaxBodyBytes: number;
    /** A client must send its whole request head within this; slower ones are cut (408). */
    headersTimeoutMs: number;
    /**
     * Hosts that are not catalog services (apps that set HTTP_PROXY globally). `mode`: `auto` (public
     * while the proxy listens on loopback only, else allow-list), `public`, `allow-list`, `off`.
     * `allow`: host, host:port, *.domain[:port], IP, CIDR (each with an optional :port).
     */
    egress: { mode: 'auto' | 'public' | 'allow-list' | 'off'; allow: string[] };
    /** How instances are picked (sticky requests aside): `round-robin` or `least-loaded` (P2C, see docs/decisions.md). */
    balancer: 'round-robin' | 'least-loaded';
    /** Per-service overrides, by service name. */
    services: Record<string, { balancer?: 'round-robin' | 'least-loaded' }>;
    /** When every instance in range is at its maxInFlight: how long a request waits, and how many may wait per service. */
    queueTimeoutMs: number;
    maxQueued: number;
    /** Bounded-load sticky hashing: an owner above loadFactor × the average in-flight passes keys on. */
    sticky: { loadFactor: number };
  };
  /** `maxStreams`: event streams (SSE) open at once on the control API, all routes together; beyond it 503. */
  api: { listen: string; token?: string; tokenFile?: string; maxStreams: number };
  stateDir: string;
  services: ServiceSpec[];
  upstreams: string[];
  registration: RegistrationTimings;
  watch: { waitMs: number; idleMs: number; firstAnswerTimeoutMs: number; maxBackoffMs: number; maxServices: number };
  events: { retentionMs: number; maxPayloadBytes: number };
  /**
   * `lockDelayMs`: Consul's lock-delay for election sessions, how long a lock stays blocked after its
   * holder's session is invalidated. `sessionTtlMs`: their TTL (Consul's minimum is 10 s), renewed by
   * the sidecar every third of it, so a killed sidecar's sessions end on their own.
   */
  elections: { lockDelayMs: number; sessionTtlMs: number };
  drain: { deadlineMs: number };
  shutdownTimeoutMs: number;
  /** `access`: one log line per proxied request. */
  log: { level: 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace' | 'silent'; access: boolean };
}

export type DeepReadonly<T> = T extends (infer U)[] ? readonly DeepReadonly<U>[] : T extends object ? { readonly [K in keyof T]: DeepReadonly<T[K]> } : T;
export type FrozenConfig = DeepReadonly<Config>;

/** Every flag `tandem start` accepts, with the config path it sets (or a special meaning). */
export const FLAGS: readonly { flag: string; path: string; arg: string; help: string }[] = [
  { flag: '--config', path: '', arg: 'FILE', help: 'config file, JSON or YAML (also TANDEM_CONFIG)' },
  { flag: '--consul', path: 'consul.address', arg: 'URL', help: 'Consul HTTP API address (also CONSUL_HTTP_ADDR); default http://127.0.0.1:8500' },
  { flag: '--consul-token-file', path: 'consul.tokenFile', arg: 'FILE', help: 'file holding the Consul ACL token (also CONSUL_HTTP_TOKEN_FILE; CONSUL_HTTP_TOKEN for the token itself)' },
  { flag: '--datacenter', path: 'consul.datacenter', arg: 'DC', help: 'Consul datacenter (also TANDEM_DATACENTER)' },
  { flag: '--node-name', path: 'node.name', arg: 'NAME', help: 'node name used in service ids and Meta.tandem_node (also TANDEM_NODE_NAME); default: the host name' },
  { flag: '--advertise', path: 'node.advertiseAddress', arg: 'ADDR', help: "address services are registered with (also TANDEM_ADVERTISE_ADDRESS); default: the local Consul agent's" },
  { flag: '--proxy', path: 'proxy.listen', arg: 'HOST:PORT', help: 'proxy listen address (also TANDEM_PROXY); default 127.0.0.1:7700' },
  { flag: '--api', path: 'api.listen', arg: 'HOST:PORT', help: 'control API listen address (also TANDEM_API); default 127.0.0.1:7701' },
  { flag: '--state-dir', path: 'stateDir', arg: 'DIR', help: 'where registrations and the last catalog view are kept (also TANDEM_STATE_DIR); default ./.tandem' },
  { flag: '--log-level', path: 'log.level', arg: 'LEVEL', help: 'fatal|error|warn|info|debug|trace|silent (also TANDEM_LOG_LEVEL); default info' },
  { flag: '--set', path: '', arg: 'PATH=VALUE', help: 'set any config key, e.g. --set registration.drainMs=500 (VALUE is JSON if it parses, else a string); repeatable' },
];

const ENV: readonly { name: string; path: string }[] = [
  { name: 'CONSUL_HTTP_ADDR', path: 'consul.address' },
  { name: 'CONSUL_HTTP_TOKEN', path: 'consul.token' },
  { name: 'CONSUL_HTTP_TOKEN_FILE', path: 'consul.tokenFile' },
  { name: 'TANDEM_DATACENTER', path: 'consul.datacenter' },
  { name: 'TANDEM_NODE_NAME', path: 'node.name' },
  { name: 'TANDEM_ADVERTISE_ADDRESS', path: 'node.advertiseAddress' },
  { name: 'TANDEM_PROXY', path: 'proxy.listen' },
  { name: 'TANDEM_API', path: 'api.listen' },
  { name: 'TANDEM_STATE_DIR', path: 'stateDir' },
  { name: 'TANDEM_LOG_LEVEL', path: 'log.level' },
  { name: 'TANDEM_ACCESS_LOG', path: 'log.access' },
  { name: 'TANDEM_API_TOKEN', path: 'api.token' },
  { name: 'TANDEM_API_TOKEN_FILE', path: 'api.tokenFile' },
];

type Json = null | boolean | number | string | Json[] | { [key: string]: Json };
type JsonObject = { [key: string]: Json };

function isObject(v: unknown): v is JsonObject {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** Objects merge key by key; anything else (arrays included) replaces. */
function merge(base: JsonObject, over: JsonObject): JsonObject {
  const out: JsonObject = { ...base };
  for (const [k, v] of Object.entries(over)) {
    const b = out[k];
    out[k] = isObject(b) && isObject(v) ? merge(b, v) : v;
  }
  return out;
}

function setPath(target: JsonObject, path: string, value: Json): void {
  const keys = path.split('.');
  let cur = target;
  for (const key of keys.slice(0, -1)) {
    const next = cur[key];
    if (!isObject(next)) cur[key] = {};
    cur = cur[key] as JsonObject;
  }
  cur[keys[keys.length - 1] as string] = value;
}

function deepFreeze<T>(v: T): T {
  if (typeof v === 'object' && v !== null) {
    for (const child of Object.values(v)) deepFreeze(child);
    Object.freeze(v);
  }
  return v;
}

/** CONSUL_HTTP_ADDR may omit the scheme (`127.0.0.1:8500`), as the consul CLI allows. */
function normalizeConsulAddress(v: string): string {
  const withScheme = /^[a-z]+:\/\//i.test(v) ? v : `http://${v}`;
  return withScheme.replace(/\/+$/, '');
}

function parseFlagValue(raw: string): Json {
  try {
    return JSON.parse(raw) as Json;
  } catch {
    return raw;
  }
}

export interface LoadOptions {
  argv: readonly string[];
  env?: Readonly<Record<string, string | undefined>>;
  cwd?: string;
}

/**
 * Builds the config from its four layers, validates it once and returns it frozen.
 * Throws InvalidConfigError listing every violation (with its path) at once.
 */
export function loadConfig(opts: LoadOptions): FrozenConfig {
  const env = opts.env ?? process.env;
  const cwd = opts.cwd ?? process.cwd();
  const problems: string[] = [];

  // Flags first (they name the file), applied last.
  const flagLayer: JsonObject = {};
  let configFile = env['TANDEM_CONFIG'];
  const argv = [...opts.argv];
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i] as string;
    const eq = arg.indexOf('=');
    const name = arg.startsWith('--') && eq > 0 ? arg.slice(0, eq) : arg;
    const spec = FLAGS.find((f) => f.flag === name);
    if (!spec) {
      problems.push(`flag ${arg}: unknown flag (see tandem start --help)`);
      continue;
    }
    const value = eq > 0 && arg.startsWith('--') ? arg.slice(eq + 1) : argv[++i];
    if (value === undefined) {
      problems.push(`flag ${name}: needs a value (${spec.arg})`);
      continue;
    }
    if (spec.flag === '--config') configFile = value;
    else if (spec.flag === '--set') {
      const at = value.indexOf('=');
      if (at <= 0) problems.push(`flag --set ${value}: expected PATH=VALUE`);
      else setPath(flagLayer, value.slice(0, at), parseFlagValue(value.slice(at + 1)));
    } else setPath(flagLayer, spec.path, spec.path === 'consul.address' ? normalizeConsulAddress(value) : value);
  }

  let fileLayer: JsonObject = {};
  if (configFile) {
    const path = resolve(cwd, configFile);
    try {
      const text = readFileSync(path, 'utf8');
      // yaml is loaded only for YAML files: it costs a noticeable share of a sidecar's start-up.
      const parsed: unknown = /\.json$/i.test(path) ? JSON.parse(text) : (createRequire(import.meta.url)('yaml') as typeof import('yaml')).parse(text);
      if (parsed === null || parsed === undefined) fileLayer = {};
      else if (isObject(parsed)) fileLayer = parsed;
      else problems.push(`config file ${path}: must hold an object at the top level`);
    } catch (err) {
      problems.push(`config file ${path}: ${err instanceof Error ? err.message.split('\n')[0] : String(err)}`);
    }
  }

  const envLayer: JsonObject = {};
  for (const { name, path } of ENV) {
    const v = env[name];
    if (v === undefined || v === '') continue;
    if (name === 'CONSUL_HTTP_ADDR') setPath(envLayer, path, normalizeConsulAddress(v));
    else if (name === 'TANDEM_ACCESS_LOG') setPath(envLayer, path, v === 'true' || v === '1' ? true : v === 'false' || v === '0' ? false : v);
    else setPath(envLayer, path, v);
  }
  const fallbacks = env['TANDEM_CONSUL_FALLBACK_ADDRS'];
  if (fallbacks) setPath(envLayer, 'consul.fallbackAddresses', fallbacks.split(',').map((a) => normalizeConsulAddress(a.trim())).filter(Boolean));

  const merged = merge(merge(merge(defaults() as unknown as JsonObject, fileLayer), envLayer), flagLayer);
  if (isObject(merged['consul']) && typeof merged['consul']['address'] === 'string') {
    merged['consul']['address'] = normalizeConsulAddress(merged['consul']['address']);
  }
  if (!validateConfig(merged)) problems.push(...formatErrors(validateConfig.errors, 'config'));
  problems.push(...egressAllowProblems(merged));
  if (problems.length > 0) throw new InvalidConfigError(problems);

  const config = merged as unknown as Config;
  config.stateDir = resolve(cwd, config.stateDir);
  for (const [section, where] of [[config.consul, 'consul'], [config.api, 'api']] as const) {
    if (section.tokenFile && section.token === undefined) {
      try {
        section.token = readFileSync(resolve(cwd, section.tokenFile), 'utf8').trim();
      } catch (err) {
        throw new InvalidConfigError([`config/${where}/tokenFile: cannot read ${section.tokenFile} (${(err as NodeJS.ErrnoException).code ?? 'error'})`]);
      }
    }
  }
  const ids = new Set<string>();
  for (const [i, s] of config.services.entries()) {
    const id = s.id ?? `${s.name}-${config.node.name}-${s.port}`;
    if (ids.has(id)) problems.push(`config/services/${i}: duplicate service id '${id}'`);
    ids.add(id);
  }
  if (problems.length > 0) throw new InvalidConfigError(problems);
  return deepFreeze(config);
}

/** proxy.egress.allow entries the schema lets through as strings but that do not parse (a /40 IPv4 CIDR, port 0, a bad name). */
function egressAllowProblems(merged: JsonObject): string[] {
  const proxy = merged['proxy'];
  const egress = isObject(proxy) ? proxy['egress'] : undefined;
  const allow = isObject(egress) ? egress['allow'] : undefined;
  if (!Array.isArray(allow)) return [];
  const out: string[] = [];
  allow.forEach((entry, i) => {
    if (typeof entry !== 'string') return; // the schema reports it
    const parsed = parseAllowEntry(entry);
    if (typeof parsed === 'string') out.push(`config/proxy/egress/allow/${i}: ${parsed}`);
  });
  return out;
}

/** `host:port` (or `[v6]:port`) → parts; the schema has checked the shape. */
export function parseListen(listen: string): ListenAddress {
  const at = listen.lastIndexOf(':');
  return { host: listen.slice(0, at).replace(/^\[|\]$/g, ''), port: Number(listen.slice(at + 1)) };
}

/**
 * Where the operator commands find a sidecar: the flag, else TANDEM_API, else the default; the API
 * token from TANDEM_API_TOKEN(_FILE); the operator's own Consul token from CONSUL_HTTP_TOKEN(_FILE),
 * which the sidecar uses for the operator's writes (drain, undrain).
 */
export function apiUrlFrom(flag: string | undefined, env: Readonly<Record<string, string | undefined>> = process.env): { url: string; token?: string; consulToken?: string } {
  const raw = flag ?? env['TANDEM_API'] ?? '127.0.0.1:7701';
  const url = (/^[a-z]+:\/\//i.test(raw) ? raw : `http://${raw}`).replace(/\/+$/, '');
  let token = env['TANDEM_API_TOKEN'];
  const file = env['TANDEM_API_TOKEN_FILE'];
  if (!token && file) token = readFileSync(file, 'utf8').trim();
  let consulToken = env['CONSUL_HTTP_TOKEN']?.trim();
  const consulFile = env['CONSUL_HTTP_TOKEN_FILE'];
  if (!consulToken && consulFile) consulToken = readFileSync(consulFile, 'utf8').trim();
  return { url, ...(token ? { token } : {}), ...(consulToken ? { consulToken } : {}) };
}
