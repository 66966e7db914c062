// The config's JSON schema (every key, its type and bounds) and its built-in defaults; loaded and checked by config.ts.
import { hostname } from 'node:os';
import type { Config } from './config.ts';
import { compile, serviceSpecRef, SERVICE_NAME_PATTERN } from './schemas.ts';

const LISTEN_PATTERN = '^(\\[[0-9a-fA-F:.]+\\]|[A-Za-z0-9.-]+):([0-9]{1,5})$';
const ms = (min: number, max: number) => ({ type: 'integer', minimum: min, maximum: max });

export const configSchema = {
  type: 'object',
  additionalProperties: false,
  required: ['consul', 'node', 'proxy', 'api', 'stateDir', 'services', 'upstreams', 'registration', 'watch', 'events', 'elections', 'drain', 'shutdownTimeoutMs', 'log'],
  properties: {
    consul: {
      type: 'object',
      additionalProperties: false,
      required: ['address', 'requestTimeoutMs', 'fallbackAddresses', 'staleReads', 'maxStaleMs', 'maxConnections'],
      properties: {
        // Consul's limit is 200 per client IP; above 150 other clients on the host could be locked out.
        maxConnections: { type: 'integer', minimum: 16, maximum: 150 },
        fallbackAddresses: { type: 'array', maxItems: 16, items: { type: 'string', pattern: '^https?://[^\\s/]+/?$', description: 'an http(s) URL such as http://127.0.0.12:8500' } },
        staleReads: { type: 'boolean' },
        maxStaleMs: ms(0, 600_000),
        address: { type: 'string', pattern: '^https?://[^\\s/]+/?$', description: 'an http(s) URL such as http://127.0.0.1:8500' },
        token: { type: 'string', minLength: 1 },
        tokenFile: { type: 'string', minLength: 1 },
        datacenter: { type: 'string', pattern: '^[A-Za-z0-9_-]+$', description: 'a datacenter name' },
        requestTimeoutMs: ms(100, 600_000),
      },
    },
    node: {
      type: 'object',
      additionalProperties: false,
      required: ['name'],
      properties: {
        name: { type: 'string', pattern: '^[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,126}[A-Za-z0-9])?$', description: 'a node name: letters, digits, _ . -' },
        advertiseAddress: { type: 'string', pattern: '^[^\\s/]+$', minLength: 1, description: 'a host name or IP address' },
      },
    },
    proxy: {
      type: 'object',
      additionalProperties: false,
      required: ['listen', 'retries', 'retryStatuses', 'retryBufferBytes', 'upstreamTimeoutMs', 'bodyTimeoutMs', 'connectTimeoutMs', 'connectionsPerInstance', 'maxUrlBytes', 'maxHeaderBytes', 'maxHeaders', 'ejection', 'requestTimeoutMs', 'retryBudget', 'slowStartMs', 'flap', 'broadcastTimeoutMs', 'broadcastMaxBodyBytes', 'headersTimeoutMs', 'egress'],
      properties: {
        listen: { type: 'string', pattern: LISTEN_PATTERN, description: 'host:port' },
        retries: { type: 'integer', minimum: 0, maximum: 10 },
        retryStatuses: { type: 'array', uniqueItems: true, maxItems: 20, items: { type: 'integer', minimum: 500, maximum: 599 } },
        retryBufferBytes: { type: 'integer', minimum: 0, maximum: 16 * 1024 * 1024 },
        upstreamTimeoutMs: ms(10, 3_600_000),
        bodyTimeoutMs: ms(0, 86_400_000),
        connectTimeoutMs: ms(10, 600_000),
        connectionsPerInstance: { type: 'integer', minimum: 1, maximum: 10_000 },
        maxUrlBytes: { type: 'integer', minimum: 256, maximum: 1_048_576 },
        maxHeaderBytes: { type: 'integer', minimum: 1024, maximum: 1_048_576 },
        maxHeaders: { type: 'integer', minimum: 8, maximum: 10_000 },
        ejection: {
          type: 'object',
          additionalProperties: false,
          required: ['consecutiveFailures', 'baseEjectionMs', 'maxEjectionMs', 'maxEjectionShare'],
          properties: {
            consecutiveFailures: { type: 'integer', minimum: 1, maximum: 1000 },
            baseEjectionMs: ms(10, 3_600_000),
            maxEjectionMs: ms(10, 86_400_000),
            maxEjectionShare: { type: 'number', minimum: 0, maximum: 1 },
          },
        },
        requestTimeoutMs: ms(10, 86_400_000),
        retryBudget: {
          type: 'object',
          additionalProperties: false,
          required: ['ratio', 'minPerSecond', 'windowMs'],
          properties: { ratio: { type: 'number', minimum: 0, maximum: 10 }, minPerSecond: { type: 'number', minimum: 0, maximum: 100_000 }, windowMs: ms(1000, 600_000) },
        },
        slowStartMs: ms(0, 3_600_000),
        broadcastTimeoutMs: ms(10, 600_000),
        broadcastMaxBodyBytes: { type: 'integer', minimum: 0, maximum: 64 * 1024 * 1024 },
        // At most node:http's requestTimeout (300 s), which bounds head and body together.
        headersTimeoutMs: ms(100, 300_000),
        egress: {
          type: 'object',
          additionalProperties: false,
          required: ['mode', 'allow'],
          properties: {
            mode: { enum: ['auto', 'public', 'allow-list', 'off'] },
            allow: { type: 'array', maxItems: 1000, items: { type: 'string', minLength: 1, maxLength: 300, description: 'host, host:port, *.domain[:port], an IP address or a CIDR (with an optional :port)' } },
          },
        },
        flap: {
          type: 'object',
          additionalProperties: false,
          required: ['threshold', 'windowMs', 'holdMs'],
          properties: { threshold: { type: 'integer', minimum: 1, maximum: 1000 }, windowMs: ms(1000, 86_400_000), holdMs: ms(0, 86_400_000) },
        },
        balancer: { enum: ['round-robin', 'least-loaded'] },
        services: {
          type: 'object',
          maxProperties: 1000,
          propertyNames: { pattern: SERVICE_NAME_PATTERN, description: 'a service name' },
          additionalProperties: { type: 'object', additionalProperties: false, properties: { balancer: { enum: ['round-robin', 'least-loaded'] } } },
        },
        queueTimeoutMs: ms(0, 600_000),
        maxQueued: { type: 'integer', minimum: 0, maximum: 1_000_000 },
        sticky: { type: 'object', additionalProperties: false, required: ['loadFactor'], properties: { loadFactor: { type: 'number', minimum: 1, maximum: 100 } } },
      },
    },
    api: {
      type: 'object',
      additionalProperties: false,
      required: ['listen', 'maxStreams'],
      properties: {
        listen: { type: 'string', pattern: LISTEN_PATTERN, description: 'host:port' },
        token: { type: 'string', minLength: 16 },
        tokenFile: { type: 'string', minLength: 1 },
        maxStreams: { type: 'integer', minimum: 1, maximum: 100_000 },
      },
    },
    stateDir: { type: 'string', minLength: 1 },
    services: { type: 'array', items: serviceSpecRef, maxItems: 1000 },
    upstreams: { type: 'array', items: { type: 'string', pattern: SERVICE_NAME_PATTERN, description: 'a service name' }, maxItems: 1000 },
    registration: {
      type: 'object',
      additionalProperties: false,
      required: ['syncIntervalMs', 'drainMs', 'checkIntervalMs', 'checkTimeoutMs', 'ttlMs', 'livenessGraceMs'],
      properties: {
        syncIntervalMs: ms(100, 600_000),
        drainMs: ms(0, 600_000),
        checkIntervalMs: ms(100, 3_600_000),
        checkTimeoutMs: ms(100, 600_000),
        ttlMs: ms(1000, 86_400_000),
        livenessGraceMs: ms(500, 600_000),
      },
    },
    watch: {
      type: 'object',
      additionalProperties: false,
      required: ['waitMs', 'idleMs', 'firstAnswerTimeoutMs', 'maxBackoffMs', 'maxServices'],
      properties: {
        // Each watched service holds one long-poll; Consul allows 200 connections per client IP.
        maxServices: { type: 'integer', minimum: 1, maximum: 150 },
        waitMs: ms(1000, 600_000),
        idleMs: ms(1000, 86_400_000),
        firstAnswerTimeoutMs: ms(10, 60_000),
        maxBackoffMs: ms(100, 600_000),
      },
    },
    events: {
      type: 'object',
      additionalProperties: false,
      required: ['retentionMs', 'maxPayloadBytes'],
      properties: { retentionMs: ms(10_000, 86_400_000), maxPayloadBytes: { type: 'integer', minimum: 1024, maximum: 262_144 } },
    },
    elections: { type: 'object', additionalProperties: false, required: ['lockDelayMs', 'sessionTtlMs'], properties: { lockDelayMs: ms(0, 60_000), sessionTtlMs: ms(10_000, 86_400_000) } },
    drain: { type: 'object', additionalProperties: false, required: ['deadlineMs'], properties: { deadlineMs: ms(0, 86_400_000) } },
    shutdownTimeoutMs: ms(0, 600_000),
    log: {
      type: 'object',
      additionalProperties: false,
      required: ['level', 'access'],
      properties: { level: { enum: ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] }, access: { type: 'boolean' } },
    },
  },
} as const;

export const validateConfig = compile(configSchema);

export function defaults(): Config {
  return {
    consul: { address: 'http://127.0.0.1:8500', requestTimeoutMs: 5000, fallbackAddresses: [], staleReads: true, maxStaleMs: 5000, maxConnections: 120 },
    node: { name: hostname() },
    proxy: {
      listen: '127.0.0.1:7700',
      retries: 2,
      retryStatuses: [502, 503, 504],
      retryBufferBytes: 65_536,
      upstreamTimeoutMs: 30_000,
      bodyTimeoutMs: 300_000,
      connectTimeoutMs: 2000,
      connectionsPerInstance: 64,
      maxUrlBytes: 8192,
      maxHeaderBytes: 16_384,
      maxHeaders: 100,
      ejection: { consecutiveFailures: 3, baseEjectionMs: 2000, maxEjectionMs: 60_000, maxEjectionShare: 0.5 },
      requestTimeoutMs: 60_000,
      retryBudget: { ratio: 0.2, minPerSecond: 10, windowMs: 10_000 },
      slowStartMs: 5000,
      flap: { threshold: 3, windowMs: 60_000, holdMs: 30_000 },
      broadcastTimeoutMs: 5000,
      broadcastMaxBodyBytes: 1_048_576,
      headersTimeoutMs: 10_000,
      egress: { mode: 'auto', allow: [] },
      balancer: 'round-robin',
      services: {},
      queueTimeoutMs: 1000,
      maxQueued: 100,
      sticky: { loadFactor: 1.25 },
    },
    api: { listen: '127.0.0.1:7701', maxStreams: 1000 },
    stateDir: '.tandem',
    services: [],
    upstreams: [],
    registration: { syncIntervalMs: 2000, drainMs: 2000, checkIntervalMs: 10_000, checkTimeoutMs: 5000, ttlMs: 30_000, livenessGraceMs: 5000 },
    watch: { waitMs: 55_000, idleMs: 300_000, firstAnswerTimeoutMs: 2000, maxBackoffMs: 10_000, maxServices: 100 },
    events: { retentionMs: 300_000, maxPayloadBytes: 65_536 },
    elections: { lockDelayMs: 5000, sessionTtlMs: 10_000 },
    drain: { deadlineMs: 30_000 },
    shutdownTimeoutMs: 15_000,
    log: { level: 'info', access: false },
  };
}

