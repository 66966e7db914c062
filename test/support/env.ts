// Env parsing for tests, benches, fuzz and soak: whole numbers, flags and choices, with a clear error for a bad value.

/** `name` as a whole number in [min, max], `def` when unset or empty. */
export function intEnv(name: string, def: number, min: number, max = Number.MAX_SAFE_INTEGER): number {
  const raw = process.env[name];
  if (raw === undefined || raw.trim() === '') return def;
  const n = Number(raw);
  if (!Number.isSafeInteger(n) || n < min || n > max) {
    throw new Error(`${name} must be an integer ${max === Number.MAX_SAFE_INTEGER ? `>= ${min}` : `from ${min} to ${max}`} (got '${raw}')`);
  }
  return n;
}

/** `name` as a flag: 1/true/yes/on are true, anything else set is false, unset or empty is `def`. */
export function flagEnv(name: string, def: boolean): boolean {
  const raw = (process.env[name] ?? '').trim().toLowerCase();
  if (raw === '') return def;
  return ['1', 'true', 'yes', 'on'].includes(raw);
}

/** `name` as one of `choices`, `def` when unset or empty. */
export function choiceEnv<T extends string>(name: string, def: T, choices: readonly T[]): T {
  const raw = (process.env[name] ?? '').trim();
  if (raw === '') return def;
  if (!(choices as readonly string[]).includes(raw)) throw new Error(`${name} must be ${choices.join(' or ')} (got '${raw}')`);
  return raw as T;
}

/** `name` as a comma-separated list of `choices`, `def` when unset or empty. */
export function listEnv<T extends string>(name: string, def: readonly T[], choices: readonly T[]): T[] {
  const raw = (process.env[name] ?? '').trim();
  if (raw === '') return [...def];
  return raw.split(',').map((c) => {
    const v = c.trim();
    if (!(choices as readonly string[]).includes(v)) throw new Error(`${name}: each of ${choices.join(', ')} (got '${v}')`);
    return v as T;
  });
}
