// JSON schemas shared by the config loader and the control API, and the one validator that checks them.
import { Ajv, type ErrorObject, type ValidateFunction } from 'ajv';

export const SERVICE_NAME_PATTERN = '^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$';
// semver.org's strict grammar: no leading `v`, no leading zeros.
export const SEMVER_PATTERN =
  '^(0|[1-9]\\d*)\\.(0|[1-9]\\d*)\\.(0|[1-9]\\d*)(?:-((?:0|[1-9]\\d*|\\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\\.(?:0|[1-9]\\d*|\\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?(?:\\+([0-9a-zA-Z-]+(?:\\.[0-9a-zA-Z-]+)*))?$';

const durationMs = (min: number, max: number) => ({ type: 'integer', minimum: min, maximum: max });

export const checkSpecSchema = {
  type: 'object',
  description: 'a check: { kind: "http", path } | { kind: "tcp" } | { kind: "ttl" }',
  discriminator: { propertyName: 'kind' },
  required: ['kind'],
  oneOf: [
    {
      type: 'object',
      additionalProperties: false,
      required: ['kind', 'path'],
      properties: {
        kind: { const: 'http' },
        path: { type: 'string', pattern: '^/[^\\s]*$', maxLength: 1024, description: 'an absolute path starting with /' },
        intervalMs: durationMs(100, 3_600_000),
        timeoutMs: durationMs(100, 600_000),
      },
    },
    {
      type: 'object',
      additionalProperties: false,
      required: ['kind'],
      properties: { kind: { const: 'tcp' }, intervalMs: durationMs(100, 3_600_000), timeoutMs: durationMs(100, 600_000) },
    },
    {
      type: 'object',
      additionalProperties: false,
      required: ['kind'],
      properties: { kind: { const: 'ttl' }, ttlMs: durationMs(1000, 86_400_000) },
    },
  ],
} as const;

export const serviceSpecSchema = {
  type: 'object',
  additionalProperties: false,
  required: ['name', 'version', 'port'],
  properties: {
    name: { type: 'string', pattern: SERVICE_NAME_PATTERN, description: 'a DNS label: lowercase letters, digits and dashes, 1-63 characters' },
    version: { type: 'string', pattern: SEMVER_PATTERN, maxLength: 256, description: 'a strict semver version such as 1.2.3' },
    port: { type: 'integer', minimum: 1, maximum: 65535 },
    address: { type: 'string', minLength: 1, maxLength: 255, pattern: '^[^\\s/]+$', description: 'a host name or IP address' },
    id: { type: 'string', minLength: 1, maxLength: 128, pattern: '^[A-Za-z0-9_.:-]+$', description: 'letters, digits, and _ . : -' },
    tags: { type: 'array', maxItems: 64, items: { type: 'string', minLength: 1, maxLength: 255 } },
    meta: {
      type: 'object',
      maxProperties: 60,
      propertyNames: {
        pattern: '^(?!consul-|tandem_|version$)[A-Za-z0-9_-]{1,128}$',
        description: 'a Meta key: [A-Za-z0-9_-], at most 128 characters; consul-*, tandem_* and version are reserved',
      },
      additionalProperties: { type: 'string', maxLength: 512 },
    },
    check: checkSpecSchema,
    maxInFlight: { type: 'integer', minimum: 1, maximum: 1_000_000 },
  },
} as const;

/** The one Ajv instance: all errors at once, no coercion, no silent removal of unknown keys. */
export const ajv = new Ajv({ allErrors: true, discriminator: true, verbose: true, strict: true, strictRequired: false, coerceTypes: false, useDefaults: false, removeAdditional: false });

/** One line per violation: `<where>/<path>: <what was expected>`. */
export function formatErrors(errors: readonly ErrorObject[] | null | undefined, where: string): string[] {
  const out: string[] = [];
  for (const e of errors ?? []) {
    const path = `${where}${e.instancePath}`;
    const schema = e.parentSchema as { description?: string } | undefined;
    switch (e.keyword) {
      case 'additionalProperties':
        out.push(`${path}/${String(e.params['additionalProperty'])}: unknown key`);
        break;
      case 'required':
        out.push(`${path}/${String(e.params['missingProperty'])}: is required`);
        break;
      case 'propertyNames':
        break; // the nested `pattern` error already names the key
      case 'pattern':
        out.push(`${path}: must be ${schema?.description ?? `matching ${String(e.params['pattern'])}`}${e.data !== undefined && typeof e.data !== 'object' ? ` (got ${JSON.stringify(e.data)})` : ''}`);
        break;
      case 'discriminator':
        out.push(`${path}/kind: must be one of "http", "tcp", "ttl"${e.data && typeof e.data === 'object' && 'kind' in e.data ? ` (got ${JSON.stringify((e.data as { kind: unknown }).kind)})` : ''}`);
        break;
      case 'enum':
        out.push(`${path}: must be one of ${JSON.stringify(e.params['allowedValues'])}`);
        break;
      default:
        out.push(`${path}: ${e.message ?? 'is invalid'}${e.data !== undefined && typeof e.data !== 'object' ? ` (got ${JSON.stringify(e.data)})` : ''}`);
    }
  }
  // A body with thousands of bad items must not get a megabyte-sized message back.
  const lines = [...new Set(out)];
  return lines.length > 20 ? [...lines.slice(0, 20), `… and ${lines.length - 20} more problems`] : lines;
}

export function compile(schema: object): ValidateFunction {
  return ajv.compile(schema);
}

/**
 * The service spec is compiled once and shared by reference (config file and control API both use
 * `serviceSpecRef`): compiling it costs more than a quarter of a second, which a restarting sidecar
 * must not pay twice.
 */
export const SERVICE_SPEC_ID = 'tandem:service-spec';
ajv.addSchema({ $id: SERVICE_SPEC_ID, ...serviceSpecSchema });
export const serviceSpecRef = { $ref: SERVICE_SPEC_ID } as const;
