// Names of event topics, election groups and drained nodes: one rule for the routes' schemas and the cluster code.
import { TandemError } from '../common/errors.ts';

/**
 * A name is one Consul KV path segment: 1-128 of letters, digits, `_`, `.`, `-`, and never `.` or
 * `..` alone (Consul's HTTP server cleans those path segments and answers 301, so such a key could be
 * neither written nor watched). `orders.created` is fine; `a/b`, `..`, `` and spaces are not.
 */
export const NAME_PATTERN = '^(?!\\.\\.?$)[A-Za-z0-9_.-]{1,128}$';
export const NAME_RULE = "1-128 of letters, digits, '_', '.', '-'; not '.' or '..'";

const NAME = new RegExp(NAME_PATTERN);

export function isValidName(name: string): boolean {
  return NAME.test(name);
}

/** The JSON-schema fragment for a name in a route's params. */
export function nameSchema(what: string): { type: 'string'; pattern: string; description: string } {
  return { type: 'string', pattern: NAME_PATTERN, description: `${what}: ${NAME_RULE}` };
}

export class InvalidNameError extends TandemError {
  constructor(what: 'topic' | 'group' | 'node', name: string) {
    super(what === 'topic' ? 'TANDEM_ERR_INVALID_TOPIC' : 'TANDEM_ERR_INVALID_NAME', 400, `'${name.slice(0, 140)}' is not a valid ${what} name: ${NAME_RULE}`);
  }
}
